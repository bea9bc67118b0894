//! MQTT session behaviour against a real server: keep-alive, takeover, persistent sessions
//! and QoS 2 exactly-once across a reconnect, receive maximum, throttling, TLS garbage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ingestd_codec::mqtt::{self, Packet, Properties, Protocol, QoS, ReasonCode};
use std::io::Write;
use std::time::Duration;

fn connect_session(
    server: &Server,
    fleet: &Fleet,
    device: &str,
    protocol: Protocol,
    clean: bool,
    keep_alive: u16,
) -> (Client, Reply) {
    let password = fleet.password(device, device);
    let mut client = Client::open(server.addr(), protocol);
    let mut properties = Properties::default();
    if protocol == Protocol::V5 && !clean {
        properties.session_expiry_interval = Some(3600);
    }
    client.send(Packet::Connect(mqtt::Connect {
        protocol,
        clean_start: clean,
        keep_alive,
        properties,
        client_id: device,
        will: None,
        username: Some(device),
        password: Some(password.as_bytes()),
    }));
    let reply = client.read();
    (client, reply)
}

#[test]
fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let fleet = Fleet::provision(1);
    let server = Server::start(&fleet, &fleet.dir.path().join("data"), &[]);
    let device = fleet.device(0);
    let (mut client, reply) = connect_session(&server, &fleet, &device, Protocol::V5, true, 1);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    // A PINGREQ within the interval keeps it open.
    std::thread::sleep(Duration::from_millis(700));
    client.send(Packet::PingReq);
    assert_eq!(client.read(), Reply::PingResp);
    // Then silence: closed after 1.5 s with "keep alive timeout".
    let started = std::time::Instant::now();
    assert_eq!(
        client.read(),
        Reply::Disconnect(ReasonCode::KeepAliveTimeout)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "closed too early"
    );
}

#[test]
fn a_second_connection_of_a_device_takes_the_session_over() {
    let fleet = Fleet::provision(1);
    let server = Server::start(&fleet, &fleet.dir.path().join("data"), &[]);
    let device = fleet.device(0);
    let (mut first, reply) = connect_session(&server, &fleet, &device, Protocol::V5, true, 30);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    let (mut second, reply) = connect_session(&server, &fleet, &device, Protocol::V5, true, 30);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    assert_eq!(
        first.read(),
        Reply::Disconnect(ReasonCode::SessionTakenOver)
    );
    assert_eq!(first.read(), Reply::Closed);
    second.publish(
        &topic(&device),
        &fleet.payload(&device, 1, false),
        QoS::AtLeastOnce,
        1,
    );
    assert_eq!(second.read(), Reply::PubAck(1, ReasonCode::Success));
}

#[test]
fn persistent_session_keeps_qos2_state_across_a_reconnect() {
    let fleet = Fleet::provision(1);
    let data = fleet.dir.path().join("data");
    let server = Server::start(&fleet, &data, &[]);
    let device = fleet.device(0);
    for protocol in [Protocol::V311, Protocol::V5] {
        let pkid = if protocol == Protocol::V311 { 7 } else { 8 };
        let payload = fleet.payload(&device, 40 + u64::from(pkid), false);
        let (mut client, reply) = connect_session(&server, &fleet, &device, protocol, false, 30);
        assert!(matches!(reply, Reply::ConnAck(ReasonCode::Success, _)));
        client.publish(&topic(&device), &payload, QoS::ExactlyOnce, pkid);
        assert_eq!(client.read(), Reply::PubRec(pkid, ReasonCode::Success));
        // The connection drops before PUBREL.
        drop(client);
        std::thread::sleep(Duration::from_millis(100));
        let (mut client, reply) = connect_session(&server, &fleet, &device, protocol, false, 30);
        assert_eq!(
            reply,
            Reply::ConnAck(ReasonCode::Success, true),
            "{protocol:?}: session present"
        );
        // The device resends the PUBLISH with DUP: PUBREC again, stored once.
        client.send(Packet::Publish(mqtt::Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: &topic(&device),
            pkid,
            properties: Properties::default(),
            payload: &payload,
        }));
        assert_eq!(client.read(), Reply::PubRec(pkid, ReasonCode::Success));
        client.send(Packet::PubRel(mqtt::Ack::new(pkid)));
        assert_eq!(client.read(), Reply::PubComp(pkid, ReasonCode::Success));
    }
    let stored: Vec<_> = readings(&data)
        .into_iter()
        .filter(|(_, seq)| *seq == 47 || *seq == 48)
        .collect();
    assert_eq!(
        stored.len(),
        2,
        "each QoS 2 message stored exactly once: {stored:?}"
    );
    // A clean session starts without state.
    let (_, reply) = connect_session(&server, &fleet, &device, Protocol::V311, true, 30);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
}

#[test]
fn v5_device_exceeding_receive_maximum_is_disconnected() {
    let fleet = Fleet::provision(1);
    let config = fleet.dir.path().join("small.toml");
    std::fs::write(&config, "[mqtt]\ninflight_max = 2\n[log]\ncommit_interval_us = 1000000\ncommit_batch_bytes_max = 1048576\n").unwrap();
    let server = Server::start(
        &fleet,
        &fleet.dir.path().join("data"),
        &["--config", &config.display().to_string()],
    );
    let device = fleet.device(0);
    let (mut client, reply) = connect_session(&server, &fleet, &device, Protocol::V5, true, 30);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    // With a 1 s commit interval the first two stay unacknowledged; the third exceeds the
    // Receive Maximum of 2 that the CONNACK announced.
    // One write, so the server sees all three before it could acknowledge any.
    let mut frames = Vec::new();
    for seq in 1..=3u64 {
        let payload = fleet.payload(&device, seq, false);
        Packet::Publish(mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: &topic(&device),
            pkid: seq as u16,
            properties: Properties::default(),
            payload: &payload,
        })
        .encode(Protocol::V5, &mut frames)
        .unwrap();
    }
    client.send_raw(&frames);
    let mut replies = Vec::new();
    loop {
        match client.read() {
            Reply::Closed => break,
            reply => replies.push(reply),
        }
    }
    assert!(
        replies.contains(&Reply::Disconnect(ReasonCode::ReceiveMaximumExceeded)),
        "{replies:?}"
    );
}

#[test]
fn repeated_auth_failures_are_throttled_and_tls_garbage_costs_nothing() {
    let fleet = Fleet::provision(1);
    let pki = fleet.dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(pki.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(pki.join("server.key"), key.serialize_pem()).unwrap();
    let tls_port = free_port();
    let config = fleet.dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!("[shutdown]\ndrain_timeout_ms = 60000\n[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_path = \"{0}/server.pem\"\nkey_path = \"{0}/server.key\"\n", pki.display()),
    )
    .unwrap();
    let server = Server::start(
        &fleet,
        &fleet.dir.path().join("data"),
        &["--config", &config.display().to_string()],
    );
    for _ in 0..5 {
        let (_, reply) = Client::connect_with(
            server.addr(),
            "x",
            Some("dev-000000"),
            Some(b"v1.1.00.00"),
            Protocol::V311,
        );
        assert_eq!(
            reply,
            Reply::ConnAck(ReasonCode::BadUserNameOrPassword, false)
        );
    }
    assert!(server.metric("ingestd_auth_throttled_total", "") >= 1);
    // Plain MQTT bytes on the TLS port: the handshake fails, the server carries on.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    raw.write_all(&[
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ])
    .unwrap();
    drop(raw);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.metric("ingestd_tls_handshake_failures_total", "") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "handshake failure not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let device = fleet.device(0);
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

#[test]
fn benchmark_transport_mode_stores_opaque_payloads_from_plain_clients() {
    let fleet = Fleet::provision(2);
    let data = fleet.dir.path().join("data");
    let config = fleet.dir.path().join("bench.toml");
    std::fs::write(
        &config,
        "[auth]\nrequire_credential = false\n[validation]\nopaque_payloads = true\n",
    )
    .unwrap();
    let server = Server::start(&fleet, &data, &["--config", &config.display().to_string()]);
    let device = fleet.device(1);
    // A plain client: no username, no password; the client id names a registered device.
    let (mut client, reply) =
        Client::connect_with(server.addr(), &device, None, None, Protocol::V311);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    client.publish(&topic(&device), b"opaque bytes", QoS::AtLeastOnce, 1);
    assert_eq!(client.read(), Reply::PubAck(1, ReasonCode::Success));
    // Still only its own topic.
    client.publish(&topic(&fleet.device(0)), b"x", QoS::AtLeastOnce, 2);
    assert_eq!(client.read(), Reply::PubAck(2, ReasonCode::Success));
    // An unregistered client id is still refused.
    let (_, reply) = Client::connect_with(server.addr(), "nobody", None, None, Protocol::V311);
    assert_eq!(
        reply,
        Reply::ConnAck(ReasonCode::BadUserNameOrPassword, false)
    );
    let records = read_log(&data, 2);
    let stored: Vec<_> = records
        .iter()
        .filter(|r| r.meta["opaque"] == true)
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].raw, b"opaque bytes");
    assert_eq!(dead_letters(&data, &device), ["topic_not_allowed"]);
}

#[test]
fn back_pressure_pauses_readers_and_loses_nothing() {
    let fleet = Fleet::provision(4);
    let data = fleet.dir.path().join("data");
    let config = fleet.dir.path().join("tight.toml");
    // A tiny pending budget: a few records make the shard stop reading sockets until the
    // next commit.
    std::fs::write(
        &config,
        "[log]\ncommit_batch_bytes_max = 2048\npending_bytes_max = 2048\ncommit_interval_us = 50000\n",
    )
    .unwrap();
    let server = Server::start(&fleet, &data, &["--config", &config.display().to_string()]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let fleet = &fleet;
                let stop = &stop;
                let addr = server.addr();
                scope.spawn(move || run_device(addr, fleet, &fleet.device(i), 1, 32, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 50, "only {total} acknowledged");
    assert!(server.metric("ingestd_backpressure_pauses_total", "") > 0);
    let stored: std::collections::HashSet<_> = readings(&data).into_iter().collect();
    for (i, seqs) in acked.iter().enumerate() {
        for seq in seqs {
            assert!(stored.contains(&(fleet.device(i), *seq)));
        }
    }
}
