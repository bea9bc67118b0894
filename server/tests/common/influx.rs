//! A private InfluxDB 1.x for tests: `influxd run -config FILE` with its meta, data and WAL
//! in a temp dir, on free ports, reporting and self-monitoring off. It can be stopped and
//! started again on the same ports and data (outage tests), and is killed on drop.
//!
//! Its HTTP API is spoken with a tiny blocking HTTP/1.0 client (one request per
//! connection, so the answer is the bytes up to the close: no chunking, no keep-alive).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use super::free_port;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `influxd` gets to answer `/ping` after starting (it takes ~0.1 s here).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// One HTTP exchange's read and write timeout.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Influx {
    /// Holds the config, meta, data, WAL and the server's log; removed on drop.
    dir: tempfile::TempDir,
    http_port: u16,
    rpc_port: u16,
    /// The running server; `None` while stopped.
    child: Option<Child>,
}

fn influxd() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("influxd"))
            .find(|path| path.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "influxd is not installed. The test command installs it (scripts/test runs \
             `apt-get install -y influxdb` when influxd is missing); run the tests through \
             scripts/test, or install the Debian package `influxdb` by hand"
        ),
    }
}

impl Influx {
    /// Starts a fresh server and waits until it answers `/ping`.
    pub fn new() -> Influx {
        let dir = tempfile::tempdir().unwrap();
        let mut influx = Influx {
            dir,
            http_port: free_port(),
            rpc_port: free_port(),
            child: None,
        };
        let root = influx.dir.path();
        let config = format!(
            "reporting-enabled = false\n\
             bind-address = \"127.0.0.1:{rpc}\"\n\
             [meta]\n  dir = \"{root}/meta\"\n\
             [data]\n  dir = \"{root}/data\"\n  wal-dir = \"{root}/wal\"\n  query-log-enabled = false\n\
             [monitor]\n  store-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{http}\"\n  log-enabled = false\n\
             [logging]\n  level = \"warn\"\n",
            rpc = influx.rpc_port,
            http = influx.http_port,
            root = root.display(),
        );
        std::fs::write(root.join("influxdb.conf"), config).unwrap();
        influx.start();
        influx
    }

    /// Starts the server (again) on the same ports and data, and waits for `/ping`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "influxd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(influxd())
            .arg("run")
            .arg("-config")
            .arg(self.dir.path().join("influxdb.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((204, _)) = self.try_http("GET", "/ping", b"") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "influxd exited at start ({status}); its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "influxd did not answer /ping within {START_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and waits for it, keeping its data (what it acknowledged is in
    /// its WAL, which it replays on the next start).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("influxd.log")
    }

    /// The server's own output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn create_database(&self, name: &str) {
        let q = format!("CREATE DATABASE {}", identifier(name));
        let (status, body) = self.http("POST", &format!("/query?q={}", encode(&q)), b"");
        assert_eq!(status, 200, "{q}: {body}");
        assert!(!body.contains("\"error\""), "{q}: {body}");
    }

    /// Runs an InfluxQL query (times in ns) and returns InfluxDB's JSON answer; a query
    /// InfluxDB reports an error for fails the test.
    pub fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let path = format!("/query?db={}&epoch=ns&q={}", encode(db), encode(q));
        let (status, body) = self.http("GET", &path, b"");
        assert_eq!(status, 200, "{q}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(json["results"][0].get("error").is_none(), "{q}: {body}");
        json
    }

    /// The rows of a query's first series, each a column name -> value map; none if the
    /// query found nothing.
    pub fn rows(&self, db: &str, q: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let json = self.query(db, q);
        let Some(series) = json["results"][0]["series"][0].as_object() else {
            return Vec::new();
        };
        let columns: Vec<String> = series["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .cloned()
                    .zip(row.as_array().unwrap().iter().cloned())
                    .collect()
            })
            .collect()
    }

    /// Points of a measurement (counted on its `value` field); 0 if it does not exist.
    pub fn count_points(&self, db: &str, measurement: &str) -> u64 {
        let q = format!("SELECT COUNT(\"value\") FROM {}", identifier(measurement));
        let json = self.query(db, &q);
        json["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or(0)
    }

    /// Writes line protocol (ns precision); returns the status and body.
    pub fn write(&self, db: &str, lines: &str) -> (u16, String) {
        let path = format!("/write?db={}&precision=ns", encode(db));
        self.http("POST", &path, lines.as_bytes())
    }

    /// One HTTP exchange; the server must be running.
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        self.try_http(method, path, body)
            .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
    }

    fn try_http(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.http_port))?;
        stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
        stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\
             Content-Type: text/plain\r\n\r\n",
            self.http_port,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no end of headers")
        })?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status"))?;
        Ok((status, body.to_string()))
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An InfluxQL double-quoted identifier.
pub fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Percent-encodes a query-string value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
