//! Simulated devices: ids and signing keys from `ingestd devices provision` output.

use ingestd_codec::envelope::SigningKey;
use serde::Deserialize;
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
}
