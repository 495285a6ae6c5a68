//! The lab CA and the certificates it issues (`simctl certs`).
//!
//! One directory holds a lab's material, by file name:
//!
//! | file | what | goes to |
//! | --- | --- | --- |
//! | `ca.pem` | the CA certificate | every host |
//! | `ca.key` | the CA key | nowhere: it stays on the control host |
//! | `coordinator.pem`, `.key` | server certificate for the coordinator's host names | the coordinator |
//! | `control.pem`, `.key` | client certificate of simctl | the control host |
//! | `agent-<name>.pem`, `.key` | client certificate of one agent | that agent's host |
//!
//! Keys are ECDSA P-256, written with mode 0600. Nothing existing is overwritten unless asked
//! (`replace`): losing a CA key by a repeated `init` would orphan the whole fleet.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use crate::Role;

/// The CA file in a lab's certificate directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key file.
pub const CA_KEY: &str = "ca.key";

/// Why certificates could not be made.
#[derive(Debug, Error)]
pub enum IssueError {
    /// rcgen refused the parameters (a host name that is not a DNS name, say).
    #[error("{what}: {source}")]
    Generate {
        /// What was being made.
        what: String,
        /// The error.
        #[source]
        source: rcgen::Error,
    },
    /// A name that cannot be part of a file name and a URI.
    #[error("{what} {value:?}: use letters, digits, '.', '-' and '_' only")]
    BadName {
        /// What the name is for.
        what: &'static str,
        /// The name.
        value: String,
    },
    /// The file exists and `replace` was not asked for.
    #[error("{} exists; not overwriting it (remove it, or replace it on purpose)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// From.
    pub not_before: OffsetDateTime,
    /// Until.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks of a lab's hosts differ a little) for `days` days.
    #[must_use]
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            // Past the calendar's end it is the end (X.509 GeneralizedTime stops at 9999).
            not_after: now
                .checked_add(Duration::days(i64::from(days)))
                .filter(|end| end.year() <= 9999)
                .unwrap_or_else(|| rcgen::date_time_ymd(9999, 12, 31)),
        }
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy)]
pub enum Leaf<'a> {
    /// The coordinator, reachable under these host names or addresses.
    Coordinator {
        /// DNS names and IP addresses.
        hosts: &'a [String],
    },
    /// One agent.
    Agent {
        /// Its name (the inventory's host name, usually).
        name: &'a str,
    },
    /// simctl.
    Control,
}

impl Leaf<'_> {
    /// The file stem in a lab's directory.
    #[must_use]
    pub fn stem(&self) -> String {
        match self {
            Self::Coordinator { .. } => "coordinator".into(),
            Self::Agent { name } => format!("agent-{name}"),
            Self::Control => "control".into(),
        }
    }

    fn role(&self) -> Role {
        match self {
            Self::Coordinator { .. } => Role::Coordinator,
            Self::Agent { .. } => Role::Agent,
            Self::Control => Role::Control,
        }
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

/// A CA able to issue the fleet's certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new CA, `name` in its subject.
    ///
    /// # Errors
    /// [`IssueError::Generate`].
    pub fn generate(name: &str, validity: Validity) -> Result<Self, IssueError> {
        let what = || "the CA".to_string();
        let key = KeyPair::generate().map_err(generate(what()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key).map_err(generate(what()))?;
        Ok(Self {
            cert_pem: pem("CERTIFICATE", cert.der()),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of an existing lab, to issue more certificates (a new agent, a rotation).
    ///
    /// # Errors
    /// [`IssueError::Generate`] when the files are not a CA certificate and its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IssueError> {
        let what = || "reading the CA".to_string();
        let unreadable = || IssueError::Generate {
            what: what(),
            source: rcgen::Error::CouldNotParseCertificate,
        };
        let key_der = pem_block(key_pem, "PRIVATE KEY").ok_or_else(unreadable)?;
        let cert_der = pem_block(cert_pem, "CERTIFICATE").ok_or_else(unreadable)?;
        let key = KeyPair::try_from(key_der.as_slice()).map_err(generate(what()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der.into(), key).map_err(generate(what()))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PEM.
    #[must_use]
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.issuer.key().serialize_der())
    }

    /// Issues the certificate of `leaf`.
    ///
    /// # Errors
    /// [`IssueError::BadName`] for an agent name unfit for a file name,
    /// [`IssueError::Generate`] for a host that is neither an address nor a DNS name.
    pub fn issue(&self, leaf: Leaf<'_>, validity: Validity) -> Result<Issued, IssueError> {
        let what = || format!("the {} certificate", leaf.stem());
        let role = leaf.role();
        let mut params = CertificateParams::default();
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let uri = match leaf {
            Leaf::Coordinator { hosts } => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                for host in hosts {
                    let san = match host.parse::<IpAddr>() {
                        Ok(ip) => SanType::IpAddress(ip),
                        Err(_) => {
                            SanType::DnsName(host.as_str().try_into().map_err(generate(what()))?)
                        }
                    };
                    params.subject_alt_names.push(san);
                }
                params.distinguished_name = subject("parti-sim coordinator");
                role.uri(None)
            }
            Leaf::Agent { name } => {
                check_name("agent name", name)?;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                params.distinguished_name = subject(&format!("parti-sim agent {name}"));
                role.uri(Some(name))
            }
            Leaf::Control => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                params.distinguished_name = subject("parti-sim control");
                role.uri(None)
            }
        };
        params.subject_alt_names.push(SanType::URI(
            uri.as_str().try_into().map_err(generate(what()))?,
        ));
        let key = KeyPair::generate().map_err(generate(what()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate(what()))?;
        Ok(Issued {
            cert_pem: pem("CERTIFICATE", cert.der()),
            key_pem: pem("PRIVATE KEY", &key.serialize_der()),
        })
    }
}

/// `simctl certs init`: a new CA in `dir` with the coordinator's, simctl's and each agent's
/// certificate. Refuses a directory that already holds a CA. Returns the files written.
///
/// # Errors
/// [`IssueError`]; nothing is written when a name or host is refused.
pub fn init(
    dir: &Path,
    coordinator_hosts: &[String],
    agents: &[String],
    days: u32,
) -> Result<Vec<PathBuf>, IssueError> {
    for agent in agents {
        check_name("agent name", agent)?;
    }
    // Every file it would write, checked before any is: a half-made lab (a CA certificate
    // whose key was refused) would be worse than none.
    let stems = [Leaf::Control.stem(), "coordinator".to_string()]
        .into_iter()
        .chain(agents.iter().map(|name| Leaf::Agent { name }.stem()));
    let files = [CA_CERT.to_string(), CA_KEY.to_string()]
        .into_iter()
        .chain(stems.flat_map(|stem| [format!("{stem}.pem"), format!("{stem}.key")]));
    for name in files {
        let path = dir.join(name);
        if path.exists() {
            return Err(IssueError::Exists { path });
        }
    }
    let ca = Authority::generate("parti-sim lab CA", Validity::days(days.saturating_mul(10)))?;
    // Everything is issued before anything is written: a refused host leaves no half lab.
    let validity = Validity::days(days);
    let mut leaves = vec![
        (
            Leaf::Coordinator {
                hosts: coordinator_hosts,
            }
            .stem(),
            ca.issue(
                Leaf::Coordinator {
                    hosts: coordinator_hosts,
                },
                validity,
            )?,
        ),
        (Leaf::Control.stem(), ca.issue(Leaf::Control, validity)?),
    ];
    for name in agents {
        let leaf = Leaf::Agent { name };
        leaves.push((leaf.stem(), ca.issue(leaf, validity)?));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = vec![
        write(dir, CA_CERT, ca.cert_pem(), false, false)?,
        write(dir, CA_KEY, &ca.key_pem(), true, false)?,
    ];
    for (stem, issued) in leaves {
        written.extend(write_issued(dir, &stem, &issued, false)?);
    }
    Ok(written)
}

/// `simctl certs issue`: one more certificate from the CA in `dir` (a new agent, or a
/// rotation with `replace`). Returns the files written.
///
/// # Errors
/// [`IssueError`].
pub fn issue_into(
    dir: &Path,
    leaf: Leaf<'_>,
    days: u32,
    replace: bool,
) -> Result<Vec<PathBuf>, IssueError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(io(&path))
    };
    let ca = Authority::from_pem(&read(CA_CERT)?, &read(CA_KEY)?)?;
    let issued = ca.issue(leaf, Validity::days(days))?;
    write_issued(dir, &leaf.stem(), &issued, replace)
}

/// Writes `<stem>.pem` and `<stem>.key` (0600).
///
/// # Errors
/// [`IssueError::Exists`] or [`IssueError::Io`].
pub fn write_issued(
    dir: &Path,
    stem: &str,
    issued: &Issued,
    replace: bool,
) -> Result<Vec<PathBuf>, IssueError> {
    Ok(vec![
        write(
            dir,
            &format!("{stem}.pem"),
            &issued.cert_pem,
            false,
            replace,
        )?,
        write(dir, &format!("{stem}.key"), &issued.key_pem, true, replace)?,
    ])
}

fn write(
    dir: &Path,
    name: &str,
    text: &str,
    secret: bool,
    replace: bool,
) -> Result<PathBuf, IssueError> {
    let path = dir.join(name);
    if !replace && path.exists() {
        return Err(IssueError::Exists { path });
    }
    // Written aside and renamed: a reader never sees half a key. A stale aside file (an
    // interrupted run) is removed first, so the mode below applies to a new file.
    let partial = dir.join(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&partial)
        .map_err(io(&partial))?;
    file.write_all(text.as_bytes()).map_err(io(&partial))?;
    file.sync_all().map_err(io(&partial))?;
    std::fs::rename(&partial, &path).map_err(io(&path))?;
    Ok(path)
}

/// `der` as a PEM block with `label` (RFC 7468: base64 in lines of 64).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER of the first PEM block labelled `label` in `text`.
fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
        .filter_map(Result::ok)
        .find(|block| block.label == label)
        .map(|block| block.contents)
}

fn subject(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "parti-sim");
    name.push(DnType::CommonName, common_name);
    name
}

fn check_name(what: &'static str, value: &str) -> Result<(), IssueError> {
    let fine = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if fine {
        Ok(())
    } else {
        Err(IssueError::BadName {
            what,
            value: value.to_string(),
        })
    }
}

fn generate(what: String) -> impl FnOnce(rcgen::Error) -> IssueError {
    move |source| IssueError::Generate { what, source }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IssueError + '_ {
    move |source| IssueError::Io {
        path: path.to_path_buf(),
        source,
    }
}
