//! A fault-injecting TCP proxy for one link between two nodes.
//!
//! The dialing node's `[[peers]] address` points at the proxy, which forwards each
//! accepted connection to the real listener. The test changes the proxy's behaviour
//! while the nodes run:
//!
//! * [`Proxy::set_delay`]: every chunk is delivered `delay` after it was read (latency,
//!   not a bandwidth cap: chunks queue, so throughput is kept);
//! * [`Proxy::set_rate`]: a bandwidth cap, in bytes per second and per direction,
//!   shared by every connection of the link, as on a slow or congested line: the data
//!   arrives, but late, and a large batch takes seconds to cross;
//! * [`Proxy::drop_connections`]: every open connection is closed at once, as when a
//!   NAT or a load balancer forgets them; new ones are accepted;
//! * [`Proxy::black_hole`]: connections stay open (and new ones are accepted and
//!   connected) but nothing is forwarded, as with a dead route: only the nodes' own
//!   timeouts notice. A connection that lost data keeps discarding until it is closed,
//!   because forwarding the rest of a TLS stream with a hole in it would test
//!   corruption, not a black hole;
//! * [`Proxy::partition`]: open connections are closed and new ones are closed as soon
//!   as they are accepted, so the dialer sees every attempt fail;
//! * [`Proxy::heal`]: back to a clean link (no delay, no rate cap, no black hole, no
//!   partition), closing connections that were faulty.
//!
//! Control is synchronous (a `watch` channel), so a test thread drives it without being
//! async; the forwarding runs on whatever tokio runtime [`Proxy::start`] was awaited on.
//! Dropping the [`Proxy`] stops it and closes every connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long the proxy tries to reach the real listener before giving up on a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Chunks read but not yet written, per direction of a connection.
const QUEUE_CHUNKS: usize = 256;
/// Bytes read at once.
const CHUNK_BYTES: usize = 16 * 1024;
/// Under a rate cap, data is written in pieces of about this share of a second, so
/// that the cap holds over short intervals too, not only on average.
const PIECES_PER_SECOND: u64 = 50;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward (after the configured delay).
    Pass,
    /// Accept and hold connections, forward nothing.
    BlackHole,
    /// Close every connection, including new ones.
    Partition,
}

#[derive(Clone, Copy, Debug)]
struct Control {
    mode: Mode,
    delay: Duration,
    /// Bandwidth cap in bytes per second and per direction; `None` for none.
    rate: Option<u64>,
    /// Bumped to close every open connection.
    epoch: u64,
    /// Set when the proxy is dropped.
    closed: bool,
}

/// Counters of what the proxy did, for reports.
#[derive(Debug, Default)]
pub struct ProxyStats {
    accepted: AtomicU64,
    refused: AtomicU64,
    forwarded_bytes: AtomicU64,
    discarded_bytes: AtomicU64,
    upstream_failures: AtomicU64,
}

/// A snapshot of [`ProxyStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyCounts {
    /// Connections accepted and forwarded (or black-holed).
    pub accepted: u64,
    /// Connections closed on accept because of a partition.
    pub refused: u64,
    /// Bytes delivered, both directions.
    pub forwarded_bytes: u64,
    /// Bytes swallowed by a black hole, both directions.
    pub discarded_bytes: u64,
    /// Connections closed because the real listener could not be reached.
    pub upstream_failures: u64,
}

/// A running proxy. Dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    control: watch::Sender<Control>,
    stats: Arc<ProxyStats>,
}

/// When each direction of a link may next send under a rate cap, shared by all of the
/// link's connections so that opening more connections does not multiply the cap.
#[derive(Debug)]
struct Pacer {
    next_free: Mutex<Instant>,
}

impl Pacer {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            next_free: Mutex::new(Instant::now()),
        })
    }

    /// Reserves the link's next `bytes / rate` seconds and returns when they start.
    fn reserve(&self, bytes: usize, rate: u64) -> Instant {
        let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*next).max(Instant::now());
        *next = start + Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
        start
    }
}

/// The size of the pieces written under a cap of `rate` bytes per second.
fn piece_bytes(rate: u64) -> usize {
    ((rate / PIECES_PER_SECOND) as usize).clamp(64, CHUNK_BYTES)
}

impl Proxy {
    /// Listens on a fresh loopback port and forwards to `target`. Must be awaited on
    /// the tokio runtime that will run the forwarding.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (control, rx) = watch::channel(Control {
            mode: Mode::Pass,
            delay: Duration::ZERO,
            rate: None,
            epoch: 0,
            closed: false,
        });
        let stats = Arc::new(ProxyStats::default());
        // One pacer per direction: to the listener (up) and back to the dialer (down).
        let pacers = [Pacer::new(), Pacer::new()];
        tokio::spawn(accept_loop(listener, target, rx, stats.clone(), pacers));
        Ok(Self {
            addr,
            target,
            control,
            stats,
        })
    }

    /// Where nodes should dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.control.borrow().mode
    }

    /// Delivers every chunk `delay` after it was read (zero for none).
    pub fn set_delay(&self, delay: Duration) {
        self.control.send_modify(|c| c.delay = delay);
    }

    /// Caps the link at `bytes_per_sec` bytes per second in each direction (at least
    /// 1), for open and new connections, until [`Proxy::heal`]. Over any interval from
    /// the moment the cap is set, at most `bytes_per_sec` × its length, plus one piece
    /// of a fiftieth of a second's worth (at least 64 bytes), crosses in a direction.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.control
            .send_modify(|c| c.rate = Some(bytes_per_sec.max(1)));
    }

    /// The current rate cap, if any.
    pub fn rate(&self) -> Option<u64> {
        self.control.borrow().rate
    }

    /// Closes every open connection now; new connections are accepted as before.
    pub fn drop_connections(&self) {
        self.control.send_modify(|c| c.epoch += 1);
    }

    /// Stops forwarding anything, in both directions, on open and new connections.
    pub fn black_hole(&self) {
        self.control.send_modify(|c| c.mode = Mode::BlackHole);
    }

    /// Closes open connections and every new one as it is accepted.
    pub fn partition(&self) {
        self.control.send_modify(|c| {
            c.mode = Mode::Partition;
            c.epoch += 1;
        });
    }

    /// A clean link again: no delay, no cap, forwarding; connections that were
    /// black-holed, delayed or capped are closed so the nodes start fresh sessions.
    pub fn heal(&self) {
        self.control.send_modify(|c| {
            let faulty = c.mode != Mode::Pass || !c.delay.is_zero() || c.rate.is_some();
            c.mode = Mode::Pass;
            c.delay = Duration::ZERO;
            c.rate = None;
            if faulty {
                c.epoch += 1;
            }
        });
    }

    /// What the proxy has done so far.
    pub fn counts(&self) -> ProxyCounts {
        let s = &self.stats;
        ProxyCounts {
            accepted: s.accepted.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            forwarded_bytes: s.forwarded_bytes.load(Ordering::Relaxed),
            discarded_bytes: s.discarded_bytes.load(Ordering::Relaxed),
            upstream_failures: s.upstream_failures.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.control.send_modify(|c| c.closed = true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mut control: watch::Receiver<Control>,
    stats: Arc<ProxyStats>,
    pacers: [Arc<Pacer>; 2],
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = control.wait_for(|c| c.closed) => return,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let now = *control.borrow();
        if now.closed {
            return;
        }
        if now.mode == Mode::Partition {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(
            client,
            target,
            control.clone(),
            stats.clone(),
            pacers.clone(),
        ));
    }
}

/// Ends when the connection's epoch passes or the proxy closes.
async fn cut(control: &mut watch::Receiver<Control>, epoch: u64) {
    let _ = control.wait_for(|c| c.closed || c.epoch != epoch).await;
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut control: watch::Receiver<Control>,
    stats: Arc<ProxyStats>,
    pacers: [Arc<Pacer>; 2],
) {
    let [up_pacer, down_pacer] = pacers;
    let epoch = control.borrow().epoch;
    let upstream = tokio::select! {
        upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)) => upstream,
        _ = cut(&mut control, epoch) => return,
    };
    let server = match upstream {
        Ok(Ok(server)) => server,
        _ => {
            stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (up_tx, up_rx) = mpsc::channel(QUEUE_CHUNKS);
    let (down_tx, down_rx) = mpsc::channel(QUEUE_CHUNKS);
    // Whichever direction ends first (EOF, error, cut) ends the whole connection: the
    // sockets are dropped together, which is what a node sees when a link dies.
    let mut watcher = control.clone();
    tokio::select! {
        _ = read_side(client_read, up_tx, control.clone(), stats.clone()) => {}
        _ = write_side(up_rx, server_write, control.clone(), up_pacer, stats.clone()) => {}
        _ = read_side(server_read, down_tx, control.clone(), stats.clone()) => {}
        _ = write_side(down_rx, client_write, control.clone(), down_pacer, stats.clone()) => {}
        _ = cut(&mut watcher, epoch) => {}
    }
}

/// Reads chunks and queues them with their delivery time, or discards them in a black
/// hole (after which the connection never forwards again).
async fn read_side(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: mpsc::Sender<(Instant, Vec<u8>)>,
    control: watch::Receiver<Control>,
    stats: Arc<ProxyStats>,
) {
    let mut poisoned = false;
    loop {
        let mut buf = vec![0; CHUNK_BYTES];
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.truncate(n);
        let now = *control.borrow();
        if poisoned || now.mode != Mode::Pass {
            poisoned = true;
            stats.discarded_bytes.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        if to.send((Instant::now() + now.delay, buf)).await.is_err() {
            return;
        }
    }
}

/// Delivers queued chunks when due, in pieces paced by the link's rate cap if one is set
/// (looked up before every piece, so a cap set or lifted mid-connection applies at once).
async fn write_side(
    mut from: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    control: watch::Receiver<Control>,
    pacer: Arc<Pacer>,
    stats: Arc<ProxyStats>,
) {
    while let Some((due, chunk)) = from.recv().await {
        tokio::time::sleep_until(due).await;
        let mut rest = chunk.as_slice();
        while !rest.is_empty() {
            let rate = control.borrow().rate;
            let n = match rate {
                Some(rate) => {
                    let n = rest.len().min(piece_bytes(rate));
                    tokio::time::sleep_until(pacer.reserve(n, rate)).await;
                    n
                }
                None => rest.len(),
            };
            if to.write_all(&rest[..n]).await.is_err() {
                return;
            }
            stats.forwarded_bytes.fetch_add(n as u64, Ordering::Relaxed);
            rest = &rest[n..];
        }
    }
}
