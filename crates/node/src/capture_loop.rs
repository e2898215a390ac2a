//! Local writes: the capture loop (woken by the database file's changes, or polling a
//! server's cheap check), retrying what was set aside when the schema changes, and
//! keeping the change log within its retention.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use concord_store::{Store, StoreError};

use crate::error::NodeError;
use crate::shared::{Shared, lock};
use crate::words;

/// Captures local writes; returns how many, and the store's table problems (tables it
/// does not sync now), which status reports like a failing capture.
pub(crate) async fn capture(shared: &Arc<Shared>) -> Result<(u64, Vec<String>), StoreError> {
    let store = shared.store.clone();
    let (n, mut problems) = tokio::task::spawn_blocking(move || {
        let mut store = lock(&store);
        if !store.writes_may_be_pending()? {
            return Ok::<_, StoreError>((0, store.table_problems()));
        }
        let n = store.capture_ready()?;
        if store.take_schema_changed() {
            // A change set aside for naming a column this database lacked may apply now.
            retry_set_aside(&mut **store, "the schema changed");
        }
        Ok::<_, StoreError>((n, store.table_problems()))
    })
    .await
    .map_err(|e| StoreError::CaptureStopped(e.to_string()))??;
    if n > 0 {
        shared.counters.captured.add(n);
        shared.log_changed.send_modify(|v| *v += 1);
    }
    problems.extend(shared.setup_problems.iter().cloned());
    Ok((n, problems))
}

/// Tries again what the store set aside, saying why and what came of it. A failure is
/// logged, not returned: the store keeps serving, and the changes stay set aside.
pub(crate) fn retry_set_aside(store: &mut dyn Store, why: &str) {
    match store.retry_set_aside() {
        Ok(report) if report.applied > 0 => tracing::info!(
            reason = why,
            applied = report.applied,
            still_set_aside = report.set_aside,
            "applied changes that had been set aside"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(reason = why, error = %words::chain(&e), "retrying the changes set aside failed")
        }
    }
}

/// Watches the store's files (a SQLite database and its WAL); any modification wakes
/// the capture loop. Stores on a server have no files: `None`, and the loop polls.
#[allow(clippy::type_complexity)]
pub(crate) fn start_watcher(
    shared: &Arc<Shared>,
) -> Result<Option<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)>, NodeError> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let Some(db) = shared.watch_paths.first().cloned() else {
        return Ok(None);
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let names: Vec<std::ffi::OsString> = shared
        .watch_paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
        .collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(event.kind, EventKind::Modify(_) | EventKind::Create(_))
            && event
                .paths
                .iter()
                .any(|p| names.iter().any(|n| p.ends_with(n)))
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| NodeError::Watch {
        path: db.clone(),
        detail: e.to_string(),
    })?;
    let dir = db
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| NodeError::Watch {
            path: dir,
            detail: e.to_string(),
        })?;
    Ok(Some((watcher, rx)))
}

pub(crate) async fn capture_loop(
    shared: Arc<Shared>,
    watch: Option<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)>,
) {
    let (_watcher, mut events) = match watch {
        Some((watcher, events)) => (Some(watcher), Some(events)),
        None => (None, None),
    };
    // With a file to watch, the timer is only a safety net; a server is polled.
    let cheap = {
        let store = shared.store.clone();
        tokio::task::spawn_blocking(move || lock(&store).answers_pending_cheaply())
            .await
            .unwrap_or(false)
    };
    let period = if events.is_some() {
        shared.config.sync.capture_fallback_ms
    } else if cheap {
        shared.config.sync.capture_check_ms
    } else {
        shared.config.sync.capture_poll_ms
    };
    let mut timer = tokio::time::interval(Duration::from_millis(period.max(1)));
    // A capture longer than the period is followed by one, not by a burst.
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The schema may have changed while the node was stopped.
    let store = shared.store.clone();
    let _ = tokio::task::spawn_blocking(move || {
        retry_set_aside(&mut **lock(&store), "the node started")
    })
    .await;
    loop {
        match events.as_mut() {
            Some(events) => {
                tokio::select! {
                    _ = events.recv() => {}
                    _ = timer.tick() => {}
                }
            }
            None => {
                timer.tick().await;
            }
        }
        let result = capture(&shared).await;
        let failing = match &result {
            Err(e) => Some(words::chain(e)),
            Ok((_, problems)) if !problems.is_empty() => Some(problems.join("; ")),
            Ok(_) => None,
        };
        let was_failing = std::mem::replace(
            &mut *shared
                .capture_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            failing.clone(),
        );
        match (result, failing) {
            (Ok((n, problems)), _) => {
                if !problems.is_empty()
                    && was_failing.as_deref() != Some(problems.join("; ").as_str())
                {
                    tracing::warn!(problems = %problems.join("; "), "some tracked tables are not synced");
                }
                if n > 0 {
                    prune(&shared).await;
                }
            }
            (Err(_), Some(error)) => {
                // Once per distinct failure, not every retry.
                if was_failing.as_deref() != Some(error.as_str()) {
                    tracing::warn!(%error, "capture failed; local writes wait until it succeeds; will retry");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (Err(_), None) => {}
        }
    }
}

/// Keeps the change log within the retention limit: after every capture that logged
/// something, and every few seconds for what sessions apply.
pub(crate) async fn prune_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        prune(&shared).await;
    }
}

async fn prune(shared: &Arc<Shared>) {
    let keep = shared.config.sync.retention_changes;
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || lock(&store).prune_log(keep)).await {
        Ok(Ok(n)) if n > 0 => tracing::info!(pruned = n, keep, "pruned the change log"),
        Ok(Err(e)) => tracing::warn!(error = %words::chain(&e), "pruning the change log failed"),
        _ => {}
    }
}
