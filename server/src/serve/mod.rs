//! `ingestd serve`: the thread-per-core ingestion server.
//!
//! One glommio executor per shard, each pinned to a core with its own SO_REUSEPORT
//! listener and its own durable log (see `shard`). This module starts the egress thread
//! (when sinks are configured), the metrics thread and the shards, restores the replay
//! windows from the durable log, reports readiness and liveness to systemd, reloads the
//! registry on SIGHUP, turns SIGTERM into a drain, and waits. docs/ARCHITECTURE.md has
//! the threads, tasks and queues.

mod conn;
mod durable;
pub mod handoff;
mod notify;
mod peers;
mod shard;
pub mod tls;

use crate::config::Config;
use crate::log::{self, ShardLog};
use crate::metrics;
use crate::registry::Registry;
use glommio::{LocalExecutorBuilder, Placement};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What every shard can reach: plain data and atomics, never locks on the message path.
pub struct Shared {
    pub shards: usize,
    pub metrics: Arc<metrics::Registry>,
    /// The device registry; replaced whole on SIGHUP. Read at CONNECT and when the
    /// generation changes, never per message.
    registry: std::sync::RwLock<Arc<Registry>>,
    /// Bumped at every registry replacement; each shard's ticker then re-checks its
    /// connected devices (a revoked device is disconnected).
    pub registry_generation: AtomicU64,
    /// Set by SIGTERM/SIGINT (or a failed log): every shard drains and exits.
    pub stop: Arc<AtomicBool>,
    /// A shard's log failed: exit non-zero so the supervisor restarts and recovery runs.
    pub failed: AtomicBool,
    /// Each shard's ticker increments its counter; the watchdog requires all to move.
    pub heartbeats: Vec<AtomicU64>,
}

impl Shared {
    /// The device registry (read at CONNECT, never per message).
    pub fn registry(&self) -> Arc<Registry> {
        // A poisoned lock still holds a whole registry (it is only ever replaced whole).
        let guard = self
            .registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&guard)
    }

    /// Replaces the registry and tells the shards.
    pub fn replace_registry(&self, registry: Registry) {
        let mut guard = self
            .registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Arc::new(registry);
        self.registry_generation.fetch_add(1, Ordering::Release);
    }
}

/// Why the server could not start or did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("shard {shard}: {message}")]
    Shard { shard: usize, message: String },
    #[error("{0}")]
    Egress(String),
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("a durable log failed an fsync; exited without acknowledging what it could not prove written")]
    LogFailed,
}

/// Wall-clock milliseconds since the Unix epoch: record timestamps and freshness checks.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Locked memory each shard's executor asks for its io_uring buffers. Small, so several
/// shards fit in the 8 MiB default `ulimit -l`; the unit raises the limit anyway.
const IO_MEMORY_BYTES: usize = 512 << 10;

/// Runs the server until SIGTERM/SIGINT (or `stop` is set) and every shard has drained.
pub fn run(config: Config, registry: Registry) -> Result<(), ServeError> {
    run_with_stop(config, registry, Arc::new(AtomicBool::new(false)))
}

/// [`run`] with the stop flag supplied (tests stop the server without signals).
pub fn run_with_stop(
    config: Config,
    registry: Registry,
    stop: Arc<AtomicBool>,
) -> Result<(), ServeError> {
    let shards = config.shard_count();
    let config = Arc::new(config);
    let mut metrics_registry = metrics::Registry::new(shards);
    let egress = crate::egress::Egress::start(&config, shards, &mut metrics_registry)
        .map_err(|error| ServeError::Egress(error.to_string()))?;
    let (egress, mut links) = match egress {
        Some((egress, links)) => (Some(egress), links.into_iter().map(Some).collect()),
        None => (None, (0..shards).map(|_| None).collect::<Vec<_>>()),
    };
    let metrics = Arc::new(metrics_registry);
    let shared = Arc::new(Shared {
        shards,
        metrics: Arc::clone(&metrics),
        registry: std::sync::RwLock::new(Arc::new(registry)),
        registry_generation: AtomicU64::new(0),
        stop: Arc::clone(&stop),
        failed: AtomicBool::new(false),
        heartbeats: (0..shards).map(|_| AtomicU64::new(0)).collect(),
    });
    if config.postgres_registry() {
        // Registry changes in PostgreSQL reach the shards through LISTEN/NOTIFY: the
        // watcher replaces the registry, each shard applies it within a tick.
        let handle = egress.as_ref().map(|e| e.handle().clone());
        let shared = Arc::clone(&shared);
        let on_change: crate::egress::RegistryCallback = Arc::new(move |registry: Registry| {
            tracing::info!(
                devices = registry.len(),
                "device registry changed in PostgreSQL"
            );
            shared.replace_registry(registry);
        });
        if let Some(handle) = handle {
            handle.spawn(crate::egress::postgres::watch_registry(
                config.postgres.clone(),
                on_change,
            ));
        }
    }
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(ServeError::Signal)?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .map_err(ServeError::Signal)?;
    if !config.metrics.listen.is_empty() {
        let listener = std::net::TcpListener::bind(&config.metrics.listen).map_err(|source| {
            ServeError::Metrics {
                addr: config.metrics.listen.clone(),
                source,
            }
        })?;
        metrics::serve_http(listener, Arc::clone(&metrics)).map_err(|source| {
            ServeError::Metrics {
                addr: config.metrics.listen.clone(),
                source,
            }
        })?;
    }

    // Replay protection and remembered credentials survive restarts, and changes of the
    // shard count: each device's exact window and the nonces still inside their window,
    // from the checkpoints and the log after them (`log::rebuild`).
    let mut starts = log::rebuild::rebuild(
        &config.data_dir,
        shards,
        now_ms(),
        config.auth.credential_window_ms,
    )
    .map_err(|e| ServeError::Shard {
        shard: 0,
        message: format!("reading the durable log: {e}"),
    })?;
    // Fraud scoring continues where it stopped: device states and models from the fraud
    // checkpoints and the log after them (`fraud::rebuild`).
    if let Some(fraud) = config.fraud_engine() {
        let fraud_starts = crate::fraud::rebuild::rebuild(&config.data_dir, shards, &fraud)
            .map_err(|e| ServeError::Shard {
                shard: 0,
                message: format!("replaying the durable log for fraud scoring: {e}"),
            })?;
        for (start, fraud) in starts.iter_mut().zip(fraud_starts) {
            start.fraud = fraud;
        }
    }

    let mut rings = handoff::Rings::new(shards, config.mqtt.handoff_ring_connections_max);
    // Peers summaries cross shards only when scoring is on.
    let mut peer_links: Vec<Option<peers::PeerLinks>> = if config.fraud_engine().is_some() {
        peers::mesh(
            shards,
            Duration::from_millis(config.fraud.peers_exchange_interval_ms),
        )
        .into_iter()
        .map(Some)
        .collect()
    } else {
        (0..shards).map(|_| None).collect()
    };
    let cpus = allowed_cpus();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
    let mut handles = Vec::with_capacity(shards);
    for id in 0..shards {
        let producers = std::mem::take(&mut rings.producers[id]);
        let consumers: Vec<_> = std::mem::take(&mut rings.consumers[id])
            .into_iter()
            .flatten()
            .collect();
        let config = Arc::clone(&config);
        let shared = Arc::clone(&shared);
        let ready = ready_tx.clone();
        let start = std::mem::take(&mut starts[id]);
        let link = links[id].take();
        let peers = peer_links[id].take();
        let spawned = LocalExecutorBuilder::new(Placement::Fixed(shard_cpu(&cpus, id)))
            .name(&format!("ingestd-shard-{id}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || {
                shard_main(
                    id,
                    config,
                    shared,
                    Wiring {
                        producers,
                        consumers,
                        peers,
                        link,
                    },
                    start,
                    ready,
                )
            });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                stop.store(true, Ordering::Relaxed);
                return Err(ServeError::Shard {
                    shard: id,
                    message: format!("cannot start executor: {error}"),
                });
            }
        }
    }
    drop(ready_tx);
    let mut first_error = None;
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(message)) => {
                first_error.get_or_insert(message);
            }
            Err(_) => {
                first_error.get_or_insert("a shard exited during start-up".to_string());
            }
        }
    }
    if let Some(message) = first_error {
        stop.store(true, Ordering::Relaxed);
        for handle in handles {
            let _ = handle.join();
        }
        return Err(ServeError::Shard { shard: 0, message });
    }
    metrics.health.ready.store(true, Ordering::Relaxed);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(shards, listen = %config.mqtt.listen, "ingestd ready");

    let watchdog_us = sd_notify::watchdog_enabled();
    let mut last_beats: Vec<u64> = vec![0; shards];
    let mut last_watchdog = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if reload.swap(false, Ordering::Relaxed) && !config.postgres_registry() {
            // SIGHUP: read the registry file again; a file that does not validate leaves
            // the running registry as it was.
            match Registry::load(&config.registry.path) {
                Ok(registry) => {
                    tracing::info!(devices = registry.len(), "device registry reloaded");
                    shared.replace_registry(registry);
                }
                Err(error) => {
                    tracing::error!(%error, "device registry not reloaded; keeping the previous one");
                }
            }
        }
        if let Some(interval) = watchdog_us {
            if last_watchdog.elapsed() >= interval / 2 {
                let beats: Vec<u64> = shared
                    .heartbeats
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                // Only a node whose every shard loop is turning is alive.
                if beats
                    .iter()
                    .zip(&last_beats)
                    .all(|(now, before)| now > before)
                {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                last_beats = beats;
                last_watchdog = std::time::Instant::now();
            }
        }
    }
    metrics.health.draining.store(true, Ordering::Relaxed);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("draining");
    for handle in handles {
        let _ = handle.join();
    }
    if let Some(egress) = egress {
        // The shards have committed and acknowledged everything: let the sinks take what
        // they can within the drain timeout; the rest waits in the log for the next start.
        egress.stop();
    }
    if shared.failed.load(Ordering::Relaxed) {
        return Err(ServeError::LogFailed);
    }
    tracing::info!("stopped");
    Ok(())
}

/// The CPUs this process may run on, ascending: its affinity mask, which `taskset`,
/// systemd's `CPUAffinity=` or a cpuset set. With no mask to read, every CPU.
fn allowed_cpus() -> Vec<usize> {
    let all = || (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => {
            let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
                .filter(|cpu| set.is_set(*cpu).unwrap_or(false))
                .collect();
            if cpus.is_empty() {
                all()
            } else {
                cpus
            }
        }
        Err(_) => all(),
    }
}

/// The CPU shard `shard` is pinned to: the allowed CPUs in turn, so a server confined to
/// CPUs 2 and 3 puts its shards there, never on a CPU outside its mask.
fn shard_cpu(allowed: &[usize], shard: usize) -> usize {
    allowed
        .get(shard % allowed.len().max(1))
        .copied()
        .unwrap_or(shard)
}

/// A shard's ends of the rings between cores and to the egress thread.
struct Wiring {
    producers: Vec<Option<rtrb::Producer<handoff::Handoff>>>,
    consumers: Vec<rtrb::Consumer<handoff::Handoff>>,
    peers: Option<peers::PeerLinks>,
    link: Option<crate::egress::ShardLink>,
}

async fn shard_main(
    id: usize,
    config: Arc<Config>,
    shared: Arc<Shared>,
    wiring: Wiring,
    start: log::rebuild::ShardStart,
    ready: mpsc::Sender<Result<usize, String>>,
) {
    let Wiring {
        producers,
        consumers,
        peers,
        link,
    } = wiring;
    let dir = log::shard_dir(&config.data_dir, id);
    // A crash can leave at most the commit in flight half-written; under a disk-full retry
    // that can be everything pending, so allow twice the back-pressure threshold.
    let torn_tail_bytes_max =
        2 * config.log.pending_bytes_max as u64 + crate::log::format::RECORD_BODY_BYTES_MAX as u64;
    let opened = ShardLog::open(&dir, config.log.segment_bytes_max, torn_tail_bytes_max).await;
    let (log, recovery) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let _ = ready.send(Err(format!("shard {id}: durable log: {error}")));
            return;
        }
    };
    if recovery.truncated_bytes > 0 {
        tracing::warn!(shard = id, bytes = recovery.truncated_bytes, torn = ?recovery.torn, "cut a torn tail from the durable log");
    }
    let mut listeners = Vec::new();
    if !config.mqtt.listen.is_empty() {
        match glommio::net::TcpListener::bind(config.mqtt.listen.as_str()) {
            Ok(listener) => listeners.push((listener, None)),
            Err(error) => {
                let addr = &config.mqtt.listen;
                let _ = ready.send(Err(format!("config key `mqtt.listen` ({addr}): {error}")));
                return;
            }
        }
    }
    if !config.tls.listen.is_empty() {
        let tls = match tls::server_config(&config.tls) {
            Ok(tls) => tls,
            Err(message) => {
                let _ = ready.send(Err(message));
                return;
            }
        };
        match glommio::net::TcpListener::bind(config.tls.listen.as_str()) {
            Ok(listener) => listeners.push((listener, Some(tls))),
            Err(error) => {
                let addr = &config.tls.listen;
                let _ = ready.send(Err(format!("config key `tls.listen` ({addr}): {error}")));
                return;
            }
        }
    }
    let shard = Rc::new(shard::Shard::new(id, config, shared, log, producers, link));
    durable::restore(&shard, start, now_ms());
    let _ = ready.send(Ok(id));
    let mut tasks = vec![
        glommio::spawn_local(shard::ticker(Rc::clone(&shard), consumers, peers)),
        glommio::spawn_local(shard::timer(Rc::clone(&shard))),
        glommio::spawn_local(shard::committer(Rc::clone(&shard))),
    ];
    for (listener, tls) in listeners {
        tasks.push(glommio::spawn_local(shard::acceptor(
            Rc::clone(&shard),
            listener,
            tls,
        )));
    }
    let drain_timeout = std::time::Duration::from_millis(shard.config.shutdown.drain_timeout_ms);
    let finished = async {
        for task in tasks {
            task.await;
        }
    };
    // The backstop of a drain: a device that stops reading its socket must not keep the
    // process alive. Whatever was not acknowledged by then is resent by its device.
    let deadline = async {
        shard.stopping.wait().await;
        glommio::timer::sleep(drain_timeout + std::time::Duration::from_secs(1)).await;
        tracing::warn!(
            shard = id,
            "drain timeout: closing the remaining connections"
        );
    };
    let drained = futures_lite::future::or(
        async {
            finished.await;
            true
        },
        async {
            deadline.await;
            false
        },
    )
    .await;
    // A clean stop with everything committed: the next start scans no log.
    if drained
        && shard.log.pending_records() == 0
        && !shard.shared.metrics.health.failed.load(Ordering::Relaxed)
    {
        durable::write_checkpoint(&shard).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shards_take_the_allowed_cpus_in_turn() {
        let on = |allowed: &[usize], shards: usize| -> Vec<usize> {
            (0..shards).map(|shard| shard_cpu(allowed, shard)).collect()
        };
        assert_eq!(on(&[2, 3], 4), [2, 3, 2, 3]);
        assert_eq!(on(&[0, 1, 2, 3], 3), [0, 1, 2]);
        assert_eq!(on(&[5], 2), [5, 5]);
        assert_eq!(on(&[1, 4, 6], 3), [1, 4, 6]);
    }

    #[test]
    fn the_allowed_cpus_are_the_process_affinity_mask() {
        // The kernel's own account of this process's mask, e.g. "0-1" or "2,5-7".
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let list = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim();
        let mut expected = Vec::new();
        for part in list.split(',') {
            match part.split_once('-') {
                Some((a, b)) => expected.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
                None => expected.push(part.parse().unwrap()),
            }
        }
        assert_eq!(allowed_cpus(), expected);
    }
}
