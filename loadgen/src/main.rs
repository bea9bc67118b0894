//! `loadgen` command line entry point.

use clap::Parser;
use loadgen::cli::{Args, Command};
use loadgen::report::svg_plot;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Some(Command::FraudEval(eval)) => {
            return match loadgen::eval::run(eval) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen fraud-eval: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Some(Command::FraudSim(sim)) => {
            let started = std::time::Instant::now();
            return match loadgen::sim::run(sim) {
                Ok(report) => {
                    print!("{report}");
                    eprintln!(
                        "loadgen fraud-sim: {:.1} s wall time",
                        started.elapsed().as_secs_f64()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen fraud-sim: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Some(Command::Place {
            devices_dir,
            devices_per_location,
            locations_per_region,
        }) => {
            return match loadgen::devices::place(
                devices_dir,
                *devices_per_location,
                *locations_per_region,
            ) {
                Ok(n) => {
                    eprintln!(
                        "loadgen place: {n} devices in {}, {devices_per_location} per location, {locations_per_region} locations per region",
                        devices_dir.join("registry.json").display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen place: {e}");
                    ExitCode::from(1)
                }
            };
        }
        None => {}
    }
    let outcome = match loadgen::run::run(args.clone()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(1);
        }
    };
    eprint!("{}", outcome.report.summary());
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, outcome.report.to_json()) {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Some(path) = &args.plot {
        if let Err(e) = std::fs::write(path, svg_plot(&outcome.report, &outcome.stats)) {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Some(path) = &args.acked_out {
        let written = std::fs::File::create(path).and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            for (dev, seq) in &outcome.stats.acked_list {
                let id = outcome
                    .device_ids
                    .get(*dev as usize)
                    .map_or("?", String::as_str);
                writeln!(w, "{id} {seq}")?;
            }
            w.flush()
        });
        if let Err(e) = written {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if args.fail_on_loss && outcome.report.lost > 0 {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
