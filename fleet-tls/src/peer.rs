//! The other side of a connection: its role, and why a handshake with it failed.

use std::error::Error;

use rustls::pki_types::CertificateDer;
use tonic::{Request, Status};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::Role;

/// The roles a parsed certificate names in its URI subject-alternative names.
pub(crate) fn roles_of(cert: &X509Certificate<'_>) -> Vec<Role> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Role::from_uri(uri),
            _ => None,
        })
        .collect()
}

/// The role of a peer's end-entity certificate (the first of its chain), if it names one,
/// and the name its role URI carries (an agent's). Call only with certificates the TLS layer
/// verified against the CA.
#[must_use]
pub fn peer_role(chain: &[CertificateDer<'_>]) -> Option<(Role, Option<String>)> {
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return None;
    };
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => {
            Role::with_name(uri).map(|(role, name)| (role, name.map(str::to_string)))
        }
        _ => None,
    })
}

/// The name a verified client certificate gives its holder (an agent's name), put into the
/// request's extensions by [`RequireRole`]: a service compares it with the name the client
/// claims, so one agent's key cannot pose as another agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerName(pub String);

/// A gRPC interceptor admitting only peers whose certificate carries one role.
///
/// On a plaintext server (loopback only, see [`crate::plaintext_allowed`]) there are no
/// certificates and everything is admitted; with TLS a request without one, or with another
/// role's, is refused with `PERMISSION_DENIED` naming both.
#[derive(Debug, Clone, Copy)]
pub struct RequireRole {
    role: Role,
    tls: bool,
}

impl RequireRole {
    /// Admit `role` on a server with (`tls`) or without TLS.
    #[must_use]
    pub const fn new(role: Role, tls: bool) -> Self {
        Self { role, tls }
    }
}

impl tonic::service::Interceptor for RequireRole {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.tls {
            return Ok(request);
        }
        let Some(chain) = request.peer_certs() else {
            return Err(Status::unauthenticated(format!(
                "this service needs a {} certificate; the client presented none",
                self.role
            )));
        };
        match peer_role(&chain) {
            Some((role, name)) if role == self.role => {
                let mut request = request;
                if let Some(name) = name {
                    request.extensions_mut().insert(PeerName(name));
                }
                Ok(request)
            }
            Some((role, _)) => Err(Status::permission_denied(format!(
                "this service needs a {} certificate; the client presented a {role} certificate",
                self.role
            ))),
            None => Err(Status::permission_denied(format!(
                "this service needs a {} certificate; the client's certificate names no \
                 parti-sim role",
                self.role
            ))),
        }
    }
}

/// The TLS failure somewhere in an error's chain of causes, described: a certificate that
/// did not verify, or an alert the other side sent (ours was refused). `None` when the error
/// is not about TLS (the coordinator is down, say) and retrying may help.
#[must_use]
pub fn tls_failure(error: &(dyn Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return Some(describe(tls));
        }
        cause = current.source();
    }
    None
}

/// [`tls_failure`], or the connection failing under a request right after a TLS handshake
/// that looked complete. Under TLS 1.3 a server verifies the client's certificate after the
/// client has finished its half of the handshake; when it refuses, the client learns it only
/// as a connection that fails under its first request (a broken pipe, a reset, hyper's
/// "connection closed": the alert itself is usually lost). Use it only for the first request
/// on a fresh TLS connection, where a failing connection most likely means exactly that; a
/// status the server sent is never taken for one.
#[must_use]
pub fn refused_after_handshake(error: &(dyn Error + 'static)) -> Option<String> {
    if let Some(described) = tls_failure(error) {
        return Some(described);
    }
    let mut cause = Some(error);
    while let Some(current) = cause {
        if current.is::<tonic::transport::Error>() {
            return Some(
                "the other side refused the TLS handshake (it closed the connection after \
                 the handshake): our certificate is most likely not one it accepts (another \
                 CA, expired); its log says why"
                    .into(),
            );
        }
        cause = current.source();
    }
    None
}

fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::AlertReceived(alert) => format!(
            "the other side refused the TLS handshake ({alert:?}): our certificate is not \
             one it accepts (another CA, expired, or none)"
        ),
        rustls::Error::InvalidCertificate(why) => format!(
            "the other side's certificate is not trusted ({why:?}): not issued by our CA, \
             not for this host, or expired"
        ),
        other => format!("TLS: {other}"),
    }
}
