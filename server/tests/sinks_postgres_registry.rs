//! The device registry in PostgreSQL, end to end: ingestd loads it at start, and a device
//! revoked in PostgreSQL while it publishes is cut off within a second and refused after.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::postgres::Postgres;
use common::{topic, Client, Fleet, Reply, Server};
use ingestd_codec::mqtt::{Protocol, QoS, ReasonCode};
use std::process::Command;
use std::time::{Duration, Instant};

fn pg_cli(args: &[&str]) {
    let output = Command::new(common::BIN).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ingestd {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_device_revoked_in_postgres_mid_run_is_cut_off_within_a_second() {
    let pg = Postgres::new();
    let fleet = Fleet::provision(3);
    pg_cli(&[
        "devices",
        "pg-import",
        "--postgres",
        &pg.url(),
        "--registry",
        &fleet.registry().display().to_string(),
    ]);
    // The registry file no longer decides: make it say something else entirely.
    let data = fleet.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = data.join("ingestd.toml");
    std::fs::write(
        &config,
        format!(
            "[postgres]\nurl = \"{}\"\nregistry = true\nflush_interval_ms = 20\n[registry]\npath = \"/nonexistent/registry.json\"\n",
            pg.url()
        ),
    )
    .unwrap();
    let server = Server::start(&fleet, &data, &["--config", &config.display().to_string()]);
    let (revoked, kept) = (fleet.device(1), fleet.device(2));
    let (mut a, reply) = Client::connect(server.addr(), &fleet, &revoked, Protocol::V5);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    let (mut b, reply) = Client::connect(server.addr(), &fleet, &kept, Protocol::V5);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));

    // Mid-run: the device is publishing and being acknowledged.
    for seq in 1..=20u64 {
        a.publish(
            &topic(&revoked),
            &fleet.payload(&revoked, seq, false),
            QoS::AtLeastOnce,
            seq as u16,
        );
        assert_eq!(a.read(), Reply::PubAck(seq as u16, ReasonCode::Success));
    }

    // Timed from before the command starts: an upper bound on commit -> cut off.
    let revoked_at = Instant::now();
    pg_cli(&[
        "devices",
        "pg-status",
        "--postgres",
        &pg.url(),
        &revoked,
        "revoked",
    ]);
    a.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Keep publishing: until the server acts, these are acknowledged; then the
    // connection is closed with "administrative action".
    let mut seq = 21u64;
    let closed = loop {
        a.publish(
            &topic(&revoked),
            &fleet.payload(&revoked, seq, false),
            QoS::AtLeastOnce,
            (seq % 60000) as u16,
        );
        seq += 1;
        match a.read() {
            Reply::PubAck(_, ReasonCode::Success) => std::thread::sleep(Duration::from_millis(5)),
            other => break other,
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(10),
            "never cut off"
        );
    };
    let cut_off = revoked_at.elapsed();
    eprintln!(
        "revoked in PostgreSQL -> connection closed: {} ms",
        cut_off.as_millis()
    );
    assert_eq!(closed, Reply::Disconnect(ReasonCode::AdministrativeAction));
    assert!(
        cut_off < Duration::from_secs(1),
        "cut off after {cut_off:?}, not within 1 s"
    );

    // Its later attempts are refused...
    let (_, reply) = Client::connect(server.addr(), &fleet, &revoked, Protocol::V5);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Banned, false));
    // ...and the other device is untouched.
    b.publish(
        &topic(&kept),
        &fleet.payload(&kept, 1, false),
        QoS::AtLeastOnce,
        1,
    );
    assert_eq!(b.read(), Reply::PubAck(1, ReasonCode::Success));

    // Reinstated in PostgreSQL: it may connect again.
    pg_cli(&[
        "devices",
        "pg-status",
        "--postgres",
        &pg.url(),
        &revoked,
        "active",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, reply) = Client::connect(server.addr(), &fleet, &revoked, Protocol::V5);
        if reply == Reply::ConnAck(ReasonCode::Success, false) {
            break;
        }
        assert!(Instant::now() < deadline, "not reinstated: {reply:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The statistics sink counted the device's readings.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counted = pg.query_i64(&format!(
            "SELECT coalesce(sum(readings), 0) FROM device_stats WHERE device_id = '{revoked}'"
        ));
        let logged = common::readings(&data)
            .iter()
            .filter(|(device, _)| device == &revoked)
            .count() as i64;
        if counted == logged && counted >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL counted {counted}, the log holds {logged}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
