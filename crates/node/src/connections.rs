//! The connections sessions run on: accepting peers (mutual TLS, refusing unknown
//! identities with words that say what to add where) and dialing configured peers with
//! backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::{Fingerprint, Identity};
use crate::session;
use crate::session_error::SessionError;
use crate::shared::{Link, Peer, Shared, wall_ms};
use crate::tls;
use crate::words;

/// What the accept loop needs to build each connection's TLS configuration.
pub(crate) struct ServerTls {
    pub(crate) identity: Arc<Identity>,
    pub(crate) allowed: Vec<Fingerprint>,
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, server: ServerTls) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %words::chain(&e), "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let presented = tls::Presented::default();
        let acceptor = match tls::server_config_observed(
            &server.identity,
            server.allowed.iter().copied(),
            presented.clone(),
        ) {
            Ok(config) => TlsAcceptor::from(config),
            Err(e) => {
                shared.refuse(
                    addr,
                    None,
                    format!("TLS setup failed: {}", words::chain(&e)),
                );
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
            let shown = *presented
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let unknown =
                shown.filter(|f| !shared.peers.iter().any(|p| p.config.fingerprint == *f));
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(_)) if unknown.is_some() => {
                    return shared.refuse(
                        addr,
                        unknown,
                        "unknown identity: no [[peers]] entry has this fingerprint; add one to let that node in".into(),
                    );
                }
                Ok(Err(e)) => {
                    return shared.refuse(
                        addr,
                        shown,
                        format!("TLS handshake failed: {}", words::chain(&e)),
                    );
                }
                Err(_) => return shared.refuse(addr, shown, "TLS handshake timed out".into()),
            };
            let fingerprint = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Fingerprint::of(c));
            let Some(peer) = fingerprint
                .and_then(|f| shared.peers.iter().find(|p| p.config.fingerprint == f))
                .cloned()
            else {
                return shared.refuse(
                    addr,
                    fingerprint,
                    "unknown identity: no [[peers]] entry has this fingerprint".into(),
                );
            };
            if !peer.try_activate() {
                return shared.refuse(
                    addr,
                    fingerprint,
                    format!("peer {} is already connected", peer.config.name),
                );
            }
            let result = session::run(tls, peer.clone(), shared.clone()).await;
            log_end(&peer, &result);
            peer.finished(&result, peer.config.address.is_some());
        });
    }
}

fn log_end(peer: &Peer, result: &Result<(), SessionError>) {
    match result {
        Ok(()) => tracing::info!(peer = %peer.config.name, "session closed"),
        Err(e) if e.is_orderly() => {
            tracing::info!(peer = %peer.config.name, reason = %e.words(), "session closed for shutdown")
        }
        Err(e) => tracing::warn!(peer = %peer.config.name, error = %e.words(), "session ended"),
    }
}

/// Retry delays after a failed session: short for a lost link, which usually comes
/// back, and long when an identity was refused (the peer does not know this node, or
/// the node at the address is not the configured peer), which only a person editing a
/// configuration fixes.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
const REFUSED_RETRY_FIRST: Duration = Duration::from_secs(10);
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(60);

pub(crate) async fn dial_loop(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    address: String,
    connector: (TlsConnector, tls::Presented),
) {
    let mut backoff = RETRY_FIRST;
    let mut max = RETRY_MAX;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        if peer.try_activate() {
            peer.runtime().link = Link::Connecting;
            let result = dial_once(&shared, &peer, &address, &connector).await;
            log_end(&peer, &result);
            peer.finished(&result, true);
            if matches!(
                result,
                Err(SessionError::UnknownToPeer(_) | SessionError::WrongPeer { .. })
            ) {
                backoff = backoff.max(REFUSED_RETRY_FIRST);
                max = REFUSED_RETRY_MAX;
            } else {
                max = RETRY_MAX;
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = RETRY_FIRST;
                }
                backoff = backoff.min(max);
            }
        }
        // Jitter keeps two nodes that lost each other from retrying in lockstep.
        let jitter = Duration::from_millis(wall_ms() % 100);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.wait_for(|&stop| stop) => return,
        }
        backoff = (backoff * 2).min(max);
    }
}

async fn dial_and_run(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    address: &str,
    connector: &TlsConnector,
) -> Result<(), SessionError> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
        .await
        .map_err(|_| {
            SessionError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {address} timed out"),
            ))
        })??;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME)
        .map_err(|e| SessionError::Internal(e.to_string()))?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| {
            SessionError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })??;
    session::run(tls, peer.clone(), shared.clone()).await
}

/// One dial, with a refusal of this node's certificate put in words: in TLS 1.3 it
/// arrives as an alert during the handshake or on the first read of the session.
async fn dial_once(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    address: &str,
    (connector, presented): &(TlsConnector, tls::Presented),
) -> Result<(), SessionError> {
    let slot = || {
        presented
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    *slot() = None;
    let result = dial_and_run(shared, peer, address, connector).await;
    result.map_err(|e| {
        let shown = *slot();
        if tls::peer_refused_our_certificate(&e) {
            SessionError::UnknownToPeer(shared.fingerprint)
        } else if let (Some(presented), true) = (shown, tls::we_refused_their_certificate(&e)) {
            SessionError::WrongPeer {
                presented,
                expected: peer.config.fingerprint,
            }
        } else {
            e
        }
    })
}
