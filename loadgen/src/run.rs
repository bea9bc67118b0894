//! Orchestration: prepare devices, start one glommio executor per thread, sign, connect,
//! run the timed phase in lock-step, print progress, merge and report.

use crate::cli::Args;
use crate::conn::{self, Ctx, DevicePlan};
use crate::devices::{self, Device};
use crate::net;
use crate::payload::{self, BuildSpec};
use crate::report::{Report, RunConfig};
use crate::scenario::{self, DeviceScenario, ScenarioConfig};
use crate::schedule;
use crate::stats::{Progress, Stats};
use glommio::{LocalExecutorBuilder, Placement};
use ingestd_codec::envelope::telemetry_topic;
use rand::SeedableRng;
use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// glommio locks this much memory per executor for io_uring buffers; `ulimit -l` is 8 MiB
/// on the target machines, so keep it small (the default is 10 MiB).
pub const IO_MEMORY_BYTES: usize = 512 << 10;

/// Outcome of a run.
pub struct Outcome {
    pub report: Report,
    pub stats: Stats,
    /// Device ids by index, for `--acked-out`.
    pub device_ids: Vec<String>,
}

/// A point every thread reaches before the main thread lets them all go.
#[derive(Default)]
struct Gate {
    arrived: AtomicUsize,
    abort: AtomicBool,
    go: Mutex<Option<Instant>>,
}

impl Gate {
    fn arrive(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
    }

    /// Main thread: waits for `n` arrivals (or a thread's failure), then opens at `at`.
    fn open_when(&self, n: usize, lead: Duration, running: &AtomicUsize) -> Option<Instant> {
        while self.arrived.load(Ordering::SeqCst) < n {
            if running.load(Ordering::SeqCst) + self.arrived.load(Ordering::SeqCst) < n {
                // A thread ended before arriving.
                self.abort.store(true, Ordering::SeqCst);
            }
            if self.abort.load(Ordering::SeqCst) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = Instant::now() + lead;
        if let Ok(mut go) = self.go.lock() {
            *go = Some(at);
        }
        Some(at)
    }

    /// Executor side: polls until opened (None: aborted).
    async fn wait(&self) -> Option<Instant> {
        loop {
            if self.abort.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(at) = self.go.lock().ok().and_then(|g| *g) {
                let left = at.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    glommio::timer::sleep(left).await;
                }
                return Some(at);
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
}

struct Plan {
    args: Arc<Args>,
    target: SocketAddr,
    schedule: schedule::Schedule,
    total_messages: u64,
    duration: Option<f64>,
    seq_base: u64,
    seed: u64,
    threads: usize,
    ts_base_ms: u64,
    tls: Option<net::TlsSetup>,
    connect_gate: Gate,
    start_gate: Gate,
    progress: Arc<Progress>,
    /// Threads still running (for gate failure detection and the progress loop).
    running: AtomicUsize,
}

fn resolve(target: &str) -> Result<SocketAddr, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve --target {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("--target {target} resolves to nothing"))
}

/// Runs the whole thing. `Err` is a setup error (exit code 1).
pub fn run(args: Args) -> Result<Outcome, String> {
    let target = resolve(&args.target)?;
    let mix = args.mix()?;
    let schedule = args.schedule()?;
    let duration = args.duration_s();
    if let Some(d) = duration {
        if !d.is_finite() || d <= 0.0 {
            return Err("--duration must be > 0".to_string());
        }
    }
    if args.max_inflight == 0 {
        return Err("--max-inflight must be >= 1".to_string());
    }
    if args.source_addrs == 0 {
        return Err("--source-addrs must be >= 1".to_string());
    }
    let devices: Vec<Device> = match (&args.devices_dir, args.plain) {
        (Some(dir), _) => devices::load(dir, args.devices)?,
        (None, true) => devices::anonymous(args.devices.unwrap_or(100)),
        (None, false) => {
            return Err("--devices-dir DIR is required (or --plain for unsigned payloads)".into())
        }
    };
    if devices.is_empty() {
        return Err("no devices".to_string());
    }
    let places = match &args.devices_dir {
        Some(dir) => devices::load_places(dir)?,
        None => None,
    };
    let infos = devices::infos(
        devices.iter().map(|d| d.id.as_str()),
        places.as_ref(),
        args.devices_per_location,
        args.locations_per_region,
    );
    let total_messages = if args.idle {
        0
    } else {
        match (args.messages, duration) {
            (Some(m), Some(d)) => m.min(schedule.due(d)),
            (Some(m), None) => m,
            (None, Some(d)) => schedule.due(d),
            (None, None) => 0,
        }
    };
    if !args.idle && total_messages == 0 {
        return Err("the schedule offers no messages (rate × duration is 0)".to_string());
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, devices.len());
    let tls = if args.tls {
        let host = args.server_name.clone().unwrap_or_else(|| {
            args.target
                .rsplit_once(':')
                .map_or(args.target.clone(), |(h, _)| {
                    h.trim_matches(['[', ']']).to_string()
                })
        });
        Some(net::tls_setup(
            args.ca.as_deref(),
            args.cert.as_deref(),
            args.key.as_deref(),
            &host,
        )?)
    } else {
        None
    };
    let connect_secs = if args.connect_rate > 0.0 {
        devices.len() as f64 / args.connect_rate
    } else {
        0.0
    };
    let signing_secs = if args.plain || args.idle {
        0.0
    } else {
        predicted_signing_secs(total_messages, threads)
    };
    let lead_secs = signing_secs + connect_secs;
    let planned_start = Instant::now() + Duration::from_secs_f64(lead_secs);
    let seq_base = args.seq_base.unwrap_or_else(payload::seq_base_now);
    let seed = args.seed.unwrap_or(seq_base);
    let device_ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let scenario_config = ScenarioConfig {
        seed,
        day_ms: args.day_ms()?,
        warmup_readings: args.warmup_readings,
        onset_span_readings: args.onset_span_readings,
    };
    let scenarios = scenario::build(&scenario_config, &mix, &infos);
    if let Some(path) = &args.truth {
        scenario::write_truth_file(path, &scenarios, seq_base)?;
    }
    let plan = Arc::new(Plan {
        target,
        schedule: schedule.clone(),
        total_messages,
        duration,
        seq_base,
        seed,
        threads,
        // Messages are stamped with their planned send time: the planned start of the timed
        // phase (after signing and connecting) plus their offset in the schedule. The timed
        // phase does not start before it, so device time tracks real time however long a
        // big run takes to sign (the server refuses skew beyond a few minutes).
        ts_base_ms: payload::now_unix_ms() + (lead_secs * 1000.0) as u64,
        tls,
        connect_gate: Gate::default(),
        start_gate: Gate::default(),
        progress: Arc::new(Progress::default()),
        running: AtomicUsize::new(threads),
        args: Arc::new(args.clone()),
    });
    let total_devices = devices.len();
    let mut per_thread: Vec<Vec<(usize, Device, DeviceScenario)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for (i, (d, scenario)) in devices.into_iter().zip(scenarios).enumerate() {
        if let Some(bucket) = per_thread.get_mut(i % threads) {
            bucket.push((i, d, scenario));
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    for (t, devs) in per_thread.into_iter().enumerate() {
        let placement = if args.pin {
            Placement::Fixed(t % cores)
        } else {
            Placement::Unbound
        };
        let plan = Arc::clone(&plan);
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("loadgen-{t}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                let result = thread_main(Arc::clone(&plan), t, total_devices, devs).await;
                plan.running.fetch_sub(1, Ordering::SeqCst);
                result
            })
            .map_err(|e| format!("cannot start executor {t}: {e}"))?;
        handles.push(handle);
    }
    let quiet = args.quiet;
    // Signing → connect phase.
    let signing = Instant::now();
    if !quiet {
        eprintln!(
            "loadgen: preparing {total_messages} messages for {total_devices} devices on {threads} threads ({}); timed phase planned in {lead_secs:.1} s",
            if args.pin { "Placement::Fixed" } else { "Placement::Unbound" }
        );
    }
    let connect_open =
        plan.connect_gate
            .open_when(threads, Duration::from_millis(5), &plan.running);
    if connect_open.is_some() && !quiet {
        eprintln!(
            "loadgen: signed in {:.2} s; connecting {total_devices} devices{}",
            signing.elapsed().as_secs_f64(),
            if args.connect_rate > 0.0 {
                format!(" at {}/s", args.connect_rate)
            } else {
                String::new()
            }
        );
    }
    let started = if connect_open.is_some() {
        let lead = planned_start
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(20));
        plan.start_gate.open_when(threads, lead, &plan.running)
    } else {
        plan.start_gate.abort.store(true, Ordering::SeqCst);
        None
    };
    if started.is_some() && !quiet {
        eprintln!(
            "loadgen: {} of {} connected; {} phase starts",
            Progress::get(&plan.progress.connected),
            total_devices,
            if args.idle { "idle" } else { "timed" }
        );
    }
    if let Some(t0) = started {
        progress_loop(&plan, t0, quiet);
    }
    let mut merged = Stats::default();
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(stats)) => merged.merge(stats),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("executor failed: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if merged.connected == 0 {
        let why = merged
            .errors
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!("no connection succeeded ({why})"));
    }
    let offered = match duration {
        Some(d) => total_messages as f64 / d,
        None => schedule.rate_at(0.0),
    };
    let config = RunConfig {
        devices: total_devices,
        threads,
        placement: if args.pin { "fixed" } else { "unbound" }.to_string(),
        schedule: format!("{schedule:?}"),
        duration_s: duration,
        messages: args.messages,
        qos: args.qos,
        mqtt_version: args.mqtt_version.clone(),
        format: args.format.clone(),
        plain: args.plain,
        tls: args.tls,
        max_inflight: args.max_inflight,
        payload_size: args.payload_size,
        source_addrs: args.source_addrs,
        connect_rate: args.connect_rate,
        seq_base,
    };
    let report = Report::build(
        if args.idle { "idle" } else { "publish" },
        args.target.clone(),
        config,
        &merged,
        offered,
    );
    Ok(Outcome {
        report,
        stats: merged,
        device_ids,
    })
}

/// How long signing `messages` on `threads` threads will take, from the cost of a sample
/// measured here, with a margin: the planned start of the timed phase.
fn predicted_signing_secs(messages: u64, threads: usize) -> f64 {
    const SAMPLE: u32 = 500;
    let key = ingestd_codec::envelope::SigningKey::from_bytes(&[9; 32]);
    let readings = [ingestd_codec::envelope::Reading::new(
        ingestd_codec::envelope::Kind::Co2Ppm,
        420.0,
    )];
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for seq in 0..SAMPLE {
        out.clear();
        let _ = payload::sign_payload(
            &key,
            "devices/dev-000000/telemetry",
            "dev-000000",
            u64::from(seq),
            1,
            &readings,
            payload::Format::Binary,
            &mut scratch,
            &mut out,
        );
    }
    let per_message = started.elapsed().as_secs_f64() / f64::from(SAMPLE);
    // Frames are encoded and scenarios computed too, and the cores are shared: 1.5 ×.
    messages as f64 * per_message * 1.5 / threads.max(1) as f64
}

fn progress_loop(plan: &Plan, t0: Instant, quiet: bool) {
    let p = &plan.progress;
    let mut last = (0u64, 0u64);
    let mut next = t0 + Duration::from_secs(1);
    while plan.running.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(20));
        if Instant::now() < next {
            continue;
        }
        let secs = next.duration_since(t0).as_secs();
        next += Duration::from_secs(1);
        if quiet {
            continue;
        }
        let sent = Progress::get(&p.sent);
        let acked = Progress::get(&p.acked);
        let refused = Progress::get(&p.refused);
        eprintln!(
            "[{secs:>4}s] sent {sent} (+{}/s) acked {acked} (+{}/s) refused {refused} in flight {} conns {} closed {}",
            sent - last.0,
            acked - last.1,
            sent.saturating_sub(acked + refused),
            Progress::get(&p.connected),
            Progress::get(&p.closed),
        );
        last = (sent, acked);
    }
}

async fn thread_main(
    plan: Arc<Plan>,
    thread: usize,
    total_devices: usize,
    devs: Vec<(usize, Device, DeviceScenario)>,
) -> Result<Stats, String> {
    let args = &plan.args;
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        plan.seed ^ (thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let d = total_devices as u64;
    // 1. Sign every message of this thread's devices.
    let mut plans = Vec::with_capacity(devs.len());
    let mut stats = Stats::default();
    let prepared: Result<(), String> = (|| {
        for (i, dev, scenario) in devs {
            let i = i as u64;
            let budget = schedule::share(plan.total_messages, i, d);
            let topic = telemetry_topic(&args.topic_prefix, &dev.id);
            let turns = scenario.turns(budget, plan.seq_base);
            let label = scenario.label;
            let spec = BuildSpec {
                device_id: &dev.id,
                key: dev.key.as_ref(),
                topic: &topic,
                protocol: args.protocol(),
                qos: args.qos(),
                format: args.format(),
                payload_size: args.payload_size,
                plain: args.plain,
                ts_base_ms: plan.ts_base_ms,
            };
            let sched = &plan.schedule;
            let frames = payload::build_frames(&spec, &turns, &scenario, &mut rng, |k| {
                sched.planned_ms(k, i, d)
            })?;
            stats.payload_bytes += frames.payload_bytes;
            stats.payload_count += frames.len() as u64;
            *stats
                .scenario_devices
                .entry(label.name().to_string())
                .or_default() += 1;
            plans.push(DevicePlan {
                index: i,
                id: dev.id,
                key: dev.key,
                topic,
                label: label.name(),
                turns,
                frames,
            });
        }
        Ok(())
    })();
    if let Err(e) = prepared {
        plan.connect_gate.abort.store(true, Ordering::SeqCst);
        plan.start_gate.abort.store(true, Ordering::SeqCst);
        return Err(e);
    }
    plan.connect_gate.arrive();
    let Some(epoch) = plan.connect_gate.wait().await else {
        return Err("aborted".to_string());
    };
    let ctx = Rc::new(Ctx {
        target: plan.target,
        protocol: args.protocol(),
        qos: args.qos(),
        plain: args.plain,
        tls: plan.tls.clone(),
        keep_alive: args.keep_alive,
        max_inflight: args.max_inflight,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        source_addrs: args.source_addrs,
        schedule: plan.schedule.clone(),
        total_devices: d,
        total_messages: plan.total_messages,
        duration: plan.duration,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout.max(0.0)),
        keep_acked: args.acked_out.is_some(),
        clone_source: args.clone_source_addr,
        stats: RefCell::new(stats),
        progress: Arc::clone(&plan.progress),
        t0: Cell::new(epoch),
        connect_epoch: Cell::new(epoch),
    });
    // 2. Connect at the ramp rate (this thread's share of it).
    let per_thread_rate = if args.connect_rate > 0.0 {
        args.connect_rate / plan.threads as f64
    } else {
        0.0
    };
    let mut tasks = Vec::with_capacity(plans.len());
    for (j, dev) in plans.into_iter().enumerate() {
        let ctx = Rc::clone(&ctx);
        let at = if per_thread_rate > 0.0 {
            epoch + Duration::from_secs_f64(j as f64 / per_thread_rate)
        } else {
            epoch
        };
        let conn_no = dev.index as usize;
        tasks.push(glommio::spawn_local(async move {
            let left = at.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                glommio::timer::sleep(left).await;
            }
            ctx.stats.borrow_mut().connect_attempts += 1;
            match conn::connect(&ctx, &dev, net::source_addr(conn_no, ctx.source_addrs)).await {
                Ok(session) => {
                    let mut st = ctx.stats.borrow_mut();
                    st.connected += 1;
                    st.connect_span_s = st
                        .connect_span_s
                        .max(ctx.connect_epoch.get().elapsed().as_secs_f64());
                    Progress::add(&ctx.progress.connected, 1);
                    (dev, Some(session))
                }
                Err(kind) => {
                    ctx.stats.borrow_mut().error(&kind);
                    Progress::add(&ctx.progress.connect_failed, 1);
                    (dev, None)
                }
            }
        }));
    }
    let mut connected = Vec::with_capacity(tasks.len());
    for t in tasks {
        connected.push(t.await);
    }
    plan.start_gate.arrive();
    let Some(t0) = plan.start_gate.wait().await else {
        return Err("aborted".to_string());
    };
    ctx.t0.set(t0);
    // 3. Timed (or idle) phase.
    let idle_end = t0 + Duration::from_secs_f64(plan.duration.unwrap_or(10.0));
    let idle = args.idle;
    let mut runs = Vec::with_capacity(connected.len());
    for (dev, session) in connected {
        match session {
            Some(session) => {
                let ctx = Rc::clone(&ctx);
                runs.push(glommio::spawn_local(async move {
                    if idle {
                        conn::idle(ctx, dev, session, idle_end).await;
                    } else {
                        conn::publish(ctx, dev, session).await;
                    }
                }));
            }
            None => ctx.stats.borrow_mut().unsent += dev.frames.len() as u64,
        }
    }
    for r in runs {
        r.await;
    }
    let stats = std::mem::take(&mut *ctx.stats.borrow_mut());
    Ok(stats)
}
