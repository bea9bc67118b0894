//! A full disk is an operating condition: on a small filesystem the test creates (a tmpfs,
//! so the test must run as root; it says so and passes trivially otherwise), the server under
//! load fills it, stops acknowledging and reports not ready, keeps /healthz and the metrics
//! up, and resumes by itself once space is freed, with every acknowledged reading in the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ingestd_codec::mqtt::{Protocol, QoS, ReasonCode};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount {
    path: PathBuf,
}

impl Mount {
    fn tmpfs(path: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| Mount {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Publishes QoS 1 readings with `window` in flight until `stop`; records each
/// acknowledged (device, seq). Waits as long as it takes for acknowledgements: a full disk
/// holds them back for a while.
fn device_loop(
    server: std::net::SocketAddr,
    fleet: &Fleet,
    device: &str,
    window: usize,
    stop: &AtomicBool,
    acked: &Mutex<Vec<(String, u64)>>,
) {
    let (mut client, reply) = Client::connect(server, fleet, device, Protocol::V311);
    assert_eq!(reply, Reply::ConnAck(ReasonCode::Success, false));
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let topic = topic(device);
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut seq = 1;
    let mut pkid: u16 = 0;
    loop {
        while !stop.load(Ordering::Relaxed) && in_flight.len() < window {
            pkid = pkid.wrapping_add(1).max(1);
            client.publish(
                &topic,
                &fleet.payload(device, seq, false),
                QoS::AtLeastOnce,
                pkid,
            );
            in_flight.insert(pkid, seq);
            seq += 1;
        }
        if in_flight.is_empty() {
            return;
        }
        match client.read() {
            Reply::PubAck(id, ReasonCode::Success) => {
                if let Some(seq) = in_flight.remove(&id) {
                    acked.lock().unwrap().push((device.to_string(), seq));
                }
            }
            Reply::Closed | Reply::Disconnect(_) => return,
            other => panic!("{device}: unexpected {other:?}"),
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn readyz(server: &Server) -> u16 {
    http_get(server.metrics, "/readyz").map_or(0, |(code, _)| code)
}

#[test]
fn a_full_disk_pauses_the_shard_and_it_resumes_when_space_returns() {
    let fleet = Arc::new(Fleet::provision(8));
    let small = fleet.dir.path().join("small");
    let Some(_mount) = Mount::tmpfs(&small, "32m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (the test needs root)");
        return;
    };
    let data = small.join("data");
    let server = Server::start(&fleet, &data, &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let addr = server.addr();
    let devices: Vec<_> = (0..8)
        .map(|i| {
            let (fleet, stop, acked) = (Arc::clone(&fleet), Arc::clone(&stop), Arc::clone(&acked));
            std::thread::spawn(move || {
                device_loop(addr, &fleet, &fleet.device(i), 32, &stop, &acked);
            })
        })
        .collect();
    wait_for("readings acknowledged", Duration::from_secs(20), || {
        acked.lock().unwrap().len() > 200
    });

    // Fill the disk: whatever the log has not preallocated is gone.
    let mut filler = std::fs::File::create(small.join("filler")).unwrap();
    let chunk = vec![0xA5u8; 64 << 10];
    while filler.write_all(&chunk).is_ok() {}
    // Leave less than a segment: commits past the active segment's end still fit, creating
    // the next segment does not (the case that stopped the whole server before).
    let filled = filler.metadata().unwrap().len();
    filler.set_len(filled.saturating_sub(192 << 10)).unwrap();
    let _ = filler.sync_all();

    // The shard that needs a new segment first stops: not ready, with a metric.
    wait_for(
        "/readyz 503 after the disk filled",
        Duration::from_secs(120),
        || readyz(&server) == 503,
    );
    assert!(server.metric("ingestd_log_disk_full", "") >= 1);
    assert_eq!(http_get(server.metrics, "/healthz").unwrap().0, 200);
    assert!(server
        .metrics_text()
        .contains("ingestd_log_disk_free_bytes{shard=\"0\"}"));
    assert_eq!(
        http_get(server.metrics, "/readyz").unwrap().1,
        "disk full\n"
    );

    // Nothing acknowledged that is not in the log, while the disk is full.
    std::thread::sleep(Duration::from_secs(2));
    let during: Vec<_> = acked.lock().unwrap().clone();
    let stored: HashSet<_> = readings(&data).into_iter().collect();
    let missing: Vec<_> = during.iter().filter(|a| !stored.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged readings not in the log while the disk is full, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // The process is still there, serving its endpoints.
    assert_eq!(http_get(server.metrics, "/healthz").unwrap().0, 200);

    // Space returns: the shard resumes by itself.
    drop(filler);
    std::fs::remove_file(small.join("filler")).unwrap();
    wait_for(
        "/readyz 200 after space returned",
        Duration::from_secs(60),
        || readyz(&server) == 200,
    );
    assert_eq!(server.metric("ingestd_log_disk_full", ""), 0);
    let resumed_from = acked.lock().unwrap().len();
    wait_for(
        "acknowledgements after space returned",
        Duration::from_secs(30),
        || acked.lock().unwrap().len() > resumed_from + 200,
    );

    stop.store(true, Ordering::Relaxed);
    for device in devices {
        device.join().unwrap();
    }
    let mut server = server;
    assert!(server.terminate().success());
    let acked = acked.lock().unwrap().clone();
    let stored: HashSet<_> = readings(&data).into_iter().collect();
    let missing: Vec<_> = acked.iter().filter(|a| !stored.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged readings missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}
