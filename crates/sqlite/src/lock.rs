//! One Concord process at a time per SQLite file.
//!
//! Two processes working the same file (a second `concord serve` on a copied data
//! directory, two `concord merge` runs, `untrack` under a running node) race each other:
//! both capture the same pending writes, both try to log the same sequence numbers, and
//! the loser reports alarming errors about corrupt metadata although nothing is damaged.
//! So whoever writes Concord's metadata for a file first takes an exclusive lock on a
//! companion file, `<file>-concord.lock`, and says in it who holds it.
//!
//! Why a companion file and not the database itself: SQLite locks the database with
//! POSIX record locks, which a process loses on *every* descriptor of the file as soon
//! as it closes *any* descriptor of it; a second descriptor opened here just to lock
//! could silently drop SQLite's own locks. The companion file is locked with `flock`
//! (std's [`File::try_lock`]), which the kernel releases when the process dies, so a
//! killed node never leaves a stale lock behind. Readers (`info`, `conflicts`,
//! `verify`) take no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concord_store::StoreError;

/// Concord's exclusive hold on one SQLite file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// The companion lock file of the database at `db`.
    pub fn path_for(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push("-concord.lock");
        PathBuf::from(name)
    }

    /// Takes the lock on `db` for `holder` (said to whoever waits for it, e.g.
    /// `concord serve --dir shop`), waiting up to `wait` for another process to let go.
    pub fn acquire(db: &Path, holder: &str, wait: Duration) -> Result<Self, StoreError> {
        let path = Self::path_for(db);
        let io = |e: std::io::Error| StoreError::LockFile {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    return Err(StoreError::HeldByAnother {
                        file: db.display().to_string(),
                        holder: holder.trim().to_owned(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{holder}, process {}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file, path })
    }

    /// Where the lock is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("shop.db");
        let first = FileLock::acquire(&db, "concord serve --dir shop", Duration::ZERO).unwrap();
        let err = FileLock::acquire(&db, "concord merge", Duration::from_millis(100)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("shop.db"), "{text}");
        assert!(text.contains("concord serve --dir shop"), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        FileLock::acquire(&db, "concord merge", Duration::ZERO).unwrap();
    }
}
