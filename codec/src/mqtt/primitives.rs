//! Data representations of §1.5: two-byte integers, four-byte integers, variable byte
//! integers, UTF-8 strings and binary data, plus topic name / filter validity (§4.7).
//!
//! [`Reader`] walks one packet body that is already fully buffered, so running out of bytes
//! means the remaining length was too short for the declared fields (malformed), never
//! "need more". Everything is borrowed from the buffer; nothing allocates.

use super::error::{DecodeError, EncodeError};
use super::header::{read_var_int, write_var_int, PacketType, VarInt};

/// Cursor over one packet body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    /// Which packet is being read, for error reports.
    packet_type: PacketType,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], packet_type: PacketType) -> Self {
        Reader { buf, packet_type }
    }

    fn short(&self) -> DecodeError {
        DecodeError::RemainingLengthTooShort(self.packet_type)
    }

    pub(crate) fn packet_type(&self) -> PacketType {
        self.packet_type
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or_else(|| self.short())?;
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything that is left (PUBLISH payload, SUBACK codes).
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, tail) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = tail;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        match *b {
            [hi, lo] => Ok(u16::from_be_bytes([hi, lo])),
            _ => Err(self.short()),
        }
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        match *b {
            [a, b2, c, d] => Ok(u32::from_be_bytes([a, b2, c, d])),
            _ => Err(self.short()),
        }
    }

    /// A variable byte integer inside the body (property length, Subscription Identifier).
    pub(crate) fn var_int(&mut self) -> Result<usize, DecodeError> {
        match read_var_int(self.buf)? {
            VarInt::Value { value, len } => {
                self.take(len)?;
                Ok(value)
            }
            VarInt::NeedMore => Err(self.short()),
        }
    }

    /// Binary data: two-byte length then bytes (§1.5.6).
    pub(crate) fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// UTF-8 string (§1.5.4): well-formed UTF-8 [MQTT-1.5.4-1] (`from_utf8` rejects
    /// surrogates and overlong forms) and no U+0000 [MQTT-1.5.4-2].
    pub(crate) fn string(&mut self) -> Result<&'a str, DecodeError> {
        let bytes = self.binary()?;
        check_str(bytes)
    }

    /// Packet identifier, which must be non-zero [MQTT-2.2.1-3].
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId(self.packet_type)),
            id => Ok(id),
        }
    }

    /// Fails if any byte is left unconsumed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                packet_type: self.packet_type,
                extra: self.buf.len(),
            })
        }
    }
}

/// Validates bytes as an MQTT UTF-8 string.
pub(crate) fn check_str(bytes: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    if bytes.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(s)
}

/// A topic name a PUBLISH or Will may carry: no wildcards [MQTT-3.3.2-2]. Emptiness is
/// checked by the caller, since v5 allows it with a Topic Alias.
pub(crate) fn check_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::WildcardInTopicName);
    }
    Ok(())
}

/// Topic filter rules (§4.7.1): non-empty [MQTT-4.7.3-1]; `#` alone in the last level
/// [MQTT-4.7.1-2]; `+` alone in its level [MQTT-4.7.1-3]. With `shared` (v5), a
/// `$share/{ShareName}/{filter}` also needs a non-empty ShareName without `/`, `+`, `#`
/// [MQTT-4.8.2-1], [MQTT-4.8.2-2] and a valid filter after it.
pub(crate) fn valid_topic_filter(filter: &str, shared: bool) -> bool {
    if shared {
        if let Some(rest) = filter.strip_prefix("$share/") {
            return match rest.split_once('/') {
                Some((name, inner)) => {
                    !name.is_empty()
                        && !name.contains(['+', '#'])
                        && valid_topic_filter(inner, false)
                }
                None => false,
            };
        }
    }
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether a (v5) filter names a shared subscription.
pub(crate) fn is_shared(filter: &str) -> bool {
    filter.starts_with("$share/")
}

// ---- writing ----

pub(crate) fn write_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn write_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn write_binary(out: &mut Vec<u8>, v: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(v.len()).map_err(|_| EncodeError::FieldTooLong(v.len()))?;
    write_u16(out, len);
    out.extend_from_slice(v);
    Ok(())
}

pub(crate) fn write_string(out: &mut Vec<u8>, v: &str) -> Result<(), EncodeError> {
    if v.as_bytes().contains(&0) {
        return Err(EncodeError::NullCharacter);
    }
    write_binary(out, v.as_bytes())
}

pub(crate) fn write_var(out: &mut Vec<u8>, v: usize) -> Result<(), EncodeError> {
    write_var_int(out, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in [
            "a",
            "/",
            "#",
            "+",
            "a/#",
            "+/+",
            "a/+/b",
            "/#",
            "sport/tennis/+",
        ] {
            assert!(valid_topic_filter(ok, true), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+",
            "a/b+",
            "#/",
            "##",
            "$share/",
            "$share//a",
            "$share/a",
        ] {
            assert!(!valid_topic_filter(bad, true), "{bad}");
        }
        assert!(valid_topic_filter("$share/g/a/+", true));
        assert!(!valid_topic_filter("$share/g+/a", true));
        // In 3.1.1 "$share/a" is an ordinary filter.
        assert!(valid_topic_filter("$share/a", false));
    }

    #[test]
    fn strings() {
        assert_eq!(check_str(b"ok"), Ok("ok"));
        assert_eq!(check_str(b"a\0b"), Err(DecodeError::NullCharacter));
        // CESU-style encoded surrogate U+D800.
        assert_eq!(
            check_str(&[0xED, 0xA0, 0x80]),
            Err(DecodeError::InvalidUtf8)
        );
        // Overlong encoding of '/'.
        assert_eq!(check_str(&[0xC0, 0xAF]), Err(DecodeError::InvalidUtf8));
    }
}
