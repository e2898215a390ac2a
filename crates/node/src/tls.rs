//! Mutual TLS with pinned identities.
//!
//! There is no certificate authority: each side proves possession of the key of a
//! self-signed certificate, and the other side checks that certificate's fingerprint
//! against its configuration. A client certificate whose fingerprint is not configured
//! fails the handshake, so an unknown node gets nothing and can write nothing. Signature
//! checks are rustls's own (`verify_tls12_signature` / `verify_tls13_signature`); only
//! the trust decision is ours.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{Fingerprint, Identity, IdentityError};

/// The ALPN protocol name of Concord's sync protocol version 1.
pub const ALPN: &[u8] = b"concord/1";

/// The server name a dialer presents; certificates are pinned, not matched by name.
pub(crate) const SERVER_NAME: &str = "node.concord.invalid";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Handshake signature checks, delegated to rustls: only the trust decision is ours.
#[derive(Debug)]
struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The fingerprint of the certificate a client presented in one handshake, kept so a
/// refused connection can be reported with the identity it tried: that is what a person
/// adds to `[[peers]]` if the node should be let in.
pub(crate) type Presented = Arc<Mutex<Option<Fingerprint>>>;

/// Accepts client certificates whose fingerprint is in the allowed set.
#[derive(Debug)]
struct PinnedClients {
    allowed: HashSet<Fingerprint>,
    signatures: Signatures,
    presented: Option<Presented>,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of(end_entity);
        if let Some(presented) = &self.presented {
            *presented
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fingerprint);
        }
        if self.allowed.contains(&fingerprint) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Accepts exactly one server certificate, by fingerprint.
#[derive(Debug)]
struct PinnedServer {
    expected: Fingerprint,
    signatures: Signatures,
    presented: Option<Presented>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of(end_entity);
        if let Some(presented) = &self.presented {
            *presented
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fingerprint);
        }
        if fingerprint == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The identity's key could not be read.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rustls refused the configuration.
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
}

/// Whether a rustls error in `error`'s chain `matches`, looking inside I/O errors
/// too (tokio-rustls wraps TLS failures in them).
fn chain_has_tls_error(
    error: &(dyn std::error::Error + 'static),
    matches: impl Fn(&rustls::Error) -> bool,
) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if tls.is_some_and(&matches) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether `error` (or one of its causes) is the TLS alert a peer sends when it refuses
/// this node's certificate: the peer does not know this node's fingerprint.
pub(crate) fn peer_refused_our_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    chain_has_tls_error(error, |tls| {
        matches!(
            tls,
            rustls::Error::AlertReceived(
                rustls::AlertDescription::AccessDenied
                    | rustls::AlertDescription::BadCertificate
                    | rustls::AlertDescription::CertificateUnknown
            )
        )
    })
}

/// Whether `error` (or one of its causes) is this node refusing the certificate a
/// server presented.
pub(crate) fn we_refused_their_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    chain_has_tls_error(error, |tls| {
        matches!(
            tls,
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        )
    })
}

/// A server configuration that requires a client certificate from `allowed`.
pub fn server_config(
    identity: &Identity,
    allowed: impl IntoIterator<Item = Fingerprint>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    build_server_config(identity, allowed, None)
}

/// [`server_config`] for one connection: the fingerprint the client presents is put
/// in `presented`, refused or not.
pub(crate) fn server_config_observed(
    identity: &Identity,
    allowed: impl IntoIterator<Item = Fingerprint>,
    presented: Presented,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    build_server_config(identity, allowed, Some(presented))
}

fn build_server_config(
    identity: &Identity,
    allowed: impl IntoIterator<Item = Fingerprint>,
    presented: Option<Presented>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = PinnedClients {
        allowed: allowed.into_iter().collect(),
        signatures: Signatures(provider.clone()),
        presented,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![identity.cert()], identity.key()?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that presents `identity` and accepts only `expected`.
pub fn client_config(
    identity: &Identity,
    expected: Fingerprint,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    build_client_config(identity, expected, None)
}

/// [`client_config`] for one peer's dials (one at a time): the fingerprint the server
/// presents is put in `presented`, accepted or not.
pub(crate) fn client_config_observed(
    identity: &Identity,
    expected: Fingerprint,
    presented: Presented,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    build_client_config(identity, expected, Some(presented))
}

fn build_client_config(
    identity: &Identity,
    expected: Fingerprint,
    presented: Option<Presented>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = PinnedServer {
        expected,
        signatures: Signatures(provider.clone()),
        presented,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![identity.cert()], identity.key()?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}
