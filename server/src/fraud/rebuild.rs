//! Start-up: every device's fraud-scoring state and each shard's learned model, from the
//! fraud checkpoints and the log after them, replayed through the engine.
//!
//! Per shard directory: the fraud checkpoint (if valid) gives the device states and the
//! model up to its offset; the records after it are replayed in log order, exactly as they
//! were scored live (a reading record holds every input of the engine: device and receive
//! time, sequence, the connection, the values; a dead letter of a refused sequence holds
//! the clone rule's input). Without a valid checkpoint the whole log of the directory is
//! replayed. Peers are left out of a replay: they read the other devices' live values and
//! never change a device's state.
//!
//! A changed shard count: device states are re-homed with `home_shard` (a device found in
//! two directories keeps the state with the newest receive time), and shard `i` keeps the
//! model of directory `shard-i` (a new shard starts a fresh model and learns). Right after,
//! a fraud checkpoint is written for every directory under the current count, so the next
//! start replays only what comes after.

use super::checkpoint::{self, FraudCheckpoint};
use crate::log::{self, LogReader, ReadError, RecordKind};
use crate::record::{self, DeadLetterMeta, ReadingMeta};
use ingestd_codec::envelope::{Kind, Reading};
use ingestd_shards::fraud::engine::{
    address_hash, decode_states, device_hash, encode_states, DeviceFraud, Envelope, FraudConfig,
    Scorer,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What one shard starts with.
#[derive(Debug, Default)]
pub struct FraudStart {
    pub devices: Vec<(String, DeviceFraud)>,
    /// The learned model's bytes (`Scorer::restore_model`), when directory `shard-i` had one.
    pub model: Option<Vec<u8>>,
    /// The offset the shard's fraud checkpoint covers after start-up.
    pub checkpoint_offset: Option<u64>,
}

/// The engine's input from a reading record; `None` for opaque records.
pub fn envelope_of(meta: &ReadingMeta, readings: &mut Vec<Reading>) -> Option<u64> {
    readings.clear();
    for (name, value) in &meta.readings {
        let code = match Kind::from_name(name) {
            Some(kind) => kind.code(),
            None => name.strip_prefix("kind_")?.parse().ok()?,
        };
        readings.push(Reading {
            kind: code,
            value: *value,
        });
    }
    // The envelope's own order is by kind code; the map's is by name.
    readings.sort_by_key(|r| r.kind);
    Some(device_hash(&meta.device))
}

/// Replays one record through the engine: a reading is scored, a refused sequence is
/// clone evidence. Returns the verdict of a reading.
pub fn replay_record(
    scorer: &mut Scorer,
    devices: &mut HashMap<String, DeviceFraud>,
    kind: &RecordKind,
    payload: &[u8],
    readings: &mut Vec<Reading>,
) -> Option<(ReadingMeta, ingestd_shards::fraud::engine::Scored)> {
    let (meta, _) = record::split(payload)?;
    match kind {
        RecordKind::Reading => {
            let meta: ReadingMeta = serde_json::from_slice(meta).ok()?;
            let device = envelope_of(&meta, readings)?;
            let state = devices
                .entry(meta.device.clone())
                .or_insert_with(|| DeviceFraud::new(&meta.location, &meta.region));
            let envelope = Envelope {
                device,
                seq: meta.seq,
                device_ms: meta.ts_ms,
                received_ms: meta.received_ms,
                address: address_hash(&meta.peer),
                connected_ms: meta.connected_ms,
                readings,
            };
            let scored = scorer.score(state, &envelope);
            Some((meta, scored))
        }
        RecordKind::DeadLetter => {
            let meta: DeadLetterMeta = serde_json::from_slice(meta).ok()?;
            let seq = meta.seq?;
            if meta.reason == "replayed" || meta.reason == "stale_sequence" {
                let state = devices
                    .entry(meta.device.clone())
                    .or_insert_with(|| DeviceFraud::new("", ""));
                scorer.refused(
                    state,
                    seq,
                    address_hash(&meta.peer),
                    meta.connected_ms,
                    meta.received_ms,
                );
            }
            None
        }
        RecordKind::Credential => None,
    }
}

/// Rebuilds every shard's fraud start-up state and writes fresh fraud checkpoints.
pub fn rebuild(
    data_dir: &Path,
    shards: usize,
    config: &FraudConfig,
) -> Result<Vec<FraudStart>, ReadError> {
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(data_dir.join("log")) {
        Ok(entries) => entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("shard-"))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    dirs.sort();

    let mut starts: Vec<FraudStart> = (0..shards).map(|_| FraudStart::default()).collect();
    let mut newest: HashMap<String, DeviceFraud> = HashMap::new();
    let mut ends = Vec::with_capacity(dirs.len());
    let mut readings = Vec::new();
    for dir in &dirs {
        let shard = (0..shards).find(|s| log::shard_dir(data_dir, *s) == *dir);
        let mut scorer = Scorer::new(config.clone());
        scorer.set_replaying(true);
        let mut devices: HashMap<String, DeviceFraud> = HashMap::new();
        let from = match checkpoint::load(dir) {
            Ok(Some(saved)) => {
                let states = decode_states(&saved.states);
                if states.is_some() && scorer.restore_model(&saved.model) {
                    devices.extend(states.into_iter().flatten());
                    saved.covered_offset
                } else {
                    tracing::warn!(dir = %dir.display(), "fraud checkpoint does not decode: replaying the whole log");
                    scorer = Scorer::new(config.clone());
                    scorer.set_replaying(true);
                    0
                }
            }
            Ok(None) => 0,
            Err(error) => {
                tracing::warn!(%error, "fraud checkpoint not usable: replaying the whole log");
                0
            }
        };
        let mut end = from;
        let mut replayed = 0u64;
        for entry in LogReader::open(dir, from)? {
            let entry = entry?;
            end = end.max(entry.offset + 1);
            replayed += 1;
            replay_record(
                &mut scorer,
                &mut devices,
                &entry.kind,
                &entry.payload,
                &mut readings,
            );
        }
        tracing::info!(dir = %dir.display(), from_offset = from, records_replayed = replayed, devices = devices.len(), "fraud scoring state rebuilt");
        for (device, state) in devices {
            match newest.get(&device) {
                Some(known) if known.last_received_ms >= state.last_received_ms => {}
                _ => {
                    newest.insert(device, state);
                }
            }
        }
        if let Some(shard) = shard {
            starts[shard].model = Some(scorer.encode_model());
        }
        ends.push((dir.clone(), shard, end));
    }
    for (device, state) in newest {
        let home = ingestd_shards::home_shard(&device, shards);
        starts[home].devices.push((device, state));
    }
    for start in &mut starts {
        start.devices.sort_by(|a, b| a.0.cmp(&b.0));
    }

    for (dir, shard, end) in ends {
        let saved = FraudCheckpoint {
            shard: shard.unwrap_or(u32::MAX as usize) as u32,
            shards: shards as u32,
            covered_offset: end,
            states: match shard {
                Some(shard) => encode_states(
                    starts[shard]
                        .devices
                        .iter()
                        .map(|(id, state)| (id.as_str(), state)),
                ),
                None => encode_states(std::iter::empty()),
            },
            model: shard
                .and_then(|shard| starts[shard].model.clone())
                .unwrap_or_default(),
        };
        match crate::log::checkpoint::write_named_blocking(
            &dir,
            checkpoint::FILE_NAME,
            &saved.encode(),
        ) {
            Ok(()) => {
                if let Some(shard) = shard {
                    starts[shard].checkpoint_offset = Some(end);
                }
            }
            Err(error) => tracing::warn!(%error, "writing a start-up fraud checkpoint failed"),
        }
    }
    Ok(starts)
}
