//! The command line: check-config names the key and the problem; provision, sign and
//! credential produce what the server accepts (covered end to end in e2e.rs); log export
//! prints every record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::Command;

fn ingestd(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn check_config_accepts_good_and_names_the_bad_key() {
    let fleet = Fleet::provision(3);
    let dir = fleet.dir.path();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "shards = 2\n[registry]\npath = \"{}\"\n",
            fleet.registry().display()
        ),
    )
    .unwrap();
    let (ok, out) = ingestd(dir, &["check-config", "--config", good.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("2 shard(s), 3 registered device(s)"), "{out}");

    for (text, expected) in [
        ("[log]\ncommit_interval_us = 0\n", "log.commit_interval_us"),
        ("[mqtt]\nlisten = \"nowhere\"\n", "mqtt.listen"),
        ("[mqtt]\ninflight_max = -1\n", "inflight_max"),
        ("[sinks]\nkafka = true\n", "sinks"),
    ] {
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let (ok, out) = ingestd(dir, &["check-config", "--config", bad.to_str().unwrap()]);
        assert!(!ok, "{text:?} was accepted");
        assert!(out.contains(expected), "{text:?}: {out}");
    }
    // A broken registry names the entry.
    let registry = dir.join("broken.json");
    std::fs::write(
        &registry,
        r#"{"version":1,"devices":[{"id":"a b","public_key":"00","status":"active"}]}"#,
    )
    .unwrap();
    let config = dir.join("broken.toml");
    std::fs::write(
        &config,
        format!("[registry]\npath = \"{}\"\n", registry.display()),
    )
    .unwrap();
    let (ok, out) = ingestd(dir, &["check-config", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("device #0 (\"a b\")"), "{out}");
    // serve refuses the same way, before binding anything.
    let (ok, out) = ingestd(
        dir,
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(!ok);
    assert!(out.contains("device #0"), "{out}");
}

#[test]
fn log_export_prints_every_record_with_its_payload() {
    let fleet = Fleet::provision(2);
    let data = fleet.dir.path().join("data");
    let mut server = Server::start(&fleet, &data, &[]);
    for i in 0..2 {
        let device = fleet.device(i);
        let (mut client, _) = Client::connect(
            server.addr(),
            &fleet,
            &device,
            ingestd_codec::mqtt::Protocol::V311,
        );
        client.publish(
            &topic(&device),
            &fleet.payload(&device, 3, false),
            ingestd_codec::mqtt::QoS::AtLeastOnce,
            1,
        );
        assert_eq!(
            client.read(),
            Reply::PubAck(1, ingestd_codec::mqtt::ReasonCode::Success)
        );
    }
    assert!(server.terminate().success());
    let (ok, out) = ingestd(
        fleet.dir.path(),
        &["log", "export", "--data-dir", data.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Each CONNECT's credential is logged before its CONNACK, then the reading.
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["credential", "reading", "credential", "reading"]);
    for line in lines.iter().filter(|l| l["kind"] == "reading") {
        assert!(line["payload_hex"].as_str().unwrap().len() > 100);
    }
}

/// Under `taskset` (as under systemd's `CPUAffinity=`) every shard is pinned to a CPU the
/// server was given, never to one outside its mask.
#[test]
fn shards_stay_on_the_cpus_the_server_was_given() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs two CPUs to tell a pinned shard from a stray one"
    );
    // The highest CPU: with two or more, shard 0 pinned by index alone would land on CPU 0.
    let Some(last) = (0..cpus).rev().find(|cpu| {
        Command::new("taskset")
            .args(["-c", &cpu.to_string(), "true"])
            .status()
            .is_ok_and(|s| s.success())
    }) else {
        panic!("taskset is missing or refuses every CPU");
    };
    let fleet = Fleet::provision(2);
    let data = tempfile::tempdir().unwrap();
    let mask = last.to_string();
    let server = Server::start_under(&["taskset", "-c", &mask], &fleet, data.path(), 2, &[]);
    let pid = server.child.as_ref().unwrap().id();
    let mut shards = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !comm.starts_with("ingestd-shard") {
            continue;
        }
        shards += 1;
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let allowed = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(allowed, mask, "{} runs on CPUs {allowed}", comm.trim());
    }
    // Each shard's executor thread, and the helper thread glommio starts beside it.
    assert!(
        shards >= 2,
        "expected the two shards' threads, found {shards}"
    );
}
