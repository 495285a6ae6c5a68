//! A client's endpoint (agent, simctl): TLS exactly when the URL says `https`, and never
//! plaintext to another host by accident.

use tonic::transport::Endpoint;

use crate::{Material, TlsError};

/// The endpoint for `url`, checked against the TLS material the client was given:
///
/// - `https://` needs `tls` and verifies the server's certificate against the CA and the
///   URL's host;
/// - `http://` with `tls` given is refused (tonic would silently connect in plaintext);
/// - `http://` to a host other than loopback (`localhost`, 127.0.0.0/8, ::1) is refused
///   unless `insecure`: an agent must not obey, and simctl must not send a run to, whoever
///   answers at an unauthenticated address.
///
/// # Errors
/// [`TlsError::Endpoint`] naming the URL and the rule it breaks.
pub fn endpoint(url: &str, tls: Option<&Material>, insecure: bool) -> Result<Endpoint, TlsError> {
    let refuse = |detail: String| TlsError::Endpoint {
        url: url.to_string(),
        detail,
    };
    let endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|e| refuse(format!("not a URL: {e}")))?;
    let uri = endpoint.uri();
    let host = uri.host().unwrap_or_default().to_string();
    match (uri.scheme_str(), tls) {
        (Some("https"), Some(material)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            endpoint
                .tls_config(material.client(host))
                .map_err(|e| refuse(format!("TLS set-up: {e}")))
        }
        (Some("https"), None) => Err(refuse(
            "https needs --tls-ca, --tls-cert and --tls-key (the lab's certificates)".into(),
        )),
        (Some("http"), Some(_)) => Err(refuse(
            "TLS certificates were given for a plaintext URL; use https://".into(),
        )),
        (Some("http"), None) if insecure || is_loopback_host(&host) => Ok(endpoint),
        (Some("http"), None) => Err(refuse(format!(
            "plaintext to {host}, which is not loopback: use https:// with the lab's \
             certificates (--tls-*), or --insecure on a network you trust"
        ))),
        (scheme, _) => Err(refuse(format!(
            "scheme {:?}: use http:// (loopback) or https://",
            scheme.unwrap_or("")
        ))),
    }
}

/// `localhost` or a loopback address.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_to_loopback_unless_insecure() {
        for url in [
            "http://127.0.0.1:7400",
            "http://localhost:7400",
            "http://[::1]:7400",
        ] {
            assert!(endpoint(url, None, false).is_ok(), "{url}");
        }
        let err = endpoint("http://10.0.0.5:7400", None, false).map(|_| ());
        assert!(
            matches!(&err, Err(TlsError::Endpoint { detail, .. }) if detail.contains("not loopback")),
            "{err:?}"
        );
        assert!(endpoint("http://10.0.0.5:7400", None, true).is_ok());
        assert!(endpoint("https://10.0.0.5:7400", None, true).is_err());
        assert!(endpoint("ftp://127.0.0.1:7400", None, false).is_err());
    }
}
