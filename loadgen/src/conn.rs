//! One simulated device: its connection, the timed publish loop (writer task) and the
//! acknowledgement reader (reader task), or the idle keep-alive loop.

use crate::net::{self, Io, TlsSetup};
use crate::payload::{self, Frames};
use crate::scenario::{Turn, Writer};
use crate::schedule::{self, Schedule};
use crate::stats::{Event, Progress, Stats};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use ingestd_codec::credential::sign_credential;
use ingestd_codec::envelope::SigningKey;
use ingestd_codec::mqtt::{
    self, Connect, Decoded, Disconnect, Origin, Packet, Properties, Protocol, QoS, ReasonCode,
};
use rand::Rng;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Largest packet the reader accepts from the broker.
const MAX_PACKET: usize = 1 << 20;

/// Time after the end of a duration-bound sending phase during which due messages are still
/// sent.
const END_GRACE: Duration = Duration::from_millis(100);

/// Per-thread run context.
pub struct Ctx {
    pub target: SocketAddr,
    pub protocol: Protocol,
    pub qos: QoS,
    pub plain: bool,
    pub tls: Option<TlsSetup>,
    pub keep_alive: u16,
    pub max_inflight: usize,
    pub connect_timeout: Duration,
    pub source_addrs: usize,
    pub schedule: Schedule,
    /// Devices in the whole run (the schedule is split over all of them).
    pub total_devices: u64,
    /// Messages in the whole run.
    pub total_messages: u64,
    /// Sending-phase length, if bounded by time.
    pub duration: Option<f64>,
    pub drain_timeout: Duration,
    pub keep_acked: bool,
    /// Where a clone's second unit connects from.
    pub clone_source: Ipv4Addr,
    pub stats: RefCell<Stats>,
    pub progress: Arc<Progress>,
    /// Start of the timed phase.
    pub t0: Cell<Instant>,
    /// Start of the connect phase (same instant in every thread).
    pub connect_epoch: Cell<Instant>,
}

impl Ctx {
    fn t(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.t0.get()).as_secs_f64()
    }
}

/// A prepared device.
pub struct DevicePlan {
    /// Global device index (its share of the schedule).
    pub index: u64,
    pub id: String,
    pub key: Option<SigningKey>,
    pub topic: String,
    pub label: &'static str,
    /// Who sends which frames with which sequence numbers: one turn, or a clone's units
    /// taking turns (each turn is one connection).
    pub turns: Vec<Turn>,
    pub frames: Frames,
}

/// An established MQTT session.
pub struct Session {
    reader: ReadHalf<Io>,
    writer: WriteHalf<Io>,
    leftover: Vec<u8>,
    /// Unacknowledged PUBLISHes allowed (client limit, lowered to the server's Receive
    /// Maximum).
    window: usize,
    keep_alive: u16,
}

/// Opens the connection from `source` (the OS's choice when `None`) and completes
/// CONNECT / CONNACK. Records connect latency.
pub async fn connect(
    ctx: &Ctx,
    dev: &DevicePlan,
    source: Option<Ipv4Addr>,
) -> Result<Session, String> {
    let started = Instant::now();
    let io = net::open(ctx.target, source, ctx.tls.as_ref(), ctx.connect_timeout).await?;
    let (mut reader, mut writer) = futures_lite::io::split(io);
    let client_id = dev.id.as_str();
    let password = match (&dev.key, ctx.plain) {
        (Some(key), false) => {
            let nonce: [u8; 16] = rand::thread_rng().gen();
            Some(sign_credential(
                &dev.id,
                client_id,
                key,
                payload::now_unix_ms(),
                nonce,
            ))
        }
        _ => None,
    };
    let connect = Connect {
        protocol: ctx.protocol,
        clean_start: true,
        keep_alive: ctx.keep_alive,
        properties: Properties::default(),
        client_id,
        will: None,
        username: password.as_ref().map(|_| dev.id.as_str()),
        password: password.as_deref().map(str::as_bytes),
    };
    let mut out = Vec::with_capacity(512);
    Packet::Connect(connect)
        .encode(ctx.protocol, &mut out)
        .map_err(|_| "connect_encode".to_string())?;
    writer
        .write_all(&out)
        .await
        .map_err(|_| "connect_write".to_string())?;
    let mut buf = Vec::with_capacity(4096);
    let deadline = started + ctx.connect_timeout;
    let mut window = ctx.max_inflight.max(1);
    let mut keep_alive = ctx.keep_alive;
    loop {
        match mqtt::decode_from(&buf, ctx.protocol, MAX_PACKET, Origin::Server) {
            Ok(Decoded::Packet {
                packet: Packet::ConnAck(ack),
                len,
            }) => {
                if ack.reason != ReasonCode::Success {
                    return Err(format!("connack_{:?}", ack.reason).to_lowercase());
                }
                if let Some(rm) = ack.properties.receive_maximum {
                    window = window.min(usize::from(rm));
                }
                if let Some(ka) = ack.properties.server_keep_alive {
                    keep_alive = ka;
                }
                buf.drain(..len);
                break;
            }
            Ok(Decoded::Packet { .. }) => return Err("connack_expected".to_string()),
            Ok(Decoded::NeedMore { .. }) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let n = read_some(&mut reader, &mut buf, left)
                    .await
                    .map_err(|e| format!("connack_{e}"))?;
                if n == 0 {
                    return Err("connack_eof".to_string());
                }
            }
            Err(_) => return Err("connack_malformed".to_string()),
        }
    }
    ctx.stats
        .borrow_mut()
        .record_connect_us(started.elapsed().as_micros() as u64);
    Ok(Session {
        reader,
        writer,
        leftover: buf,
        window,
        keep_alive,
    })
}

async fn read_some(
    reader: &mut ReadHalf<Io>,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<usize, &'static str> {
    let mut tmp = [0u8; 16 * 1024];
    let read = glommio::timer::timeout(timeout.max(Duration::from_millis(1)), async {
        reader
            .read(&mut tmp)
            .await
            .map_err(glommio::GlommioError::IoError)
    })
    .await;
    match read {
        Ok(n) => {
            buf.extend_from_slice(tmp.get(..n).unwrap_or(&[]));
            Ok(n)
        }
        Err(glommio::GlommioError::TimedOut(_)) => Err("timeout"),
        Err(_) => Err("read_error"),
    }
}

/// One message in flight.
struct Slot {
    /// Message index on this connection.
    k: u32,
    sent: Instant,
    /// QoS 2: PUBREC received (acknowledged), PUBCOMP pending.
    released: bool,
}

/// State shared by the writer and reader tasks of one connection.
#[derive(Default)]
struct Shared {
    inflight: HashMap<u16, Slot>,
    pubrels: Vec<u16>,
    closed: bool,
    /// We are disconnecting: EOF is expected.
    finishing: bool,
    waker: Option<Waker>,
    pings: u64,
    pingresps: u64,
}

impl Shared {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// Resolves once after the reader calls [`Shared::wake`].
struct Notified<'a> {
    shared: &'a RefCell<Shared>,
    registered: bool,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered {
            return Poll::Ready(());
        }
        self.shared.borrow_mut().waker = Some(cx.waker().clone());
        self.registered = true;
        Poll::Pending
    }
}

/// Waits until woken or `until`, whichever is first.
async fn wait(shared: &RefCell<Shared>, until: Instant) {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return;
    }
    futures_lite::future::or(
        Notified {
            shared,
            registered: false,
        },
        glommio::timer::sleep(left),
    )
    .await;
}

/// Runs the timed phase for one connected device: publishes on schedule, reads
/// acknowledgements, drains, disconnects. A clone's units take turns: at the end of a turn
/// the connection drains and disconnects, and the other unit connects from its own address.
/// Updates the thread's stats.
pub async fn publish(ctx: Rc<Ctx>, mut dev: DevicePlan, session: Session) {
    let budget = dev.frames.len() as u64;
    let end_at = ctx
        .duration
        .map(|s| ctx.t0.get() + Duration::from_secs_f64(s) + END_GRACE);
    let turns = std::mem::take(&mut dev.turns);
    let mut session = Some(session);
    let mut k = turns.first().map_or(0, |t| t.k_start);
    for turn in &turns {
        let session = match session.take() {
            Some(session) => session,
            None => {
                if end_at.is_some_and(|e| Instant::now() >= e) {
                    break;
                }
                let source = match turn.writer {
                    Writer::Original => net::source_addr(dev.index as usize, ctx.source_addrs),
                    Writer::Twin => Some(ctx.clone_source),
                };
                match connect(&ctx, &dev, source).await {
                    Ok(session) => session,
                    Err(kind) => {
                        ctx.stats.borrow_mut().error(&format!("handover_{kind}"));
                        break;
                    }
                }
            }
        };
        let (reached, closed) = publish_turn(&ctx, &mut dev, session, turn, end_at).await;
        k = reached;
        if closed || k < turn.k_end {
            break;
        }
    }
    let mut st = ctx.stats.borrow_mut();
    st.unsent += budget.saturating_sub(k);
    *st.scenario_sent.entry(dev.label.to_string()).or_default() += k;
}

/// Publishes frames `turn.k_start..turn.k_end` over one session on schedule, drains and
/// disconnects. Returns the next unsent frame and whether the connection was lost.
async fn publish_turn(
    ctx: &Rc<Ctx>,
    dev: &mut DevicePlan,
    session: Session,
    turn: &Turn,
    end_at: Option<Instant>,
) -> (u64, bool) {
    let Session {
        reader,
        mut writer,
        leftover,
        window,
        keep_alive,
    } = session;
    let shared = Rc::new(RefCell::new(Shared::default()));
    // The reader names acknowledged messages by sequence: seq = base + k in this turn.
    let seq_base = turn.seq_start.wrapping_sub(turn.k_start);
    let reader_task = glommio::spawn_local(read_loop(
        Rc::clone(ctx),
        Rc::clone(&shared),
        reader,
        leftover,
        dev.index,
        seq_base,
        true,
    ));
    let budget = turn.k_end.min(dev.frames.len() as u64);
    let d = ctx.total_devices;
    let i = dev.index;
    let qos = ctx.qos;
    let ka = Duration::from_secs(u64::from(keep_alive.max(1)));
    let mut k: u64 = turn.k_start;
    let mut next_pkid: u16 = 0;
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut last_write = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if shared.borrow().closed {
            break;
        }
        out.clear();
        // PUBRELs first: they free QoS 2 slots.
        let pubrels = std::mem::take(&mut shared.borrow_mut().pubrels);
        for pkid in pubrels {
            let _ = mqtt::encode_pubrel(pkid, ctx.protocol, &mut out);
        }
        let sending = k < budget && end_at.is_none_or(|e| now < e);
        let mut sent_now = 0u64;
        if sending {
            let t = ctx.t(now);
            let due_global = ctx.schedule.due(t).min(ctx.total_messages);
            let due = schedule::share(due_global, i, d).min(budget);
            let mut sh = shared.borrow_mut();
            while k < due && (qos == QoS::AtMostOnce || sh.inflight.len() < window) {
                let Some(range) = dev.frames.range(k as usize) else {
                    break;
                };
                let frame = &mut dev.frames.bytes[range];
                if qos != QoS::AtMostOnce {
                    loop {
                        next_pkid = next_pkid.wrapping_add(1);
                        if next_pkid != 0 && !sh.inflight.contains_key(&next_pkid) {
                            break;
                        }
                    }
                    payload::patch_pkid(frame, next_pkid);
                    sh.inflight.insert(
                        next_pkid,
                        Slot {
                            k: k as u32,
                            sent: now,
                            released: false,
                        },
                    );
                }
                out.extend_from_slice(frame);
                k += 1;
                sent_now += 1;
            }
        }
        if out.is_empty() && now.duration_since(last_write) >= ka {
            out.extend_from_slice(&[0xC0, 0]); // PINGREQ
        }
        if !out.is_empty() {
            if writer.write_all(&out).await.is_err() {
                let mut sh = shared.borrow_mut();
                if !sh.closed {
                    ctx.stats.borrow_mut().error("write_error");
                }
                sh.closed = true;
                break;
            }
            last_write = Instant::now();
            if sent_now > 0 {
                let mut st = ctx.stats.borrow_mut();
                st.sent += sent_now;
                st.at(ctx.t(now), Event::Sent, sent_now);
                if qos == QoS::AtMostOnce {
                    st.last_event_s = st.last_event_s.max(ctx.t(last_write));
                }
                Progress::add(&ctx.progress.sent, sent_now);
            }
        }
        let sending = k < budget && end_at.is_none_or(|e| Instant::now() < e);
        let (empty, window_full) = {
            let sh = shared.borrow();
            (
                sh.inflight.is_empty() && sh.pubrels.is_empty(),
                qos != QoS::AtMostOnce && sh.inflight.len() >= window,
            )
        };
        let ping_at = last_write + ka;
        if sending {
            if window_full {
                wait(&shared, ping_at).await;
            } else {
                let next = ctx
                    .schedule
                    .planned_s(k, i, d)
                    .map_or(ping_at, |s| ctx.t0.get() + Duration::from_secs_f64(s));
                let next = end_at.map_or(next, |e| next.min(e));
                if next > Instant::now() + Duration::from_micros(50) {
                    wait(&shared, next.min(ping_at)).await;
                }
            }
        } else {
            if empty || qos == QoS::AtMostOnce {
                break;
            }
            let deadline =
                *drain_deadline.get_or_insert_with(|| Instant::now() + ctx.drain_timeout);
            if Instant::now() >= deadline {
                break;
            }
            wait(&shared, deadline.min(ping_at)).await;
        }
    }
    // Disconnect politely if the connection is still up.
    let closed = {
        let mut sh = shared.borrow_mut();
        sh.finishing = true;
        sh.closed
    };
    if !closed {
        let mut bye = Vec::new();
        let _ = Packet::Disconnect(Disconnect::normal()).encode(ctx.protocol, &mut bye);
        let _ = writer.write_all(&bye).await;
        let _ = writer.close().await;
    }
    reader_task.cancel().await;
    let lost = shared
        .borrow()
        .inflight
        .values()
        .filter(|s| !s.released)
        .count() as u64;
    ctx.stats.borrow_mut().lost += lost;
    (k, closed)
}

/// Keeps a connection open with PINGREQ until `end`; counts it as stayed up if it is still
/// open and answered (all but possibly the last) PINGREQs.
pub async fn idle(ctx: Rc<Ctx>, dev: DevicePlan, session: Session, end: Instant) {
    let Session {
        reader,
        mut writer,
        leftover,
        keep_alive,
        ..
    } = session;
    let shared = Rc::new(RefCell::new(Shared::default()));
    let reader_task = glommio::spawn_local(read_loop(
        Rc::clone(&ctx),
        Rc::clone(&shared),
        reader,
        leftover,
        dev.index,
        0,
        false,
    ));
    let ka = Duration::from_secs(u64::from(keep_alive.max(1)));
    let mut next_ping = Instant::now() + ka;
    loop {
        if shared.borrow().closed {
            break;
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_ping {
            if writer.write_all(&[0xC0, 0]).await.is_err() {
                shared.borrow_mut().closed = true;
                ctx.stats.borrow_mut().error("write_error");
                break;
            }
            shared.borrow_mut().pings += 1;
            next_ping = now + ka;
        }
        wait(&shared, next_ping.min(end)).await;
    }
    let (up, closed) = {
        let mut sh = shared.borrow_mut();
        sh.finishing = true;
        (!sh.closed && sh.pingresps + 1 >= sh.pings, sh.closed)
    };
    if up {
        ctx.stats.borrow_mut().stayed_up += 1;
    }
    if !closed {
        let mut bye = Vec::new();
        let _ = Packet::Disconnect(Disconnect::normal()).encode(ctx.protocol, &mut bye);
        let _ = writer.write_all(&bye).await;
        let _ = writer.close().await;
    }
    reader_task.cancel().await;
}

/// Reads acknowledgements until the connection closes.
async fn read_loop(
    ctx: Rc<Ctx>,
    shared: Rc<RefCell<Shared>>,
    mut reader: ReadHalf<Io>,
    mut buf: Vec<u8>,
    device_index: u64,
    seq_base: u64,
    timed: bool,
) {
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        // Decode everything buffered.
        let mut consumed = 0;
        let mut acked = 0u64;
        let mut refused = 0u64;
        let mut error: Option<String> = None;
        {
            let now = Instant::now();
            let t = ctx.t(now);
            let mut sh = shared.borrow_mut();
            let mut st = ctx.stats.borrow_mut();
            loop {
                let rest = buf.get(consumed..).unwrap_or(&[]);
                match mqtt::decode_from(rest, ctx.protocol, MAX_PACKET, Origin::Server) {
                    Ok(Decoded::NeedMore { .. }) => break,
                    Err(e) => {
                        error = Some(format!("malformed_from_server: {e}"));
                        break;
                    }
                    Ok(Decoded::Packet { packet, len }) => {
                        consumed += len;
                        match packet {
                            Packet::PubAck(ack) if ctx.qos == QoS::AtLeastOnce => {
                                match sh.inflight.remove(&ack.pkid) {
                                    None => st.error("ack_for_unknown_packet_id"),
                                    Some(slot) => {
                                        if on_ack(
                                            &mut st,
                                            &slot,
                                            u8::from(ack.reason),
                                            now,
                                            t,
                                            device_index,
                                            seq_base,
                                            ctx.keep_acked,
                                        ) {
                                            acked += 1;
                                        } else {
                                            refused += 1;
                                        }
                                    }
                                }
                            }
                            Packet::PubRec(ack) if ctx.qos == QoS::ExactlyOnce => {
                                let code = u8::from(ack.reason);
                                match sh.inflight.get_mut(&ack.pkid) {
                                    Some(slot) if !slot.released => {
                                        if on_ack(
                                            &mut st,
                                            slot,
                                            code,
                                            now,
                                            t,
                                            device_index,
                                            seq_base,
                                            ctx.keep_acked,
                                        ) {
                                            acked += 1;
                                            slot.released = true;
                                            sh.pubrels.push(ack.pkid);
                                        } else {
                                            refused += 1;
                                            sh.inflight.remove(&ack.pkid);
                                        }
                                    }
                                    Some(_) => sh.pubrels.push(ack.pkid),
                                    None => st.error("pubrec_for_unknown_packet_id"),
                                }
                            }
                            Packet::PubComp(ack) if ctx.qos == QoS::ExactlyOnce => {
                                if sh.inflight.remove(&ack.pkid).is_none() {
                                    st.error("pubcomp_for_unknown_packet_id");
                                }
                            }
                            Packet::PingResp => sh.pingresps += 1,
                            Packet::Disconnect(d) => {
                                error = Some(
                                    format!("server_disconnect_{:?}", d.reason).to_lowercase(),
                                );
                            }
                            Packet::Publish(_) => st.error("unexpected_publish"),
                            other => st.error(
                                &format!("unexpected_{:?}", other.packet_type()).to_lowercase(),
                            ),
                        }
                    }
                }
            }
            if acked > 0 {
                st.at(t, Event::Acked, acked);
                st.last_event_s = st.last_event_s.max(t);
                Progress::add(&ctx.progress.acked, acked);
            }
            if refused > 0 {
                st.at(t, Event::Refused, refused);
                st.last_event_s = st.last_event_s.max(t);
                Progress::add(&ctx.progress.refused, refused);
            }
            if let Some(e) = &error {
                st.error(e);
                sh.closed = true;
            }
            if acked + refused > 0 || error.is_some() || !sh.pubrels.is_empty() {
                sh.wake();
            }
        }
        buf.drain(..consumed);
        if error.is_some() {
            return;
        }
        match reader.read(&mut tmp).await {
            Ok(0) | Err(_) => {
                let mut sh = shared.borrow_mut();
                if !sh.finishing && !sh.closed {
                    let kind = if timed {
                        "connection_lost"
                    } else {
                        "idle_connection_lost"
                    };
                    ctx.stats.borrow_mut().error(kind);
                    Progress::add(&ctx.progress.closed, 1);
                }
                sh.closed = true;
                sh.wake();
                return;
            }
            Ok(n) => buf.extend_from_slice(tmp.get(..n).unwrap_or(&[])),
        }
    }
}

/// Records one acknowledgement; true when positive.
#[allow(clippy::too_many_arguments)]
fn on_ack(
    st: &mut Stats,
    slot: &Slot,
    reason: u8,
    now: Instant,
    _t: f64,
    device_index: u64,
    seq_base: u64,
    keep: bool,
) -> bool {
    st.record_latency_us(now.saturating_duration_since(slot.sent).as_micros() as u64);
    if reason >= 0x80 {
        st.refused += 1;
        *st.refused_reasons
            .entry(format!("{reason:#04x}"))
            .or_default() += 1;
        false
    } else {
        st.acked += 1;
        if keep {
            st.acked_list.push((
                u32::try_from(device_index).unwrap_or(u32::MAX),
                payload::seq_of(seq_base, u64::from(slot.k)),
            ));
        }
        true
    }
}
