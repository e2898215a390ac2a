//! The fault proxy against a real echo server over loopback.
//!
//! Risks covered: a fault that does not take effect (traffic still flowing through a
//! black hole or a partition, connections surviving a drop), a fault that outlives
//! `heal` (so the nodes could never converge and the harness would blame Concord), a
//! delay that is not applied, and a rate cap that lets data through much faster than
//! the cap (a "slow link" that is not slow proves nothing) or that outlives `heal`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// A server that reads and discards everything, counting the bytes it received.
async fn sink_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, received)
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

#[tokio::test]
async fn a_rate_cap_keeps_throughput_near_the_cap_and_heal_lifts_it() {
    const RATE: u64 = 40_000;
    let (sink, received) = sink_server().await;
    let proxy = Proxy::start(sink).await.unwrap();
    proxy.set_rate(RATE);
    assert_eq!(proxy.rate(), Some(RATE));

    // Offer ten seconds' worth at the cap, as fast as the socket takes it.
    let mut capped = TcpStream::connect(proxy.addr()).await.unwrap();
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let _ = capped.write_all(&vec![7u8; 10 * RATE as usize]).await;
        capped
    });
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples.push((start.elapsed(), received.load(Ordering::Relaxed)));
    }
    // Generous bounds, not a timing test: never 1.5 times the cap (plus a chunk of
    // slack), and still flowing (a quarter of the cap at least).
    for (t, got) in &samples {
        let allowed = 1.5 * RATE as f64 * t.as_secs_f64() + 16_384.0;
        assert!(
            (*got as f64) <= allowed,
            "{got} bytes crossed a {RATE} B/s link in {t:?}: {samples:?}"
        );
    }
    let (t, got) = *samples.last().unwrap();
    assert!(
        got as f64 >= 0.25 * RATE as f64 * t.as_secs_f64(),
        "only {got} bytes crossed a {RATE} B/s link in {t:?}: {samples:?}"
    );

    // Heal lifts the cap: 2 MB (50 seconds at the cap) cross in well under 10 s.
    proxy.heal();
    assert_eq!(proxy.rate(), None);
    sender.abort();
    let before = received.load(Ordering::Relaxed);
    let mut free = TcpStream::connect(proxy.addr()).await.unwrap();
    let start = Instant::now();
    free.write_all(&vec![9u8; 2_000_000]).await.unwrap();
    while received.load(Ordering::Relaxed) < before + 2_000_000 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "heal left the link capped: {} of 2000000 bytes in {:?}",
            received.load(Ordering::Relaxed) - before,
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
