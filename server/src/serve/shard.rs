//! One shard: a glommio executor pinned to a core, owning the devices whose
//! `home_shard()` it is, their sessions and replay windows, and its own durable log.
//!
//! Tasks on a shard:
//! - the acceptor: accepts on this shard's SO_REUSEPORT listener, one task per connection
//!   (see `conn`), which hands the connection to its home shard after CONNECT if needed;
//! - the ticker: every few milliseconds takes connections handed in from other shards,
//!   beats the watchdog heartbeat, and notices the node-wide stop flag;
//! - the pipeline: takes checked messages in arrival order, verifies signatures in batches,
//!   commits sequence numbers, appends readings and dead letters to the log;
//! - the committer: group-commits the log by policy and then releases the acknowledgements
//!   the commit made safe, in order.
//!
//! All of it is `!Send` and lives on this core; only `Handoff`s and counters cross cores.

use super::conn::{self, Conn, Transport};
use super::handoff::{self, Handoff};
use super::notify::{Latch, Notify};
use super::tls::TlsStream;
use super::Shared;
use crate::config::Config;
use crate::egress::sink::Decoded;
use crate::egress::{Delivery, Refusal, ShardLink, SinkId};
use crate::log::{RecordKind, ShardLog};
use crate::metrics::{reason_index, ShardMetrics};
use crate::record::{self, DeadLetterMeta, ReadingMeta};
use crate::registry::Device;
use ed25519_dalek::VerifyingKey;
use futures_lite::future;
use glommio::net::TcpListener;
use ingestd_codec::envelope::{self, BatchVerifier, EnvelopeError, Kind};
use ingestd_codec::mqtt::{self, QoS, ReasonCode};
use ingestd_shards::policy::{AuthThrottle, CommitDecision, CommitPolicy, NonceCache};
use ingestd_shards::replay::ReplayWindow;
use ingestd_shards::session::Session;
use ingestd_shards::validate::Limits;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the ticker runs: the bound on a handoff's wait and on noticing a stop.
const TICK: Duration = Duration::from_millis(2);
/// Most work items the pipeline takes per round (a few verification batches).
const PIPELINE_ROUND_MAX: usize = 1024;

/// Per-device state on its home shard.
pub struct DeviceState {
    pub device: Device,
    pub replay: ReplayWindow,
    pub nonces: NonceCache,
    pub session: Session,
    /// The session outlives the connection (3.1.1 clean session 0, v5 expiry > 0).
    pub session_persistent: bool,
    /// A session exists from an earlier connection.
    pub session_exists: bool,
    /// The device's live connection, for takeover and revocation.
    pub conn: Option<Rc<Conn>>,
}

/// What the pipeline does with one message.
pub enum Verdict {
    /// Passed the cheap checks: verify the signature (or not, if verification is off).
    Verify { key: VerifyingKey },
    /// Refused before verification.
    Reject {
        reason: &'static str,
        detail: String,
        seq: Option<u64>,
    },
    /// A redelivery (DUP) of a reading already accepted: acknowledge once everything
    /// appended so far is durable; store nothing.
    Redelivery,
    /// Stored as received, undecoded (`validation.opaque_payloads`, benchmarks only).
    Opaque,
}

/// A message waiting for the pipeline.
pub struct Work {
    pub conn: Rc<Conn>,
    pub device: Rc<RefCell<DeviceState>>,
    pub qos: QoS,
    pub pkid: u16,
    pub received_ms: u64,
    /// Arrival on the shard's clock (µs since start), for the acknowledgement latency.
    pub received_us: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub verdict: Verdict,
}

/// An acknowledgement held until the log is durable up to `needed_end`.
struct PendingAck {
    needed_end: u64,
    received_us: u64,
    conn: Rc<Conn>,
    device: Rc<RefCell<DeviceState>>,
    qos: QoS,
    pkid: u16,
    reason: ReasonCode,
}

pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub metrics: Arc<ShardMetrics>,
    pub log: ShardLog,
    pub limits: Limits,
    pub devices: RefCell<HashMap<String, Rc<RefCell<DeviceState>>>>,
    pub throttle: RefCell<AuthThrottle>,
    pub conns: RefCell<HashMap<u64, Rc<Conn>>>,
    pub next_conn_id: Cell<u64>,
    /// Set when the shard starts stopping; the acceptors and the drain deadline wait on it.
    pub stopping: Latch,
    work: RefCell<VecDeque<Work>>,
    work_notify: Notify,
    /// When the oldest queued message arrived (µs since `started`).
    oldest_work_us: Cell<u64>,
    acks: RefCell<VecDeque<PendingAck>>,
    commit_notify: Notify,
    /// When the oldest record not yet committed was appended (µs since `started`).
    oldest_pending_us: Cell<Option<u64>>,
    /// Connections paused by back-pressure, resumed after the next commit.
    paused: RefCell<Vec<Rc<Conn>>>,
    handoff_out: RefCell<Vec<Option<rtrb::Producer<Handoff>>>>,
    verifier: RefCell<BatchVerifier>,
    started: Instant,
    /// Present when sinks are configured.
    egress: Option<EgressSide>,
}

/// The shard's side of the egress (docs/DELIVERY.md).
struct EgressSide {
    link: RefCell<ShardLink>,
    /// Records appended and not yet durable, in offset order; handed to the egress ring
    /// once a commit makes them durable.
    tail: RefCell<VecDeque<Delivery>>,
    /// QoS 1/2 acknowledgements also wait for Kafka.
    kafka_gate: bool,
    unreachable_after_us: u64,
    /// Kafka is unreachable: acknowledgements need the log only until Kafka has caught
    /// up with everything durable.
    kafka_bypass: Cell<bool>,
    /// (durable end, when) of recent commits Kafka has not fully confirmed: Kafka's lag in
    /// time. Bounded: past the bound the newest entry is extended (its time kept), which
    /// only overstates the lag.
    commits: RefCell<VecDeque<(u64, u64)>>,
}

impl Shard {
    pub fn new(
        id: usize,
        config: Arc<Config>,
        shared: Arc<Shared>,
        log: ShardLog,
        handoff_out: Vec<Option<rtrb::Producer<Handoff>>>,
        link: Option<ShardLink>,
    ) -> Self {
        let shards = shared.shards;
        let metrics = Arc::clone(&shared.metrics.shards[id]);
        let egress = link.map(|link| {
            link.positions.durable_end[id].store(log.durable_end(), Ordering::Release);
            EgressSide {
                kafka_gate: link.positions.is_configured(SinkId::Kafka)
                    && config.kafka.ack_after_kafka,
                unreachable_after_us: config.kafka.unreachable_after_ms * 1000,
                kafka_bypass: Cell::new(false),
                commits: RefCell::default(),
                link: RefCell::new(link),
                tail: RefCell::default(),
            }
        });
        Self {
            egress,
            id,
            shards,
            limits: Limits {
                topic_prefix: config.mqtt.topic_prefix.clone(),
                envelope_max_bytes: config.validation.envelope_max_bytes,
                clock_skew_max_ms: config.validation.clock_skew_max_ms,
            },
            throttle: RefCell::new(AuthThrottle::new(
                config.auth.failures_before_delay,
                config.auth.failure_delay_ms,
                config.auth.failure_delay_ms_max,
                65_536,
            )),
            verifier: RefCell::new(BatchVerifier::new(config.validation.verify_batch_max)),
            config,
            shared,
            metrics,
            log,
            devices: RefCell::default(),
            conns: RefCell::default(),
            next_conn_id: Cell::new(0),
            stopping: Latch::default(),
            work: RefCell::default(),
            work_notify: Notify::default(),
            oldest_work_us: Cell::new(0),
            acks: RefCell::default(),
            commit_notify: Notify::default(),
            oldest_pending_us: Cell::new(None),
            paused: RefCell::default(),
            handoff_out: RefCell::new(handoff_out),
            started: Instant::now(),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Appends a record to the log (and, with sinks, to the egress tail); returns its offset.
    /// A reading's `meta` goes to the sinks as it is, so they need not decode the record.
    fn append(&self, kind: RecordKind, payload: &[u8], meta: Option<ReadingMeta>) -> u64 {
        let offset = self.log.append(kind, payload);
        if let Some(egress) = &self.egress {
            let payload = payload.to_vec();
            let delivery = match meta {
                Some(meta) => Delivery::with_reading(self.id, offset, payload, meta),
                None => Delivery::new(self.id, offset, kind, payload),
            };
            egress.tail.borrow_mut().push_back(delivery);
        }
        offset
    }

    /// After a commit: publishes the durable end and hands the newly durable records to
    /// the egress ring. A full ring drops them here; the sink's feeder then reads them
    /// back from the log.
    fn egress_after_commit(&self, durable_end: u64) {
        let Some(egress) = &self.egress else {
            return;
        };
        if egress.kafka_gate {
            let now = self.now_us();
            let mut commits = egress.commits.borrow_mut();
            if commits.len() >= 4096 {
                if let Some(last) = commits.back_mut() {
                    last.0 = durable_end;
                }
            } else {
                commits.push_back((durable_end, now));
            }
        }
        let mut link = egress.link.borrow_mut();
        link.positions.durable_end[self.id].store(durable_end, Ordering::Release);
        let mut tail = egress.tail.borrow_mut();
        let mut moved = false;
        while tail.front().is_some_and(|d| d.offset < durable_end) {
            let Some(delivery) = tail.pop_front() else {
                break;
            };
            moved = true;
            if link.out.push(delivery).is_err() {
                self.metrics.egress_ring_full.inc();
            }
        }
        if moved {
            link.wake.notify_one();
        }
    }

    /// The log offset acknowledgements may be released up to: the durable end, and with
    /// Kafka gating also what Kafka confirmed, unless Kafka counts as unreachable.
    fn ack_limit(&self, durable_end: u64) -> u64 {
        match &self.egress {
            Some(egress) if egress.kafka_gate && !egress.kafka_bypass.get() => {
                let confirmed = egress
                    .link
                    .borrow()
                    .positions
                    .confirmed(SinkId::Kafka, self.id);
                durable_end.min(confirmed)
            }
            _ => durable_end,
        }
    }

    /// Every tick with sinks: decides whether Kafka counts as unreachable, releases
    /// acknowledgements Kafka's progress made safe, and writes dead letters for records a
    /// sink refused.
    fn egress_tick(&self) {
        let Some(egress) = &self.egress else {
            return;
        };
        if egress.kafka_gate {
            let durable = self.log.durable_end();
            let confirmed = egress
                .link
                .borrow()
                .positions
                .confirmed(SinkId::Kafka, self.id);
            // How long the oldest commit Kafka has not fully confirmed has waited.
            let lag_us = {
                let mut commits = egress.commits.borrow_mut();
                while commits.front().is_some_and(|(end, _)| *end <= confirmed) {
                    commits.pop_front();
                }
                commits
                    .front()
                    .map_or(0, |(_, at)| self.now_us().saturating_sub(*at))
            };
            if egress.kafka_bypass.get() {
                if lag_us < egress.unreachable_after_us / 4 {
                    egress.kafka_bypass.set(false);
                    tracing::info!(
                        shard = self.id,
                        "Kafka has caught up: acknowledgements wait for it again"
                    );
                }
            } else if lag_us > egress.unreachable_after_us {
                egress.kafka_bypass.set(true);
                tracing::warn!(shard = self.id, lag_ms = lag_us / 1000, "Kafka is not confirming: acknowledging on the durable log alone; records wait there for Kafka");
            }
            release_acks(self, durable);
        }
        let refusals: Vec<Refusal> = {
            let mut link = egress.link.borrow_mut();
            std::iter::from_fn(|| link.refused.pop().ok()).collect()
        };
        if refusals.is_empty() {
            return;
        }
        let mut buf = Vec::new();
        for refusal in refusals {
            let Some(original) = refusal.original else {
                continue;
            };
            // A refused dead letter is not dead-lettered again (that could loop); the
            // sink's metric and log line record it.
            let Decoded::Reading(meta) = original.decoded() else {
                continue;
            };
            let Some((_, raw)) = record::split(&original.payload) else {
                continue;
            };
            let dead = DeadLetterMeta {
                reason: refusal.reason.clone(),
                detail: format!(
                    "{} refused the reading at log offset {}: {}",
                    refusal.sink.name(),
                    refusal.offset,
                    refusal.detail
                ),
                device: meta.device.clone(),
                topic: meta.topic.clone(),
                received_ms: meta.received_ms,
                node: self.config.node_id.clone(),
                shard: self.id,
                qos: meta.qos,
                peer: String::new(),
                seq: Some(meta.seq),
            };
            buf.clear();
            record::encode(&dead, raw, &mut buf);
            self.append(RecordKind::DeadLetter, &buf, None);
        }
        if self.oldest_pending_us.get().is_none() {
            self.oldest_pending_us.set(Some(self.now_us()));
        }
        self.commit_notify.notify();
    }

    /// Back-pressure: too much waits for the disk, or the log failed. Readers stop
    /// reading sockets until a commit frees room.
    pub fn overloaded(&self) -> bool {
        self.log.pending_bytes() + self.work.borrow().len() * 256
            > self.config.log.pending_bytes_max
            || self.shared.metrics.health.failed.load(Ordering::Relaxed)
    }

    /// Parks a reader until the next commit.
    pub fn pause(&self, conn: &Rc<Conn>) {
        if conn.paused.replace(true) {
            return;
        }
        self.metrics.backpressure_pauses.inc();
        self.paused.borrow_mut().push(Rc::clone(conn));
        self.commit_notify.notify();
    }

    /// The device's state on this shard, created from the registry on first use.
    pub fn device_state(&self, device_id: &str, device: &Device) -> Rc<RefCell<DeviceState>> {
        assert_eq!(
            ingestd_shards::home_shard(device_id, self.shards),
            self.id,
            "device {device_id} handled on shard {} which is not its home",
            self.id
        );
        let mut devices = self.devices.borrow_mut();
        if let Some(state) = devices.get(device_id) {
            // Registry changes (a rotated key, new metadata) take effect at the next CONNECT.
            state.borrow_mut().device = device.clone();
            return Rc::clone(state);
        }
        let state = Rc::new(RefCell::new(DeviceState {
            device: device.clone(),
            replay: ReplayWindow::new(),
            nonces: NonceCache::default(),
            session: Session::new(),
            session_persistent: false,
            session_exists: false,
            conn: None,
        }));
        devices.insert(device_id.to_string(), Rc::clone(&state));
        state
    }

    /// Applies a replaced registry to this shard's devices: new keys and metadata are
    /// used from now on, and a device that was revoked or removed is disconnected (its
    /// next CONNECT is refused).
    pub fn apply_registry(&self) {
        let registry = self.shared.registry();
        for (device_id, state) in self.devices.borrow().iter() {
            let mut state = state.borrow_mut();
            match registry.get(device_id) {
                Some(device) if device.status == crate::registry::DeviceStatus::Active => {
                    state.device = device.clone();
                }
                _ => {
                    if let Some(conn) = state.conn.take() {
                        tracing::info!(device = %device_id, "revoked: closing its connection");
                        conn.close(Some(ReasonCode::AdministrativeAction));
                    }
                }
            }
        }
    }

    /// Queues a checked message for the pipeline.
    pub fn submit(&self, work: Work) {
        let mut queue = self.work.borrow_mut();
        queue.push_back(work);
        // Wake the pipeline when a round starts (it then waits up to the batch delay) and
        // when a full verification batch is ready; not for every message in between.
        if queue.len() == 1 {
            self.oldest_work_us.set(self.now_us());
            self.work_notify.notify();
        } else if queue.len() == self.config.validation.verify_batch_max {
            self.work_notify.notify();
        }
    }

    /// Passes a connection to another shard. Fails when that shard's ring is full.
    pub fn hand_off(&self, to: usize, handoff: Handoff) -> Result<(), Handoff> {
        let mut rings = self.handoff_out.borrow_mut();
        let Some(Some(producer)) = rings.get_mut(to) else {
            return Err(handoff);
        };
        match producer.push(handoff) {
            Ok(()) => {
                self.metrics.connections_handed_off_out.inc();
                Ok(())
            }
            Err(rtrb::PushError::Full(handoff)) => Err(handoff),
        }
    }

    /// Registers an open connection (for draining and takeover).
    pub fn register(&self, conn: &Rc<Conn>) {
        self.conns.borrow_mut().insert(conn.id, Rc::clone(conn));
        self.metrics.connections_open.inc();
    }

    pub fn unregister(&self, conn: &Conn) {
        if self.conns.borrow_mut().remove(&conn.id).is_some() {
            self.metrics.connections_open.dec();
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        let id = self.next_conn_id.get();
        self.next_conn_id.set(id + 1);
        id
    }

    /// Begins stopping: no new connections; open ones stop reading and close once their
    /// acknowledgements are out.
    pub fn begin_stop(&self) {
        if self.stopping.is_set() {
            return;
        }
        self.stopping.set();
        for conn in self.conns.borrow().values() {
            conn.close(Some(ReasonCode::ServerShuttingDown));
        }
        self.commit_notify.notify();
    }
}

/// Accepts connections until the shard stops.
pub async fn acceptor(
    shard: Rc<Shard>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            shard.stopping.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else {
            break;
        };
        match accepted {
            Ok(stream) => {
                shard.metrics.connections_accepted.inc();
                let _ = stream.set_nodelay(true);
                let peer = match stream.peer_addr() {
                    Ok(peer) => peer,
                    Err(_) => continue,
                };
                let shard = Rc::clone(&shard);
                match &tls {
                    None => {
                        glommio::spawn_local(conn::serve(
                            shard,
                            Transport::Plain(stream),
                            Vec::new(),
                            peer,
                            false,
                        ))
                        .detach();
                    }
                    Some(config) => {
                        let config = Arc::clone(config);
                        glommio::spawn_local(tls_handshake(shard, stream, config, peer)).detach();
                    }
                }
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(shard = shard.id, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs the TLS handshake (bounded by the connect timeout), then serves the connection. A
/// failed or stalled handshake only costs its task: nothing is kept.
async fn tls_handshake(
    shard: Rc<Shard>,
    stream: glommio::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    peer: std::net::SocketAddr,
) {
    let session = match rustls::ServerConnection::new(config) {
        Ok(session) => session,
        Err(error) => {
            tracing::warn!(%error, "TLS session setup failed");
            return;
        }
    };
    let timeout = Duration::from_millis(shard.config.mqtt.connect_timeout_ms);
    let _ = stream.set_read_timeout(Some(timeout));
    let mut tls = TlsStream::from_parts(stream, session);
    let handshake = future::or(async { Some(tls.handshake().await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await;
    match handshake {
        Some(Ok(())) => {
            glommio::spawn_local(conn::serve(
                shard,
                Transport::Tls(Box::new(tls)),
                Vec::new(),
                peer,
                false,
            ))
            .detach();
        }
        Some(Err(error)) => {
            shard.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, %error, "TLS handshake failed");
        }
        None => {
            shard.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// Takes handed-in connections, beats the heartbeat, notices the stop flag.
pub async fn ticker(shard: Rc<Shard>, mut incoming: Vec<rtrb::Consumer<Handoff>>) {
    let mut registry_generation = 0;
    loop {
        glommio::timer::sleep(TICK).await;
        let generation = shard.shared.registry_generation.load(Ordering::Acquire);
        if generation != registry_generation {
            registry_generation = generation;
            shard.apply_registry();
        }
        shard.shared.heartbeats[shard.id].fetch_add(1, Ordering::Relaxed);
        shard.egress_tick();
        let waiting: usize = incoming.iter().map(rtrb::Consumer::slots).sum();
        shard.metrics.handoff_ring_occupancy.set(waiting as u64);
        for ring in &mut incoming {
            while let Ok(handoff) = ring.pop() {
                shard.metrics.connections_handed_off_in.inc();
                assert_eq!(
                    ingestd_shards::home_shard(&handoff.device_id, shard.shards),
                    shard.id,
                    "shard {} got device {} handed off from shard {}",
                    shard.id,
                    handoff.device_id,
                    handoff.from_shard
                );
                let tcp = handoff::attach(handoff.fd);
                let stream = match handoff.tls {
                    Some(session) => Transport::Tls(Box::new(TlsStream::from_parts(tcp, *session))),
                    None => Transport::Plain(tcp),
                };
                let shard2 = Rc::clone(&shard);
                glommio::spawn_local(conn::serve(
                    shard2,
                    stream,
                    handoff.buffered,
                    handoff.peer,
                    true,
                ))
                .detach();
            }
        }
        if shard.shared.stop.load(Ordering::Relaxed) {
            shard.begin_stop();
        }
        if shard.stopping.is_set()
            && shard.conns.borrow().is_empty()
            && shard.log.pending_records() == 0
        {
            shard.commit_notify.notify();
            break;
        }
    }
}

/// Verifies, appends and schedules acknowledgements, in arrival order.
pub async fn pipeline(shard: Rc<Shard>) {
    let batch_max = shard.config.validation.verify_batch_max;
    let batch_delay_us = shard.config.validation.verify_batch_delay_us;
    let mut results = Vec::new();
    let mut record_buf = Vec::with_capacity(1024);
    loop {
        if shard.work.borrow().is_empty() {
            if shard.stopping.is_set() && shard.conns.borrow().is_empty() {
                break;
            }
            future::or(shard.work_notify.notified(), async {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            })
            .await;
            continue;
        }
        // Batch at our own pace: a bigger verification batch costs less per signature, so
        // wait for a full batch, at most verify_batch_delay_us after the oldest arrival.
        let queued = shard.work.borrow().len();
        let waited_us = shard.now_us().saturating_sub(shard.oldest_work_us.get());
        if queued < batch_max && waited_us < batch_delay_us && !shard.stopping.is_set() {
            future::or(shard.work_notify.notified(), async {
                glommio::timer::sleep(Duration::from_micros(batch_delay_us - waited_us)).await;
            })
            .await;
            continue;
        }
        let round: Vec<Work> = {
            let mut work = shard.work.borrow_mut();
            let n = work.len().min(PIPELINE_ROUND_MAX);
            work.drain(..n).collect()
        };
        // The commit interval counts from the arrival of the round's oldest message, so the
        // verification delay is part of it rather than added to it.
        let round_arrival_us = shard.oldest_work_us.get();
        if !shard.work.borrow().is_empty() {
            // Messages left over start the next round's clock now.
            shard.oldest_work_us.set(shard.now_us());
        }
        process_round(&shard, round, &mut results, &mut record_buf);
        if shard.oldest_pending_us.get().is_none() && shard.log.pending_records() > 0 {
            shard.oldest_pending_us.set(Some(round_arrival_us));
        }
        shard.commit_notify.notify();
        // Let connections and the committer run between rounds.
        glommio::yield_if_needed().await;
    }
}

fn process_round(
    shard: &Shard,
    round: Vec<Work>,
    results: &mut Vec<Result<(), EnvelopeError>>,
    record_buf: &mut Vec<u8>,
) {
    let verify = shard.config.validation.verify_signatures;
    let batch_max = shard.config.validation.verify_batch_max;
    let mut verdicts: Vec<Option<Result<(), EnvelopeError>>> = Vec::with_capacity(round.len());
    // Signature verification in batches of verify_batch_max, over the Verify items.
    let mut pending_idx = Vec::with_capacity(batch_max);
    {
        let mut verifier = shard.verifier.borrow_mut();
        for (i, work) in round.iter().enumerate() {
            verdicts.push(None);
            let Verdict::Verify { key } = &work.verdict else {
                continue;
            };
            if !verify {
                verdicts[i] = Some(Ok(()));
                continue;
            }
            // The cheap checks decoded it already; decoding again from the owned copy
            // costs less than carrying the borrowed envelope across tasks.
            match envelope::decode(&work.payload, shard.limits.envelope_max_bytes) {
                Ok(env) => {
                    verifier.push(key, &work.topic, &env);
                    pending_idx.push(i);
                }
                Err(error) => verdicts[i] = Some(Err(error)),
            }
            if verifier.is_full() {
                flush_batch(
                    shard,
                    &mut verifier,
                    &mut pending_idx,
                    &mut verdicts,
                    results,
                );
            }
        }
        if !verifier.is_empty() {
            flush_batch(
                shard,
                &mut verifier,
                &mut pending_idx,
                &mut verdicts,
                results,
            );
        }
    }

    for (work, verdict) in round.into_iter().zip(verdicts) {
        finish(shard, work, verdict, record_buf);
    }
}

fn flush_batch(
    shard: &Shard,
    verifier: &mut BatchVerifier,
    pending_idx: &mut Vec<usize>,
    verdicts: &mut [Option<Result<(), EnvelopeError>>],
    results: &mut Vec<Result<(), EnvelopeError>>,
) {
    results.clear();
    shard.metrics.verify_batches.inc();
    shard.metrics.verify_signatures.add(verifier.len() as u64);
    verifier.verify(results);
    for (i, result) in pending_idx.drain(..).zip(results.drain(..)) {
        verdicts[i] = Some(result);
    }
    verifier.clear();
}

/// Appends the record for one message and schedules its acknowledgement.
fn finish(
    shard: &Shard,
    work: Work,
    verified: Option<Result<(), EnvelopeError>>,
    buf: &mut Vec<u8>,
) {
    buf.clear();
    let protocol = work.conn.protocol;
    let mut reason = ReasonCode::Success;
    let needed_end = match &work.verdict {
        Verdict::Redelivery => shard.log.next_offset(),
        Verdict::Opaque => {
            let meta = crate::record::OpaqueMeta {
                device: work.conn.device.clone(),
                topic: work.topic.clone(),
                received_ms: work.received_ms,
                node: shard.config.node_id.clone(),
                shard: shard.id,
                qos: work.qos as u8,
                opaque: true,
            };
            record::encode(&meta, &work.payload, buf);
            shard.metrics.messages_accepted.inc();
            shard.append(RecordKind::Reading, buf, None) + 1
        }
        Verdict::Reject {
            reason: code,
            detail,
            seq,
        } => {
            reason = ack_reason(code);
            dead_letter(shard, &work, code, detail.clone(), *seq, buf) + 1
        }
        Verdict::Verify { .. } => {
            // Every Verify item is given a verdict by process_round.
            debug_assert!(verified.is_some());
            match verified.unwrap_or(Err(EnvelopeError::BadSignature)) {
                Ok(()) => match append_reading(shard, &work, buf) {
                    Ok(offset) => offset + 1,
                    Err((code, detail, seq)) => {
                        reason = ack_reason(code);
                        dead_letter(shard, &work, code, detail, seq, buf) + 1
                    }
                },
                Err(error) => {
                    let seq = envelope::decode(&work.payload, usize::MAX)
                        .ok()
                        .map(|e| e.seq);
                    reason = ack_reason(error.reason());
                    dead_letter(shard, &work, error.reason(), error.to_string(), seq, buf) + 1
                }
            }
        }
    };
    if work.qos == QoS::AtMostOnce {
        return;
    }
    if protocol == mqtt::Protocol::V311 {
        // 3.1.1 acknowledgements carry no reason: a refused message is acknowledged
        // positively once its dead letter is durable [MQTT-3.3.5-2].
        reason = ReasonCode::Success;
    }
    shard.acks.borrow_mut().push_back(PendingAck {
        needed_end,
        received_us: work.received_us,
        conn: work.conn,
        device: work.device,
        qos: work.qos,
        pkid: work.pkid,
        reason,
    });
}

/// The v5 reason code of a refused PUBLISH's acknowledgement.
fn ack_reason(reason: &str) -> ReasonCode {
    match reason {
        "topic_not_allowed" | "wrong_device" | "bad_signature" | "unknown_device" => {
            ReasonCode::NotAuthorized
        }
        "replayed" | "stale_sequence" | "clock_skew" => ReasonCode::ImplementationSpecificError,
        _ => ReasonCode::PayloadFormatInvalid,
    }
}

/// Commits the sequence and appends the enriched reading; returns its offset, or why it
/// became a dead letter instead.
fn append_reading(
    shard: &Shard,
    work: &Work,
    buf: &mut Vec<u8>,
) -> Result<u64, (&'static str, String, Option<u64>)> {
    let env = envelope::decode(&work.payload, shard.limits.envelope_max_bytes)
        .map_err(|e| (e.reason(), e.to_string(), None))?;
    let mut device = work.device.borrow_mut();
    // Two copies of one sequence can pass the cheap checks in one round; only the first
    // is committed.
    device
        .replay
        .commit(env.seq)
        .map_err(|e| (e.reason(), e.to_string(), Some(env.seq)))?;
    let mut readings = BTreeMap::new();
    for reading in env.readings.as_slice() {
        let name = match Kind::from_code(reading.kind).and_then(Kind::name) {
            Some(name) => name.to_string(),
            None => format!("kind_{}", reading.kind),
        };
        readings.insert(name, reading.value);
    }
    let meta = ReadingMeta {
        device: env.device_id.to_string(),
        seq: env.seq,
        ts_ms: env.ts_ms,
        readings,
        topic: work.topic.clone(),
        received_ms: work.received_ms,
        node: shard.config.node_id.clone(),
        shard: shard.id,
        qos: work.qos as u8,
        region: device.device.region.clone(),
        project: device.device.project.clone(),
        location: device.device.location.clone(),
        sensor_type: device.device.sensor_type.clone(),
    };
    drop(device);
    record::encode(&meta, &work.payload, buf);
    shard.metrics.messages_accepted.inc();
    Ok(shard.append(RecordKind::Reading, buf, Some(meta)))
}

fn dead_letter(
    shard: &Shard,
    work: &Work,
    reason: &'static str,
    detail: String,
    seq: Option<u64>,
    buf: &mut Vec<u8>,
) -> u64 {
    shard.metrics.messages_rejected[reason_index(reason)].inc();
    let meta = DeadLetterMeta {
        reason: reason.to_string(),
        detail,
        device: work.conn.device.clone(),
        topic: work.topic.clone(),
        received_ms: work.received_ms,
        node: shard.config.node_id.clone(),
        shard: shard.id,
        qos: work.qos as u8,
        peer: work.conn.peer.to_string(),
        seq,
    };
    buf.clear();
    record::encode(&meta, &work.payload, buf);
    shard.append(RecordKind::DeadLetter, buf, None)
}

/// Group-commits the log and releases the acknowledgements each commit made safe.
pub async fn committer(shard: Rc<Shard>) {
    let policy = CommitPolicy {
        batch_bytes_max: shard.config.log.commit_batch_bytes_max,
        interval_us: shard.config.log.commit_interval_us,
    };
    loop {
        shard
            .metrics
            .log_pending_bytes
            .set(shard.log.pending_bytes() as u64);
        let decision = policy.decide(
            shard.log.pending_bytes(),
            shard.oldest_pending_us.get(),
            shard.now_us(),
        );
        match decision {
            CommitDecision::Idle => {
                // Acknowledgements that need no new record (redeliveries) and paused
                // readers may be waiting on an idle log.
                release_acks(&shard, shard.log.durable_end());
                resume_paused(&shard);
                if shard.stopping.is_set()
                    && shard.conns.borrow().is_empty()
                    && shard.work.borrow().is_empty()
                {
                    break;
                }
                future::or(shard.commit_notify.notified(), async {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                })
                .await;
            }
            CommitDecision::Wait { us } => {
                future::or(shard.commit_notify.notified(), async {
                    glommio::timer::sleep(Duration::from_micros(us)).await;
                })
                .await;
            }
            CommitDecision::Now => {
                let bytes = shard.log.pending_bytes() as u64;
                let started = Instant::now();
                shard.oldest_pending_us.set(None);
                match shard.log.commit().await {
                    Ok(end) => {
                        shard
                            .metrics
                            .log_fsync_latency
                            .observe_us(started.elapsed().as_micros() as u64);
                        shard.metrics.log_commits.inc();
                        shard.metrics.log_commit_bytes.add(bytes);
                        // Records appended during this commit carry their own arrival time
                        // (set by the pipeline): under load the next commit follows at once.
                        shard.egress_after_commit(end);
                        release_acks(&shard, end);
                        if shard.log.claim_spare() {
                            let shard = Rc::clone(&shard);
                            glommio::spawn_local(async move { shard.log.prepare_spare().await })
                                .detach();
                        }
                        resume_paused(&shard);
                    }
                    Err(error) if error.is_retriable() => {
                        tracing::error!(shard = shard.id, %error, "durable log write failed; retrying, not acknowledging");
                        shard.oldest_pending_us.set(Some(shard.now_us()));
                        glommio::timer::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => {
                        tracing::error!(shard = shard.id, %error, "durable log failed; stopping without acknowledging");
                        shard
                            .shared
                            .metrics
                            .health
                            .failed
                            .store(true, Ordering::Relaxed);
                        shard.shared.failed.store(true, Ordering::Relaxed);
                        shard.shared.stop.store(true, Ordering::Relaxed);
                        shard.acks.borrow_mut().clear();
                        shard.begin_stop();
                        for conn in shard.conns.borrow().values() {
                            conn.abort();
                        }
                        break;
                    }
                }
            }
        }
    }
}

fn release_acks(shard: &Shard, durable_end: u64) {
    let durable_end = shard.ack_limit(durable_end);
    let now_us = shard.now_us();
    let mut acks = shard.acks.borrow_mut();
    while acks
        .front()
        .is_some_and(|ack| ack.needed_end <= durable_end)
    {
        let Some(ack) = acks.pop_front() else {
            break;
        };
        if ack.qos == QoS::ExactlyOnce {
            let mut device = ack.device.borrow_mut();
            if ack.reason == ReasonCode::Success {
                device.session.qos2_durable(ack.pkid);
            } else {
                // A v5 PUBREC with an error code ends the exchange: no PUBREL follows.
                device.session.qos2_forget(ack.pkid);
            }
        }
        ack.conn.send_ack(ack.qos, ack.pkid, ack.reason);
        shard
            .metrics
            .ack_latency
            .observe_us(now_us.saturating_sub(ack.received_us));
    }
}

fn resume_paused(shard: &Shard) {
    if shard.overloaded() {
        return;
    }
    for conn in shard.paused.borrow_mut().drain(..) {
        conn.paused.set(false);
        conn.resume.notify();
    }
}
