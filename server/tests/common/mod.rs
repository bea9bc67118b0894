//! Shared pieces of the end-to-end tests: a real `ingestd serve` process on free ports, the
//! stock MQTT clients, a small blocking MQTT client built on the codec, and readers of the
//! durable log and the metrics endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use ed25519_dalek::SigningKey;
use ingestd::log::{LogReader, RecordKind};
use ingestd::record;
use ingestd_codec::envelope::{self, Kind, Reading};
use ingestd_codec::mqtt::{self, Decoded, Origin, Packet, Properties, Protocol, QoS, ReasonCode};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod influx;
pub mod kafka;
pub mod postgres;

pub const BIN: &str = env!("CARGO_BIN_EXE_ingestd");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A provisioned fleet in a temp dir.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub keys: HashMap<String, SigningKey>,
}

impl Fleet {
    pub fn provision(count: usize) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(BIN)
            .args(["devices", "provision", "--count"])
            .arg(count.to_string())
            .arg("--out")
            .arg(dir.path().join("devices"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let secrets: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("devices/secrets.json")).unwrap(),
        )
        .unwrap();
        let mut keys = HashMap::new();
        for device in secrets["devices"].as_array().unwrap() {
            let seed = envelope::hex::decode_array::<32>(
                device["secret_key"].as_str().unwrap().as_bytes(),
                false,
            )
            .unwrap();
            keys.insert(
                device["id"].as_str().unwrap().to_string(),
                SigningKey::from_bytes(&seed),
            );
        }
        Fleet { dir, keys }
    }

    pub fn registry(&self) -> PathBuf {
        self.dir.path().join("devices/registry.json")
    }

    pub fn secrets(&self) -> PathBuf {
        self.dir.path().join("devices/secrets.json")
    }

    pub fn device(&self, index: usize) -> String {
        format!("dev-{index:06}")
    }

    pub fn key(&self, device: &str) -> &SigningKey {
        &self.keys[device]
    }

    /// Sets a device's status in the registry file (the server reads it at start).
    pub fn set_status(&self, device: &str, status: &str) {
        let path = self.registry();
        let mut registry: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for entry in registry["devices"].as_array_mut().unwrap() {
            if entry["id"] == device {
                entry["status"] = status.into();
            }
        }
        std::fs::write(&path, serde_json::to_string(&registry).unwrap()).unwrap();
    }

    /// A fresh CONNECT password.
    pub fn password(&self, device: &str, client_id: &str) -> String {
        let mut nonce = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        ingestd_codec::credential::sign_credential(
            device,
            client_id,
            self.key(device),
            now_ms(),
            nonce,
        )
    }

    /// A signed binary (or JSON) envelope for the device's own topic.
    pub fn payload(&self, device: &str, seq: u64, json: bool) -> Vec<u8> {
        self.payload_at(device, seq, now_ms(), json)
    }

    pub fn payload_at(&self, device: &str, seq: u64, ts_ms: u64, json: bool) -> Vec<u8> {
        let topic = topic(device);
        let mut scratch = Vec::new();
        let env = envelope::sign(
            self.key(device),
            &topic,
            device,
            seq,
            ts_ms,
            &[
                Reading::new(Kind::Co2Ppm, 400.0 + (seq % 100) as f32),
                Reading::new(Kind::TemperatureC, 21.5),
            ],
            &mut scratch,
        )
        .unwrap();
        let mut out = Vec::new();
        if json {
            env.encode_json(&mut out);
        } else {
            env.encode_binary(&mut out);
        }
        out
    }
}

pub fn topic(device: &str) -> String {
    format!("devices/{device}/telemetry")
}

/// A running `ingestd serve`.
pub struct Server {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub mqtt: u16,
    pub tls: Option<u16>,
    pub metrics: u16,
    args: Vec<String>,
    /// A command the server runs under (`taskset -c 1`), if any.
    launcher: Vec<String>,
}

impl Server {
    /// Starts with 2 shards on free ports and waits until /readyz says ready.
    pub fn start(fleet: &Fleet, data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_shards(fleet, data_dir, 2, extra)
    }

    pub fn start_with_shards(
        fleet: &Fleet,
        data_dir: &Path,
        shards: usize,
        extra: &[&str],
    ) -> Server {
        Self::start_under(&[], fleet, data_dir, shards, extra)
    }

    /// Starts the server as an argument of `launcher` (e.g. `["taskset", "-c", "1"]`).
    pub fn start_under(
        launcher: &[&str],
        fleet: &Fleet,
        data_dir: &Path,
        shards: usize,
        extra: &[&str],
    ) -> Server {
        let mqtt = free_port();
        let metrics = free_port();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{mqtt}"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics}"),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--registry".into(),
            fleet.registry().display().to_string(),
            "--shards".into(),
            shards.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Server {
            child: None,
            data_dir: data_dir.to_path_buf(),
            mqtt,
            tls: None,
            metrics,
            args,
            launcher: launcher.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    pub fn with_tls(mut self, tls: u16) -> Server {
        self.tls = Some(tls);
        self
    }

    fn spawn(&mut self) {
        let mut command = match self.launcher.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(&self.args)
            .env("INGESTD_LOG", "warn")
            // Small preallocated segments: tests start many servers.
            .env("INGESTD__LOG__SEGMENT_BYTES_MAX", "1048576")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ingestd exited during start-up: {status}");
            }
            if http_get(self.metrics, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "ingestd not ready in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mqtt))
    }

    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics").unwrap().1
    }

    /// The sum over shards (and labels) of a metric, for series matching `filter`.
    pub fn metric(&self, name: &str, filter: &str) -> u64 {
        self.metrics_text()
            .lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .filter(|line| {
                line[name.len()..].starts_with('{') || line[name.len()..].starts_with(' ')
            })
            .filter(|line| line.contains(filter))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Waits until nothing is pending in the logs and the sinks matching `filter` (say
    /// `sink="kafka"`, or "" for all) have confirmed every durable record.
    pub fn wait_sinks_drained(&self, filter: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let backlog = self.metric("ingestd_sink_backlog_records", filter);
            let pending = self.metric("ingestd_log_pending_bytes", "");
            if backlog == 0 && pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sinks ({filter}) not drained: backlog {backlog} records"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ingestd did not exit 30 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP GET: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// Readings and dead letters in the durable log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub shard: usize,
    pub kind: RecordKind,
    pub meta: serde_json::Value,
    pub raw: Vec<u8>,
}

pub fn read_log(data_dir: &Path, shards: usize) -> Vec<LogRecord> {
    let mut records = Vec::new();
    for shard in 0..shards {
        let dir = ingestd::log::shard_dir(data_dir, shard);
        for entry in LogReader::open(&dir, 0).unwrap() {
            let entry = entry.unwrap();
            // The server's own state (accepted credentials), not something a device sent.
            if entry.kind == RecordKind::Credential {
                continue;
            }
            let (meta, raw) = record::split(&entry.payload).unwrap();
            records.push(LogRecord {
                shard,
                kind: entry.kind,
                meta: serde_json::from_slice(meta).unwrap(),
                raw: raw.to_vec(),
            });
        }
    }
    records
}

/// (device, seq) of every reading in the log.
pub fn readings(data_dir: &Path) -> Vec<(String, u64)> {
    read_log(data_dir, 2)
        .into_iter()
        .filter(|r| r.kind == RecordKind::Reading)
        .map(|r| {
            (
                r.meta["device"].as_str().unwrap().to_string(),
                r.meta["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Dead letters' reasons for a device.
pub fn dead_letters(data_dir: &Path, device: &str) -> Vec<String> {
    read_log(data_dir, 2)
        .into_iter()
        .filter(|r| r.kind == RecordKind::DeadLetter && r.meta["device"] == device)
        .map(|r| r.meta["reason"].as_str().unwrap().to_string())
        .collect()
}

/// Runs mosquitto_pub; returns (success, stderr+stdout).
pub fn mosquitto_pub(args: &[&str]) -> (bool, String) {
    let output = Command::new("mosquitto_pub")
        .args(args)
        .output()
        .expect("mosquitto_pub must be installed (scripts/test installs mosquitto-clients)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// What the blocking test client reads from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    ConnAck(ReasonCode, bool),
    PubAck(u16, ReasonCode),
    PubRec(u16, ReasonCode),
    PubComp(u16, ReasonCode),
    SubAck(Vec<ReasonCode>),
    PingResp,
    Disconnect(ReasonCode),
    Other(String),
    Closed,
}

/// A small blocking MQTT client on the project's codec, for what stock clients cannot do:
/// raw bytes, exact packets, pipelined load with per-message acknowledgement tracking.
pub struct Client {
    pub stream: TcpStream,
    pub protocol: Protocol,
    buf: Vec<u8>,
}

impl Client {
    pub fn open(addr: SocketAddr, protocol: Protocol) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            protocol,
            buf: Vec::new(),
        }
    }

    /// Opens and CONNECTs with the device's credential; returns the CONNACK reason.
    pub fn connect(
        addr: SocketAddr,
        fleet: &Fleet,
        device: &str,
        protocol: Protocol,
    ) -> (Client, Reply) {
        let password = fleet.password(device, device);
        Self::connect_with(
            addr,
            device,
            Some(device),
            Some(password.as_bytes()),
            protocol,
        )
    }

    pub fn connect_with(
        addr: SocketAddr,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        protocol: Protocol,
    ) -> (Client, Reply) {
        let mut client = Client::open(addr, protocol);
        let connect = mqtt::Connect {
            protocol,
            clean_start: true,
            keep_alive: 30,
            properties: Properties::default(),
            client_id,
            will: None,
            username,
            password,
        };
        let mut out = Vec::new();
        Packet::Connect(connect).encode(protocol, &mut out).unwrap();
        client.stream.write_all(&out).unwrap();
        let reply = client.read();
        (client, reply)
    }

    pub fn send(&mut self, packet: Packet<'_>) {
        let mut out = Vec::new();
        packet.encode(self.protocol, &mut out).unwrap();
        let _ = self.stream.write_all(&out);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, pkid: u16) {
        self.send(Packet::Publish(mqtt::Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
            properties: Properties::default(),
            payload,
        }));
    }

    /// The next packet from the server, or Closed.
    pub fn read(&mut self) -> Reply {
        loop {
            match mqtt::decode_from(&self.buf, self.protocol, 1 << 20, Origin::Server) {
                Ok(Decoded::Packet { packet, len }) => {
                    let reply = match packet {
                        Packet::ConnAck(c) => Reply::ConnAck(c.reason, c.session_present),
                        Packet::PubAck(a) => Reply::PubAck(a.pkid, a.reason),
                        Packet::PubRec(a) => Reply::PubRec(a.pkid, a.reason),
                        Packet::PubComp(a) => Reply::PubComp(a.pkid, a.reason),
                        Packet::SubAck(s) => Reply::SubAck(s.return_codes),
                        Packet::PingResp => Reply::PingResp,
                        Packet::Disconnect(d) => Reply::Disconnect(d.reason),
                        other => Reply::Other(format!("{other:?}")),
                    };
                    self.buf.drain(..len);
                    return reply;
                }
                Ok(Decoded::NeedMore { .. }) => {
                    let mut chunk = [0u8; 4096];
                    match self.stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return Reply::Closed,
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    }
                }
                Err(error) => return Reply::Other(format!("undecodable reply: {error}")),
            }
        }
    }
}

/// A device that publishes QoS 1 readings with up to `window` in flight until `stop` is
/// set or the connection ends; returns the sequence numbers the server acknowledged.
pub fn run_device(
    addr: SocketAddr,
    fleet: &Fleet,
    device: &str,
    first_seq: u64,
    window: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<u64> {
    let (mut client, reply) = Client::connect(addr, fleet, device, Protocol::V311);
    assert_eq!(
        reply,
        Reply::ConnAck(ReasonCode::Success, false),
        "{device}"
    );
    let topic = topic(device);
    let mut acked = Vec::new();
    let mut seq = first_seq;
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut pkid: u16 = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        while in_flight.len() < window {
            pkid = pkid.wrapping_add(1).max(1);
            let payload = fleet.payload(device, seq, false);
            client.publish(&topic, &payload, QoS::AtLeastOnce, pkid);
            in_flight.insert(pkid, seq);
            seq += 1;
        }
        match client.read() {
            Reply::PubAck(id, ReasonCode::Success) => {
                if let Some(seq) = in_flight.remove(&id) {
                    acked.push(seq);
                }
            }
            Reply::Closed | Reply::Disconnect(_) => return acked,
            other => panic!("{device}: unexpected {other:?}"),
        }
    }
    // Collect the acknowledgements still coming.
    client
        .stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while !in_flight.is_empty() {
        match client.read() {
            Reply::PubAck(id, ReasonCode::Success) => {
                if let Some(seq) = in_flight.remove(&id) {
                    acked.push(seq);
                }
            }
            _ => break,
        }
    }
    acked
}
