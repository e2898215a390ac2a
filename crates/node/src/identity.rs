//! A node's identity: a key pair and a self-signed certificate, named by the SHA-256
//! fingerprint of the certificate.
//!
//! Peers are configured by fingerprint, not by a certificate authority: a node accepts a
//! connection only from a certificate whose fingerprint it was told, and dials a peer
//! only to talk to the certificate it expects. Generating the key and certificate is
//! rcgen's job; hashing is sha2's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why an identity could not be created, saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Generating the key or certificate failed.
    #[error("generating the node identity")]
    Generate(#[from] rcgen::Error),
    /// Reading or writing the identity files failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A PEM file did not hold what was expected.
    #[error("{path}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// SHA-256 of a certificate's DER encoding; printed as `sha256:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        let digest = Sha256::digest(cert_der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&digest);
        Self(bytes)
    }

    /// The first 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

/// A fingerprint that is not `sha256:` followed by 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid fingerprint {0:?}: expected sha256: followed by 64 hex digits")]
pub struct ParseFingerprintError(String);

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.trim().strip_prefix("sha256:").unwrap_or(s.trim());
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes)
            .map_err(|_| ParseFingerprintError(s.to_owned()))?;
        Ok(Self(bytes))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's certificate and private key.
#[derive(Clone)]
pub struct Identity {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    fingerprint: Fingerprint,
}

impl Identity {
    const CERT_FILE: &'static str = "node.cert.pem";
    const KEY_FILE: &'static str = "node.key.pem";

    /// Generates a new key pair and a self-signed certificate naming `name`.
    pub fn generate(name: &str) -> Result<Self, IdentityError> {
        let certified =
            rcgen::generate_simple_self_signed(vec![format!("{name}.concord.invalid")])?;
        let cert = certified.cert.der().clone();
        Ok(Self {
            fingerprint: Fingerprint::of(&cert),
            cert,
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    }

    /// Writes `node.cert.pem` and `node.key.pem` (readable by the owner only) to `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join(Self::CERT_FILE);
        std::fs::write(&cert_path, &self.cert_pem).map_err(io(&cert_path))?;
        let key_path = dir.join(Self::KEY_FILE);
        write_private(&key_path, self.key_pem.as_bytes()).map_err(io(&key_path))?;
        Ok(())
    }

    /// Reads the identity saved in `dir`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let cert_path = dir.join(Self::CERT_FILE);
        let key_path = dir.join(Self::KEY_FILE);
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|source| IdentityError::Io {
            path: cert_path.clone(),
            source,
        })?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            IdentityError::Pem {
                path: cert_path.clone(),
                detail: e.to_string(),
            }
        })?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|source| IdentityError::Io {
            path: key_path.clone(),
            source,
        })?;
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| IdentityError::Pem {
            path: key_path,
            detail: e.to_string(),
        })?;
        Ok(Self {
            fingerprint: Fingerprint::of(&cert),
            cert,
            cert_pem,
            key_pem,
        })
    }

    /// The certificate's fingerprint: what peers pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub(crate) fn cert(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    pub(crate) fn key(&self) -> Result<PrivateKeyDer<'static>, IdentityError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| IdentityError::Pem {
            path: PathBuf::from(Self::KEY_FILE),
            detail: e.to_string(),
        })
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_identity_loads_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate("shop").unwrap();
        id.save(dir.path()).unwrap();
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(loaded.fingerprint(), id.fingerprint());
        assert!(loaded.key().is_ok());
    }

    #[test]
    fn fingerprints_print_and_parse_back() {
        let id = Identity::generate("x").unwrap();
        let printed = id.fingerprint().to_string();
        assert!(printed.starts_with("sha256:") && printed.len() == 7 + 64);
        assert_eq!(printed.parse::<Fingerprint>().unwrap(), id.fingerprint());
        assert!("sha256:abcd".parse::<Fingerprint>().is_err());
    }
}
