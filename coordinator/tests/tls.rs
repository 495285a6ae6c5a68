//! Mutual TLS between the fleet's daemons (issue 12): the coordinator admits only clients
//! with the lab CA's certificates, each for its own service; agents obey only a coordinator
//! with the lab's certificate; plaintext only on loopback. Real processes on loopback, the
//! certificates made as `simctl certs init` makes them.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fleet_tls::issue::{self, Authority, Leaf, Validity};
use fleet_tls::{Role, TlsFiles};
use test_support::{Daemon, output_text, wait_until, workspace_binary};

/// A lab's certificate directory for a coordinator on loopback and agent `host-1`.
fn lab(dir: &Path) -> PathBuf {
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    issue::init(dir, &hosts, &["host-1".to_string()], 1).expect("certificates");
    dir.to_path_buf()
}

use test_support::tls_flags as flags;

/// A TLS channel to `url` presenting certificate `stem` of the lab in `certs`, as `role`.
async fn tls_channel(url: &str, certs: &Path, stem: &str, role: Role) -> tonic::transport::Channel {
    let material = TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{stem}.pem")),
        key: certs.join(format!("{stem}.key")),
    }
    .load(role)
    .expect("material");
    fleet_tls::endpoint(url, Some(&material), false)
        .expect("endpoint")
        .connect()
        .await
        .expect("TLS with a valid certificate connects")
}

/// A coordinator started from `command`, and the first line it printed ("listening on
/// ADDR"; empty when it exited without one: EOF ends the read too).
fn started(command: &mut Command) -> (Daemon, String) {
    let mut child = command.stdout(Stdio::piped()).spawn().expect("coordinator");
    let stdout = child.stdout.take().expect("stdout");
    let daemon = Daemon(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading");
    (daemon, line)
}

/// A coordinator with the lab's TLS on a loopback port of its choosing; its port.
fn coordinator(certs: &Path) -> (Daemon, u16) {
    let (daemon, line) = started(
        Command::new(workspace_binary("coordinator"))
            .args(["--listen", "127.0.0.1:0"])
            .args(flags(certs, certs, "coordinator"))
            .arg("--runs-dir")
            .arg(certs.join("runs")),
    );
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (daemon, port)
}

fn simctl(url: &str, tls: &[OsString], args: &[&str]) -> Output {
    Command::new(workspace_binary("simctl"))
        .args(["--coordinator", url])
        .args(tls)
        .args(args)
        .output()
        .expect("simctl")
}

fn agent(url: &str, tls: &[OsString], dir: &Path) -> Child {
    agent_as("host-1", url, tls, dir)
}

fn agent_as(id: &str, url: &str, tls: &[OsString], dir: &Path) -> Child {
    Command::new(workspace_binary("agent"))
        .args(["run", "--coordinator", url, "--id", id, "--dir"])
        .arg(dir)
        .args(tls)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent")
}

/// What an agent refused at start or by the handshake said; it must exit 2 on its own.
#[track_caller]
fn agent_refused(url: &str, tls: &[OsString], dir: &Path) -> String {
    let (code, text) = exit_of(agent(url, tls, dir), Duration::from_secs(30));
    assert_eq!(code, Some(2), "{text}");
    text
}

/// The agent's exit status and stderr, once it exits on its own (within `within`).
fn exit_of(mut child: Child, within: Duration) -> (Option<i32>, String) {
    wait_until("the agent exits", within, || match child.try_wait() {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("still running".into()),
        Err(e) => Err(e.to_string()),
    });
    let output = child.wait_with_output().expect("agent output");
    (output.status.code(), output_text(&output))
}

#[test]
fn mutual_tls_admits_the_labs_own_and_refuses_everyone_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = lab(&dir.path().join("ours"));
    let theirs = lab(&dir.path().join("theirs"));
    let (_coordinator, port) = coordinator(&ours);
    let url = format!("https://127.0.0.1:{port}");
    let control = flags(&ours, &ours, "control");

    // The control: our agent connects, our simctl sees it.
    let _agent = Daemon(agent(
        &url,
        &flags(&ours, &ours, "agent-host-1"),
        &dir.path().join("agent-ok"),
    ));
    wait_until(
        "the lab's agent connects over mTLS",
        Duration::from_secs(30),
        || {
            let out = simctl(&url, &control, &["agents"]);
            let text = output_text(&out);
            (out.status.success() && text.contains("host-1") && text.contains(" connected"))
                .then_some(())
                .ok_or(text)
        },
    );

    // simctl without a certificate: refused before it sends anything.
    let out = simctl(&url, &[], &["agents"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("--tls-ca"),
        "{}",
        output_text(&out)
    );

    // simctl trusting our CA but holding another lab's certificate: the coordinator's
    // handshake refuses it.
    let out = simctl(&url, &flags(&ours, &theirs, "control"), &["agents"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("refused the TLS handshake"),
        "{}",
        output_text(&out)
    );

    // An agent with another lab's certificate: refused, it says so and exits 2.
    let text = agent_refused(
        &url,
        &flags(&ours, &theirs, "agent-host-1"),
        &dir.path().join("a2"),
    );
    assert!(text.contains("refused the TLS handshake"), "{text}");

    // An agent that trusts only the other lab's CA, pointed at our coordinator: it does not
    // accept the coordinator's certificate, so it never obeys it.
    let text = agent_refused(
        &url,
        &flags(&theirs, &theirs, "agent-host-1"),
        &dir.path().join("a3"),
    );
    assert!(text.contains("certificate is not trusted"), "{text}");

    // An expired certificate from our own CA: refused at start, naming its dates.
    let read = |name: &str| std::fs::read_to_string(ours.join(name)).expect("ca file");
    let ca = Authority::from_pem(&read("ca.pem"), &read("ca.key")).expect("our CA");
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue(
            Leaf::Agent { name: "old" },
            Validity {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
            },
        )
        .expect("expired certificate");
    issue::write_issued(&ours, "agent-old", &expired, false).expect("write");
    let text = agent_refused(
        &url,
        &flags(&ours, &ours, "agent-old"),
        &dir.path().join("a4"),
    );
    assert!(
        text.contains("agent-old.pem") && text.contains("not now"),
        "{text}"
    );

    // host-1's certificate cannot register as host-2.
    let (code, text) = exit_of(
        agent_as(
            "host-2",
            &url,
            &flags(&ours, &ours, "agent-host-1"),
            &dir.path().join("a5"),
        ),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("\"host-2\" is not the one its certificate names"),
        "{text}"
    );

    // Only the one agent of the control ever registered.
    let out = simctl(&url, &control, &["agents"]);
    assert_eq!(
        output_text(&out).lines().count(),
        1,
        "{}",
        output_text(&out)
    );

    // Roles: a valid agent certificate cannot drive a run, simctl's cannot open a session.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let channel = tls_channel(&url, &ours, "agent-host-1", Role::Agent).await;
        let mut control = proto::v1::control_client::ControlClient::new(channel);
        let refused = control
            .stop(proto::v1::StopRequest {})
            .await
            .expect_err("an agent certificate must not stop a run");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
        assert!(
            refused.message().contains("control certificate"),
            "{refused}"
        );

        let channel = tls_channel(&url, &ours, "control", Role::Control).await;
        let mut agent = proto::v1::agent_client::AgentClient::new(channel);
        let refused = agent
            .session(tokio_stream::empty::<proto::v1::AgentMessage>())
            .await
            .expect_err("a control certificate must not open an agent session");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    });
}

#[test]
fn plaintext_on_a_non_loopback_address_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Binding the wildcard address sends nothing anywhere.
    let out = Command::new(workspace_binary("coordinator"))
        .args(["--listen", "0.0.0.0:0", "--runs-dir"])
        .arg(dir.path())
        .output()
        .expect("coordinator");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("non-loopback") && text.contains("--insecure"),
        "{text}"
    );
    assert!(!text.contains("listening on"), "nothing was served: {text}");

    // Half of the TLS flags is refused too, naming the missing one.
    let out = Command::new(workspace_binary("coordinator"))
        .args(["--listen", "127.0.0.1:0", "--tls-ca", "/nonexistent/ca.pem"])
        .output()
        .expect("coordinator");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--tls-cert is missing"), "{text}");

    // A certificate and a key that are not a pair: refused before listening.
    let certs = lab(&dir.path().join("certs"));
    let mut mismatched = flags(&certs, &certs, "coordinator");
    mismatched[5] = certs.join("control.key").into();
    let out = Command::new(workspace_binary("coordinator"))
        .args(["--listen", "127.0.0.1:0"])
        .args(mismatched)
        .output()
        .expect("coordinator");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("not a usable pair"), "{text}");
    assert!(!text.contains("listening on"), "{text}");

    // With --insecure the operator has said so: it listens.
    let (_daemon, line) = started(
        Command::new(workspace_binary("coordinator"))
            .args(["--listen", "0.0.0.0:0", "--insecure", "--runs-dir"])
            .arg(dir.path()),
    );
    assert!(line.starts_with("listening on 0.0.0.0:"), "{line:?}");
}
