//! Start-up: each device's exact replay window and the credential nonces still inside
//! their window, from every shard's checkpoint and the log after it.
//!
//! Per shard directory, the checkpoint (if there is a valid one) gives the state up to its
//! offset, and the records after it are applied in order: each reading's sequence is
//! committed into its device's window, each credential record's nonce is remembered. The
//! result is the window the running server had (never-used sequences inside it are accepted
//! again), not "everything up to the highest". Without a checkpoint, or with an unreadable
//! one, the whole log is scanned (and a log line says so).
//!
//! Devices are re-homed with `home_shard` for the current shard count: after a change of
//! count a device's state may come from several old shards, and windows merge exactly
//! (`ReplayWindow::merge`).
//!
//! Which checkpoints are trusted: a shard's checkpoint holds the whole state of the devices
//! homed on it (whatever log their older records are in) and covers its own log up to an
//! offset. That is enough only when every shard directory has a valid checkpoint written
//! under the current shard count; otherwise (first start, a crash before a shard's first
//! checkpoint, a corrupt file, a changed count) every log is scanned whole. Right after the
//! rebuild, a checkpoint is written for every directory under the current count, so the next
//! start can trust them.
//!
//! Bound: the scan reads at most `log.checkpoint_interval_bytes` (plus what a crash cut off
//! before the next checkpoint) per shard after a crash, and nothing after a clean shutdown.

use super::checkpoint::{self, Checkpoint};
use super::{LogReader, ReadError, RecordKind};
use crate::record;
use ingestd_shards::replay::ReplayWindow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What one shard starts with.
#[derive(Debug, Default)]
pub struct ShardStart {
    pub windows: HashMap<String, ReplayWindow>,
    /// (device, nonce, credential timestamp) of credentials still inside their window.
    pub nonces: Vec<(String, [u8; 16], u64)>,
    /// The offset this shard's own checkpoint covers (it is not rewritten for less).
    pub checkpoint_offset: Option<u64>,
    /// Fraud-scoring state (`fraud::rebuild`), when scoring is on.
    pub fraud: crate::fraud::rebuild::FraudStart,
}

/// What a reading record says about its sequence; the rest of the metadata is skipped.
#[derive(serde::Deserialize)]
struct Sequenced {
    device: String,
    seq: u64,
}

/// Rebuilds every shard's start-up state from the data directory, and writes a fresh
/// checkpoint for every shard directory.
pub fn rebuild(
    data_dir: &Path,
    shards: usize,
    now_ms: u64,
    credential_window_ms: u64,
) -> Result<Vec<ShardStart>, ReadError> {
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
    for shard in 0..shards {
        let dir = super::shard_dir(data_dir, shard);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.sort();
    let mut checkpoints = Vec::with_capacity(dirs.len());
    let mut distrust = None;
    for dir in &dirs {
        let checkpoint = match checkpoint::load(dir) {
            Ok(Some(checkpoint)) if checkpoint.shards as usize == shards => Some(checkpoint),
            Ok(Some(checkpoint)) => {
                distrust.get_or_insert(format!(
                    "{} was written with {} shards, now {shards}",
                    dir.display(),
                    checkpoint.shards
                ));
                None
            }
            Ok(None) if has_segments(dir) => {
                distrust.get_or_insert(format!("{} has no checkpoint", dir.display()));
                None
            }
            // A directory with no log yet has nothing to cover.
            Ok(None) => Some(Checkpoint::default()),
            Err(error) => {
                distrust.get_or_insert(error.to_string());
                None
            }
        };
        checkpoints.push(checkpoint);
    }
    if let Some(why) = &distrust {
        tracing::warn!(
            why,
            "checkpoints not usable: scanning the whole log of every shard"
        );
        checkpoints.iter_mut().for_each(|c| *c = None);
    }

    let mut windows: HashMap<String, ReplayWindow> = HashMap::new();
    let mut nonces: Vec<(String, [u8; 16], u64)> = Vec::new();
    let mut ends = Vec::with_capacity(dirs.len());
    for (dir, checkpoint) in dirs.iter().zip(checkpoints) {
        let from = match checkpoint {
            Some(checkpoint) => {
                for (device, highest, seen) in checkpoint.windows {
                    windows
                        .entry(device)
                        .or_default()
                        .merge(&ReplayWindow::restore(highest, seen));
                }
                nonces.extend(checkpoint.nonces);
                checkpoint.covered_offset
            }
            None => 0,
        };
        let mut end = from;
        let mut scanned = 0u64;
        for entry in LogReader::open(dir, from)? {
            let entry = entry?;
            scanned += 1;
            end = end.max(entry.offset + 1);
            apply(&entry.kind, &entry.payload, &mut windows, &mut nonces);
        }
        ends.push(end);
        tracing::info!(dir = %dir.display(), from_offset = from, records_scanned = scanned, "replay windows and credential nonces rebuilt");
    }

    let mut starts: Vec<ShardStart> = (0..shards).map(|_| ShardStart::default()).collect();
    for (device, window) in windows {
        let home = ingestd_shards::home_shard(&device, shards);
        starts[home].windows.insert(device, window);
    }
    for (device, nonce, ts_ms) in nonces {
        // Only credentials still inside their window: older ones fail the timestamp check.
        if now_ms.saturating_sub(ts_ms) <= credential_window_ms {
            let home = ingestd_shards::home_shard(&device, shards);
            starts[home].nonces.push((device, nonce, ts_ms));
        }
    }

    // Fresh checkpoints under the current count, so that the next start can trust them.
    // A failure leaves the old ones, which the rules above handle.
    for (dir, end) in dirs.iter().zip(ends) {
        let shard = (0..shards).find(|shard| super::shard_dir(data_dir, *shard) == *dir);
        let mut checkpoint = Checkpoint {
            shard: shard.unwrap_or(u32::MAX as usize) as u32,
            shards: shards as u32,
            covered_offset: end,
            ..Checkpoint::default()
        };
        if let Some(shard) = shard {
            let start = &starts[shard];
            checkpoint.windows = start
                .windows
                .iter()
                .filter_map(|(device, window)| {
                    window
                        .state()
                        .map(|(highest, seen)| (device.clone(), highest, seen))
                })
                .collect();
            checkpoint.nonces = start.nonces.clone();
        }
        match checkpoint::write_blocking(dir, &checkpoint.encode()) {
            Ok(()) => {
                if let Some(shard) = shard {
                    starts[shard].checkpoint_offset = Some(end);
                }
            }
            Err(error) => tracing::warn!(%error, "writing a start-up checkpoint failed"),
        }
    }
    Ok(starts)
}

fn has_segments(dir: &Path) -> bool {
    super::list_segments(dir).map_or(true, |segments| !segments.is_empty())
}

/// Applies one log record to the rebuilt state.
fn apply(
    kind: &RecordKind,
    payload: &[u8],
    windows: &mut HashMap<String, ReplayWindow>,
    nonces: &mut Vec<(String, [u8; 16], u64)>,
) {
    let Some((meta, _)) = record::split(payload) else {
        return;
    };
    match kind {
        RecordKind::Reading => {
            // Opaque records (benchmark mode) have no sequence.
            if let Ok(reading) = serde_json::from_slice::<Sequenced>(meta) {
                // A sequence refused here was refused when the log was written too.
                let _ = windows
                    .entry(reading.device)
                    .or_default()
                    .commit(reading.seq);
            }
        }
        RecordKind::Credential => {
            if let Ok(meta) = serde_json::from_slice::<record::CredentialMeta>(meta) {
                if let Some(nonce) =
                    ingestd_codec::envelope::hex::decode_array::<16>(meta.nonce.as_bytes(), false)
                {
                    nonces.push((meta.device, nonce, meta.ts_ms));
                }
            }
        }
        RecordKind::DeadLetter => {}
    }
}
