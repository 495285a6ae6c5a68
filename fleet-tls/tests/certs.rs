//! The lab's certificate directory as `simctl certs` writes it, and what each daemon's
//! start-up check makes of it.

use std::os::unix::fs::PermissionsExt;

use fleet_tls::issue::{self, Authority, Leaf, Validity};
use fleet_tls::{Role, TlsError, TlsFiles};
use time::{Duration, OffsetDateTime};

fn files(dir: &std::path::Path, stem: &str) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    }
}

fn lab() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    let agents = ["host-1".to_string(), "host-2".to_string()];
    if let Err(e) = issue::init(dir.path(), &hosts, &agents, 30) {
        panic!("init: {e}");
    }
    dir
}

#[test]
fn init_writes_every_role_and_each_loads_only_as_itself() {
    let dir = lab();
    for (stem, role) in [
        ("coordinator", Role::Coordinator),
        ("control", Role::Control),
        ("agent-host-1", Role::Agent),
        ("agent-host-2", Role::Agent),
    ] {
        let f = files(dir.path(), stem);
        if let Err(e) = f.load(role) {
            panic!("{stem} as {role}: {e}");
        }
        let mode = std::fs::metadata(&f.key)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600, "{stem}.key is private");
    }
    // An agent started with simctl's certificate is told so before it connects.
    match files(dir.path(), "control").load(Role::Agent) {
        Err(TlsError::WrongRole {
            expected: Role::Agent,
            found,
            ..
        }) => assert_eq!(found, "control"),
        other => panic!("expected WrongRole, got {other:?}"),
    }
    // The CA key is private too, and a second init refuses to replace the CA.
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600);
    let again = issue::init(dir.path(), &["localhost".into()], &[], 30);
    assert!(
        matches!(again, Err(issue::IssueError::Exists { .. })),
        "{again:?}"
    );
}

#[test]
fn an_expired_certificate_is_refused_at_start_with_its_dates() {
    let dir = lab();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let ca =
        Authority::from_pem(&read("ca.pem"), &read("ca.key")).unwrap_or_else(|e| panic!("{e}"));
    let now = OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - Duration::days(10),
        not_after: now - Duration::days(1),
    };
    let issued = ca
        .issue(Leaf::Agent { name: "old" }, expired)
        .unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = issue::write_issued(dir.path(), "agent-old", &issued, false) {
        panic!("{e}");
    }
    let err = files(dir.path(), "agent-old").load(Role::Agent);
    match &err {
        Err(e @ TlsError::NotValidNow { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("agent-old.pem") && text.contains("not now"),
                "{text}"
            );
        }
        other => panic!("expected NotValidNow, got {other:?}"),
    }
}

#[test]
fn issue_adds_an_agent_and_replaces_only_when_asked() {
    let dir = lab();
    let leaf = Leaf::Agent { name: "host-3" };
    if let Err(e) = issue::issue_into(dir.path(), leaf, 30, false) {
        panic!("{e}");
    }
    if let Err(e) = files(dir.path(), "agent-host-3").load(Role::Agent) {
        panic!("{e}");
    }
    let before = std::fs::read(dir.path().join("agent-host-3.pem")).unwrap_or_default();
    assert!(matches!(
        issue::issue_into(dir.path(), leaf, 30, false),
        Err(issue::IssueError::Exists { .. })
    ));
    if let Err(e) = issue::issue_into(dir.path(), leaf, 30, true) {
        panic!("{e}");
    }
    let after = std::fs::read(dir.path().join("agent-host-3.pem")).unwrap_or_default();
    assert_ne!(before, after, "a rotation writes a new certificate");
    // Names that would escape the directory or break the URI are refused.
    for bad in ["../x", "a b", ""] {
        let r = issue::issue_into(dir.path(), Leaf::Agent { name: bad }, 30, false);
        assert!(
            matches!(r, Err(issue::IssueError::BadName { .. })),
            "{bad:?}: {r:?}"
        );
    }
}

#[test]
fn incomplete_flags_name_the_missing_one() {
    let p = |s: &str| Some(std::path::PathBuf::from(s));
    assert!(matches!(TlsFiles::from_flags(None, None, None), Ok(None)));
    let missing = |r: Result<Option<TlsFiles>, TlsError>| match r {
        Err(TlsError::Incomplete { missing }) => missing,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        missing(TlsFiles::from_flags(p("a"), p("b"), None)),
        "--tls-key"
    );
    assert_eq!(
        missing(TlsFiles::from_flags(None, p("b"), p("c"))),
        "--tls-ca"
    );
    assert_eq!(
        missing(TlsFiles::from_flags(p("a"), None, p("c"))),
        "--tls-cert"
    );
}
