//! A private Kafka-protocol broker (tansu) for tests, and a consumer that reads a topic
//! back whole.
//!
//! Storage is tansu's memory engine. Its sqlite engine would survive a restart, but under
//! concurrent idempotent producing it fails produce requests (`UnableToSend`) and panicked
//! at the next start ("more or less than one row") when tried here; the memory engine loses
//! everything on a restart. So an outage is made by freezing the broker (SIGSTOP, later
//! SIGCONT): it stops answering, like a hung broker or a network partition, and keeps its
//! data, so the test can check afterwards that nothing is missing.
#![allow(dead_code)]

use super::free_port;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The tansu binary: on PATH or in cargo's bin directory (the test command installs it).
pub fn tansu_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin")));
    for dir in candidates {
        let bin = dir.join("tansu");
        if bin.is_file() {
            return bin;
        }
    }
    panic!(
        "tansu is not installed: the test command (scripts/test) installs it with cargo install"
    );
}

impl Tansu {
    pub fn start() -> Tansu {
        let port = free_port();
        let mut tansu = Tansu {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        tansu.resume();
        tansu
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and storage.
    pub fn resume(&mut self) {
        assert!(self.child.is_none());
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let storage = "memory://tansu/".to_string();
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &storage,
            ])
            // tansu reads a .env file from its working directory: give it an empty one.
            .current_dir(self.dir.path())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing is answered.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a frozen broker run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("tansu runs");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Stops the broker (SIGKILL; the memory engine forgets everything).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu_binary())
            .args([
                "topic",
                "create",
                name,
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--partitions",
                &partitions.to_string(),
            ])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu topic create {name}");
    }

    pub fn delete_topic(&self, name: &str) {
        let status = Command::new(tansu_binary())
            .args([
                "topic",
                "delete",
                name,
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu topic delete {name}");
    }

    /// Topic names the broker knows.
    pub fn topics(&self) -> Vec<String> {
        let consumer = self.consumer();
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap();
        metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name().to_string())
            .collect()
    }

    fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", "ingestd-tests")
            .set("enable.auto.commit", "false")
            .set("log_level", "3")
            .create()
            .unwrap()
    }

    /// Reads every record of `topic` until `expected` distinct (device, seq) pairs arrived
    /// (a replay may have written some twice), or the deadline passed.
    pub fn read_all(&self, topic: &str, expected: usize, deadline: Duration) -> Vec<KafkaRecord> {
        let consumer = self.consumer();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions = metadata.topics()[0].partitions().len();
        assert!(partitions > 0, "topic {topic} has no partitions");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut records: Vec<KafkaRecord> = Vec::new();
        let mut distinct = std::collections::HashSet::new();
        let end = Instant::now() + deadline;
        while distinct.len() < expected && Instant::now() < end {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    let mut record = KafkaRecord {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .unwrap_or_default(),
                        device: String::new(),
                        seq: None,
                        value: message
                            .payload()
                            .and_then(|p| serde_json::from_slice(p).ok())
                            .unwrap_or(serde_json::Value::Null),
                    };
                    if let Some(headers) = message.headers() {
                        for header in headers.iter() {
                            let value = header
                                .value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default();
                            match header.key {
                                "device" => record.device = value,
                                "seq" => record.seq = value.parse().ok(),
                                _ => {}
                            }
                        }
                    }
                    distinct.insert((record.device.clone(), record.seq));
                    records.push(record);
                }
                Some(Err(error)) => eprintln!("consumer: {error}"),
                None => {}
            }
        }
        records
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.thaw();
        }
        self.stop();
    }
}

#[derive(Debug, Clone)]
pub struct KafkaRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub device: String,
    pub seq: Option<u64>,
    pub value: serde_json::Value,
}
