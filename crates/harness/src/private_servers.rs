//! Private PostgreSQL and MariaDB servers the fault harness may crash and restart.
//!
//! Restarting the shared servers a developer's other tests (or other work) use would be
//! hostile, so a run that crashes database servers starts its own: a PostgreSQL cluster
//! made with `initdb` and a MariaDB data directory made with `mariadb-install-db`, each
//! in a temporary directory, listening on a free port of 127.0.0.1, configured for
//! Concord's log-based capture (`wal_level = logical`; the row-based binary log with
//! full images). A crash is what a power cut does to the server process: PostgreSQL's
//! `immediate` shutdown (no checkpoint, crash recovery at the next start) and SIGKILL of
//! `mariadbd`. Durability settings are relaxed (`fsync = off`,
//! `innodb_flush_log_at_trx_commit = 2`): the process dies, the machine does not, so
//! what the server wrote to the operating system survives as it would.
//!
//! Both need the server binaries of the machine's packages (the same ones CI installs
//! for the shared servers). When running as root, the servers run as their packages'
//! system users (`postgres`, `mysql`), as they refuse to run as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections after a start.
const READY_WITHIN: Duration = Duration::from_secs(60);

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A free TCP port on 127.0.0.1 (free when asked; the server takes it right after).
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Runs `program` (as `user` when this process is root), failing with its output.
fn run_as(user: &str, program: &Path, args: &[&str]) -> Result<(), String> {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {}: {}{}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Makes `dir` belong to `user` when this process is root (the server writes there).
fn hand_over(dir: &Path, user: &str) -> Result<(), String> {
    if !is_root() {
        return Ok(());
    }
    let status = Command::new("chown")
        .args(["-R", user])
        .arg(dir)
        .status()
        .map_err(|e| e.to_string())?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("chown {user} {} failed", dir.display()))
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < READY_WITHIN {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{what} did not accept connections within {READY_WITHIN:?}"
    ))
}

/// The directory of the newest PostgreSQL server binaries installed.
fn postgres_bin() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no PostgreSQL server binaries (/usr/lib/postgresql: {e})"))?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no PostgreSQL server binaries under /usr/lib/postgresql".into())
}

/// A PostgreSQL cluster of this run's own.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// Creates and starts a cluster.
    pub fn start() -> Result<Self, String> {
        let bin = postgres_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("concord-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        hand_over(dir.path(), "postgres")?;
        let data = dir.path().join("data");
        run_as(
            "postgres",
            &bin.join("initdb"),
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        )?;
        let server = Self {
            dir,
            bin,
            port: free_port()?,
        };
        server.start_server()?;
        Ok(server)
    }

    /// The superuser's URL of the `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let mut all = vec!["-D", data.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        run_as("postgres", &self.bin.join("pg_ctl"), &all)
    }

    fn start_server(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical \
             -c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off \
             -c synchronous_commit=on -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.pg_ctl(&[
            "-w",
            "-t",
            "60",
            "-l",
            log.to_str().unwrap_or_default(),
            "-o",
            &options,
            "start",
        ])
    }

    /// Kills the server as a crash would (`immediate`: no checkpoint, every connection
    /// cut), keeps it down for `down`, and starts it again (crash recovery).
    pub fn crash_and_restart(&self, down: Duration) -> Result<(), String> {
        self.pg_ctl(&["-m", "immediate", "stop"])?;
        std::thread::sleep(down);
        self.start_server()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

/// A MariaDB server of this run's own.
pub struct PrivateMariadb {
    dir: tempfile::TempDir,
    port: u16,
    child: Mutex<Option<Child>>,
}

impl PrivateMariadb {
    /// Creates a data directory and starts a server on it.
    pub fn start() -> Result<Self, String> {
        let install = Path::new("/usr/bin/mariadb-install-db");
        if !install.is_file() || !Path::new("/usr/sbin/mariadbd").is_file() {
            return Err("no MariaDB server binaries (mariadb-install-db, mariadbd)".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("concord-my-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        hand_over(dir.path(), "mysql")?;
        let data = dir.path().join("data");
        let mut args = vec![
            "--no-defaults".to_owned(),
            format!("--datadir={}", data.display()),
            "--auth-root-authentication-method=normal".to_owned(),
            "--skip-test-db".to_owned(),
        ];
        if is_root() {
            args.push("--user=mysql".into());
        }
        let output = Command::new(install)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!(
                "mariadb-install-db: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let server = Self {
            dir,
            port: free_port()?,
            child: Mutex::new(None),
        };
        server.start_server()?;
        server.admin("CREATE DATABASE IF NOT EXISTS test")?;
        Ok(server)
    }

    /// root's URL of the `test` database.
    pub fn admin_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    fn admin(&self, sql: &str) -> Result<(), String> {
        let output = Command::new("mariadb")
            .args([
                "-h",
                "127.0.0.1",
                "-u",
                "root",
                "-P",
                &self.port.to_string(),
                "-e",
            ])
            .arg(sql)
            .output()
            .map_err(|e| e.to_string())?;
        output
            .status
            .success()
            .then_some(())
            .ok_or_else(|| format!("mariadb: {}", String::from_utf8_lossy(&output.stderr)))
    }

    fn start_server(&self) -> Result<(), String> {
        let d = self.dir.path();
        let mut command = Command::new("/usr/sbin/mariadbd");
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", d.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", d.join("server.log").display()))
            .arg(format!(
                "--log-bin={}",
                d.join("data").join("binlog").display()
            ))
            .args([
                "--server-id=1",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--innodb-flush-log-at-trx-commit=2",
                "--max-connections=300",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            command.arg("--user=mysql");
        }
        let child = command.spawn().map_err(|e| format!("mariadbd: {e}"))?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        wait_until("the private MariaDB server", || {
            self.admin("SELECT 1").is_ok()
        })
    }

    /// SIGKILLs the server, keeps it down for `down`, and starts it again (InnoDB crash
    /// recovery).
    pub fn crash_and_restart(&self, down: Duration) -> Result<(), String> {
        self.kill();
        std::thread::sleep(down);
        self.start_server()
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMariadb {
    fn drop(&mut self) {
        self.kill();
    }
}
