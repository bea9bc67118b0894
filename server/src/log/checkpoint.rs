//! A shard's checkpoint: the replay windows and credential nonces its log implies up to an
//! offset, so that start-up scans only the log after it instead of the whole log.
//!
//! The checkpoint is derived state: the log stays the source of truth, and a missing or
//! unreadable checkpoint only means a full scan. It is written whole and replaced
//! atomically (temp file, fdatasync, rename, directory sync), and only once every record
//! below its offset is durable, so it never claims more than the log holds.
//!
//! ```text
//! state.checkpoint
//!   magic "INGESTDC" (8) | version u32 LE = 1 | shard u32 | shards u32
//!   covered_offset u64     every record of this shard's log below it is reflected
//!   windows u32 | nonces u32
//!   window*   id_len u16 | device id | highest u64 | seen u128   (replay::ReplayWindow)
//!   nonce*    id_len u16 | device id | nonce [16] | ts_ms u64
//!   crc32c u32 LE over every byte before it
//! ```
//!
//! Size: 34 bytes plus the id per device that ever published to the shard (the registry
//! bounds that), and 26 bytes plus the id per remembered nonce (`auth.credential_nonces_max`
//! bounds that). Encoding runs on the shard; about 10 ms per 100,000 devices.

use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"INGESTDC";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 4 + 4 + 8 + 4 + 4;
const CRC_BYTES: usize = 4;
/// File name of the checkpoint in the shard's log directory (`list_segments` ignores it).
pub const FILE_NAME: &str = "state.checkpoint";

/// What a checkpoint holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The shard that wrote it, and the shard count then (entries are re-homed when the
    /// count has changed since).
    pub shard: u32,
    pub shards: u32,
    /// Records of the shard's log below this offset are reflected here.
    pub covered_offset: u64,
    /// (device, highest, seen): `ReplayWindow::state`.
    pub windows: Vec<(String, u64, u128)>,
    /// (device, nonce, credential timestamp).
    pub nonces: Vec<(String, [u8; 16], u64)>,
}

/// Why a checkpoint file was not used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: &'static str },
}

impl Checkpoint {
    /// The file's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let ids: usize = self.windows.iter().map(|w| w.0.len()).sum::<usize>()
            + self.nonces.iter().map(|n| n.0.len()).sum::<usize>();
        let mut out = Vec::with_capacity(
            HEADER_BYTES + ids + self.windows.len() * 26 + self.nonces.len() * 26 + CRC_BYTES,
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&self.shards.to_le_bytes());
        out.extend_from_slice(&self.covered_offset.to_le_bytes());
        out.extend_from_slice(&(self.windows.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.nonces.len() as u32).to_le_bytes());
        for (device, highest, seen) in &self.windows {
            put_id(&mut out, device);
            out.extend_from_slice(&highest.to_le_bytes());
            out.extend_from_slice(&seen.to_le_bytes());
        }
        for (device, nonce, ts_ms) in &self.nonces {
            put_id(&mut out, device);
            out.extend_from_slice(nonce);
            out.extend_from_slice(&ts_ms.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a checkpoint's bytes; `None` with the reason when they are not one whole,
    /// checksummed checkpoint of this version.
    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let body_len = bytes
            .len()
            .checked_sub(CRC_BYTES)
            .ok_or("shorter than its checksum")?;
        let (body, crc) = bytes.split_at(body_len);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err("checksum mismatch (torn or corrupt)");
        }
        let mut reader = Reader { bytes: body };
        if reader.take(8)? != MAGIC {
            return Err("not a checkpoint (bad magic)");
        }
        if reader.u32()? != VERSION {
            return Err("unsupported checkpoint version");
        }
        let mut checkpoint = Checkpoint {
            shard: reader.u32()?,
            shards: reader.u32()?,
            covered_offset: reader.u64()?,
            ..Checkpoint::default()
        };
        let windows = reader.u32()? as usize;
        let nonces = reader.u32()? as usize;
        // Each entry takes at least 26 bytes: a count beyond what the file holds is corrupt
        // (and must not size an allocation).
        if windows.saturating_add(nonces).saturating_mul(26) > reader.bytes.len() {
            return Err("entry counts exceed the file");
        }
        checkpoint.windows.reserve(windows);
        for _ in 0..windows {
            let device = reader.id()?;
            let highest = reader.u64()?;
            let seen = u128::from_le_bytes(reader.array::<16>()?);
            checkpoint.windows.push((device, highest, seen));
        }
        checkpoint.nonces.reserve(nonces);
        for _ in 0..nonces {
            let device = reader.id()?;
            let nonce = reader.array::<16>()?;
            let ts_ms = reader.u64()?;
            checkpoint.nonces.push((device, nonce, ts_ms));
        }
        if !reader.bytes.is_empty() {
            return Err("bytes after the last entry");
        }
        Ok(checkpoint)
    }
}

fn put_id(out: &mut Vec<u8>, device: &str) {
    // Device ids are validated short strings (the registry refuses longer ones); a longer
    // one here is a bug.
    assert!(
        device.len() <= usize::from(u16::MAX),
        "device id of {} bytes in a checkpoint",
        device.len()
    );
    out.extend_from_slice(&(device.len() as u16).to_le_bytes());
    out.extend_from_slice(device.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.bytes.len() < n {
            return Err("cut short");
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn id(&mut self) -> Result<String, &'static str> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "device id is not UTF-8")
    }
}

/// The checkpoint of the shard log in `dir`: `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Io { path, source }),
    };
    Checkpoint::decode(&bytes)
        .map(Some)
        .map_err(|why| CheckpointError::Invalid { path, why })
}

/// [`write`] with blocking std I/O, for start-up (before the executors run). Creates `dir`
/// if needed.
pub fn write_blocking(dir: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    write_named_blocking(dir, FILE_NAME, bytes)
}

/// [`write_blocking`] under another file name in `dir` (the fraud checkpoint).
pub fn write_named_blocking(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
    use std::io::Write;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let temp = dir.join(format!("{name}.tmp"));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_data()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(CheckpointError::Io { path: temp, source });
    }
    let path = dir.join(name);
    std::fs::rename(&temp, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Writes `bytes` as the new checkpoint of the log in `dir`, atomically: the old one stays
/// whole until the new one is durable under its final name.
pub async fn write(dir: &Path, bytes: Vec<u8>) -> Result<(), CheckpointError> {
    write_named(dir, FILE_NAME, bytes).await
}

/// [`write`] under another file name in `dir` (the fraud checkpoint).
pub async fn write_named(dir: &Path, name: &str, bytes: Vec<u8>) -> Result<(), CheckpointError> {
    let temp = dir.join(format!("{name}.tmp"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    let _ = std::fs::remove_file(&temp);
    let written = write_file(&temp, bytes).await;
    if let Err(source) = written {
        // A half-written temp file only takes space (a full disk may be why it failed).
        let _ = std::fs::remove_file(&temp);
        return Err(CheckpointError::Io { path: temp, source });
    }
    let path = dir.join(name);
    std::fs::rename(&temp, &path).map_err(io(&path))?;
    let directory = glommio::io::Directory::open(dir)
        .await
        .map_err(std::io::Error::from)
        .map_err(io(dir))?;
    directory
        .sync()
        .await
        .map_err(std::io::Error::from)
        .map_err(io(dir))?;
    Ok(())
}

async fn write_file(path: &Path, bytes: Vec<u8>) -> std::io::Result<()> {
    let file = glommio::io::OpenOptions::new()
        .write(true)
        .create_new(true)
        .buffered_open(path)
        .await?;
    let mut at = 0usize;
    while at < bytes.len() {
        let written = file.write_at(bytes[at..].to_vec(), at as u64).await?;
        if written == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "write returned 0 bytes",
            ));
        }
        at += written;
    }
    file.fdatasync().await?;
    file.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            shard: 1,
            shards: 2,
            covered_offset: 12_345,
            windows: vec![
                ("co2-0001".into(), 500, 0b1011),
                ("co2-0002".into(), u64::MAX, u128::MAX),
            ],
            nonces: vec![("co2-0001".into(), [7; 16], 1_700_000_000_000)],
        }
    }

    #[test]
    fn round_trips() {
        let checkpoint = sample();
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Ok(checkpoint));
        let empty = Checkpoint::default();
        assert_eq!(Checkpoint::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn every_cut_and_every_flipped_bit_is_refused() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Checkpoint::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(Checkpoint::decode(&flipped).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating() {
        let mut bytes = Checkpoint::default().encode();
        bytes.truncate(bytes.len() - CRC_BYTES);
        bytes[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Checkpoint::decode(&bytes),
            Err("entry counts exceed the file")
        );
    }
}
