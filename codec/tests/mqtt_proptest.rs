//! Property tests: arbitrary valid packets of every type in both versions round-trip through
//! encode/decode consuming exactly the encoded length; strict prefixes are `NeedMore`; frames
//! back to back decode one after the other; arbitrary and mutated bytes never panic.
#![allow(clippy::unwrap_used)]

use ingestd_codec::mqtt::*;
use proptest::collection::vec;
use proptest::option::weighted;
use proptest::prelude::*;
use proptest::sample::select;

const BIG: usize = 1 << 24;

/// Test data lives for the whole test run; leaking keeps the packet types borrowed.
fn leak_str(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn leak_bytes(b: Vec<u8>) -> &'static [u8] {
    Box::leak(b.into_boxed_slice())
}

/// MQTT strings: any Unicode scalar except U+0000, short.
fn text() -> impl Strategy<Value = &'static str> {
    "[^\u{0}]{0,8}".prop_map(leak_str)
}

fn bin() -> impl Strategy<Value = &'static [u8]> {
    vec(any::<u8>(), 0..16).prop_map(leak_bytes)
}

/// Topic names: non-empty, no wildcards.
fn topic() -> impl Strategy<Value = &'static str> {
    "[a-z0-9/$é ]{1,12}".prop_map(leak_str)
}

/// Valid topic filters: levels of `[a-z]{1,3}` or `+`, optionally ending in `#`.
fn filter() -> impl Strategy<Value = &'static str> {
    (
        vec(prop_oneof!["[a-z]{0,3}", Just("+".to_string())], 1..4),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".into());
            }
            let mut f = levels.join("/");
            if f.is_empty() {
                f.push('x');
            }
            leak_str(f)
        })
}

fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    weighted(0.25, s)
}

fn flag() -> impl Strategy<Value = u8> {
    0..=1u8
}

fn props_any() -> impl Strategy<Value = Properties<'static>> {
    let a = (
        opt(flag()),
        opt(any::<u32>()),
        opt(text()),
        opt(topic()),
        opt(bin()),
        vec(1..=MAX_VAR_INT as u32, 0..3),
        opt(any::<u32>()),
        opt(text()),
        opt(any::<u16>()),
        opt(text()),
        opt(bin()),
        opt(flag()),
    );
    let b = (
        opt(any::<u32>()),
        opt(flag()),
        opt(text()),
        opt(text()),
        opt(text()),
        opt(1..=u16::MAX),
        opt(any::<u16>()),
        opt(1..=u16::MAX),
        opt(flag()),
        opt(flag()),
        vec((text(), text()), 0..3),
        opt(1..=u32::MAX),
    );
    let c = (opt(flag()), opt(flag()), opt(flag()));
    (a, b, c).prop_map(|(a, b, c)| Properties {
        payload_format_indicator: a.0,
        message_expiry_interval: a.1,
        content_type: a.2,
        response_topic: a.3,
        correlation_data: a.4,
        subscription_identifiers: a.5,
        session_expiry_interval: a.6,
        assigned_client_identifier: a.7,
        server_keep_alive: a.8,
        authentication_method: a.9,
        authentication_data: a.10,
        request_problem_information: a.11,
        will_delay_interval: b.0,
        request_response_information: b.1,
        response_information: b.2,
        server_reference: b.3,
        reason_string: b.4,
        receive_maximum: b.5,
        topic_alias_maximum: b.6,
        topic_alias: b.7,
        maximum_qos: b.8,
        retain_available: b.9,
        user_properties: b.10,
        maximum_packet_size: b.11,
        wildcard_subscription_available: c.0,
        subscription_identifier_available: c.1,
        shared_subscription_available: c.2,
    })
}

/// Drops every property table 2-4 does not allow in `ctx`.
fn restrict(mut p: Properties<'static>, ctx: PropertyContext) -> Properties<'static> {
    use property_id as id;
    let ok = |pid: u8| property_allowed(pid, ctx);
    macro_rules! keep {
        ($($field:ident => $id:expr),* $(,)?) => {
            $(if !ok($id) { p.$field = None; })*
        };
    }
    keep!(
        payload_format_indicator => id::PAYLOAD_FORMAT_INDICATOR,
        message_expiry_interval => id::MESSAGE_EXPIRY_INTERVAL,
        content_type => id::CONTENT_TYPE,
        response_topic => id::RESPONSE_TOPIC,
        correlation_data => id::CORRELATION_DATA,
        session_expiry_interval => id::SESSION_EXPIRY_INTERVAL,
        assigned_client_identifier => id::ASSIGNED_CLIENT_IDENTIFIER,
        server_keep_alive => id::SERVER_KEEP_ALIVE,
        authentication_method => id::AUTHENTICATION_METHOD,
        authentication_data => id::AUTHENTICATION_DATA,
        request_problem_information => id::REQUEST_PROBLEM_INFORMATION,
        will_delay_interval => id::WILL_DELAY_INTERVAL,
        request_response_information => id::REQUEST_RESPONSE_INFORMATION,
        response_information => id::RESPONSE_INFORMATION,
        server_reference => id::SERVER_REFERENCE,
        reason_string => id::REASON_STRING,
        receive_maximum => id::RECEIVE_MAXIMUM,
        topic_alias_maximum => id::TOPIC_ALIAS_MAXIMUM,
        topic_alias => id::TOPIC_ALIAS,
        maximum_qos => id::MAXIMUM_QOS,
        retain_available => id::RETAIN_AVAILABLE,
        maximum_packet_size => id::MAXIMUM_PACKET_SIZE,
        wildcard_subscription_available => id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        subscription_identifier_available => id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        shared_subscription_available => id::SHARED_SUBSCRIPTION_AVAILABLE,
    );
    if !ok(id::SUBSCRIPTION_IDENTIFIER) {
        p.subscription_identifiers.clear();
    }
    if ctx != PropertyContext::Publish {
        p.subscription_identifiers.truncate(1);
    }
    if p.authentication_method.is_none() {
        p.authentication_data = None;
    }
    p
}

fn props(ctx: PropertyContext, protocol: Protocol) -> BoxedStrategy<Properties<'static>> {
    match protocol {
        Protocol::V311 => Just(Properties::default()).boxed(),
        Protocol::V5 => props_any().prop_map(move |p| restrict(p, ctx)).boxed(),
    }
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn pkid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// Reason codes valid in `ty` for `protocol`.
fn reason(ty: PacketType, protocol: Protocol) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = ReasonCode::ALL
        .iter()
        .copied()
        .filter(|c| c.valid_for(ty))
        .filter(|c| match (protocol, ty) {
            (Protocol::V5, _) => true,
            (Protocol::V311, PacketType::ConnAck) => c.to_connect_return_code().is_some(),
            (Protocol::V311, PacketType::SubAck) => {
                matches!(
                    c,
                    ReasonCode::Success
                        | ReasonCode::GrantedQoS1
                        | ReasonCode::GrantedQoS2
                        | ReasonCode::UnspecifiedError
                )
            }
            (Protocol::V311, _) => *c == ReasonCode::Success,
        })
        .collect();
    select(codes)
}

fn connect(protocol: Protocol) -> impl Strategy<Value = Packet<'static>> {
    let will = (
        topic(),
        bin(),
        text(),
        qos(),
        any::<bool>(),
        props(PropertyContext::Will, protocol),
    )
        .prop_map(|(topic, payload, text_payload, qos, retain, properties)| {
            // A Will declared UTF-8 must carry UTF-8.
            let payload = if properties.payload_format_indicator == Some(1) {
                text_payload.as_bytes()
            } else {
                payload
            };
            Will {
                topic,
                payload,
                qos,
                retain,
                properties,
            }
        });
    (
        any::<bool>(),
        any::<u16>(),
        props(PropertyContext::Connect, protocol),
        text(),
        opt(will),
        opt(text()),
        opt(bin()),
    )
        .prop_map(
            move |(clean, keep_alive, properties, client_id, will, username, password)| {
                let v311 = protocol == Protocol::V311;
                Packet::Connect(Connect {
                    protocol,
                    clean_start: clean || (v311 && client_id.is_empty()),
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password: if v311 && username.is_none() {
                        None
                    } else {
                        password
                    },
                })
            },
        )
}

fn publish(protocol: Protocol) -> impl Strategy<Value = Packet<'static>> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic(),
        pkid(),
        props(PropertyContext::Publish, protocol),
        bin(),
        any::<bool>(),
    )
        .prop_map(
            move |(dup, qos, retain, topic, id, properties, payload, empty_topic)| {
                let at_most_once = qos == QoS::AtMostOnce;
                // v5: an empty topic is valid with a Topic Alias.
                let topic = if empty_topic && properties.topic_alias.is_some() {
                    ""
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    pkid: if at_most_once { 0 } else { id },
                    properties,
                    payload,
                })
            },
        )
}

fn ack(ty: PacketType, protocol: Protocol) -> impl Strategy<Value = Packet<'static>> {
    let ctx = match ty {
        PacketType::PubRec => PropertyContext::PubRec,
        PacketType::PubRel => PropertyContext::PubRel,
        PacketType::PubComp => PropertyContext::PubComp,
        _ => PropertyContext::PubAck,
    };
    (pkid(), reason(ty, protocol), props(ctx, protocol)).prop_map(
        move |(pkid, reason, properties)| {
            let a = Ack {
                pkid,
                reason,
                properties,
            };
            match ty {
                PacketType::PubRec => Packet::PubRec(a),
                PacketType::PubRel => Packet::PubRel(a),
                PacketType::PubComp => Packet::PubComp(a),
                _ => Packet::PubAck(a),
            }
        },
    )
}

fn options(protocol: Protocol) -> impl Strategy<Value = SubscriptionOptions> {
    let rh = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNewSubscription),
        Just(RetainHandling::DoNotSend)
    ];
    (qos(), any::<bool>(), any::<bool>(), rh).prop_map(move |(qos, no_local, rap, rh)| {
        match protocol {
            Protocol::V311 => SubscriptionOptions::qos(qos),
            Protocol::V5 => SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: rap,
                retain_handling: rh,
            },
        }
    })
}

fn subscribe(protocol: Protocol) -> impl Strategy<Value = Packet<'static>> {
    let shared = prop_oneof![Just(false), Just(protocol == Protocol::V5)];
    let one = (filter(), options(protocol), shared).prop_map(|(f, mut options, shared)| {
        if shared {
            options.no_local = false; // [MQTT-3.8.3-4]
            return SubscribeFilter {
                filter: leak_str(format!("$share/g/{f}")),
                options,
            };
        }
        SubscribeFilter { filter: f, options }
    });
    (
        pkid(),
        props(PropertyContext::Subscribe, protocol),
        vec(one, 1..4),
    )
        .prop_map(|(pkid, properties, filters)| {
            Packet::Subscribe(Subscribe {
                pkid,
                properties,
                filters,
            })
        })
}

fn any_packet(protocol: Protocol) -> BoxedStrategy<Packet<'static>> {
    let v5 = protocol == Protocol::V5;
    let mut s = vec![
        connect(protocol).boxed(),
        (
            any::<bool>(),
            reason(PacketType::ConnAck, protocol),
            props(PropertyContext::ConnAck, protocol),
        )
            .prop_map(|(session_present, reason, properties)| {
                Packet::ConnAck(ConnAck {
                    session_present,
                    reason,
                    properties,
                })
            })
            .boxed(),
        publish(protocol).boxed(),
        ack(PacketType::PubAck, protocol).boxed(),
        ack(PacketType::PubRec, protocol).boxed(),
        ack(PacketType::PubRel, protocol).boxed(),
        ack(PacketType::PubComp, protocol).boxed(),
        subscribe(protocol).boxed(),
        (
            pkid(),
            props(PropertyContext::SubAck, protocol),
            vec(reason(PacketType::SubAck, protocol), 1..4),
        )
            .prop_map(|(pkid, properties, return_codes)| {
                Packet::SubAck(SubAck {
                    pkid,
                    properties,
                    return_codes,
                })
            })
            .boxed(),
        (
            pkid(),
            props(PropertyContext::Unsubscribe, protocol),
            vec(filter(), 1..4),
        )
            .prop_map(|(pkid, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    pkid,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (
            pkid(),
            props(PropertyContext::UnsubAck, protocol),
            vec(reason(PacketType::UnsubAck, protocol), 1..4),
        )
            .prop_map(move |(pkid, properties, reasons)| {
                Packet::UnsubAck(UnsubAck {
                    pkid,
                    properties,
                    reasons: if v5 { reasons } else { vec![] },
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (
            reason(PacketType::Disconnect, protocol),
            props(PropertyContext::Disconnect, protocol),
        )
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
            .boxed(),
    ];
    if v5 {
        s.push(
            (
                reason(PacketType::Auth, protocol),
                props(PropertyContext::Auth, protocol),
            )
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(s).boxed()
}

fn protocol_and_packet() -> impl Strategy<Value = (Protocol, Packet<'static>)> {
    prop_oneof![
        any_packet(Protocol::V311).prop_map(|p| (Protocol::V311, p)),
        any_packet(Protocol::V5).prop_map(|p| (Protocol::V5, p)),
    ]
}

fn encode(packet: &Packet<'_>, protocol: Protocol) -> Vec<u8> {
    let mut out = Vec::new();
    packet.encode(protocol, &mut out).unwrap();
    out
}

/// Decodes everything in `buf`, panicking on nothing but returning how far it got.
fn drain(buf: &[u8], protocol: Protocol, max: usize) -> usize {
    let mut pos = 0;
    while let Some(rest) = buf.get(pos..) {
        match decode(rest, protocol, max) {
            Ok(Decoded::Packet { packet, len }) => {
                assert!(len > 0 && len <= rest.len());
                // Whatever decodes must re-encode and decode to the same packet.
                let again = encode(&packet, protocol);
                match decode(&again, protocol, usize::MAX).unwrap() {
                    Decoded::Packet {
                        packet: p2,
                        len: l2,
                    } => {
                        assert_eq!(p2, packet);
                        assert_eq!(l2, again.len());
                    }
                    other => panic!("{other:?}"),
                }
                pos += len;
            }
            Ok(Decoded::NeedMore { bytes }) => {
                assert!(bytes > 0);
                break;
            }
            Err(_) => break,
        }
    }
    pos
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip((protocol, packet) in protocol_and_packet()) {
        let out = encode(&packet, protocol);
        prop_assert_eq!(packet.encoded_len(protocol).unwrap(), out.len());
        match decode(&out, protocol, BIG).unwrap() {
            Decoded::Packet { packet: decoded, len } => {
                prop_assert_eq!(len, out.len());
                prop_assert_eq!(decoded, packet.clone());
            }
            other => prop_assert!(false, "{:?}", other),
        }
        // The limit is the whole frame: one byte less is too large.
        let too_small = decode(&out, protocol, out.len() - 1);
        prop_assert_eq!(too_small, Err(DecodeError::PacketTooLarge { size: out.len(), max: out.len() - 1 }));
    }

    #[test]
    fn strict_prefixes_need_more((protocol, packet) in protocol_and_packet()) {
        let out = encode(&packet, protocol);
        for i in 0..out.len() {
            match decode(&out[..i], protocol, BIG) {
                Ok(Decoded::NeedMore { bytes }) => prop_assert!(bytes >= 1 && i + bytes <= out.len()),
                other => prop_assert!(false, "prefix {} of {:02x?}: {:?}", i, out, other),
            }
        }
    }

    #[test]
    fn back_to_back((protocol, a) in protocol_and_packet(), b in any_packet(Protocol::V5)) {
        // The second packet is encoded for the same protocol when it can be.
        let mut buf = encode(&a, protocol);
        let first_len = buf.len();
        let mut second = Vec::new();
        let b = if b.encode(protocol, &mut second).is_ok() { b } else { Packet::PingReq };
        b.encode(protocol, &mut buf).unwrap();
        match decode(&buf, protocol, BIG).unwrap() {
            Decoded::Packet { packet, len } => {
                prop_assert_eq!(len, first_len);
                prop_assert_eq!(packet, a);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        match decode(&buf[first_len..], protocol, BIG).unwrap() {
            Decoded::Packet { packet, len } => {
                prop_assert_eq!(len, buf.len() - first_len);
                prop_assert_eq!(packet, b);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
        for protocol in [Protocol::V311, Protocol::V5] {
            for max in [16, 1 << 20] {
                drain(&bytes, protocol, max);
            }
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        (protocol, packet) in protocol_and_packet(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut out = encode(&packet, protocol);
        for (i, v) in flips {
            let i = i.index(out.len());
            out[i] = v;
        }
        for max in [16, BIG] {
            drain(&out, protocol, max);
        }
    }
}
