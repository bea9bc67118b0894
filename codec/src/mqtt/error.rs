//! Decode and encode errors.
//!
//! A [`DecodeError`] always means "close the connection" (after a CONNACK or DISCONNECT in
//! v5): a partial frame is not an error but [`super::Decoded::NeedMore`]. Each variant carries
//! the numbers that explain it, and [`DecodeError::reason_code`] /
//! [`DecodeError::connect_return_code`] say what the server should answer.

use super::header::PacketType;
use super::properties::PropertyContext;
use super::reason::{ConnectReturnCode, ReasonCode};

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The whole packet (fixed header included) exceeds the configured maximum; detected from
    /// the fixed header alone, before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    /// A variable byte integer ran past 4 bytes [MQTT-1.5.5].
    #[error("variable byte integer longer than 4 bytes")]
    RemainingLengthTooLong,
    /// A variable byte integer not in its shortest form [MQTT-1.5.5-1].
    #[error("variable byte integer not minimally encoded")]
    NonMinimalVarInt,
    /// Packet type 0 is reserved (§2.1.2).
    #[error("reserved packet type 0")]
    ReservedPacketType,
    /// A packet type that does not exist in this protocol version (15 = AUTH in 3.1.1).
    #[error("packet type {0} not valid in this protocol version")]
    InvalidPacketType(u8),
    /// Fixed-header flags other than those the spec fixes for the type [MQTT-2.2.2-2].
    #[error("invalid fixed-header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags { packet_type: u8, flags: u8 },
    /// QoS 3 in PUBLISH, a Will, or subscription options [MQTT-3.3.1-4].
    #[error("invalid QoS 3")]
    InvalidQoS,
    /// PUBLISH with DUP=1 and QoS 0 [MQTT-3.3.1-2].
    #[error("DUP set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    /// Packet identifier 0 where a non-zero one is required [MQTT-2.2.1-3].
    #[error("packet identifier 0 in {0:?}")]
    ZeroPacketId(PacketType),
    /// The remaining length ends before the fields the packet declares.
    #[error("remaining length too short for the declared fields of {0:?}")]
    RemainingLengthTooShort(PacketType),
    /// Bytes inside the remaining length that no field consumes.
    #[error("{extra} trailing bytes in {packet_type:?}")]
    TrailingBytes {
        packet_type: PacketType,
        extra: usize,
    },
    /// A fixed-length packet (PINGREQ, PINGRESP, 3.1.1 DISCONNECT/ACKs ...) with another length.
    #[error("{packet_type:?} must have remaining length {expected}, has {actual}")]
    InvalidRemainingLength {
        packet_type: PacketType,
        expected: usize,
        actual: usize,
    },
    /// A string that is not well-formed UTF-8 [MQTT-1.5.4-1].
    #[error("string is not well-formed UTF-8")]
    InvalidUtf8,
    /// A string containing U+0000 [MQTT-1.5.4-2].
    #[error("string contains U+0000")]
    NullCharacter,
    /// Empty topic name (v5: allowed only with a Topic Alias) [MQTT-4.7.3-1].
    #[error("empty topic name")]
    EmptyTopic,
    /// Topic name with `+` or `#` [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard")]
    WildcardInTopicName,
    /// Topic filter that is empty or misplaces `#`/`+` [MQTT-4.7.1-1, -2], [MQTT-4.7.3-1].
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    /// SUBSCRIBE/UNSUBSCRIBE without any filter [MQTT-3.8.3-3], [MQTT-3.10.3-2].
    #[error("{0:?} has no topic filter")]
    NoTopicFilters(PacketType),
    /// SUBSCRIBE options with reserved bits set [MQTT-3.8.3-5].
    #[error("subscription options {0:#010b} have reserved bits set")]
    InvalidSubscriptionOptions(u8),
    /// v5 Retain Handling 3 (§3.8.3.1).
    #[error("retain handling 3")]
    InvalidRetainHandling,
    /// v5 No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("No Local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// CONNECT protocol name other than "MQTT" [MQTT-3.1.2-1].
    #[error("protocol name is not \"MQTT\"")]
    InvalidProtocolName,
    /// CONNECT protocol level other than 4 or 5 (or the 3.1 "MQIsdp" name) [MQTT-3.1.2-2].
    #[error("unsupported protocol level {level}")]
    UnsupportedProtocolVersion { level: u8 },
    /// CONNECT flags bit 0 set [MQTT-3.1.2-3].
    #[error("CONNECT reserved flag set")]
    ReservedConnectFlag,
    /// Will QoS or Will Retain set without the Will flag [MQTT-3.1.2-11], [MQTT-3.1.2-13].
    #[error("will QoS/retain set without will flag")]
    WillFlagsWithoutWill,
    /// 3.1.1 password flag without user name flag [MQTT-3.1.2-22].
    #[error("password flag without user name flag")]
    PasswordWithoutUsername,
    /// 3.1.1: empty client id with CleanSession=0 [MQTT-3.1.3-8]; v5: the same with
    /// Clean Start=0 is left to the server, which may assign an id.
    #[error("client identifier rejected")]
    ClientIdRejected,
    /// Will Payload Format Indicator = 1 but the will payload is not UTF-8 [MQTT-3.1.3-11].
    #[error("will payload is not UTF-8 although its payload format indicator says so")]
    WillPayloadNotUtf8,
    /// A property identifier that v5 does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A property that table 2-4 does not allow in this packet: a Malformed Packet
    /// ("an Identifier which is not valid for its packet type", §2.2.2.2).
    #[error("property {id:#04x} not allowed in {context:?}")]
    PropertyNotAllowed { id: u8, context: PropertyContext },
    /// A property given twice that may appear only once (§2.2.2.2).
    #[error("duplicate property {0:#04x}")]
    DuplicateProperty(u8),
    /// A property value the spec calls a protocol error (Receive Maximum 0, ...).
    #[error("property {id:#04x} has invalid value {value}")]
    InvalidPropertyValue { id: u8, value: u32 },
    /// A property runs past the declared property length (a truncated property section;
    /// one whose length runs past the packet is [`DecodeError::RemainingLengthTooShort`]).
    #[error("property runs past the property length")]
    PropertyLengthMismatch,
    /// Authentication Data without Authentication Method (§3.1.2.11.10).
    #[error("authentication data without authentication method")]
    AuthDataWithoutMethod,
    /// Client→server PUBLISH carrying a Subscription Identifier [MQTT-3.3.4-6].
    #[error("subscription identifier in a PUBLISH sent by a client")]
    SubscriptionIdFromClient,
    /// A reason code outside the set allowed for this packet type.
    #[error("reason code {code:#04x} not valid in {packet_type:?}")]
    InvalidReasonCode { code: u8, packet_type: PacketType },
    /// A 3.1.1 CONNACK/SUBACK return code outside the defined set (§3.2.2.3, §3.9.3).
    #[error("invalid return code {0:#04x}")]
    InvalidReturnCode(u8),
    /// CONNACK acknowledge flags with reserved bits 7–1 set (§3.2.2.1).
    #[error("CONNACK acknowledge flags {0:#010b} have reserved bits set")]
    InvalidConnAckFlags(u8),
    /// A packet the peer must not send in this direction (e.g. CONNACK from a client).
    #[error("{0:?} not allowed in this direction")]
    UnexpectedPacket(PacketType),
}

impl DecodeError {
    /// The v5 reason code the server (or client) should put in its CONNACK or DISCONNECT
    /// before closing the connection.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion { .. } | InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            ClientIdRejected => ReasonCode::ClientIdentifierNotValid,
            WillPayloadNotUtf8 => ReasonCode::PayloadFormatInvalid,
            WildcardInTopicName => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter => ReasonCode::TopicFilterInvalid,
            ZeroPacketId(_)
            | EmptyTopic
            | NoTopicFilters(_)
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription
            | DuplicateProperty(_)
            | InvalidPropertyValue { .. }
            | AuthDataWithoutMethod
            | SubscriptionIdFromClient
            | InvalidReasonCode { .. }
            | UnexpectedPacket(_) => ReasonCode::ProtocolError,
            RemainingLengthTooLong
            | NonMinimalVarInt
            | ReservedPacketType
            | InvalidPacketType(_)
            | InvalidFlags { .. }
            | InvalidQoS
            | DupWithQoS0
            | RemainingLengthTooShort(_)
            | TrailingBytes { .. }
            | InvalidRemainingLength { .. }
            | InvalidUtf8
            | NullCharacter
            | InvalidSubscriptionOptions(_)
            | ReservedConnectFlag
            | WillFlagsWithoutWill
            | PasswordWithoutUsername
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | PropertyLengthMismatch
            | InvalidReturnCode(_)
            | InvalidConnAckFlags(_) => ReasonCode::MalformedPacket,
        }
    }

    /// For an error while decoding CONNECT on a 3.1.1 connection: the CONNACK return code to
    /// send before closing, where the spec defines one (§3.2.2.3). `None` means close without
    /// CONNACK [MQTT-3.1.4-1].
    pub fn connect_return_code(&self) -> Option<ConnectReturnCode> {
        match self {
            DecodeError::UnsupportedProtocolVersion { .. } => {
                Some(ConnectReturnCode::UnacceptableProtocolVersion)
            }
            DecodeError::ClientIdRejected => Some(ConnectReturnCode::IdentifierRejected),
            _ => None,
        }
    }
}

/// Why a packet could not be encoded: the value would not decode (a programmer error on the
/// sending side, reported instead of producing a frame the peer must reject).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet body of {0} bytes exceeds 268,435,455")]
    PacketTooLarge(usize),
    #[error("string or binary field of {0} bytes exceeds 65,535")]
    FieldTooLong(usize),
    #[error("string contains U+0000")]
    NullCharacter,
    #[error("packet identifier must be non-zero for QoS > 0 and absent (0) for QoS 0")]
    InvalidPacketId,
    #[error("invalid topic name")]
    InvalidTopicName,
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    #[error("no topic filters / reason codes")]
    Empty,
    #[error("reason code {code:#04x} not valid in {packet_type:?} for this protocol version")]
    InvalidReasonCode { code: u8, packet_type: PacketType },
    #[error("property {id:#04x} not allowed in {context:?}")]
    PropertyNotAllowed { id: u8, context: PropertyContext },
    #[error("property {id:#04x} has invalid value {value}")]
    InvalidPropertyValue { id: u8, value: u32 },
    #[error("{0} cannot be expressed in MQTT 3.1.1")]
    NotInV311(&'static str),
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}
