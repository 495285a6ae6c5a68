//! The command line as users meet it: the README's usage block names only subcommands and
//! flags simctl accepts (so the README cannot drift from the binary), and bad values are
//! refused with exit 2 before anything starts — no coordinator needed.

use std::path::PathBuf;
use std::process::{Command, Output};

use sim_core::config::ChaosEvent;

fn simctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simctl"))
        .args(args)
        .output()
        .expect("running simctl")
}

fn text(output: &Output) -> String {
    test_support::output_text(output)
}

/// Run `simctl <args>` against an address where no coordinator listens and expect bad input
/// (exit 2): had simctl tried to connect, it would have exited 3. Returns what it said.
#[track_caller]
fn refused_as_bad_input(args: &[&str]) -> String {
    let mut all = vec!["--coordinator", "http://127.0.0.1:9"];
    all.extend_from_slice(args);
    let output = simctl(&all);
    let text = text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    text
}

/// The ```text block under "## simctl" in the README.
fn readme_usage() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let section = readme
        .split_once("\n## simctl\n")
        .expect("README has a \"## simctl\" section")
        .1;
    let block = section
        .split_once("```text\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a ```text block under \"## simctl\"")
        .0;
    block.lines().map(str::to_string).collect()
}

/// One usage line as the commands it names: `simctl status | watch` is two; each is its
/// subcommand path (`config validate`) and the `--flags` written after it. Comments (`#`)
/// are prose.
fn commands(line: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let usage = line.split('#').next().unwrap_or_default();
    let usage = usage
        .trim()
        .strip_prefix("simctl ")
        .unwrap_or_else(|| panic!("usage line does not start with `simctl `: {line:?}"));
    usage
        .split(" | ")
        .map(|alternative| {
            let words: Vec<&str> = alternative.split_whitespace().collect();
            let path = words
                .iter()
                .take_while(|word| {
                    word.starts_with(|c: char| c.is_ascii_lowercase())
                        && word.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                })
                .map(|word| word.to_string())
                .collect();
            let flags = words
                .iter()
                .map(|word| word.trim_matches(|c| c == '[' || c == ']'))
                .filter(|word| word.starts_with("--"))
                .map(str::to_string)
                .collect();
            (path, flags)
        })
        .collect()
}

#[test]
fn the_readme_usage_names_only_what_simctl_accepts() {
    let lines = readme_usage();
    assert!(lines.len() >= 5, "usage block too short: {lines:?}");
    let mut checked = 0;
    for line in &lines {
        for (path, flags) in commands(line) {
            assert!(!path.is_empty(), "no subcommand in {line:?}");
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("--help");
            let help = simctl(&args);
            assert!(
                help.status.success(),
                "README names `simctl {}`, which simctl does not accept:\n{}",
                path.join(" "),
                text(&help)
            );
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in flags {
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "README line {line:?}: `simctl {}` has no {flag}:\n{help}",
                    path.join(" ")
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} commands checked");
}

#[test]
fn the_usage_parser_reads_alternatives_paths_and_flags() {
    assert_eq!(
        commands("simctl status | watch   # now"),
        vec![
            (vec!["status".to_string()], vec![]),
            (vec!["watch".to_string()], vec![])
        ]
    );
    assert_eq!(
        commands("simctl config validate F   # exit 2"),
        vec![(vec!["config".to_string(), "validate".to_string()], vec![])]
    );
    assert_eq!(
        commands("simctl chaos EVENT [--target T] --resume [--run-dir D]"),
        vec![(
            vec!["chaos".to_string()],
            vec![
                "--target".to_string(),
                "--resume".to_string(),
                "--run-dir".to_string()
            ]
        )]
    );
}

#[test]
fn chaos_help_lists_every_event() {
    let help = simctl(&["chaos", "--help"]);
    assert!(help.status.success(), "{}", text(&help));
    let help = String::from_utf8_lossy(&help.stdout);
    for event in ChaosEvent::ALL {
        assert!(help.contains(event.as_str()), "{event} missing:\n{help}");
    }
}

#[test]
fn an_unknown_chaos_event_exits_2_listing_the_valid_ones() {
    let text = refused_as_bad_input(&["chaos", "network_meltdown"]);
    assert!(text.contains("network_meltdown"), "{text}");
    for event in ChaosEvent::ALL {
        assert!(text.contains(event.as_str()), "{event} not listed:\n{text}");
    }
}

#[test]
fn a_bad_duration_exits_2_naming_the_value() {
    let text = refused_as_bad_input(&["chaos", "worker_pause", "--duration", "soon"]);
    assert!(text.contains("\"soon\""), "{text}");
}

#[test]
fn tls_flags_where_no_coordinator_is_talked_to_are_refused() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/quick.yaml");
    let config = config.to_str().expect("utf8 path");
    let said = refused_as_bad_input(&["--insecure", "config", "validate", config]);
    assert!(
        said.contains("apply to the commands that talk to a coordinator"),
        "{said}"
    );
    let said = refused_as_bad_input(&["config", "validate", config, "--tls-ca", "x"]);
    assert!(
        said.contains("apply to the commands that talk to a coordinator"),
        "{said}"
    );
    // From the environment (a lab's simctl.env), they do not stop a local command.
    let out = Command::new(env!("CARGO_BIN_EXE_simctl"))
        .args(["config", "validate", config])
        .env("SIMCTL_TLS_CA", "/nonexistent/ca.pem")
        .output()
        .expect("simctl");
    assert!(out.status.success(), "{}", text(&out));
    // Half the TLS flags for a remote command: refused naming the missing one, before any
    // connection (exit 3 had it tried the dead address).
    let said = refused_as_bad_input(&["--tls-ca", "/nonexistent", "status"]);
    assert!(said.contains("--tls-cert is missing"), "{said}");
}

#[test]
fn certs_init_writes_a_lab_and_never_overwrites_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lab = dir.path().join("certs");
    let lab = lab.to_str().expect("utf8 path");
    let args = [
        "certs",
        "init",
        "--dir",
        lab,
        "--coordinator-host",
        "127.0.0.1,ctl.lab",
        "--agent",
        "host-1,host-2",
    ];
    let out = simctl(&args);
    assert!(out.status.success(), "{}", text(&out));
    for file in [
        "ca.pem",
        "ca.key",
        "coordinator.pem",
        "control.key",
        "agent-host-2.pem",
    ] {
        assert!(
            text(&out).contains(file),
            "{file} not reported: {}",
            text(&out)
        );
    }
    let again = simctl(&args);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("exists"), "{}", text(&again));
    use std::os::unix::fs::PermissionsExt;
    let mode = |name: &str| {
        std::fs::metadata(std::path::Path::new(lab).join(name))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("agent-host-1.key"), 0o600);
    assert_eq!(mode("ca.pem"), 0o644);
    let before = std::fs::read_dir(lab).map(Iterator::count).unwrap_or(0);
    let bad = simctl(&["certs", "issue", "--dir", lab, "--agent", "../escape"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let after = std::fs::read_dir(lab).map(Iterator::count).unwrap_or(0);
    assert_eq!(before, after, "nothing written");
    assert!(!dir.path().join("escape.pem").exists());
}
