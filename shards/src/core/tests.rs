//! The core's rules under a fake clock: every test drives events in and reads actions and
//! output bytes out, as the driver (or a simulation) would.

use super::connect::ConnectInfo;
use super::*;
use ed25519_dalek::SigningKey;
use ingestd_codec::credential::sign_credential;
use ingestd_codec::envelope::{self, Kind, Reading};
use ingestd_codec::mqtt::{Ack, Decoded, Publish, QoS};
use std::cell::{Cell, RefCell};

const WALL_MS: u64 = 1_764_201_600_000;
const DELAY_US: u64 = 1_000;
const INTERVAL_US: u64 = 2_000;

#[derive(Default)]
struct Counts {
    accepted: Cell<u64>,
    rejected: RefCell<Vec<Reason>>,
    refused: Cell<u64>,
    open: Cell<i64>,
    unsolicited: Cell<u64>,
}

impl Metrics for Counts {
    fn connect_refused(&self) {
        self.refused.set(self.refused.get() + 1);
    }
    fn connection_opened(&self) {
        self.open.set(self.open.get() + 1);
    }
    fn connection_closed(&self) {
        self.open.set(self.open.get() - 1);
    }
    fn accepted(&self) {
        self.accepted.set(self.accepted.get() + 1);
    }
    fn rejected(&self, reason: Reason) {
        self.rejected.borrow_mut().push(reason);
    }
    fn unsolicited_ack(&self) {
        self.unsolicited.set(self.unsolicited.get() + 1);
    }
}

fn key(device: &str) -> SigningKey {
    let mut seed = [7u8; 32];
    for (i, b) in device.bytes().enumerate() {
        seed[i % 32] ^= b;
    }
    SigningKey::from_bytes(&seed)
}

fn config() -> CoreConfig {
    CoreConfig {
        shard: 0,
        shards: 1,
        node_id: "n1".into(),
        limits: Limits {
            topic_prefix: "devices".into(),
            envelope_bytes_max: 1024,
            clock_skew_ms_max: 300_000,
        },
        verify_signatures: true,
        verify_batch_signatures_max: 4,
        verify_batch_delay_us: DELAY_US,
        opaque_payloads: false,
        inflight_max: 3,
        packet_bytes_max: 16 * 1024,
        keep_alive_s_max: 300,
        connections_per_shard_max: 10,
        require_credential: true,
        credential_window_ms: 300_000,
        credential_nonces_max: 1024,
        output_bytes_max: 64 * 1024,
        throttle_addresses_max: 65_536,
        failures_before_delay: 100,
        failure_delay_ms: 10,
        failure_delay_ms_max: 100,
        commit: CommitPolicy {
            batch_bytes_max: 1 << 20,
            interval_us: INTERVAL_US,
        },
        pending_bytes_max: 1 << 20,
        record_overhead_bytes: 16,
        kafka_gate: false,
        unreachable_after_ms: 1_000,
        egress: false,
        fraud: None,
    }
}

/// A core, its fake clock and a registry.
struct Harness {
    core: Core<Counts>,
    now: Time,
    registry: HashMap<String, DeviceEntry>,
    /// Records appended so far.
    appended: usize,
    nonce: u8,
}

impl Harness {
    fn new(config: CoreConfig) -> Self {
        let mut registry = HashMap::new();
        for device in ["co2-1", "co2-2", "revoked-1"] {
            registry.insert(
                device.to_string(),
                DeviceEntry {
                    key: key(device).verifying_key(),
                    active: device != "revoked-1",
                    location: "lab".into(),
                    region: "eu".into(),
                    project: "p".into(),
                    sensor_type: "ndir".into(),
                },
            );
        }
        Self {
            core: Core::new(config, Counts::default(), 0, 0),
            now: Time {
                mono_us: 0,
                wall_ms: WALL_MS,
            },
            registry,
            appended: 0,
            nonce: 0,
        }
    }

    fn advance_us(&mut self, us: u64) {
        self.now.mono_us += us;
        self.now.wall_ms += us / 1000;
    }

    fn event(&mut self, event: Event<'_>) -> Vec<Action> {
        self.core.handle(event, self.now);
        let mut out = Vec::new();
        while let Some(action) = self.core.poll_action() {
            out.push(action);
        }
        self.appended += appends(&out).len();
        out
    }

    fn info(&mut self, device: &str, protocol: Protocol, clean_start: bool) -> ConnectInfo {
        self.nonce += 1;
        let password = sign_credential(
            device,
            "client",
            &key(device),
            self.now.wall_ms,
            [self.nonce; 16],
        );
        ConnectInfo {
            protocol,
            client_id: "client".into(),
            username: Some(device.into()),
            password: Some(password.into_bytes()),
            clean_start,
            keep_alive_s: 60,
            session_expiry_s: if clean_start { 0 } else { 3600 },
            auth_method: false,
            len: 0,
            packet_bytes_max: usize::MAX,
        }
    }

    fn connect_with(&mut self, conn: u64, info: &ConnectInfo, cert: Option<&str>) -> Vec<Action> {
        let registry = self.registry.clone();
        let lookup = move |id: &str| registry.get(id).cloned();
        self.event(Event::Connect {
            conn: ConnId(conn),
            info,
            peer: "10.0.0.1:5000".parse().unwrap(),
            cert_device: cert,
            handed_in: false,
            registry: &lookup,
        })
    }

    /// [`Self::connect_with`], then commits the log when the core holds the CONNACK for
    /// the credential's record: the CONNECT as a device sees it over a working log.
    fn connect_durable(
        &mut self,
        conn: u64,
        info: &ConnectInfo,
        cert: Option<&str>,
    ) -> Vec<Action> {
        let mut actions = self.connect_with(conn, info, cert);
        if actions.iter().any(|a| {
            matches!(
                a,
                Action::Append {
                    kind: RecordKind::Credential,
                    ..
                }
            )
        }) {
            actions.extend(self.commit_all());
        }
        actions
    }

    /// Connects with a verified client certificate: accepted at once (a password CONNECT
    /// waits for its credential's record, see the credential tests).
    fn connect(&mut self, conn: u64, device: &str, protocol: Protocol, clean: bool) -> Vec<Action> {
        let info = self.info(device, protocol, clean);
        self.connect_with(conn, &info, Some(device))
    }

    fn output(&mut self, conn: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.core.take_output(ConnId(conn), &mut out);
        out
    }

    /// Decodes every packet in a connection's output.
    fn packets(&mut self, conn: u64, protocol: Protocol) -> Vec<String> {
        let out = self.output(conn);
        let mut pos = 0;
        let mut names = Vec::new();
        while pos < out.len() {
            match mqtt::decode(&out[pos..], protocol, 1 << 20).unwrap() {
                Decoded::Packet { packet, len } => {
                    names.push(describe(&packet));
                    pos += len;
                }
                Decoded::NeedMore { .. } => panic!("partial packet in output"),
            }
        }
        names
    }

    fn payload(&self, device: &str, seq: u64) -> Vec<u8> {
        let topic = format!("devices/{device}/telemetry");
        let mut scratch = Vec::new();
        let env = envelope::sign(
            &key(device),
            &topic,
            device,
            seq,
            self.now.wall_ms,
            &[Reading::new(Kind::Co2Ppm, 415.0)],
            &mut scratch,
        )
        .unwrap();
        let mut out = Vec::new();
        env.encode_binary(&mut out);
        out
    }

    fn publish(
        &mut self,
        conn: u64,
        device: &str,
        seq: u64,
        qos: QoS,
        pkid: u16,
        dup: bool,
    ) -> Vec<Action> {
        let payload = self.payload(device, seq);
        let topic = format!("devices/{device}/telemetry");
        self.event(Event::Packet {
            conn: ConnId(conn),
            packet: Packet::Publish(Publish {
                dup,
                qos,
                retain: false,
                topic: &topic,
                pkid,
                properties: mqtt::Properties::default(),
                payload: &payload,
            }),
        })
    }

    /// Lets the verification batch run out its delay.
    fn flush_batch(&mut self) -> Vec<Action> {
        self.advance_us(DELAY_US);
        self.event(Event::Tick)
    }

    /// Commits everything appended, as the driver does when asked.
    fn commit_all(&mut self) -> Vec<Action> {
        self.advance_us(INTERVAL_US);
        let mut actions = self.event(Event::Tick);
        if actions.contains(&Action::Commit) {
            let end = self.core.next_offset;
            actions.extend(self.event(Event::Committed {
                end,
                pending_bytes: 0,
            }));
        }
        actions
    }
}

fn describe(packet: &Packet<'_>) -> String {
    match packet {
        Packet::ConnAck(c) => format!("CONNACK {:?} present={}", c.reason, c.session_present),
        Packet::PubAck(a) => format!("PUBACK {} {:?}", a.pkid, a.reason),
        Packet::PubRec(a) => format!("PUBREC {} {:?}", a.pkid, a.reason),
        Packet::PubComp(a) => format!("PUBCOMP {} {:?}", a.pkid, a.reason),
        Packet::PingResp => "PINGRESP".into(),
        Packet::Disconnect(d) => format!("DISCONNECT {:?}", d.reason),
        other => format!("{other:?}"),
    }
}

fn refusal(actions: &[Action]) -> Option<&'static str> {
    actions.iter().find_map(|a| match a {
        Action::Refuse { why, .. } => Some(*why),
        _ => None,
    })
}

fn appends(actions: &[Action]) -> Vec<(RecordKind, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Append { kind, offset, .. } => Some((*kind, *offset)),
            _ => None,
        })
        .collect()
}

#[test]
fn connect_checks_run_in_their_order() {
    let mut h = Harness::new(config());
    // Certificate and username disagree: refused before anything is looked up.
    let info = h.info("co2-1", Protocol::V5, true);
    assert_eq!(
        refusal(&h.connect_with(1, &info, Some("co2-2"))),
        Some("certificate_mismatch")
    );
    let mut anonymous = h.info("co2-1", Protocol::V5, true);
    anonymous.username = None;
    assert_eq!(
        refusal(&h.connect_with(2, &anonymous, None)),
        Some("no_username")
    );
    let mut auth = h.info("co2-1", Protocol::V5, true);
    auth.auth_method = true;
    assert_eq!(
        refusal(&h.connect_with(3, &auth, None)),
        Some("auth_method")
    );
    assert_eq!(
        refusal(&h.connect(4, "nobody", Protocol::V5, true)),
        Some("unknown_device")
    );
    assert_eq!(
        refusal(&h.connect(5, "revoked-1", Protocol::V5, true)),
        Some("revoked_device")
    );
    let mut bad = h.info("co2-1", Protocol::V5, true);
    bad.password = Some(b"v1.garbage".to_vec());
    assert_eq!(
        refusal(&h.connect_with(6, &bad, None)),
        Some("bad_credential")
    );
    // A credential seen once never opens a second session.
    let good = h.info("co2-1", Protocol::V5, true);
    assert!(refusal(&h.connect_with(7, &good, None)).is_none());
    assert_eq!(
        refusal(&h.connect_with(8, &good, None)),
        Some("replayed_credential")
    );
    // A verified certificate needs no password.
    let mut cert = h.info("co2-2", Protocol::V5, true);
    cert.password = None;
    assert!(refusal(&h.connect_with(9, &cert, Some("co2-2"))).is_none());
    assert_eq!(h.core.metrics().refused.get(), 7);
    assert_eq!(
        h.packets(6, Protocol::V5),
        ["CONNACK BadUserNameOrPassword present=false"]
    );
    // Stopping refuses everything after the certificate checks.
    h.event(Event::Stop);
    assert_eq!(
        refusal(&h.connect(10, "co2-1", Protocol::V5, true)),
        Some("shutting_down")
    );
}

#[test]
fn connections_max_is_checked_before_the_registry() {
    let mut h = Harness::new(CoreConfig {
        connections_per_shard_max: 1,
        ..config()
    });
    h.connect(1, "co2-1", Protocol::V5, true);
    assert_eq!(
        refusal(&h.connect(2, "nobody", Protocol::V5, true)),
        Some("connections_max")
    );
    // A refused connection does not count once closed, nor before.
    h.event(Event::Closed { conn: ConnId(2) });
    h.event(Event::Closed { conn: ConnId(1) });
    assert!(refusal(&h.connect(3, "co2-2", Protocol::V5, true)).is_none());
    assert_eq!(h.core.metrics().open.get(), 1);
}

#[test]
fn a_second_connection_takes_the_session_over() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    let actions = h.connect(2, "co2-1", Protocol::V5, true);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(1),
        reason: Some(ReasonCode::SessionTakenOver)
    }));
    h.output(1);
    h.event(Event::Finish { conn: ConnId(1) });
    assert_eq!(h.packets(1, Protocol::V5), ["DISCONNECT SessionTakenOver"]);
    // The old connection's end leaves the new one's session alone.
    h.event(Event::Closed { conn: ConnId(1) });
    assert_eq!(h.core.device("co2-1").unwrap().conn, Some(ConnId(2)));
}

#[test]
fn persistent_sessions_survive_and_clean_ones_do_not() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V311, false);
    assert_eq!(
        h.packets(1, Protocol::V311),
        ["CONNACK Success present=false"]
    );
    h.event(Event::Closed { conn: ConnId(1) });
    h.connect(2, "co2-1", Protocol::V311, false);
    assert_eq!(
        h.packets(2, Protocol::V311),
        ["CONNACK Success present=true"]
    );
    // Clean start: no session present, and none kept after it.
    h.event(Event::Closed { conn: ConnId(2) });
    h.connect(3, "co2-1", Protocol::V311, true);
    assert_eq!(
        h.packets(3, Protocol::V311),
        ["CONNACK Success present=false"]
    );
    h.event(Event::Closed { conn: ConnId(3) });
    h.connect(4, "co2-1", Protocol::V311, false);
    assert_eq!(
        h.packets(4, Protocol::V311),
        ["CONNACK Success present=false"]
    );
}

#[test]
fn keep_alive_is_granted_with_its_margin_and_enforced() {
    let mut h = Harness::new(config());
    let mut info = h.info("co2-1", Protocol::V5, true);
    info.keep_alive_s = 10;
    let actions = h.connect_with(1, &info, Some("co2-1"));
    assert!(actions.contains(&Action::Accept {
        conn: ConnId(1),
        read_timeout_ms: 15_000
    }));
    // 0 (no keep-alive) gets the maximum, announced as Server Keep Alive.
    let mut info = h.info("co2-2", Protocol::V5, true);
    info.keep_alive_s = 0;
    let actions = h.connect_with(2, &info, Some("co2-2"));
    assert!(actions.contains(&Action::Accept {
        conn: ConnId(2),
        read_timeout_ms: 450_000
    }));
    let actions = h.event(Event::ReadTimedOut { conn: ConnId(1) });
    assert_eq!(
        actions,
        [Action::Close {
            conn: ConnId(1),
            reason: Some(ReasonCode::KeepAliveTimeout)
        }]
    );
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Stop);
}

#[test]
fn qos1_is_acknowledged_only_after_the_commit_covering_it() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    assert!(appends(&h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 10, false)).is_empty());
    assert_eq!(h.core.poll_timeout(), Some(DELAY_US));
    // The batch delay passes: the reading is appended, not yet acknowledged.
    let actions = h.flush_batch();
    assert_eq!(appends(&actions), [(RecordKind::Reading, 0)]);
    assert!(h.output(1).is_empty());
    assert_eq!(h.core.metrics().accepted.get(), 1);
    // The commit is asked for at the interval, counted from the message's arrival.
    assert_eq!(h.core.poll_timeout(), Some(INTERVAL_US));
    h.advance_us(INTERVAL_US - DELAY_US);
    assert!(h.event(Event::Tick).contains(&Action::Commit));
    assert!(h.output(1).is_empty());
    let actions = h.event(Event::Committed {
        end: 1,
        pending_bytes: 0,
    });
    assert_eq!(actions, [Action::Flush(ConnId(1))]);
    assert_eq!(h.packets(1, Protocol::V5), ["PUBACK 10 Success"]);
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn a_refused_message_is_a_dead_letter_acknowledged_with_its_reason() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    let mut payload = h.payload("co2-1", 1);
    let last = payload.len() - 1;
    payload[last] ^= 1;
    h.event(Event::Packet {
        conn: ConnId(1),
        packet: Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "devices/co2-1/telemetry",
            pkid: 3,
            properties: mqtt::Properties::default(),
            payload: &payload,
        }),
    });
    let actions = h.flush_batch();
    assert_eq!(appends(&actions), [(RecordKind::DeadLetter, 0)]);
    let Some(Action::Append { record: range, .. }) =
        actions.iter().find(|a| matches!(a, Action::Append { .. }))
    else {
        unreachable!()
    };
    let (meta, raw) = record::split(h.core.record(range.clone())).unwrap();
    let meta: record::DeadLetterMeta = serde_json::from_slice(meta).unwrap();
    assert_eq!(meta.reason, "bad_signature");
    assert_eq!(meta.seq, Some(1));
    assert_eq!(raw, payload);
    assert_eq!(*h.core.metrics().rejected.borrow(), [Reason::BadSignature]);
    h.commit_all();
    assert_eq!(h.packets(1, Protocol::V5), ["PUBACK 3 NotAuthorized"]);
}

#[test]
fn qos2_flow_with_redelivery() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    h.publish(1, "co2-1", 1, QoS::ExactlyOnce, 5, false);
    h.flush_batch();
    // Redelivered before durable: nothing is answered and nothing stored twice.
    let actions = h.publish(1, "co2-1", 1, QoS::ExactlyOnce, 5, true);
    assert!(actions.is_empty());
    assert!(h.output(1).is_empty());
    h.commit_all();
    assert_eq!(h.packets(1, Protocol::V5), ["PUBREC 5 Success"]);
    // PUBREC lost: the redelivery gets PUBREC again, still nothing stored.
    let actions = h.publish(1, "co2-1", 1, QoS::ExactlyOnce, 5, true);
    assert!(appends(&actions).is_empty());
    assert_eq!(h.packets(1, Protocol::V5), ["PUBREC 5 Success"]);
    h.event(Event::Packet {
        conn: ConnId(1),
        packet: Packet::PubRel(Ack {
            pkid: 5,
            reason: ReasonCode::Success,
            properties: mqtt::Properties::default(),
        }),
    });
    assert_eq!(h.packets(1, Protocol::V5), ["PUBCOMP 5 Success"]);
    assert_eq!(h.appended, 1);
}

#[test]
fn a_dup_redelivery_of_an_accepted_reading_is_acknowledged_without_a_record() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V311, true);
    h.output(1);
    let stored = h.payload("co2-1", 1);
    h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 1, false);
    h.flush_batch();
    h.commit_all();
    assert_eq!(h.packets(1, Protocol::V311), ["PUBACK 1 Success"]);
    // The same bytes (a redelivery is the same message [MQTT-4.3.2]).
    publish_dup(&mut h, 1, 2, &stored);
    let actions = h.flush_batch();
    assert!(appends(&actions).is_empty());
    assert_eq!(h.packets(1, Protocol::V311), ["PUBACK 2 Success"]);
    // Without DUP the same sequence is a replay: a dead letter.
    h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 3, false);
    let actions = h.flush_batch();
    assert_eq!(appends(&actions), [(RecordKind::DeadLetter, 1)]);
    assert_eq!(*h.core.metrics().rejected.borrow(), [Reason::Replayed]);
}

#[test]
fn a_full_batch_is_verified_at_once() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    h.connect(2, "co2-2", Protocol::V5, true);
    h.publish(1, "co2-1", 1, QoS::AtMostOnce, 0, false);
    h.publish(1, "co2-1", 2, QoS::AtMostOnce, 0, false);
    h.publish(2, "co2-2", 1, QoS::AtMostOnce, 0, false);
    let actions = h.publish(2, "co2-2", 2, QoS::AtMostOnce, 0, false);
    assert_eq!(appends(&actions).len(), 4);
    assert_eq!(h.core.metrics().accepted.get(), 4);
}

#[test]
fn back_pressure_pauses_and_resumes_reading() {
    let mut h = Harness::new(CoreConfig {
        pending_bytes_max: 100,
        ..config()
    });
    h.connect(1, "co2-1", Protocol::V5, true);
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Read);
    h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 1, false);
    h.flush_batch();
    // The record waits for the disk and is over the bound: stop reading.
    assert!(h.core.pending_bytes() > 100);
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Wait);
    let actions = h.commit_all();
    assert!(actions.contains(&Action::Resume(ConnId(1))));
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Read);
}

#[test]
fn inflight_bound_pauses_reading_until_acknowledged() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    for seq in 1..=3 {
        h.publish(1, "co2-1", seq, QoS::AtLeastOnce, seq as u16, false);
    }
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Wait);
    // A v5 device beyond its receive maximum is closed.
    h.publish(1, "co2-1", 4, QoS::AtLeastOnce, 4, false);
    assert_eq!(
        h.core.conn(ConnId(1)).unwrap().close_reason,
        Some(ReasonCode::ReceiveMaximumExceeded)
    );
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V311, true);
    for seq in 1..=3 {
        h.publish(1, "co2-1", seq, QoS::AtLeastOnce, seq as u16, false);
    }
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Wait);
    h.flush_batch();
    let actions = h.commit_all();
    assert!(actions.contains(&Action::Resume(ConnId(1))));
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Read);
}

#[test]
fn kafka_gate_holds_acks_then_bypasses_then_gates_again() {
    let mut h = Harness::new(CoreConfig {
        kafka_gate: true,
        ..config()
    });
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 1, false);
    h.flush_batch();
    h.commit_all();
    // Durable, but Kafka has not confirmed: no PUBACK.
    h.event(Event::SinkConfirmed { end: 0 });
    assert!(h.output(1).is_empty());
    // Kafka confirms: the PUBACK goes.
    h.event(Event::SinkConfirmed { end: 1 });
    assert_eq!(h.packets(1, Protocol::V5), ["PUBACK 1 Success"]);
    // Kafka stops confirming: after unreachable_after_ms the log alone decides.
    h.publish(1, "co2-1", 2, QoS::AtLeastOnce, 2, false);
    h.flush_batch();
    h.commit_all();
    h.advance_us(999_000);
    h.event(Event::SinkConfirmed { end: 1 });
    assert!(h.output(1).is_empty());
    h.advance_us(2_000);
    let actions = h.event(Event::SinkConfirmed { end: 1 });
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::KafkaGate { bypass: true, .. })));
    assert_eq!(h.packets(1, Protocol::V5), ["PUBACK 2 Success"]);
    // Kafka catches up: acknowledgements wait for it again.
    let actions = h.event(Event::SinkConfirmed { end: 2 });
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::KafkaGate { bypass: false, .. })));
    h.publish(1, "co2-1", 3, QoS::AtLeastOnce, 3, false);
    h.flush_batch();
    h.commit_all();
    assert!(h.output(1).is_empty());
    h.event(Event::SinkConfirmed { end: 3 });
    assert_eq!(h.packets(1, Protocol::V5), ["PUBACK 3 Success"]);
}

#[test]
fn a_revoked_device_is_disconnected() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    let lookup = |_: &str| None;
    let actions = h.event(Event::RegistryChanged { registry: &lookup });
    assert_eq!(
        actions,
        [Action::Close {
            conn: ConnId(1),
            reason: Some(ReasonCode::AdministrativeAction)
        }]
    );
}

#[test]
fn a_failed_log_acknowledges_nothing_more() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 1, false);
    h.flush_batch();
    let actions = h.event(Event::LogFailed);
    assert!(actions.contains(&Action::Abort(ConnId(1))));
    assert!(h.output(1).is_empty());
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn a_failed_commit_is_retried_after_a_pause_and_acknowledges_nothing_meanwhile() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 1, false);
    h.flush_batch();
    h.advance_us(INTERVAL_US);
    assert!(h.event(Event::Tick).contains(&Action::Commit));
    h.event(Event::CommitFailed);
    assert!(h.output(1).is_empty());
    // Not before 100 ms.
    assert_eq!(h.core.poll_timeout(), Some(h.now.mono_us + 100_000));
    h.advance_us(50_000);
    assert!(!h.event(Event::Tick).contains(&Action::Commit));
    h.advance_us(50_000);
    assert!(h.event(Event::Tick).contains(&Action::Commit));
    h.event(Event::Committed {
        end: 1,
        pending_bytes: 0,
    });
    assert_eq!(h.packets(1, Protocol::V5), ["PUBACK 1 Success"]);
}

#[test]
fn acknowledgements_keep_arrival_order_across_connections() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    h.connect(2, "co2-2", Protocol::V5, true);
    h.output(1);
    h.output(2);
    h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 1, false);
    h.publish(2, "co2-2", 1, QoS::AtLeastOnce, 1, false);
    h.publish(1, "co2-1", 2, QoS::AtLeastOnce, 2, false);
    h.flush_batch();
    h.advance_us(INTERVAL_US);
    h.event(Event::Tick);
    // Durable up to the first two records only: the third waits.
    h.event(Event::Committed {
        end: 2,
        pending_bytes: 0,
    });
    assert_eq!(h.packets(1, Protocol::V5), ["PUBACK 1 Success"]);
    assert_eq!(h.packets(2, Protocol::V5), ["PUBACK 1 Success"]);
    h.commit_all();
    assert_eq!(h.packets(1, Protocol::V5), ["PUBACK 2 Success"]);
}

#[test]
fn stopping_finishes_waiting_messages_and_closes_with_shutting_down() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 1, false);
    let actions = h.event(Event::Stop);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(1),
        reason: Some(ReasonCode::ServerShuttingDown)
    }));
    // No batch delay while stopping.
    assert_eq!(appends(&actions), [(RecordKind::Reading, 0)]);
    h.commit_all();
    h.event(Event::Finish { conn: ConnId(1) });
    assert_eq!(
        h.packets(1, Protocol::V5),
        ["PUBACK 1 Success", "DISCONNECT ServerShuttingDown"]
    );
}

#[test]
fn a_sink_refusal_becomes_a_dead_letter() {
    let mut h = Harness::new(config());
    let meta = record::ReadingMeta {
        device: "co2-1".into(),
        seq: 9,
        ts_ms: WALL_MS,
        readings: std::collections::BTreeMap::new(),
        topic: "devices/co2-1/telemetry".into(),
        received_ms: WALL_MS,
        node: "n1".into(),
        shard: 0,
        qos: 1,
        region: String::new(),
        project: String::new(),
        location: String::new(),
        sensor_type: String::new(),
        peer: String::new(),
        connected_ms: 0,
        fraud: None,
    };
    let actions = h.event(Event::SinkRefused {
        sink: "influxdb",
        reason: "sink_refused",
        detail: "bad field",
        offset: 41,
        meta: &meta,
        raw: b"raw",
    });
    let Some(Action::Append {
        kind: RecordKind::DeadLetter,
        record: range,
        ..
    }) = actions.first()
    else {
        panic!("no dead letter: {actions:?}");
    };
    let (json, raw) = record::split(h.core.record(range.clone())).unwrap();
    let dead: record::DeadLetterMeta = serde_json::from_slice(json).unwrap();
    assert_eq!(dead.reason, "sink_refused");
    assert_eq!(
        dead.detail,
        "influxdb refused the reading at log offset 41: bad field"
    );
    assert_eq!(dead.seq, Some(9));
    assert_eq!(raw, b"raw");
    // It is committed like any record.
    assert_eq!(h.core.poll_timeout(), Some(INTERVAL_US));
}

#[test]
fn packets_the_server_does_not_serve_get_their_answers() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    h.event(Event::Packet {
        conn: ConnId(1),
        packet: Packet::PingReq,
    });
    h.event(Event::Packet {
        conn: ConnId(1),
        packet: Packet::PubRel(Ack {
            pkid: 77,
            reason: ReasonCode::Success,
            properties: mqtt::Properties::default(),
        }),
    });
    assert_eq!(
        h.packets(1, Protocol::V5),
        ["PINGRESP", "PUBCOMP 77 PacketIdentifierNotFound"]
    );
    // A packet only a server sends is a protocol error.
    let actions = h.event(Event::Packet {
        conn: ConnId(1),
        packet: Packet::PingResp,
    });
    assert_eq!(
        actions,
        [Action::Close {
            conn: ConnId(1),
            reason: Some(ReasonCode::ProtocolError)
        }]
    );
}

#[test]
fn a_first_packet_that_does_not_decode_gets_the_connack_the_spec_defines() {
    let mut h = Harness::new(config());
    // A v5 CONNECT header whose protocol name is wrong.
    let buf = [
        0x10, 0x0a, 0x00, 0x04, b'M', b'Q', b'T', b'X', 0x05, 0x02, 0x00, 0x3c,
    ];
    let error = mqtt::DecodeError::InvalidProtocolName;
    let actions = h.event(Event::BadFirstPacket {
        conn: ConnId(1),
        error: Some((&error, &buf)),
    });
    assert_eq!(refusal(&actions), Some("malformed"));
    assert_eq!(
        h.packets(1, Protocol::V5),
        ["CONNACK UnsupportedProtocolVersion present=false"]
    );
    assert_eq!(*h.core.metrics().rejected.borrow(), [Reason::Malformed]);
}

/// A v5 CONNECT of `device` announcing a Maximum Packet Size of `max` bytes.
fn with_max(h: &mut Harness, device: &str, max: usize) -> ConnectInfo {
    let mut info = h.info(device, Protocol::V5, true);
    info.packet_bytes_max = max;
    info
}

#[test]
fn a_connack_larger_than_the_clients_maximum_is_not_sent() {
    let mut h = Harness::new(config());
    // The minimal CONNACK is 5 bytes: a client that accepts 2 (or 4) gets nothing.
    for (conn, max) in [(1, 2), (2, 4)] {
        let info = with_max(&mut h, "co2-1", max);
        let actions = h.connect_durable(conn, &info, None);
        assert_eq!(refusal(&actions), Some("connack_too_large"));
        assert!(h.output(conn).is_empty());
        assert_eq!(h.core.device("co2-1").unwrap().conn, None);
    }
    assert_eq!(h.core.metrics().open.get(), 0);
    // 5 bytes: the CONNACK without its defaulted capabilities.
    let info = with_max(&mut h, "co2-1", 5);
    let actions = h.connect_durable(3, &info, None);
    assert!(actions.iter().any(|a| matches!(a, Action::Accept { .. })));
    let out = h.output(3);
    assert_eq!(out.len(), 5);
    let Ok(Decoded::Packet {
        packet: Packet::ConnAck(connack),
        ..
    }) = mqtt::decode(&out, Protocol::V5, 1 << 20)
    else {
        panic!("not a CONNACK: {out:?}");
    };
    assert_eq!(connack.reason, ReasonCode::Success);
    assert_eq!(connack.properties.receive_maximum, None);
    // Without a limit the CONNACK announces the server's capabilities.
    h.connect(4, "co2-2", Protocol::V5, true);
    assert!(h.output(4).len() > 5);
}

#[test]
fn packets_larger_than_the_clients_maximum_are_not_sent_and_the_connection_closes() {
    let mut h = Harness::new(config());
    let info = with_max(&mut h, "co2-1", 5);
    h.connect_durable(1, &info, None);
    h.output(1);
    // A 2-byte PINGRESP and a 4-byte PUBACK fit.
    h.event(Event::Packet {
        conn: ConnId(1),
        packet: Packet::PingReq,
    });
    h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 9, false);
    h.flush_batch();
    h.commit_all();
    assert_eq!(h.packets(1, Protocol::V5), ["PINGRESP", "PUBACK 9 Success"]);
    // A SUBACK for two filters is 7 bytes: not sent, and the connection closes without a
    // DISCONNECT.
    let actions = h.event(Event::Packet {
        conn: ConnId(1),
        packet: Packet::Subscribe(mqtt::Subscribe {
            pkid: 4,
            properties: mqtt::Properties::default(),
            filters: vec![
                mqtt::SubscribeFilter {
                    filter: "a",
                    options: mqtt::SubscriptionOptions::qos(QoS::AtMostOnce),
                },
                mqtt::SubscribeFilter {
                    filter: "b",
                    options: mqtt::SubscriptionOptions::qos(QoS::AtMostOnce),
                },
            ],
        }),
    });
    assert_eq!(
        actions,
        [Action::Close {
            conn: ConnId(1),
            reason: None
        }]
    );
    h.event(Event::Finish { conn: ConnId(1) });
    assert!(h.output(1).is_empty());
}

#[test]
fn the_closing_disconnect_obeys_the_clients_maximum() {
    let mut h = Harness::new(config());
    // The DISCONNECT with a reason is 3 bytes: it fits every client that got a CONNACK
    // (5 bytes at least).
    let info = with_max(&mut h, "co2-1", 5);
    h.connect_durable(1, &info, None);
    h.output(1);
    h.event(Event::ReadTimedOut { conn: ConnId(1) });
    h.event(Event::Finish { conn: ConnId(1) });
    assert_eq!(h.packets(1, Protocol::V5), ["DISCONNECT KeepAliveTimeout"]);
}

/// A v5 DISCONNECT carrying `expiry_s` as its Session Expiry Interval, if given.
fn disconnect(h: &mut Harness, conn: u64, expiry_s: Option<u32>) -> Vec<Action> {
    let properties = mqtt::Properties {
        session_expiry_interval: expiry_s,
        ..mqtt::Properties::default()
    };
    h.event(Event::Packet {
        conn: ConnId(conn),
        packet: Packet::Disconnect(mqtt::Disconnect {
            reason: ReasonCode::Success,
            properties,
        }),
    })
}

/// A v5 CONNECT of co2-1 with Clean Start 0 and this Session Expiry Interval; returns
/// whether the CONNACK said Session Present.
fn reconnect(h: &mut Harness, conn: u64, expiry_s: u32) -> bool {
    let mut info = h.info("co2-1", Protocol::V5, false);
    info.session_expiry_s = expiry_s;
    h.connect_durable(conn, &info, None);
    let packets = h.packets(conn, Protocol::V5);
    assert_eq!(packets.len(), 1, "{packets:?}");
    packets[0].ends_with("present=true")
}

#[test]
fn a_disconnect_setting_an_expiry_after_a_connect_with_zero_is_a_protocol_error() {
    let mut h = Harness::new(config());
    assert!(!reconnect(&mut h, 1, 0));
    let actions = disconnect(&mut h, 1, Some(60));
    assert_eq!(
        actions,
        [Action::Close {
            conn: ConnId(1),
            reason: Some(ReasonCode::ProtocolError)
        }]
    );
    h.event(Event::Finish { conn: ConnId(1) });
    assert_eq!(h.packets(1, Protocol::V5), ["DISCONNECT ProtocolError"]);
    h.event(Event::Closed { conn: ConnId(1) });
    // The session ended with the connection, as the CONNECT said.
    assert!(!reconnect(&mut h, 2, 0));
    // Zero after zero is a normal DISCONNECT.
    assert!(disconnect(&mut h, 2, Some(0)).is_empty());
    assert_eq!(h.core.read_gate(ConnId(2)), ReadGate::Stop);
    h.event(Event::Finish { conn: ConnId(2) });
    assert!(h.output(2).is_empty());
}

#[test]
fn a_v5_session_expires_its_interval_after_the_connection_ended() {
    let mut h = Harness::new(config());
    assert!(!reconnect(&mut h, 1, 2));
    // A QoS 2 exchange left open: its packet id is session state.
    h.publish(1, "co2-1", 1, QoS::ExactlyOnce, 5, false);
    h.flush_batch();
    h.commit_all();
    assert_eq!(h.packets(1, Protocol::V5), ["PUBREC 5 Success"]);
    h.event(Event::Closed { conn: ConnId(1) });
    // Within the 2 s: the session is there, with its QoS 2 id.
    h.advance_us(1_000_000);
    assert!(reconnect(&mut h, 2, 2));
    h.event(Event::Closed { conn: ConnId(2) });
    // 3.5 s after the end: gone, and its state with it.
    h.advance_us(3_500_000);
    assert!(!reconnect(&mut h, 3, 2));
    h.event(Event::Packet {
        conn: ConnId(3),
        packet: Packet::PubRel(Ack {
            pkid: 5,
            reason: ReasonCode::Success,
            properties: mqtt::Properties::default(),
        }),
    });
    assert_eq!(
        h.packets(3, Protocol::V5),
        ["PUBCOMP 5 PacketIdentifierNotFound"]
    );
    // 0xFFFFFFFF: never.
    reconnect(&mut h, 4, u32::MAX);
    h.event(Event::Closed { conn: ConnId(3) });
    h.event(Event::Closed { conn: ConnId(4) });
    h.advance_us(1_000_000_000_000);
    assert!(reconnect(&mut h, 5, 0));
}

#[test]
fn a_disconnect_may_end_lower_or_raise_the_session_expiry() {
    let mut h = Harness::new(config());
    // Set to 0 by the DISCONNECT: the session ends with the connection.
    reconnect(&mut h, 1, 3600);
    assert!(disconnect(&mut h, 1, Some(0)).is_empty());
    h.event(Event::Closed { conn: ConnId(1) });
    h.advance_us(1_000);
    assert!(!reconnect(&mut h, 2, 2));
    // Raised from 2 s to 10 s: still there after 3.5 s.
    assert!(disconnect(&mut h, 2, Some(10)).is_empty());
    h.event(Event::Closed { conn: ConnId(2) });
    h.advance_us(3_500_000);
    assert!(reconnect(&mut h, 3, 2));
    // Without the property the CONNECT's interval holds.
    assert!(disconnect(&mut h, 3, None).is_empty());
    h.event(Event::Closed { conn: ConnId(3) });
    h.advance_us(2_000_000);
    assert!(!reconnect(&mut h, 4, 2));
}

/// A CONNECT of `device` whose credential signs `client_id`, the client id it sends.
fn info_with_client(
    h: &mut Harness,
    device: &str,
    protocol: Protocol,
    clean_start: bool,
    client_id: &str,
) -> ConnectInfo {
    let mut info = h.info(device, protocol, clean_start);
    info.client_id = client_id.to_string();
    info.password = Some(
        sign_credential(
            device,
            client_id,
            &key(device),
            h.now.wall_ms,
            [h.nonce; 16],
        )
        .into_bytes(),
    );
    info
}

/// The CONNACK in a connection's output.
fn connack_of(h: &mut Harness, conn: u64, protocol: Protocol) -> (ReasonCode, Option<String>) {
    let out = h.output(conn);
    let Ok(Decoded::Packet {
        packet: Packet::ConnAck(connack),
        ..
    }) = mqtt::decode(&out, protocol, 1 << 20)
    else {
        panic!("not a CONNACK: {out:?}");
    };
    let assigned = connack
        .properties
        .assigned_client_identifier
        .map(str::to_string);
    (connack.reason, assigned)
}

#[test]
fn an_empty_client_id_is_assigned_the_device_id() {
    let mut h = Harness::new(config());
    // v5: accepted; the CONNACK assigns the device id [MQTT-3.2.2-16]. The credential
    // signed the client id as sent, the empty one.
    let info = info_with_client(&mut h, "co2-1", Protocol::V5, false, "");
    let actions = h.connect_durable(1, &info, None);
    assert!(actions.iter().any(|a| matches!(a, Action::Accept { .. })));
    assert_eq!(
        connack_of(&mut h, 1, Protocol::V5),
        (ReasonCode::Success, Some("co2-1".to_string()))
    );
    // A client id of its own is not assigned anything.
    h.connect(2, "co2-2", Protocol::V5, true);
    assert_eq!(
        connack_of(&mut h, 2, Protocol::V5),
        (ReasonCode::Success, None)
    );
    // A credential signed for another client id does not open a session under the empty one.
    let mut info = h.info("co2-2", Protocol::V5, true);
    info.client_id = String::new();
    assert_eq!(
        refusal(&h.connect_durable(3, &info, None)),
        Some("bad_credential")
    );
    // 3.1.1: accepted with Clean Session 1 ...
    let info = info_with_client(&mut h, "co2-2", Protocol::V311, true, "");
    let actions = h.connect_durable(4, &info, None);
    assert!(actions.iter().any(|a| matches!(a, Action::Accept { .. })));
    assert_eq!(connack_of(&mut h, 4, Protocol::V311).0, ReasonCode::Success);
    // ... and refused with return code 2 with Clean Session 0 [MQTT-3.1.3-8].
    let info = info_with_client(&mut h, "co2-2", Protocol::V311, false, "");
    assert_eq!(
        refusal(&h.connect_durable(5, &info, None)),
        Some("empty_client_id")
    );
    assert_eq!(
        h.output(5),
        [0x20, 0x02, 0x00, 0x02],
        "CONNACK return code 2"
    );
}

#[test]
fn the_client_id_limit_is_400_bytes_whatever_the_device_id() {
    let mut h = Harness::new(config());
    let long = "d".repeat(64);
    let entry = h.registry["co2-1"].clone();
    h.registry.insert(
        long.clone(),
        DeviceEntry {
            key: key(&long).verifying_key(),
            ..entry
        },
    );
    let mut conn = 0;
    for device in ["co2-1", long.as_str()] {
        for protocol in [Protocol::V5, Protocol::V311] {
            for (len, accepted) in [(400, true), (401, false)] {
                // Two-byte characters count as two: 200 of them are 400 bytes.
                let client_id = "é".repeat(len / 2) + &"c".repeat(len % 2);
                assert_eq!(client_id.len(), len);
                conn += 1;
                let info = info_with_client(&mut h, device, protocol, true, &client_id);
                let actions = h.connect_durable(conn, &info, None);
                let (reason, _) = connack_of(&mut h, conn, protocol);
                if accepted {
                    assert_eq!(reason, ReasonCode::Success, "{device} {len}");
                    h.event(Event::Closed { conn: ConnId(conn) });
                } else {
                    assert_eq!(refusal(&actions), Some("client_id_too_long"));
                    assert_eq!(reason, ReasonCode::ClientIdentifierNotValid);
                }
            }
        }
    }
}

#[test]
fn unsolicited_acknowledgements_are_ignored_and_counted() {
    for protocol in [Protocol::V5, Protocol::V311] {
        let mut h = Harness::new(config());
        h.connect(1, "co2-1", protocol, true);
        h.output(1);
        for packet in [Packet::PubAck, Packet::PubRec, Packet::PubComp] {
            let actions = h.event(Event::Packet {
                conn: ConnId(1),
                packet: packet(Ack {
                    pkid: 12,
                    reason: ReasonCode::Success,
                    properties: mqtt::Properties::default(),
                }),
            });
            assert!(actions.is_empty(), "{protocol:?}: {actions:?}");
        }
        assert_eq!(h.core.metrics().unsolicited.get(), 3);
        assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Read);
        // The connection goes on.
        h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 2, false);
        h.flush_batch();
        h.commit_all();
        assert_eq!(h.packets(1, protocol), ["PUBACK 2 Success"]);
    }
}

/// The dead letters (reason, detail) among `actions`' appends.
fn dead_letters(h: &Harness, actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Append {
                kind: RecordKind::DeadLetter,
                record,
                ..
            } => {
                let (meta, _) = record::split(h.core.record(record.clone())).unwrap();
                let meta: record::DeadLetterMeta = serde_json::from_slice(meta).unwrap();
                Some((meta.reason, meta.detail))
            }
            _ => None,
        })
        .collect()
}

/// A DUP PUBLISH of co2-1 with this payload.
fn publish_dup(h: &mut Harness, conn: u64, pkid: u16, payload: &[u8]) {
    h.event(Event::Packet {
        conn: ConnId(conn),
        packet: Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "devices/co2-1/telemetry",
            pkid,
            properties: mqtt::Properties::default(),
            payload,
        }),
    });
}

#[test]
fn a_dup_redelivery_that_is_not_the_stored_reading_is_acknowledged_and_dead_lettered() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    let stored = h.payload("co2-1", 1);
    h.publish(1, "co2-1", 1, QoS::AtLeastOnce, 1, false);
    h.flush_batch();
    h.commit_all();
    assert_eq!(h.packets(1, Protocol::V5), ["PUBACK 1 Success"]);
    // The same bytes again with DUP: the stored reading, nothing recorded.
    publish_dup(&mut h, 1, 2, &stored);
    assert!(appends(&h.flush_batch()).is_empty());
    h.commit_all();
    assert_eq!(h.packets(1, Protocol::V5), ["PUBACK 2 Success"]);
    // A forged signature, and another reading under the same sequence.
    let mut forged = stored.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    h.advance_us(1_000_000);
    let altered = h.payload("co2-1", 1);
    assert_ne!(altered, stored);
    publish_dup(&mut h, 1, 3, &forged);
    publish_dup(&mut h, 1, 4, &altered);
    let actions = h.flush_batch();
    let detail = "DUP redelivery of sequence 1 differs from the stored reading".to_string();
    assert_eq!(
        dead_letters(&h, &actions),
        [
            ("redelivery_mismatch".to_string(), detail.clone()),
            ("redelivery_mismatch".to_string(), detail)
        ]
    );
    // Acknowledged once the dead letters are durable.
    assert!(h.output(1).is_empty());
    h.commit_all();
    assert_eq!(
        h.packets(1, Protocol::V5),
        [
            "PUBACK 3 ImplementationSpecificError",
            "PUBACK 4 ImplementationSpecificError"
        ]
    );
    assert_eq!(
        *h.core.metrics().rejected.borrow(),
        [Reason::RedeliveryMismatch, Reason::RedeliveryMismatch]
    );
}

#[test]
fn a_dup_redelivery_too_old_to_compare_is_dead_lettered() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V311, true);
    h.output(1);
    let first = h.payload("co2-1", 1);
    for seq in 1..=17 {
        h.publish(1, "co2-1", seq, QoS::AtMostOnce, 0, false);
    }
    h.flush_batch();
    h.commit_all();
    // 16 later readings pushed sequence 1 out of the ring.
    publish_dup(&mut h, 1, 7, &first);
    let actions = h.flush_batch();
    assert_eq!(
        dead_letters(&h, &actions),
        [(
            "redelivery_mismatch".to_string(),
            "DUP redelivery of sequence 1 is too old to compare with the stored reading"
                .to_string()
        )]
    );
    h.commit_all();
    assert_eq!(h.packets(1, Protocol::V311), ["PUBACK 7 Success"]);
    // After a restart nothing can be compared either.
    let mut h = Harness::new(config());
    let mut window = crate::replay::ReplayWindow::new();
    window.commit(5).unwrap();
    h.core.restore_replay("co2-1", window);
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    let payload = h.payload("co2-1", 5);
    publish_dup(&mut h, 1, 1, &payload);
    let actions = h.flush_batch();
    assert_eq!(dead_letters(&h, &actions).len(), 1);
}

#[test]
fn a_client_that_does_not_read_its_socket_stops_being_read() {
    let mut h = Harness::new(CoreConfig {
        output_bytes_max: 64,
        ..config()
    });
    h.connect(1, "co2-1", Protocol::V5, true);
    h.output(1);
    // PINGRESPs (2 bytes each) pile up while the writer takes nothing.
    for _ in 0..31 {
        h.event(Event::Packet {
            conn: ConnId(1),
            packet: Packet::PingReq,
        });
    }
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Read);
    h.event(Event::Packet {
        conn: ConnId(1),
        packet: Packet::PingReq,
    });
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Wait);
    // The writer takes the 64 bytes: the reader may read again.
    let mut out = Vec::new();
    assert!(h.core.take_output(ConnId(1), &mut out));
    assert_eq!(out.len(), 64);
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Read);
    // Taking a small output wakes nobody.
    h.event(Event::Packet {
        conn: ConnId(1),
        packet: Packet::PingReq,
    });
    assert!(!h.core.take_output(ConnId(1), &mut out));
}

// ---- credentials, restored state, a full disk ----

fn accepted(actions: &[Action], conn: u64) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Accept { conn: c, .. } if *c == ConnId(conn)))
}

#[test]
fn a_password_connect_is_answered_once_its_credential_record_is_durable() {
    let mut h = Harness::new(config());
    let info = h.info("co2-1", Protocol::V5, true);
    let actions = h.connect_with(1, &info, None);
    // The credential is logged; no CONNACK, no Accept, nothing read meanwhile.
    assert_eq!(appends(&actions), [(RecordKind::Credential, 0)]);
    let record = actions
        .iter()
        .find_map(|a| match a {
            Action::Append { record, .. } => Some(h.core.record(record.clone()).to_vec()),
            _ => None,
        })
        .unwrap();
    let (meta, raw) = record::split(&record).unwrap();
    let meta: record::CredentialMeta = serde_json::from_slice(meta).unwrap();
    assert_eq!((meta.device.as_str(), meta.ts_ms), ("co2-1", WALL_MS));
    assert_eq!(meta.nonce, "01".repeat(16));
    assert!(raw.is_empty());
    assert!(!accepted(&actions, 1));
    assert!(h.output(1).is_empty());
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Wait);
    // Its replay is refused while it waits.
    assert_eq!(
        refusal(&h.connect_with(2, &info, None)),
        Some("replayed_credential")
    );
    let actions = h.commit_all();
    assert!(accepted(&actions, 1));
    assert!(actions.contains(&Action::Resume(ConnId(1))));
    assert_eq!(
        h.packets(1, Protocol::V5),
        ["CONNACK Success present=false"]
    );
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Read);
}

#[test]
fn a_held_connect_is_refused_with_server_unavailable_when_the_log_fails() {
    let mut h = Harness::new(config());
    let info = h.info("co2-1", Protocol::V311, true);
    h.connect_with(1, &info, None);
    let actions = h.event(Event::LogFailed);
    assert_eq!(refusal(&actions), Some("log_failed"));
    assert!(!actions.contains(&Action::Abort(ConnId(1))));
    assert_eq!(
        h.packets(1, Protocol::V311),
        ["CONNACK ServerUnavailable present=false"]
    );
    // A commit that comes anyway accepts nothing.
    assert!(!accepted(
        &h.event(Event::Committed {
            end: 1,
            pending_bytes: 0
        }),
        1
    ));
}

#[test]
fn a_connect_held_when_the_shard_stops_is_refused() {
    let mut h = Harness::new(config());
    let info = h.info("co2-1", Protocol::V5, true);
    h.connect_with(1, &info, None);
    h.event(Event::Stop);
    let actions = h.commit_all();
    assert_eq!(refusal(&actions), Some("shutting_down"));
    assert!(!accepted(&actions, 1));
}

#[test]
fn only_a_device_that_proved_its_key_learns_it_is_revoked() {
    // The defect: a revoked device was answered Banned before its credential was looked
    // at, so anyone could learn which device ids exist and are revoked.
    for protocol in [Protocol::V5, Protocol::V311] {
        let mut h = Harness::new(config());
        let mut garbage = h.info("revoked-1", protocol, true);
        garbage.password = Some(b"v1.garbage".to_vec());
        assert_eq!(
            refusal(&h.connect_with(1, &garbage, None)),
            Some("bad_credential")
        );
        // Signed with another key: a wrong credential too.
        let mut forged = h.info("revoked-1", protocol, true);
        forged.password = Some(
            sign_credential("revoked-1", "client", &key("co2-1"), WALL_MS, [99; 16]).into_bytes(),
        );
        assert_eq!(
            refusal(&h.connect_with(2, &forged, None)),
            Some("bad_credential")
        );
        let unknown = h.info("nobody", protocol, true);
        assert_eq!(
            refusal(&h.connect_with(3, &unknown, None)),
            Some("unknown_device")
        );
        // The same answer for all three.
        let expected = "CONNACK BadUserNameOrPassword present=false";
        for conn in 1..=3 {
            assert_eq!(h.packets(conn, protocol), [expected]);
        }
        // With a valid credential (or a verified certificate), the device hears why.
        let valid = h.info("revoked-1", protocol, true);
        assert_eq!(
            refusal(&h.connect_with(4, &valid, None)),
            Some("revoked_device")
        );
        let banned = match protocol {
            Protocol::V5 => "CONNACK Banned present=false",
            Protocol::V311 => "CONNACK NotAuthorized present=false",
        };
        assert_eq!(h.packets(4, protocol), [banned]);
        assert_eq!(
            refusal(&h.connect(5, "revoked-1", protocol, true)),
            Some("revoked_device")
        );
        // Nothing was logged for any of them.
        assert_eq!(h.appended, 0);
    }
}

#[test]
fn windows_and_credentials_restored_after_a_restart_are_exact() {
    let mut h = Harness::new(config());
    let info = h.info("co2-1", Protocol::V5, true);
    h.connect_with(1, &info, None);
    h.commit_all();
    h.output(1);
    for (seq, pkid) in [(100, 1), (102, 2)] {
        h.publish(1, "co2-1", seq, QoS::AtLeastOnce, pkid, false);
    }
    h.flush_batch();
    h.commit_all();
    let snapshot = h.core.snapshot(h.now.wall_ms);
    assert_eq!(snapshot.offset, 3);
    assert_eq!(snapshot.windows, [("co2-1".to_string(), 102, 0b101u128)]);
    assert_eq!(snapshot.nonces, [("co2-1".to_string(), [1u8; 16], WALL_MS)]);

    // The restart: a new core with what the checkpoint (or the log) gives.
    let mut h2 = Harness::new(config());
    h2.now = h.now;
    h2.nonce = h.nonce;
    h2.core = Core::new(config(), Counts::default(), 3, 3);
    let (device, highest, seen) = snapshot.windows[0].clone();
    h2.core
        .restore_replay(&device, crate::replay::ReplayWindow::restore(highest, seen));
    for (device, nonce, ts_ms) in &snapshot.nonces {
        h2.core
            .restore_credential(device, *nonce, *ts_ms, h2.now.wall_ms);
    }
    // The snapshot of a restored core is the one it was restored from.
    let again = h2.core.snapshot(h2.now.wall_ms);
    assert_eq!(
        (again.windows, again.nonces),
        (snapshot.windows, snapshot.nonces)
    );
    // The credential accepted before the restart is refused after it.
    assert_eq!(
        refusal(&h2.connect_with(1, &info, None)),
        Some("replayed_credential")
    );
    let fresh = h2.info("co2-1", Protocol::V5, true);
    h2.connect_with(2, &fresh, None);
    h2.commit_all();
    h2.output(2);
    // 101 was never used inside the window: accepted. 102 was: a replay.
    h2.publish(2, "co2-1", 101, QoS::AtLeastOnce, 1, false);
    h2.publish(2, "co2-1", 102, QoS::AtLeastOnce, 2, false);
    let actions = h2.flush_batch();
    assert_eq!(
        appends(&actions),
        [(RecordKind::Reading, 4), (RecordKind::DeadLetter, 5)]
    );
}

#[test]
fn a_full_nonce_memory_refuses_credentials_at_or_below_the_evicted_one() {
    let mut h = Harness::new(CoreConfig {
        credential_nonces_max: 1,
        ..config()
    });
    let first = h.info("co2-1", Protocol::V5, true);
    h.connect_with(1, &first, None);
    // Full: the first nonce is evicted and its timestamp becomes the floor.
    let second = h.info("co2-2", Protocol::V5, true);
    assert_eq!(refusal(&h.connect_with(2, &second, None)), None);
    // So a credential dated that millisecond is refused: it could be the evicted one.
    let third = h.info("co2-1", Protocol::V5, true);
    assert_eq!(
        refusal(&h.connect_with(4, &third, None)),
        Some("credential_below_floor")
    );
    assert_eq!(
        h.packets(4, Protocol::V5),
        ["CONNACK BadUserNameOrPassword present=false"]
    );
    // A credential made later passes.
    h.advance_us(1_000);
    let later = h.info("co2-1", Protocol::V5, true);
    h.connect_with(3, &later, None);
    assert!(accepted(&h.commit_all(), 3));
}

#[test]
fn a_full_disk_pauses_reading_until_it_has_room() {
    let mut h = Harness::new(config());
    h.connect(1, "co2-1", Protocol::V5, true);
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Read);
    h.event(Event::DiskFull { full: true });
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Wait);
    let actions = h.event(Event::DiskFull { full: false });
    assert_eq!(actions, [Action::Resume(ConnId(1))]);
    assert_eq!(h.core.read_gate(ConnId(1)), ReadGate::Read);
}
