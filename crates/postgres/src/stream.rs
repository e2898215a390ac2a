//! The streaming log reader: staging local writes as PostgreSQL commits them.
//!
//! Why a stream: reading the slot with `pg_logical_slot_peek_binary_changes` starts a
//! new decoding session at every call, and each one decodes again from the slot's
//! restart point, which PostgreSQL moves only every 15 s or so. Polled every few
//! milliseconds, that decodes the same WAL over and over (40 ms per call at a 25 MB
//! window, measured). A replication connection (`START_REPLICATION ... LOGICAL`, through
//! the `pgwire-replication` crate) keeps one decoding session: the server sends each
//! transaction once, as it commits.
//!
//! A thread per store reads the stream and stages each captured transaction into
//! `concord.pending` ([`Stager`]), committing its rows together with the position it
//! reached (`slot_lsn` in `concord.meta`); only then does it acknowledge that position
//! to the server, which may then drop the WAL before it. A crash between the two
//! leaves the slot behind the stored position, and those transactions are skipped when
//! sent again, so nothing is staged twice. While no transaction is open, the server's
//! keepalives are acknowledged too, so WAL written to other tables or databases is not
//! kept for Concord.
//!
//! Staging is not capture: the store's fold (`capture.rs`) logs what is staged, as it
//! does for trigger rows. A store that needs *every* local write committed so far
//! (capture, or an apply about to overwrite rows) commits a barrier, a transactional
//! `pg_logical_emit_message` from a connection of its own, and waits until `slot_lsn`
//! passes it: whoever streams the slot (this process or another) staged everything
//! committed before it by then.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use postgres::Client;
use thiserror::Error;

use crate::logical::{PUBLICATION, Stager, Staging, copy_staged, store_position, wal_error};
use crate::pgoutput::{self, Message};
use crate::schema::{TableInfo, quote};
use crate::store::connect;
use concord_store::StoreError;

/// Rows staged per `COPY` while a large transaction streams in.
const PAGE: usize = 5_000;

/// How often the reader looks whether it was asked to stop.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Why the stream stopped (it is then opened again, after a pause).
#[derive(Debug, Error)]
pub(crate) enum StreamError {
    #[error("replication connection: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the replication stream ended")]
    Ended,
    #[error("the URL cannot open a replication connection: {0}")]
    Url(String),
    #[error("starting the reader's runtime: {0}")]
    Runtime(std::io::Error),
}

impl From<postgres::Error> for StreamError {
    fn from(e: postgres::Error) -> Self {
        StreamError::Store(e.into())
    }
}

/// What the reader thread and the store share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Transactions with rows staged so far.
    staged: AtomicU64,
    /// Set while the store applies: reading then would only make the server decode the
    /// store's own writes on the other core while they are being made.
    paused: AtomicBool,
    /// Why the stream is down, while it is.
    error: Mutex<Option<String>>,
}

/// A running reader; dropping it stops the thread.
pub(crate) struct LogStream {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogStream {
    /// Starts reading `slot` of the database at `url`.
    pub(crate) fn start(url: &str, slot: &str) -> Result<LogStream, StreamError> {
        let config = replication_config(url, slot)?;
        let shared = Arc::new(Shared::default());
        let thread = {
            let (shared, url) = (shared.clone(), url.to_owned());
            std::thread::Builder::new()
                .name("concord-pg-log".into())
                .spawn(move || run(&url, config, &shared))
                .map_err(StreamError::Runtime)?
        };
        Ok(LogStream {
            shared,
            thread: Some(thread),
        })
    }

    /// Transactions with rows staged since the reader started.
    pub(crate) fn staged_transactions(&self) -> u64 {
        self.shared.staged.load(Ordering::SeqCst)
    }

    /// Stops reading until [`LogStream::resume`]: the server's sender then waits for
    /// the socket, and decodes nothing meanwhile. An apply pauses the reader while it
    /// writes (after its barrier), since everything it writes is its own and skipped.
    pub(crate) fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    /// Reads again after [`LogStream::pause`].
    pub(crate) fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
    }

    /// Why the stream is down, while it is.
    pub(crate) fn error(&self) -> Option<String> {
        self.shared
            .error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Waiting would block an async runtime's thread; the reader stops on its own
        // within `STOP_CHECK` there.
        if let Some(thread) = self.thread.take()
            && tokio::runtime::Handle::try_current().is_err()
        {
            let _ = thread.join();
        }
    }
}

/// The replication connection's settings from a store URL: TCP, without TLS (as the
/// store's own connection), with the session settings value text depends on.
fn replication_config(url: &str, slot: &str) -> Result<ReplicationConfig, StreamError> {
    let config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| StreamError::Url(e.to_string()))?;
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(_) => {
            return Err(StreamError::Url(
                "Unix-socket hosts are not supported".into(),
            ));
        }
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config
        .get_user()
        .ok_or_else(|| StreamError::Url("no user".into()))?;
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = config.get_dbname().unwrap_or(user);
    Ok(
        ReplicationConfig::new(host, user, password, database, slot, PUBLICATION)
            .with_port(port)
            .with_options(
                "-c DateStyle=ISO,YMD -c TimeZone=UTC -c extra_float_digits=1 -c bytea_output=hex",
            )
            .with_application_name("concord log reader"),
    )
}

/// The thread: streams until asked to stop, opening the stream again after a failure
/// (the server restarted, the slot is held by another process for now).
fn run(url: &str, config: ReplicationConfig, shared: &Shared) {
    let mut pause = Duration::from_millis(100);
    while !shared.stop.load(Ordering::SeqCst) {
        match stream(url, config.clone(), shared) {
            Ok(()) => return,
            Err(e) => {
                let text = e.to_string();
                let mut error = shared.error.lock().unwrap_or_else(|p| p.into_inner());
                if error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "reading PostgreSQL's write-ahead log failed; retrying");
                }
                *error = Some(text);
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One replication session.
fn stream(url: &str, config: ReplicationConfig, shared: &Shared) -> Result<(), StreamError> {
    let mut client = connect(url)?;
    let slot = config.slot.clone();
    let mut stager = Stager::load(&mut client, &slot)?;
    let config = config.with_start_lsn(Lsn::from_u64(stager.stored()));
    // One worker thread of its own, so the connection answers the server's keepalives
    // while the reader is paused or busy staging.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(StreamError::Runtime)?;
    let mut repl = rt.block_on(ReplicationClient::connect(config))?;
    rt.block_on(repl.wait_started())?;
    if let Ok(mut error) = shared.error.lock() {
        *error = None;
    }
    let mut open = false;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            if open {
                let _ = client.batch_execute("ROLLBACK");
            }
            repl.stop();
            return Ok(());
        }
        if shared.paused.load(Ordering::SeqCst) && !stager.in_transaction() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let event = match rt.block_on(async { tokio::time::timeout(STOP_CHECK, repl.recv()).await })
        {
            Err(_) => continue,
            Ok(event) => event?.ok_or(StreamError::Ended)?,
        };
        let message = match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => Message::Begin {
                final_lsn: final_lsn.as_u64(),
                commit_time: commit_time_micros,
                xid,
            },
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => Message::Commit {
                commit_lsn: lsn.as_u64(),
                end_lsn: end_lsn.as_u64(),
                commit_time: commit_time_micros,
            },
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                ..
            } => Message::Logical {
                transactional,
                lsn: lsn.as_u64(),
                prefix,
            },
            ReplicationEvent::XLogData { data, .. } => {
                // PostgreSQL 15 cannot leave Concord's own applied rows out of the
                // stream; they are dropped here unparsed.
                if stager.skipping() && matches!(data.first(), Some(b'I' | b'U' | b'D')) {
                    continue;
                }
                pgoutput::parse(&data).map_err(wal_error)?
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if !stager.in_transaction() {
                    repl.update_applied_lsn(wal_end);
                }
                continue;
            }
            ReplicationEvent::StoppedAt { .. } => return Ok(()),
        };
        let table = match &message {
            Message::Relation(relation) => {
                tracked_table(&mut client, &relation.namespace, &relation.name)?
            }
            _ => None,
        };
        match stager.read(message, &mut |_, _| table.clone())? {
            Staging::Continue => {
                if stager.staged.len() >= PAGE {
                    begin(&mut client, &mut open)?;
                    copy_staged(&mut client, &mut stager.staged)?;
                }
            }
            Staging::Commit { end_lsn } => {
                let rows = open || !stager.staged.is_empty();
                begin(&mut client, &mut open)?;
                if !rows {
                    // A barrier alone: its position need not survive a crash (nothing
                    // staged depends on it), so its commit does not wait for a flush,
                    // while every waiter, in any process, sees it at once.
                    client.batch_execute("SET LOCAL synchronous_commit = off")?;
                }
                copy_staged(&mut client, &mut stager.staged)?;
                store_position(&mut client, end_lsn)?;
                client.batch_execute("COMMIT")?;
                open = false;
                if rows {
                    shared.staged.fetch_add(1, Ordering::SeqCst);
                }
                repl.update_applied_lsn(Lsn::from_u64(end_lsn));
            }
            Staging::Skipped { end_lsn } => {
                if open {
                    client.batch_execute("ROLLBACK")?;
                    open = false;
                }
                stager.staged.clear();
                repl.update_applied_lsn(Lsn::from_u64(end_lsn));
            }
        }
    }
}

fn begin(client: &mut Client, open: &mut bool) -> Result<(), postgres::Error> {
    if !*open {
        client.batch_execute("BEGIN")?;
        *open = true;
    }
    Ok(())
}

/// The tracked table a decoded relation is, read from the catalog as it is now (the
/// fold maps positions the same way, by column name).
fn tracked_table(
    client: &mut Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<TableInfo>>, StreamError> {
    let schema = if namespace.is_empty() {
        "pg_catalog"
    } else {
        namespace
    };
    let Some(row) = client.query_opt(
        "SELECT id FROM concord.tables WHERE tracked AND schema_name = $1 AND name = $2",
        &[&schema, &name],
    )?
    else {
        return Ok(None);
    };
    let qualified = format!("{}.{}", quote(schema), quote(name));
    match TableInfo::introspect(client, &qualified) {
        Ok(mut info) => {
            info.id = row.get(0);
            Ok(Some(Arc::new(info)))
        }
        Err(e) => {
            tracing::warn!(table = %qualified, error = %e, "a tracked table cannot be read; its writes are not staged");
            Ok(None)
        }
    }
}
