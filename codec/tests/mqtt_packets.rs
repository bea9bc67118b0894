//! Byte-annotated frames for every packet type, both versions where they differ: each frame
//! is decoded (and must be consumed exactly) and the decoded value is encoded back to the
//! same bytes.
#![allow(clippy::unwrap_used)]

use ingestd_codec::mqtt::*;

const MAX: usize = 1 << 20;

/// Decodes exactly one packet that spans the whole buffer.
fn one(buf: &[u8], protocol: Protocol) -> Packet<'_> {
    match decode(buf, protocol, MAX).unwrap() {
        Decoded::Packet { packet, len } => {
            assert_eq!(len, buf.len(), "frame not consumed exactly");
            packet
        }
        other => panic!("expected a packet, got {other:?}"),
    }
}

fn enc(packet: &Packet<'_>, protocol: Protocol) -> Vec<u8> {
    let mut out = Vec::new();
    packet.encode(protocol, &mut out).unwrap();
    out
}

/// Decodes, compares with `expected`, and re-encodes to the same bytes.
fn check(buf: &[u8], protocol: Protocol, expected: &Packet<'_>) {
    let packet = one(buf, protocol);
    assert_eq!(&packet, expected);
    assert_eq!(enc(&packet, protocol), buf, "re-encoding differs");
}

#[test]
fn connect_v311_minimal() {
    let frame = [
        0x10, // CONNECT, flags 0
        0x10, // remaining length 16
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x04, // level 4 = 3.1.1
        0x02, // connect flags: clean session
        0x00, 0x3C, // keep alive 60 s
        0x00, 0x04, b'd', b'e', b'v', b'1', // client id "dev1"
    ];
    let expected = Packet::Connect(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: "dev1",
        will: None,
        username: None,
        password: None,
    });
    // The connection's protocol is irrelevant for CONNECT.
    check(&frame, Protocol::V311, &expected);
    assert_eq!(one(&frame, Protocol::V5), expected);
}

#[test]
fn connect_v311_will_user_password() {
    let frame = [
        0x10, // CONNECT
        0x1E, // remaining length 30
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x04, // level 4
        0xEE, // flags: user name, password, will retain, will QoS 1, will, clean
        0x00, 0x0A, // keep alive 10
        0x00, 0x01, b'c', // client id "c"
        0x00, 0x03, b'w', b'/', b't', // will topic "w/t"
        0x00, 0x02, b'o', b'k', // will payload "ok"
        0x00, 0x01, b'u', // user name "u"
        0x00, 0x03, 0x01, 0x02, 0x03, // password 01 02 03
    ];
    let expected = Packet::Connect(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 10,
        properties: Properties::default(),
        client_id: "c",
        will: Some(Will {
            topic: "w/t",
            payload: b"ok",
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some("u"),
        password: Some(&[1, 2, 3]),
    });
    check(&frame, Protocol::V311, &expected);
}

#[test]
fn connect_v5_with_properties_and_will() {
    let frame = [
        0x10, // CONNECT
        0x23, // remaining length 35
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x05, // level 5
        0x4C, // flags: password (allowed without user name in v5), will QoS 1, will
        0x00, 0x1E, // keep alive 30
        0x08, // property length 8
        0x11, 0x00, 0x00, 0x00, 0x78, // session expiry interval 120
        0x21, 0x00, 0x10, // receive maximum 16
        0x00, 0x00, // client id "" (server decides)
        0x02, // will property length 2
        0x01, 0x01, // payload format indicator 1 (UTF-8)
        0x00, 0x01, b'w', // will topic "w"
        0x00, 0x02, b'h', b'i', // will payload "hi"
        0x00, 0x02, 0xAA, 0xBB, // password AA BB
    ];
    let expected = Packet::Connect(Connect {
        protocol: Protocol::V5,
        clean_start: false,
        keep_alive: 30,
        properties: Properties {
            session_expiry_interval: Some(120),
            receive_maximum: Some(16),
            ..Properties::default()
        },
        client_id: "",
        will: Some(Will {
            topic: "w",
            payload: b"hi",
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties {
                payload_format_indicator: Some(1),
                ..Properties::default()
            },
        }),
        username: None,
        password: Some(&[0xAA, 0xBB]),
    });
    check(&frame, Protocol::V5, &expected);
}

#[test]
fn connack_both_versions() {
    let v311 = [
        0x20, // CONNACK
        0x02, // remaining length 2
        0x01, // session present
        0x00, // return code 0 accepted
    ];
    let expected = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    check(&v311, Protocol::V311, &expected);

    let v311_rejected = [0x20, 0x02, 0x00, 0x02]; // identifier rejected
    match one(&v311_rejected, Protocol::V311) {
        Packet::ConnAck(c) => assert_eq!(c.reason, ReasonCode::ClientIdentifierNotValid),
        other => panic!("{other:?}"),
    }

    let v5 = [
        0x20, // CONNACK
        0x09, // remaining length 9
        0x00, // no session
        0x00, // success
        0x06, // property length 6
        0x22, 0x00, 0x0A, // topic alias maximum 10
        0x13, 0x00, 0x3C, // server keep alive 60
    ];
    let expected = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: Properties {
            topic_alias_maximum: Some(10),
            server_keep_alive: Some(60),
            ..Properties::default()
        },
    });
    let packet = one(&v5, Protocol::V5);
    assert_eq!(packet, expected);
    // Properties are written in identifier order (0x13 before 0x22).
    let again = enc(&packet, Protocol::V5);
    assert_eq!(
        again,
        [0x20, 0x09, 0x00, 0x00, 0x06, 0x13, 0x00, 0x3C, 0x22, 0x00, 0x0A]
    );
}

#[test]
fn publish_qos0_v311() {
    let frame = [
        0x30, // PUBLISH, QoS 0, no dup, no retain
        0x0A, // remaining length 10
        0x00, 0x03, b'a', b'/', b'b', // topic "a/b"
        b'h', b'e', b'l', b'l', b'o', // payload (no packet id at QoS 0)
    ];
    let expected = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a/b",
        pkid: 0,
        properties: Properties::default(),
        payload: b"hello",
    });
    check(&frame, Protocol::V311, &expected);
    // Zero copy: topic and payload point into the frame.
    match one(&frame, Protocol::V311) {
        Packet::Publish(p) => {
            assert_eq!(p.payload.as_ptr(), frame[7..].as_ptr());
            assert_eq!(p.topic.as_ptr(), frame[4..].as_ptr());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn publish_qos1_retain_dup_v311() {
    let frame = [
        0x3B, // PUBLISH, dup, QoS 1, retain
        0x07, // remaining length 7
        0x00, 0x01, b't', // topic "t"
        0x00, 0x2A, // packet id 42
        0x01, 0x02, // payload
    ];
    let expected = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "t",
        pkid: 42,
        properties: Properties::default(),
        payload: &[1, 2],
    });
    check(&frame, Protocol::V311, &expected);
}

#[test]
fn publish_qos2_v5_properties_and_alias() {
    let frame = [
        0x34, // PUBLISH, QoS 2
        0x14, // remaining length 20
        0x00, 0x00, // empty topic: allowed because a Topic Alias follows
        0x00, 0x07, // packet id 7
        0x0E, // property length 14
        0x23, 0x00, 0x05, // topic alias 5
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property ("k", "v")
        0x0B, 0x03, // subscription identifier 3 (server → client)
        0x01, 0x00, // payload format indicator 0
        b'x', // payload
    ];
    let expected = Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "",
        pkid: 7,
        properties: Properties {
            topic_alias: Some(5),
            user_properties: vec![("k", "v")],
            subscription_identifiers: vec![3],
            payload_format_indicator: Some(0),
            ..Properties::default()
        },
        payload: b"x",
    });
    let packet = one(&frame, Protocol::V5);
    assert_eq!(packet, expected);
    // The encoder writes properties in identifier order, so compare by decoding again.
    let again = enc(&packet, Protocol::V5);
    assert_eq!(again.len(), frame.len());
    assert_eq!(one(&again, Protocol::V5), expected);
}

#[test]
fn puback_family_v311_and_fast_path() {
    for (first, ty) in [(0x40u8, 4u8), (0x50, 5), (0x62, 6), (0x70, 7)] {
        let frame = [
            first, // type << 4 | flags (PUBREL has 0b0010)
            0x02,  // remaining length 2
            0x12, 0x34, // packet id 0x1234
        ];
        let packet = one(&frame, Protocol::V311);
        assert_eq!(packet.packet_type() as u8, ty);
        assert_eq!(enc(&packet, Protocol::V311), frame);
    }
    let mut out = Vec::new();
    encode_puback(0x1234, Protocol::V311, &mut out).unwrap();
    encode_pubrec(0x1234, Protocol::V5, &mut out).unwrap();
    encode_pubrel(0x1234, Protocol::V5, &mut out).unwrap();
    encode_pubcomp(0x1234, Protocol::V5, &mut out).unwrap();
    assert_eq!(
        out,
        [
            0x40, 0x02, 0x12, 0x34, 0x50, 0x02, 0x12, 0x34, 0x62, 0x02, 0x12, 0x34, 0x70, 0x02,
            0x12, 0x34
        ]
    );
    assert_eq!(
        encode_puback(0, Protocol::V5, &mut out),
        Err(EncodeError::InvalidPacketId)
    );
}

#[test]
fn puback_v5_short_forms_and_properties() {
    // Remaining length 2: Success, no properties.
    assert_eq!(
        one(&[0x40, 0x02, 0x00, 0x01], Protocol::V5),
        Packet::PubAck(Ack::new(1))
    );
    let with_reason = [
        0x40, // PUBACK
        0x03, // remaining length 3
        0x00, 0x01, // packet id 1
        0x10, // no matching subscribers
    ];
    let expected = Packet::PubAck(Ack {
        pkid: 1,
        reason: ReasonCode::NoMatchingSubscribers,
        properties: Properties::default(),
    });
    check(&with_reason, Protocol::V5, &expected);
    let mut out = Vec::new();
    encode_puback_reason(1, ReasonCode::NoMatchingSubscribers, Protocol::V5, &mut out).unwrap();
    assert_eq!(out, with_reason);

    let with_props = [
        0x50, // PUBREC
        0x08, // remaining length 8
        0x00, 0x02, // packet id 2
        0x97, // quota exceeded
        0x04, // property length 4
        0x1F, 0x00, 0x01, b'q', // reason string "q"
    ];
    let expected = Packet::PubRec(Ack {
        pkid: 2,
        reason: ReasonCode::QuotaExceeded,
        properties: Properties {
            reason_string: Some("q"),
            ..Properties::default()
        },
    });
    check(&with_props, Protocol::V5, &expected);
}

#[test]
fn subscribe_both_versions() {
    let v311 = [
        0x82, // SUBSCRIBE, flags 0b0010
        0x0E, // remaining length 14
        0x00, 0x0A, // packet id 10
        0x00, 0x03, b'a', b'/', b'#', // filter "a/#"
        0x01, // QoS 1
        0x00, 0x03, b'+', b'/', b'b', // filter "+/b"
        0x02, // QoS 2
    ];
    let expected = Packet::Subscribe(Subscribe {
        pkid: 10,
        properties: Properties::default(),
        filters: vec![
            SubscribeFilter {
                filter: "a/#",
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            },
            SubscribeFilter {
                filter: "+/b",
                options: SubscriptionOptions::qos(QoS::ExactlyOnce),
            },
        ],
    });
    check(&v311, Protocol::V311, &expected);

    let v5 = [
        0x82, // SUBSCRIBE
        0x09, // remaining length 9
        0x00, 0x0B, // packet id 11
        0x02, // property length 2
        0x0B, 0x07, // subscription identifier 7
        0x00, 0x01, b'x', // filter "x"
        0x2D, // retain handling 2, retain as published, no local, QoS 1
    ];
    let expected = Packet::Subscribe(Subscribe {
        pkid: 11,
        properties: Properties {
            subscription_identifiers: vec![7],
            ..Properties::default()
        },
        filters: vec![SubscribeFilter {
            filter: "x",
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }],
    });
    check(&v5, Protocol::V5, &expected);
}

#[test]
fn suback_both_versions() {
    let v311 = [
        0x90, // SUBACK
        0x05, // remaining length 5
        0x00, 0x0A, // packet id 10
        0x01, // granted QoS 1
        0x02, // granted QoS 2
        0x80, // failure
    ];
    let expected = Packet::SubAck(SubAck {
        pkid: 10,
        properties: Properties::default(),
        return_codes: vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ],
    });
    check(&v311, Protocol::V311, &expected);

    let v5 = [
        0x90, // SUBACK
        0x05, // remaining length 5
        0x00, 0x0B, // packet id 11
        0x00, // property length 0
        0x00, // granted QoS 0
        0xA2, // wildcard subscriptions not supported
    ];
    let expected = Packet::SubAck(SubAck {
        pkid: 11,
        properties: Properties::default(),
        return_codes: vec![
            ReasonCode::Success,
            ReasonCode::WildcardSubscriptionsNotSupported,
        ],
    });
    check(&v5, Protocol::V5, &expected);
}

#[test]
fn unsubscribe_and_unsuback() {
    let v311 = [
        0xA2, // UNSUBSCRIBE, flags 0b0010
        0x07, // remaining length 7
        0x00, 0x05, // packet id 5
        0x00, 0x03, b'a', b'/', b'+', // filter "a/+"
    ];
    let expected = Packet::Unsubscribe(Unsubscribe {
        pkid: 5,
        properties: Properties::default(),
        filters: vec!["a/+"],
    });
    check(&v311, Protocol::V311, &expected);

    let v5 = [
        0xA2, // UNSUBSCRIBE
        0x06, // remaining length 6
        0x00, 0x05, // packet id 5
        0x00, // property length 0
        0x00, 0x01, b'#', // filter "#"
    ];
    let expected = Packet::Unsubscribe(Unsubscribe {
        pkid: 5,
        properties: Properties::default(),
        filters: vec!["#"],
    });
    check(&v5, Protocol::V5, &expected);

    let unsuback_v311 = [
        0xB0, // UNSUBACK
        0x02, // remaining length 2
        0x00, 0x05, // packet id 5
    ];
    let expected = Packet::UnsubAck(UnsubAck {
        pkid: 5,
        properties: Properties::default(),
        reasons: vec![],
    });
    check(&unsuback_v311, Protocol::V311, &expected);

    let unsuback_v5 = [
        0xB0, // UNSUBACK
        0x05, // remaining length 5
        0x00, 0x05, // packet id 5
        0x00, // property length 0
        0x00, // success
        0x11, // no subscription existed
    ];
    let expected = Packet::UnsubAck(UnsubAck {
        pkid: 5,
        properties: Properties::default(),
        reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
    });
    check(&unsuback_v5, Protocol::V5, &expected);
}

#[test]
fn ping() {
    check(&[0xC0, 0x00], Protocol::V311, &Packet::PingReq); // PINGREQ, remaining length 0
    check(&[0xD0, 0x00], Protocol::V5, &Packet::PingResp); // PINGRESP, remaining length 0
}

#[test]
fn disconnect_both_versions() {
    // 3.1.1 and v5 with remaining length 0: normal disconnection.
    check(
        &[0xE0, 0x00],
        Protocol::V311,
        &Packet::Disconnect(Disconnect::normal()),
    );
    check(
        &[0xE0, 0x00],
        Protocol::V5,
        &Packet::Disconnect(Disconnect::normal()),
    );
    let reason_only = [
        0xE0, // DISCONNECT
        0x01, // remaining length 1: reason code, no property length
        0x04, // disconnect with will message
    ];
    let expected = Packet::Disconnect(Disconnect {
        reason: ReasonCode::DisconnectWithWillMessage,
        properties: Properties::default(),
    });
    check(&reason_only, Protocol::V5, &expected);
    let with_props = [
        0xE0, // DISCONNECT
        0x07, // remaining length 7
        0x00, // normal disconnection
        0x05, // property length 5
        0x11, 0x00, 0x00, 0x00, 0x00, // session expiry interval 0
    ];
    let expected = Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    });
    check(&with_props, Protocol::V5, &expected);
}

#[test]
fn auth_v5() {
    let success = [
        0xF0, // AUTH
        0x00, // remaining length 0: Success, no properties
    ];
    let expected = Packet::Auth(Auth {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    check(&success, Protocol::V5, &expected);
    let cont = [
        0xF0, // AUTH
        0x0C, // remaining length 12
        0x18, // continue authentication
        0x0A, // property length 10
        0x15, 0x00, 0x03, b'S', b'C', b'R', // authentication method "SCR"
        0x16, 0x00, 0x01, 0x7F, // authentication data 7F
    ];
    let expected = Packet::Auth(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: Properties {
            authentication_method: Some("SCR"),
            authentication_data: Some(&[0x7F]),
            ..Properties::default()
        },
    });
    check(&cont, Protocol::V5, &expected);
    // AUTH cannot be expressed in 3.1.1.
    let mut out = Vec::new();
    assert!(expected.encode(Protocol::V311, &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn incremental_need_more() {
    let frame = [0x30, 0x05, 0x00, 0x01, b't', b'h', b'i'];
    assert_eq!(
        decode(&[], Protocol::V311, MAX),
        Ok(Decoded::NeedMore { bytes: 1 })
    );
    assert_eq!(
        decode(&frame[..1], Protocol::V311, MAX),
        Ok(Decoded::NeedMore { bytes: 1 })
    );
    assert_eq!(
        decode(&frame[..2], Protocol::V311, MAX),
        Ok(Decoded::NeedMore { bytes: 5 })
    );
    assert_eq!(
        decode(&frame[..6], Protocol::V311, MAX),
        Ok(Decoded::NeedMore { bytes: 1 })
    );
    // Partial multi-byte remaining length: still 1.
    assert_eq!(
        decode(&[0x30, 0x80], Protocol::V311, MAX),
        Ok(Decoded::NeedMore { bytes: 1 })
    );
}

#[test]
fn reason_code_conversions() {
    for &code in ReasonCode::ALL {
        assert_eq!(ReasonCode::try_from(u8::from(code)), Ok(code));
    }
    assert_eq!(ReasonCode::try_from(0x03), Err(0x03));
    for v in 0u8..=5 {
        let rc = ConnectReturnCode::try_from(v).unwrap();
        assert_eq!(u8::from(rc), v);
        assert_eq!(ReasonCode::from(rc).to_connect_return_code(), Some(rc));
    }
    assert_eq!(ConnectReturnCode::try_from(6), Err(6));
}

#[test]
fn encode_refuses_what_decode_would_reject() {
    let publish = |qos, pkid, topic| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            pkid,
            properties: Properties::default(),
            payload: b"",
        })
    };
    let mut out = vec![0xAA]; // pre-existing content must survive a failed encode
    let cases: Vec<(Packet<'_>, Protocol, EncodeError)> = vec![
        (
            publish(QoS::AtLeastOnce, 0, "t"),
            Protocol::V311,
            EncodeError::InvalidPacketId,
        ),
        (
            publish(QoS::AtMostOnce, 5, "t"),
            Protocol::V311,
            EncodeError::InvalidPacketId,
        ),
        (
            publish(QoS::AtMostOnce, 0, "a/+"),
            Protocol::V5,
            EncodeError::InvalidTopicName,
        ),
        (
            publish(QoS::AtMostOnce, 0, ""),
            Protocol::V5,
            EncodeError::InvalidTopicName,
        ),
        (
            publish(QoS::AtMostOnce, 0, "a\0b"),
            Protocol::V311,
            EncodeError::NullCharacter,
        ),
        (
            Packet::Publish(Publish {
                properties: Properties {
                    topic_alias: Some(1),
                    ..Properties::default()
                },
                ..match publish(QoS::AtMostOnce, 0, "t") {
                    Packet::Publish(p) => p,
                    _ => unreachable!(),
                }
            }),
            Protocol::V311,
            EncodeError::NotInV311("properties"),
        ),
        (
            Packet::Subscribe(Subscribe {
                pkid: 1,
                properties: Properties::default(),
                filters: vec![],
            }),
            Protocol::V5,
            EncodeError::Empty,
        ),
        (
            Packet::Subscribe(Subscribe {
                pkid: 1,
                properties: Properties::default(),
                filters: vec![SubscribeFilter {
                    filter: "a/#/b",
                    options: SubscriptionOptions::qos(QoS::AtMostOnce),
                }],
            }),
            Protocol::V5,
            EncodeError::InvalidTopicFilter,
        ),
        (
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::GrantedQoS1,
                properties: Properties::default(),
            }),
            Protocol::V5,
            EncodeError::InvalidReasonCode {
                code: 0x01,
                packet_type: PacketType::Disconnect,
            },
        ),
        (
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::Banned,
                properties: Properties::default(),
            }),
            Protocol::V311,
            EncodeError::InvalidReasonCode {
                code: 0x8A,
                packet_type: PacketType::ConnAck,
            },
        ),
        (
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::Success,
                properties: Properties {
                    topic_alias: Some(3),
                    ..Properties::default()
                },
            }),
            Protocol::V5,
            EncodeError::PropertyNotAllowed {
                id: 0x23,
                context: PropertyContext::ConnAck,
            },
        ),
        (
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::Success,
                properties: Properties {
                    receive_maximum: Some(0),
                    ..Properties::default()
                },
            }),
            Protocol::V5,
            EncodeError::InvalidPropertyValue { id: 0x21, value: 0 },
        ),
    ];
    for (packet, protocol, expected) in cases {
        assert_eq!(
            packet.encode(protocol, &mut out),
            Err(expected),
            "{packet:?}"
        );
        assert_eq!(out, [0xAA]);
    }
}

#[test]
fn large_publish_uses_multi_byte_remaining_length() {
    let payload = vec![7u8; 200];
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t",
        pkid: 0,
        properties: Properties::default(),
        payload: &payload,
    });
    let out = enc(&packet, Protocol::V311);
    // 203 = 0xCB → 0xCB 0x01 (203 = 75 + 1·128).
    assert_eq!(&out[..5], &[0x30, 0xCB, 0x01, 0x00, 0x01]);
    assert_eq!(out.len(), 3 + 203);
    assert_eq!(one(&out, Protocol::V311), packet);
}
