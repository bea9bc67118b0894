//! A shard's fraud checkpoint: every device's scoring state and the shard's learned model
//! as of a log offset, so start-up replays only the log after it through the engine.
//!
//! Like the state checkpoint (`log::checkpoint`) it is derived state: the log is the
//! source of truth, a missing or damaged file only means a longer replay. It is written
//! beside `state.checkpoint`, after the log is durable up to its offset, atomically.
//!
//! ```text
//! fraud.checkpoint
//!   magic "INGESTDF" (8) | version u32 LE = 1 | shard u32 | shards u32
//!   covered_offset u64      every record of this shard's log below it is reflected
//!   states_len u32 | states  device states (`engine::encode_states`, postcard)
//!   model_len u32  | model   the learned model (`Scorer::encode_model`)
//!   crc32c u32 LE over every byte before it
//! ```

use crate::log::checkpoint::CheckpointError;
use std::path::Path;

const MAGIC: [u8; 8] = *b"INGESTDF";
const VERSION: u32 = 1;
/// File name in the shard's log directory.
pub const FILE_NAME: &str = "fraud.checkpoint";

/// What a fraud checkpoint holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FraudCheckpoint {
    pub shard: u32,
    pub shards: u32,
    pub covered_offset: u64,
    pub states: Vec<u8>,
    pub model: Vec<u8>,
}

impl FraudCheckpoint {
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.states.len() + self.model.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&self.shards.to_le_bytes());
        out.extend_from_slice(&self.covered_offset.to_le_bytes());
        for part in [&self.states, &self.model] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let (body, crc) = bytes
            .split_last_chunk::<4>()
            .ok_or("shorter than its checksum")?;
        if crc32c::crc32c(body).to_le_bytes() != *crc {
            return Err("checksum mismatch");
        }
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], &'static str> {
            let part = body.get(at..at + n).ok_or("truncated")?;
            at += n;
            Ok(part)
        };
        if take(8)? != MAGIC {
            return Err("not a fraud checkpoint");
        }
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
        if u32_of(take(4)?) != VERSION {
            return Err("unknown version");
        }
        let shard = u32_of(take(4)?);
        let shards = u32_of(take(4)?);
        let covered_offset = u64::from_le_bytes(take(8)?.try_into().unwrap_or([0; 8]));
        let states_len = u32_of(take(4)?) as usize;
        let states = take(states_len)?.to_vec();
        let model_len = u32_of(take(4)?) as usize;
        let model = take(model_len)?.to_vec();
        if at != body.len() {
            return Err("trailing bytes");
        }
        Ok(FraudCheckpoint {
            shard,
            shards,
            covered_offset,
            states,
            model,
        })
    }
}

/// The fraud checkpoint of the shard log in `dir`: `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<FraudCheckpoint>, CheckpointError> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Io { path, source }),
    };
    FraudCheckpoint::decode(&bytes)
        .map(Some)
        .map_err(|why| CheckpointError::Invalid { path, why })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let checkpoint = FraudCheckpoint {
            shard: 1,
            shards: 2,
            covered_offset: 99,
            states: vec![1, 2, 3],
            model: vec![9; 10],
        };
        let bytes = checkpoint.encode();
        assert_eq!(FraudCheckpoint::decode(&bytes).unwrap(), checkpoint);
        for cut in [0, 3, 20, bytes.len() - 1] {
            assert!(FraudCheckpoint::decode(&bytes[..cut]).is_err(), "{cut}");
        }
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert_eq!(FraudCheckpoint::decode(&flipped), Err("checksum mismatch"));
    }
}
