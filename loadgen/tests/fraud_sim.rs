//! `loadgen fraud-sim` on a small labelled mix: the engine catches the obvious scenarios,
//! spares the honest devices, sees the clones' refused sequences, and the run is a pure
//! function of its flags.

use clap::Parser;
use loadgen::cli::{Args, Command, SimArgs};
use loadgen::eval::ScenarioRow;
use loadgen::sim::{self, Outcome};

fn sim_args(flags: &[&str]) -> SimArgs {
    let argv = ["loadgen", "fraud-sim"]
        .into_iter()
        .chain(flags.iter().copied());
    match Args::try_parse_from(argv).expect("flags parse").command {
        Some(Command::FraudSim(args)) => *args,
        other => panic!("not fraud-sim: {other:?}"),
    }
}

fn row<'a>(outcome: &'a Outcome, scenario: &str) -> &'a ScenarioRow {
    outcome
        .summary
        .rows
        .iter()
        .find(|r| r.scenario == scenario)
        .unwrap_or_else(|| panic!("no {scenario} row"))
}

/// 300 devices, 400 messages each 0.6 s apart, 6 devices per fraud scenario.
#[test]
fn small_mix_detects_the_obvious_and_spares_the_honest() {
    let args = sim_args(&[
        "--devices",
        "300",
        "--rate",
        "500",
        "--duration",
        "240",
        "--fraud-share",
        "0.22",
    ]);
    let mut missed = Vec::new();
    let outcome = sim::simulate(&args, None, Some(&mut missed)).expect("simulates");
    let report = sim::report(&args, &outcome);
    let s = &outcome.summary;
    let stats = &outcome.stats;
    assert_eq!(stats.envelopes, 300 * 400, "{report}");
    assert_eq!(stats.scored + stats.refused + stats.skewed, stats.envelopes);
    assert_eq!(s.readings, stats.scored);
    assert_eq!(s.scored_readings, s.readings, "every reading has a verdict");
    for scenario in ["out_of_bounds", "spike"] {
        let r = row(&outcome, scenario);
        assert_eq!(r.reached, r.devices, "{report}");
        assert!(
            r.reached > 0 && r.detected * 10 >= r.reached * 9,
            "{scenario}: {} of {} detected within 30\n{report}",
            r.detected,
            r.reached
        );
    }
    let normal_readings = s.normal_device_readings + s.before_onset_readings;
    let normal_flagged = s.normal_device_flagged + s.before_onset_flagged;
    assert!(normal_readings > 100_000, "{report}");
    assert!(
        normal_flagged * 100 < normal_readings,
        "{normal_flagged} of {normal_readings} normal readings alerted\n{report}"
    );
    // Only the clones' second writer produces sequences the replay window refuses; no
    // device time is far enough off to be refused for skew.
    assert!(stats.refused > 0, "{report}");
    assert_eq!(stats.skewed, 0);
    assert_eq!(
        row(&outcome, "clone").dead_letters,
        stats.refused,
        "{report}"
    );
    assert!(
        stats.summaries > 0,
        "the two scorers exchange peers summaries"
    );
    // --dump-missed lists the first readings from the onset of exactly the devices that
    // reached their onset and were not detected within the window.
    let missed = String::from_utf8(missed).expect("UTF-8");
    let mut devices: Vec<&str> = missed
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .collect();
    devices.dedup();
    let undetected: u64 = s.rows.iter().map(|r| r.reached - r.detected).sum();
    assert_eq!(devices.len() as u64, undetected, "{missed}");
    assert!(missed.lines().skip(1).all(|l| l
        .split(',')
        .nth(2)
        .and_then(|n| n.parse::<usize>().ok())
        < Some(sim::MISSED_READINGS_MAX)));
}

#[test]
fn same_flags_same_report() {
    let flags = [
        "--devices",
        "100",
        "--rate",
        "200",
        "--duration",
        "100",
        "--fraud-share",
        "0.22",
        "--stall-every-s",
        "30",
        "--stall-ms",
        "800",
    ];
    let args = sim_args(&flags);
    let (mut first, mut again) = (Vec::new(), Vec::new());
    let a = sim::simulate(&args, Some(&mut first), None).expect("simulates");
    let b = sim::simulate(&args, Some(&mut again), None).expect("simulates");
    assert_eq!(a, b);
    assert_eq!(sim::report(&args, &a), sim::report(&args, &b));
    assert_eq!(first, again);
    // Not a constant: another seed draws other labels, onsets and latencies.
    let mut other = flags.to_vec();
    other.extend(["--seed", "2"]);
    let c = sim::simulate(&sim_args(&other), None, None).expect("simulates");
    assert_ne!(a, c);
}
