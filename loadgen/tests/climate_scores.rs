//! loadgen's honest devices, scored by the server's own fraud engine, raise (almost) no
//! alert: the climate model and the detectors agree on what normal is. Readings 0.6 s
//! apart over a simulated day of 600 s, as `scripts/fraud-eval` runs them at 1M msg/min
//! with 10,000 devices.

use ingestd_shards::fraud::engine::{
    address_hash, device_hash, DeviceFraud, Envelope, FraudConfig, Scorer,
};
use loadgen::scenario::climate::{readings, Sensor, Site};

#[test]
fn honest_devices_stay_below_the_alert_threshold() {
    let day_ms = 600_000;
    let t0_ms = 1_764_000_000_000u64;
    let mut scorer = Scorer::new(FraudConfig::default());
    let (mut scored, mut flagged) = (0u64, 0u64);
    let mut worst = (0.0f32, String::new());
    for d in 0..40u64 {
        let location = format!("site-{:04}", d / 10);
        let id = format!("dev-{d:05}");
        let sensor = Sensor::new(7, &id, Site::new(7, &location, "region-0", day_ms));
        // No peer groups: the per-device detectors alone.
        let mut device = DeviceFraud::new("", "");
        for i in 0..1_500u64 {
            let t_ms = t0_ms + i * 600 + d * 13;
            let values = readings(sensor.values(t_ms));
            let envelope = Envelope {
                device: device_hash(&id),
                seq: i + 1,
                device_ms: t_ms,
                received_ms: t_ms + 40,
                address: address_hash("127.0.0.1:1"),
                connected_ms: t0_ms,
                readings: &values,
            };
            let verdict = scorer.score(&mut device, &envelope).verdict;
            scored += 1;
            if verdict.is_flagged(&scorer.config().score) {
                flagged += 1;
                if verdict.score > worst.0 {
                    let names: Vec<&str> = verdict.fired.iter().map(|d| d.name()).collect();
                    worst = (verdict.score, format!("{id} reading {i}: {names:?}"));
                }
            }
        }
    }
    let share = flagged as f64 / scored as f64;
    assert!(
        share <= 0.001,
        "{flagged} of {scored} honest readings flagged ({:.3} %); worst {worst:?}",
        share * 100.0
    );
}
