//! MQTT 5 §2.2.2.2: "A Control Packet which contains an Identifier which is not valid for its
//! packet type, or contains a value not of the right data type, is a Malformed Packet."
//! For every packet type a client sends, three literal frames: a property the type may not
//! carry, a property length running past the packet, and a property cut short by the
//! property length. Each must be refused with reason 0x81 Malformed Packet, never 0x82.
#![allow(clippy::unwrap_used)]

use ingestd_codec::mqtt::{
    decode_from, DecodeError as E, Origin, PacketType as T, PropertyContext as Ctx, Protocol,
    ReasonCode,
};

struct Case {
    what: &'static str,
    frame: &'static [u8],
    error: E,
}

fn not_allowed(id: u8, context: Ctx) -> E {
    E::PropertyNotAllowed { id, context }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let c = |what, frame, error| Case { what, frame, error };
    vec![
        // ---- DISCONNECT ----
        c("DISCONNECT with Topic Alias", &[
            0xE0, 0x05, // DISCONNECT, remaining length 5
            0x00,       // reason: normal disconnection
            0x03,       // property length 3
            0x23, 0x00, 0x01, // Topic Alias 1: not a DISCONNECT property
        ], not_allowed(0x23, Ctx::Disconnect)),
        c("DISCONNECT property length past the packet", &[
            0xE0, 0x02, 0x00,
            0x05, // property length 5, no byte follows
        ], E::RemainingLengthTooShort(T::Disconnect)),
        c("DISCONNECT property cut by the property length", &[
            0xE0, 0x04, 0x00,
            0x02,       // property length 2
            0x11, 0x00, // Session Expiry Interval needs 4 bytes, 1 left in the block
        ], E::PropertyLengthMismatch),
        // ---- PUBLISH ----
        c("PUBLISH with Receive Maximum", &[
            0x30, 0x07, // PUBLISH QoS 0, remaining length 7
            0x00, 0x01, b't', // topic "t"
            0x03,             // property length 3
            0x21, 0x00, 0x01, // Receive Maximum 1: a CONNECT/CONNACK property
        ], not_allowed(0x21, Ctx::Publish)),
        c("PUBLISH property length past the packet", &[
            0x30, 0x04, 0x00, 0x01, b't',
            0x05, // property length 5, no byte follows
        ], E::RemainingLengthTooShort(T::Publish)),
        c("PUBLISH property cut by the property length", &[
            0x30, 0x06, 0x00, 0x01, b't',
            0x02,       // property length 2
            0x02, 0x00, // Message Expiry Interval needs 4 bytes
        ], E::PropertyLengthMismatch),
        // ---- PUBACK ----
        c("PUBACK with Topic Alias", &[
            0x40, 0x07, // PUBACK, remaining length 7
            0x00, 0x01, // packet id 1
            0x00,       // reason: success
            0x03,       // property length 3
            0x23, 0x00, 0x01, // Topic Alias 1
        ], not_allowed(0x23, Ctx::PubAck)),
        c("PUBACK property length past the packet", &[
            0x40, 0x04, 0x00, 0x01, 0x00,
            0x05, // property length 5, no byte follows
        ], E::RemainingLengthTooShort(T::PubAck)),
        c("PUBACK property cut by the property length", &[
            0x40, 0x06, 0x00, 0x01, 0x00,
            0x02,       // property length 2
            0x1F, 0x00, // Reason String: its two-byte length is cut after one byte
        ], E::PropertyLengthMismatch),
        // ---- PUBREC ----
        c("PUBREC with Session Expiry Interval", &[
            0x50, 0x09, 0x00, 0x01, 0x00,
            0x05,                         // property length 5
            0x11, 0x00, 0x00, 0x00, 0x01, // Session Expiry Interval 1
        ], not_allowed(0x11, Ctx::PubRec)),
        c("PUBREC property length past the packet", &[
            0x50, 0x04, 0x00, 0x01, 0x00, 0x05,
        ], E::RemainingLengthTooShort(T::PubRec)),
        c("PUBREC property cut by the property length", &[
            0x50, 0x06, 0x00, 0x01, 0x00, 0x02, 0x26, 0x00, // User Property cut
        ], E::PropertyLengthMismatch),
        // ---- PUBREL ----
        c("PUBREL with Content Type", &[
            0x62, 0x08, 0x00, 0x01, 0x00,
            0x04,                   // property length 4
            0x03, 0x00, 0x01, b'a', // Content Type "a": a PUBLISH property
        ], not_allowed(0x03, Ctx::PubRel)),
        c("PUBREL property length past the packet", &[
            0x62, 0x04, 0x00, 0x01, 0x00, 0x05,
        ], E::RemainingLengthTooShort(T::PubRel)),
        c("PUBREL property cut by the property length", &[
            0x62, 0x06, 0x00, 0x01, 0x00, 0x02, 0x1F, 0x00, // Reason String cut
        ], E::PropertyLengthMismatch),
        // ---- PUBCOMP ----
        c("PUBCOMP with Maximum QoS", &[
            0x70, 0x06, 0x00, 0x01, 0x00,
            0x02,       // property length 2
            0x24, 0x01, // Maximum QoS 1: a CONNACK property
        ], not_allowed(0x24, Ctx::PubComp)),
        c("PUBCOMP property length past the packet", &[
            0x70, 0x04, 0x00, 0x01, 0x00, 0x05,
        ], E::RemainingLengthTooShort(T::PubComp)),
        c("PUBCOMP property cut by the property length", &[
            0x70, 0x06, 0x00, 0x01, 0x00, 0x02, 0x1F, 0x00,
        ], E::PropertyLengthMismatch),
        // ---- SUBSCRIBE ----
        c("SUBSCRIBE with Reason String", &[
            0x82, 0x0B, // SUBSCRIBE, remaining length 11
            0x00, 0x01, // packet id 1
            0x04,       // property length 4
            0x1F, 0x00, 0x01, b'x', // Reason String "x": not a SUBSCRIBE property
            0x00, 0x01, b'a', 0x00, // filter "a", options 0
        ], not_allowed(0x1F, Ctx::Subscribe)),
        c("SUBSCRIBE property length past the packet", &[
            0x82, 0x07, 0x00, 0x01,
            0x09,                   // property length 9, 4 bytes follow
            0x00, 0x01, b'a', 0x00,
        ], E::RemainingLengthTooShort(T::Subscribe)),
        c("SUBSCRIBE property cut by the property length", &[
            0x82, 0x09, 0x00, 0x01,
            0x02,       // property length 2
            0x26, 0x00, // User Property: its key's length is cut
            0x00, 0x01, b'a', 0x00,
        ], E::PropertyLengthMismatch),
        // ---- UNSUBSCRIBE ----
        c("UNSUBSCRIBE with Subscription Identifier", &[
            0xA2, 0x08, 0x00, 0x01,
            0x02,       // property length 2
            0x0B, 0x01, // Subscription Identifier 1: a SUBSCRIBE/PUBLISH property
            0x00, 0x01, b'a',
        ], not_allowed(0x0B, Ctx::Unsubscribe)),
        c("UNSUBSCRIBE property length past the packet", &[
            0xA2, 0x06, 0x00, 0x01,
            0x07, // property length 7, 3 bytes follow
            0x00, 0x01, b'a',
        ], E::RemainingLengthTooShort(T::Unsubscribe)),
        c("UNSUBSCRIBE property cut by the property length", &[
            0xA2, 0x08, 0x00, 0x01, 0x02, 0x26, 0x00, 0x00, 0x01, b'a',
        ], E::PropertyLengthMismatch),
        // ---- CONNECT ----
        c("CONNECT with Reason String", &[
            0x10, 0x11, // CONNECT, remaining length 17
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // "MQTT", level 5
            0x02, 0x00, 0x3C, // clean start, keep alive 60
            0x04,             // property length 4
            0x1F, 0x00, 0x01, b'x', // Reason String "x": not a CONNECT property
            0x00, 0x00,       // client id ""
        ], not_allowed(0x1F, Ctx::Connect)),
        c("CONNECT Will with Topic Alias", &[
            0x10, 0x16, // remaining length 22
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
            0x06, 0x00, 0x3C, // clean start + will, keep alive 60
            0x00,             // property length 0
            0x00, 0x00,       // client id ""
            0x03, 0x23, 0x00, 0x01, // will properties: Topic Alias 1
            0x00, 0x01, b't', // will topic "t"
            0x00, 0x00,       // will payload ""
        ], not_allowed(0x23, Ctx::Will)),
        c("CONNECT property length past the packet", &[
            0x10, 0x0B, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
            0x05, // property length 5, no byte follows
        ], E::RemainingLengthTooShort(T::Connect)),
        c("CONNECT property cut by the property length", &[
            0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
            0x02,       // property length 2
            0x11, 0x00, // Session Expiry Interval needs 4 bytes
            0x00, 0x00, // client id ""
        ], E::PropertyLengthMismatch),
    ]
}

#[test]
fn invalid_or_truncated_properties_are_malformed_packets() {
    let mut failures = Vec::new();
    for case in cases() {
        match decode_from(case.frame, Protocol::V5, 1 << 20, Origin::Client) {
            Err(error) if error == case.error => {
                if error.reason_code() != ReasonCode::MalformedPacket {
                    failures.push(format!(
                        "{}: reason {:?}, expected MalformedPacket (0x81)",
                        case.what,
                        error.reason_code()
                    ));
                }
            }
            other => failures.push(format!(
                "{}: got {other:?}, expected {:?}",
                case.what, case.error
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The value rules the spec calls a Protocol Error stay 0x82: a property given twice, and a
/// value outside its range (§3.1.2.11.2 ff.).
#[test]
fn duplicates_and_bad_values_stay_protocol_errors() {
    let twice = [
        0xE0, 0x0C, 0x00, // DISCONNECT, normal
        0x0A, // property length 10
        0x11, 0x00, 0x00, 0x00, 0x01, // Session Expiry Interval 1
        0x11, 0x00, 0x00, 0x00, 0x02, // ... and again
    ];
    let error = decode_from(&twice, Protocol::V5, 1 << 20, Origin::Client).unwrap_err();
    assert_eq!(error, E::DuplicateProperty(0x11));
    assert_eq!(error.reason_code(), ReasonCode::ProtocolError);
}
