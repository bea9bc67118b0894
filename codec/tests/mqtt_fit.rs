//! The client's Maximum Packet Size [MQTT-3.1.2-24, -25]: the server never sends a larger
//! packet; it leaves out optional properties to fit, and sends nothing when even the
//! smallest form is too large. Literal frames, byte by byte.
#![allow(clippy::unwrap_used)]

use ingestd_codec::mqtt::{
    decode_from, encode_within, Ack, ConnAck, DecodeError, Decoded, Disconnect, FitError, Fitted,
    Origin, Packet, Properties, Protocol, ReasonCode,
};

/// A CONNACK as the server sends it: its capabilities and an assigned client id.
fn server_connack() -> Packet<'static> {
    Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: Properties {
            receive_maximum: Some(64),
            maximum_packet_size: Some(16_384),
            retain_available: Some(0),
            wildcard_subscription_available: Some(0),
            subscription_identifier_available: Some(0),
            shared_subscription_available: Some(0),
            assigned_client_identifier: Some("dev-1"),
            ..Properties::default()
        },
    })
}

#[rustfmt::skip]
const CONNACK_FULL: &[u8] = &[
    0x20, 0x1B, // CONNACK, remaining length 27
    0x00, 0x00, // no session present, success
    0x18,       // property length 24
    0x12, 0x00, 0x05, b'd', b'e', b'v', b'-', b'1', // Assigned Client Identifier "dev-1"
    0x21, 0x00, 0x40,             // Receive Maximum 64
    0x25, 0x00,                   // Retain Available 0
    0x27, 0x00, 0x00, 0x40, 0x00, // Maximum Packet Size 16384
    0x28, 0x00,                   // Wildcard Subscription Available 0
    0x29, 0x00,                   // Subscription Identifiers Available 0
    0x2A, 0x00,                   // Shared Subscription Available 0
];

#[rustfmt::skip]
const CONNACK_MINIMAL: &[u8] = &[
    0x20, 0x0B, // CONNACK, remaining length 11
    0x00, 0x00,
    0x08,       // property length 8
    0x12, 0x00, 0x05, b'd', b'e', b'v', b'-', b'1', // only what the client cannot do without
];

fn encode(packet: &Packet<'_>, max: usize) -> (Result<Fitted, FitError>, Vec<u8>) {
    let mut out = vec![0xAA]; // something already queued: must stay untouched
    let result = encode_within(packet, Protocol::V5, max, &mut out);
    assert_eq!(out.first(), Some(&0xAA));
    (result, out.split_off(1))
}

#[test]
fn connack_fits_whole_at_its_own_size() {
    let (result, out) = encode(&server_connack(), CONNACK_FULL.len());
    assert_eq!(result, Ok(Fitted::Whole));
    assert_eq!(out, CONNACK_FULL);
}

#[test]
fn connack_one_byte_too_large_goes_out_in_its_minimal_form() {
    let (result, out) = encode(&server_connack(), CONNACK_FULL.len() - 1);
    assert_eq!(result, Ok(Fitted::Minimal));
    assert_eq!(out, CONNACK_MINIMAL);
    assert!(matches!(
        decode_from(&out, Protocol::V5, 1 << 20, Origin::Server),
        Ok(Decoded::Packet {
            packet: Packet::ConnAck(_),
            ..
        })
    ));
}

#[test]
fn connack_to_a_client_that_announced_2_bytes_is_not_sent() {
    let (result, out) = encode(&server_connack(), 2);
    assert_eq!(
        result,
        Err(FitError::TooLarge {
            size_min: CONNACK_MINIMAL.len(),
            max: 2
        })
    );
    assert!(out.is_empty());
}

#[test]
fn diagnostics_go_first_and_capabilities_stay_when_that_is_enough() {
    let mut connack = server_connack();
    if let Packet::ConnAck(c) = &mut connack {
        c.properties.reason_string = Some("welcome");
        c.properties.user_properties = vec![("node", "a")];
    }
    let mut whole = Vec::new();
    connack.encode(Protocol::V5, &mut whole).unwrap();
    assert!(whole.len() > CONNACK_FULL.len());
    let (result, out) = encode(&connack, whole.len() - 1);
    assert_eq!(result, Ok(Fitted::WithoutDiagnostics));
    assert_eq!(out, CONNACK_FULL);
}

#[test]
fn disconnect_loses_its_reason_string_but_keeps_its_reason() {
    let disconnect = Packet::Disconnect(Disconnect {
        reason: ReasonCode::SessionTakenOver,
        properties: Properties {
            reason_string: Some("another connection took the session"),
            ..Properties::default()
        },
    });
    let (result, out) = encode(&disconnect, 3);
    assert_eq!(result, Ok(Fitted::WithoutDiagnostics));
    assert_eq!(out, [0xE0, 0x01, 0x8E]); // DISCONNECT, length 1, 0x8E Session taken over
}

#[test]
fn a_packet_with_nothing_optional_is_whole_or_refused() {
    let puback = Packet::PubAck(Ack::new(7));
    let (result, out) = encode(&puback, 4);
    assert_eq!(result, Ok(Fitted::Whole));
    assert_eq!(out, [0x40, 0x02, 0x00, 0x07]);
    let (result, out) = encode(&puback, 3);
    assert_eq!(
        result,
        Err(FitError::TooLarge {
            size_min: 4,
            max: 3
        })
    );
    assert!(out.is_empty());
}

/// What the connection logic reads from CONNECT: the announced size, or no limit.
#[test]
fn connect_exposes_the_clients_maximum_packet_size() {
    #[rustfmt::skip]
    let with_limit = [
        0x10, 0x12, // CONNECT, remaining length 18
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
        0x05, 0x27, 0x00, 0x00, 0x00, 0x02, // Maximum Packet Size 2
        0x00, 0x00, // client id ""
    ];
    let Ok(Decoded::Packet {
        packet: Packet::Connect(connect),
        ..
    }) = decode_from(&with_limit, Protocol::V5, 1 << 20, Origin::Client)
    else {
        panic!("CONNECT did not decode");
    };
    assert_eq!(connect.packet_bytes_max(), 2);

    #[rustfmt::skip]
    let without = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
        0x00,       // no properties
        0x00, 0x00, // client id ""
    ];
    let Ok(Decoded::Packet {
        packet: Packet::Connect(connect),
        ..
    }) = decode_from(&without, Protocol::V5, 1 << 20, Origin::Client)
    else {
        panic!("CONNECT did not decode");
    };
    assert_eq!(connect.packet_bytes_max(), usize::MAX);

    // 0 is a Protocol Error (§3.1.2.11.4).
    let mut zero = with_limit;
    zero[17] = 0x00;
    let error = decode_from(&zero, Protocol::V5, 1 << 20, Origin::Client).unwrap_err();
    assert_eq!(
        error,
        DecodeError::InvalidPropertyValue { id: 0x27, value: 0 }
    );
    assert_eq!(error.reason_code(), ReasonCode::ProtocolError);
}
