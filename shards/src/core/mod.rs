//! The shard core: every rule of a shard as one state machine with no I/O, no runtime and
//! no clock, in the manner of quinn-proto and rustls. The driver (`server/src/serve/`)
//! feeds it [`Event`]s with the time, carries out the [`Action`]s it queues
//! ([`Core::poll_action`]), takes each connection's output bytes when told
//! ([`Core::take_output`]), and wakes it at [`Core::poll_timeout`].
//!
//! - [`connect`]: CONNECT authentication order, credentials made durable before the
//!   CONNACK, takeover, session persistence, keep-alive.
//! - [`publish`]: the QoS flows, the checks, verification batching, building the records.
//! - [`expiry`]: MQTT 5 session expiry, and the DISCONNECT that may change it.
//! - [`acks`]: acknowledgements held until the log (and Kafka, when gated) covers them.
//! - [`record`]: the log record format; [`reason`]: the one refusal enum; [`recent`]: the
//!   last readings per device, to tell a redelivery from another message.
//!
//! Limits: one core per shard; connections are [`ConnId`]s handed out by the driver;
//! output is buffered per connection (one flush action per connection per event, not
//! one allocation per acknowledgement). Offsets are counted here from the log's start
//! offset; the driver asserts the log agrees.

pub mod acks;
pub mod connect;
pub mod expiry;
pub mod publish;
pub mod reason;
pub mod recent;
pub mod record;
#[cfg(test)]
mod tests;

use crate::fraud::engine::{DeviceFraud, Scorer};
use crate::policy::{AuthThrottle, CommitDecision, CommitPolicy, CredentialNonces};
use crate::replay::ReplayWindow;
use crate::session::Session;
use crate::validate::Limits;
use acks::{AckQueue, KafkaGate};
use ed25519_dalek::VerifyingKey;
use ingestd_codec::envelope::BatchVerifier;
use ingestd_codec::mqtt::{self, Packet, Protocol, ReasonCode};
use publish::Work;
pub use reason::Reason;
use record::ReadingMeta;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;

/// A connection, as the driver numbers it (unique for the shard's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// The time, passed in: a monotonic clock for intervals and a wall clock for what is
/// compared with device timestamps and stored in records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    /// Monotonic µs since the shard started.
    pub mono_us: u64,
    /// Wall clock, ms since the Unix epoch.
    pub wall_ms: u64,
}

/// A device's registry entry as the core needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    pub key: VerifyingKey,
    pub active: bool,
    pub location: String,
    pub region: String,
    pub project: String,
    pub sensor_type: String,
}

/// The registry as the core sees it: a lookup by device id.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<DeviceEntry>;

/// The kind of a record the core appends (the log's own kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Reading,
    DeadLetter,
    /// An accepted CONNECT credential ([`record::CredentialMeta`]): its nonce survives a
    /// restart.
    Credential,
}

/// The shard's limits and switches, from the validated config.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub shard: usize,
    pub shards: usize,
    pub node_id: String,
    pub limits: Limits,
    pub verify_signatures: bool,
    pub verify_batch_signatures_max: usize,
    pub verify_batch_delay_us: u64,
    pub opaque_payloads: bool,
    pub inflight_max: u16,
    pub packet_bytes_max: usize,
    pub keep_alive_s_max: u16,
    pub connections_per_shard_max: usize,
    /// Bytes queued for one connection's writer at which the core stops reading from that
    /// connection until the writer has taken them (a client that sends PINGREQs or
    /// SUBSCRIBEs without reading its socket cannot grow the buffer without bound).
    pub output_bytes_max: usize,
    /// Addresses the failure throttle remembers per shard (the oldest are forgotten).
    pub throttle_addresses_max: usize,
    pub require_credential: bool,
    pub credential_window_ms: u64,
    /// Credential nonces remembered per shard (`CredentialNonces`: the oldest is evicted
    /// and becomes a timestamp floor).
    pub credential_nonces_max: usize,
    pub failures_before_delay: u32,
    pub failure_delay_ms: u64,
    pub failure_delay_ms_max: u64,
    pub commit: CommitPolicy,
    pub pending_bytes_max: usize,
    /// The log's framing bytes per record, to count pending bytes as the log does.
    pub record_overhead_bytes: usize,
    /// QoS 1/2 acknowledgements also wait for Kafka's confirmation.
    pub kafka_gate: bool,
    pub unreachable_after_ms: u64,
    /// Sinks are configured: readings' metadata goes along with their records.
    pub egress: bool,
    /// Fraud scoring (docs/FRAUD.md); `None`: off, records carry no verdict.
    pub fraud: Option<crate::fraud::engine::FraudConfig>,
}

/// What the driver tells the core. (A packet is large, and events are passed by value
/// once, never stored.)
#[allow(clippy::large_enum_variant)]
pub enum Event<'a> {
    /// A connection's CONNECT, decoded. `cert_device` is the device id of a verified
    /// client certificate; `handed_in` says another shard already routed it here.
    Connect {
        conn: ConnId,
        info: &'a connect::ConnectInfo,
        peer: SocketAddr,
        cert_device: Option<&'a str>,
        handed_in: bool,
        registry: Lookup<'a>,
    },
    /// The first packet was not a CONNECT (`error` is `None`) or did not decode (the
    /// error, and the bytes read so far).
    BadFirstPacket {
        conn: ConnId,
        error: Option<(&'a mqtt::DecodeError, &'a [u8])>,
    },
    /// The home shard's handoff ring was full: refuse over the original socket.
    HandOffFailed { conn: ConnId },
    /// A packet from an accepted connection.
    Packet { conn: ConnId, packet: Packet<'a> },
    /// A packet that did not decode: close with its reason.
    Malformed { conn: ConnId, reason: ReasonCode },
    /// The socket's read timeout (the keep-alive) expired.
    ReadTimedOut { conn: ConnId },
    /// The device closed its side, or a write failed.
    ReadEnded { conn: ConnId },
    /// The driver is closing the connection now: queue its last bytes.
    Finish { conn: ConnId },
    /// The connection is gone; forget it.
    Closed { conn: ConnId },
    /// The log is durable up to `end`; `pending_bytes` were appended during the commit.
    Committed { end: u64, pending_bytes: usize },
    /// A commit failed and will be retried.
    CommitFailed,
    /// This shard's log failed for good: nothing more is acknowledged.
    LogFailed,
    /// The log's disk is full (`true`) or has room again (`false`). While full, commits
    /// wait in the driver and the shard reads nothing (back-pressure).
    DiskFull { full: bool },
    /// Another shard's log failed: the node stops; read nothing more meanwhile.
    NodeFailed,
    /// Kafka confirmed this shard's records up to `end` (with the gate on).
    SinkConfirmed { end: u64 },
    /// A sink refused a reading for good: it becomes a dead letter.
    SinkRefused {
        sink: &'a str,
        reason: &'a str,
        detail: &'a str,
        offset: u64,
        meta: &'a ReadingMeta,
        raw: &'a [u8],
    },
    /// The registry was replaced.
    RegistryChanged { registry: Lookup<'a> },
    /// A deadline from [`Core::poll_timeout`] passed (or any other wake-up).
    Tick,
    /// Stop accepting; close every connection once its acknowledgements are out.
    Stop,
}

/// What the core asks of the driver, in order. A reading's metadata travels inline: a box
/// would cost an allocation per message; the queue is drained after every event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Action {
    /// The connection has output: take it with [`Core::take_output`] and write it.
    Flush(ConnId),
    /// CONNECT accepted (the CONNACK is in the output): serve the session with this read
    /// timeout (the keep-alive).
    Accept { conn: ConnId, read_timeout_ms: u64 },
    /// CONNECT refused: wait `delay_ms` (the failure throttle), write the output (the
    /// CONNACK, if any), close.
    Refuse {
        conn: ConnId,
        why: &'static str,
        delay_ms: u64,
    },
    /// Hand the connection to its home shard.
    HandOff {
        conn: ConnId,
        home: usize,
        device_id: String,
    },
    /// Stop reading; close once the acknowledgements in flight are out.
    Close {
        conn: ConnId,
        reason: Option<ReasonCode>,
    },
    /// Close at once without sending anything more (the log failed).
    Abort(ConnId),
    /// The reader may read again.
    Resume(ConnId),
    /// Append this record ([`Core::record`] gives its bytes) at `offset`.
    Append {
        kind: RecordKind,
        offset: u64,
        record: Range<usize>,
        meta: Option<ReadingMeta>,
    },
    /// Commit the log now; answer with [`Event::Committed`] or [`Event::CommitFailed`].
    Commit,
    /// Kafka's gate changed: `bypass` means acknowledgements rely on the log alone.
    KafkaGate { bypass: bool, lag_ms: u64 },
}

/// What the reader should do before its next read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadGate {
    Read,
    /// Wait for [`Action::Resume`] (the device has `inflight_max` messages waiting, or
    /// the shard is overloaded).
    Wait,
    /// The connection is closing: read nothing more.
    Stop,
}

/// Counters the core reports; the driver publishes them (names in server/src/metrics.rs).
pub trait Metrics {
    fn connect_refused(&self) {}
    fn auth_throttled(&self) {}
    fn connection_opened(&self) {}
    fn connection_closed(&self) {}
    fn accepted(&self) {}
    fn rejected(&self, _reason: Reason) {}
    fn qos0_dropped(&self) {}
    fn verify_batch(&self, _signatures: usize) {}
    fn ack_latency_us(&self, _us: u64) {}
    fn backpressure_pause(&self) {}
    /// A PUBACK, PUBREC or PUBCOMP of a PUBLISH the server never sent: ignored.
    fn unsolicited_ack(&self) {}
    /// A reading was scored: the detectors that fired, its score, and whether it raised an
    /// alert and was quarantined.
    fn fraud_scored(
        &self,
        _fired: crate::fraud::Fired,
        _score: f32,
        _flagged: bool,
        _quarantined: bool,
    ) {
    }
}

/// Per-device state on its home shard.
pub struct DeviceState {
    pub id: String,
    pub entry: DeviceEntry,
    pub replay: ReplayWindow,
    pub session: Session,
    /// The session outlives the connection (3.1.1 clean session 0, v5 expiry > 0).
    pub session_persistent: bool,
    /// A session exists from an earlier connection.
    pub session_exists: bool,
    /// When the session, left without a connection, expires (monotonic µs; `None`: it
    /// does not, or a connection holds it). Checked at the next CONNECT.
    pub session_ends_at_us: Option<u64>,
    /// The device's live connection, for takeover and revocation.
    pub conn: Option<ConnId>,
    /// Its last accepted readings, to compare DUP redeliveries with.
    pub recent: recent::RecentReadings,
    /// Its fraud-scoring state, created at its first scored reading.
    pub fraud: Option<Box<DeviceFraud>>,
}

/// Index of a device in [`Core::devices`] (devices are never removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceIdx(u32);

/// One connection as the core knows it.
pub struct ConnState {
    pub protocol: Protocol,
    pub peer: SocketAddr,
    /// Wall-clock ms when the CONNECT arrived.
    pub connected_ms: u64,
    /// Set once accepted.
    pub device: Option<DeviceIdx>,
    /// Authenticated, the CONNACK waiting for the credential's record to be durable.
    pub(crate) held: bool,
    out: Vec<u8>,
    flush_queued: bool,
    /// QoS 1/2 messages received and not yet acknowledged.
    pub inflight: usize,
    /// The reader waits for [`Action::Resume`].
    waiting: bool,
    /// In the back-pressure list.
    paused: bool,
    pub closing: bool,
    pub close_reason: Option<ReasonCode>,
    /// Nothing more is sent.
    finished: bool,
    /// The client's Maximum Packet Size (MQTT 5; `usize::MAX` when none was announced):
    /// nothing larger is ever sent to it [MQTT-3.1.2-24].
    client_max_bytes: usize,
    /// MQTT 5: the Session Expiry Interval, from the CONNECT or a DISCONNECT (`None` in
    /// 3.1.1).
    session_expiry_s: Option<u32>,
}

/// The shard core.
pub struct Core<M: Metrics> {
    config: CoreConfig,
    metrics: M,
    devices: Vec<DeviceState>,
    device_index: HashMap<String, DeviceIdx>,
    conns: HashMap<ConnId, ConnState>,
    /// Accepted connections (the `connections_per_shard_max` bound).
    accepted: usize,
    throttle: AuthThrottle,
    /// Every CONNECT credential accepted on this shard still inside its window.
    nonces: CredentialNonces,
    /// CONNECTs whose credential record is not durable yet, in log order.
    held: VecDeque<connect::Held>,
    /// Windows restored at start for devices not seen since: each moves into the device's
    /// state at its first CONNECT, and is in every snapshot until then.
    restored: HashMap<String, ReplayWindow>,
    /// The same for fraud-scoring state.
    restored_fraud: HashMap<String, DeviceFraud>,
    /// Fraud scoring, when configured.
    pub(crate) scorer: Option<Scorer>,
    actions: VecDeque<Action>,
    /// Bytes of the records named by queued `Append` actions; cleared when the action
    /// queue is empty at the start of an event.
    records: Vec<u8>,
    /// Messages waiting for their verification batch, in arrival order.
    work: VecDeque<Work>,
    /// When the oldest queued message arrived.
    oldest_work_us: u64,
    verifier: BatchVerifier,
    verify_results: Vec<Result<(), ingestd_codec::envelope::EnvelopeError>>,
    acks: AckQueue,
    gate: KafkaGate,
    next_offset: u64,
    durable_end: u64,
    pending_bytes: usize,
    /// When the oldest record not yet committed was appended.
    oldest_pending_us: Option<u64>,
    commit_in_flight: bool,
    /// After a failed commit, the next waits until then.
    commit_retry_at_us: Option<u64>,
    /// Connections paused by back-pressure, resumed after a commit.
    paused: Vec<ConnId>,
    stopping: bool,
    failed: bool,
    node_failed: bool,
    /// The log's disk is full: back-pressure until it has room.
    disk_full: bool,
    now: Time,
}

/// What a checkpoint keeps of a core: exactly the state the records below `offset` give.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The log offset the state reflects every record below.
    pub offset: u64,
    /// (device, highest accepted sequence, bitmap below it: [`ReplayWindow::state`]).
    pub windows: Vec<(String, u64, u128)>,
    /// (device, nonce, credential timestamp) of credentials still inside their window.
    pub nonces: Vec<(String, [u8; 16], u64)>,
}

impl<M: Metrics> Core<M> {
    /// A core whose log continues at `next_offset` and is durable up to `durable_end`.
    pub fn new(config: CoreConfig, metrics: M, next_offset: u64, durable_end: u64) -> Self {
        assert!(
            config.verify_batch_signatures_max > 0,
            "verify_batch_signatures_max must be positive"
        );
        assert!(durable_end <= next_offset);
        Self {
            throttle: AuthThrottle::new(
                config.failures_before_delay,
                config.failure_delay_ms,
                config.failure_delay_ms_max,
                config.throttle_addresses_max,
            ),
            verifier: BatchVerifier::new(config.verify_batch_signatures_max),
            nonces: CredentialNonces::new(config.credential_nonces_max.max(1)),
            held: VecDeque::new(),
            restored: HashMap::new(),
            restored_fraud: HashMap::new(),
            scorer: config.fraud.clone().map(Scorer::new),
            gate: KafkaGate::new(config.kafka_gate, config.unreachable_after_ms * 1000),
            config,
            metrics,
            devices: Vec::new(),
            device_index: HashMap::new(),
            conns: HashMap::new(),
            accepted: 0,
            actions: VecDeque::new(),
            records: Vec::with_capacity(4096),
            work: VecDeque::new(),
            oldest_work_us: 0,
            verify_results: Vec::new(),
            acks: AckQueue::default(),
            next_offset,
            durable_end,
            pending_bytes: 0,
            oldest_pending_us: None,
            commit_in_flight: false,
            commit_retry_at_us: None,
            paused: Vec::new(),
            stopping: false,
            failed: false,
            node_failed: false,
            disk_full: false,
            now: Time {
                mono_us: 0,
                wall_ms: 0,
            },
        }
    }

    /// Handles one event at time `now`; then poll the actions.
    pub fn handle(&mut self, event: Event<'_>, now: Time) {
        self.now = now;
        if self.actions.is_empty() {
            self.records.clear();
        }
        match event {
            Event::Connect {
                conn,
                info,
                peer,
                cert_device,
                handed_in,
                registry,
            } => self.on_connect(conn, info, peer, cert_device, handed_in, registry),
            Event::BadFirstPacket { conn, error } => self.on_bad_first_packet(conn, error),
            Event::HandOffFailed { conn } => self.on_handoff_failed(conn),
            Event::Packet { conn, packet } => {
                if let Err(reason) = self.on_packet(conn, packet) {
                    self.close(conn, reason);
                }
            }
            Event::Malformed { conn, reason } => {
                self.metrics.rejected(Reason::Malformed);
                self.close(conn, Some(reason));
            }
            Event::ReadTimedOut { conn } => self.close(conn, Some(ReasonCode::KeepAliveTimeout)),
            Event::ReadEnded { conn } => {
                if let Some(state) = self.conns.get_mut(&conn) {
                    state.closing = true;
                }
            }
            Event::Finish { conn } => self.on_finish(conn),
            Event::Closed { conn } => self.on_closed(conn),
            Event::Committed { end, pending_bytes } => self.on_committed(end, pending_bytes),
            Event::CommitFailed => {
                self.commit_in_flight = false;
                self.oldest_pending_us = Some(now.mono_us);
                self.commit_retry_at_us = Some(now.mono_us + 100_000);
            }
            Event::LogFailed => self.on_log_failed(),
            Event::DiskFull { full } => {
                self.disk_full = full;
                if !full {
                    self.resume_paused();
                }
            }
            Event::NodeFailed => self.node_failed = true,
            Event::SinkConfirmed { end } => self.on_sink_confirmed(end),
            Event::SinkRefused {
                sink,
                reason,
                detail,
                offset,
                meta,
                raw,
            } => self.on_sink_refused(sink, reason, detail, offset, meta, raw),
            Event::RegistryChanged { registry } => self.on_registry_changed(registry),
            Event::Tick => {}
            Event::Stop => self.on_stop(),
        }
        self.run_timers();
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The bytes of an [`Action::Append`]'s record (valid until the next event).
    #[must_use]
    pub fn record(&self, range: Range<usize>) -> &[u8] {
        &self.records[range]
    }

    /// Moves the connection's output into `into` (swapped, so buffers are reused).
    ///
    /// Returns true when the connection's reader waited (for any reason) and may ask
    /// [`Core::read_gate`] again: a full output buffer is one reason to wait, and taking
    /// the output ends it.
    pub fn take_output(&mut self, conn: ConnId, into: &mut Vec<u8>) -> bool {
        into.clear();
        let Some(state) = self.conns.get_mut(&conn) else {
            return false;
        };
        std::mem::swap(&mut state.out, into);
        state.flush_queued = false;
        let output_full = into.len() >= self.config.output_bytes_max;
        if output_full && state.waiting {
            state.waiting = false;
            return true;
        }
        false
    }

    /// When the core next wants an [`Event::Tick`] (monotonic µs); `None` when idle.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        let batch = (!self.work.is_empty())
            .then(|| self.oldest_work_us + self.config.verify_batch_delay_us);
        let commit = if self.commit_in_flight || self.failed {
            None
        } else {
            let decision = self.config.commit.decide(
                self.pending_bytes,
                self.oldest_pending_us,
                self.now.mono_us,
            );
            let at = match decision {
                CommitDecision::Idle => None,
                CommitDecision::Now => Some(self.now.mono_us),
                CommitDecision::Wait { us } => Some(self.now.mono_us + us),
            };
            at.map(|at| at.max(self.commit_retry_at_us.unwrap_or(0)))
        };
        [batch, commit].into_iter().flatten().min()
    }

    /// What the connection's reader should do before reading again.
    pub fn read_gate(&mut self, conn: ConnId) -> ReadGate {
        let overloaded = self.overloaded();
        let inflight_max = usize::from(self.config.inflight_max);
        let Some(state) = self.conns.get_mut(&conn) else {
            return ReadGate::Stop;
        };
        if state.closing {
            return ReadGate::Stop;
        }
        if state.held {
            // Nothing is read before the CONNACK (held for the credential's record).
            state.waiting = true;
            return ReadGate::Wait;
        }
        if overloaded && !state.paused {
            state.paused = true;
            self.paused.push(conn);
            self.metrics.backpressure_pause();
        }
        if overloaded
            || state.inflight >= inflight_max
            || state.out.len() >= self.config.output_bytes_max
        {
            state.waiting = true;
            ReadGate::Wait
        } else {
            ReadGate::Read
        }
    }

    /// The connection's state, if it is known.
    #[must_use]
    pub fn conn(&self, conn: ConnId) -> Option<&ConnState> {
        self.conns.get(&conn)
    }

    /// Connections the core knows (accepted or still in CONNECT).
    #[must_use]
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Messages waiting for their verification batch.
    #[must_use]
    pub fn work_len(&self) -> usize {
        self.work.len()
    }

    /// Records appended and not yet durable.
    #[must_use]
    pub fn pending_records(&self) -> u64 {
        self.next_offset - self.durable_end
    }

    #[must_use]
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    #[must_use]
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// The log failed: nothing more will be committed or acknowledged.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.failed
    }

    #[must_use]
    pub fn metrics(&self) -> &M {
        &self.metrics
    }

    /// A device's state, if it was seen on this shard.
    #[must_use]
    pub fn device(&self, device_id: &str) -> Option<&DeviceState> {
        self.device_index
            .get(device_id)
            .map(|idx| &self.devices[idx.0 as usize])
    }

    /// At start-up: the device's replay window as the durable log left it (exactly: a
    /// sequence never used inside it is still accepted). Merged with what is already
    /// known, so restoring from several sources (a checkpoint and the log after it) gives
    /// the window of their union.
    pub fn restore_replay(&mut self, device_id: &str, window: ReplayWindow) {
        if let Some(idx) = self.device_index.get(device_id) {
            self.devices[idx.0 as usize].replay.merge(&window);
            return;
        }
        self.restored
            .entry(device_id.to_string())
            .or_default()
            .merge(&window);
    }

    /// At start-up: a device's fraud-scoring state as the log left it (a checkpoint and the
    /// records after it, replayed through the engine).
    pub fn restore_fraud(&mut self, device_id: &str, state: DeviceFraud) {
        if let Some(idx) = self.device_index.get(device_id) {
            self.devices[idx.0 as usize].fraud = Some(Box::new(state));
            return;
        }
        self.restored_fraud.insert(device_id.to_string(), state);
    }

    /// The fraud scorer of this shard, if scoring is on (the driver exchanges the peers
    /// summaries and restores the learned model through it).
    pub fn scorer(&mut self) -> Option<&mut Scorer> {
        self.scorer.as_mut()
    }

    /// A device's fraud-scoring state, for `fraud explain` and checkpoints.
    pub fn device_fraud(&self, device_id: &str) -> Option<&DeviceFraud> {
        let idx = self.device_index.get(device_id)?;
        self.devices[idx.0 as usize].fraud.as_deref()
    }

    /// Every device's fraud state on this shard (including restored ones not seen since),
    /// encoded for the fraud checkpoint ([`crate::fraud::engine::encode_states`]).
    pub fn encode_fraud_states(&self) -> Vec<u8> {
        let live = self
            .devices
            .iter()
            .filter_map(|d| d.fraud.as_deref().map(|f| (d.id.as_str(), f)));
        let restored = self.restored_fraud.iter().map(|(id, f)| (id.as_str(), f));
        crate::fraud::engine::encode_states(live.chain(restored))
    }

    /// At start-up: a credential accepted before the restart (a `Credential` record or a
    /// checkpoint); refused again until it leaves its window. `now_ms` is the wall clock.
    pub fn restore_credential(
        &mut self,
        device_id: &str,
        nonce: [u8; 16],
        ts_ms: u64,
        now_ms: u64,
    ) {
        // Already remembered (in a checkpoint and the log after it) is the same state.
        let _ = self.nonces.accept(
            device_id,
            nonce,
            ts_ms,
            now_ms,
            self.config.credential_window_ms,
        );
    }

    /// What a checkpoint keeps: every device's replay window and the credentials still
    /// inside their window, as of every record queued so far (`offset`, the next one).
    /// The driver writes it once the log is durable up to `offset`.
    pub fn snapshot(&mut self, now_ms: u64) -> Snapshot {
        self.nonces.expire(now_ms, self.config.credential_window_ms);
        let devices = self
            .devices
            .iter()
            .filter_map(|d| d.replay.state().map(|(h, seen)| (d.id.clone(), h, seen)));
        let restored = self
            .restored
            .iter()
            .filter_map(|(id, w)| w.state().map(|(h, seen)| (id.clone(), h, seen)));
        let mut windows: Vec<_> = devices.chain(restored).collect();
        windows.sort_unstable();
        Snapshot {
            offset: self.next_offset,
            windows,
            nonces: self
                .nonces
                .entries()
                .map(|(device, nonce, ts)| (device.to_string(), *nonce, ts))
                .collect(),
        }
    }

    /// Back-pressure: too much waits for the disk, the disk is full, or the log failed.
    fn overloaded(&self) -> bool {
        self.pending_bytes + self.work.len() * 256 > self.config.pending_bytes_max
            || self.failed
            || self.node_failed
            || self.disk_full
    }

    /// The device's state on this shard, created on first use; registry changes (a
    /// rotated key, new metadata) take effect at the next CONNECT.
    fn device_state(&mut self, device_id: &str, entry: DeviceEntry) -> DeviceIdx {
        assert_eq!(
            crate::home_shard(device_id, self.config.shards),
            self.config.shard,
            "device {device_id} handled on shard {} which is not its home",
            self.config.shard
        );
        if let Some(idx) = self.device_index.get(device_id) {
            let device = &mut self.devices[idx.0 as usize];
            if let Some(fraud) = device.fraud.as_mut() {
                fraud.set_groups(&entry.location, &entry.region);
            }
            device.entry = entry;
            return *idx;
        }
        let idx = DeviceIdx(u32::try_from(self.devices.len()).unwrap_or(u32::MAX));
        assert!(idx.0 < u32::MAX, "too many devices on one shard");
        let replay = self.restored.remove(device_id).unwrap_or_default();
        let fraud = self.restored_fraud.remove(device_id).map(|mut state| {
            state.set_groups(&entry.location, &entry.region);
            Box::new(state)
        });
        self.devices.push(DeviceState {
            id: device_id.to_string(),
            entry,
            replay,
            session: Session::new(),
            session_persistent: false,
            session_exists: false,
            session_ends_at_us: None,
            conn: None,
            recent: recent::RecentReadings::default(),
            fraud,
        });
        self.device_index.insert(device_id.to_string(), idx);
        idx
    }

    /// Queues one packet for a connection's writer, within the client's Maximum Packet Size:
    /// optional properties are left out to fit ([`mqtt::encode_within`]); a packet that
    /// still does not fit is not sent and an accepted connection closes [MQTT-3.1.2-25].
    /// One flush action until the writer takes the bytes. Returns whether it was queued.
    fn send(&mut self, conn: ConnId, packet: &Packet<'_>) -> bool {
        let Some(state) = self.conns.get_mut(&conn) else {
            return false;
        };
        if state.finished {
            return false;
        }
        let fitted = mqtt::encode_within(
            packet,
            state.protocol,
            state.client_max_bytes,
            &mut state.out,
        );
        if let Err(error) = fitted {
            debug_assert!(
                matches!(error, mqtt::FitError::TooLarge { .. }),
                "encoding a packet the core built: {error}"
            );
            if state.device.is_some() {
                // Nothing is sent, not even a DISCONNECT with a reason: it may not fit either.
                self.close(conn, None);
            }
            return false;
        }
        if !state.flush_queued {
            state.flush_queued = true;
            self.actions.push_back(Action::Flush(conn));
        }
        true
    }

    /// Stops reading; the connection closes once its acknowledgements are out, with a v5
    /// DISCONNECT carrying `reason` if given.
    fn close(&mut self, conn: ConnId, reason: Option<ReasonCode>) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        if state.close_reason.is_none() {
            state.close_reason = reason;
        }
        let already = state.closing;
        state.closing = true;
        if !already || reason.is_some() {
            self.actions.push_back(Action::Close { conn, reason });
        }
    }

    fn resume(&mut self, conn: ConnId) {
        if let Some(state) = self.conns.get_mut(&conn) {
            if state.waiting {
                state.waiting = false;
                self.actions.push_back(Action::Resume(conn));
            }
        }
    }

    /// Appends a record built in `self.records[start..]`; returns its offset.
    fn append(&mut self, kind: RecordKind, start: usize, meta: Option<ReadingMeta>) -> u64 {
        let offset = self.next_offset;
        self.next_offset += 1;
        let record = start..self.records.len();
        self.pending_bytes += record.len() + self.config.record_overhead_bytes;
        self.actions.push_back(Action::Append {
            kind,
            offset,
            record,
            meta,
        });
        offset
    }

    /// Runs what is due at `self.now`: the verification batch, then the commit.
    fn run_timers(&mut self) {
        let now = self.now.mono_us;
        if !self.work.is_empty()
            && (self.stopping
                || now.saturating_sub(self.oldest_work_us) >= self.config.verify_batch_delay_us)
        {
            self.process_round();
        }
        self.maybe_commit();
    }

    fn maybe_commit(&mut self) {
        if self.commit_in_flight || self.failed {
            return;
        }
        let now = self.now.mono_us;
        if self.commit_retry_at_us.is_some_and(|at| now < at) {
            return;
        }
        let decision = self
            .config
            .commit
            .decide(self.pending_bytes, self.oldest_pending_us, now);
        if decision == CommitDecision::Now {
            self.commit_retry_at_us = None;
            self.oldest_pending_us = None;
            self.commit_in_flight = true;
            self.actions.push_back(Action::Commit);
        }
    }

    fn on_committed(&mut self, end: u64, pending_bytes: usize) {
        assert!(end >= self.durable_end && end <= self.next_offset);
        self.commit_in_flight = false;
        self.durable_end = end;
        self.pending_bytes = pending_bytes;
        if end < self.next_offset && self.oldest_pending_us.is_none() {
            // Records the commit did not cover still need one (they normally set the time
            // themselves when appended during the commit).
            self.oldest_pending_us = Some(self.now.mono_us);
        }
        self.gate.committed(end, self.now.mono_us);
        self.release_held();
        self.release_acks();
        self.resume_paused();
    }

    fn resume_paused(&mut self) {
        if self.overloaded() {
            return;
        }
        let paused = std::mem::take(&mut self.paused);
        for conn in &paused {
            if let Some(state) = self.conns.get_mut(conn) {
                state.paused = false;
            }
            self.resume(*conn);
        }
        self.paused = paused;
        self.paused.clear();
    }

    fn on_log_failed(&mut self) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.acks.clear();
        // CONNECTs waiting for their credential's record: it never becomes durable; they
        // get their CONNACK (0x88) rather than a dropped socket.
        let refused = self.refuse_held(ReasonCode::ServerUnavailable, "log_failed");
        self.on_stop();
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns.into_iter().filter(|c| !refused.contains(c)) {
            if let Some(state) = self.conns.get_mut(&conn) {
                state.finished = true;
                state.closing = true;
                state.out.clear();
            }
            self.actions.push_back(Action::Abort(conn));
        }
    }

    fn on_stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        let mut conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, state)| state.device.is_some())
            .map(|(id, _)| *id)
            .collect();
        conns.sort_unstable();
        for conn in conns {
            self.close(conn, Some(ReasonCode::ServerShuttingDown));
        }
    }

    fn on_registry_changed(&mut self, registry: Lookup<'_>) {
        let mut revoked = Vec::new();
        for device in &mut self.devices {
            match registry(&device.id) {
                Some(entry) if entry.active => device.entry = entry,
                _ => {
                    if let Some(conn) = device.conn.take() {
                        revoked.push(conn);
                    }
                }
            }
        }
        for conn in revoked {
            self.close(conn, Some(ReasonCode::AdministrativeAction));
        }
    }

    fn on_finish(&mut self, conn: ConnId) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        if state.finished {
            return;
        }
        state.closing = true;
        if let (Protocol::V5, Some(reason)) = (state.protocol, state.close_reason) {
            let disconnect = Packet::Disconnect(mqtt::Disconnect {
                reason,
                properties: mqtt::Properties::default(),
            });
            // Not sent if it does not fit the client's Maximum Packet Size (1 or 2 bytes).
            let _ = mqtt::encode_within(
                &disconnect,
                Protocol::V5,
                state.client_max_bytes,
                &mut state.out,
            );
        }
        state.finished = true;
        if !state.out.is_empty() && !state.flush_queued {
            state.flush_queued = true;
            self.actions.push_back(Action::Flush(conn));
        }
    }
}
