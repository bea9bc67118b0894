//! A private PostgreSQL cluster for one test: initdb'd into a temp dir, trust
//! authentication, its own port and socket directory, `fsync=off`, and a database
//! `ingestd`. Stopped (immediately) when dropped.
//!
//! `initdb` and `postgres` refuse to run as root, so the cluster runs as the system user
//! `postgres` through `runuser`; the Debian `postgresql` package provides both
//! (scripts/test installs it when missing).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use super::free_port;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The running cluster.
pub struct Postgres {
    /// Holds data/, sock/ and server.log; removed on drop.
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// The server binaries: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL server binaries (apt-get install postgresql)")
}

/// Runs a command, panicking with its output when it fails.
fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Postgres {
    /// Creates and starts a cluster, and creates the database `ingestd`.
    pub fn new() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path()));
        let postgres = Postgres {
            bin: bindir(),
            port: free_port(),
            dir,
        };
        run(postgres
            .as_postgres("initdb")
            .arg("-D")
            .arg(postgres.data())
            .args([
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]));
        postgres.start();
        postgres.execute_in("postgres", "CREATE DATABASE ingestd");
        postgres
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// A server binary run as the user `postgres`.
    fn as_postgres(&self, program: &str) -> Command {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program));
        command
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log, for a failing test's message.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The connection string of the database `ingestd` (TCP, user postgres).
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=ingestd",
            self.port
        )
    }

    /// Starts the stopped cluster again (same directory and port); waits until it
    /// accepts connections.
    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.socket_dir().display()
        );
        run(self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdout(std::process::Stdio::null()));
    }

    /// Stops the cluster at once (`-m immediate`: like a crash; what was committed
    /// survives, since WAL reaches the OS at commit).
    pub fn stop(&self) {
        run(self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null()));
    }

    fn psql(&self, database: &str, sql: &str) -> String {
        let out = run(Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", database, "-c", sql]));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn execute_in(&self, database: &str, sql: &str) {
        self.psql(database, sql);
    }

    /// Runs SQL in the database `ingestd`, panicking on error.
    pub fn execute(&self, sql: &str) {
        self.psql("ingestd", sql);
    }

    /// The single value a query returns, as text (empty for NULL).
    pub fn query_text(&self, sql: &str) -> String {
        self.psql("ingestd", sql)
    }

    /// The single integer a query returns.
    pub fn query_i64(&self, sql: &str) -> i64 {
        let text = self.query_text(sql);
        text.parse()
            .unwrap_or_else(|_| panic!("{sql}: {text:?} is not an integer"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Default for Postgres {
    fn default() -> Self {
        Self::new()
    }
}
