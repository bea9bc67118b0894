//! Reads a shard's durable log from an offset, on an ordinary thread.
//!
//! Used by `ingestd log tail|export`, by the start-up rebuild of replay windows, by the
//! sinks' feeders to read back what they did not get live, and by tests. It reads whole
//! segments into memory one at a time (segments are bounded by `segment_bytes_max`). A
//! torn tail on the last segment is where the log ends (the writer repairs it at its next
//! start); anything invalid before that is corruption and is reported, never skipped.

use super::format::{self, RecordKind, Scan};
use super::list_segments;
use std::path::{Path, PathBuf};

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub offset: u64,
    pub kind: RecordKind,
    pub payload: Vec<u8>,
}

/// Why reading stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Header {
        path: PathBuf,
        source: format::HeaderError,
    },
    #[error("{path}: corrupt record at offset {offset} (byte {position}): {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        position: usize,
        reason: format::TornReason,
    },
    #[error(
        "{path}: segment starts at offset {found}, expected {expected} after the previous segment"
    )]
    Gap {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
}

/// Iterates the records of one shard's log from a starting offset.
pub struct LogReader {
    segments: Vec<(u64, PathBuf)>,
    /// Index of the segment loaded in `current`.
    next_segment: usize,
    current: Option<Loaded>,
    from_offset: u64,
    /// Offset the next record must have, to detect gaps between segments.
    expected_offset: Option<u64>,
    failed: bool,
}

struct Loaded {
    path: PathBuf,
    bytes: Vec<u8>,
    position: usize,
    offset: u64,
    last: bool,
}

impl LogReader {
    /// A reader over the log in `dir`, starting at `from_offset`.
    pub fn open(dir: &Path, from_offset: u64) -> Result<Self, ReadError> {
        let segments = list_segments(dir).map_err(|source| ReadError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        // Skip segments that end before from_offset: the one to start in is the last
        // whose base is <= from_offset.
        let start = segments
            .iter()
            .rposition(|(base, _)| *base <= from_offset)
            .unwrap_or(0);
        Ok(Self {
            segments,
            next_segment: start,
            current: None,
            from_offset,
            expected_offset: None,
            failed: false,
        })
    }

    fn load_next(&mut self) -> Result<bool, ReadError> {
        let Some((base, path)) = self.segments.get(self.next_segment).cloned() else {
            return Ok(false);
        };
        if let Some(expected) = self.expected_offset {
            if expected != base {
                return Err(ReadError::Gap {
                    path,
                    expected,
                    found: base,
                });
            }
        }
        let bytes = std::fs::read(&path).map_err(|source| ReadError::Io {
            path: path.clone(),
            source,
        })?;
        let last = self.next_segment + 1 == self.segments.len();
        if let Err(source) = format::check_segment_header(&bytes) {
            // A segment cut short while it was being created, at the very end of the log.
            if last && bytes.len() < format::SEGMENT_HEADER_BYTES {
                self.next_segment += 1;
                return Ok(false);
            }
            return Err(ReadError::Header { path, source });
        }
        self.next_segment += 1;
        self.current = Some(Loaded {
            path,
            bytes,
            position: format::SEGMENT_HEADER_BYTES,
            offset: base,
            last,
        });
        Ok(true)
    }

    fn next_entry(&mut self) -> Result<Option<LogEntry>, ReadError> {
        loop {
            if self.current.is_none() && !self.load_next()? {
                return Ok(None);
            }
            let Some(loaded) = self.current.as_mut() else {
                return Ok(None);
            };
            match format::decode_record(&loaded.bytes[loaded.position..]) {
                Scan::Record { kind, payload, len } => {
                    let offset = loaded.offset;
                    loaded.offset += 1;
                    loaded.position += len;
                    if offset >= self.from_offset {
                        return Ok(Some(LogEntry {
                            offset,
                            kind,
                            payload: payload.to_vec(),
                        }));
                    }
                }
                Scan::End => {
                    self.expected_offset = Some(loaded.offset);
                    self.current = None;
                }
                Scan::Torn(reason) => {
                    if loaded.last {
                        self.current = None;
                        return Ok(None);
                    }
                    return Err(ReadError::Corrupt {
                        path: loaded.path.clone(),
                        offset: loaded.offset,
                        position: loaded.position,
                        reason,
                    });
                }
            }
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<LogEntry, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_entry() {
            Ok(entry) => entry.map(Ok),
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}
