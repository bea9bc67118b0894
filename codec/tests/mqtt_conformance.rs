//! Conformance table: one case per input rule the server enforces. Each case is a literal,
//! byte-annotated frame, the error it must produce, the v5 reason code the server answers
//! with, and (for CONNECT-phase errors) the 3.1.1 CONNACK return code.
#![allow(clippy::unwrap_used)]

use ingestd_codec::mqtt::{
    decode_from, ConnectReturnCode as Rc, DecodeError as E, Decoded, Origin, PacketType as T,
    PropertyContext as Ctx, Protocol, ReasonCode as R,
};

struct Case {
    rule: &'static str,
    protocol: Protocol,
    frame: &'static [u8],
    error: E,
    reason: R,
    connack_v311: Option<Rc>,
}

const V3: Protocol = Protocol::V311;
const V5: Protocol = Protocol::V5;

fn case(rule: &'static str, protocol: Protocol, frame: &'static [u8], error: E, reason: R) -> Case {
    Case {
        rule,
        protocol,
        frame,
        error,
        reason,
        connack_v311: None,
    }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // ---- fixed header ----
        case("remaining length longer than 4 bytes [MQTT-1.5.5]", V3,
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], // PUBLISH, 5 continuation-marked length bytes
            E::RemainingLengthTooLong, R::MalformedPacket),
        case("remaining length not minimal: 0x80 0x00 encodes 0 [MQTT-1.5.5-1]", V3,
            &[0xC0, 0x80, 0x00], // PINGREQ, length 0 in two bytes
            E::NonMinimalVarInt, R::MalformedPacket),
        case("maximum 268,435,455 is accepted as a length, then too large for the limit", V3,
            &[0x30, 0xFF, 0xFF, 0xFF, 0x7F], // PUBLISH, remaining length 268,435,455
            E::PacketTooLarge { size: 268_435_460, max: 1 << 20 }, R::PacketTooLarge),
        case("size limit checked from the fixed header, body not yet buffered", V5,
            &[0x30, 0x80, 0x80, 0x40], // PUBLISH, remaining length 1,048,576 and no body
            E::PacketTooLarge { size: 1_048_580, max: 1 << 20 }, R::PacketTooLarge),
        case("packet type 0 is reserved", V5,
            &[0x00, 0x00], E::ReservedPacketType, R::MalformedPacket),
        case("type 15 (AUTH) does not exist in 3.1.1", V3,
            &[0xF0, 0x00], E::InvalidPacketType(15), R::MalformedPacket),
        case("PUBREL flags must be 0b0010 [MQTT-3.6.1-1]", V3,
            &[0x60, 0x02, 0x00, 0x01], // PUBREL with flags 0
            E::InvalidFlags { packet_type: 6, flags: 0 }, R::MalformedPacket),
        case("SUBSCRIBE flags must be 0b0010 [MQTT-3.8.1-1]", V3,
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            E::InvalidFlags { packet_type: 8, flags: 0 }, R::MalformedPacket),
        case("UNSUBSCRIBE flags must be 0b0010 [MQTT-3.10.1-1]", V5,
            &[0xA3, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
            E::InvalidFlags { packet_type: 10, flags: 3 }, R::MalformedPacket),
        case("other types have flags 0 [MQTT-2.2.2-2]", V3,
            &[0xC1, 0x00], // PINGREQ with flag bit 0
            E::InvalidFlags { packet_type: 12, flags: 1 }, R::MalformedPacket),
        case("PUBACK flags 0", V5,
            &[0x48, 0x02, 0x00, 0x01], E::InvalidFlags { packet_type: 4, flags: 8 }, R::MalformedPacket),
        // ---- PUBLISH ----
        case("PUBLISH QoS 3 [MQTT-3.3.1-4]", V3,
            &[0x36, 0x03, 0x00, 0x01, b't'], E::InvalidQoS, R::MalformedPacket),
        case("PUBLISH DUP with QoS 0 [MQTT-3.3.1-2]", V3,
            &[0x38, 0x03, 0x00, 0x01, b't'], E::DupWithQoS0, R::MalformedPacket),
        case("PUBLISH QoS 1 packet id 0 [MQTT-2.2.1-3]", V3,
            &[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], // topic "t", packet id 0
            E::ZeroPacketId(T::Publish), R::ProtocolError),
        case("PUBLISH empty topic (3.1.1) [MQTT-4.7.3-1]", V3,
            &[0x30, 0x03, 0x00, 0x00, b'x'], E::EmptyTopic, R::ProtocolError),
        case("PUBLISH empty topic without Topic Alias (v5)", V5,
            &[0x30, 0x04, 0x00, 0x00, 0x00, b'x'], // topic "", property length 0, payload
            E::EmptyTopic, R::ProtocolError),
        case("PUBLISH topic with + [MQTT-3.3.2-2]", V3,
            &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+'], E::WildcardInTopicName, R::TopicNameInvalid),
        case("PUBLISH topic with #", V5,
            &[0x30, 0x04, 0x00, 0x01, b'#', 0x00], E::WildcardInTopicName, R::TopicNameInvalid),
        case("PUBLISH remaining length too short for the topic", V3,
            &[0x30, 0x03, 0x00, 0x05, b'a'], // declares a 5-byte topic, 1 byte follows
            E::RemainingLengthTooShort(T::Publish), R::MalformedPacket),
        case("PUBLISH QoS 1 too short for the packet id", V3,
            &[0x32, 0x04, 0x00, 0x01, b't', 0x00],
            E::RemainingLengthTooShort(T::Publish), R::MalformedPacket),
        // ---- strings ----
        case("string not UTF-8: encoded surrogate U+D800 [MQTT-1.5.4-1]", V3,
            &[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80], E::InvalidUtf8, R::MalformedPacket),
        case("string not UTF-8: overlong '/'", V3,
            &[0x30, 0x04, 0x00, 0x02, 0xC0, 0xAF], E::InvalidUtf8, R::MalformedPacket),
        case("string with U+0000 [MQTT-1.5.4-2]", V3,
            &[0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b'], E::NullCharacter, R::MalformedPacket),
        // ---- CONNECT ----
        Case { connack_v311: None, ..case("protocol name other than MQTT [MQTT-3.1.2-1]", V3,
            &[0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'X', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00],
            E::InvalidProtocolName, R::UnsupportedProtocolVersion) },
        Case { connack_v311: Some(Rc::UnacceptableProtocolVersion), ..case("MQTT 3.1 (MQIsdp, level 3)", V3,
            &[0x10, 0x0E, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C, 0x00, 0x00],
            E::UnsupportedProtocolVersion { level: 3 }, R::UnsupportedProtocolVersion) },
        Case { connack_v311: Some(Rc::UnacceptableProtocolVersion), ..case("protocol level 6 [MQTT-3.1.2-2]", V3,
            &[0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x00],
            E::UnsupportedProtocolVersion { level: 6 }, R::UnsupportedProtocolVersion) },
        case("CONNECT reserved flag [MQTT-3.1.2-3]", V3,
            &[0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
              0x03, // clean session + reserved bit 0
              0x00, 0x3C, 0x00, 0x00],
            E::ReservedConnectFlag, R::MalformedPacket),
        case("will QoS without will flag [MQTT-3.1.2-11]", V3,
            &[0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
              0x0A, // clean + will QoS 1, will flag 0
              0x00, 0x3C, 0x00, 0x00],
            E::WillFlagsWithoutWill, R::MalformedPacket),
        case("will retain without will flag [MQTT-3.1.2-13]", V5,
            &[0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
              0x22, // clean + will retain, will flag 0
              0x00, 0x3C, 0x00, 0x00, 0x00],
            E::WillFlagsWithoutWill, R::MalformedPacket),
        case("will QoS 3 [MQTT-3.1.2-14]", V3,
            &[0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
              0x1E, // clean + will + will QoS 3
              0x00, 0x3C, 0x00, 0x00, 0x00, 0x01, b't', 0x00, 0x00],
            E::InvalidQoS, R::MalformedPacket),
        case("3.1.1 password without user name [MQTT-3.1.2-22]", V3,
            &[0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
              0x42, // clean + password, no user name
              0x00, 0x3C, 0x00, 0x00, 0x00, 0x00],
            E::PasswordWithoutUsername, R::MalformedPacket),
        Case { connack_v311: Some(Rc::IdentifierRejected), ..case("3.1.1 empty client id with CleanSession 0 [MQTT-3.1.3-8]", V3,
            &[0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
              0x00, // no clean session
              0x00, 0x3C, 0x00, 0x00], // client id ""
            E::ClientIdRejected, R::ClientIdentifierNotValid) },
        case("CONNECT too short for keep alive", V3,
            &[0x10, 0x09, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00],
            E::RemainingLengthTooShort(T::Connect), R::MalformedPacket),
        case("will topic with wildcard", V3,
            &[0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x3C,
              0x00, 0x00, // client id ""
              0x00, 0x01, b'#', // will topic "#"
              0x00, 0x00], // will payload ""
            E::WildcardInTopicName, R::TopicNameInvalid),
        case("v5 Will payload format indicator 1 with non-UTF-8 payload [MQTT-3.1.3-11]", V5,
            &[0x10, 0x16, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x3C,
              0x00, // property length 0
              0x00, 0x00, // client id ""
              0x02, 0x01, 0x01, // will properties: payload format indicator 1
              0x00, 0x01, b't', // will topic "t"
              0x00, 0x01, 0xFF], // will payload FF (not UTF-8)
            E::WillPayloadNotUtf8, R::PayloadFormatInvalid),
        case("CONNECT trailing bytes", V3,
            &[0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00, 0xEE],
            E::TrailingBytes { packet_type: T::Connect, extra: 1 }, R::MalformedPacket),
        // ---- v5 properties ----
        case("property length beyond remaining length", V5,
            &[0x30, 0x05, 0x00, 0x01, b't', 0x09, 0x01], // property length 9, one byte left
            E::RemainingLengthTooShort(T::Publish), R::MalformedPacket),
        case("property running past the property length", V5,
            &[0x30, 0x07, 0x00, 0x01, b't', 0x02, 0x02, 0x00, 0x00], // 4-byte expiry in a 2-byte block
            E::PropertyLengthMismatch, R::MalformedPacket),
        case("unknown property identifier", V5,
            &[0x30, 0x05, 0x00, 0x01, b't', 0x01, 0x7F], E::UnknownProperty(0x7F), R::MalformedPacket),
        case("property not allowed in PUBLISH (Session Expiry)", V5,
            &[0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x11, 0x00, 0x00, 0x00, 0x01],
            E::PropertyNotAllowed { id: 0x11, context: Ctx::Publish }, R::MalformedPacket),
        case("property not allowed in CONNECT (Topic Alias)", V5,
            &[0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
              0x03, 0x23, 0x00, 0x01, 0x00, 0x00],
            E::PropertyNotAllowed { id: 0x23, context: Ctx::Connect }, R::MalformedPacket),
        case("property not allowed in Will (Session Expiry)", V5,
            &[0x10, 0x18, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x3C,
              0x00, 0x00, 0x00,
              0x05, 0x11, 0x00, 0x00, 0x00, 0x01, // will properties: session expiry
              0x00, 0x01, b't', 0x00, 0x00],
            E::PropertyNotAllowed { id: 0x11, context: Ctx::Will }, R::MalformedPacket),
        case("duplicate property (Message Expiry twice)", V5,
            &[0x30, 0x0E, 0x00, 0x01, b't', 0x0A,
              0x02, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x02],
            E::DuplicateProperty(0x02), R::ProtocolError),
        case("duplicate Subscription Identifier in SUBSCRIBE", V5,
            &[0x82, 0x0A, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00],
            E::DuplicateProperty(0x0B), R::ProtocolError),
        case("Receive Maximum 0", V5,
            &[0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
              0x03, 0x21, 0x00, 0x00, 0x00, 0x00],
            E::InvalidPropertyValue { id: 0x21, value: 0 }, R::ProtocolError),
        case("Maximum Packet Size 0", V5,
            &[0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
              0x05, 0x27, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            E::InvalidPropertyValue { id: 0x27, value: 0 }, R::ProtocolError),
        case("Topic Alias 0", V5,
            &[0x30, 0x08, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00, b'x'],
            E::InvalidPropertyValue { id: 0x23, value: 0 }, R::ProtocolError),
        case("Subscription Identifier 0", V5,
            &[0x82, 0x08, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x00],
            E::InvalidPropertyValue { id: 0x0B, value: 0 }, R::ProtocolError),
        case("Request Problem Information 2", V5,
            &[0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
              0x02, 0x17, 0x02, 0x00, 0x00],
            E::InvalidPropertyValue { id: 0x17, value: 2 }, R::ProtocolError),
        case("Request Response Information 2", V5,
            &[0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
              0x02, 0x19, 0x02, 0x00, 0x00],
            E::InvalidPropertyValue { id: 0x19, value: 2 }, R::ProtocolError),
        case("Payload Format Indicator 2", V5,
            &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x01, 0x02],
            E::InvalidPropertyValue { id: 0x01, value: 2 }, R::ProtocolError),
        case("Authentication Data without Authentication Method", V5,
            &[0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
              0x04, 0x16, 0x00, 0x01, 0xAB, 0x00, 0x00],
            E::AuthDataWithoutMethod, R::ProtocolError),
        case("Topic Alias allows an empty topic but not when 0", V5,
            &[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x00],
            E::InvalidPropertyValue { id: 0x23, value: 0 }, R::ProtocolError),
        // ---- SUBSCRIBE / UNSUBSCRIBE ----
        case("SUBSCRIBE without filters [MQTT-3.8.3-3]", V3,
            &[0x82, 0x02, 0x00, 0x01], E::NoTopicFilters(T::Subscribe), R::ProtocolError),
        case("SUBSCRIBE packet id 0", V3,
            &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], E::ZeroPacketId(T::Subscribe), R::ProtocolError),
        case("filter with # not last [MQTT-4.7.1-2]", V3,
            &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'#', b'/', b'a', 0x00],
            E::InvalidTopicFilter, R::TopicFilterInvalid),
        case("filter with # not alone in its level", V3,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x02, b'a', b'#', 0x00], E::InvalidTopicFilter, R::TopicFilterInvalid),
        case("filter with + not alone in its level [MQTT-4.7.1-3]", V5,
            &[0x82, 0x08, 0x00, 0x01, 0x00, 0x00, 0x02, b'a', b'+', 0x00], E::InvalidTopicFilter, R::TopicFilterInvalid),
        case("empty filter", V3,
            &[0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], E::InvalidTopicFilter, R::TopicFilterInvalid),
        case("3.1.1 options reserved bits [MQTT-3.8.3-4]", V3,
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04], E::InvalidSubscriptionOptions(0x04), R::MalformedPacket),
        case("v5 options reserved bits 6-7 [MQTT-3.8.3-5]", V5,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40], E::InvalidSubscriptionOptions(0x40), R::MalformedPacket),
        case("subscription QoS 3", V3,
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03], E::InvalidQoS, R::MalformedPacket),
        case("v5 Retain Handling 3", V5,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30], E::InvalidRetainHandling, R::ProtocolError),
        case("v5 shared subscription without a filter after the share name [MQTT-4.8.2-1]", V5,
            &[0x82, 0x0F, 0x00, 0x01, 0x00, 0x00, 0x09, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', 0x00],
            E::InvalidTopicFilter, R::TopicFilterInvalid),
        case("UNSUBSCRIBE without filters [MQTT-3.10.3-2]", V5,
            &[0xA2, 0x03, 0x00, 0x01, 0x00], E::NoTopicFilters(T::Unsubscribe), R::ProtocolError),
        case("UNSUBSCRIBE packet id 0", V3,
            &[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'], E::ZeroPacketId(T::Unsubscribe), R::ProtocolError),
        // ---- fixed-length packets, acks ----
        case("PINGREQ remaining length 1 [MQTT-3.12]", V3,
            &[0xC0, 0x01, 0x00],
            E::InvalidRemainingLength { packet_type: T::PingReq, expected: 0, actual: 1 }, R::MalformedPacket),
        case("PINGRESP remaining length 1", V5,
            &[0xD0, 0x01, 0x00],
            E::InvalidRemainingLength { packet_type: T::PingResp, expected: 0, actual: 1 }, R::MalformedPacket),
        case("3.1.1 DISCONNECT remaining length 1", V3,
            &[0xE0, 0x01, 0x00],
            E::InvalidRemainingLength { packet_type: T::Disconnect, expected: 0, actual: 1 }, R::MalformedPacket),
        case("3.1.1 PUBACK remaining length 3", V3,
            &[0x40, 0x03, 0x00, 0x01, 0x00],
            E::InvalidRemainingLength { packet_type: T::PubAck, expected: 2, actual: 3 }, R::MalformedPacket),
        case("PUBACK packet id 0", V5,
            &[0x40, 0x02, 0x00, 0x00], E::ZeroPacketId(T::PubAck), R::ProtocolError),
        case("PUBREL reason code not in its set", V5,
            &[0x62, 0x03, 0x00, 0x01, 0x10], // 0x10 is a PUBACK code
            E::InvalidReasonCode { code: 0x10, packet_type: T::PubRel }, R::ProtocolError),
        case("v5 DISCONNECT reason code not in its set", V5,
            &[0xE0, 0x01, 0x01], // 0x01 is "granted QoS 1"
            E::InvalidReasonCode { code: 0x01, packet_type: T::Disconnect }, R::ProtocolError),
        case("v5 DISCONNECT trailing bytes after properties", V5,
            &[0xE0, 0x03, 0x00, 0x00, 0xFF],
            E::TrailingBytes { packet_type: T::Disconnect, extra: 1 }, R::MalformedPacket),
        case("v5 AUTH reason code not in its set", V5,
            &[0xF0, 0x02, 0x87, 0x00], E::InvalidReasonCode { code: 0x87, packet_type: T::Auth }, R::ProtocolError),
        case("v5 AUTH property not allowed (Topic Alias)", V5,
            &[0xF0, 0x05, 0x18, 0x03, 0x23, 0x00, 0x01],
            E::PropertyNotAllowed { id: 0x23, context: Ctx::Auth }, R::MalformedPacket),
        case("SUBACK 3.1.1 return code outside 0,1,2,0x80", V3,
            &[0x90, 0x03, 0x00, 0x01, 0x03], E::InvalidReturnCode(0x03), R::MalformedPacket),
        case("CONNACK acknowledge flags reserved bits", V5,
            &[0x20, 0x03, 0x02, 0x00, 0x00], E::InvalidConnAckFlags(0x02), R::MalformedPacket),
        case("v5 CONNACK reason code not in its set", V5,
            &[0x20, 0x03, 0x00, 0x10, 0x00], E::InvalidReasonCode { code: 0x10, packet_type: T::ConnAck }, R::ProtocolError),
        case("v5 SUBACK reason code not in its set", V5,
            &[0x90, 0x04, 0x00, 0x01, 0x00, 0x04], E::InvalidReasonCode { code: 0x04, packet_type: T::SubAck }, R::ProtocolError),
        case("v5 UNSUBACK without reason codes", V5,
            &[0xB0, 0x03, 0x00, 0x01, 0x00], E::RemainingLengthTooShort(T::UnsubAck), R::MalformedPacket),
        case("v5 AUTH with reason code but no property length", V5,
            &[0xF0, 0x01, 0x18], E::RemainingLengthTooShort(T::Auth), R::MalformedPacket),
        case("v5 property identifier with continuation bit (multi-byte id) is unknown", V5,
            &[0xE0, 0x03, 0x00, 0x01, 0x80], E::UnknownProperty(0x80), R::MalformedPacket),
        case("v5 Response Topic with wildcard", V5,
            &[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x08, 0x00, 0x01, b'#'], E::WildcardInTopicName, R::TopicNameInvalid),
        case("v5 Maximum QoS 2 in CONNACK", V5,
            &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02], E::InvalidPropertyValue { id: 0x24, value: 2 }, R::ProtocolError),
        case("v5 Subscription Identifier not minimally encoded", V5,
            &[0x82, 0x09, 0x00, 0x01, 0x03, 0x0B, 0x81, 0x00, 0x00, 0x01, b'a', 0x00], E::NonMinimalVarInt, R::MalformedPacket),
        case("CONNACK 3.1.1 return code 6", V3,
            &[0x20, 0x02, 0x00, 0x06], E::InvalidReturnCode(0x06), R::MalformedPacket),
        case("UNSUBACK trailing bytes in 3.1.1", V3,
            &[0xB0, 0x03, 0x00, 0x01, 0x00],
            E::InvalidRemainingLength { packet_type: T::UnsubAck, expected: 2, actual: 3 }, R::MalformedPacket),
    ]
}

#[test]
fn conformance_table() {
    let mut failures = Vec::new();
    for c in cases() {
        let got = decode_from(c.frame, c.protocol, 1 << 20, Origin::Any);
        match &got {
            Err(e) if *e == c.error => {
                if e.reason_code() != c.reason {
                    failures.push(format!(
                        "{}: reason {:?}, expected {:?}",
                        c.rule,
                        e.reason_code(),
                        c.reason
                    ));
                }
                if e.connect_return_code() != c.connack_v311 {
                    failures.push(format!(
                        "{}: return code {:?}, expected {:?}",
                        c.rule,
                        e.connect_return_code(),
                        c.connack_v311
                    ));
                }
            }
            other => failures.push(format!("{}: got {other:?}, expected {:?}", c.rule, c.error)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn no_local_on_shared_subscription() {
    let frame = [
        0x82, // SUBSCRIBE
        0x10, // remaining length 16
        0x00, 0x01, // packet id 1
        0x00, // property length 0
        0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/',
        b'a', // "$share/g/a"
        0x04, // No Local
    ];
    let err = decode_from(&frame, V5, 1 << 20, Origin::Client).unwrap_err();
    assert_eq!(err, E::NoLocalOnSharedSubscription);
    assert_eq!(err.reason_code(), R::ProtocolError);
}

#[test]
fn direction_rules() {
    let publish_with_sub_id = [
        0x30, // PUBLISH QoS 0
        0x07, // remaining length 7
        0x00, 0x01, b't', // topic "t"
        0x02, // property length 2
        0x0B, 0x05, // subscription identifier 5
        b'x', // payload
    ];
    // [MQTT-3.3.4-6]: a client must not send it ...
    let err = decode_from(&publish_with_sub_id, V5, 1 << 20, Origin::Client).unwrap_err();
    assert_eq!(err, E::SubscriptionIdFromClient);
    assert_eq!(err.reason_code(), R::ProtocolError);
    // ... while a server sends it to the subscriber.
    assert!(matches!(
        decode_from(&publish_with_sub_id, V5, 1 << 20, Origin::Server),
        Ok(Decoded::Packet { .. })
    ));
    // A CONNACK from a client, a PINGREQ from a server.
    assert_eq!(
        decode_from(&[0x20, 0x02, 0x00, 0x00], V3, 1 << 20, Origin::Client),
        Err(E::UnexpectedPacket(T::ConnAck))
    );
    assert_eq!(
        decode_from(&[0xC0, 0x00], V3, 1 << 20, Origin::Server),
        Err(E::UnexpectedPacket(T::PingReq))
    );
    // 3.1.1 DISCONNECT flows only client → server; v5 both ways.
    assert_eq!(
        decode_from(&[0xE0, 0x00], V3, 1 << 20, Origin::Server),
        Err(E::UnexpectedPacket(T::Disconnect))
    );
    assert!(decode_from(&[0xE0, 0x00], V5, 1 << 20, Origin::Server).is_ok());
}

#[test]
fn size_limit_is_checked_before_the_body() {
    // Only the 2-byte fixed header is present; the limit still applies.
    assert_eq!(
        decode_from(&[0x30, 0x7F], V3, 100, Origin::Any),
        Err(E::PacketTooLarge {
            size: 129,
            max: 100
        })
    );
    // Exactly at the limit is fine (it needs more bytes).
    assert_eq!(
        decode_from(&[0x30, 0x62], V3, 100, Origin::Any),
        Ok(Decoded::NeedMore { bytes: 98 })
    );
}
