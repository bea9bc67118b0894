//! One shard's driver: a glommio executor pinned to a core, owning the devices whose
//! `home_shard()` it is and its own durable log. Every rule lives in the shard core
//! (`ingestd_shards::core`); this file carries out its actions and feeds it events.
//!
//! Tasks on a shard:
//! - the acceptor: accepts on this shard's SO_REUSEPORT listener, one task per connection
//!   (see `conn`), which hands the connection to its home shard after CONNECT if needed;
//! - the ticker: every few milliseconds takes connections handed in from other shards,
//!   beats the watchdog heartbeat, tells the core Kafka's progress and the sinks'
//!   refusals, and notices registry changes and the node-wide stop flag;
//! - the timer: wakes the core at its `poll_timeout` (verification batch, commit due);
//! - the committer: commits the log when the core asks, then tells it the durable end
//!   and hands the newly durable records to the egress ring.
//!
//! All of it is `!Send` and lives on this core. Only plain messages cross threads
//! (`Handoff`s between shards; durable records and sink refusals in the egress rings),
//! besides atomic counters and positions.

use super::conn::{self, ConnIo, Transport};
use super::handoff::{self, Handoff};
use super::notify::{Latch, Notify};
use super::tls::TlsStream;
use super::Shared;
use crate::config::Config;
use crate::egress::sink::Decoded;
use crate::egress::{Delivery, Refusal, ShardLink, SinkId};
use crate::log::{RecordKind, ShardLog};
use crate::metrics::ShardMetrics;
use crate::record;
use crate::registry::{Device, DeviceStatus};
use futures_lite::future;
use glommio::net::TcpListener;
use ingestd_shards::core::{
    Action, ConnId, Core, CoreConfig, DeviceEntry, Event, Metrics, Reason, Time,
};
use ingestd_shards::policy::CommitPolicy;
use ingestd_shards::validate::Limits;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the ticker runs: the bound on a handoff's wait and on noticing a stop.
const TICK: Duration = Duration::from_millis(2);

/// The core's counters, published as the shard's metrics.
pub struct CoreMetrics(Arc<ShardMetrics>);

impl Metrics for CoreMetrics {
    fn connect_refused(&self) {
        self.0.connect_refused.inc();
    }
    fn auth_throttled(&self) {
        self.0.auth_throttled.inc();
    }
    fn connection_opened(&self) {
        self.0.connections_open.inc();
    }
    fn connection_closed(&self) {
        self.0.connections_open.dec();
    }
    fn accepted(&self) {
        self.0.messages_accepted.inc();
    }
    fn rejected(&self, reason: Reason) {
        self.0.messages_rejected[reason.index()].inc();
    }
    fn qos0_dropped(&self) {
        self.0.qos0_dropped.inc();
    }
    fn verify_batch(&self, signatures: usize) {
        self.0.verify_batches.inc();
        self.0.verify_signatures.add(signatures as u64);
    }
    fn ack_latency_us(&self, us: u64) {
        self.0.ack_latency.observe_us(us);
    }
    fn backpressure_pause(&self) {
        self.0.backpressure_pauses.inc();
    }
    fn unsolicited_ack(&self) {
        self.0.unsolicited_acks.inc();
    }
    fn fraud_scored(
        &self,
        fired: ingestd_shards::fraud::Fired,
        _score: f32,
        flagged: bool,
        quarantined: bool,
    ) {
        self.0.fraud_scored.inc();
        if flagged {
            self.0.fraud_alerts.inc();
        }
        if quarantined {
            self.0.fraud_quarantined.inc();
        }
        for detector in fired.iter() {
            self.0.fraud_fired[detector.index()].inc();
        }
    }
}

/// A registry entry as the core needs it.
pub fn device_entry(device: &Device) -> DeviceEntry {
    DeviceEntry {
        key: device.key,
        active: device.status == DeviceStatus::Active,
        location: device.location.clone(),
        region: device.region.clone(),
        project: device.project.clone(),
        sensor_type: device.sensor_type.clone(),
    }
}

pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub metrics: Arc<ShardMetrics>,
    pub log: ShardLog,
    /// Every rule of the shard.
    pub core: RefCell<Core<CoreMetrics>>,
    /// The driver's side of each connection the core knows.
    conns: RefCell<HashMap<ConnId, Rc<ConnIo>>>,
    next_conn_id: Cell<u64>,
    /// Set when the shard starts stopping; the acceptors and the drain deadline wait on it.
    pub stopping: Latch,
    /// The core asked for a commit.
    commit_wanted: Cell<bool>,
    commit_notify: Notify,
    /// The deadline the timer sleeps to (monotonic µs), to wake it only when it moves
    /// earlier.
    timer_at: Cell<Option<u64>>,
    timer_notify: Notify,
    handoff_out: RefCell<Vec<Option<rtrb::Producer<Handoff>>>>,
    started: Instant,
    /// Present when sinks are configured.
    egress: Option<EgressSide>,
    /// Checkpoints and a full disk (`durable`).
    pub durable: super::durable::Durable,
}

/// The shard's side of the egress (docs/DELIVERY.md).
struct EgressSide {
    link: RefCell<ShardLink>,
    /// Records appended and not yet durable, in offset order; handed to the egress ring
    /// once a commit makes them durable.
    tail: RefCell<VecDeque<Delivery>>,
    /// QoS 1/2 acknowledgements also wait for Kafka.
    kafka_gate: bool,
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
                link: RefCell::new(link),
                tail: RefCell::default(),
            }
        });
        let fraud = config.fraud_engine();
        let core_config = CoreConfig {
            shard: id,
            shards,
            node_id: config.node_id.clone(),
            limits: Limits {
                topic_prefix: config.mqtt.topic_prefix.clone(),
                envelope_bytes_max: config.validation.envelope_bytes_max,
                clock_skew_ms_max: config.validation.clock_skew_ms_max,
            },
            verify_signatures: config.validation.verify_signatures,
            verify_batch_signatures_max: config.validation.verify_batch_signatures_max,
            verify_batch_delay_us: config.validation.verify_batch_delay_us,
            opaque_payloads: config.validation.opaque_payloads,
            inflight_max: config.mqtt.inflight_max,
            packet_bytes_max: config.mqtt.packet_bytes_max,
            keep_alive_s_max: config.mqtt.keep_alive_s_max,
            connections_per_shard_max: config.mqtt.connections_per_shard_max,
            require_credential: config.auth.require_credential,
            credential_window_ms: config.auth.credential_window_ms,
            credential_nonces_max: config.auth.credential_nonces_max,
            output_bytes_max: config.mqtt.output_bytes_max,
            throttle_addresses_max: config.auth.throttle_addresses_max,
            failures_before_delay: config.auth.failures_before_delay,
            failure_delay_ms: config.auth.failure_delay_ms,
            failure_delay_ms_max: config.auth.failure_delay_ms_max,
            commit: CommitPolicy {
                batch_bytes_max: config.log.commit_batch_bytes_max,
                interval_us: config.log.commit_interval_us,
            },
            pending_bytes_max: config.log.pending_bytes_max,
            record_overhead_bytes: crate::log::format::record_bytes(0),
            kafka_gate: egress.as_ref().is_some_and(|e| e.kafka_gate),
            unreachable_after_ms: config.kafka.unreachable_after_ms,
            egress: egress.is_some(),
            fraud,
        };
        let core = Core::new(
            core_config,
            CoreMetrics(Arc::clone(&metrics)),
            log.next_offset(),
            log.durable_end(),
        );
        Self {
            durable: super::durable::Durable::new(&config),
            egress,
            id,
            shards,
            core: RefCell::new(core),
            config,
            shared,
            metrics,
            log,
            conns: RefCell::default(),
            next_conn_id: Cell::new(0),
            stopping: Latch::default(),
            commit_wanted: Cell::new(false),
            commit_notify: Notify::default(),
            timer_at: Cell::new(None),
            timer_notify: Notify::default(),
            handoff_out: RefCell::new(handoff_out),
            started: Instant::now(),
        }
    }

    pub fn now(&self) -> Time {
        Time {
            mono_us: self.started.elapsed().as_micros() as u64,
            wall_ms: super::now_ms(),
        }
    }

    /// Feeds the core one event and carries out what it asks.
    pub fn run(&self, event: Event<'_>) {
        let now = self.now();
        let mut core = self.core.borrow_mut();
        core.handle(event, now);
        while let Some(action) = core.poll_action() {
            self.carry_out(&core, action);
        }
        let next = core.poll_timeout();
        drop(core);
        // Wake the timer only when the core wants it earlier than it sleeps.
        if next.is_some_and(|at| self.timer_at.get().is_none_or(|t| at < t)) {
            self.timer_at.set(next);
            self.timer_notify.notify();
        }
    }

    fn carry_out(&self, core: &Core<CoreMetrics>, action: Action) {
        match action {
            Action::Flush(conn) => {
                if let Some(io) = self.conns.borrow().get(&conn) {
                    io.out_notify.notify();
                }
            }
            Action::Accept { .. } | Action::Refuse { .. } | Action::HandOff { .. } => {
                let conn = match &action {
                    Action::Accept { conn, .. }
                    | Action::Refuse { conn, .. }
                    | Action::HandOff { conn, .. } => *conn,
                    _ => return,
                };
                if let Some(io) = self.conns.borrow().get(&conn) {
                    *io.outcome.borrow_mut() = Some(action);
                    // A CONNECT held for its credential's record waits for this.
                    io.resume.notify();
                }
            }
            Action::Close { conn, .. } => {
                if let Some(io) = self.conns.borrow().get(&conn) {
                    io.close();
                }
            }
            Action::Abort(conn) => {
                if let Some(io) = self.conns.borrow().get(&conn) {
                    io.abort();
                }
            }
            Action::Resume(conn) => {
                if let Some(io) = self.conns.borrow().get(&conn) {
                    io.resume.notify();
                }
            }
            Action::Append {
                kind,
                offset,
                record,
                meta,
            } => {
                let kind = match kind {
                    ingestd_shards::core::RecordKind::Reading => RecordKind::Reading,
                    ingestd_shards::core::RecordKind::DeadLetter => RecordKind::DeadLetter,
                    ingestd_shards::core::RecordKind::Credential => RecordKind::Credential,
                };
                let payload = core.record(record);
                let appended = self.log.append(kind, payload);
                assert_eq!(appended, offset, "the core and the log disagree on offsets");
                if let Some(egress) = &self.egress {
                    let payload = payload.to_vec();
                    let delivery = match meta {
                        Some(meta) => Delivery::with_reading(self.id, offset, payload, meta),
                        None => Delivery::new(self.id, offset, kind, payload),
                    };
                    egress.tail.borrow_mut().push_back(delivery);
                }
            }
            Action::Commit => {
                self.commit_wanted.set(true);
                self.commit_notify.notify();
            }
            Action::KafkaGate { bypass, lag_ms } => {
                if bypass {
                    tracing::warn!(shard = self.id, lag_ms, "Kafka is not confirming: acknowledging on the durable log alone; records wait there for Kafka");
                } else {
                    tracing::info!(
                        shard = self.id,
                        "Kafka has caught up: acknowledgements wait for it again"
                    );
                }
            }
        }
    }

    /// A new connection's driver side; the core learns of it with its first event.
    pub fn open_conn(&self, io: impl FnOnce(ConnId) -> ConnIo) -> Rc<ConnIo> {
        let id = ConnId(self.next_conn_id.get());
        self.next_conn_id.set(id.0 + 1);
        let io = Rc::new(io(id));
        self.conns.borrow_mut().insert(id, Rc::clone(&io));
        io
    }

    /// The connection is gone.
    pub fn close_conn(&self, conn: ConnId) {
        self.run(Event::Closed { conn });
        self.conns.borrow_mut().remove(&conn);
    }

    /// After a commit: publishes the durable end and hands the newly durable records to
    /// the egress ring. A full ring drops them here; the sink's feeder then reads them
    /// back from the log.
    fn egress_after_commit(&self, durable_end: u64) {
        let Some(egress) = &self.egress else {
            return;
        };
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

    /// With the Kafka gate: tells the core how far Kafka confirmed this shard's records.
    fn kafka_progress(&self) {
        let Some(egress) = self.egress.as_ref().filter(|e| e.kafka_gate) else {
            return;
        };
        let confirmed = egress
            .link
            .borrow()
            .positions
            .confirmed(SinkId::Kafka, self.id);
        self.run(Event::SinkConfirmed { end: confirmed });
    }

    /// Every tick with sinks: tells the core Kafka's progress (the acknowledgement gate)
    /// and the records a sink refused (they become dead letters).
    fn egress_tick(&self) {
        let Some(egress) = &self.egress else {
            return;
        };
        self.kafka_progress();
        let refusals: Vec<Refusal> = {
            let mut link = egress.link.borrow_mut();
            std::iter::from_fn(|| link.refused.pop().ok()).collect()
        };
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
            self.run(Event::SinkRefused {
                sink: refusal.sink.name(),
                reason: &refusal.reason,
                detail: &refusal.detail,
                offset: refusal.offset,
                meta,
                raw,
            });
        }
    }

    /// Applies a replaced registry: new keys and metadata are used from now on, and a
    /// device that was revoked or removed is disconnected (its next CONNECT is refused).
    pub fn apply_registry(&self) {
        let registry = self.shared.registry();
        let lookup = |id: &str| registry.get(id).map(device_entry);
        self.run(Event::RegistryChanged { registry: &lookup });
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

    /// Begins stopping: no new connections; open ones stop reading and close once their
    /// acknowledgements are out.
    pub fn begin_stop(&self) {
        if self.stopping.is_set() {
            return;
        }
        self.stopping.set();
        self.run(Event::Stop);
        self.commit_notify.notify();
        self.timer_notify.notify();
    }

    /// Nothing is left to do: no connection, no message waiting, nothing uncommitted
    /// (or nothing can be committed any more).
    fn drained(&self) -> bool {
        let core = self.core.borrow();
        core.conn_count() == 0
            && core.work_len() == 0
            && (core.pending_records() == 0 || core.failed())
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

/// Takes handed-in connections, beats the heartbeat, feeds the core the egress's
/// progress, notices registry changes and the stop flag.
pub async fn ticker(
    shard: Rc<Shard>,
    mut incoming: Vec<rtrb::Consumer<Handoff>>,
    mut peers: Option<super::peers::PeerLinks>,
) {
    let mut registry_generation = 0;
    let mut node_failed = false;
    loop {
        glommio::timer::sleep(TICK).await;
        let generation = shard.shared.registry_generation.load(Ordering::Acquire);
        if generation != registry_generation {
            registry_generation = generation;
            shard.apply_registry();
        }
        shard.shared.heartbeats[shard.id].fetch_add(1, Ordering::Relaxed);
        shard.egress_tick();
        if let Some(peers) = peers.as_mut() {
            peers.exchange(&shard);
        }
        if !node_failed && shard.shared.metrics.health.failed.load(Ordering::Relaxed) {
            node_failed = true;
            shard.run(Event::NodeFailed);
        }
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
        if shard.stopping.is_set() && shard.drained() {
            shard.commit_notify.notify();
            shard.timer_notify.notify();
            break;
        }
    }
}

/// Wakes the core at its deadline (the verification batch, a commit due); sleeps while
/// it has none.
pub async fn timer(shard: Rc<Shard>) {
    loop {
        if shard.stopping.is_set() && shard.drained() {
            break;
        }
        let next = shard.core.borrow().poll_timeout();
        shard.timer_at.set(next);
        let now_us = shard.now().mono_us;
        match next {
            Some(at) if at <= now_us => {}
            Some(at) => {
                future::or(shard.timer_notify.notified(), async {
                    glommio::timer::sleep(Duration::from_micros(at - now_us)).await;
                })
                .await;
            }
            None => {
                future::or(shard.timer_notify.notified(), async {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                })
                .await;
            }
        }
        // Running: the loop asks the core for its next deadline right after this tick, so
        // the tick itself must not wake the timer again (a stale wake-up would cost a
        // second tick for nothing).
        shard.timer_at.set(Some(0));
        shard.run(Event::Tick);
        // Let connections and the committer run between rounds.
        glommio::yield_if_needed().await;
    }
}

/// Commits the log when the core asks, and tells it what became durable.
pub async fn committer(shard: Rc<Shard>) {
    loop {
        shard
            .metrics
            .log_pending_bytes
            .set(shard.log.pending_bytes() as u64);
        if !shard.commit_wanted.replace(false) {
            if shard.stopping.is_set() && shard.drained() {
                break;
            }
            future::or(shard.commit_notify.notified(), async {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            })
            .await;
            continue;
        }
        let bytes = shard.log.pending_bytes() as u64;
        let started = Instant::now();
        match super::durable::commit(&shard).await {
            Ok(end) => {
                shard
                    .metrics
                    .log_fsync_latency
                    .observe_us(started.elapsed().as_micros() as u64);
                shard.metrics.log_commits.inc();
                shard.metrics.log_commit_bytes.add(bytes);
                shard.egress_after_commit(end);
                // Kafka's latest progress first, so the commit releases all it can.
                shard.kafka_progress();
                shard.run(Event::Committed {
                    end,
                    pending_bytes: shard.log.pending_bytes(),
                });
                if shard.log.claim_spare() {
                    let shard = Rc::clone(&shard);
                    glommio::spawn_local(async move { shard.log.prepare_spare().await }).detach();
                }
            }
            Err(error) if error.is_retriable() => {
                tracing::error!(shard = shard.id, %error, "durable log write failed; retrying, not acknowledging");
                shard.run(Event::CommitFailed);
            }
            Err(error) => {
                tracing::error!(shard = shard.id, %error, "durable log failed; stopping without acknowledging");
                // `durable::commit` already marked the node unhealthy, before it woke the
                // CONNECTs waiting for this commit.
                shard.shared.failed.store(true, Ordering::Relaxed);
                shard.shared.stop.store(true, Ordering::Relaxed);
                shard.run(Event::LogFailed);
                shard.begin_stop();
                break;
            }
        }
    }
}
