//! The fault proxy against a real echo server over loopback.
//!
//! Risks covered: a fault that does not take effect (traffic still flowing through a
//! black hole or a partition, connections surviving a drop), a fault that outlives
//! `heal` (so the nodes could never converge and the harness would blame Concord), and
//! a delay that is not applied.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use concord_harness::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Sends `msg` and reads the echo; `None` if nothing (or not all) came back in `wait`,
/// or the connection closed.
async fn round_trip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    s.write_all(msg).await.ok()?;
    let mut got = vec![0u8; msg.len()];
    match tokio::time::timeout(wait, s.read_exact(&mut got)).await {
        Ok(Ok(_)) => Some(got),
        _ => None,
    }
}

/// True if the connection is closed (EOF or reset) within `wait`.
async fn closed(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn faults_take_effect_and_heal_restores_a_clean_link() {
    let proxy = Proxy::start(echo_server().await).await.unwrap();

    // Pass.
    let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut a, b"hello", WAIT).await.unwrap(), b"hello");

    // Delay: each direction adds it.
    proxy.set_delay(Duration::from_millis(150));
    let start = Instant::now();
    assert_eq!(round_trip(&mut a, b"slow", WAIT).await.unwrap(), b"slow");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    proxy.heal();
    assert!(
        closed(&mut a, WAIT).await,
        "heal closes delayed connections"
    );

    // Drop: open connections close, new ones work.
    let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut b, b"x", WAIT).await.is_some());
    proxy.drop_connections();
    assert!(
        closed(&mut b, WAIT).await,
        "drop_connections left a connection open"
    );
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut c, b"again", WAIT).await.unwrap(), b"again");

    // Black hole: open and new connections stay open but nothing gets through.
    proxy.black_hole();
    assert!(
        round_trip(&mut c, b"lost", Duration::from_millis(300))
            .await
            .is_none()
    );
    let mut d = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        round_trip(&mut d, b"lost", Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(
        !closed(&mut d, Duration::from_millis(100)).await,
        "a black hole closed a connection"
    );
    proxy.heal();
    assert!(
        closed(&mut c, WAIT).await,
        "heal keeps a black-holed connection"
    );
    assert!(
        closed(&mut d, WAIT).await,
        "heal keeps a black-holed connection"
    );
    let mut e = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut e, b"back", WAIT).await.unwrap(), b"back");

    // Partition: open connections close, new ones are closed on arrival.
    proxy.partition();
    assert!(
        closed(&mut e, WAIT).await,
        "a partition left a connection open"
    );
    let mut f = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        closed(&mut f, WAIT).await,
        "a partition let a new connection through"
    );
    proxy.heal();
    let mut g = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(
        round_trip(&mut g, b"healed", WAIT).await.unwrap(),
        b"healed"
    );

    let counts = proxy.counts();
    assert!(
        counts.refused >= 1 && counts.discarded_bytes >= 8,
        "{counts:?}"
    );

    // Dropping the proxy closes what is left.
    drop(proxy);
    assert!(
        closed(&mut g, WAIT).await,
        "a dropped proxy left a connection open"
    );
}
