//! One device connection: CONNECT and authentication, handoff to the home shard, then the
//! MQTT session until the connection ends.
//!
//! A connection is two tasks on its home shard: this reader, which decodes packets from the
//! socket, runs the cheap checks and queues messages for the shard's pipeline; and a writer,
//! which sends whatever the reader or the committer put in the connection's out buffer
//! (CONNACK, PINGRESP, PUBCOMP right away; PUBACK and PUBREC only once the record is
//! durable). The reader stops reading when the device has `max_inflight` messages waiting
//! for durability or the shard is overloaded: TCP flow control then slows the device down
//! instead of anything being dropped.

use super::handoff::{self, Handoff};
use super::notify::Notify;
use super::now_ms;
use super::shard::{DeviceState, Shard, Verdict, Work};
use super::tls::{self, TlsStream};
use crate::metrics::reason_index;
use crate::registry::DeviceStatus;
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use ingestd_codec::credential::Credential;
use ingestd_codec::mqtt::{
    self, ConnAck, Decoded, Disconnect, Origin, Packet, Properties, Protocol, QoS, ReasonCode,
    SubAck, UnsubAck,
};
use ingestd_shards::replay::ReplayError;
use ingestd_shards::session::Qos2Action;
use ingestd_shards::validate::{precheck, Rejection};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

/// A device's byte stream: plain TCP or TLS over TCP.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.tcp(),
        }
    }

    /// The device id of a verified client certificate, if the device presented one.
    fn certificate_device_id(&self) -> Option<String> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => tls::certificate_device_id(tls.session()),
        }
    }
}

impl futures_lite::AsyncRead for Transport {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => std::pin::Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => std::pin::Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl futures_lite::AsyncWrite for Transport {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => std::pin::Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => std::pin::Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => std::pin::Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => std::pin::Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => std::pin::Pin::new(tcp).poll_close(cx),
            Transport::Tls(tls) => std::pin::Pin::new(&mut **tls).poll_close(cx),
        }
    }
}

/// Bytes asked of the socket per read adapt between these: a read that fills its buffer
/// doubles the next one (a busy device pipelining PUBLISHes), a read that uses under a
/// quarter halves it. The buffer is freed whenever it is drained, so an idle device's
/// connection holds only a smallest-size buffer for its pending read.
const READ_CHUNK_MIN: usize = 256;
const READ_CHUNK_MAX: usize = 64 * 1024;

/// The part of a connection the shard's other tasks reach.
pub struct Conn {
    pub id: u64,
    fd: RawFd,
    pub protocol: Protocol,
    pub device: String,
    pub peer: SocketAddr,
    out: RefCell<Vec<u8>>,
    out_notify: Notify,
    /// Woken when the reader may read again (acknowledgements went out, or a commit
    /// freed the shard from back-pressure).
    pub resume: Notify,
    inflight: Cell<usize>,
    /// Waiting in the shard's back-pressure list (so it is listed once).
    pub paused: Cell<bool>,
    /// The socket is still open: `fd` may be shut down. Cleared before the stream drops,
    /// so a recycled descriptor number is never touched.
    open: Cell<bool>,
    closing: Cell<bool>,
    close_reason: Cell<Option<ReasonCode>>,
    finished: Cell<bool>,
}

impl Conn {
    fn new(id: u64, fd: RawFd, protocol: Protocol, device: String, peer: SocketAddr) -> Self {
        Self {
            id,
            fd,
            protocol,
            device,
            peer,
            out: RefCell::new(Vec::with_capacity(64)),
            out_notify: Notify::default(),
            resume: Notify::default(),
            inflight: Cell::new(0),
            paused: Cell::new(false),
            open: Cell::new(true),
            closing: Cell::new(false),
            close_reason: Cell::new(None),
            finished: Cell::new(false),
        }
    }

    /// Queues bytes for the writer.
    fn send(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.finished.get() {
            return;
        }
        encode(&mut self.out.borrow_mut());
        self.out_notify.notify();
    }

    /// The acknowledgement of a durable QoS 1/2 PUBLISH.
    pub fn send_ack(&self, qos: QoS, pkid: u16, reason: ReasonCode) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
        let protocol = self.protocol;
        self.send(|out| {
            let result = match qos {
                QoS::ExactlyOnce => mqtt::encode_pubrec_reason(pkid, reason, protocol, out),
                _ => mqtt::encode_puback_reason(pkid, reason, protocol, out),
            };
            debug_assert!(result.is_ok(), "ack encoding: {result:?}");
        });
        self.resume.notify();
    }

    /// Stops reading; the connection closes once its acknowledgements are out, with a v5
    /// DISCONNECT carrying `reason` if given.
    pub fn close(&self, reason: Option<ReasonCode>) {
        if self.close_reason.get().is_none() {
            self.close_reason.set(reason);
        }
        self.closing.set(true);
        if self.open.get() {
            let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Read);
        }
        self.resume.notify();
    }

    /// Closes at once, sending nothing more (the log failed: nothing may be acknowledged).
    pub fn abort(&self) {
        self.finished.set(true);
        self.out.borrow_mut().clear();
        if self.open.get() {
            let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both);
        }
        self.resume.notify();
        self.out_notify.notify();
    }
}

/// What the CONNECT said, copied out of the read buffer.
struct ConnectInfo {
    protocol: Protocol,
    client_id: String,
    username: Option<String>,
    password: Option<Vec<u8>>,
    clean_start: bool,
    keep_alive_s: u16,
    session_expiry_s: u32,
    auth_method: bool,
    len: usize,
}

/// Serves one connection from its first byte (or from `buffered`, when handed in).
pub async fn serve(
    shard: Rc<Shard>,
    mut stream: Transport,
    mut buf: Vec<u8>,
    peer: SocketAddr,
    handed_in: bool,
) {
    let max_packet = shard.config.mqtt.max_packet_bytes;
    let connect_timeout = Duration::from_millis(shard.config.mqtt.connect_timeout_ms);
    let _ = stream.tcp().set_read_timeout(Some(connect_timeout));

    // CONNECT: the first packet, whatever the version [MQTT-3.1.0-1].
    let info = loop {
        match mqtt::decode_from(&buf, Protocol::V5, max_packet, Origin::Client) {
            Ok(Decoded::Packet {
                packet: Packet::Connect(connect),
                len,
            }) => {
                break ConnectInfo {
                    protocol: connect.protocol,
                    client_id: connect.client_id.to_string(),
                    username: connect.username.map(str::to_string),
                    password: connect.password.map(<[u8]>::to_vec),
                    clean_start: connect.clean_start,
                    keep_alive_s: connect.keep_alive,
                    session_expiry_s: connect.properties.session_expiry_interval.unwrap_or(0),
                    auth_method: connect.properties.authentication_method.is_some(),
                    len,
                };
            }
            Ok(Decoded::Packet { .. }) => {
                count_malformed(&shard);
                return;
            }
            Ok(Decoded::NeedMore { bytes }) => {
                if !read_more(&mut stream, &mut buf, bytes).await {
                    return;
                }
            }
            Err(error) => {
                count_malformed(&shard);
                shard.metrics.connect_refused.inc();
                // Answer with a CONNACK where the spec defines one for the error.
                let v5 = connect_level(&buf) == Some(5);
                let reply = if v5 {
                    Some((Protocol::V5, error.reason_code()))
                } else {
                    error
                        .connect_return_code()
                        .map(|_| (Protocol::V311, error.reason_code()))
                };
                if let Some((protocol, reason)) = reply {
                    let mut out = Vec::new();
                    encode_connack(protocol, reason, false, &shard, None, &mut out);
                    let _ = stream.write_all(&out).await;
                }
                return;
            }
        }
    };

    // Mutual TLS: a verified client certificate names the device; a username, if given,
    // must agree with it. Otherwise the username names the device and the password proves it.
    let cert_device = stream.certificate_device_id();
    let device_id = match (&cert_device, &info.username) {
        (Some(cert), Some(user)) if cert != user => {
            let why = "certificate_mismatch";
            refuse(
                &shard,
                &mut stream,
                &info,
                peer,
                ReasonCode::NotAuthorized,
                why,
            )
            .await;
            return;
        }
        (Some(cert), _) => cert.clone(),
        (None, Some(user)) => user.clone(),
        // Benchmarks against plain MQTT clients: the client id names the device.
        (None, None) if !shard.config.auth.require_credential => info.client_id.clone(),
        (None, None) => {
            let why = "no_username";
            refuse(
                &shard,
                &mut stream,
                &info,
                peer,
                ReasonCode::BadUserNameOrPassword,
                why,
            )
            .await;
            return;
        }
    };
    let home = ingestd_shards::home_shard(&device_id, shard.shards);
    if home != shard.id {
        assert!(
            !handed_in,
            "a handed-in connection must be on its home shard"
        );
        let (tcp, tls) = match stream {
            Transport::Plain(tcp) => (tcp, None),
            Transport::Tls(tls) => {
                let (tcp, session) = tls.into_parts();
                (tcp, Some(Box::new(session)))
            }
        };
        let fd = match handoff::detach(&tcp) {
            Ok(fd) => fd,
            Err(error) => {
                tracing::warn!(%error, "cannot hand off connection");
                return;
            }
        };
        let handoff = Handoff {
            fd,
            buffered: buf,
            peer,
            from_shard: shard.id,
            device_id,
            tls,
        };
        if let Err(handoff) = shard.hand_off(home, handoff) {
            // The home shard's ring is full: refuse here, over the original socket.
            let mut stream = match handoff.tls {
                Some(session) => Transport::Tls(Box::new(TlsStream::from_parts(tcp, *session))),
                None => Transport::Plain(tcp),
            };
            let why = "handoff_ring_full";
            refuse(
                &shard,
                &mut stream,
                &info,
                peer,
                ReasonCode::ServerBusy,
                why,
            )
            .await;
        }
        // The stream drops here; the home shard holds the duplicated descriptor.
        return;
    }
    let (state, credential_end) =
        match authenticate(&shard, &info, &device_id, cert_device.is_some()) {
            Ok(accepted) => accepted,
            Err((reason, why)) => {
                refuse(&shard, &mut stream, &info, peer, reason, why).await;
                return;
            }
        };
    // The credential's record is durable before the CONNACK: a restart cannot forget it.
    if let Some(end) = credential_end {
        if !shard.wait_durable(end).await {
            let why = "log_failed";
            refuse(
                &shard,
                &mut stream,
                &info,
                peer,
                ReasonCode::ServerUnavailable,
                why,
            )
            .await;
            return;
        }
    }
    shard.throttle.borrow_mut().succeeded(peer.ip());

    let conn = Rc::new(Conn::new(
        shard.next_conn_id(),
        stream.tcp().as_raw_fd(),
        info.protocol,
        device_id.clone(),
        peer,
    ));
    let session_present = {
        let mut device = state.borrow_mut();
        if let Some(old) = device.conn.take() {
            // Session takeover [MQTT-3.1.4-3]: the older connection of this device closes.
            old.close(Some(ReasonCode::SessionTakenOver));
        }
        let present = !info.clean_start && device.session_exists;
        if info.clean_start {
            device.session = ingestd_shards::session::Session::new();
        }
        device.session_exists = true;
        device.session_persistent = match info.protocol {
            Protocol::V311 => !info.clean_start,
            Protocol::V5 => info.session_expiry_s > 0,
        };
        device.conn = Some(Rc::clone(&conn));
        present
    };
    shard.register(&conn);

    // Keep-alive: the device must send something every keep_alive seconds; the server
    // allows 1.5 times that [MQTT-3.1.2-24]. 0 or above the maximum gets the maximum.
    let keep_alive_max = shard.config.mqtt.keep_alive_max_s;
    let keep_alive_s = if info.keep_alive_s == 0 || info.keep_alive_s > keep_alive_max {
        keep_alive_max
    } else {
        info.keep_alive_s
    };
    let server_keep_alive = (keep_alive_s != info.keep_alive_s).then_some(keep_alive_s);
    let _ = stream
        .tcp()
        .set_read_timeout(Some(Duration::from_millis(u64::from(keep_alive_s) * 1500)));
    conn.send(|out| {
        encode_connack(
            info.protocol,
            ReasonCode::Success,
            session_present,
            &shard,
            server_keep_alive,
            out,
        )
    });

    buf.drain(..info.len);
    // The session runs as a task of its own, so that what a long-lived connection keeps
    // allocated is the session's state only, not the CONNECT phase's (about 1.9 KB).
    glommio::spawn_local(session(shard, conn, state, stream, buf)).detach();
}

/// An authenticated connection, from after the CONNACK to its close.
async fn session(
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    state: Rc<std::cell::RefCell<DeviceState>>,
    stream: Transport,
    buf: Vec<u8>,
) {
    let (reader, writer) = futures_lite::io::split(stream);
    let writer_task = glommio::spawn_local(write_loop(Rc::clone(&conn), writer));
    read_loop(&shard, &conn, &state, reader, buf).await;

    // Let the committer deliver what is in flight, then close.
    conn.closing.set(true);
    let deadline =
        std::time::Instant::now() + Duration::from_millis(shard.config.shutdown.drain_timeout_ms);
    while conn.inflight.get() > 0 && std::time::Instant::now() < deadline && !conn.finished.get() {
        future::or(conn.resume.notified(), async {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        })
        .await;
    }
    conn.finished.set(true);
    conn.out_notify.notify();
    let reader_and_writer = writer_task.await;
    conn.open.set(false);
    drop(reader_and_writer);
    shard.unregister(&conn);
    let mut device = state.borrow_mut();
    if device.conn.as_ref().is_some_and(|c| c.id == conn.id) {
        device.conn = None;
        if device.session_persistent {
            device.session.drop_pending();
        } else {
            device.session = ingestd_shards::session::Session::new();
            device.session_exists = false;
        }
    }
}

type Reader = futures_lite::io::ReadHalf<Transport>;
type Writer = futures_lite::io::WriteHalf<Transport>;

async fn read_loop(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    state: &Rc<std::cell::RefCell<DeviceState>>,
    mut reader: Reader,
    mut buf: Vec<u8>,
) {
    let max_packet = shard.config.mqtt.max_packet_bytes;
    let max_inflight = usize::from(shard.config.mqtt.max_inflight);
    let mut need = 1;
    let mut chunk = READ_CHUNK_MIN;
    'connection: loop {
        let mut pos = 0;
        while pos < buf.len() {
            match mqtt::decode_from(&buf[pos..], conn.protocol, max_packet, Origin::Client) {
                Ok(Decoded::Packet { packet, len }) => {
                    pos += len;
                    if let Err(reason) = handle(shard, conn, state, packet) {
                        conn.close(reason);
                        break 'connection;
                    }
                    if conn.closing.get() {
                        break 'connection;
                    }
                }
                Ok(Decoded::NeedMore { bytes }) => {
                    need = bytes;
                    break;
                }
                Err(error) => {
                    count_malformed(shard);
                    tracing::debug!(device = %conn.device, %error, "malformed packet");
                    conn.close(Some(error.reason_code()));
                    break 'connection;
                }
            }
        }
        buf.drain(..pos);
        if pos > 0 && buf.is_empty() {
            need = 1;
            buf = Vec::new();
        }
        // Back-pressure: wait for acknowledgements or for the log to catch up.
        while !conn.closing.get() && (conn.inflight.get() >= max_inflight || shard.overloaded()) {
            if shard.overloaded() {
                shard.pause(conn);
            }
            future::or(conn.resume.notified(), async {
                glommio::timer::sleep(Duration::from_millis(100)).await;
            })
            .await;
        }
        if conn.closing.get() {
            break;
        }
        let room = need.max(chunk);
        match read_into(&mut reader, &mut buf, room).await {
            ReadOutcome::Data(n) => {
                if n == room {
                    chunk = (chunk * 2).min(READ_CHUNK_MAX);
                } else if n < chunk / 4 {
                    chunk = (chunk / 2).max(READ_CHUNK_MIN);
                }
            }
            ReadOutcome::Eof => break,
            ReadOutcome::TimedOut => {
                conn.close(Some(ReasonCode::KeepAliveTimeout));
                break;
            }
        }
    }
}

/// Handles one packet from the device. `Err` closes the connection (with a v5 reason).
fn handle(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    state: &Rc<std::cell::RefCell<DeviceState>>,
    packet: Packet<'_>,
) -> Result<(), Option<ReasonCode>> {
    let protocol = conn.protocol;
    match packet {
        Packet::Publish(publish) => {
            if protocol == Protocol::V5 {
                // The CONNACK said retain is not available and granted no topic aliases.
                if publish.retain {
                    return Err(Some(ReasonCode::RetainNotSupported));
                }
                if publish.properties.topic_alias.is_some() {
                    return Err(Some(ReasonCode::TopicAliasInvalid));
                }
            }
            on_publish(shard, conn, state, &publish)
        }
        Packet::PubRel(ack) => {
            let known = state.borrow_mut().session.pubrel(ack.pkid);
            let reason = if known || protocol == Protocol::V311 {
                ReasonCode::Success
            } else {
                ReasonCode::PacketIdentifierNotFound
            };
            conn.send(|out| {
                let _ = mqtt::encode_pubcomp_reason(ack.pkid, reason, protocol, out);
            });
            Ok(())
        }
        Packet::PingReq => {
            conn.send(|out| {
                let _ = Packet::PingResp.encode(protocol, out);
            });
            Ok(())
        }
        Packet::Disconnect(_) => {
            conn.closing.set(true);
            Ok(())
        }
        Packet::Subscribe(subscribe) => {
            // No downlink yet: every filter is refused [MQTT-3.8.4-5 / 3.9.3].
            let refusal = match protocol {
                Protocol::V311 => ReasonCode::UnspecifiedError,
                Protocol::V5 => ReasonCode::NotAuthorized,
            };
            let suback = SubAck {
                pkid: subscribe.pkid,
                properties: Properties::default(),
                return_codes: vec![refusal; subscribe.filters.len()],
            };
            conn.send(|out| {
                let _ = Packet::SubAck(suback).encode(protocol, out);
            });
            Ok(())
        }
        Packet::Unsubscribe(unsubscribe) => {
            let reasons = match protocol {
                Protocol::V311 => Vec::new(),
                Protocol::V5 => vec![ReasonCode::NoSubscriptionExisted; unsubscribe.filters.len()],
            };
            let unsuback = UnsubAck {
                pkid: unsubscribe.pkid,
                properties: Properties::default(),
                reasons,
            };
            conn.send(|out| {
                let _ = Packet::UnsubAck(unsuback).encode(protocol, out);
            });
            Ok(())
        }
        // A second CONNECT, acknowledgements of PUBLISHes this server never sent, AUTH
        // without an authentication method: protocol errors.
        _ => Err(Some(ReasonCode::ProtocolError)),
    }
}

fn on_publish(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    state: &Rc<std::cell::RefCell<DeviceState>>,
    publish: &mqtt::Publish<'_>,
) -> Result<(), Option<ReasonCode>> {
    let max_inflight = usize::from(shard.config.mqtt.max_inflight);
    match publish.qos {
        QoS::AtMostOnce => {
            if shard.overloaded() {
                // QoS 0 is best effort: under overload it is dropped, and counted.
                shard.metrics.qos0_dropped.inc();
                shard.metrics.messages_rejected[reason_index("qos0_dropped_overload")].inc();
                return Ok(());
            }
        }
        QoS::AtLeastOnce => {}
        QoS::ExactlyOnce => {
            let action = state
                .borrow_mut()
                .session
                .qos2_publish(publish.pkid, max_inflight);
            match action {
                Qos2Action::Deliver => {}
                Qos2Action::AwaitDurable => return Ok(()),
                Qos2Action::ResendPubrec => {
                    let protocol = conn.protocol;
                    conn.send(|out| {
                        let _ = mqtt::encode_pubrec(publish.pkid, protocol, out);
                    });
                    return Ok(());
                }
                Qos2Action::TooMany => return Err(Some(ReasonCode::ReceiveMaximumExceeded)),
            }
        }
    }
    if publish.qos != QoS::AtMostOnce {
        if conn.protocol == Protocol::V5 && conn.inflight.get() >= max_inflight {
            return Err(Some(ReasonCode::ReceiveMaximumExceeded));
        }
        conn.inflight.set(conn.inflight.get() + 1);
    }
    let received_ms = now_ms();
    let verdict = if shard.config.validation.opaque_payloads {
        if ingestd_shards::validate::topic_allowed(
            &conn.device,
            publish.topic,
            &shard.limits.topic_prefix,
        ) {
            Verdict::Opaque
        } else {
            Verdict::Reject {
                reason: "topic_not_allowed",
                detail: Rejection::TopicNotAllowed.to_string(),
                seq: None,
            }
        }
    } else {
        let device = state.borrow();
        match precheck(
            &conn.device,
            publish.topic,
            publish.payload,
            &device.replay,
            received_ms,
            &shard.limits,
        ) {
            Ok(_) => Verdict::Verify {
                key: device.device.key,
            },
            Err(Rejection::Replay(ReplayError::Duplicate { .. })) if publish.dup => {
                Verdict::Redelivery
            }
            Err(rejection) => Verdict::Reject {
                reason: rejection.reason(),
                detail: rejection.to_string(),
                seq: match rejection {
                    Rejection::Replay(
                        ReplayError::Duplicate { seq } | ReplayError::TooOld { seq, .. },
                    ) => Some(seq),
                    _ => None,
                },
            },
        }
    };
    shard.submit(Work {
        conn: Rc::clone(conn),
        device: Rc::clone(state),
        qos: publish.qos,
        pkid: publish.pkid,
        received_ms,
        received_us: shard.now_us(),
        topic: publish.topic.to_string(),
        payload: publish.payload.to_vec(),
        verdict,
    });
    Ok(())
}

/// An authenticated device's state, and the log end its credential's record needs.
type Authenticated = (Rc<std::cell::RefCell<DeviceState>>, Option<u64>);

/// Checks the device and its credential; returns its state on this (its home) shard and,
/// for a credential, the log end its record needs to be durable.
fn authenticate(
    shard: &Shard,
    info: &ConnectInfo,
    device_id: &str,
    certificate_verified: bool,
) -> Result<Authenticated, (ReasonCode, &'static str)> {
    if shard.stopping.is_set() {
        return Err((ReasonCode::ServerUnavailable, "shutting_down"));
    }
    if info.auth_method {
        return Err((ReasonCode::BadAuthenticationMethod, "auth_method"));
    }
    if shard.conns.borrow().len() >= shard.config.mqtt.connections_per_shard_max {
        return Err((ReasonCode::ServerBusy, "connections_max"));
    }
    let registry = shard.shared.registry();
    let Some(device) = registry.get(device_id) else {
        return Err((ReasonCode::BadUserNameOrPassword, "unknown_device"));
    };
    if device.status == DeviceStatus::Revoked {
        return Err((ReasonCode::Banned, "revoked_device"));
    }
    if certificate_verified || !shard.config.auth.require_credential {
        // The device CA vouched for the device id (or credentials are off for a
        // benchmark); the registry for its status.
        return Ok((shard.device_state(device_id, device), None));
    }
    let password = info.password.as_deref().unwrap_or_default();
    let credential = Credential::parse(password)
        .map_err(|_| (ReasonCode::BadUserNameOrPassword, "bad_credential"))?;
    let now = now_ms();
    let window = shard.config.auth.credential_window_ms;
    credential
        .verify(device_id, &info.client_id, &device.key, now, window)
        .map_err(|_| (ReasonCode::BadUserNameOrPassword, "bad_credential"))?;
    let end = super::durable::accept_credential(shard, device_id, &credential, now)
        .map_err(|e| (ReasonCode::BadUserNameOrPassword, e.reason()))?;
    Ok((shard.device_state(device_id, device), Some(end)))
}

/// Refuses a CONNECT: slows repeat offenders down, then CONNACK with the reason and close.
async fn refuse(
    shard: &Shard,
    stream: &mut Transport,
    info: &ConnectInfo,
    peer: SocketAddr,
    reason: ReasonCode,
    why: &'static str,
) {
    shard.metrics.connect_refused.inc();
    tracing::info!(peer = %peer, username = ?info.username, why, "CONNECT refused");
    let auth_failure = matches!(
        reason,
        ReasonCode::BadUserNameOrPassword | ReasonCode::Banned | ReasonCode::NotAuthorized
    );
    if auth_failure {
        let delay_ms = shard.throttle.borrow_mut().failed(peer.ip(), now_ms());
        if delay_ms > 0 {
            shard.metrics.auth_throttled.inc();
            glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
        }
    }
    let mut out = Vec::new();
    encode_connack(info.protocol, reason, false, shard, None, &mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

fn encode_connack(
    protocol: Protocol,
    reason: ReasonCode,
    session_present: bool,
    shard: &Shard,
    server_keep_alive: Option<u16>,
    out: &mut Vec<u8>,
) {
    // 3.1.1 has six return codes; map the v5 reasons onto the closest one.
    let reason = match protocol {
        Protocol::V5 => reason,
        Protocol::V311 => match reason {
            ReasonCode::Success
            | ReasonCode::UnsupportedProtocolVersion
            | ReasonCode::ClientIdentifierNotValid
            | ReasonCode::ServerUnavailable
            | ReasonCode::BadUserNameOrPassword
            | ReasonCode::NotAuthorized => reason,
            ReasonCode::ServerBusy => ReasonCode::ServerUnavailable,
            _ => ReasonCode::NotAuthorized,
        },
    };
    let mut properties = Properties::default();
    if protocol == Protocol::V5 && reason == ReasonCode::Success {
        properties.receive_maximum = Some(shard.config.mqtt.max_inflight);
        properties.maximum_packet_size = u32::try_from(shard.config.mqtt.max_packet_bytes).ok();
        properties.retain_available = Some(0);
        properties.wildcard_subscription_available = Some(0);
        properties.subscription_identifier_available = Some(0);
        properties.shared_subscription_available = Some(0);
        properties.server_keep_alive = server_keep_alive;
    }
    let connack = ConnAck {
        session_present: session_present && reason == ReasonCode::Success,
        reason,
        properties,
    };
    let result = Packet::ConnAck(connack).encode(protocol, out);
    debug_assert!(result.is_ok(), "CONNACK encoding: {result:?}");
}

async fn write_loop(conn: Rc<Conn>, mut writer: Writer) -> Writer {
    let mut sending = Vec::new();
    loop {
        conn.out_notify.notified().await;
        std::mem::swap(&mut sending, &mut *conn.out.borrow_mut());
        if !sending.is_empty() {
            if writer.write_all(&sending).await.is_err() {
                conn.finished.set(true);
                conn.closing.set(true);
                conn.resume.notify();
                break;
            }
            sending.clear();
        }
        if conn.finished.get() {
            // Anything queued while the last write was in flight.
            let rest = std::mem::take(&mut *conn.out.borrow_mut());
            let _ = writer.write_all(&rest).await;
            if let (Protocol::V5, Some(reason)) = (conn.protocol, conn.close_reason.get()) {
                let mut out = Vec::new();
                let disconnect = Disconnect {
                    reason,
                    properties: Properties::default(),
                };
                if Packet::Disconnect(disconnect)
                    .encode(Protocol::V5, &mut out)
                    .is_ok()
                {
                    let _ = writer.write_all(&out).await;
                }
            }
            let _ = writer.flush().await;
            break;
        }
    }
    writer
}

enum ReadOutcome {
    Data(usize),
    Eof,
    TimedOut,
}

/// Reads once into `room` bytes of new space at the end of `buf`.
async fn read_into(reader: &mut Reader, buf: &mut Vec<u8>, room: usize) -> ReadOutcome {
    let filled = buf.len();
    buf.resize(filled + room, 0);
    let result = reader.read(&mut buf[filled..]).await;
    match result {
        Ok(0) => {
            buf.truncate(filled);
            ReadOutcome::Eof
        }
        Ok(n) => {
            buf.truncate(filled + n);
            ReadOutcome::Data(n)
        }
        Err(error) => {
            buf.truncate(filled);
            if error.kind() == std::io::ErrorKind::TimedOut {
                ReadOutcome::TimedOut
            } else {
                ReadOutcome::Eof
            }
        }
    }
}

/// Reads more of the CONNECT from an unsplit stream.
async fn read_more(stream: &mut Transport, buf: &mut Vec<u8>, need: usize) -> bool {
    let filled = buf.len();
    buf.resize(filled + need.max(512), 0);
    match stream.read(&mut buf[filled..]).await {
        Ok(n) if n > 0 => {
            buf.truncate(filled + n);
            true
        }
        _ => false,
    }
}

/// The protocol level byte of a CONNECT at the front of `buf`, if far enough in.
fn connect_level(buf: &[u8]) -> Option<u8> {
    // Fixed header: type byte, then a variable byte integer of 1..=4 bytes.
    let varint_len = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    // Protocol name: u16 length (4) + "MQTT", then the level.
    buf.get(1 + varint_len + 6).copied()
}

fn count_malformed(shard: &Shard) {
    shard.metrics.messages_rejected[reason_index("malformed")].inc();
}
