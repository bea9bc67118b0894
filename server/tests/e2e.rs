//! End to end: a real `ingestd serve` process, stock MQTT clients (mosquitto_pub, paho-mqtt)
//! and the project's own test client; what the server acknowledged is checked in its
//! durable log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ingestd::log::RecordKind;
use ingestd_codec::mqtt::{Packet, Protocol, QoS, ReasonCode};
use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn write_payload(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn stock_clients_publish_at_qos_0_1_2_over_plain_and_tls() {
    let fleet = Fleet::provision(4);
    let data = fleet.dir.path().join("data");
    let pki = fleet.dir.path().join("pki");
    make_pki(&pki, &["dev-000003"]);
    let tls_port = free_port();
    let config = fleet.dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_path = \"{0}/server.pem\"\nkey_path = \"{0}/server.key\"\nclient_ca_path = \"{0}/ca.pem\"\n",
            pki.display()
        ),
    )
    .unwrap();
    let server = Server::start(&fleet, &data, &["--config", &config.display().to_string()])
        .with_tls(tls_port);
    let port = server.mqtt.to_string();
    let tls = tls_port.to_string();
    let cafile = pki.join("ca.pem").display().to_string();
    let mut expected = HashSet::new();

    // Plain TCP, binary envelope, QoS 0, 1 and 2, MQTT 3.1.1 and 5.
    let device = fleet.device(0);
    for (seq, qos, version) in [
        (1u64, "0", "mqttv311"),
        (2, "1", "mqttv311"),
        (3, "2", "mqttv311"),
        (4, "1", "mqttv5"),
        (5, "2", "mqttv5"),
    ] {
        let file = write_payload(
            fleet.dir.path(),
            "p.bin",
            &fleet.payload(&device, seq, false),
        );
        let password = fleet.password(&device, &device);
        let (ok, out) = mosquitto_pub(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-i",
            &device,
            "-u",
            &device,
            "-P",
            &password,
            "-t",
            &topic(&device),
            "-q",
            qos,
            "-f",
            &file,
        ]);
        assert!(ok, "mosquitto_pub qos {qos} {version}: {out}");
        expected.insert((device.clone(), seq));
    }
    // TLS with the CONNECT credential, QoS 0, 1, 2.
    let device = fleet.device(1);
    for (seq, qos) in [(1u64, "0"), (2, "1"), (3, "2")] {
        let file = write_payload(
            fleet.dir.path(),
            "p.bin",
            &fleet.payload(&device, seq, false),
        );
        let password = fleet.password(&device, &device);
        let (ok, out) = mosquitto_pub(&[
            "-h",
            "127.0.0.1",
            "-p",
            &tls,
            "--cafile",
            &cafile,
            "-i",
            &device,
            "-u",
            &device,
            "-P",
            &password,
            "-t",
            &topic(&device),
            "-q",
            qos,
            "-f",
            &file,
        ]);
        assert!(ok, "mosquitto_pub over TLS qos {qos}: {out}");
        expected.insert((device.clone(), seq));
    }
    // Mutual TLS: the client certificate names the device; no password.
    let device = fleet.device(3);
    let file = write_payload(fleet.dir.path(), "p.bin", &fleet.payload(&device, 7, false));
    let (ok, out) = mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &tls,
        "--cafile",
        &cafile,
        "--cert",
        &pki.join("dev-000003.pem").display().to_string(),
        "--key",
        &pki.join("dev-000003.key").display().to_string(),
        "-i",
        &device,
        "-t",
        &topic(&device),
        "-q",
        "1",
        "-f",
        &file,
    ]);
    assert!(ok, "mosquitto_pub with a client certificate: {out}");
    expected.insert((device.clone(), 7));
    // A certificate does not let a device publish as another one.
    let other = fleet.device(2);
    let file = write_payload(fleet.dir.path(), "p.bin", &fleet.payload(&other, 1, false));
    let (ok, _) = mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &tls,
        "--cafile",
        &cafile,
        "--cert",
        &pki.join("dev-000003.pem").display().to_string(),
        "--key",
        &pki.join("dev-000003.key").display().to_string(),
        "-i",
        &other,
        "-u",
        &other,
        "-t",
        &topic(&other),
        "-q",
        "1",
        "-f",
        &file,
    ]);
    assert!(
        !ok,
        "a certificate for dev-000003 must not connect as dev-000002"
    );

    // paho-mqtt, the JSON envelope, 3.1.1 and 5.
    let device = fleet.device(2);
    for (seq, qos, version) in [(1u64, "1", "4"), (2, "2", "5")] {
        let file = write_payload(
            fleet.dir.path(),
            "p.json",
            &fleet.payload(&device, seq, true),
        );
        let password = fleet.password(&device, &device);
        let output = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/paho_publish.py"
            ))
            .args([
                "127.0.0.1",
                &port,
                &device,
                &device,
                &password,
                &topic(&device),
                &file,
                qos,
                version,
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "paho qos {qos} v{version}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        expected.insert((device.clone(), seq));
    }

    // QoS 0 is not acknowledged, so wait for its commit before reading the log.
    std::thread::sleep(Duration::from_millis(200));
    let found: HashSet<_> = readings(&data).into_iter().collect();
    assert_eq!(found, expected);
    // The raw envelope is kept, so a record can be verified again downstream.
    let records = read_log(&data, 2);
    let json_record = records
        .iter()
        .find(|r| r.kind == RecordKind::Reading && r.meta["device"] == "dev-000002")
        .unwrap();
    assert_eq!(json_record.raw.first(), Some(&b'{'));
    assert_eq!(json_record.meta["region"], "us-east");
    assert_eq!(json_record.meta["readings"]["co2_ppm"], 401.0);
}

#[test]
fn every_refusal_gets_its_answer_and_others_keep_being_served() {
    let fleet = Fleet::provision(8);
    fleet.set_status("dev-000007", "revoked");
    let data = fleet.dir.path().join("data");
    let server = Server::start(&fleet, &data, &[]);
    let addr = server.addr();

    // A well-behaved device publishes throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let stop = Arc::clone(&stop);
        let fleet_keys = fleet.keys.clone();
        let dir = fleet.dir.path().to_path_buf();
        std::thread::spawn(move || {
            let fleet = Fleet {
                dir: tempfile::tempdir_in(&dir).unwrap(),
                keys: fleet_keys,
            };
            run_device(addr, &fleet, "dev-000000", 1, 8, &stop)
        })
    };

    let v5 = Protocol::V5;
    let v3 = Protocol::V311;
    // Unknown device: 3.1.1 "bad user name or password", v5 0x86.
    let (_, reply) = Client::connect_with(addr, "ghost", Some("ghost"), Some(b"v1.1.00.00"), v3);
    assert_eq!(
        reply,
        Reply::ConnAck(ReasonCode::BadUserNameOrPassword, false)
    );
    let (_, reply) = Client::connect_with(addr, "ghost", Some("ghost"), Some(b"v1.1.00.00"), v5);
    assert_eq!(
        reply,
        Reply::ConnAck(ReasonCode::BadUserNameOrPassword, false)
    );
    // Revoked device: v5 "banned", 3.1.1 "not authorized".
    let (_, reply) = Client::connect(addr, &fleet, "dev-000007", v5);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Banned, false));
    let (_, reply) = Client::connect(addr, &fleet, "dev-000007", v3);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::NotAuthorized, false));
    // Bad credential: signed by another device's key, or bound to another client id.
    let forged = fleet.password("dev-000002", "dev-000001");
    let (_, reply) = Client::connect_with(
        addr,
        "dev-000001",
        Some("dev-000001"),
        Some(forged.as_bytes()),
        v5,
    );
    assert_eq!(
        reply,
        Reply::ConnAck(ReasonCode::BadUserNameOrPassword, false)
    );
    let other_client = fleet.password("dev-000001", "someone-else");
    let (_, reply) = Client::connect_with(
        addr,
        "dev-000001",
        Some("dev-000001"),
        Some(other_client.as_bytes()),
        v5,
    );
    assert_eq!(
        reply,
        Reply::ConnAck(ReasonCode::BadUserNameOrPassword, false)
    );
    // A replayed (sniffed) credential is refused the second time.
    let password = fleet.password("dev-000001", "dev-000001");
    let (first, reply) = Client::connect_with(
        addr,
        "dev-000001",
        Some("dev-000001"),
        Some(password.as_bytes()),
        v5,
    );
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    drop(first);
    let (_, reply) = Client::connect_with(
        addr,
        "dev-000001",
        Some("dev-000001"),
        Some(password.as_bytes()),
        v5,
    );
    assert_eq!(
        reply,
        Reply::ConnAck(ReasonCode::BadUserNameOrPassword, false)
    );
    // Unsupported protocol level: 3.1.1 CONNACK 0x01.
    let mut raw = Client::open(addr, v3);
    raw.send_raw(&[
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ]);
    assert_eq!(
        raw.read(),
        Reply::ConnAck(ReasonCode::UnsupportedProtocolVersion, false)
    );

    // Per-message refusals on an authenticated v5 connection: each gets its PUBACK reason
    // and a dead letter with the reason code.
    let device = "dev-000003";
    let (mut client, reply) = Client::connect(addr, &fleet, device, v5);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    let own = topic(device);
    let good = fleet.payload(device, 10, false);
    let mut bad_signature = fleet.payload(device, 11, false);
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    let stale = fleet.payload_at(device, 12, now_ms() - 3_600_000, false);
    let cases: Vec<(String, Vec<u8>, ReasonCode)> = vec![
        (own.clone(), good.clone(), ReasonCode::Success),
        (
            topic("dev-000004"),
            fleet.payload(device, 13, false),
            ReasonCode::NotAuthorized,
        ),
        (own.clone(), bad_signature, ReasonCode::NotAuthorized),
        (own.clone(), good, ReasonCode::ImplementationSpecificError),
        (own.clone(), stale, ReasonCode::ImplementationSpecificError),
        (
            own.clone(),
            b"\x01\x00\x0adev-0".to_vec(),
            ReasonCode::PayloadFormatInvalid,
        ),
        (
            own.clone(),
            fleet.payload("dev-000004", 14, false),
            ReasonCode::NotAuthorized,
        ),
    ];
    for (i, (topic, payload, expected)) in cases.iter().enumerate() {
        let pkid = i as u16 + 1;
        client.publish(topic, payload, QoS::AtLeastOnce, pkid);
        assert_eq!(client.read(), Reply::PubAck(pkid, *expected), "case {i}");
    }
    let mut reasons = dead_letters(&data, device);
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "bad_signature",
            "clock_skew",
            "replayed",
            "topic_not_allowed",
            "truncated",
            "wrong_device"
        ]
    );
    // SUBSCRIBE is refused per filter until downlink exists.
    client.send(Packet::Subscribe(ingestd_codec::mqtt::Subscribe {
        pkid: 50,
        properties: Default::default(),
        filters: vec![ingestd_codec::mqtt::SubscribeFilter {
            filter: "devices/dev-000003/commands",
            options: ingestd_codec::mqtt::SubscriptionOptions::qos(QoS::AtLeastOnce),
        }],
    }));
    assert_eq!(
        client.read(),
        Reply::SubAck(vec![ReasonCode::NotAuthorized])
    );
    // An oversize packet (above mqtt.packet_bytes_max, 16 KiB): DISCONNECT 0x95, closed.
    let huge = vec![0u8; 20_000];
    client.publish(&own, &huge, QoS::AtLeastOnce, 60);
    assert_eq!(client.read(), Reply::Disconnect(ReasonCode::PacketTooLarge));
    assert_eq!(client.read(), Reply::Closed);

    // A malformed packet: QoS 3 in a PUBLISH. v5: DISCONNECT 0x81; 3.1.1: closed.
    let (mut client, _) = Client::connect(addr, &fleet, "dev-000005", v5);
    client.send_raw(&[0x36, 0x03, 0x00, 0x01, b'x']);
    assert_eq!(
        client.read(),
        Reply::Disconnect(ReasonCode::MalformedPacket)
    );
    let (mut client, _) = Client::connect(addr, &fleet, "dev-000005", v3);
    client.send_raw(&[0x36, 0x03, 0x00, 0x01, b'x']);
    assert_eq!(client.read(), Reply::Closed);
    // Garbage before CONNECT: closed without an answer.
    let mut raw = Client::open(addr, v3);
    raw.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(raw.read(), Reply::Closed);
    // 3.1.1: a foreign-topic publish is dead-lettered and acknowledged (no reason codes).
    let (mut client, _) = Client::connect(addr, &fleet, "dev-000006", v3);
    client.publish(
        &topic("dev-000004"),
        &fleet.payload("dev-000006", 1, false),
        QoS::AtLeastOnce,
        1,
    );
    assert_eq!(client.read(), Reply::PubAck(1, ReasonCode::Success));
    assert_eq!(dead_letters(&data, "dev-000006"), ["topic_not_allowed"]);

    // The well-behaved device was served all along.
    stop.store(true, Ordering::Relaxed);
    let acked = background.join().unwrap();
    assert!(
        acked.len() > 10,
        "background device acked only {}",
        acked.len()
    );
    let stored: HashSet<_> = readings(&data)
        .into_iter()
        .filter(|(d, _)| d == "dev-000000")
        .map(|(_, s)| s)
        .collect();
    assert!(acked.iter().all(|s| stored.contains(s)));
    assert!(server.metric("ingestd_connect_refused_total", "") >= 8);
    assert!(
        server.metric(
            "ingestd_messages_rejected_total",
            "reason=\"bad_signature\""
        ) >= 1
    );
    assert!(server.metric("ingestd_messages_rejected_total", "reason=\"malformed\"") >= 2);
}

#[test]
fn connections_are_served_on_their_home_shard() {
    let fleet = Fleet::provision(16);
    let data = fleet.dir.path().join("data");
    let server = Server::start(&fleet, &data, &[]);
    for i in 0..16 {
        let device = fleet.device(i);
        let (mut client, reply) = Client::connect(server.addr(), &fleet, &device, Protocol::V311);
        assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
        client.publish(
            &topic(&device),
            &fleet.payload(&device, 1, false),
            QoS::AtLeastOnce,
            1,
        );
        assert_eq!(client.read(), Reply::PubAck(1, ReasonCode::Success));
    }
    // Connections land on listeners by address hash: with 16 of them on 2 shards, some
    // were accepted away from home (2^-16 chance that none were) and handed over.
    let handed_in = server.metric("ingestd_connections_handed_off_in_total", "");
    let handed_out = server.metric("ingestd_connections_handed_off_out_total", "");
    assert!(handed_in > 0, "no connection was handed off");
    assert_eq!(handed_in, handed_out);
    // Every reading is in the log of its device's home shard.
    let records = read_log(&data, 2);
    assert_eq!(records.len(), 16);
    for record in records {
        let device = record.meta["device"].as_str().unwrap();
        assert_eq!(
            record.shard,
            ingestd_shards::home_shard(device, 2),
            "{device}"
        );
        assert_eq!(
            record.meta["shard"].as_u64().unwrap() as usize,
            record.shard
        );
    }
}

/// Devices publish under load; returns the acknowledged (device, seq) pairs once `act`
/// (run mid-load) returns and the devices finished.
fn under_load(
    server: &mut Server,
    fleet: &Arc<Fleet>,
    devices: usize,
    act: impl FnOnce(&mut Server),
) -> Vec<(String, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr();
    let threads: Vec<_> = (0..devices)
        .map(|i| {
            let stop = Arc::clone(&stop);
            let fleet = Arc::clone(fleet);
            std::thread::spawn(move || {
                let device = fleet.device(i);
                let acked = run_device(addr, &fleet, &device, 1, 16, &stop);
                acked
                    .into_iter()
                    .map(move |s| (device.clone(), s))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    act(server);
    stop.store(true, Ordering::Relaxed);
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let fleet = Arc::new(Fleet::provision(8));
    let data = fleet.dir.path().join("data");
    let mut server = Server::start(&fleet, &data, &[]);
    let acked = under_load(&mut server, &fleet, 8, Server::kill9);
    assert!(
        acked.len() > 100,
        "only {} acknowledged before the kill",
        acked.len()
    );
    server.restart();
    let stored: HashSet<_> = readings(&data).into_iter().collect();
    let missing: Vec<_> = acked.iter().filter(|a| !stored.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged readings missing after kill -9, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // Each (device, seq) once.
    assert_eq!(stored.len(), readings(&data).len());
    // Replay protection survived the restart: a sequence from before is refused.
    let (device, seq) = acked[0].clone();
    let (mut client, _) = Client::connect(server.addr(), &fleet, &device, Protocol::V5);
    client.publish(
        &topic(&device),
        &fleet.payload(&device, seq, false),
        QoS::AtLeastOnce,
        1,
    );
    assert_eq!(
        client.read(),
        Reply::PubAck(1, ReasonCode::ImplementationSpecificError)
    );
}

#[test]
fn sigterm_under_load_drains_and_loses_nothing_acknowledged() {
    let fleet = Arc::new(Fleet::provision(8));
    let data = fleet.dir.path().join("data");
    let mut server = Server::start(&fleet, &data, &[]);
    let mut status = None;
    let acked = under_load(&mut server, &fleet, 8, |server| {
        status = Some(server.terminate())
    });
    let status = status.unwrap();
    assert!(
        status.success(),
        "ingestd exited with {status} after SIGTERM"
    );
    assert!(acked.len() > 100);
    let stored: HashSet<_> = readings(&data).into_iter().collect();
    assert!(acked.iter().all(|a| stored.contains(a)));
}

#[test]
fn replay_protection_survives_a_restart_with_another_shard_count() {
    let fleet = Fleet::provision(6);
    let data = fleet.dir.path().join("data");
    let mut server = Server::start_with_shards(&fleet, &data, 2, &[]);
    for i in 0..6 {
        let device = fleet.device(i);
        let (mut client, _) = Client::connect(server.addr(), &fleet, &device, Protocol::V5);
        client.publish(
            &topic(&device),
            &fleet.payload(&device, 500, false),
            QoS::AtLeastOnce,
            1,
        );
        assert_eq!(client.read(), Reply::PubAck(1, ReasonCode::Success));
    }
    assert!(server.terminate().success());
    // Three shards now: most devices have another home, whose log never saw them.
    let server = Server::start_with_shards(&fleet, &data, 3, &[]);
    for i in 0..6 {
        let device = fleet.device(i);
        let (mut client, _) = Client::connect(server.addr(), &fleet, &device, Protocol::V5);
        client.publish(
            &topic(&device),
            &fleet.payload(&device, 500, false),
            QoS::AtLeastOnce,
            1,
        );
        assert_eq!(
            client.read(),
            Reply::PubAck(1, ReasonCode::ImplementationSpecificError),
            "{device} replay accepted"
        );
        client.publish(
            &topic(&device),
            &fleet.payload(&device, 501, false),
            QoS::AtLeastOnce,
            2,
        );
        assert_eq!(client.read(), Reply::PubAck(2, ReasonCode::Success));
    }
}

#[test]
fn health_endpoints_and_metrics() {
    let fleet = Fleet::provision(1);
    let data = fleet.dir.path().join("data");
    let server = Server::start(&fleet, &data, &[]);
    assert_eq!(http_get(server.metrics, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(server.metrics, "/readyz").unwrap().0, 200);
    assert_eq!(http_get(server.metrics, "/nope").unwrap().0, 404);
    let text = server.metrics_text();
    for name in [
        "ingestd_connections_open",
        "ingestd_messages_accepted_total",
        "ingestd_verify_batches_total",
        "ingestd_log_fsync_seconds_bucket",
        "ingestd_ack_latency_seconds_bucket",
        "ingestd_handoff_ring_occupancy",
    ] {
        assert!(text.contains(name), "metrics lack {name}");
    }
}

/// A device CA, a server certificate for 127.0.0.1, and client certificates whose common
/// name is the device id.
fn make_pki(dir: &std::path::Path, devices: &[&str]) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ingestd test device CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();

    for device in devices {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *device);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{device}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{device}.key")), key.serialize_pem()).unwrap();
    }
}

/// The README's main command on a fresh directory: provision, then `ingestd serve` with no
/// config and no flags (plain MQTT on 1883, metrics on 127.0.0.1:9100, data under ./data).
#[test]
fn readme_main_command_serves_on_embedded_defaults() {
    for port in [1883, 9100] {
        assert!(
            std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
            "port {port} is taken on this machine; the embedded default needs it"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(BIN)
        .current_dir(dir.path())
        .args(["devices", "provision", "--count", "10", "--out", "devices"])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .arg("serve")
        .env("INGESTD_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while http_get(9100, "/readyz").is_none_or(|(code, _)| code != 200) {
        assert!(child.try_wait().unwrap().is_none(), "ingestd serve exited");
        assert!(std::time::Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secrets = dir
        .path()
        .join("devices/secrets.json")
        .display()
        .to_string();
    let run = |args: &[&str]| {
        let output = Command::new(BIN)
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let device = "dev-000004";
    run(&[
        "devices",
        "sign",
        "--secrets",
        &secrets,
        "--device",
        device,
        "--seq",
        "1",
        "--reading",
        "co2_ppm=415.5",
        "--out",
        "r.bin",
    ]);
    let password = run(&[
        "devices",
        "credential",
        "--secrets",
        &secrets,
        "--device",
        device,
        "--client-id",
        device,
    ]);
    let file = dir.path().join("r.bin").display().to_string();
    let (ok, out) = mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        "1883",
        "-q",
        "1",
        "-i",
        device,
        "-u",
        device,
        "-P",
        &password,
        "-t",
        &topic(device),
        "-f",
        &file,
    ]);
    assert!(ok, "{out}");
    let tail = run(&["log", "tail"]);
    assert!(tail.contains("\"kind\":\"reading\""), "{tail}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn sighup_reloads_the_registry_and_a_revoked_device_is_cut_off() {
    let fleet = Fleet::provision(3);
    let data = fleet.dir.path().join("data");
    let server = Server::start(&fleet, &data, &[]);
    let (revoked, kept) = (fleet.device(1), fleet.device(2));
    let (mut a, reply) = Client::connect(server.addr(), &fleet, &revoked, Protocol::V5);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    let (mut b, reply) = Client::connect(server.addr(), &fleet, &kept, Protocol::V5);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));

    fleet.set_status(&revoked, "revoked");
    let pid = nix::unistd::Pid::from_raw(server.child.as_ref().unwrap().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    // The revoked device's live connection is closed by the server...
    a.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(
        a.read(),
        Reply::Disconnect(ReasonCode::AdministrativeAction)
    );
    // ...and it cannot come back.
    let (_, reply) = Client::connect(server.addr(), &fleet, &revoked, Protocol::V5);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Banned, false));
    // The other device is untouched.
    b.publish(
        &topic(&kept),
        &fleet.payload(&kept, 1, false),
        QoS::AtLeastOnce,
        1,
    );
    assert_eq!(b.read(), Reply::PubAck(1, ReasonCode::Success));
    // A registry file that does not validate is not applied.
    std::fs::write(fleet.registry(), "{ not json").unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (_, reply) = Client::connect(server.addr(), &fleet, &kept, Protocol::V5);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
}
