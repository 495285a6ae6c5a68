//! The fleet's mutual TLS: who may talk to the coordinator, and whom agents obey.
//!
//! Why: agents run as root-equivalent (they kill processes and rewrite iptables). A
//! coordinator port that anyone on a lab network can reach would be a remote root for anyone,
//! and an agent that obeys whatever answers at its coordinator's address is the same hole from
//! the other side. So off loopback every connection is TLS with certificates on both sides,
//! all issued by the lab's own CA (`simctl certs init`, [`issue`]):
//!
//! - the **coordinator** presents a server certificate naming its hosts; agents and simctl
//!   verify it (CA and host name) before sending or obeying anything;
//! - **agents** and **simctl** present client certificates; the coordinator's TLS layer refuses
//!   any not issued by the CA (or expired), and each service then checks the certificate's
//!   [`Role`]: only an agent certificate may open an agent session, only a control certificate
//!   may start, stop or fault a run. A stolen agent key cannot drive the fleet.
//!
//! A role is a URI subject-alternative name, `urn:parti-sim:<role>[:<name>]`, and the
//! extended key usage (server or client authentication) keeps a client certificate from
//! serving as the coordinator's even on the right host.
//!
//! Plaintext stays for loopback, so the one-machine `simctl run` keeps its zero set-up;
//! [`plaintext_allowed`] is the rule the daemons apply to a listen address.

mod client;
pub mod issue;
mod material;
mod peer;

pub use client::endpoint;
pub use material::{Material, TlsError, TlsFiles};
pub use peer::{PeerName, RequireRole, peer_role, refused_after_handshake, tls_failure};

use std::net::SocketAddr;

/// What a certificate entitles its holder to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Serves the Agent and Control services.
    Coordinator,
    /// Opens agent sessions: receives commands, sends reports.
    Agent,
    /// simctl: starts, watches, stops and faults runs.
    Control,
}

impl Role {
    /// The role's word in its URI and in messages.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Coordinator => "coordinator",
            Self::Agent => "agent",
            Self::Control => "control",
        }
    }

    /// The role's URI subject-alternative name; `name` (an agent's) is appended when given.
    #[must_use]
    pub fn uri(self, name: Option<&str>) -> String {
        match name {
            Some(name) => format!("{URI_PREFIX}{}:{name}", self.as_str()),
            None => format!("{URI_PREFIX}{}", self.as_str()),
        }
    }

    fn from_uri(uri: &str) -> Option<Self> {
        Self::with_name(uri).map(|(role, _)| role)
    }

    /// The role of a URI and the name after it (`urn:parti-sim:agent:host-1` → agent,
    /// `host-1`).
    fn with_name(uri: &str) -> Option<(Self, Option<&str>)> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let (word, name) = match rest.split_once(':') {
            Some((word, name)) => (word, Some(name)),
            None => (rest, None),
        };
        let role = [Self::Coordinator, Self::Agent, Self::Control]
            .into_iter()
            .find(|role| role.as_str() == word)?;
        Some((role, name))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every role URI starts with this.
const URI_PREFIX: &str = "urn:parti-sim:";

/// Whether a daemon may listen on `addr` without TLS: only on loopback, where nobody else on
/// the network can connect.
#[must_use]
pub fn plaintext_allowed(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_uris_round_trip_and_foreign_ones_are_no_role() {
        for role in [Role::Coordinator, Role::Agent, Role::Control] {
            assert_eq!(Role::from_uri(&role.uri(None)), Some(role));
            assert_eq!(Role::from_uri(&role.uri(Some("host-1"))), Some(role));
        }
        assert_eq!(Role::from_uri("urn:parti-sim:root"), None);
        assert_eq!(Role::from_uri("urn:other:agent"), None);
        assert_eq!(Role::from_uri("https://example.invalid/agent"), None);
    }

    #[test]
    fn plaintext_only_on_loopback() {
        let ok = |s: &str| plaintext_allowed(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")));
        assert!(ok("127.0.0.1:7400"));
        assert!(ok("[::1]:7400"));
        assert!(!ok("0.0.0.0:7400"));
        assert!(!ok("[::]:7400"));
        assert!(!ok("10.1.2.3:7400"));
    }
}
