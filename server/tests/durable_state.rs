//! What the server remembers across restarts besides its records: each device's exact
//! replay window and the credentials it accepted (checkpoints plus the log after them),
//! and that remembering credentials never locks a reconnecting device out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ingestd_codec::mqtt::{Protocol, QoS, ReasonCode};

/// Publishes `seq` as QoS 1 on a fresh connection; returns the PUBACK's reason.
fn publish(server: &Server, fleet: &Fleet, device: &str, seqs: &[u64]) -> Vec<ReasonCode> {
    let (mut client, reply) = Client::connect(server.addr(), fleet, device, Protocol::V5);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    seqs.iter()
        .enumerate()
        .map(|(i, seq)| {
            let pkid = i as u16 + 1;
            client.publish(
                &topic(device),
                &fleet.payload(device, *seq, false),
                QoS::AtLeastOnce,
                pkid,
            );
            match client.read() {
                Reply::PubAck(id, reason) if id == pkid => reason,
                other => panic!("{device} seq {seq}: {other:?}"),
            }
        })
        .collect()
}

const OK: ReasonCode = ReasonCode::Success;
const REFUSED: ReasonCode = ReasonCode::ImplementationSpecificError;

#[test]
fn sequences_never_used_inside_the_window_are_accepted_after_a_restart() {
    let fleet = Fleet::provision(1);
    let data = fleet.dir.path().join("data");
    let device = fleet.device(0);
    let mut server = Server::start(&fleet, &data, &[]);
    assert_eq!(publish(&server, &fleet, &device, &[10, 12]), [OK, OK]);

    // A clean restart: the windows come from the shutdown checkpoint.
    assert!(server.terminate().success());
    server.restart();
    assert_eq!(
        publish(&server, &fleet, &device, &[11, 12, 10]),
        [OK, REFUSED, REFUSED]
    );
    assert!(
        !dead_letters(&data, &device).is_empty(),
        "the refusals are dead letters"
    );

    // A crash: the start-up checkpoint plus the log after it.
    assert_eq!(publish(&server, &fleet, &device, &[20, 22]), [OK, OK]);
    server.kill9();
    server.restart();
    assert_eq!(publish(&server, &fleet, &device, &[21, 22]), [OK, REFUSED]);

    // A crash with the checkpoints unreadable: the whole log is scanned instead.
    assert_eq!(publish(&server, &fleet, &device, &[30, 32]), [OK, OK]);
    server.kill9();
    for shard in 0..2 {
        let path = ingestd::log::shard_dir(&data, shard).join("state.checkpoint");
        std::fs::write(&path, b"torn").unwrap();
    }
    server.restart();
    assert_eq!(
        publish(&server, &fleet, &device, &[31, 32, 11, 21]),
        [OK, REFUSED, REFUSED, REFUSED]
    );
}

#[test]
fn a_device_reconnecting_17_times_within_the_window_is_never_locked_out() {
    let fleet = Fleet::provision(1);
    let server = Server::start(&fleet, &fleet.dir.path().join("data"), &[]);
    let device = fleet.device(0);
    for attempt in 1..=20 {
        let (_client, reply) = Client::connect(server.addr(), &fleet, &device, Protocol::V5);
        assert_eq!(
            reply,
            Reply::ConnAck(ReasonCode::Success, false),
            "reconnect {attempt}"
        );
    }
}

#[test]
fn a_credential_accepted_before_a_restart_is_refused_after_it() {
    let fleet = Fleet::provision(2);
    let data = fleet.dir.path().join("data");
    let mut server = Server::start(&fleet, &data, &[]);
    let connect = |server: &Server, device: &str, password: &str| {
        let (_client, reply) = Client::connect_with(
            server.addr(),
            device,
            Some(device),
            Some(password.as_bytes()),
            Protocol::V5,
        );
        reply
    };
    let accepted = Reply::ConnAck(ReasonCode::Success, false);
    let refused = Reply::ConnAck(ReasonCode::BadUserNameOrPassword, false);

    // Killed right after the CONNACK: the credential's record was durable before it.
    let first = fleet.device(0);
    let first_password = fleet.password(&first, &first);
    assert_eq!(connect(&server, &first, &first_password), accepted);
    server.kill9();
    server.restart();
    assert_eq!(connect(&server, &first, &first_password), refused);

    // A clean restart: the shutdown checkpoint holds it.
    let second = fleet.device(1);
    let second_password = fleet.password(&second, &second);
    assert_eq!(connect(&server, &second, &second_password), accepted);
    assert!(server.terminate().success());
    server.restart();
    assert_eq!(connect(&server, &second, &second_password), refused);
    assert_eq!(connect(&server, &first, &first_password), refused);
    // Fresh credentials of both still work.
    let (_, reply) = Client::connect(server.addr(), &fleet, &first, Protocol::V5);
    assert_eq!(reply, accepted);
    let (_, reply) = Client::connect(server.addr(), &fleet, &second, Protocol::V5);
    assert_eq!(reply, accepted);
}
