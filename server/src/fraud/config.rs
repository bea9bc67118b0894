//! The `[fraud]` config section: scoring on or off, the score's weights and thresholds,
//! the warm-up, and per-kind overrides of the detectors' defaults (docs/FRAUD.md lists
//! every default). Turned into the engine's [`FraudConfig`] once, at start.

use crate::config::{invalid, ConfigError};
use ingestd_codec::envelope::Kind;
use ingestd_shards::fraud::engine::FraudConfig;
use ingestd_shards::fraud::Detector;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[fraud]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FraudSection {
    /// Score every reading (the verdict travels with the record to every sink).
    pub enabled: bool,
    /// A score at or above this raises an alert (PostgreSQL `alerts`, the Kafka alerts
    /// topic, `ingestd_fraud_alerts_total`).
    pub alert_score_min: f32,
    /// A score at or above this marks the reading quarantined: stored and delivered, left
    /// out of oracle aggregates.
    pub quarantine_score_min: f32,
    /// Envelopes a new device is learning for: only bounds, physics and peers fire.
    pub warmup_readings: u32,
    /// Weight of each detector in [0, 1], by its stable name; unnamed ones keep their
    /// defaults. 0 turns a detector's contribution off (it still shows in the record).
    pub weights: BTreeMap<String, f32>,
    /// Per-kind overrides, by kind name (`co2_ppm`, ...).
    pub kinds: BTreeMap<String, KindSection>,
    /// How often a shard sends its peers summary to the other shards.
    pub peers_exchange_interval_ms: u64,
}

/// `[fraud.kinds.<name>]`: any subset of a kind's parameters.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KindSection {
    pub value_min: Option<f32>,
    pub value_max: Option<f32>,
    pub rate_per_s_max: Option<f32>,
    pub noise_floor: Option<f32>,
    pub stuck_span_s_max: Option<u64>,
    pub deviation_z_max: Option<f32>,
    pub drift_z_max: Option<f32>,
}

impl Default for FraudSection {
    fn default() -> Self {
        let engine = FraudConfig::default();
        FraudSection {
            enabled: true,
            alert_score_min: engine.score.alert_score_min,
            quarantine_score_min: engine.score.quarantine_score_min,
            warmup_readings: engine.warmup_readings,
            weights: BTreeMap::new(),
            kinds: BTreeMap::new(),
            peers_exchange_interval_ms: 1_000,
        }
    }
}

fn unit(key: &'static str, value: f32) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(invalid(key, format!("{value} is outside 0..=1")))
    }
}

fn positive(key: &'static str, name: &str, what: &str, value: f32) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name}.{what} = {value} must be a positive number"),
        ))
    }
}

impl FraudSection {
    /// Checks every value and builds the engine's configuration.
    pub fn engine(&self) -> Result<FraudConfig, ConfigError> {
        unit("fraud.alert_score_min", self.alert_score_min)?;
        unit("fraud.quarantine_score_min", self.quarantine_score_min)?;
        if self.quarantine_score_min < self.alert_score_min {
            return Err(invalid(
                "fraud.quarantine_score_min",
                format!(
                    "{} is below fraud.alert_score_min ({}): a quarantined reading always raises an alert",
                    self.quarantine_score_min, self.alert_score_min
                ),
            ));
        }
        if self.peers_exchange_interval_ms == 0 {
            return Err(invalid(
                "fraud.peers_exchange_interval_ms",
                "must be at least 1",
            ));
        }
        let mut config = FraudConfig::default();
        config.score.alert_score_min = self.alert_score_min;
        config.score.quarantine_score_min = self.quarantine_score_min;
        config.warmup_readings = self.warmup_readings;
        for (name, weight) in &self.weights {
            let Some(detector) = Detector::from_name(name) else {
                let known: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
                return Err(invalid(
                    "fraud.weights",
                    format!("unknown detector {name:?} (known: {})", known.join(", ")),
                ));
            };
            if !(0.0..=1.0).contains(weight) {
                return Err(invalid(
                    "fraud.weights",
                    format!("{name} = {weight} is outside 0..=1"),
                ));
            }
            config.score.weights[detector.index()] = *weight;
        }
        for (name, section) in &self.kinds {
            let Some(kind) = Kind::from_name(name) else {
                return Err(invalid(
                    "fraud.kinds",
                    format!(
                        "unknown reading kind {name:?} (docs/PROTOCOL.md section 6 lists them)"
                    ),
                ));
            };
            let code = usize::from(kind.code());
            let kind_config = &mut config.kinds[code];
            let key = "fraud.kinds";
            if let Some(bounds) = kind_config.bounds.as_mut() {
                if let Some(v) = section.value_min {
                    bounds.value_min = v;
                }
                if let Some(v) = section.value_max {
                    bounds.value_max = v;
                }
                if bounds.value_min.partial_cmp(&bounds.value_max) != Some(std::cmp::Ordering::Less)
                {
                    return Err(invalid(
                        key,
                        format!("{name}: value_min must be below value_max"),
                    ));
                }
            }
            if let Some(v) = section.rate_per_s_max {
                positive(key, name, "rate_per_s_max", v)?;
                kind_config.rate.rate_per_s_max = Some(v);
            }
            if let Some(v) = section.noise_floor {
                positive(key, name, "noise_floor", v)?;
                kind_config.stats.noise_floor = v;
                kind_config.persistence.noise_floor = v;
                kind_config.smooth.noise_floor = v;
            }
            if let Some(v) = section.stuck_span_s_max {
                kind_config.persistence.stuck_span_ms_max = (v > 0).then_some(v * 1000);
            }
            if let Some(v) = section.deviation_z_max {
                positive(key, name, "deviation_z_max", v)?;
                kind_config.stats.deviation_z_max = v;
            }
            if let Some(v) = section.drift_z_max {
                positive(key, name, "drift_z_max", v)?;
                kind_config.stats.cusum_z_max = v;
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::Config;
    use ingestd_shards::fraud::Detector;

    fn error(toml: &str) -> String {
        Config::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn overrides_reach_the_engine() {
        let config = Config::from_toml(
            "[fraud]\nalert_score_min = 0.4\nwarmup_readings = 5\n[fraud.weights]\ntiming = 0.25\n\
             [fraud.kinds.co2_ppm]\nvalue_min = 300\nrate_per_s_max = 50\nstuck_span_s_max = 600\n",
        )
        .unwrap();
        let engine = config.fraud_engine().unwrap();
        assert_eq!(engine.score.alert_score_min, 0.4);
        assert_eq!(engine.warmup_readings, 5);
        assert_eq!(engine.score.weights[Detector::Timing.index()], 0.25);
        let co2 = engine.kind(1);
        assert_eq!(co2.bounds.unwrap().value_min, 300.0);
        assert_eq!(co2.rate.rate_per_s_max, Some(50.0));
        assert_eq!(co2.persistence.stuck_span_ms_max, Some(600_000));
        let off = Config::from_toml("[fraud]\nenabled = false\n").unwrap();
        assert!(off.fraud_engine().is_none());
    }

    #[test]
    fn bad_values_name_the_key_and_the_problem() {
        let e = error("[fraud.weights]\ntimeing = 0.5\n");
        assert!(e.contains("fraud.weights") && e.contains("timeing"), "{e}");
        let e = error("[fraud.weights]\nclone = 1.5\n");
        assert!(
            e.contains("fraud.weights") && e.contains("outside 0..=1"),
            "{e}"
        );
        let e = error("[fraud]\nalert_score_min = 0.95\n");
        assert!(e.contains("fraud.quarantine_score_min"), "{e}");
        let e = error("[fraud.kinds.co3_ppm]\nvalue_min = 1\n");
        assert!(e.contains("fraud.kinds") && e.contains("co3_ppm"), "{e}");
        let e = error("[fraud.kinds.co2_ppm]\nvalue_min = 50000\n");
        assert!(e.contains("value_min must be below value_max"), "{e}");
        let e = error("[fraud.kinds.co2_ppm]\nnoise_floor = -1\n");
        assert!(e.contains("noise_floor"), "{e}");
    }
}
