//! A `concord serve` child process that cannot outlive the test.
//!
//! Why a guard: a test that fails (a panic in any thread) must not leave node
//! processes running on the machine, holding ports and files. [`ServeProcess`] kills
//! its child when dropped, whatever the reason. It can also be killed with SIGKILL
//! (no chance to clean up: the crash the store must survive) and restarted on the same
//! data directory, with the output of every run appended to the same log files.
//!
//! Extra environment variables ([`ServeProcess::start_with_env`]) are given to every
//! run, restarts included: that is how one node gets a skewed clock
//! ([`crate::skew::ClockSkew`]) for the whole test, as a machine with a wrong clock keeps
//! it across a crash.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;

use crate::run::lock;

/// Stdout of every run, in the data directory.
pub const STDOUT_FILE: &str = "serve.out";
/// Stderr of every run, in the data directory.
pub const STDERR_FILE: &str = "serve.err";

/// A node process (`concord serve --dir DIR`), killed when dropped.
#[derive(Debug)]
pub struct ServeProcess {
    binary: PathBuf,
    dir: PathBuf,
    env: Vec<(OsString, OsString)>,
    child: Option<Child>,
    starts: u32,
}

impl ServeProcess {
    /// Starts `binary serve --dir dir`, appending its output to `dir/serve.out` and
    /// `dir/serve.err`.
    pub fn start(binary: &Path, dir: &Path) -> io::Result<Self> {
        Self::start_with_env(binary, dir, Vec::new())
    }

    /// Like [`ServeProcess::start`], with `env` added to the environment of this run and
    /// of every restart.
    pub fn start_with_env(
        binary: &Path,
        dir: &Path,
        env: Vec<(OsString, OsString)>,
    ) -> io::Result<Self> {
        let mut process = Self {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            env,
            child: None,
            starts: 0,
        };
        process.spawn()?;
        Ok(process)
    }

    fn log_file(&self, name: &str) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
    }

    fn spawn(&mut self) -> io::Result<()> {
        let child = Command::new(&self.binary)
            .arg("serve")
            .arg("--dir")
            .arg(&self.dir)
            .env_remove("CONCORD_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(self.log_file(STDOUT_FILE)?)
            .stderr(self.log_file(STDERR_FILE)?)
            .spawn()?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many times the process was started (1 + restarts).
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Kills the process with SIGKILL (no clean shutdown) and reaps it. Does nothing
    /// if it is not running.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            match child.kill() {
                Ok(()) => {}
                // Already exited: reaping below is all that is left.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
                Err(e) => return Err(e),
            }
            child.wait()?;
        }
        Ok(())
    }

    /// Kills (if running) and starts the process again on the same directory.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// `None` while running (or not started); the exit status once it has exited on
    /// its own.
    pub fn exited(&mut self) -> io::Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// What every run printed so far, for failure messages (the last `max_bytes` of
    /// each stream).
    pub fn logs(&self, max_bytes: usize) -> String {
        let read = |name: &str| {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let mut start = text.len().saturating_sub(max_bytes);
            while !text.is_char_boundary(start) {
                start += 1;
            }
            text[start..].to_owned()
        };
        format!(
            "--- {} ({} starts) stdout:\n{}--- stderr:\n{}",
            self.dir.display(),
            self.starts,
            read(STDOUT_FILE),
            read(STDERR_FILE)
        )
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The end of every node's logs (see [`ServeProcess::logs`]), for failure messages.
pub fn all_logs(nodes: &[Mutex<ServeProcess>], max_bytes: usize) -> String {
    nodes
        .iter()
        .map(|n| lock(n).logs(max_bytes))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first node that exited on its own, with its status: a node must only ever stop
/// because the harness killed it.
pub fn first_exited(nodes: &[Mutex<ServeProcess>]) -> io::Result<Option<(usize, ExitStatus)>> {
    for (i, node) in nodes.iter().enumerate() {
        if let Some(status) = lock(node).exited()? {
            return Ok(Some((i, status)));
        }
    }
    Ok(None)
}

/// How many times each node was started, for the report.
pub fn starts(nodes: &[Mutex<ServeProcess>]) -> Vec<u32> {
    nodes.iter().map(|n| lock(n).starts()).collect()
}
