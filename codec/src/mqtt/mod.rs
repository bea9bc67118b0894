//! MQTT 3.1.1 (protocol level 4) and 5.0 (level 5) framing, both directions.
//!
//! [`decode`] takes the front of a read buffer and returns one packet borrowing from it, or
//! [`Decoded::NeedMore`] when the frame is incomplete. The size limit is checked from the
//! fixed header alone, before the body is buffered. [`Packet::encode`] appends a frame that
//! [`decode`] accepts; invalid values are an [`EncodeError`], never a malformed frame.
//!
//! Limits: this is framing, not a session. Rules that need connection state (a second
//! CONNECT, Topic Alias above the negotiated maximum, packet identifiers in flight) belong
//! to the caller; the peer's Maximum Packet Size is applied by [`encode_within`]. Direction
//! rules (a client must not send CONNACK, nor a Subscription Identifier in PUBLISH) apply
//! with [`decode_from`].

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod error;
mod fit;
mod header;
mod primitives;
mod properties;
mod publish;
mod reason;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;

pub use ack::{
    encode_puback, encode_puback_reason, encode_pubcomp, encode_pubcomp_reason, encode_pubrec,
    encode_pubrec_reason, encode_pubrel, encode_pubrel_reason, Ack,
};
pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::Disconnect;
pub use error::{DecodeError, EncodeError};
pub use fit::{encode_within, FitError, Fitted};
pub use header::{PacketType, MAX_VAR_INT};
pub use properties::{allowed as property_allowed, id as property_id, Properties, PropertyContext};
pub use publish::Publish;
pub use reason::{ConnectReturnCode, ReasonCode};
pub use suback::SubAck;
pub use subscribe::{RetainHandling, Subscribe, SubscribeFilter, SubscriptionOptions};
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;

use header::{read_fixed_header, HeaderRead};
use primitives::Reader;

/// The protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Protocol {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl TryFrom<u8> for QoS {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(other),
        }
    }
}

/// Who sent the bytes being decoded; selects the direction rules of [`decode_from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Bytes from a client, decoded by the server.
    Client,
    /// Bytes from a server, decoded by a client (the load generator).
    Server,
    /// No direction rules (tests, tools).
    Any,
}

/// Any MQTT control packet.
// Variants differ in size (a `Properties` is a few hundred bytes, PINGREQ is nothing), but
// boxing would put an allocation on every PUBLISH, which the hot path must not have.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Connect(Connect<'a>),
    ConnAck(ConnAck<'a>),
    Publish(Publish<'a>),
    PubAck(Ack<'a>),
    PubRec(Ack<'a>),
    PubRel(Ack<'a>),
    PubComp(Ack<'a>),
    Subscribe(Subscribe<'a>),
    SubAck(SubAck<'a>),
    Unsubscribe(Unsubscribe<'a>),
    UnsubAck(UnsubAck<'a>),
    PingReq,
    PingResp,
    Disconnect(Disconnect<'a>),
    /// v5 only.
    Auth(Auth<'a>),
}

/// The outcome of [`decode`] on the front of a buffer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// One packet, which took the first `len` bytes of the buffer.
    Packet { packet: Packet<'a>, len: usize },
    /// The frame is incomplete: at least `bytes` more are needed (1 while the fixed header
    /// itself is incomplete).
    NeedMore { bytes: usize },
}

/// Decodes one packet from the front of `buf` without direction rules
/// (same as [`decode_from`] with [`Origin::Any`]).
///
/// CONNECT is accepted whatever `protocol` says: it carries its own level, reported in
/// [`Connect::protocol`]. `max_packet_bytes` bounds the whole frame, fixed header included.
pub fn decode(
    buf: &[u8],
    protocol: Protocol,
    max_packet_bytes: usize,
) -> Result<Decoded<'_>, DecodeError> {
    decode_from(buf, protocol, max_packet_bytes, Origin::Any)
}

/// Decodes one packet from the front of `buf`, also enforcing the rules of who may send
/// what: a server decodes with [`Origin::Client`], a client with [`Origin::Server`].
pub fn decode_from(
    buf: &[u8],
    protocol: Protocol,
    max_packet_bytes: usize,
    origin: Origin,
) -> Result<Decoded<'_>, DecodeError> {
    let header = match read_fixed_header(buf, protocol)? {
        HeaderRead::NeedMore(bytes) => return Ok(Decoded::NeedMore { bytes }),
        HeaderRead::Header(h) => h,
    };
    let ty = header.packet_type;
    check_direction(ty, protocol, origin)?;
    // Checked before the body is buffered so that a hostile length costs nothing.
    let size = header.header_len.saturating_add(header.remaining_len);
    if size > max_packet_bytes {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_bytes,
        });
    }
    let Some(body) = buf.get(header.header_len..size) else {
        return Ok(Decoded::NeedMore {
            bytes: size - buf.len(),
        });
    };
    let mut r = Reader::new(body, ty);
    let packet = match ty {
        PacketType::Connect => Packet::Connect(Connect::read(&mut r)?),
        PacketType::ConnAck => Packet::ConnAck(ConnAck::read(&mut r, protocol)?),
        PacketType::Publish => {
            let p = Publish::read(&mut r, header.flags, protocol)?;
            // [MQTT-3.3.4-6]: a client's PUBLISH must not carry a Subscription Identifier.
            if origin == Origin::Client && !p.properties.subscription_identifiers.is_empty() {
                return Err(DecodeError::SubscriptionIdFromClient);
            }
            Packet::Publish(p)
        }
        PacketType::PubAck => Packet::PubAck(Ack::read(&mut r, ty, protocol)?),
        PacketType::PubRec => Packet::PubRec(Ack::read(&mut r, ty, protocol)?),
        PacketType::PubRel => Packet::PubRel(Ack::read(&mut r, ty, protocol)?),
        PacketType::PubComp => Packet::PubComp(Ack::read(&mut r, ty, protocol)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::read(&mut r, protocol)?),
        PacketType::SubAck => Packet::SubAck(SubAck::read(&mut r, protocol)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::read(&mut r, protocol)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::read(&mut r, protocol)?),
        PacketType::PingReq | PacketType::PingResp => {
            // §3.12.1 / §3.13.1: remaining length 0.
            if !r.is_empty() {
                return Err(DecodeError::InvalidRemainingLength {
                    packet_type: ty,
                    expected: 0,
                    actual: r.remaining(),
                });
            }
            if ty == PacketType::PingReq {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        PacketType::Disconnect => Packet::Disconnect(Disconnect::read(&mut r, protocol)?),
        PacketType::Auth => Packet::Auth(Auth::read(&mut r)?),
    };
    r.finish()?;
    Ok(Decoded::Packet { packet, len: size })
}

/// Packets only a server sends, only a client sends (§2.1.2 "Direction of flow").
fn check_direction(ty: PacketType, protocol: Protocol, origin: Origin) -> Result<(), DecodeError> {
    let server_only = matches!(
        ty,
        PacketType::ConnAck | PacketType::SubAck | PacketType::UnsubAck | PacketType::PingResp
    );
    let client_only = matches!(
        ty,
        PacketType::Connect | PacketType::Subscribe | PacketType::Unsubscribe | PacketType::PingReq
    ) || (ty == PacketType::Disconnect && protocol == Protocol::V311);
    match origin {
        Origin::Client if server_only => Err(DecodeError::UnexpectedPacket(ty)),
        Origin::Server if client_only => Err(DecodeError::UnexpectedPacket(ty)),
        _ => Ok(()),
    }
}

impl Packet<'_> {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// Appends the frame for this packet to `out`. CONNECT uses its own
    /// [`Connect::protocol`]; everything else `protocol`. On error `out` is left as it was.
    pub fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = match self {
            Packet::Connect(p) => p.write(out),
            Packet::ConnAck(p) => p.write(protocol, out),
            Packet::Publish(p) => p.write(protocol, out),
            Packet::PubAck(p) => p.write(PacketType::PubAck, protocol, out),
            Packet::PubRec(p) => p.write(PacketType::PubRec, protocol, out),
            Packet::PubRel(p) => p.write(PacketType::PubRel, protocol, out),
            Packet::PubComp(p) => p.write(PacketType::PubComp, protocol, out),
            Packet::Subscribe(p) => p.write(protocol, out),
            Packet::SubAck(p) => p.write(protocol, out),
            Packet::Unsubscribe(p) => p.write(protocol, out),
            Packet::UnsubAck(p) => p.write(protocol, out),
            Packet::PingReq => {
                out.extend_from_slice(&[PacketType::PingReq.first_byte(), 0]);
                Ok(())
            }
            Packet::PingResp => {
                out.extend_from_slice(&[PacketType::PingResp.first_byte(), 0]);
                Ok(())
            }
            Packet::Disconnect(p) => p.write(protocol, out),
            Packet::Auth(p) => p.write(protocol, out),
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Length of the encoded frame (encodes into a scratch buffer: not for the hot path).
    pub fn encoded_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        let mut scratch = Vec::new();
        self.encode(protocol, &mut scratch)?;
        Ok(scratch.len())
    }
}
