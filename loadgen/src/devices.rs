//! Simulated devices: ids and signing keys from `ingestd devices provision` output, and
//! where the registry places them (`location`, `region`), which the scenarios' climate
//! follows so that the server's peers see the same groups as loadgen.

use crate::scenario::{default_place, DeviceInfo};
use ingestd_codec::envelope::SigningKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// One device.
#[derive(Clone)]
pub struct Device {
    pub id: String,
    /// `None` in `--plain` mode without a devices directory.
    pub key: Option<SigningKey>,
}

#[derive(Deserialize)]
struct SecretsFile {
    version: u32,
    devices: Vec<SecretEntry>,
}

#[derive(Deserialize)]
struct SecretEntry {
    id: String,
    secret_key: String,
}

/// Parses a 64-hex-digit ed25519 seed.
pub fn parse_seed(hex: &str) -> Result<[u8; 32], String> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(format!(
            "secret_key has {} hex digits, need 64",
            bytes.len()
        ));
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| "secret_key is not ASCII".to_string())?;
        *slot = u8::from_str_radix(text, 16)
            .map_err(|_| format!("secret_key has a non-hex digit in {text:?}"))?;
    }
    Ok(out)
}

/// Reads `DIR/secrets.json` and returns its first `count` devices (all when `None`).
pub fn load(dir: &Path, count: Option<usize>) -> Result<Vec<Device>, String> {
    let path = dir.join("secrets.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: SecretsFile = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a secrets file: {e}", path.display()))?;
    if file.version != 1 {
        return Err(format!(
            "{}: unsupported version {}",
            path.display(),
            file.version
        ));
    }
    let want = count.unwrap_or(file.devices.len());
    if file.devices.len() < want {
        return Err(format!(
            "{} has {} devices, {} requested",
            path.display(),
            file.devices.len(),
            want
        ));
    }
    file.devices
        .into_iter()
        .take(want)
        .map(|d| {
            let seed = parse_seed(&d.secret_key).map_err(|e| format!("device {}: {e}", d.id))?;
            Ok(Device {
                id: d.id,
                key: Some(SigningKey::from_bytes(&seed)),
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct RegistryFile {
    devices: Vec<RegistryEntry>,
}

#[derive(Deserialize)]
struct RegistryEntry {
    id: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    region: String,
}

/// Device id -> (location, region).
pub type Places = HashMap<String, (String, String)>;

/// Where `DIR/registry.json` places each device; `None` when there is no such file. Empty
/// fields stay empty (the caller places those devices itself).
pub fn load_places(dir: &Path) -> Result<Option<Places>, String> {
    let path = dir.join("registry.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let file: RegistryFile = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a registry file: {e}", path.display()))?;
    Ok(Some(
        file.devices
            .into_iter()
            .map(|d| (d.id, (d.location, d.region)))
            .collect(),
    ))
}

/// Rewrites `DIR/registry.json` so that its devices, in file order, sit `per_location` to a
/// location (`loc-NNNNN`) and `per_region` locations to a region (`region-NNN`). Every
/// other field is kept as it was. Returns the number of devices placed.
pub fn place(dir: &Path, per_location: usize, per_region: usize) -> Result<usize, String> {
    if per_location == 0 || per_region == 0 {
        return Err("--devices-per-location and --locations-per-region must be >= 1".into());
    }
    let path = dir.join("registry.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut file: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let devices = file
        .get_mut("devices")
        .and_then(serde_json::Value::as_array_mut)
        .ok_or_else(|| format!("{} has no \"devices\" array", path.display()))?;
    for (i, device) in devices.iter_mut().enumerate() {
        let entry = device
            .as_object_mut()
            .ok_or_else(|| format!("{}: device #{i} is not an object", path.display()))?;
        let (location, region) = default_place(i, per_location, per_region);
        entry.insert("location".into(), location.into());
        entry.insert("region".into(), region.into());
    }
    let count = devices.len();
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
    // Write beside and rename: a reader never sees half a registry.
    let tmp = dir.join("registry.json.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
    Ok(count)
}

/// Where each device sits: its registry location and region when `places` gives it one,
/// else [`default_place`] by its position in `ids` (what `loadgen place` writes).
pub fn infos<'a>(
    ids: impl Iterator<Item = &'a str>,
    places: Option<&Places>,
    per_location: usize,
    per_region: usize,
) -> Vec<DeviceInfo> {
    ids.enumerate()
        .map(|(i, id)| {
            let registered = places
                .and_then(|p| p.get(id))
                .filter(|(location, _)| !location.is_empty());
            let (location, region) = match registered {
                Some((location, region)) => (location.clone(), region.clone()),
                None => default_place(i, per_location, per_region),
            };
            DeviceInfo {
                id: id.to_string(),
                location,
                region,
            }
        })
        .collect()
}

/// Keyless devices `dev-000000`.. for `--plain` runs without a devices directory (the same
/// ids `ingestd devices provision` writes).
pub fn anonymous(count: usize) -> Vec<Device> {
    (0..count)
        .map(|i| Device {
            id: format!("dev-{i:06}"),
            key: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_parsing() {
        let hex = "01".repeat(32);
        assert_eq!(parse_seed(&hex).unwrap(), [1u8; 32]);
        assert!(parse_seed("01").is_err());
        assert!(parse_seed(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn loads_secrets_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"{{"version":1,"devices":[{{"id":"dev-000000","secret_key":"{}"}},{{"id":"dev-000001","secret_key":"{}"}}]}}"#,
            "01".repeat(32),
            "02".repeat(32)
        );
        std::fs::write(dir.path().join("secrets.json"), text).unwrap();
        let all = load(dir.path(), None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].id, "dev-000001");
        assert_eq!(load(dir.path(), Some(1)).unwrap().len(), 1);
        assert!(load(dir.path(), Some(3)).is_err());
    }

    #[test]
    fn places_devices_and_keeps_other_fields() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_places(dir.path()).unwrap(), None);
        let devices: Vec<String> = (0..25)
            .map(|i| {
                format!(
                    r#"{{"id":"dev-{i:06}","public_key":"ab","status":"active","location":"site-0000","project":"p"}}"#
                )
            })
            .collect();
        let text = format!(r#"{{"version":1,"devices":[{}]}}"#, devices.join(","));
        std::fs::write(dir.path().join("registry.json"), text).unwrap();
        let before = load_places(dir.path()).unwrap().unwrap();
        assert_eq!(
            before["dev-000003"],
            ("site-0000".to_string(), String::new())
        );
        assert_eq!(place(dir.path(), 10, 2).unwrap(), 25);
        let after = load_places(dir.path()).unwrap().unwrap();
        assert_eq!(
            after["dev-000009"],
            ("loc-00000".into(), "region-000".into())
        );
        assert_eq!(
            after["dev-000010"],
            ("loc-00001".into(), "region-000".into())
        );
        assert_eq!(
            after["dev-000024"],
            ("loc-00002".into(), "region-001".into())
        );
        let raw: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("registry.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(raw["version"], 1);
        assert_eq!(raw["devices"][24]["project"], "p");
        assert_eq!(raw["devices"][24]["public_key"], "ab");
        assert!(place(dir.path(), 0, 1).is_err());
    }
}
