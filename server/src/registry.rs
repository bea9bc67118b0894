//! The device registry: who may connect, with which ed25519 key, and the metadata every
//! accepted reading is enriched with.
//!
//! In the embedded default it is a local JSON file (format in docs/REGISTRY.md), loaded and
//! validated whole at start-up: a registry with one bad entry is refused with the entry's
//! index, id and problem, rather than served with the entry silently missing.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Longest device id; it matches the envelope's limit.
pub const DEVICE_ID_BYTES_MAX: usize = 64;

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Active,
    Revoked,
}

/// One device as stored in the registry file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    pub id: String,
    /// The device's ed25519 public key, 64 hex characters.
    pub public_key: String,
    pub status: DeviceStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sensor_type: String,
}

/// The registry file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// Format version; this build reads 1.
    pub version: u32,
    pub devices: Vec<DeviceRecord>,
}

/// A device ready for the hot path: key parsed and checked.
#[derive(Debug, Clone)]
pub struct Device {
    pub key: VerifyingKey,
    pub status: DeviceStatus,
    pub location: String,
    pub region: String,
    pub project: String,
    pub sensor_type: String,
}

/// Why a registry was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read device registry {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device registry {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("device registry: version {found} is not supported (this build reads 1)")]
    Version { found: u32 },
    #[error("device registry: device #{index} ({id:?}): {problem}")]
    Device {
        index: usize,
        id: String,
        problem: String,
    },
}

/// The loaded registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    devices: HashMap<String, Device>,
}

impl Registry {
    /// Loads and validates a registry file.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: RegistryFile =
            serde_json::from_str(&text).map_err(|error| RegistryError::Parse {
                path: path.to_path_buf(),
                message: error.to_string(),
            })?;
        Self::from_file(file)
    }

    /// Validates a parsed registry file.
    pub fn from_file(file: RegistryFile) -> Result<Self, RegistryError> {
        if file.version != 1 {
            return Err(RegistryError::Version {
                found: file.version,
            });
        }
        let mut devices = HashMap::with_capacity(file.devices.len());
        for (index, record) in file.devices.into_iter().enumerate() {
            let problem = |problem: String| RegistryError::Device {
                index,
                id: record.id.clone(),
                problem,
            };
            if !valid_device_id(&record.id) {
                return Err(problem(format!(
                    "id must be 1..={DEVICE_ID_BYTES_MAX} characters of [A-Za-z0-9._-]"
                )));
            }
            let key = parse_public_key(&record.public_key).map_err(problem)?;
            if devices.contains_key(&record.id) {
                return Err(problem("id appears more than once".to_string()));
            }
            devices.insert(
                record.id.clone(),
                Device {
                    key,
                    status: record.status,
                    location: record.location,
                    region: record.region,
                    project: record.project,
                    sensor_type: record.sensor_type,
                },
            );
        }
        Ok(Self { devices })
    }

    /// The device with this id, if registered.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// Device ids: the characters allowed in an MQTT topic level and a file name alike.
#[must_use]
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= DEVICE_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Parses a hex public key and refuses keys that cannot be safely verified against.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes =
        decode_hex_32(text).ok_or_else(|| "public_key must be 64 hex characters".to_string())?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "public_key is not a valid ed25519 point".to_string())?;
    // A small-order key accepts forged signatures under batch (cofactored) verification.
    if key.is_weak() {
        return Err("public_key is a weak (small-order) ed25519 key".to_string());
    }
    Ok(key)
}

fn decode_hex_32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Lowercase hex of bytes.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    ingestd_codec::envelope::hex::encode(bytes)
}

/// A provisioned device's secret, as loadgen and demo clients read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSecret {
    pub id: String,
    /// The ed25519 secret key seed, 64 hex characters.
    pub secret_key: String,
}

/// The secrets file written next to a provisioned registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    pub version: u32,
    pub devices: Vec<DeviceSecret>,
}

/// Generates `count` devices named `{prefix}{index:06}` with fresh keys.
pub fn provision(
    count: usize,
    prefix: &str,
    rng: &mut impl rand_core::CryptoRngCore,
) -> (RegistryFile, SecretsFile) {
    const REGIONS: [&str; 4] = ["eu-west", "eu-north", "us-east", "ap-south"];
    const SENSORS: [&str; 3] = ["co2", "climate", "particulate"];
    let mut registry = Vec::with_capacity(count);
    let mut secrets = Vec::with_capacity(count);
    for index in 0..count {
        let id = format!("{prefix}{index:06}");
        let key = SigningKey::generate(rng);
        registry.push(DeviceRecord {
            id: id.clone(),
            public_key: hex(key.verifying_key().as_bytes()),
            status: DeviceStatus::Active,
            location: format!("site-{:04}", index / 16),
            region: REGIONS[index % REGIONS.len()].to_string(),
            project: format!("project-{}", index % 7),
            sensor_type: SENSORS[index % SENSORS.len()].to_string(),
        });
        secrets.push(DeviceSecret {
            id,
            secret_key: hex(key.as_bytes()),
        });
    }
    (
        RegistryFile {
            version: 1,
            devices: registry,
        },
        SecretsFile {
            version: 1,
            devices: secrets,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, key: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.to_string(),
            public_key: key.to_string(),
            status: DeviceStatus::Active,
            location: String::new(),
            region: String::new(),
            project: String::new(),
            sensor_type: String::new(),
        }
    }

    #[test]
    fn provisioned_registry_loads_and_keys_match_secrets() {
        let (registry, secrets) = provision(10, "co2-", &mut rand::rngs::OsRng);
        let loaded = Registry::from_file(registry.clone()).unwrap();
        assert_eq!(loaded.len(), 10);
        for secret in &secrets.devices {
            let seed = decode_hex_32(&secret.secret_key).unwrap();
            let key = SigningKey::from_bytes(&seed);
            assert_eq!(loaded.get(&secret.id).unwrap().key, key.verifying_key());
        }
        assert!(loaded.get("co2-000009").is_some());
        assert!(loaded.get("co2-000010").is_none());
    }

    #[test]
    fn bad_entries_are_named() {
        let good = hex(SigningKey::from_bytes(&[7; 32]).verifying_key().as_bytes());
        let cases = [
            (vec![record("a b", &good)], "#0 (\"a b\")"),
            (vec![record("ok", "zz")], "64 hex characters"),
            (
                vec![record("ok", &good), record("ok", &good)],
                "#1 (\"ok\"): id appears more than once",
            ),
            // The identity point: small order, must be refused.
            (
                vec![record(
                    "weak",
                    "0100000000000000000000000000000000000000000000000000000000000000",
                )],
                "weak",
            ),
        ];
        for (devices, expected) in cases {
            let error = Registry::from_file(RegistryFile {
                version: 1,
                devices,
            })
            .unwrap_err()
            .to_string();
            assert!(error.contains(expected), "{error} lacks {expected}");
        }
        let error = Registry::from_file(RegistryFile {
            version: 2,
            devices: vec![],
        })
        .unwrap_err();
        assert!(error.to_string().contains("version 2"));
    }
}
