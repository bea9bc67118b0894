//! End-to-end runs of the `loadgen` binary: against a real `ingestd serve`, against
//! Mosquitto (`--plain`, skipped when absent) and against tiny scripted brokers that refuse
//! or never acknowledge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ingestd_codec::mqtt::{self, Decoded, Packet, Protocol, ReasonCode};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("loadgen runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Kills the child on drop.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `ingestd` binary: next to `loadgen` in the same target directory, built if missing.
fn ingestd_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_loadgen"))
        .parent()
        .unwrap()
        .to_path_buf();
    let bin = dir.join("ingestd");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args(["build", "-p", "ingestd"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p ingestd failed");
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

fn http_get_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Starts `ingestd serve` (2 shards, log under `dir/data`) on free ports and waits until it
/// is ready; returns its guard and MQTT address.
fn start_ingestd(ingestd: &Path, dir: &Path, devices: &Path) -> (Guard, String) {
    let port = free_port();
    let mport = free_port();
    let listen = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{mport}");
    let server = Guard(
        Command::new(ingestd)
            .args([
                "serve",
                "--listen",
                &listen,
                "--metrics-listen",
                &metrics,
                "--shards",
                "2",
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--registry")
            .arg(devices.join("registry.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get_status(&metrics, "/readyz") != Some(200) {
        assert!(Instant::now() < deadline, "ingestd not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, listen)
}

#[test]
fn against_ingestd_qos1_nothing_lost() {
    let ingestd = ingestd_binary();
    let tmp = tempfile::tempdir().unwrap();
    let devices = tmp.path().join("devices");
    let status = Command::new(&ingestd)
        .args(["devices", "provision", "--count", "20", "--out"])
        .arg(&devices)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (_server, listen) = start_ingestd(&ingestd, tmp.path(), &devices);
    let json = tmp.path().join("report.json");
    let acked = tmp.path().join("acked.txt");
    let out = run(loadgen()
        .args([
            "--target",
            &listen,
            "--devices",
            "20",
            "--messages",
            "2000",
            "--rate",
            "1000",
        ])
        .args([
            "--qos",
            "1",
            "--threads",
            "2",
            "--drain-timeout",
            "60",
            "--quiet",
        ])
        .arg("--devices-dir")
        .arg(&devices)
        .arg("--json")
        .arg(&json)
        .arg("--acked-out")
        .arg(&acked));
    assert_eq!(out.status.code(), Some(0));
    let r = report(&json);
    assert_eq!(r["sent"], 2000, "{r}");
    assert_eq!(r["acked"], r["sent"]);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["refused"], 0);
    assert_eq!(r["connect"]["connected"], 20);
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let lines = std::fs::read_to_string(&acked).unwrap();
    let mut pairs: Vec<&str> = lines.lines().collect();
    assert_eq!(pairs.len(), 2000);
    pairs.sort_unstable();
    pairs.dedup();
    assert_eq!(pairs.len(), 2000, "acked (device, seq) pairs are unique");
    assert!(pairs.iter().all(|l| l.starts_with("dev-0000")));

    // A second run against the same server: fresh sequence numbers, nothing replayed.
    let json2 = tmp.path().join("report2.json");
    let out = run(loadgen()
        .args([
            "--target",
            &listen,
            "--devices",
            "20",
            "--messages",
            "200",
            "--rate",
            "1000",
        ])
        .args([
            "--qos",
            "2",
            "--format",
            "json",
            "--mqtt-version",
            "5",
            "--quiet",
        ])
        .arg("--devices-dir")
        .arg(&devices)
        .arg("--json")
        .arg(&json2));
    assert_eq!(out.status.code(), Some(0));
    let r = report(&json2);
    assert_eq!(r["acked"], 200, "{r}");
    assert_eq!(r["refused"], 0, "{r}");
    assert_eq!(r["lost"], 0);
}

/// Every fraud scenario through a real ingestd: the truth file lists every device, the
/// clone's second unit really connects from 127.0.0.2 with its own counter, the records
/// carry the registry's locations from `loadgen place`, and `fraud-eval` reads the export
/// (no verdicts yet without scoring: nothing detected, every scenario listed).
#[test]
fn fraud_scenarios_against_ingestd() {
    let ingestd = ingestd_binary();
    let tmp = tempfile::tempdir().unwrap();
    let devices = tmp.path().join("devices");
    let status = Command::new(&ingestd)
        .args(["devices", "provision", "--count", "44", "--out"])
        .arg(&devices)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let out = run(loadgen()
        .args(["place", "--devices-per-location", "4", "--devices-dir"])
        .arg(&devices));
    assert_eq!(out.status.code(), Some(0));
    let (server, listen) = start_ingestd(&ingestd, tmp.path(), &devices);
    let truth = tmp.path().join("truth.csv");
    let json = tmp.path().join("report.json");
    let out = run(loadgen()
        .args(["--target", &listen, "--rate", "1000", "--messages", "3520"])
        .args([
            "--fraud-share",
            "0.5",
            "--seed",
            "7",
            "--seq-base",
            "1000000",
        ])
        .args(["--warmup-readings", "10", "--onset-span-readings", "10"])
        .args(["--threads", "1", "--drain-timeout", "30", "--quiet"])
        .arg("--devices-dir")
        .arg(&devices)
        .arg("--truth")
        .arg(&truth)
        .arg("--json")
        .arg(&json));
    assert_eq!(out.status.code(), Some(0));
    let r = report(&json);
    assert_eq!(r["sent"], 3520, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    let text = std::fs::read_to_string(&truth).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 44);
    let clones: Vec<&str> = rows
        .iter()
        .filter(|r| r[1] == "clone")
        .map(|r| r[0])
        .collect();
    assert!(!clones.is_empty());
    drop(server);

    let export = Command::new(&ingestd)
        .args(["log", "export", "--data-dir"])
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(export.status.success());
    let export_path = tmp.path().join("export.jsonl");
    std::fs::write(&export_path, &export.stdout).unwrap();
    // The records: every clone wrote from two addresses; locations are the placed ones.
    let mut peers: std::collections::HashMap<String, std::collections::HashSet<String>> =
        std::collections::HashMap::new();
    let mut readings = 0;
    for line in String::from_utf8(export.stdout).unwrap().lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        if entry["kind"] != "reading" {
            continue;
        }
        let hex = entry["payload_hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let len = u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
        let meta: serde_json::Value = serde_json::from_slice(&bytes[5..5 + len]).unwrap();
        let device = meta["device"].as_str().unwrap();
        let index: usize = device[4..].parse().unwrap();
        assert_eq!(meta["location"], format!("loc-{:05}", index / 4));
        let peer = meta["peer"].as_str().unwrap_or("");
        let ip = peer.rsplit_once(':').map_or(peer, |(ip, _)| ip);
        peers
            .entry(device.to_string())
            .or_default()
            .insert(ip.to_string());
        readings += 1;
    }
    assert!(readings > 3000, "{readings}");
    for clone in &clones {
        let seen = &peers[*clone];
        assert!(seen.contains("127.0.0.2"), "{clone}: {seen:?}");
        assert!(seen.len() == 2, "{clone}: {seen:?}");
    }
    let eval = run(loadgen()
        .args(["fraud-eval", "--truth"])
        .arg(&truth)
        .arg("--export")
        .arg(&export_path));
    assert_eq!(eval.status.code(), Some(0));
    let table = String::from_utf8(eval.stdout).unwrap();
    for label in [
        "spike",
        "drift",
        "level_shift",
        "stuck",
        "smooth",
        "neighbour_copy",
        "out_of_bounds",
        "rate_burst",
        "clock_drift",
        "clone",
        "past_day",
    ] {
        assert!(
            table.contains(&format!("| {label} | ")),
            "{label} missing:\n{table}"
        );
    }
    assert!(table.contains("| normal devices | "), "{table}");
}

fn mosquitto() -> Option<(Guard, u16, tempfile::TempDir)> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = tmp.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((guard, port, tmp))
}

#[test]
fn plain_against_mosquitto() {
    let Some((_m, port, tmp)) = mosquitto() else {
        eprintln!("NOTE: mosquitto not installed; skipping the --plain smoke test");
        return;
    };
    let target = format!("127.0.0.1:{port}");
    for (qos, version) in [("0", "5"), ("1", "3.1.1"), ("2", "5")] {
        let json = tmp.path().join(format!("r{qos}.json"));
        let svg = tmp.path().join(format!("r{qos}.svg"));
        let out = run(loadgen()
            .args([
                "--plain",
                "--target",
                &target,
                "--devices",
                "10",
                "--rate",
                "2000",
            ])
            .args([
                "--duration",
                "1",
                "--qos",
                qos,
                "--mqtt-version",
                version,
                "--quiet",
            ])
            .args(["--payload-size", "150", "--source-addrs", "3"])
            .arg("--json")
            .arg(&json)
            .arg("--plot")
            .arg(&svg));
        assert_eq!(out.status.code(), Some(0));
        let r = report(&json);
        assert_eq!(r["sent"], 2000, "{r}");
        assert_eq!(r["mean_payload_bytes"], 150.0);
        if qos != "0" {
            assert_eq!(r["acked"], 2000, "{r}");
            assert_eq!(r["lost"], 0);
        }
        assert!(std::fs::read_to_string(&svg).unwrap().contains("</svg>"));
    }
    // Idle mode: connections held with PINGREQ.
    let json = tmp.path().join("idle.json");
    let out = run(loadgen()
        .args([
            "--plain",
            "--idle",
            "--target",
            &target,
            "--devices",
            "50",
            "--duration",
            "3",
        ])
        .args(["--keep-alive", "1", "--quiet"])
        .arg("--json")
        .arg(&json));
    assert_eq!(out.status.code(), Some(0));
    let r = report(&json);
    assert_eq!(r["mode"], "idle");
    assert_eq!(r["connect"]["connected"], 50);
    assert_eq!(r["connect"]["stayed_up"], 50, "{r}");
}

/// A scripted MQTT 5 broker: accepts connections, answers CONNACK, and answers each
/// PUBLISH with PUBACK `reason` (or not at all when `None`).
fn scripted_broker(reason: Option<ReasonCode>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    let n = match stream.read(&mut tmp) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&tmp[..n]);
                    let mut out = Vec::new();
                    loop {
                        let (len, reply) = match mqtt::decode(&buf, Protocol::V5, 1 << 20) {
                            Ok(Decoded::Packet { packet, len }) => (
                                len,
                                match packet {
                                    Packet::Connect(_) => Some(vec![0x20, 3, 0, 0, 0]),
                                    Packet::Publish(p) => reason.map(|r| {
                                        let mut v = Vec::new();
                                        mqtt::encode_puback_reason(p.pkid, r, Protocol::V5, &mut v)
                                            .unwrap();
                                        v
                                    }),
                                    Packet::PingReq => Some(vec![0xD0, 0]),
                                    _ => None,
                                },
                            ),
                            Ok(Decoded::NeedMore { .. }) => break,
                            Err(_) => return,
                        };
                        buf.drain(..len);
                        out.extend(reply.unwrap_or_default());
                    }
                    if !out.is_empty() && stream.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn refusals_are_counted_and_do_not_fail_the_run() {
    let port = scripted_broker(Some(ReasonCode::QuotaExceeded));
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("r.json");
    let out = run(loadgen()
        .args([
            "--plain",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--devices",
            "4",
        ])
        .args([
            "--messages",
            "100",
            "--rate",
            "1000",
            "--quiet",
            "--fail-on-loss",
        ])
        .arg("--json")
        .arg(&json));
    assert_eq!(out.status.code(), Some(0));
    let r = report(&json);
    assert_eq!(r["sent"], 100);
    assert_eq!(r["refused"], 100, "{r}");
    assert_eq!(r["acked"], 0);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["refused_reasons"]["0x97"], 100);
}

#[test]
fn unacknowledged_messages_are_lost_and_fail_on_loss_exits_2() {
    let port = scripted_broker(None);
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("r.json");
    let out = run(loadgen()
        .args([
            "--plain",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--devices",
            "2",
        ])
        .args([
            "--messages",
            "10",
            "--rate",
            "1000",
            "--drain-timeout",
            "0.3",
            "--quiet",
        ])
        .arg("--fail-on-loss")
        .arg("--json")
        .arg(&json));
    assert_eq!(out.status.code(), Some(2));
    let r = report(&json);
    assert_eq!(r["sent"], 10);
    assert_eq!(r["lost"], 10, "{r}");
}

#[test]
fn setup_errors_exit_1() {
    // No devices directory without --plain.
    let out = run(loadgen().args(["--target", "127.0.0.1:1", "--quiet"]));
    assert_eq!(out.status.code(), Some(1));
    // Nothing listening: no connection succeeds.
    let port = free_port();
    let out = run(loadgen()
        .args([
            "--plain",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--devices",
            "2",
        ])
        .args(["--messages", "10", "--quiet"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect_refused"));
    // Unknown scenario label.
    let out = run(loadgen().args(["--plain", "--scenario", "spike=1", "--quiet"]));
    assert_eq!(out.status.code(), Some(1));
}

/// Runs openssl with arguments in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl {args:?}");
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=loadgen-test-ca",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    for (name, cn) in [("server", "/CN=localhost"), ("client", "/CN=dev-000000")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", cn]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        );
    }
}

#[test]
fn tls_and_mutual_tls_against_mosquitto() {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let has_openssl = Command::new("openssl").arg("version").output().is_ok();
    let (Some(bin), true) = (bin, has_openssl) else {
        eprintln!("NOTE: mosquitto or openssl not installed; skipping the TLS smoke test");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_pki(dir);
    // Mosquitto drops privileges: let it read the files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let (tls_port, mtls_port) = (free_port(), free_port());
    let d = dir.display();
    std::fs::write(
        dir.join("m.conf"),
        format!(
            "per_listener_settings true\n\
             listener {tls_port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
             cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             listener {mtls_port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
             cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\npersistence false\n"
        ),
    )
    .unwrap();
    let _m = Guard(
        Command::new(bin)
            .arg("-c")
            .arg(dir.join("m.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", mtls_port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = |port: u16, json: &Path| {
        let mut c = loadgen();
        c.args(["--plain", "--tls", "--target", &format!("127.0.0.1:{port}")])
            .args([
                "--devices",
                "4",
                "--messages",
                "200",
                "--rate",
                "1000",
                "--quiet",
            ])
            .arg("--ca")
            .arg(dir.join("ca.pem"))
            .arg("--json")
            .arg(json);
        c
    };
    let json = dir.join("tls.json");
    let out = run(&mut base(tls_port, &json));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(report(&json)["acked"], 200);
    // Mutual TLS: without a client certificate nothing connects; with one, all do.
    let json = dir.join("nocert.json");
    let out = run(&mut base(mtls_port, &json));
    assert_eq!(out.status.code(), Some(1));
    let json = dir.join("mtls.json");
    let out = run(base(mtls_port, &json)
        .arg("--cert")
        .arg(dir.join("client.pem"))
        .arg("--key")
        .arg(dir.join("client.key")));
    assert_eq!(out.status.code(), Some(0));
    let r = report(&json);
    assert_eq!(r["acked"], 200, "{r}");
    assert_eq!(r["config"]["tls"], true);
}
