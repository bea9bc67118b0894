//! `ingestd`: the command line of the ingestion server.

use clap::{Parser, Subcommand};
use ingestd::config::Config;
use ingestd::log::{self, LogReader};
use ingestd::registry::{self, Registry};
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
}

#[derive(Subcommand)]
enum DevicesCommand {
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
    let result = match cli.command {
        Command::CheckConfig { config } => check_config(config.as_deref()),
        Command::Devices {
            command: DevicesCommand::Provision { count, out, prefix },
        } => provision(count, &out, &prefix),
        Command::Log { command } => match command {
            LogCommand::Tail { source, last } => print_log(&source, Start::Last(last), false),
            LogCommand::Export { source, from } => print_log(&source, Start::From(from), true),
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

fn check_config(path: Option<&Path>) -> Result<(), String> {
    let config = match path {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let registry = Registry::load(&config.registry.path).map_err(|e| e.to_string())?;
    println!(
        "config ok: {} shard(s), {} registered device(s), data under {}",
        config.shard_count(),
        registry.len(),
        config.data_dir.display()
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
