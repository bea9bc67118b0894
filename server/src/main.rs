//! `ingestd`: the command line of the ingestion server.

use clap::{Parser, Subcommand};
use ingestd::config::{Config, PostgresConfig};
use ingestd::fraud::backtest;
use ingestd::log::{self, LogReader};
use ingestd::pg;
use ingestd::registry::{self, DeviceStatus, Registry};
use ingestd_shards::fraud::engine::FraudConfig;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ingestd",
    version,
    about = "Ingestion server for signed sensor telemetry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults when no config is given).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Validate a config file (and the registry it names) and print the effective config.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Device management.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Read the durable log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Fraud scoring for operators: score history, explain a device's verdict
    /// (docs/FRAUD.md).
    Fraud {
        #[command(subcommand)]
        command: FraudCommand,
    },
}

#[derive(Subcommand)]
enum FraudCommand {
    /// Score past readings with the live engine, deterministically, to tune thresholds.
    ///
    /// Runs the same scoring engine the shards run over a file of history and writes one
    /// CSV row per reading: same input and config, same output, byte for byte. The input
    /// format is detected from its first line:
    ///
    /// - The JSON lines of `ingestd log export`: every reading record is replayed exactly
    ///   as it was scored live (device and receive time, sequence, connection, readings
    ///   from the record; dead letters of `replayed` / `stale_sequence` sequences count as
    ///   clone evidence), in file order, one engine per shard. A summary on stderr says
    ///   how many recorded verdicts the replay reproduced.
    ///
    /// - A CSV whose header has `timestamp` and `value` columns, optionally `device`
    ///   (default "device") and `kind` (a name from docs/PROTOCOL.md section 6, default
    ///   --kind), in any order; other columns are ignored. timestamp: ms since the Unix
    ///   epoch, or RFC 3339 (2024-05-01T12:00:00.250Z). Rows of one device with the same
    ///   timestamp in a row form one envelope; its sequence number counts the device's
    ///   envelopes from 1 in row order, and its receive time is its timestamp.
    ///
    /// Output: `device,seq,timestamp,score,flagged,quarantined,detectors`, timestamp the
    /// device time in ms, score with 6 decimals, flagged/quarantined true or false,
    /// detectors joined by `|`. A line that cannot be read stops the run with an error
    /// naming it, and --out is left untouched. The peers detector needs the other devices'
    /// live values: its part of a score can differ from the live one.
    #[command(verbatim_doc_comment)]
    Backtest {
        /// The history: a CSV file or a `log export` file; `-` reads stdin.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the scores (CSV); `-` writes stdout.
        #[arg(long)]
        out: PathBuf,
        /// The server config whose [fraud] section sets weights, thresholds and per-kind
        /// parameters (default: the built-in defaults). Scoring runs even when
        /// fraud.enabled is false.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The kind of CSV rows without a kind column or cell.
        #[arg(long, default_value = "co2_ppm")]
        kind: String,
    },
    /// Explain a device's fraud state and why one of its readings scored what it did.
    ///
    /// Replays the node's durable log (every shard, in order) through a fresh engine and
    /// prints the device's current state (per series: kind, level, noise, readings learned;
    /// clock offset and pace; readings scored, warm or learning), then for the reading
    /// --seq (default: its last) the score, whether it is flagged or quarantined, and
    /// every detector that fired with its kind, strength, weight and meaning. The verdict
    /// recorded in the log for that reading is printed beside the replayed one, and
    /// whether they are equal (the peers part can differ: it depends on the other
    /// devices' live values).
    #[command(verbatim_doc_comment)]
    Explain {
        /// The device id.
        #[arg(long)]
        device: String,
        /// The reading's sequence number (default: the device's last reading in the log).
        #[arg(long)]
        seq: Option<u64>,
        /// The server config: its data_dir and [fraud] section (default: the built-in
        /// defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data directory (default: the config's data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Flags for the most common config overrides; they win over the file.
#[derive(clap::Args, Default)]
struct Overrides {
    /// Plain MQTT listener (mqtt.listen), e.g. 0.0.0.0:1883.
    #[arg(long)]
    listen: Option<String>,
    /// MQTT over TLS listener (tls.listen).
    #[arg(long)]
    tls_listen: Option<String>,
    /// Data directory (data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Device registry file (registry.path).
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Metrics and health endpoint (metrics.listen); empty disables it.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Number of shards (shards); 0 means one per core.
    #[arg(long)]
    shards: Option<usize>,
}

impl Overrides {
    fn apply(self, config: &mut Config) {
        if let Some(v) = self.listen {
            config.mqtt.listen = v;
        }
        if let Some(v) = self.tls_listen {
            config.tls.listen = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.registry {
            config.registry.path = v;
        }
        if let Some(v) = self.metrics_listen {
            config.metrics.listen = v;
        }
        if let Some(v) = self.shards {
            config.shards = v;
        }
    }
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Print a fresh CONNECT password for a provisioned device (valid for the server's
    /// credential window, default 5 minutes).
    Credential {
        /// secrets.json written by `devices provision`.
        #[arg(long)]
        secrets: PathBuf,
        #[arg(long)]
        device: String,
        /// The MQTT client id the device will use (the credential binds it).
        #[arg(long)]
        client_id: String,
    },
    /// Write a signed telemetry envelope (for mosquitto_pub -f, or a demo).
    Sign {
        #[arg(long)]
        secrets: PathBuf,
        #[arg(long)]
        device: String,
        #[arg(long)]
        seq: u64,
        /// Device timestamp in ms since the epoch (default: now).
        #[arg(long)]
        ts_ms: Option<u64>,
        /// A reading as kind=value, e.g. co2_ppm=415.5; repeat for more.
        #[arg(long = "reading", required = true)]
        readings: Vec<String>,
        /// binary or json.
        #[arg(long, default_value = "binary")]
        format: String,
        #[arg(long, default_value = "devices")]
        topic_prefix: String,
        /// Where to write the payload.
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate device keys and a registry (for a demo or a load generator).
    Provision {
        /// How many devices.
        #[arg(long)]
        count: usize,
        /// Directory to write registry.json and secrets.json into.
        #[arg(long)]
        out: PathBuf,
        /// Device ids are {prefix}{index:06}.
        #[arg(long, default_value = "dev-")]
        prefix: String,
    },
    /// Write a registry file's devices into PostgreSQL (insert or update by id); nodes
    /// following the PostgreSQL registry apply the changes at once.
    PgImport {
        /// PostgreSQL connection string (as postgres.url).
        #[arg(long, env = "INGESTD__POSTGRES__URL")]
        postgres: String,
        /// The registry file to import.
        #[arg(long, default_value = "devices/registry.json")]
        registry: PathBuf,
    },
    /// Set a device's status in PostgreSQL: revoking disconnects it on every node.
    PgStatus {
        /// PostgreSQL connection string (as postgres.url).
        #[arg(long, env = "INGESTD__POSTGRES__URL")]
        postgres: String,
        device_id: String,
        /// active or revoked.
        #[arg(value_parser = parse_status)]
        status: DeviceStatus,
    },
}

fn parse_status(text: &str) -> Result<DeviceStatus, String> {
    match text {
        "active" => Ok(DeviceStatus::Active),
        "revoked" => Ok(DeviceStatus::Revoked),
        other => Err(format!("{other:?} is not active or revoked")),
    }
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print records as JSON lines (summary form).
    Tail {
        #[command(flatten)]
        source: LogSource,
        /// Only the last N records per shard.
        #[arg(long, default_value_t = 20)]
        last: u64,
    },
    /// Write every record from an offset as JSON lines, payloads in hex.
    Export {
        #[command(flatten)]
        source: LogSource,
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

#[derive(clap::Args)]
struct LogSource {
    /// The server's data directory.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Only this shard (default: every shard found).
    #[arg(long)]
    shard: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve { config, overrides } => serve(config.as_deref(), overrides),
        Command::CheckConfig { config } => check_config(config.as_deref()),
        Command::Devices {
            command: DevicesCommand::Provision { count, out, prefix },
        } => provision(count, &out, &prefix),
        Command::Devices {
            command:
                DevicesCommand::Credential {
                    secrets,
                    device,
                    client_id,
                },
        } => credential(&secrets, &device, &client_id),
        Command::Devices {
            command:
                DevicesCommand::Sign {
                    secrets,
                    device,
                    seq,
                    ts_ms,
                    readings,
                    format,
                    topic_prefix,
                    out,
                },
        } => sign(
            &secrets,
            &device,
            seq,
            ts_ms,
            &readings,
            &format,
            &topic_prefix,
            &out,
        ),
        Command::Devices {
            command: DevicesCommand::PgImport { postgres, registry },
        } => pg_import(&postgres, &registry),
        Command::Devices {
            command:
                DevicesCommand::PgStatus {
                    postgres,
                    device_id,
                    status,
                },
        } => pg_status(&postgres, &device_id, status),
        Command::Log { command } => match command {
            LogCommand::Tail { source, last } => print_log(&source, Start::Last(last), false),
            LogCommand::Export { source, from } => print_log(&source, Start::From(from), true),
        },
        Command::Fraud { command } => match command {
            FraudCommand::Backtest {
                input,
                out,
                config,
                kind,
            } => fraud_backtest(&input, &out, config.as_deref(), &kind),
            FraudCommand::Explain {
                device,
                seq,
                config,
                data_dir,
            } => fraud_explain(&device, seq, config.as_deref(), data_dir),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ingestd: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("INGESTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load_config(path: Option<&Path>) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.to_string())
}

fn serve(path: Option<&Path>, overrides: Overrides) -> Result<(), String> {
    let mut config = load_config(path)?;
    overrides.apply(&mut config);
    config.validate().map_err(|e| e.to_string())?;
    let (registry, _) = load_registry(&config)?;
    if !config.auth.require_credential
        || config.validation.opaque_payloads
        || !config.validation.verify_signatures
    {
        tracing::warn!(
            require_credential = config.auth.require_credential,
            verify_signatures = config.validation.verify_signatures,
            opaque_payloads = config.validation.opaque_payloads,
            "BENCHMARK SETTINGS: devices are not fully authenticated or readings not verified"
        );
    }
    if registry.is_empty() {
        tracing::warn!(path = %config.registry.path.display(), "the device registry is empty: every CONNECT will be refused");
    }
    ingestd::serve::run(config, registry).map_err(|e| e.to_string())
}

fn load_secret(secrets: &Path, device: &str) -> Result<ed25519_dalek::SigningKey, String> {
    let text =
        std::fs::read_to_string(secrets).map_err(|e| format!("{}: {e}", secrets.display()))?;
    let file: registry::SecretsFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", secrets.display()))?;
    let secret = file
        .devices
        .iter()
        .find(|d| d.id == device)
        .ok_or_else(|| format!("device {device} is not in {}", secrets.display()))?;
    let seed = ingestd_codec::envelope::hex::decode_array::<32>(secret.secret_key.as_bytes(), true)
        .ok_or_else(|| format!("device {device}: secret_key is not 64 hex characters"))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

fn credential(secrets: &Path, device: &str, client_id: &str) -> Result<(), String> {
    let key = load_secret(secrets, device)?;
    let mut nonce = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let password = ingestd_codec::credential::sign_credential(
        device,
        client_id,
        &key,
        ingestd::serve::now_ms(),
        nonce,
    );
    println!("{password}");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn sign(
    secrets: &Path,
    device: &str,
    seq: u64,
    ts_ms: Option<u64>,
    readings: &[String],
    format: &str,
    topic_prefix: &str,
    out: &Path,
) -> Result<(), String> {
    use ingestd_codec::envelope::{self, Kind, Reading};
    let key = load_secret(secrets, device)?;
    let mut parsed = Vec::with_capacity(readings.len());
    for text in readings {
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| format!("--reading {text:?}: expected kind=value"))?;
        let kind = Kind::from_name(name)
            .ok_or_else(|| format!("--reading {text:?}: unknown kind {name:?}"))?;
        let value: f32 = value
            .parse()
            .map_err(|_| format!("--reading {text:?}: {value:?} is not a number"))?;
        parsed.push(Reading::new(kind, value));
    }
    let topic = envelope::telemetry_topic(topic_prefix, device);
    let mut scratch = Vec::new();
    let env = envelope::sign(
        &key,
        &topic,
        device,
        seq,
        ts_ms.unwrap_or_else(ingestd::serve::now_ms),
        &parsed,
        &mut scratch,
    )
    .map_err(|e| format!("cannot sign: {e}"))?;
    let mut payload = Vec::new();
    match format {
        "binary" => env.encode_binary(&mut payload),
        "json" => env.encode_json(&mut payload),
        other => return Err(format!("--format {other:?}: expected binary or json")),
    }
    std::fs::write(out, &payload).map_err(|e| format!("{}: {e}", out.display()))
}

/// The device registry the server would serve with, and where it came from: PostgreSQL
/// when `postgres.registry` is on (the file is not read), else the registry file.
fn load_registry(config: &Config) -> Result<(Registry, String), String> {
    if config.postgres_registry() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the PostgreSQL client: {e}"))?;
        let registry = runtime
            .block_on(ingestd::pg::load_registry(&config.postgres))
            .map_err(|e| {
                format!(
                    "loading the device registry from PostgreSQL (config key `postgres.url`): {e}"
                )
            })?;
        return Ok((registry, "PostgreSQL".to_string()));
    }
    let registry = Registry::load(&config.registry.path).map_err(|e| {
        format!(
            "{e} (config key `registry.path`; create one with `ingestd devices provision --count 10 --out {}`)",
            config
                .registry
                .path
                .parent()
                .map_or_else(|| ".".to_string(), |p| p.display().to_string())
        )
    })?;
    Ok((registry, config.registry.path.display().to_string()))
}

fn check_config(path: Option<&Path>) -> Result<(), String> {
    let config = load_config(path)?;
    let (registry, source) = load_registry(&config)?;
    let sinks: Vec<&str> = ingestd::egress::SinkId::ALL
        .iter()
        .filter(|sink| sink.configured(&config))
        .map(|sink| sink.name())
        .collect();
    println!(
        "config ok: {} shard(s), {} registered device(s) from {source}, data under {}, sinks: {}",
        config.shard_count(),
        registry.len(),
        config.data_dir.display(),
        if sinks.is_empty() {
            "the durable log only".to_string()
        } else {
            sinks.join(", ")
        }
    );
    Ok(())
}

fn provision(count: usize, out: &Path, prefix: &str) -> Result<(), String> {
    if !(1..=10_000_000).contains(&count) {
        return Err(format!("--count {count} is outside 1..=10000000"));
    }
    let (registry_file, secrets) = registry::provision(count, prefix, &mut rand::rngs::OsRng);
    // Refuse what the server would refuse, before writing anything.
    Registry::from_file(registry_file.clone()).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    write_json(&out.join("registry.json"), &registry_file, false)?;
    write_json(&out.join("secrets.json"), &secrets, true)?;
    println!(
        "provisioned {count} devices: {} (public), {} (secret keys, mode 0600)",
        out.join("registry.json").display(),
        out.join("secrets.json").display()
    );
    Ok(())
}

/// Runs one PostgreSQL helper to completion on a small runtime of its own.
fn block_on_postgres<T>(
    url: &str,
    job: impl AsyncFnOnce(PostgresConfig) -> Result<T, pg::PgError>,
) -> Result<T, String> {
    let config = PostgresConfig {
        url: url.to_string(),
        ..PostgresConfig::default()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?
        .block_on(job(config))
        .map_err(|e| e.to_string())
}

fn pg_import(url: &str, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: registry::RegistryFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let changed = block_on_postgres(url, async |config| {
        pg::import_registry(&config, &file).await
    })?;
    println!(
        "{} device(s) in {}: {changed} inserted or changed in PostgreSQL",
        file.devices.len(),
        path.display()
    );
    Ok(())
}

fn pg_status(url: &str, device_id: &str, status: DeviceStatus) -> Result<(), String> {
    let found = block_on_postgres(url, async |config| {
        pg::set_device_status(&config, device_id, status).await
    })?;
    if !found {
        return Err(format!(
            "device {device_id} is not in PostgreSQL's devices table"
        ));
    }
    println!("device {device_id}: {}", status_name(status));
    Ok(())
}

fn status_name(status: DeviceStatus) -> &'static str {
    match status {
        DeviceStatus::Active => "active",
        DeviceStatus::Revoked => "revoked",
    }
}

/// Writes `value` as pretty JSON and syncs it; `private` files are created mode 0600.
fn write_json(path: &Path, value: &impl serde::Serialize, private: bool) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

enum Start {
    From(u64),
    Last(u64),
}

fn print_log(source: &LogSource, start: Start, full: bool) -> Result<(), String> {
    let shards: Vec<usize> = match source.shard {
        Some(shard) => vec![shard],
        None => {
            let root = source.data_dir.join("log");
            let mut found = Vec::new();
            let entries =
                std::fs::read_dir(&root).map_err(|e| format!("{}: {e}", root.display()))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                if let Some(n) = name.to_str().and_then(|n| n.strip_prefix("shard-")) {
                    if let Ok(n) = n.parse() {
                        found.push(n);
                    }
                }
            }
            found.sort_unstable();
            found
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for shard in shards {
        let dir = log::shard_dir(&source.data_dir, shard);
        let from = match start {
            Start::From(offset) => offset,
            Start::Last(n) => {
                let count = LogReader::open(&dir, 0)
                    .map_err(|e| e.to_string())?
                    .take_while(Result::is_ok)
                    .count() as u64;
                count.saturating_sub(n)
            }
        };
        for entry in LogReader::open(&dir, from).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            let line = if full {
                serde_json::json!({
                    "shard": shard,
                    "offset": entry.offset,
                    "kind": entry.kind.name(),
                    "payload_hex": registry::hex(&entry.payload),
                })
            } else {
                serde_json::json!({
                    "shard": shard,
                    "offset": entry.offset,
                    "kind": entry.kind.name(),
                    "bytes": entry.payload.len(),
                })
            };
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
    }
    out.flush().map_err(|e| e.to_string())
}

/// The [fraud] section of a config file (or the defaults) as the engine's configuration,
/// whether or not scoring is enabled there.
fn fraud_config(path: Option<&Path>) -> Result<(Config, FraudConfig), String> {
    let config = load_config(path)?;
    let engine = config.fraud.engine().map_err(|e| e.to_string())?;
    Ok((config, engine))
}

fn fraud_backtest(
    input: &Path,
    out: &Path,
    config: Option<&Path>,
    kind: &str,
) -> Result<(), String> {
    let (_, engine) = fraud_config(config)?;
    let default_kind = ingestd_codec::envelope::Kind::from_name(kind).ok_or_else(|| {
        format!("--kind {kind:?}: not a reading kind (docs/PROTOCOL.md section 6)")
    })?;
    let options = backtest::BacktestOptions { default_kind };
    let reader: Box<dyn std::io::BufRead> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let name = input.display();
    let summary = if out == Path::new("-") {
        backtest::backtest(&engine, options, reader, std::io::stdout().lock())
            .map_err(|e| format!("{name}: {e}"))?
    } else {
        // Written beside the target and renamed once complete: a failed run leaves --out
        // as it was.
        let mut partial = out.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file =
            std::fs::File::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
        let result = backtest::backtest(&engine, options, reader, &file)
            .map_err(|e| format!("{name}: {e}"))
            .and_then(|summary| {
                file.sync_all()
                    .and_then(|()| std::fs::rename(&partial, out))
                    .map_err(|e| format!("{}: {e}", out.display()))?;
                Ok(summary)
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result?
    };
    let mut line = format!(
        "fraud backtest: {} row(s) of {} scored: {} flagged, {} quarantined",
        summary.rows,
        summary.format.name(),
        summary.flagged,
        summary.quarantined
    );
    if summary.format == backtest::Format::LogExport {
        line.push_str(&format!(
            "; {} of {} recorded verdict(s) reproduced",
            summary.reproduced, summary.recorded
        ));
        if let Some(first) = &summary.first_difference {
            line.push_str(&format!("; first difference at {first}"));
        }
    }
    eprintln!("{line}");
    Ok(())
}

fn fraud_explain(
    device: &str,
    seq: Option<u64>,
    config: Option<&Path>,
    data_dir: Option<PathBuf>,
) -> Result<(), String> {
    let (config, engine) = fraud_config(config)?;
    let data_dir = data_dir.unwrap_or(config.data_dir);
    let text = backtest::explain(&engine, &data_dir, device, seq).map_err(|e| e.to_string())?;
    print!("{text}");
    Ok(())
}
