//! MQTT 5 conformance against a real server over raw TCP: the client's Maximum Packet
//! Size, Session Expiry Interval, and the Assigned Client Identifier of an empty client id
//! (docs/PROTOCOL.md section 13.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ingestd_codec::mqtt::{self, Decoded, Origin, Packet, Properties, Protocol, ReasonCode};
use std::io::Read;
use std::time::Duration;

/// A v5 CONNECT of `device` with `client_id` (signed by its credential) and properties.
fn connect(
    server: &Server,
    fleet: &Fleet,
    device: &str,
    client_id: &str,
    clean: bool,
    properties: Properties<'_>,
) -> Client {
    let password = fleet.password(device, client_id);
    let mut client = Client::open(server.addr(), Protocol::V5);
    client.send(Packet::Connect(mqtt::Connect {
        protocol: Protocol::V5,
        clean_start: clean,
        keep_alive: 30,
        properties,
        client_id,
        will: None,
        username: Some(device),
        password: Some(password.as_bytes()),
    }));
    client
}

/// Everything the server sends until it closes the connection.
fn read_to_close(client: &mut Client) -> Vec<u8> {
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut all = Vec::new();
    let _ = client.stream.read_to_end(&mut all);
    all
}

#[test]
fn a_client_announcing_a_2_byte_maximum_packet_size_gets_no_connack() {
    let fleet = Fleet::provision(1);
    let server = Server::start(&fleet, &fleet.dir.path().join("data"), &[]);
    let device = fleet.device(0);
    let properties = Properties {
        maximum_packet_size: Some(2),
        ..Properties::default()
    };
    let mut client = connect(&server, &fleet, &device, &device, true, properties);
    assert_eq!(
        read_to_close(&mut client),
        b"",
        "nothing may exceed 2 bytes"
    );
    // 5 bytes: the minimal CONNACK, and the session works.
    let properties = Properties {
        maximum_packet_size: Some(5),
        ..Properties::default()
    };
    let mut client = connect(&server, &fleet, &device, &device, true, properties);
    assert_eq!(client.read(), Reply::ConnAck(ReasonCode::Success, false));
    client.send(Packet::PingReq);
    assert_eq!(client.read(), Reply::PingResp);
}

#[test]
fn a_session_expires_its_interval_after_the_connection_ended() {
    let fleet = Fleet::provision(1);
    let server = Server::start(&fleet, &fleet.dir.path().join("data"), &[]);
    let device = fleet.device(0);
    let expiry = || Properties {
        session_expiry_interval: Some(2),
        ..Properties::default()
    };
    let mut client = connect(&server, &fleet, &device, &device, false, expiry());
    assert_eq!(client.read(), Reply::ConnAck(ReasonCode::Success, false));
    drop(client);
    std::thread::sleep(Duration::from_millis(1000));
    let mut client = connect(&server, &fleet, &device, &device, false, expiry());
    assert_eq!(client.read(), Reply::ConnAck(ReasonCode::Success, true));
    drop(client);
    std::thread::sleep(Duration::from_millis(3500));
    let mut client = connect(&server, &fleet, &device, &device, false, expiry());
    assert_eq!(client.read(), Reply::ConnAck(ReasonCode::Success, false));
    // A DISCONNECT setting the expiry to 0 ends the session at once.
    client.send(Packet::Disconnect(mqtt::Disconnect {
        reason: ReasonCode::Success,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    }));
    assert_eq!(client.read(), Reply::Closed);
    std::thread::sleep(Duration::from_millis(100));
    let mut client = connect(&server, &fleet, &device, &device, false, expiry());
    assert_eq!(client.read(), Reply::ConnAck(ReasonCode::Success, false));
    // Setting one after a CONNECT with 0 is a Protocol Error.
    let mut client2 = connect(
        &server,
        &fleet,
        &device,
        &device,
        true,
        Properties::default(),
    );
    assert_eq!(client2.read(), Reply::ConnAck(ReasonCode::Success, false));
    assert_eq!(
        client.read(),
        Reply::Disconnect(ReasonCode::SessionTakenOver)
    );
    client2.send(Packet::Disconnect(mqtt::Disconnect {
        reason: ReasonCode::Success,
        properties: expiry(),
    }));
    assert_eq!(client2.read(), Reply::Disconnect(ReasonCode::ProtocolError));
}

#[test]
fn an_empty_client_id_is_assigned_the_device_id() {
    let fleet = Fleet::provision(1);
    let server = Server::start(&fleet, &fleet.dir.path().join("data"), &[]);
    let device = fleet.device(0);
    let mut client = connect(&server, &fleet, &device, "", true, Properties::default());
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let assigned = loop {
        let mut chunk = [0u8; 512];
        let n = client.stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed without a CONNACK");
        buf.extend_from_slice(&chunk[..n]);
        if let Decoded::Packet {
            packet: Packet::ConnAck(connack),
            ..
        } = mqtt::decode_from(&buf, Protocol::V5, 1 << 20, Origin::Server).unwrap()
        {
            assert_eq!(connack.reason, ReasonCode::Success);
            break connack
                .properties
                .assigned_client_identifier
                .map(str::to_string);
        }
    };
    assert_eq!(assigned.as_deref(), Some(device.as_str()));
}
