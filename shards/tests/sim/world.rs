//! The simulated world around one real [`Core`]: a driver (sockets as byte queues, read
//! gates, keep-alive timers, closing), devices with real ed25519 keys speaking MQTT 3.1.1
//! and 5 through the codec, attackers, a durable log whose commits are delayed or fail, a
//! Kafka sink that lags or goes away, a disk that fills up for a while, and restarts that
//! keep only the committed records (the core restarts with the replay windows and the
//! credential nonces those records give, as the server's start-up rebuild does). Everything is driven by one seeded [`Rng`] and a fake clock.

use crate::oracle::{parse, Oracle, Parsed, Sender, SentMsg};
use crate::rng::Rng;
use ed25519_dalek::SigningKey;
use ingestd_codec::credential::sign_credential;
use ingestd_codec::envelope::{self, Kind, Reading};
use ingestd_codec::mqtt::{
    self, Ack, Connect, Decoded, Disconnect, Origin, Packet, Properties, Protocol, Publish, QoS,
    ReasonCode,
};
use ingestd_shards::core::connect::ConnectInfo;
use ingestd_shards::core::{
    Action, ConnId, Core, CoreConfig, DeviceEntry, Event, Metrics, ReadGate, RecordKind, Time,
};
use ingestd_shards::policy::CommitPolicy;
use ingestd_shards::replay::ReplayWindow;
use ingestd_shards::validate::Limits;
use std::collections::{BTreeMap, VecDeque};

const WALL_START_MS: u64 = 1_764_201_600_000;
const TOPIC_PREFIX: &str = "devices";
const PACKET_BYTES_MAX: usize = 16 * 1024;
const RECORD_OVERHEAD_BYTES: usize = 16;
/// The driver waits this long for a closing connection's acknowledgements.
const DRAIN_MS: u64 = 2_000;
/// Packet ids the attacker uses when injecting into a device's session.
const PKID_ATTACKER_MIN: u16 = 40_000;
const TRACE_LINES: usize = 48;
/// Genuine messages a device remembers for duplicates and for the attacker to replay.
const HISTORY_MAX: usize = 64;

struct NoMetrics;
impl Metrics for NoMetrics {}

/// What one run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub steps: u64,
    pub sent: u64,
    pub acked: u64,
    pub readings: u64,
    pub dead_letters: u64,
    pub restarts: u64,
    pub commits_failed: u64,
    pub connects_refused: u64,
    /// Fresh credentials of genuine devices refused as `replayed_credential` (the nonce
    /// cap the issue lists as a defect).
    pub lockouts: u64,
    /// A credential accepted before a restart accepted again after it (listed defect).
    pub credential_replays_after_restart: u64,
    pub takeovers: u64,
    pub keepalive_timeouts: u64,
    pub gate_bypasses: u64,
    /// Times the disk filled up (commits waited until it had room).
    pub disk_full: u64,
}

struct Outgoing {
    pkid: u16,
    qos: QoS,
    seq: u64,
    payload: Vec<u8>,
}

struct Device {
    id: String,
    key: SigningKey,
    protocol: Protocol,
    conn: Option<u64>,
    connected: bool,
    clean_start: bool,
    keep_alive_s: u16,
    next_seq: u64,
    next_pkid: u16,
    /// QoS 1/2 messages waiting for PUBACK/PUBREC, in send order.
    unacked: Vec<Outgoing>,
    /// QoS 2 packet ids waiting for PUBCOMP.
    pubrel: Vec<u16>,
    inflight_max: usize,
    history: VecDeque<(u64, Vec<u8>)>,
    silent: bool,
    last_send_us: u64,
    reconnect_at_us: u64,
}

struct Conn {
    device: usize,
    /// Opened by an attacker with a captured or forged credential.
    attack: Option<Attack>,
    protocol: Protocol,
    inbound: Vec<u8>,
    eof: bool,
    eof_told: bool,
    /// The CONNECT was handed to the core.
    known: bool,
    accepted: bool,
    read_timeout_ms: u64,
    last_read_us: u64,
    closing_since_us: Option<u64>,
    refused_close_at_us: Option<u64>,
    /// PUBLISHes sent on this connection, by packet id, until acknowledged.
    sent: BTreeMap<u16, VecDeque<SentMsg>>,
    /// Index into `World::credentials` of the password this CONNECT carried.
    credential: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attack {
    ReplayedCredential,
    ForgedCredential,
}

/// A CONNECT password seen on the wire (the attacker sniffs them all).
struct Captured {
    device: usize,
    client_id: String,
    password: Vec<u8>,
    ts_ms: u64,
    /// The life of the core that accepted it, if one did.
    accepted_in_life: Option<u32>,
}

struct LogRecord {
    kind: RecordKind,
    bytes: Vec<u8>,
}

struct PendingCommit {
    end: usize,
    at_us: u64,
    fail: bool,
}

struct Sink {
    confirmed: u64,
    next_report_us: u64,
    outage_until_us: u64,
    /// During the outage nothing is reported at all (otherwise the stale end is).
    silent: bool,
}

pub struct World {
    seed: u64,
    rng: Rng,
    step: u64,
    now: Time,
    config: CoreConfig,
    core: Core<NoMetrics>,
    life: u32,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    log: Vec<LogRecord>,
    durable: usize,
    commit: Option<PendingCommit>,
    commit_fail_per_mille: u64,
    commit_delay_us_max: u64,
    sink: Sink,
    /// The disk is full until then: a commit waits (the driver retries it) and the core
    /// has been told.
    disk_full_until_us: Option<u64>,
    disk_full_told: bool,
    gate_bypass: bool,
    told_confirmed: u64,
    devices: Vec<Device>,
    registry: BTreeMap<String, DeviceEntry>,
    credentials: Vec<Captured>,
    attacker_key: SigningKey,
    attacker_pkid: u16,
    oracle: Oracle,
    trace: VecDeque<String>,
    pub summary: Summary,
}

fn device_key(seed: u64, i: usize) -> SigningKey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    bytes[16] = 0x5a;
    SigningKey::from_bytes(&bytes)
}

fn entry(key: &SigningKey) -> DeviceEntry {
    DeviceEntry {
        key: key.verifying_key(),
        active: true,
        location: "lab".into(),
        region: "eu".into(),
        project: "sim".into(),
        sensor_type: "ndir".into(),
    }
}

fn describe(packet: &Packet<'_>) -> String {
    match packet {
        Packet::Connect(c) => format!("CONNECT {:?} {:?}", c.protocol, c.username),
        Packet::ConnAck(c) => format!("CONNACK {:?} present={}", c.reason, c.session_present),
        Packet::Publish(p) => format!("PUBLISH pkid {} qos {} dup {}", p.pkid, p.qos as u8, p.dup),
        Packet::PubAck(a) => format!("PUBACK {} {:?}", a.pkid, a.reason),
        Packet::PubRec(a) => format!("PUBREC {} {:?}", a.pkid, a.reason),
        Packet::PubRel(a) => format!("PUBREL {} {:?}", a.pkid, a.reason),
        Packet::PubComp(a) => format!("PUBCOMP {} {:?}", a.pkid, a.reason),
        Packet::Disconnect(d) => format!("DISCONNECT {:?}", d.reason),
        other => format!("{:?}", other.packet_type()),
    }
}

impl World {
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let device_count = rng.range(3, 8) as usize;
        let kafka_gate = rng.chance(500);
        let config = CoreConfig {
            shard: 0,
            shards: 1,
            node_id: "sim".into(),
            limits: Limits {
                topic_prefix: TOPIC_PREFIX.into(),
                envelope_bytes_max: 1024,
                clock_skew_ms_max: 300_000,
            },
            verify_signatures: true,
            verify_batch_signatures_max: rng.range(1, 8) as usize,
            verify_batch_delay_us: rng.range(100, 3_000),
            opaque_payloads: false,
            inflight_max: rng.range(2, 8) as u16,
            packet_bytes_max: PACKET_BYTES_MAX,
            keep_alive_s_max: 60,
            connections_per_shard_max: if rng.chance(200) {
                device_count
            } else {
                device_count * 3
            },
            output_bytes_max: 64 * 1024,
            throttle_addresses_max: 1024,
            require_credential: true,
            credential_window_ms: 300_000,
            // Sometimes small, so that evicting nonces (and the floor it leaves) happens.
            credential_nonces_max: if rng.chance(100) {
                rng.range(2, 6) as usize
            } else {
                1 << 16
            },
            failures_before_delay: 3,
            failure_delay_ms: 10,
            failure_delay_ms_max: 200,
            commit: CommitPolicy {
                batch_bytes_max: rng.range(256, 65_536) as usize,
                interval_us: rng.range(200, 5_000),
            },
            pending_bytes_max: if rng.chance(300) {
                rng.range(1_024, 4_096) as usize
            } else {
                1 << 20
            },
            record_overhead_bytes: RECORD_OVERHEAD_BYTES,
            kafka_gate,
            unreachable_after_ms: rng.range(100, 2_000),
            egress: kafka_gate,
            fraud: None,
        };
        let mut devices = Vec::new();
        let mut registry = BTreeMap::new();
        let mut keys = Vec::new();
        for i in 0..device_count {
            let key = device_key(seed, i);
            let id = format!("sim-{i:02}");
            registry.insert(id.clone(), entry(&key));
            keys.push((id.clone(), key.verifying_key()));
            devices.push(Device {
                id,
                key,
                protocol: if rng.chance(500) {
                    Protocol::V5
                } else {
                    Protocol::V311
                },
                conn: None,
                connected: false,
                clean_start: true,
                keep_alive_s: *rng.pick(&[1u16, 2, 5, 30]).unwrap_or(&5),
                next_seq: rng.range(1, 1_000),
                next_pkid: 1,
                unacked: Vec::new(),
                pubrel: Vec::new(),
                inflight_max: rng.range(1, 12) as usize,
                history: VecDeque::new(),
                silent: false,
                last_send_us: 0,
                reconnect_at_us: 0,
            });
        }
        let commit_fail_per_mille = *rng.pick(&[0u64, 20, 100, 300]).unwrap_or(&0);
        let commit_delay_us_max = *rng
            .pick(&[200u64, 2_000, 20_000, 200_000])
            .unwrap_or(&2_000);
        let core = Core::new(config.clone(), NoMetrics, 0, 0);
        Self {
            seed,
            rng,
            step: 0,
            now: Time {
                mono_us: 0,
                wall_ms: WALL_START_MS,
            },
            config,
            core,
            life: 0,
            conns: BTreeMap::new(),
            next_conn: 1,
            log: Vec::new(),
            durable: 0,
            commit: None,
            commit_fail_per_mille,
            commit_delay_us_max,
            sink: Sink {
                confirmed: 0,
                next_report_us: 0,
                outage_until_us: 0,
                silent: false,
            },
            disk_full_until_us: None,
            disk_full_told: false,
            gate_bypass: false,
            told_confirmed: 0,
            devices,
            registry,
            credentials: Vec::new(),
            attacker_key: SigningKey::from_bytes(&[0xee; 32]),
            attacker_pkid: PKID_ATTACKER_MIN,
            oracle: Oracle::new(keys),
            trace: VecDeque::new(),
            summary: Summary::default(),
        }
    }

    /// One line of the run's setup, printed with the summary.
    pub fn setup(&self) -> String {
        format!(
            "devices {} gate {} batch {}/{}us inflight {} commit {}B/{}us fail {}‰ delay<={}us pending_max {}",
            self.devices.len(),
            self.config.kafka_gate,
            self.config.verify_batch_signatures_max,
            self.config.verify_batch_delay_us,
            self.config.inflight_max,
            self.config.commit.batch_bytes_max,
            self.config.commit.interval_us,
            self.commit_fail_per_mille,
            self.commit_delay_us_max,
            self.config.pending_bytes_max,
        )
    }

    fn trace(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{} t={}us] {line}", self.step, self.now.mono_us));
    }

    fn fail(&self, message: &str) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        let features = if cfg!(feature = "mutation-ack-early") {
            " --features mutation-ack-early"
        } else {
            ""
        };
        panic!(
            "simulation failed: seed {} step {}: {message}\nreplay: SIM_SEED={} cargo \
             test -p ingestd-shards{features} --test sim\nlast events:\n  {}",
            self.seed,
            self.step,
            self.seed,
            trace.join("\n  ")
        );
    }

    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step += 1;
            self.advance();
            self.act();
            self.pump();
            self.close_finished();
        }
        self.summary.steps = self.step;
        self.summary.readings = self.oracle.durable_readings;
        self.summary.dead_letters = self.oracle.durable_dead;
    }

    // ---- the clock and timers ----

    fn advance(&mut self) {
        let dt_us = match self.rng.below(100) {
            0..=69 => self.rng.below(1_000),
            70..=89 => self.rng.range(1_000, 10_000),
            90..=97 => self.rng.range(10_000, 200_000),
            _ => self.rng.range(200_000, 3_000_000),
        };
        let target = self.now.mono_us + dt_us;
        // Fire what falls due inside the interval in time order.
        loop {
            let next = [
                self.core.poll_timeout(),
                self.commit.as_ref().map(|c| c.at_us),
                self.config.kafka_gate.then_some(self.sink.next_report_us),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(at) if at <= target => {
                    self.set_time(at.max(self.now.mono_us));
                    self.fire_timers();
                }
                _ => break,
            }
        }
        self.set_time(target);
        self.fire_timers();
        self.keepalive();
    }

    fn set_time(&mut self, mono_us: u64) {
        self.now = Time {
            mono_us,
            wall_ms: WALL_START_MS + mono_us / 1000,
        };
    }

    fn fire_timers(&mut self) {
        let now = self.now.mono_us;
        if self.commit.as_ref().is_some_and(|c| c.at_us <= now) {
            self.complete_commit();
        }
        if self.config.kafka_gate && self.sink.next_report_us <= now {
            self.sink_report();
        }
        if self.core.poll_timeout().is_some_and(|at| at <= now) {
            self.event(Event::Tick);
        }
    }

    fn complete_commit(&mut self) {
        let Some(commit) = self.commit.take() else {
            return;
        };
        // A full disk: the driver retries the commit until there is room, and tells the
        // core, which pauses its readers meanwhile.
        if let Some(until) = self.disk_full_until_us {
            if self.now.mono_us < until {
                if !self.disk_full_told {
                    self.disk_full_told = true;
                    self.trace("disk full: the commit waits".into());
                    self.event(Event::DiskFull { full: true });
                }
                self.commit = Some(PendingCommit {
                    at_us: until,
                    ..commit
                });
                return;
            }
            self.disk_full_until_us = None;
            if std::mem::take(&mut self.disk_full_told) {
                self.trace("disk has room again".into());
                self.event(Event::DiskFull { full: false });
            }
        }
        if commit.fail {
            self.summary.commits_failed += 1;
            self.trace("commit failed".into());
            self.event(Event::CommitFailed);
            return;
        }
        for offset in self.durable..commit.end {
            let record = &self.log[offset];
            if let Err(e) = self
                .oracle
                .on_durable(offset as u64, record.kind, &record.bytes)
            {
                self.fail(&e);
            }
        }
        self.durable = self.durable.max(commit.end);
        let pending_bytes = self.log[commit.end..]
            .iter()
            .map(|r| r.bytes.len() + RECORD_OVERHEAD_BYTES)
            .sum();
        self.trace(format!("committed end {}", commit.end));
        self.event(Event::Committed {
            end: commit.end as u64,
            pending_bytes,
        });
    }

    fn sink_report(&mut self) {
        let now = self.now.mono_us;
        self.sink.next_report_us = now + self.rng.range(5_000, 100_000);
        if now < self.sink.outage_until_us {
            if self.sink.silent {
                return;
            }
        } else if self.rng.chance(700) {
            self.sink.confirmed = self.durable as u64;
        } else {
            let behind = self.durable as u64 - self.sink.confirmed.min(self.durable as u64);
            self.sink.confirmed += self.rng.below(behind + 1);
        }
        let end = self.sink.confirmed;
        self.told_confirmed = self.told_confirmed.max(end);
        self.event(Event::SinkConfirmed { end });
    }

    fn keepalive(&mut self) {
        let now = self.now.mono_us;
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            if conn.accepted
                && conn.closing_since_us.is_none()
                && now.saturating_sub(conn.last_read_us) > conn.read_timeout_ms * 1000
            {
                self.summary.keepalive_timeouts += 1;
                self.trace(format!("conn {id} read timed out"));
                self.event(Event::ReadTimedOut { conn: ConnId(id) });
            }
        }
        // Devices that are not silent ping when idle for half their keep-alive.
        for i in 0..self.devices.len() {
            let d = &self.devices[i];
            if d.connected
                && !d.silent
                && now.saturating_sub(d.last_send_us) >= u64::from(d.keep_alive_s) * 500_000
            {
                self.write(i, &Packet::PingReq);
            }
        }
    }

    // ---- the core and its actions ----

    fn event(&mut self, event: Event<'_>) {
        self.core.handle(event, self.now);
        self.drain();
    }

    fn drain(&mut self) {
        let mut aborts = Vec::new();
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Flush(conn) => self.flush(conn.0),
                Action::Accept {
                    conn,
                    read_timeout_ms,
                } => {
                    self.trace(format!("conn {} accepted", conn.0));
                    let now = self.now.mono_us;
                    if let Some(c) = self.conns.get_mut(&conn.0) {
                        c.accepted = true;
                        c.read_timeout_ms = read_timeout_ms;
                        c.last_read_us = now;
                    }
                }
                Action::Refuse {
                    conn,
                    why,
                    delay_ms,
                } => {
                    self.summary.connects_refused += 1;
                    self.trace(format!("conn {} refused: {why}", conn.0));
                    let at = self.now.mono_us + delay_ms * 1000;
                    if let Some(c) = self.conns.get_mut(&conn.0) {
                        c.refused_close_at_us = Some(at);
                        if c.attack.is_none() && why == "replayed_credential" {
                            self.summary.lockouts += 1;
                        }
                    }
                }
                Action::HandOff { conn, .. } => {
                    self.fail(&format!("conn {} handed off with one shard", conn.0));
                }
                Action::Close { conn, reason } => {
                    self.trace(format!("conn {} close {reason:?}", conn.0));
                    if reason == Some(ReasonCode::SessionTakenOver) {
                        self.summary.takeovers += 1;
                    }
                    let now = self.now.mono_us;
                    if let Some(c) = self.conns.get_mut(&conn.0) {
                        c.closing_since_us.get_or_insert(now);
                    }
                }
                Action::Abort(conn) => aborts.push(conn.0),
                Action::Resume(_) => {}
                Action::Append {
                    kind,
                    offset,
                    record,
                    ..
                } => {
                    if offset != self.log.len() as u64 {
                        self.fail(&format!(
                            "append at offset {offset} but the log holds {} records",
                            self.log.len()
                        ));
                    }
                    let bytes = self.core.record(record).to_vec();
                    if let Err(e) = self.oracle.on_append(offset, kind, &bytes) {
                        self.fail(&e);
                    }
                    let what = match parse(kind, &bytes) {
                        Ok((Parsed::Reading { device, seq }, _)) => {
                            format!("reading {device} {seq}")
                        }
                        Ok((
                            Parsed::Dead {
                                device,
                                reason,
                                seq,
                            },
                            _,
                        )) => {
                            format!("dead letter {device} {seq:?} {reason}")
                        }
                        Ok((Parsed::Credential { device, ts_ms, .. }, _)) => {
                            format!("credential {device} {ts_ms}")
                        }
                        Err(e) => self.fail(&format!("record at {offset} does not parse: {e}")),
                    };
                    self.trace(format!("append {offset}: {what}"));
                    self.log.push(LogRecord { kind, bytes });
                }
                Action::Commit => {
                    if self.commit.is_some() {
                        self.fail("a second commit while one is in flight");
                    }
                    let delay = self.rng.range(1, self.commit_delay_us_max);
                    let fail = self.rng.chance(self.commit_fail_per_mille);
                    self.commit = Some(PendingCommit {
                        end: self.log.len(),
                        at_us: self.now.mono_us + delay,
                        fail,
                    });
                }
                Action::KafkaGate { bypass, lag_ms } => {
                    self.trace(format!("kafka gate bypass={bypass} lag {lag_ms} ms"));
                    if bypass {
                        self.summary.gate_bypasses += 1;
                    }
                    self.gate_bypass = bypass;
                }
            }
        }
        aborts.sort_unstable();
        for id in aborts {
            self.trace(format!("conn {id} aborted"));
            self.drop_conn(id);
            self.core
                .handle(Event::Closed { conn: ConnId(id) }, self.now);
        }
    }

    /// The writer takes the connection's output; the device (if still listening) and the
    /// oracle read it.
    fn flush(&mut self, id: u64) {
        let mut out = Vec::new();
        let _ = self.core.take_output(ConnId(id), &mut out);
        let Some(conn) = self.conns.get(&id) else {
            if !out.is_empty() {
                self.fail(&format!("output for unknown conn {id}"));
            }
            return;
        };
        let protocol = conn.protocol;
        let device = conn.device;
        let attached = conn.attack.is_none() && self.devices[device].conn == Some(id);
        let mut pos = 0;
        while pos < out.len() {
            let (packet, len) =
                match mqtt::decode_from(&out[pos..], protocol, 1 << 20, Origin::Server) {
                    Ok(Decoded::Packet { packet, len }) => (packet, len),
                    other => self.fail(&format!("conn {id}: the core sent {other:?}")),
                };
            pos += len;
            self.trace(format!("conn {id} <- {}", describe(&packet)));
            match &packet {
                Packet::PubAck(ack) | Packet::PubRec(ack) => self.check_ack(id, ack),
                Packet::ConnAck(connack) => self.check_connack(id, connack.reason),
                _ => {}
            }
            if attached {
                self.device_receives(device, id, &packet);
            }
        }
    }

    fn check_ack(&mut self, id: u64, ack: &Ack<'_>) {
        let limit = if self.config.kafka_gate && !self.gate_bypass {
            (self.durable as u64).min(self.told_confirmed)
        } else {
            self.durable as u64
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let protocol = conn.protocol;
        let Some(msg) = conn.sent.get_mut(&ack.pkid).and_then(VecDeque::pop_front) else {
            self.fail(&format!(
                "conn {id}: acknowledgement of packet {} never sent",
                ack.pkid
            ));
        };
        self.summary.acked += 1;
        if let Err(e) =
            self.oracle
                .check_ack(&msg, ack.reason, protocol, limit, self.durable as u64)
        {
            self.fail(&e);
        }
    }

    fn check_connack(&mut self, id: u64, reason: ReasonCode) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (attack, credential) = (conn.attack, conn.credential);
        if reason != ReasonCode::Success {
            return;
        }
        match attack {
            Some(Attack::ForgedCredential) => {
                self.fail(&format!("conn {id}: a forged credential opened a session"));
            }
            Some(Attack::ReplayedCredential) => {
                let Some(accepted) = credential.and_then(|c| self.credentials[c].accepted_in_life)
                else {
                    return;
                };
                if accepted == self.life {
                    self.fail(&format!(
                        "conn {id}: a replayed credential opened a second session"
                    ));
                }
                self.summary.credential_replays_after_restart += 1;
                self.fail(&format!(
                    "conn {id}: a credential accepted before a restart opened a session after it"
                ));
            }
            None => {
                if let Some(c) = credential {
                    self.credentials[c].accepted_in_life = Some(self.life);
                }
            }
        }
    }

    // ---- devices ----

    fn device_receives(&mut self, i: usize, id: u64, packet: &Packet<'_>) {
        match packet {
            Packet::ConnAck(connack) => {
                if connack.reason != ReasonCode::Success {
                    self.detach(i);
                    return;
                }
                let d = &mut self.devices[i];
                d.connected = true;
                d.silent = false;
                if let Some(max) = connack.properties.receive_maximum {
                    d.inflight_max = d.inflight_max.min(usize::from(max));
                }
                // A real client resends what was not acknowledged, DUP set, and PUBREL for
                // what was received.
                let resend: Vec<(u16, QoS, u64, Vec<u8>)> = d
                    .unacked
                    .iter()
                    .map(|o| (o.pkid, o.qos, o.seq, o.payload.clone()))
                    .collect();
                let pubrel = d.pubrel.clone();
                for (pkid, qos, seq, payload) in resend {
                    self.publish_on(i, id, pkid, qos, true, seq, payload, Sender::Device, None);
                }
                for pkid in pubrel {
                    self.write(i, &Packet::PubRel(Ack::new(pkid)));
                }
            }
            Packet::PubAck(ack) => {
                let d = &mut self.devices[i];
                d.unacked
                    .retain(|o| !(o.pkid == ack.pkid && o.qos == QoS::AtLeastOnce));
            }
            Packet::PubRec(ack) => {
                let d = &mut self.devices[i];
                let before = d.unacked.len();
                d.unacked
                    .retain(|o| !(o.pkid == ack.pkid && o.qos == QoS::ExactlyOnce));
                let known = d.unacked.len() < before || d.pubrel.contains(&ack.pkid);
                if known && ack.reason == ReasonCode::Success {
                    if !d.pubrel.contains(&ack.pkid) {
                        d.pubrel.push(ack.pkid);
                    }
                    self.write(i, &Packet::PubRel(Ack::new(ack.pkid)));
                }
            }
            Packet::PubComp(ack) => self.devices[i].pubrel.retain(|p| *p != ack.pkid),
            Packet::Disconnect(_) => self.detach(i),
            _ => {}
        }
    }

    /// The device stops using its connection (the server side may live on: half-open).
    fn detach(&mut self, i: usize) {
        let backoff = self.rng.range(1_000, 300_000);
        let d = &mut self.devices[i];
        d.conn = None;
        d.connected = false;
        d.reconnect_at_us = self.now.mono_us + backoff;
    }

    fn drop_conn(&mut self, id: u64) {
        if let Some(conn) = self.conns.remove(&id) {
            if conn.attack.is_none() && self.devices[conn.device].conn == Some(id) {
                self.detach(conn.device);
            }
        }
    }

    fn write(&mut self, i: usize, packet: &Packet<'_>) {
        let Some(id) = self.devices[i].conn else {
            return;
        };
        self.write_on(id, packet);
        self.devices[i].last_send_us = self.now.mono_us;
    }

    fn write_on(&mut self, id: u64, packet: &Packet<'_>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.eof {
            return;
        }
        if let Err(e) = packet.encode(conn.protocol, &mut conn.inbound) {
            self.fail(&format!("encoding {}: {e:?}", describe(packet)));
        }
    }

    fn payload(&mut self, key: &SigningKey, device: &str, seq: u64) -> Vec<u8> {
        let topic = envelope::telemetry_topic(TOPIC_PREFIX, device);
        let value = self.rng.range(380, 900) as f32;
        let readings = [Reading::new(Kind::Co2Ppm, value)];
        let mut scratch = Vec::new();
        let json = self.rng.chance(300);
        let env = envelope::sign(
            key,
            &topic,
            device,
            seq,
            self.now.wall_ms,
            &readings,
            &mut scratch,
        );
        let Ok(env) = env else {
            self.fail("signing an envelope failed");
        };
        let mut out = Vec::new();
        if json {
            env.encode_json(&mut out);
        } else {
            env.encode_binary(&mut out);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn publish_on(
        &mut self,
        i: usize,
        id: u64,
        pkid: u16,
        qos: QoS,
        dup: bool,
        seq: u64,
        payload: Vec<u8>,
        sender: Sender,
        topic: Option<String>,
    ) {
        let topic =
            topic.unwrap_or_else(|| envelope::telemetry_topic(TOPIC_PREFIX, &self.devices[i].id));
        // Another device's envelope or topic is refused for that before its sequence is looked at.
        let expect_refusal =
            !dup && sender != Sender::Foreign && self.oracle.durable_reading_exists(i, seq);
        let pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
        let publish = Packet::Publish(Publish {
            dup: dup && qos != QoS::AtMostOnce,
            qos,
            retain: false,
            topic: &topic,
            pkid,
            properties: Properties::default(),
            payload: &payload,
        });
        self.write_on(id, &publish);
        self.summary.sent += 1;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if qos == QoS::AtMostOnce || conn.eof {
            return;
        }
        let msg = SentMsg {
            device: i,
            seq,
            payload,
            qos,
            dup,
            sender,
            expect_refusal,
        };
        let queue = conn.sent.entry(pkid).or_default();
        // A packet id is reused only once its exchange ended: older entries are stale.
        queue.retain(|m| m.seq == msg.seq && m.payload == msg.payload);
        queue.push_back(msg);
        self.devices[i].last_send_us = self.now.mono_us;
    }

    fn connected_devices(&self) -> Vec<usize> {
        (0..self.devices.len())
            .filter(|i| self.devices[*i].connected && self.devices[*i].conn.is_some())
            .collect()
    }

    fn open_conn(&mut self, device: usize, protocol: Protocol, attack: Option<Attack>) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                device,
                attack,
                protocol,
                inbound: Vec::new(),
                eof: false,
                eof_told: false,
                known: false,
                accepted: false,
                read_timeout_ms: 0,
                last_read_us: self.now.mono_us,
                closing_since_us: None,
                refused_close_at_us: None,
                sent: BTreeMap::new(),
                credential: None,
            },
        );
        id
    }

    fn connect(&mut self, i: usize) {
        // A device that reconnects abandons its old connection (half-open on the server
        // side, so the new one takes the session over).
        let d = &self.devices[i];
        let protocol = d.protocol;
        let id = self.open_conn(i, protocol, None);
        let clean_start = self.rng.chance(500);
        let client_id = format!("{}-c", self.devices[i].id);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        nonce[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        let d = &mut self.devices[i];
        d.conn = Some(id);
        d.connected = false;
        d.clean_start = clean_start;
        let password = sign_credential(&d.id, &client_id, &d.key, self.now.wall_ms, nonce);
        let device_id = d.id.clone();
        let keep_alive = d.keep_alive_s;
        self.credentials.push(Captured {
            device: i,
            client_id: client_id.clone(),
            password: password.clone().into_bytes(),
            ts_ms: self.now.wall_ms,
            accepted_in_life: None,
        });
        if let Some(c) = self.conns.get_mut(&id) {
            c.credential = Some(self.credentials.len() - 1);
        }
        self.trace(format!(
            "{device_id} connects on conn {id} ({protocol:?}, clean {clean_start})"
        ));
        self.send_connect(
            id,
            protocol,
            &client_id,
            &device_id,
            password.as_bytes(),
            clean_start,
            keep_alive,
        );
        self.devices[i].last_send_us = self.now.mono_us;
    }

    #[allow(clippy::too_many_arguments)]
    fn send_connect(
        &mut self,
        id: u64,
        protocol: Protocol,
        client_id: &str,
        username: &str,
        password: &[u8],
        clean_start: bool,
        keep_alive: u16,
    ) {
        let mut properties = Properties::default();
        if protocol == Protocol::V5 && !clean_start {
            properties.session_expiry_interval = Some(3_600);
        }
        let connect = Packet::Connect(Connect {
            protocol,
            clean_start,
            keep_alive,
            properties,
            client_id,
            will: None,
            username: Some(username),
            password: Some(password),
        });
        self.write_on(id, &connect);
    }

    // ---- one random action per step ----

    fn act(&mut self) {
        let roll = self.rng.below(1000);
        let connected = self.connected_devices();
        match roll {
            0..=399 => self.publish_new(&connected),
            400..=469 => self.duplicate(&connected),
            470..=499 => self.forged(&connected),
            500..=529 => self.replay(&connected),
            530..=544 => self.foreign(&connected),
            545..=559 => {
                // A takeover: the device thinks its connection is dead and opens another.
                if let Some(&i) = self.rng.pick(&connected) {
                    self.connect(i);
                }
            }
            560..=569 => {
                if let Some(&i) = self.rng.pick(&connected) {
                    self.trace(format!("{} goes silent", self.devices[i].id));
                    self.devices[i].silent = true;
                }
            }
            570..=579 => {
                if let Some(&i) = self.rng.pick(&connected) {
                    self.trace(format!("{} disconnects", self.devices[i].id));
                    let disconnect = Packet::Disconnect(Disconnect {
                        reason: ReasonCode::Success,
                        properties: Properties::default(),
                    });
                    self.write(i, &disconnect);
                    self.hang_up(i);
                }
            }
            580..=589 => {
                if let Some(&i) = self.rng.pick(&connected) {
                    self.trace(format!("{} drops its socket", self.devices[i].id));
                    self.hang_up(i);
                }
            }
            590..=599 => self.credential_attack(),
            600..=604 => self.start_sink_outage(),
            605..=606 => self.restart("crash"),
            607 if self.rng.chance(300) => {
                self.trace("the log fails".into());
                self.event(Event::LogFailed);
                self.restart("log failed");
            }
            608 if self.rng.chance(300) => self.graceful_restart(),
            620..=622 if self.disk_full_until_us.is_none() => {
                let length_us = self.rng.range(10_000, 2_000_000);
                self.summary.disk_full += 1;
                self.trace(format!("the disk fills up for {} ms", length_us / 1000));
                self.disk_full_until_us = Some(self.now.mono_us + length_us);
            }
            609..=619 => {
                // An unknown PUBREL (v5 answers "packet identifier not found").
                if let Some(&i) = self.rng.pick(&connected) {
                    self.write(i, &Packet::PubRel(Ack::new(PKID_ATTACKER_MIN - 1)));
                }
            }
            _ => {}
        }
        // Devices without a connection come back after their back-off.
        let now = self.now.mono_us;
        for i in 0..self.devices.len() {
            if self.devices[i].conn.is_none()
                && self.devices[i].reconnect_at_us <= now
                && self.rng.chance(300)
            {
                self.connect(i);
            }
        }
    }

    fn hang_up(&mut self, i: usize) {
        if let Some(id) = self.devices[i].conn {
            if let Some(c) = self.conns.get_mut(&id) {
                c.eof = true;
            }
        }
        self.detach(i);
    }

    fn next_pkid(&mut self, i: usize) -> u16 {
        let d = &mut self.devices[i];
        loop {
            let pkid = d.next_pkid;
            d.next_pkid = if d.next_pkid >= PKID_ATTACKER_MIN - 2 {
                1
            } else {
                d.next_pkid + 1
            };
            if !d.unacked.iter().any(|o| o.pkid == pkid) && !d.pubrel.contains(&pkid) {
                return pkid;
            }
        }
    }

    fn publish_new(&mut self, connected: &[usize]) {
        let Some(&i) = self.rng.pick(connected) else {
            return;
        };
        let Some(id) = self.devices[i].conn else {
            return;
        };
        let d = &self.devices[i];
        if d.unacked.len() + d.pubrel.len() >= d.inflight_max {
            return;
        }
        let qos = match self.rng.below(100) {
            0..=19 => QoS::AtMostOnce,
            20..=64 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let gap = match self.rng.below(100) {
            0..=89 => 1,
            90..=98 => self.rng.range(2, 5),
            _ => self.rng.range(100, 300),
        };
        let seq = self.devices[i].next_seq;
        self.devices[i].next_seq += gap;
        let key = self.devices[i].key.clone();
        let device_id = self.devices[i].id.clone();
        let payload = self.payload(&key, &device_id, seq);
        let pkid = self.next_pkid(i);
        let d = &mut self.devices[i];
        if d.history.len() == HISTORY_MAX {
            d.history.pop_front();
        }
        d.history.push_back((seq, payload.clone()));
        if qos != QoS::AtMostOnce {
            d.unacked.push(Outgoing {
                pkid,
                qos,
                seq,
                payload: payload.clone(),
            });
        }
        self.publish_on(i, id, pkid, qos, false, seq, payload, Sender::Device, None);
    }

    /// The same sequence sent again: an unacknowledged one resent at once (DUP, as a 3.1.1
    /// client may), or an older one republished as a new message with or without DUP.
    fn duplicate(&mut self, connected: &[usize]) {
        let Some(&i) = self.rng.pick(connected) else {
            return;
        };
        let Some(id) = self.devices[i].conn else {
            return;
        };
        if !self.devices[i].unacked.is_empty() && self.rng.chance(500) {
            let n = self.devices[i].unacked.len() as u64;
            let o = &self.devices[i].unacked[self.rng.below(n) as usize];
            let (pkid, qos, seq, payload) = (o.pkid, o.qos, o.seq, o.payload.clone());
            self.publish_on(i, id, pkid, qos, true, seq, payload, Sender::Device, None);
            return;
        }
        let n = self.devices[i].history.len() as u64;
        if n == 0 {
            return;
        }
        let (seq, payload) = self.devices[i].history[self.rng.below(n) as usize].clone();
        let dup = self.rng.chance(500);
        let qos = if self.rng.chance(500) {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        // As a new exchange from the attacker's packet-id range, so the device's own flow is
        // not disturbed.
        let pkid = self.attacker_pkid();
        self.publish_on(i, id, pkid, qos, dup, seq, payload, Sender::Device, None);
    }

    fn attacker_pkid(&mut self) -> u16 {
        let pkid = self.attacker_pkid;
        self.attacker_pkid = if pkid == u16::MAX {
            PKID_ATTACKER_MIN
        } else {
            pkid + 1
        };
        pkid
    }

    /// An attacker inside the device's session sends an envelope with a bad signature:
    /// a fresh sequence, or (DUP) an already accepted one.
    fn forged(&mut self, connected: &[usize]) {
        let Some(&i) = self.rng.pick(connected) else {
            return;
        };
        let Some(id) = self.devices[i].conn else {
            return;
        };
        let (seq, dup) = match self.devices[i].history.back() {
            Some((last, _)) if self.rng.chance(300) => (*last, true),
            _ => (self.devices[i].next_seq + self.rng.below(3), false),
        };
        let key = self.attacker_key.clone();
        let device_id = self.devices[i].id.clone();
        let payload = self.payload(&key, &device_id, seq);
        let qos = *self
            .rng
            .pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::AtLeastOnce])
            .unwrap_or(&QoS::AtLeastOnce);
        let pkid = self.attacker_pkid();
        self.trace(format!("forged {device_id} seq {seq} dup {dup}"));
        self.publish_on(i, id, pkid, qos, dup, seq, payload, Sender::Forged, None);
    }

    /// An attacker replays the exact bytes of a stored reading (no DUP).
    fn replay(&mut self, connected: &[usize]) {
        let Some(&i) = self.rng.pick(connected) else {
            return;
        };
        let Some(id) = self.devices[i].conn else {
            return;
        };
        let stored: Vec<(u64, Vec<u8>)> = self.devices[i]
            .history
            .iter()
            .filter(|(seq, _)| self.oracle.durable_reading_exists(i, *seq))
            .cloned()
            .collect();
        let Some((seq, payload)) = self.rng.pick(&stored).cloned() else {
            return;
        };
        let qos = if self.rng.chance(700) {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let pkid = self.attacker_pkid();
        self.trace(format!("replay {} seq {seq}", self.devices[i].id));
        self.publish_on(i, id, pkid, qos, false, seq, payload, Sender::Replay, None);
    }

    /// Another device's envelope on this device's topic, or this device's on another's.
    fn foreign(&mut self, connected: &[usize]) {
        let Some(&i) = self.rng.pick(connected) else {
            return;
        };
        let Some(id) = self.devices[i].conn else {
            return;
        };
        let other = (i + 1) % self.devices.len();
        let pkid = self.attacker_pkid();
        if self.rng.chance(500) {
            let key = self.devices[other].key.clone();
            let other_id = self.devices[other].id.clone();
            let seq = self.rng.range(1, 5_000);
            let payload = self.payload(&key, &other_id, seq);
            self.publish_on(
                i,
                id,
                pkid,
                QoS::AtLeastOnce,
                false,
                seq,
                payload,
                Sender::Foreign,
                None,
            );
        } else {
            let key = self.devices[i].key.clone();
            let device_id = self.devices[i].id.clone();
            let seq = self.devices[i].next_seq;
            let payload = self.payload(&key, &device_id, seq);
            let topic = envelope::telemetry_topic(TOPIC_PREFIX, &self.devices[other].id);
            self.publish_on(
                i,
                id,
                pkid,
                QoS::AtLeastOnce,
                false,
                seq,
                payload,
                Sender::Foreign,
                Some(topic),
            );
        }
    }

    /// An attacker reuses a sniffed CONNECT password, or signs one with the wrong key.
    fn credential_attack(&mut self) {
        let now_ms = self.now.wall_ms;
        let fresh: Vec<usize> = (0..self.credentials.len())
            .filter(|c| now_ms.saturating_sub(self.credentials[*c].ts_ms) < 250_000)
            .collect();
        if self.rng.chance(500) {
            let Some(&c) = self.rng.pick(&fresh) else {
                return;
            };
            let cred = &self.credentials[c];
            let (device, client_id, password) =
                (cred.device, cred.client_id.clone(), cred.password.clone());
            let protocol = self.devices[device].protocol;
            let device_id = self.devices[device].id.clone();
            let id = self.open_conn(device, protocol, Some(Attack::ReplayedCredential));
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.credential = Some(c);
            }
            self.trace(format!(
                "attacker replays a credential of {device_id} on conn {id}"
            ));
            self.send_connect(id, protocol, &client_id, &device_id, &password, true, 30);
        } else {
            let device = self.rng.below(self.devices.len() as u64) as usize;
            let device_id = self.devices[device].id.clone();
            let client_id = format!("{device_id}-c");
            let password =
                sign_credential(&device_id, &client_id, &self.attacker_key, now_ms, [9; 16]);
            let protocol = self.devices[device].protocol;
            let id = self.open_conn(device, protocol, Some(Attack::ForgedCredential));
            self.trace(format!(
                "attacker forges a credential of {device_id} on conn {id}"
            ));
            self.send_connect(
                id,
                protocol,
                &client_id,
                &device_id,
                password.as_bytes(),
                true,
                30,
            );
        }
    }

    fn start_sink_outage(&mut self) {
        if !self.config.kafka_gate || self.now.mono_us < self.sink.outage_until_us {
            return;
        }
        let length_ms = self.config.unreachable_after_ms * self.rng.range(1, 30) / 10;
        self.sink.outage_until_us = self.now.mono_us + length_ms * 1000;
        self.sink.silent = self.rng.chance(300);
        self.trace(format!(
            "sink outage for {length_ms} ms (silent {})",
            self.sink.silent
        ));
    }

    // ---- restarts ----

    /// The process dies: everything not committed is gone, and every connection with it.
    fn restart(&mut self, why: &str) {
        self.summary.restarts += 1;
        self.life += 1;
        self.trace(format!(
            "restart ({why}): {} of {} records durable",
            self.durable,
            self.log.len()
        ));
        self.log.truncate(self.durable);
        self.commit = None;
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.drop_conn(id);
        }
        let durable = self.durable as u64;
        self.core = Core::new(self.config.clone(), NoMetrics, durable, durable);
        // What the server's start-up rebuild gives: each device's exact window from the
        // durable readings in log order, and the nonces of the durable credentials.
        let mut windows: BTreeMap<String, ReplayWindow> = BTreeMap::new();
        let mut nonces = Vec::new();
        for (offset, record) in self.log.iter().enumerate() {
            match parse(record.kind, &record.bytes) {
                Ok((Parsed::Reading { device, seq }, _)) => {
                    // Readings were appended only when their window accepted them.
                    let _ = windows.entry(device).or_default().commit(seq);
                }
                Ok((
                    Parsed::Credential {
                        device,
                        nonce,
                        ts_ms,
                    },
                    _,
                )) => nonces.push((device, nonce, ts_ms)),
                Ok((Parsed::Dead { .. }, _)) => {}
                Err(e) => self.fail(&format!("record at {offset} does not parse: {e}")),
            }
        }
        for (device, window) in windows {
            self.core.restore_replay(&device, window);
        }
        let now_ms = self.now.wall_ms;
        for (device, nonce, ts_ms) in nonces {
            self.core.restore_credential(&device, nonce, ts_ms, now_ms);
        }
        if let Err(e) = self.oracle.on_restart(durable) {
            self.fail(&e);
        }
        self.disk_full_told = false;
        self.gate_bypass = false;
        self.told_confirmed = 0;
        self.sink.confirmed = self.sink.confirmed.min(durable);
        self.sink.next_report_us = self.now.mono_us;
    }

    /// Stop: the core closes every connection once its acknowledgements are out; then the
    /// process exits and starts again.
    fn graceful_restart(&mut self) {
        self.trace("stop".into());
        self.event(Event::Stop);
        for _ in 0..200 {
            if self.conns.values().all(|c| !c.accepted) {
                break;
            }
            let target = self.now.mono_us + 20_000;
            while let Some(at) = [
                self.core.poll_timeout(),
                self.commit.as_ref().map(|c| c.at_us),
            ]
            .into_iter()
            .flatten()
            .min()
            .filter(|at| *at <= target)
            {
                self.set_time(at.max(self.now.mono_us));
                self.fire_timers();
            }
            self.set_time(target);
            self.fire_timers();
            self.pump();
            self.close_finished();
        }
        self.restart("stopped");
    }

    // ---- the driver's readers and closers ----

    fn pump(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let budget = self.rng.range(0, 3);
            for _ in 0..budget {
                if !self.read_one(id) {
                    break;
                }
            }
        }
    }

    /// Reads one packet of a connection if its gate allows; false when nothing was read.
    fn read_one(&mut self, id: u64) -> bool {
        let Some(conn) = self.conns.get(&id) else {
            return false;
        };
        if conn.refused_close_at_us.is_some() || conn.closing_since_us.is_some() {
            return false;
        }
        if conn.known {
            match self.core.read_gate(ConnId(id)) {
                ReadGate::Read => {}
                ReadGate::Wait => {
                    // The keep-alive counts reads; a reader held back is not idle.
                    let now = self.now.mono_us;
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.last_read_us = now;
                    }
                    return false;
                }
                ReadGate::Stop => return false,
            }
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        let protocol = conn.protocol;
        let known = conn.known;
        let buf = std::mem::take(&mut conn.inbound);
        let decoded = mqtt::decode_from(&buf, protocol, PACKET_BYTES_MAX, Origin::Client);
        let (packet, len) = match decoded {
            Ok(Decoded::Packet { packet, len }) => (packet, len),
            Ok(Decoded::NeedMore { .. }) => {
                let tell = conn.eof && !conn.eof_told && known;
                conn.eof_told |= tell;
                conn.inbound = buf;
                if tell {
                    self.trace(format!("conn {id} read ended"));
                    self.event(Event::ReadEnded { conn: ConnId(id) });
                }
                return false;
            }
            Err(e) => self.fail(&format!(
                "conn {id}: a device sent bytes that do not decode: {e:?}"
            )),
        };
        conn.last_read_us = self.now.mono_us;
        self.trace(format!("conn {id} -> {}", describe(&packet)));
        if known {
            self.core.handle(
                Event::Packet {
                    conn: ConnId(id),
                    packet,
                },
                self.now,
            );
        } else {
            let Packet::Connect(connect) = &packet else {
                self.fail("the first packet of a device is not a CONNECT");
            };
            let info = ConnectInfo::new(connect, len);
            if let Some(c) = self.conns.get_mut(&id) {
                c.known = true;
            }
            let registry = &self.registry;
            let lookup = |device: &str| registry.get(device).cloned();
            self.core.handle(
                Event::Connect {
                    conn: ConnId(id),
                    info: &info,
                    peer: "10.0.0.1:40000".parse().unwrap_or_else(|_| unreachable!()),
                    cert_device: None,
                    handed_in: false,
                    registry: &lookup,
                },
                self.now,
            );
        }
        let mut buf = buf;
        buf.drain(..len);
        if let Some(c) = self.conns.get_mut(&id) {
            let more = std::mem::take(&mut c.inbound);
            buf.extend_from_slice(&more);
            c.inbound = buf;
        }
        self.drain();
        true
    }

    /// Closes connections the core is done with: refused ones after their delay, closing
    /// ones once their acknowledgements are out (or after the drain time).
    fn close_finished(&mut self) {
        let now = self.now.mono_us;
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            if conn.refused_close_at_us.is_some_and(|at| at <= now) {
                self.drop_conn(id);
                self.event(Event::Closed { conn: ConnId(id) });
                continue;
            }
            if !conn.known || conn.refused_close_at_us.is_some() {
                continue;
            }
            let core_conn = self.core.conn(ConnId(id));
            let closing = core_conn.is_none_or(|c| c.closing);
            let inflight = core_conn.map_or(0, |c| c.inflight);
            if !closing {
                continue;
            }
            let since = *self
                .conns
                .get_mut(&id)
                .map(|c| c.closing_since_us.get_or_insert(now))
                .unwrap_or(&mut 0);
            if inflight == 0 || now.saturating_sub(since) > DRAIN_MS * 1000 {
                self.trace(format!("conn {id} finishes"));
                self.event(Event::Finish { conn: ConnId(id) });
                self.drop_conn(id);
                self.event(Event::Closed { conn: ConnId(id) });
            }
        }
    }
}
