//! The on-disk format of the durable log: segment headers and checksummed records.
//!
//! Pure functions over byte slices, shared by the writer (which runs on a shard's io_uring
//! executor) and the reader (which the CLI runs on ordinary threads), so both agree on
//! every byte and recovery is testable without a disk.
//!
//! ```text
//! segment file  {base_offset:020}.log
//!   header   16 bytes   magic "INGESTDL" (8) | format version u32 LE = 1 | reserved u32 = 0
//!   record*
//! record
//!   len      u32 LE     length of body (kind + payload), 1..=RECORD_BODY_BYTES_MAX
//!   crc      u32 LE     CRC-32C over the 4 len bytes, then the body
//!   body     kind u8 | payload
//! ```
//!
//! The checksum covers the length, so a torn length field is caught as surely as a torn
//! payload. A record's offset is its index in the shard's log, counted from 0 across
//! segments; a segment's file name is the offset of its first record.

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"INGESTDL";
/// The format version this code writes and reads.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 16;
/// Size of a record's header (length and checksum).
pub const RECORD_HEADER_BYTES: usize = 8;
/// Largest record body accepted. A length above it can only be corruption, and bounding
/// it keeps a corrupt length from making recovery allocate or scan gigabytes.
pub const RECORD_BODY_BYTES_MAX: usize = 1 << 20;

/// What a record holds. The byte values are part of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A validated, enriched reading.
    Reading = 1,
    /// A rejected message with its reason and raw payload.
    DeadLetter = 2,
    /// An accepted CONNECT credential's nonce (`crate::record::CredentialMeta`): the server's
    /// own state, so a password seen once stays refused after a restart. Sinks skip it.
    Credential = 3,
}

impl RecordKind {
    /// The kind for an on-disk byte, if this version knows it.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Reading),
            2 => Some(Self::DeadLetter),
            3 => Some(Self::Credential),
            _ => None,
        }
    }

    /// Stable name used by the CLI and metrics.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Reading => "reading",
            Self::DeadLetter => "dead_letter",
            Self::Credential => "credential",
        }
    }
}

/// The segment header for a new segment.
#[must_use]
pub fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    header
}

/// Why a segment header was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("segment is {len} bytes, shorter than its {SEGMENT_HEADER_BYTES}-byte header")]
    Short { len: usize },
    #[error("segment does not start with the ingestd log magic")]
    BadMagic,
    #[error("segment format version {found} is not supported (this build reads {SEGMENT_FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
}

/// Checks a segment's header.
pub fn check_segment_header(segment: &[u8]) -> Result<(), HeaderError> {
    let header = segment
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or(HeaderError::Short { len: segment.len() })?;
    if header[..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != SEGMENT_FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion { found: version });
    }
    Ok(())
}

/// Appends one framed record to `out`.
///
/// The caller bounds the payload (it comes from a packet already held to the maximum
/// packet size); a body over [`RECORD_BODY_BYTES_MAX`] here is a bug.
pub fn encode_record(kind: RecordKind, payload: &[u8], out: &mut Vec<u8>) {
    let body_len = payload.len() + 1;
    assert!(
        body_len <= RECORD_BODY_BYTES_MAX,
        "record body of {body_len} bytes exceeds the {RECORD_BODY_BYTES_MAX}-byte maximum"
    );
    let len_bytes = (body_len as u32).to_le_bytes();
    let mut crc = crc32c::crc32c(&len_bytes);
    crc = crc32c::crc32c_append(crc, &[kind as u8]);
    crc = crc32c::crc32c_append(crc, payload);
    out.reserve(RECORD_HEADER_BYTES + body_len);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
}

/// Bytes one record with `payload_len` payload bytes takes on disk.
#[must_use]
pub fn record_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + 1 + payload_len
}

/// One step of reading records from a byte slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan<'a> {
    /// A whole, checksummed record of `len` bytes on disk.
    Record {
        kind: RecordKind,
        payload: &'a [u8],
        len: usize,
    },
    /// The slice ends exactly at a record boundary, or a zero length field starts here:
    /// the preallocated, never-written rest of a segment (a record's length is never 0).
    End,
    /// What follows is not a whole valid record: the tail of a write that a crash cut
    /// short, or corruption. Recovery truncates the last segment here.
    Torn(TornReason),
}

/// Why the bytes at a position are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornReason {
    /// Fewer bytes than the record header.
    ShortHeader { available: usize },
    /// The length field is above the maximum.
    BadLength { len: u32 },
    /// The body is cut short.
    ShortBody { needed: usize, available: usize },
    /// The checksum does not match.
    Checksum,
    /// The checksum matched but the kind byte is unknown to this version.
    UnknownKind { kind: u8 },
}

impl std::fmt::Display for TornReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ShortHeader { available } => {
                write!(f, "{available} bytes left, less than a record header")
            }
            Self::BadLength { len } => write!(f, "record length {len} out of range"),
            Self::ShortBody { needed, available } => {
                write!(f, "record needs {needed} bytes, {available} left")
            }
            Self::Checksum => write!(f, "checksum mismatch"),
            Self::UnknownKind { kind } => write!(f, "unknown record kind {kind}"),
        }
    }
}

/// Reads the record at the start of `buf`.
#[must_use]
pub fn decode_record(buf: &[u8]) -> Scan<'_> {
    if buf.is_empty() {
        return Scan::End;
    }
    if buf.len() < 4 && buf.iter().all(|b| *b == 0) {
        return Scan::End;
    }
    let Some(header) = buf.get(..RECORD_HEADER_BYTES) else {
        return Scan::Torn(TornReason::ShortHeader {
            available: buf.len(),
        });
    };
    let len_bytes = [header[0], header[1], header[2], header[3]];
    if len_bytes == [0; 4] {
        return Scan::End;
    }
    let body_len = u32::from_le_bytes(len_bytes);
    let crc_stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if body_len as usize > RECORD_BODY_BYTES_MAX {
        return Scan::Torn(TornReason::BadLength { len: body_len });
    }
    let body_len = body_len as usize;
    let total = RECORD_HEADER_BYTES + body_len;
    let Some(body) = buf.get(RECORD_HEADER_BYTES..total) else {
        return Scan::Torn(TornReason::ShortBody {
            needed: total,
            available: buf.len(),
        });
    };
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), body);
    if crc != crc_stored {
        return Scan::Torn(TornReason::Checksum);
    }
    let Some(kind) = RecordKind::from_byte(body[0]) else {
        return Scan::Torn(TornReason::UnknownKind { kind: body[0] });
    };
    Scan::Record {
        kind,
        payload: &body[1..],
        len: total,
    }
}

/// The valid prefix of a run of records: how many whole records and how many bytes they
/// take, and why scanning stopped if it stopped before the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidPrefix {
    pub records: u64,
    pub bytes: usize,
    pub torn: Option<TornReason>,
}

/// Scans records from the start of `buf` until the end or the first invalid record.
#[must_use]
pub fn valid_prefix(buf: &[u8]) -> ValidPrefix {
    let mut prefix = ValidPrefix {
        records: 0,
        bytes: 0,
        torn: None,
    };
    loop {
        match decode_record(&buf[prefix.bytes..]) {
            Scan::Record { len, .. } => {
                prefix.records += 1;
                prefix.bytes += len;
            }
            Scan::End => return prefix,
            Scan::Torn(reason) => {
                prefix.torn = Some(reason);
                return prefix;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(records: &[(RecordKind, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, payload) in records {
            encode_record(*kind, payload, &mut out);
        }
        out
    }

    #[test]
    fn record_layout_is_as_documented() {
        let mut out = Vec::new();
        encode_record(RecordKind::DeadLetter, b"hi", &mut out);
        // len = 3 (kind + 2 payload bytes), little-endian
        assert_eq!(&out[..4], &[3, 0, 0, 0]);
        // crc32c over len bytes then body
        let crc = crc32c::crc32c(&[3, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(&out[4..8], &crc.to_le_bytes());
        assert_eq!(&out[8..], &[2, b'h', b'i']);
        assert_eq!(out.len(), record_bytes(2));
    }

    #[test]
    fn header_round_trips_and_rejects_foreign_files() {
        assert_eq!(check_segment_header(&segment_header()), Ok(()));
        assert_eq!(
            check_segment_header(b"short"),
            Err(HeaderError::Short { len: 5 })
        );
        let mut foreign = segment_header();
        foreign[0] = b'X';
        assert_eq!(check_segment_header(&foreign), Err(HeaderError::BadMagic));
        let mut future = segment_header();
        future[8] = 9;
        assert_eq!(
            check_segment_header(&future),
            Err(HeaderError::UnsupportedVersion { found: 9 })
        );
    }

    #[test]
    fn flipped_bit_is_detected() {
        let mut buf = encode(&[(RecordKind::Reading, b"reading".to_vec())]);
        let last = buf.len() - 1;
        buf[last] ^= 0x01;
        assert_eq!(decode_record(&buf), Scan::Torn(TornReason::Checksum));
    }

    #[test]
    fn zeroed_tail_is_the_end_not_a_record() {
        // Segments are preallocated with zeros; the first zero length field ends them.
        let mut buf = encode(&[(RecordKind::Reading, b"a".to_vec())]);
        let good = buf.len();
        buf.extend_from_slice(&[0u8; 32]);
        let prefix = valid_prefix(&buf);
        assert_eq!(prefix.records, 1);
        assert_eq!(prefix.bytes, good);
        assert_eq!(prefix.torn, None);
        assert_eq!(decode_record(&[0, 0]), Scan::End);
    }

    #[test]
    fn a_header_cut_after_its_length_is_torn() {
        let mut buf = encode(&[(RecordKind::Reading, b"abc".to_vec())]);
        buf.truncate(6);
        assert!(matches!(
            decode_record(&buf),
            Scan::Torn(TornReason::ShortHeader { .. })
        ));
    }

    proptest! {
        #[test]
        fn records_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let records: Vec<_> = payloads.into_iter().enumerate().map(|(i, p)| {
                (if i % 3 == 0 { RecordKind::DeadLetter } else { RecordKind::Reading }, p)
            }).collect();
            let buf = encode(&records);
            let mut at = 0;
            for (kind, payload) in &records {
                match decode_record(&buf[at..]) {
                    Scan::Record { kind: k, payload: p, len } => {
                        prop_assert_eq!(k, *kind);
                        prop_assert_eq!(p, payload.as_slice());
                        at += len;
                    }
                    other => prop_assert!(false, "expected a record, got {:?}", other),
                }
            }
            prop_assert_eq!(decode_record(&buf[at..]), Scan::End);
        }

        /// A crash can cut the last write anywhere: every cut keeps exactly the records
        /// that were whole before it.
        #[test]
        fn every_cut_keeps_the_whole_records(sizes in proptest::collection::vec(0usize..100, 1..10), cut_seed in any::<usize>()) {
            let records: Vec<_> = sizes.iter().map(|&n| (RecordKind::Reading, vec![0xAB; n])).collect();
            let buf = encode(&records);
            let cut = cut_seed % (buf.len() + 1);
            let mut boundaries = vec![0usize];
            for (_, p) in &records {
                let last = *boundaries.last().unwrap();
                boundaries.push(last + record_bytes(p.len()));
            }
            let whole = boundaries.iter().filter(|&&b| b > 0 && b <= cut).count() as u64;
            let prefix = valid_prefix(&buf[..cut]);
            prop_assert_eq!(prefix.records, whole);
            prop_assert_eq!(prefix.bytes, boundaries[whole as usize]);
            prop_assert_eq!(prefix.torn.is_none(), boundaries.contains(&cut));
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            let prefix = valid_prefix(&buf);
            prop_assert!(prefix.bytes <= buf.len());
        }
    }
}
