//! Fixed header (§2.1): packet type, flags and the remaining length, a variable byte integer.
//!
//! Parsing the fixed header is the only step that may see a partial frame: it answers how
//! many more bytes are needed, and checks type, flags and the size limit before any body byte
//! is buffered, so a hostile length is refused after at most 5 bytes.

use super::error::{DecodeError, EncodeError};
use super::Protocol;

/// Largest value a variable byte integer can carry (§1.5.5): 0xFF 0xFF 0xFF 0x7F.
pub const MAX_VAR_INT: usize = 268_435_455;

/// MQTT control packet types (§2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The flags nibble the spec fixes for this type [MQTT-2.2.2-1]; PUBLISH has none fixed.
    fn fixed_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }

    /// First byte of the fixed header for every type but PUBLISH.
    pub(crate) fn first_byte(self) -> u8 {
        ((self as u8) << 4) | self.fixed_flags().unwrap_or(0)
    }
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedHeader {
    pub packet_type: PacketType,
    pub flags: u8,
    /// Bytes of fixed header (1 + length of the remaining-length integer).
    pub header_len: usize,
    pub remaining_len: usize,
}

/// Outcome of reading a fixed header from the front of a buffer.
pub(crate) enum HeaderRead {
    Header(FixedHeader),
    NeedMore(usize),
}

/// Reads the fixed header. CONNECT is accepted whatever `protocol` says: it is the packet that
/// establishes the version.
pub(crate) fn read_fixed_header(buf: &[u8], protocol: Protocol) -> Result<HeaderRead, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(HeaderRead::NeedMore(1));
    };
    let type_nibble = first >> 4;
    let flags = first & 0x0F;
    let packet_type = match type_nibble {
        0 => return Err(DecodeError::ReservedPacketType),
        1 => PacketType::Connect,
        2 => PacketType::ConnAck,
        3 => PacketType::Publish,
        4 => PacketType::PubAck,
        5 => PacketType::PubRec,
        6 => PacketType::PubRel,
        7 => PacketType::PubComp,
        8 => PacketType::Subscribe,
        9 => PacketType::SubAck,
        10 => PacketType::Unsubscribe,
        11 => PacketType::UnsubAck,
        12 => PacketType::PingReq,
        13 => PacketType::PingResp,
        14 => PacketType::Disconnect,
        // AUTH exists only in v5 (§3.15); in 3.1.1 type 15 is reserved.
        _ if protocol == Protocol::V311 => return Err(DecodeError::InvalidPacketType(type_nibble)),
        _ => PacketType::Auth,
    };
    match packet_type.fixed_flags() {
        Some(fixed) if fixed != flags => {
            return Err(DecodeError::InvalidFlags {
                packet_type: type_nibble,
                flags,
            });
        }
        // PUBLISH: QoS bits 0b11 are malformed [MQTT-3.3.1-4]; DUP with QoS 0 [MQTT-3.3.1-2].
        None if (flags >> 1) & 0b11 == 0b11 => return Err(DecodeError::InvalidQoS),
        None if flags & 0b1000 != 0 && (flags >> 1) & 0b11 == 0 => {
            return Err(DecodeError::DupWithQoS0)
        }
        _ => {}
    }
    let rest = buf.get(1..).unwrap_or(&[]);
    match read_var_int(rest)? {
        VarInt::NeedMore => Ok(HeaderRead::NeedMore(1)),
        VarInt::Value { value, len } => Ok(HeaderRead::Header(FixedHeader {
            packet_type,
            flags,
            header_len: 1 + len,
            remaining_len: value,
        })),
    }
}

pub(crate) enum VarInt {
    Value { value: usize, len: usize },
    NeedMore,
}

/// Reads a variable byte integer (§1.5.5): at most 4 bytes [MQTT-1.5.5], minimally encoded
/// [MQTT-1.5.5-1] (a multi-byte encoding whose last byte is 0 has a shorter form).
pub(crate) fn read_var_int(buf: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(VarInt::NeedMore);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::NonMinimalVarInt);
            }
            return Ok(VarInt::Value { value, len: i + 1 });
        }
    }
    Err(DecodeError::RemainingLengthTooLong)
}

/// `value` as a minimal variable byte integer: the bytes and how many of them are used.
fn var_int_bytes(value: usize) -> Result<([u8; 4], usize), EncodeError> {
    if value > MAX_VAR_INT {
        return Err(EncodeError::PacketTooLarge(value));
    }
    let mut bytes = [0u8; 4];
    let mut v = value;
    let mut n = 0;
    for slot in bytes.iter_mut() {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        *slot = byte;
        n += 1;
        if v == 0 {
            break;
        }
    }
    Ok((bytes, n))
}

/// Appends `value` as a minimal variable byte integer.
pub(crate) fn write_var_int(out: &mut Vec<u8>, value: usize) -> Result<(), EncodeError> {
    let (bytes, n) = var_int_bytes(value)?;
    out.extend(bytes.iter().take(n));
    Ok(())
}

/// Runs `body`, then puts a variable-byte-integer length in front of what it wrote. The body
/// is written once, after a 4-byte gap that is then closed (one `memmove` of the body, no
/// allocation), which spares every packet type a separate length computation.
pub(crate) fn write_with_len_prefix<F>(out: &mut Vec<u8>, body: F) -> Result<(), EncodeError>
where
    F: FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
{
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let body_start = out.len();
    let result = body(out).and_then(|()| {
        let (bytes, n) = var_int_bytes(out.len() - body_start)?;
        out.splice(start..body_start, bytes.iter().take(n).copied());
        Ok(())
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_int_boundaries() {
        // (value, minimal encoding) at every length boundary (§1.5.5, table 1-1).
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            write_var_int(&mut out, value).unwrap();
            assert_eq!(out, bytes, "{value}");
            match read_var_int(bytes).unwrap() {
                VarInt::Value { value: v, len } => assert_eq!((v, len), (value, bytes.len())),
                VarInt::NeedMore => panic!("need more for {value}"),
            }
        }
        assert_eq!(
            write_var_int(&mut Vec::new(), MAX_VAR_INT + 1),
            Err(EncodeError::PacketTooLarge(MAX_VAR_INT + 1))
        );
        // Non-minimal forms of 0 and 127.
        assert!(matches!(
            read_var_int(&[0x80, 0x00]),
            Err(DecodeError::NonMinimalVarInt)
        ));
        assert!(matches!(
            read_var_int(&[0xFF, 0x80, 0x00]),
            Err(DecodeError::NonMinimalVarInt)
        ));
        assert!(matches!(
            read_var_int(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::RemainingLengthTooLong)
        ));
        assert!(matches!(read_var_int(&[0x80, 0x80]), Ok(VarInt::NeedMore)));
    }
}
