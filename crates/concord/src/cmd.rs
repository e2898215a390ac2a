//! One module per subcommand, and `target`, the FILE-or-`--dir` argument the read-only
//! commands share.

pub(crate) mod conflicts;
pub(crate) mod demo;
pub(crate) mod failures;
pub(crate) mod info;
pub(crate) mod init;
pub(crate) mod merge;
pub(crate) mod serve;
pub(crate) mod status;
pub(crate) mod target;
pub(crate) mod track;
pub(crate) mod untrack;
pub(crate) mod verify;

/// How long a command waits for another Concord process to let go of a SQLite file.
const FILE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes this process's exclusive hold on the SQLite file `db` for `command` (waiting
/// up to [`FILE_LOCK_WAIT`]), so a running node or another command never works on the
/// file at the same time. None when the file does not exist: the command then fails
/// naming it, and no lock file is left beside a missing database.
pub(crate) fn hold_file(
    db: &std::path::Path,
    command: &str,
) -> anyhow::Result<Option<concord_sqlite::FileLock>> {
    if !db.exists() {
        return Ok(None);
    }
    Ok(Some(concord_sqlite::FileLock::acquire(
        db,
        command,
        FILE_LOCK_WAIT,
    )?))
}
