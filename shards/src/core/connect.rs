//! CONNECT: which device it is, whether this shard is its home, authentication in a fixed
//! order (cheap and non-revealing checks first), session takeover and persistence, and
//! the keep-alive the connection gets.
//!
//! Authentication answers nothing about a device before it proved its key: an unknown
//! device and a wrong credential get the same 0x86; only a device with a valid credential
//! (or a verified client certificate) learns that it is revoked (0x8A). An accepted
//! credential is appended to the log (`RecordKind::Credential`) and its CONNACK is held
//! until the log is durable past it, so a restart never forgets a nonce it accepted.

use super::record::{self, CredentialMeta};
use super::{Action, ConnId, ConnState, Core, DeviceIdx, Lookup, Metrics, RecordKind};
use ingestd_codec::credential::{check_client_id, Credential};
use ingestd_codec::mqtt::{self, ConnAck, DecodeError, Packet, Properties, Protocol, ReasonCode};
use std::net::SocketAddr;

/// What a CONNECT said, copied out of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    pub protocol: Protocol,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub clean_start: bool,
    pub keep_alive_s: u16,
    pub session_expiry_s: u32,
    /// An authentication method was given (none is supported).
    pub auth_method: bool,
    /// Bytes of the CONNECT packet.
    pub len: usize,
    /// The client's Maximum Packet Size (`usize::MAX` when it announced none, and in
    /// 3.1.1): the server never sends it a larger packet [MQTT-3.1.2-24].
    pub packet_bytes_max: usize,
}

impl ConnectInfo {
    #[must_use]
    pub fn new(connect: &mqtt::Connect<'_>, len: usize) -> Self {
        Self {
            protocol: connect.protocol,
            client_id: connect.client_id.to_string(),
            username: connect.username.map(str::to_string),
            password: connect.password.map(<[u8]>::to_vec),
            clean_start: connect.clean_start,
            keep_alive_s: connect.keep_alive,
            session_expiry_s: connect.properties.session_expiry_interval.unwrap_or(0),
            auth_method: connect.properties.authentication_method.is_some(),
            len,
            packet_bytes_max: connect.packet_bytes_max(),
        }
    }
}

/// The CONNACK to answer a first packet that did not decode, where the specification
/// defines one for the error; `buf` holds the bytes read so far.
#[must_use]
pub fn first_packet_reply(buf: &[u8], error: &DecodeError) -> Option<(Protocol, ReasonCode)> {
    if connect_level(buf) == Some(5) {
        Some((Protocol::V5, error.reason_code()))
    } else {
        error
            .connect_return_code()
            .map(|_| (Protocol::V311, error.reason_code()))
    }
}

/// The protocol level byte of a CONNECT at the front of `buf`, if far enough in.
fn connect_level(buf: &[u8]) -> Option<u8> {
    // Fixed header: type byte, then a variable byte integer of 1..=4 bytes.
    let varint_len = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    // Protocol name: u16 length (4) + "MQTT", then the level.
    buf.get(1 + varint_len + 6).copied()
}

/// A refused CONNECT: the CONNACK's reason and the log line's word.
type Refusal = (ReasonCode, &'static str);

/// The client identifier's rules, checked before anything else is looked at: at most
/// 400 bytes of UTF-8 whatever the device id (the codec's one check), and empty only
/// with a session that ends with the connection in 3.1.1 [MQTT-3.1.3-8]. An empty one is
/// otherwise accepted: the device id becomes the client id (docs/PROTOCOL.md, 13.1).
fn client_id_rules(info: &ConnectInfo) -> Result<(), Refusal> {
    check_client_id(&info.client_id).map_err(|reason| (reason, "client_id_too_long"))?;
    if info.client_id.is_empty() && info.protocol == Protocol::V311 && !info.clean_start {
        return Err((ReasonCode::ClientIdentifierNotValid, "empty_client_id"));
    }
    Ok(())
}

/// An authenticated CONNECT whose CONNACK waits for its credential's record (at `end - 1`)
/// to be durable.
#[derive(Debug)]
pub(super) struct Held {
    conn: ConnId,
    info: ConnectInfo,
    peer: SocketAddr,
    idx: DeviceIdx,
    end: u64,
}

impl<M: Metrics> Core<M> {
    fn new_conn(
        &mut self,
        conn: ConnId,
        protocol: Protocol,
        peer: SocketAddr,
        client_max_bytes: usize,
        session_expiry_s: Option<u32>,
    ) {
        let previous = self.conns.insert(
            conn,
            ConnState {
                protocol,
                peer,
                connected_ms: self.now.wall_ms,
                device: None,
                held: false,
                out: Vec::with_capacity(64),
                flush_queued: false,
                inflight: 0,
                waiting: false,
                paused: false,
                closing: false,
                close_reason: None,
                finished: false,
                client_max_bytes,
                session_expiry_s,
            },
        );
        assert!(previous.is_none(), "connection id {conn:?} reused");
    }

    pub(super) fn on_connect(
        &mut self,
        conn: ConnId,
        info: &ConnectInfo,
        peer: SocketAddr,
        cert_device: Option<&str>,
        handed_in: bool,
        registry: Lookup<'_>,
    ) {
        let expiry_s = (info.protocol == Protocol::V5).then_some(info.session_expiry_s);
        self.new_conn(conn, info.protocol, peer, info.packet_bytes_max, expiry_s);
        if let Err(refusal) = client_id_rules(info) {
            return self.refuse(conn, info, peer, refusal);
        }
        // Mutual TLS: a verified client certificate names the device; a username, if
        // given, must agree with it. Otherwise the username names the device and the
        // password proves it.
        let device_id = match (cert_device, info.username.as_deref()) {
            (Some(cert), Some(user)) if cert != user => {
                return self.refuse(
                    conn,
                    info,
                    peer,
                    (ReasonCode::NotAuthorized, "certificate_mismatch"),
                );
            }
            (Some(cert), _) => cert,
            (None, Some(user)) => user,
            // Benchmarks against plain MQTT clients: the client id names the device.
            (None, None) if !self.config.require_credential && !info.client_id.is_empty() => {
                info.client_id.as_str()
            }
            (None, None) => {
                return self.refuse(
                    conn,
                    info,
                    peer,
                    (ReasonCode::BadUserNameOrPassword, "no_username"),
                );
            }
        };
        let home = crate::home_shard(device_id, self.config.shards);
        if home != self.config.shard {
            assert!(
                !handed_in,
                "a handed-in connection must be on its home shard"
            );
            self.actions.push_back(Action::HandOff {
                conn,
                home,
                device_id: device_id.to_string(),
            });
            return;
        }
        match self.authenticate(info, device_id, cert_device.is_some(), registry) {
            Ok((idx, None)) => self.accept(conn, info, peer, idx),
            Ok((idx, Some(credential))) => self.hold(conn, info, peer, idx, &credential),
            Err(refusal) => self.refuse(conn, info, peer, refusal),
        }
    }

    /// Logs an accepted credential and holds the CONNACK until the record is durable.
    fn hold(
        &mut self,
        conn: ConnId,
        info: &ConnectInfo,
        peer: SocketAddr,
        idx: DeviceIdx,
        credential: &Credential,
    ) {
        let mut nonce = Vec::with_capacity(32);
        ingestd_codec::envelope::hex::encode_into(&credential.nonce, &mut nonce);
        let meta = CredentialMeta {
            device: self.devices[idx.0 as usize].id.clone(),
            nonce: String::from_utf8_lossy(&nonce).into_owned(),
            ts_ms: credential.ts_ms,
        };
        let start = self.records.len();
        record::encode(&meta, &[], &mut self.records);
        let offset = self.append(RecordKind::Credential, start, None);
        if self.oldest_pending_us.is_none() {
            self.oldest_pending_us = Some(self.now.mono_us);
        }
        if let Some(state) = self.conns.get_mut(&conn) {
            state.held = true;
        }
        self.held.push_back(Held {
            conn,
            info: info.clone(),
            peer,
            idx,
            end: offset + 1,
        });
    }

    /// After a commit: accepts the held CONNECTs whose credential is now durable.
    pub(super) fn release_held(&mut self) {
        while self.held.front().is_some_and(|h| h.end <= self.durable_end) {
            let Some(held) = self.held.pop_front() else {
                break;
            };
            let Some(state) = self.conns.get_mut(&held.conn) else {
                continue;
            };
            state.held = false;
            if self.stopping {
                let protocol = state.protocol;
                self.refuse_with(
                    held.conn,
                    protocol,
                    held.peer,
                    (ReasonCode::ServerUnavailable, "shutting_down"),
                );
            } else {
                self.accept(held.conn, &held.info, held.peer, held.idx);
                self.resume(held.conn);
            }
        }
    }

    /// Refuses every held CONNECT (the log failed: their records never become durable);
    /// returns their connections.
    pub(super) fn refuse_held(&mut self, reason: ReasonCode, why: &'static str) -> Vec<ConnId> {
        let held = std::mem::take(&mut self.held);
        let mut refused = Vec::with_capacity(held.len());
        for held in held {
            let Some(state) = self.conns.get_mut(&held.conn) else {
                continue;
            };
            state.held = false;
            let protocol = state.protocol;
            self.refuse_with(held.conn, protocol, held.peer, (reason, why));
            refused.push(held.conn);
        }
        refused
    }

    /// The first packet was not a CONNECT (`error` is `None`), or did not decode.
    pub(super) fn on_bad_first_packet(
        &mut self,
        conn: ConnId,
        error: Option<(&DecodeError, &[u8])>,
    ) {
        self.metrics.rejected(super::Reason::Malformed);
        let reply = error.and_then(|(error, buf)| {
            self.metrics.connect_refused();
            first_packet_reply(buf, error)
        });
        let protocol = reply.map_or(Protocol::V311, |(p, _)| p);
        // The CONNECT did not decode: its Maximum Packet Size is unknown.
        let peer = SocketAddr::from(([0, 0, 0, 0], 0));
        self.new_conn(conn, protocol, peer, usize::MAX, None);
        if let Some((_, reason)) = reply {
            self.send(conn, &connack(protocol, reason, false, None, 0, 0));
        }
        self.actions.push_back(Action::Refuse {
            conn,
            why: "malformed",
            delay_ms: 0,
        });
    }

    pub(super) fn on_handoff_failed(&mut self, conn: ConnId) {
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        let (protocol, peer) = (state.protocol, state.peer);
        self.refuse_with(
            conn,
            protocol,
            peer,
            (ReasonCode::ServerBusy, "handoff_ring_full"),
        );
    }

    /// Checks the device and its credential; returns its state on this (its home) shard
    /// and the credential whose record must be durable before the CONNACK, if any.
    ///
    /// Order: the credential before the device's status, so that only a device that proved
    /// its key can learn it is revoked.
    fn authenticate(
        &mut self,
        info: &ConnectInfo,
        device_id: &str,
        certificate_verified: bool,
        registry: Lookup<'_>,
    ) -> Result<(DeviceIdx, Option<Credential>), Refusal> {
        if self.stopping {
            return Err((ReasonCode::ServerUnavailable, "shutting_down"));
        }
        if info.auth_method {
            return Err((ReasonCode::BadAuthenticationMethod, "auth_method"));
        }
        if self.accepted >= self.config.connections_per_shard_max {
            return Err((ReasonCode::ServerBusy, "connections_max"));
        }
        let Some(entry) = registry(device_id) else {
            return Err((ReasonCode::BadUserNameOrPassword, "unknown_device"));
        };
        if certificate_verified || !self.config.require_credential {
            // The device CA vouched for the device id (or credentials are off for a
            // benchmark); the registry for its status.
            if !entry.active {
                return Err((ReasonCode::Banned, "revoked_device"));
            }
            return Ok((self.device_state(device_id, entry), None));
        }
        let password = info.password.as_deref().unwrap_or_default();
        let credential = Credential::parse(password)
            .map_err(|_| (ReasonCode::BadUserNameOrPassword, "bad_credential"))?;
        let now = self.now.wall_ms;
        let window = self.config.credential_window_ms;
        credential
            .verify(device_id, &info.client_id, &entry.key, now, window)
            .map_err(|_| (ReasonCode::BadUserNameOrPassword, "bad_credential"))?;
        self.nonces
            .accept(device_id, credential.nonce, credential.ts_ms, now, window)
            .map_err(|e| (ReasonCode::BadUserNameOrPassword, e.reason()))?;
        // The device proved its key: only now may the answer say it is revoked.
        if !entry.active {
            return Err((ReasonCode::Banned, "revoked_device"));
        }
        Ok((self.device_state(device_id, entry), Some(credential)))
    }

    fn refuse(&mut self, conn: ConnId, info: &ConnectInfo, peer: SocketAddr, refusal: Refusal) {
        self.refuse_with(conn, info.protocol, peer, refusal);
    }

    /// Refuses a CONNECT: slows repeat offenders down, then CONNACK with the reason.
    fn refuse_with(
        &mut self,
        conn: ConnId,
        protocol: Protocol,
        peer: SocketAddr,
        refusal: Refusal,
    ) {
        let (reason, why) = refusal;
        self.metrics.connect_refused();
        let auth_failure = matches!(
            reason,
            ReasonCode::BadUserNameOrPassword | ReasonCode::Banned | ReasonCode::NotAuthorized
        );
        let mut delay_ms = 0;
        if auth_failure {
            delay_ms = self.throttle.failed(peer.ip(), self.now.wall_ms);
            if delay_ms > 0 {
                self.metrics.auth_throttled();
            }
        }
        // Not sent if it does not fit the client's Maximum Packet Size [MQTT-3.1.2-25].
        self.send(conn, &connack(protocol, reason, false, None, 0, 0));
        self.actions.push_back(Action::Refuse {
            conn,
            why,
            delay_ms,
        });
    }

    /// Accepts: takes the session over from an older connection, keeps or resets it, and
    /// grants the keep-alive. A CONNACK larger than the client's Maximum Packet Size even
    /// in its minimal form is not sent: the connection closes unanswered [MQTT-3.1.2-25],
    /// and nothing of the device's state changes.
    fn accept(
        &mut self,
        conn: ConnId,
        info: &ConnectInfo,
        peer: SocketAddr,
        idx: super::DeviceIdx,
    ) {
        // Keep-alive: the device must send something every keep_alive seconds; the server
        // allows 1.5 times that [MQTT-3.1.2-24]. 0 or above the maximum gets the maximum.
        let keep_alive_max = self.config.keep_alive_s_max;
        let keep_alive_s = if info.keep_alive_s == 0 || info.keep_alive_s > keep_alive_max {
            keep_alive_max
        } else {
            info.keep_alive_s
        };
        let server_keep_alive = (keep_alive_s != info.keep_alive_s).then_some(keep_alive_s);
        self.expire_session(idx);
        let device = &self.devices[idx.0 as usize];
        let session_present = !info.clean_start && device.session_exists;
        // An empty client id: the device id is the client id, and a v5 client is told so
        // [MQTT-3.2.2-16]. (The credential signed the client id as sent, the empty one.)
        let assigned =
            (info.client_id.is_empty() && info.protocol == Protocol::V5).then(|| device.id.clone());
        let mut connack = connack(
            info.protocol,
            ReasonCode::Success,
            session_present,
            server_keep_alive,
            self.config.inflight_max,
            self.config.packet_bytes_max,
        );
        if let Packet::ConnAck(ack) = &mut connack {
            ack.properties.assigned_client_identifier = assigned.as_deref();
        }
        if !fits(&connack, info) {
            self.metrics.connect_refused();
            self.actions.push_back(Action::Refuse {
                conn,
                why: "connack_too_large",
                delay_ms: 0,
            });
            return;
        }

        self.throttle.succeeded(peer.ip());
        let device = &mut self.devices[idx.0 as usize];
        let old = device.conn.take();
        if info.clean_start {
            device.session = crate::session::Session::new();
        }
        device.session_exists = true;
        device.session_ends_at_us = None;
        device.session_persistent = match info.protocol {
            Protocol::V311 => !info.clean_start,
            Protocol::V5 => info.session_expiry_s > 0,
        };
        device.conn = Some(conn);
        if let Some(old) = old {
            // Session takeover [MQTT-3.1.4-3]: the older connection of this device closes.
            self.close(old, Some(ReasonCode::SessionTakenOver));
        }
        if let Some(state) = self.conns.get_mut(&conn) {
            state.device = Some(idx);
        }
        self.accepted += 1;
        self.metrics.connection_opened();
        let sent = self.send(conn, &connack);
        debug_assert!(sent, "a CONNACK that fits was not queued");
        self.actions.push_back(Action::Accept {
            conn,
            read_timeout_ms: u64::from(keep_alive_s) * 1500,
        });
    }

    /// The connection is gone: its session ends, or (persistent) loses what was not
    /// yet acknowledged.
    pub(super) fn on_closed(&mut self, conn: ConnId) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        self.paused.retain(|c| *c != conn);
        if state.held {
            self.held.retain(|h| h.conn != conn);
        }
        let Some(idx) = state.device else {
            return;
        };
        self.accepted -= 1;
        self.metrics.connection_closed();
        let device = &mut self.devices[idx.0 as usize];
        if device.conn == Some(conn) {
            device.conn = None;
            self.end_session(idx, state.session_expiry_s);
        }
    }
}

/// Whether `packet` fits the client's Maximum Packet Size, with what may be left out.
fn fits(packet: &Packet<'_>, info: &ConnectInfo) -> bool {
    let mut scratch = Vec::new();
    mqtt::encode_within(packet, info.protocol, info.packet_bytes_max, &mut scratch).is_ok()
}

/// A CONNACK; a refusal carries no properties.
pub(super) fn connack(
    protocol: Protocol,
    reason: ReasonCode,
    session_present: bool,
    server_keep_alive: Option<u16>,
    inflight_max: u16,
    packet_bytes_max: usize,
) -> Packet<'static> {
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
        properties.receive_maximum = Some(inflight_max);
        properties.maximum_packet_size = u32::try_from(packet_bytes_max).ok();
        properties.retain_available = Some(0);
        properties.wildcard_subscription_available = Some(0);
        properties.subscription_identifier_available = Some(0);
        properties.shared_subscription_available = Some(0);
        properties.server_keep_alive = server_keep_alive;
    }
    Packet::ConnAck(ConnAck {
        session_present: session_present && reason == ReasonCode::Success,
        reason,
        properties,
    })
}
