//! Configuration: one TOML file, every limit named with its unit, validated once at
//! start-up into a typed [`Config`].
//!
//! With no file at all the embedded defaults apply: plain MQTT on port 1883, the device
//! registry from a local file, the durable log under `./data` as the sink. Unknown keys are
//! refused (a misspelt limit must not silently fall back to its default), and every error
//! names the key and the problem.

pub use crate::egress::influx::InfluxConfig;
pub use crate::egress::kafka::KafkaConfig;
pub use crate::egress::postgres::PostgresConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

pub(crate) fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name: it goes into every enriched record and oracle report.
    pub node_id: String,
    /// Where the durable log (and other local state) lives.
    pub data_dir: PathBuf,
    /// Executors, one per core; 0 means one per available core.
    pub shards: usize,
    pub mqtt: MqttConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub validation: ValidationConfig,
    pub log: LogConfig,
    pub registry: RegistryConfig,
    pub metrics: MetricsConfig,
    pub shutdown: ShutdownConfig,
    pub egress: EgressConfig,
    pub kafka: KafkaConfig,
    pub influxdb: InfluxConfig,
    pub postgres: PostgresConfig,
    pub fraud: crate::fraud::config::FraudSection,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Plain MQTT listener; empty string disables it.
    pub listen: String,
    /// Largest MQTT packet accepted, checked before the body is buffered.
    #[serde(alias = "max_packet_bytes")]
    pub packet_bytes_max: usize,
    /// Unacknowledged QoS 1/2 PUBLISHes a device may have in flight (MQTT 5 Receive Maximum).
    #[serde(alias = "max_inflight")]
    pub inflight_max: u16,
    /// Keep-alive granted when a device asks for 0 or more than this.
    #[serde(alias = "keep_alive_max_s")]
    pub keep_alive_s_max: u16,
    /// Connections accepted per shard; beyond it new connections are refused.
    pub connections_per_shard_max: usize,
    /// Bytes queued for one connection's writer at which its reader stops reading until
    /// the writer has sent them (a client that does not read its socket stops being read).
    pub output_bytes_max: usize,
    /// Connections waiting to be handed to a shard from each other shard (one ring per
    /// pair of shards); when full, the CONNECT is refused with Server Busy.
    pub handoff_ring_connections_max: usize,
    /// Uplink topics are `{topic_prefix}/{device_id}/telemetry`.
    pub topic_prefix: String,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// MQTT over TLS listener; empty string disables it.
    pub listen: String,
    /// PEM certificate chain of the server.
    pub cert_path: Option<PathBuf>,
    /// PEM private key of the server.
    pub key_path: Option<PathBuf>,
    /// PEM CA certificates of the device CA: when set, devices may authenticate with a
    /// client certificate whose subject common name is their device id.
    pub client_ca_path: Option<PathBuf>,
    /// Oldest TLS version accepted: "1.3" (default) or "1.2".
    pub min_version: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How far a CONNECT credential's timestamp may be from the server's clock.
    pub credential_window_ms: u64,
    /// Failed authentications from one address before it is slowed down.
    pub failures_before_delay: u32,
    /// Delay before refusing a throttled address, doubling per failure up to the max.
    pub failure_delay_ms: u64,
    /// Require the signed CONNECT credential (or a client certificate). Off only for
    /// benchmarks against plain MQTT clients: a registered device id then suffices.
    pub require_credential: bool,
    pub failure_delay_ms_max: u64,
    /// Accepted credential nonces a shard remembers (each until its credential leaves the
    /// window; about 100 bytes each). Past this, the oldest is forgotten and credentials
    /// dated at or before it are refused (docs/PROTOCOL.md, section 10).
    pub credential_nonces_max: usize,
    /// Addresses whose authentication failures a shard remembers for the throttle; past
    /// this the oldest are forgotten.
    pub throttle_addresses_max: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Largest envelope payload accepted (binary or JSON).
    #[serde(alias = "envelope_max_bytes")]
    pub envelope_bytes_max: usize,
    /// How far a reading's device timestamp may be from the server's clock.
    #[serde(alias = "clock_skew_max_ms")]
    pub clock_skew_ms_max: u64,
    /// Verify every reading's ed25519 signature. Off only for benchmarks of the transport.
    pub verify_signatures: bool,
    /// Store payloads as received, without decoding envelopes (no replay window, no clock
    /// or signature checks): only for measuring the transport and the durable log against
    /// a plain MQTT broker. Never in production.
    pub opaque_payloads: bool,
    /// Signatures verified together in one batch.
    #[serde(alias = "verify_batch_max")]
    pub verify_batch_signatures_max: usize,
    /// Longest a message waits for its verification batch to fill (bounded delay).
    pub verify_batch_delay_us: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A segment is sealed and a new one started beyond this size.
    pub segment_bytes_max: u64,
    /// Group commit: commit when this many bytes are pending...
    pub commit_batch_bytes_max: usize,
    /// ...or when the oldest pending record has waited this long.
    pub commit_interval_us: u64,
    /// Bytes pending commit at which the shard stops reading sockets (back-pressure).
    pub pending_bytes_max: usize,
    /// A shard writes a checkpoint of its replay windows and credential nonces after this
    /// many bytes committed since the last one (and at a clean shutdown): the most log a
    /// start-up after a crash scans per shard.
    pub checkpoint_interval_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// The device registry file (format in docs/REGISTRY.md).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus metrics, /healthz and /readyz; empty string disables it.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM, time allowed to flush and acknowledge before connections are closed.
    pub drain_timeout_ms: u64,
}

/// How the shards hand validated records to the sinks (docs/DELIVERY.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Records each shard's ring to the egress thread holds, and each sink's queue. When
    /// one is full, the records are not dropped: the sink reads them back from the
    /// durable log.
    pub ring_records: usize,
    /// How often each shard persists how far every sink has got.
    pub checkpoint_interval_ms: u64,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            ring_records: 65_536,
            checkpoint_interval_ms: 1_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: "ingestd-0".to_string(),
            data_dir: PathBuf::from("data"),
            shards: 0,
            mqtt: MqttConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            validation: ValidationConfig::default(),
            log: LogConfig::default(),
            registry: RegistryConfig::default(),
            metrics: MetricsConfig::default(),
            shutdown: ShutdownConfig::default(),
            egress: EgressConfig::default(),
            kafka: KafkaConfig::default(),
            influxdb: InfluxConfig::default(),
            postgres: PostgresConfig::default(),
            fraud: crate::fraud::config::FraudSection::default(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:1883".to_string(),
            packet_bytes_max: 16 * 1024,
            inflight_max: 64,
            keep_alive_s_max: 600,
            connections_per_shard_max: 100_000,
            output_bytes_max: 64 * 1024,
            handoff_ring_connections_max: 1024,
            topic_prefix: "devices".to_string(),
            connect_timeout_ms: 10_000,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            cert_path: None,
            key_path: None,
            client_ca_path: None,
            min_version: "1.3".to_string(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            credential_window_ms: 300_000,
            failures_before_delay: 3,
            failure_delay_ms: 250,
            require_credential: true,
            failure_delay_ms_max: 10_000,
            credential_nonces_max: 1 << 18,
            throttle_addresses_max: 65_536,
        }
    }
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            envelope_bytes_max: 1024,
            clock_skew_ms_max: 300_000,
            verify_signatures: true,
            opaque_payloads: false,
            verify_batch_signatures_max: 64,
            verify_batch_delay_us: 1_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 16 << 20,
            commit_batch_bytes_max: 1 << 20,
            commit_interval_us: 2_000,
            pending_bytes_max: 16 << 20,
            checkpoint_interval_bytes: 64 << 20,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("devices/registry.json"),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9100".to_string(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 10_000,
        }
    }
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_with_env(text, std::iter::empty())
    }

    /// Reads the config file (or the embedded default when there is none), applies the
    /// environment overrides of this process, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml_with_env(&text, std::env::vars()).map_err(|error| match error {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.map_or_else(|| PathBuf::from("(defaults)"), Path::to_path_buf),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text, then applies overrides from environment variables named
    /// `INGESTD__SECTION__KEY` (or `INGESTD__KEY` for top-level keys), whose values are TOML
    /// values (`INGESTD__LOG__SEGMENT_BYTES_MAX=1048576`, `INGESTD__MQTT__LISTEN='"0.0.0.0:1883"'`;
    /// a bare word that is not a TOML value is taken as a string).
    pub fn from_toml_with_env(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: PathBuf::new(),
            message: error.to_string(),
        })?;
        for (name, raw) in env {
            let Some(path) = name.strip_prefix("INGESTD__") else {
                continue;
            };
            let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.clone()));
            let (last, sections) = match keys.split_last() {
                Some(split) if !split.0.is_empty() => split,
                _ => {
                    return Err(ConfigError::Parse {
                        path: PathBuf::new(),
                        message: format!("environment variable {name}: no key after INGESTD__"),
                    })
                }
            };
            let mut target = &mut table;
            for section in sections {
                let entry = target
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                target = entry.as_table_mut().ok_or_else(|| ConfigError::Parse {
                    path: PathBuf::new(),
                    message: format!("environment variable {name}: `{section}` is not a section"),
                })?;
            }
            target.insert(last.clone(), value);
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|error: toml::de::Error| ConfigError::Parse {
                    path: PathBuf::new(),
                    message: error.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// The shard count to run: `shards`, or one per available core when it is 0.
    #[must_use]
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.shards
        }
    }

    /// Checks every value once, so the rest of the server can rely on them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.is_empty()
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                "node_id",
                format!("{:?} must be 1+ characters of [A-Za-z0-9._-]", self.node_id),
            ));
        }
        if self.shards > 1024 {
            return Err(invalid(
                "shards",
                format!("{} is more than 1024", self.shards),
            ));
        }
        check_addr("mqtt.listen", &self.mqtt.listen)?;
        check_addr("tls.listen", &self.tls.listen)?;
        check_addr("metrics.listen", &self.metrics.listen)?;
        if self.mqtt.listen.is_empty() && self.tls.listen.is_empty() {
            return Err(invalid(
                "mqtt.listen",
                "both mqtt.listen and tls.listen are empty: no listener would accept devices",
            ));
        }
        // A refused PUBLISH is kept whole in its dead letter, and a log record holds at
        // most 1 MiB: packets stay well below that.
        if !(64..=(512 << 10)).contains(&self.mqtt.packet_bytes_max) {
            return Err(invalid(
                "mqtt.packet_bytes_max",
                format!("{} is outside 64..=524288", self.mqtt.packet_bytes_max),
            ));
        }
        if self.mqtt.inflight_max == 0 {
            return Err(invalid("mqtt.inflight_max", "must be at least 1"));
        }
        if self.mqtt.output_bytes_max < 64 {
            return Err(invalid(
                "mqtt.output_bytes_max",
                format!("{} is below 64", self.mqtt.output_bytes_max),
            ));
        }
        if self.mqtt.handoff_ring_connections_max == 0 {
            return Err(invalid(
                "mqtt.handoff_ring_connections_max",
                "must be at least 1",
            ));
        }
        if self.auth.throttle_addresses_max == 0 {
            return Err(invalid("auth.throttle_addresses_max", "must be at least 1"));
        }
        if self.mqtt.connections_per_shard_max == 0 {
            return Err(invalid(
                "mqtt.connections_per_shard_max",
                "must be at least 1",
            ));
        }
        if self.mqtt.topic_prefix.is_empty()
            || self
                .mqtt
                .topic_prefix
                .split('/')
                .any(|level| level.is_empty() || level.contains(['+', '#', '\0']))
        {
            return Err(invalid(
                "mqtt.topic_prefix",
                format!(
                    "{:?} must be non-empty topic levels without wildcards",
                    self.mqtt.topic_prefix
                ),
            ));
        }
        if !self.tls.listen.is_empty()
            && (self.tls.cert_path.is_none() || self.tls.key_path.is_none())
        {
            return Err(invalid(
                "tls.cert_path",
                "tls.listen is set, so tls.cert_path and tls.key_path are required",
            ));
        }
        if !["1.2", "1.3"].contains(&self.tls.min_version.as_str()) {
            return Err(invalid(
                "tls.min_version",
                format!("{:?} is not \"1.2\" or \"1.3\"", self.tls.min_version),
            ));
        }
        if self.auth.credential_window_ms == 0 {
            return Err(invalid("auth.credential_window_ms", "must be at least 1"));
        }
        if self.auth.credential_nonces_max == 0 {
            return Err(invalid("auth.credential_nonces_max", "must be at least 1"));
        }
        if self.log.checkpoint_interval_bytes == 0 {
            return Err(invalid(
                "log.checkpoint_interval_bytes",
                "must be at least 1",
            ));
        }
        if self.auth.failure_delay_ms > self.auth.failure_delay_ms_max {
            return Err(invalid(
                "auth.failure_delay_ms",
                format!(
                    "{} exceeds auth.failure_delay_ms_max ({})",
                    self.auth.failure_delay_ms, self.auth.failure_delay_ms_max
                ),
            ));
        }
        if !(64..=self.mqtt.packet_bytes_max).contains(&self.validation.envelope_bytes_max) {
            return Err(invalid(
                "validation.envelope_bytes_max",
                format!(
                    "{} is outside 64..=mqtt.packet_bytes_max ({})",
                    self.validation.envelope_bytes_max, self.mqtt.packet_bytes_max
                ),
            ));
        }
        if !(1..=4096).contains(&self.validation.verify_batch_signatures_max) {
            return Err(invalid(
                "validation.verify_batch_signatures_max",
                format!(
                    "{} is outside 1..=4096",
                    self.validation.verify_batch_signatures_max
                ),
            ));
        }
        if self.validation.verify_batch_delay_us > 100_000 {
            return Err(invalid(
                "validation.verify_batch_delay_us",
                format!(
                    "{} is above 100000 (100 ms)",
                    self.validation.verify_batch_delay_us
                ),
            ));
        }
        if self.log.segment_bytes_max < (1 << 16) {
            return Err(invalid(
                "log.segment_bytes_max",
                format!("{} is below 65536", self.log.segment_bytes_max),
            ));
        }
        if self.log.commit_batch_bytes_max == 0 {
            return Err(invalid("log.commit_batch_bytes_max", "must be at least 1"));
        }
        if self.log.commit_interval_us == 0 || self.log.commit_interval_us > 1_000_000 {
            return Err(invalid(
                "log.commit_interval_us",
                format!("{} is outside 1..=1000000", self.log.commit_interval_us),
            ));
        }
        if self.log.pending_bytes_max < self.log.commit_batch_bytes_max {
            return Err(invalid(
                "log.pending_bytes_max",
                format!(
                    "{} is below log.commit_batch_bytes_max ({})",
                    self.log.pending_bytes_max, self.log.commit_batch_bytes_max
                ),
            ));
        }
        if self.shutdown.drain_timeout_ms == 0 {
            return Err(invalid("shutdown.drain_timeout_ms", "must be at least 1"));
        }
        self.fraud.engine()?;
        self.validate_egress()
    }

    /// The fraud engine's configuration when scoring is on (validated by `validate`).
    #[must_use]
    pub fn fraud_engine(&self) -> Option<ingestd_shards::fraud::engine::FraudConfig> {
        self.fraud
            .enabled
            .then(|| self.fraud.engine().ok())
            .flatten()
    }

    /// Whether the device registry comes from PostgreSQL (else from `registry.path`).
    #[must_use]
    pub fn postgres_registry(&self) -> bool {
        !self.postgres.url.is_empty() && self.postgres.registry
    }

    fn validate_egress(&self) -> Result<(), ConfigError> {
        if !(1024..=(1 << 22)).contains(&self.egress.ring_records) {
            return Err(invalid(
                "egress.ring_records",
                format!("{} is outside 1024..=4194304", self.egress.ring_records),
            ));
        }
        if !(10..=60_000).contains(&self.egress.checkpoint_interval_ms) {
            return Err(invalid(
                "egress.checkpoint_interval_ms",
                format!(
                    "{} is outside 10..=60000",
                    self.egress.checkpoint_interval_ms
                ),
            ));
        }
        self.kafka.validate()?;
        self.influxdb.validate()?;
        self.postgres.validate()?;
        Ok(())
    }
}

fn check_addr(key: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Ok(());
    }
    value.parse::<SocketAddr>().map(|_| ()).map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address like 0.0.0.0:1883 (empty disables it)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn limits_have_their_unit_last_and_the_old_names_still_work() {
        let old = Config::from_toml(
            "[mqtt]\nmax_packet_bytes = 4096\nmax_inflight = 8\nkeep_alive_max_s = 30\n\
             [validation]\nenvelope_max_bytes = 512\nclock_skew_max_ms = 1000\n\
             verify_batch_max = 16\n",
        )
        .unwrap();
        let new = Config::from_toml(
            "[mqtt]\npacket_bytes_max = 4096\ninflight_max = 8\nkeep_alive_s_max = 30\n\
             [validation]\nenvelope_bytes_max = 512\nclock_skew_ms_max = 1000\n\
             verify_batch_signatures_max = 16\n",
        )
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(new.mqtt.packet_bytes_max, 4096);
        assert_eq!(new.mqtt.inflight_max, 8);
        assert_eq!(new.validation.verify_batch_signatures_max, 16);
        // The capacities that were constants are keys now, checked like the others.
        assert!(problem("[mqtt]\noutput_bytes_max = 10\n").contains("mqtt.output_bytes_max"));
        assert!(problem("[mqtt]\nhandoff_ring_connections_max = 0\n")
            .contains("mqtt.handoff_ring_connections_max"));
        assert!(
            problem("[auth]\nthrottle_addresses_max = 0\n").contains("auth.throttle_addresses_max")
        );
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn values_override_defaults() {
        let config = Config::from_toml(
            "shards = 2\n[mqtt]\nlisten = \"127.0.0.1:18830\"\n[log]\ncommit_interval_us = 500\n",
        )
        .unwrap();
        assert_eq!(config.shards, 2);
        assert_eq!(config.mqtt.listen, "127.0.0.1:18830");
        assert_eq!(config.log.commit_interval_us, 500);
        assert_eq!(config.mqtt.inflight_max, MqttConfig::default().inflight_max);
    }

    #[test]
    fn environment_overrides_win_over_the_file() {
        let env = [
            ("INGESTD__LOG__SEGMENT_BYTES_MAX", "1048576"),
            ("INGESTD__MQTT__LISTEN", "127.0.0.1:1999"),
            ("INGESTD__NODE_ID", "\"node-7\""),
            ("OTHER", "ignored"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let config =
            Config::from_toml_with_env("[log]\nsegment_bytes_max = 99999999\n", env.into_iter())
                .unwrap();
        assert_eq!(config.log.segment_bytes_max, 1 << 20);
        assert_eq!(config.mqtt.listen, "127.0.0.1:1999");
        assert_eq!(config.node_id, "node-7");
        let bad = [("INGESTD__LOG__NO_SUCH_KEY".to_string(), "1".to_string())];
        let message = Config::from_toml_with_env("", bad.into_iter())
            .unwrap_err()
            .to_string();
        assert!(message.contains("no_such_key"), "{message}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let message = problem("[log]\ncommit_intervall_us = 5\n");
        assert!(message.contains("commit_intervall_us"), "{message}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let message = problem("[mqtt]\ninflight_max = \"lots\"\n");
        assert!(message.contains("inflight_max"), "{message}");
    }

    #[test]
    fn bad_values_name_key_and_problem() {
        let cases = [
            ("[mqtt]\nlisten = \"localhost\"\n", "mqtt.listen"),
            ("[mqtt]\nmax_inflight = 0\n", "mqtt.inflight_max"),
            ("[mqtt]\ntopic_prefix = \"a/+/b\"\n", "mqtt.topic_prefix"),
            ("[mqtt]\nmax_packet_bytes = 10\n", "mqtt.packet_bytes_max"),
            (
                "[mqtt]\nmax_packet_bytes = 2000000\n",
                "mqtt.packet_bytes_max",
            ),
            ("[tls]\nlisten = \"127.0.0.1:8883\"\n", "tls.cert_path"),
            (
                "[validation]\nverify_batch_max = 0\n",
                "validation.verify_batch_signatures_max",
            ),
            ("[log]\nsegment_bytes_max = 100\n", "log.segment_bytes_max"),
            ("[log]\ncommit_interval_us = 0\n", "log.commit_interval_us"),
            ("node_id = \"a b\"\n", "node_id"),
            (
                "[mqtt]\nlisten = \"\"\n",
                "both mqtt.listen and tls.listen are empty",
            ),
        ];
        for (text, expected) in cases {
            let message = problem(text);
            assert!(message.contains(expected), "{text:?} gave {message}");
        }
    }

    #[test]
    fn kafka_egress_and_postgres_values_name_the_key() {
        use crate::egress::SinkId;
        let kafka = "[kafka]\nbrokers = \"127.0.0.1:9092\"\n";
        for (text, key) in [
            (
                format!("{kafka}compression = \"brotli\"\n"),
                "kafka.compression",
            ),
            (
                format!("{kafka}telemetry_topic = \"a/b\"\n"),
                "kafka.telemetry_topic",
            ),
            (
                format!("{kafka}fraud_topic = \"fraud alerts\"\n"),
                "kafka.fraud_topic",
            ),
            (format!("{kafka}alerts_topic = \"\"\n"), "kafka.fraud_topic"),
            (format!("{kafka}partitions = 0\n"), "kafka.partitions"),
            (
                format!("{kafka}message_timeout_ms = 10\n"),
                "kafka.message_timeout_ms",
            ),
            (
                format!("{kafka}properties = {{ acks = \"1\" }}\n"),
                "kafka.properties",
            ),
            (
                "[egress]\nring_records = 10\n".to_string(),
                "egress.ring_records",
            ),
            (
                "[postgres]\nurl = \"host=x\"\nbatch_records_max = 0\n".to_string(),
                "postgres.batch_records_max",
            ),
        ] {
            let message = problem(&text);
            assert!(message.contains(key), "{text:?}: {message}");
        }
        // Off by default: an empty broker list is the embedded mode, whatever else is set.
        let config = Config::from_toml("[kafka]\ncompression = \"brotli\"\n").unwrap();
        assert!(!SinkId::ALL.iter().any(|sink| sink.configured(&config)));
        let config = Config::from_toml(kafka).unwrap();
        assert!(SinkId::Kafka.configured(&config));
        assert_eq!(config.kafka.fraud_topic, "fraud-alerts");
        // The alerts topic answers to either name.
        let named = Config::from_toml(&format!("{kafka}alerts_topic = \"ingestd.alerts\"\n"));
        assert_eq!(named.unwrap().kafka.fraud_topic, "ingestd.alerts");
        assert!(
            config.kafka.ack_after_kafka,
            "acknowledged when Kafka has it, by default"
        );
    }

    #[test]
    fn influxdb_values_name_the_key() {
        let url = "url = \"http://127.0.0.1:8086\"\n";
        Config::from_toml(&format!("[influxdb]\n{url}")).unwrap();
        let cases = [
            ("url = \"127.0.0.1:8086\"\n", "influxdb.url"),
            ("url = \"http://h:8086/?db=x\"\n", "influxdb.url"),
            ("token = \"two words\"\n", "influxdb.token"),
            ("timeout_ms = 0\n", "influxdb.timeout_ms"),
            ("api = \"v3\"\n", "influxdb.api"),
            ("api = \"v2\"\norg = \"o\"\n", "influxdb.bucket"),
            ("batch_bytes_max = 10\n", "influxdb.batch_bytes_max"),
            ("writes_in_flight = 0\n", "influxdb.writes_in_flight"),
            ("writes_in_flight = 17\n", "influxdb.writes_in_flight"),
        ];
        for (text, expected) in cases {
            let url = if text.starts_with("url") { "" } else { url };
            let message = problem(&format!("[influxdb]\n{url}{text}"));
            assert!(message.contains(expected), "{text:?} gave {message}");
        }
    }
}
