//! The durable log: per-shard, append-only, checksummed segments.
//!
//! It is the sink of the embedded default and the source every external sink is fed from
//! (the spool while a sink is slow or unreachable). A record is durable once
//! [`ShardLog::commit`] has returned an end offset beyond it: only then may the device's
//! PUBLISH be acknowledged.
//!
//! - [`format`]: the bytes on disk (pure).
//! - [`writer`]: [`ShardLog`], the group-committing writer on a shard's io_uring executor.
//! - [`reader`]: reads a shard's log from an offset on an ordinary thread (CLI, tests).
//! - [`checkpoint`]: the replay windows and credential nonces the log implies up to an
//!   offset, so start-up scans only the log after it.
//! - [`rebuild`]: start-up's replay windows and nonces from the checkpoints and the log.
//! - [`space`]: telling a full disk from a failing one, and how much room is left.

pub mod checkpoint;
pub mod format;
pub mod reader;
pub mod rebuild;
pub mod space;
pub mod writer;

pub use format::RecordKind;
pub use reader::{LogEntry, LogReader, ReadError};
pub use writer::{LogError, Recovery, ShardLog};

use std::path::{Path, PathBuf};

/// The file name of the segment whose first record has `base_offset`.
#[must_use]
pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// The segments of a shard's log directory, sorted by base offset. Files that are not
/// segments are ignored; a directory that does not exist has no segments.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(base) = stem.parse::<u64>() {
                segments.push((base, path));
            }
        }
    }
    segments.sort_unstable_by_key(|(base, _)| *base);
    Ok(segments)
}

/// The directory of shard `shard`'s log under the data directory.
#[must_use]
pub fn shard_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join("log").join(format!("shard-{shard:03}"))
}
