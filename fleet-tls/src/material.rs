//! A daemon's own TLS material: the lab CA, its certificate and its key, read and checked at
//! start-up so that a wrong file is a clear error before anything listens or connects, not a
//! handshake failure on the other side of the network.

use std::path::{Path, PathBuf};

use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use x509_parser::pem::Pem;

use crate::Role;
use crate::peer::roles_of;

/// Where a daemon's TLS material lives: all three, or none (plaintext on loopback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The lab CA's certificate(s), PEM: peers must present a certificate it issued. During a
    /// CA rotation it holds the old and the new CA.
    pub ca: PathBuf,
    /// This daemon's certificate, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

/// Why TLS material was refused.
#[derive(Debug, Error)]
pub enum TlsError {
    /// Some of `--tls-ca`, `--tls-cert`, `--tls-key` were given, not all.
    #[error("TLS needs --tls-ca, --tls-cert and --tls-key together; {missing} is missing")]
    Incomplete {
        /// The flag that is missing.
        missing: &'static str,
    },
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The certificate is for another role (an agent started with simctl's, say).
    #[error("{}: a {found} certificate, this program needs a {expected} certificate", path.display())]
    WrongRole {
        /// The file.
        path: PathBuf,
        /// The role it is for (`none` when it names none).
        found: String,
        /// The role this program needs.
        expected: Role,
    },
    /// A client's coordinator URL does not fit the TLS material it was given.
    #[error("coordinator {url}: {detail}")]
    Endpoint {
        /// The URL.
        url: String,
        /// The rule it breaks.
        detail: String,
    },
    /// The certificate is outside its validity period.
    #[error("{}: the certificate is valid from {not_before} to {not_after}, not now; issue a new one (docs/SECURITY.md, Rotation)", path.display())]
    NotValidNow {
        /// The file.
        path: PathBuf,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
}

impl TlsFiles {
    /// The three flags of a daemon: `Ok(None)` when none is given, an error naming the
    /// missing one when only some are.
    ///
    /// # Errors
    /// [`TlsError::Incomplete`].
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(Self { ca, cert, key })),
            (ca, cert, _) => Err(TlsError::Incomplete {
                missing: if ca.is_none() {
                    "--tls-ca"
                } else if cert.is_none() {
                    "--tls-cert"
                } else {
                    "--tls-key"
                },
            }),
        }
    }

    /// Reads and checks the material for a program of role `role`: the CA file holds
    /// certificates, the certificate is one of `role` and valid now, the key is a key.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file and what is wrong with it.
    pub fn load(&self, role: Role) -> Result<Material, TlsError> {
        let ca_pem = read(&self.ca)?;
        let cas = certificates(&self.ca, &ca_pem)?;
        if cas.is_empty() {
            return Err(invalid(&self.ca, "no CERTIFICATE block"));
        }
        let cert_pem = read(&self.cert)?;
        let own = certificates(&self.cert, &cert_pem)?;
        let Some(leaf) = own.first() else {
            return Err(invalid(&self.cert, "no CERTIFICATE block"));
        };
        check_leaf(&self.cert, leaf, role)?;
        let key_pem = read(&self.key)?;
        let has_key = Pem::iter_from_buffer(&key_pem)
            .filter_map(Result::ok)
            .any(|block| block.label.ends_with("PRIVATE KEY"));
        if !has_key {
            return Err(invalid(&self.key, "no PRIVATE KEY block"));
        }
        Ok(Material {
            ca_pem,
            cert_pem,
            key_pem,
        })
    }
}

/// Checked TLS material, ready to configure a server or a client.
#[derive(Clone)]
pub struct Material {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Material").finish_non_exhaustive()
    }
}

impl Material {
    /// The coordinator's side: present our certificate, require a client certificate issued
    /// by the CA.
    #[must_use]
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// A client's side (agent, simctl): trust only the CA, expect `host` in the server's
    /// certificate, present our own.
    #[must_use]
    pub fn client(&self, host: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(host)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, detail: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// The DER of every CERTIFICATE block in `pem`.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| invalid(path, format!("not PEM: {e}")))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    Ok(out)
}

fn check_leaf(path: &Path, der: &[u8], role: Role) -> Result<(), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid(path, format!("not an X.509 certificate: {e}")))?;
    let roles = roles_of(&cert);
    if !roles.contains(&role) {
        return Err(TlsError::WrongRole {
            path: path.to_path_buf(),
            found: roles
                .first()
                .map_or_else(|| "none".to_string(), ToString::to_string),
            expected: role,
        });
    }
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(TlsError::NotValidNow {
            path: path.to_path_buf(),
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
        });
    }
    Ok(())
}
