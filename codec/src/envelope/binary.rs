//! Binary form decoder: canonical body || 64-byte signature, nothing before or after.
//!
//! Checks run in wire order, so the first defect met is the one reported: size limit, then
//! each field as it is read (a field cut short is `Truncated`), then the signature, then
//! leftovers (`TrailingBytes`).

use super::{
    check_reading, is_valid_device_id, Envelope, EnvelopeError, Reading, Readings,
    MAX_DEVICE_ID_LEN, MAX_READINGS, SIGNATURE_LEN, VERSION,
};

/// A bounds-checked reader; every short read is `Truncated`.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or(EnvelopeError::Truncated)?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| EnvelopeError::Truncated)
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(u8::from_be_bytes(self.array::<1>()?))
    }

    fn u16(&mut self) -> Result<u16, EnvelopeError> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }

    fn u64(&mut self) -> Result<u64, EnvelopeError> {
        Ok(u64::from_be_bytes(self.array::<8>()?))
    }
}

/// Decodes a binary envelope. `max_bytes` is checked first, before any parsing.
pub fn decode_binary(payload: &[u8], max_bytes: usize) -> Result<Envelope<'_>, EnvelopeError> {
    if payload.len() > max_bytes {
        return Err(EnvelopeError::Oversize {
            len: payload.len(),
            max: max_bytes,
        });
    }
    let mut c = Cursor { rest: payload };
    let version = c.u8()?;
    if version != VERSION {
        return Err(EnvelopeError::UnknownVersion(u64::from(version)));
    }
    let flags = c.u8()?;
    if flags != 0 {
        return Err(EnvelopeError::BadFlags(flags));
    }
    let id_len = usize::from(c.u8()?);
    if id_len == 0 || id_len > MAX_DEVICE_ID_LEN {
        return Err(EnvelopeError::BadDeviceId);
    }
    let id = c.take(id_len)?;
    if !is_valid_device_id(id) {
        return Err(EnvelopeError::BadDeviceId);
    }
    // Valid ids are ASCII, so this cannot fail; mapping the error keeps it panic-free.
    let device_id = std::str::from_utf8(id).map_err(|_| EnvelopeError::BadDeviceId)?;
    let seq = c.u64()?;
    let ts_ms = c.u64()?;
    let count = usize::from(c.u8()?);
    if count == 0 {
        return Err(EnvelopeError::NoReadings);
    }
    if count > MAX_READINGS {
        return Err(EnvelopeError::TooManyReadings);
    }
    let mut readings = Readings::new();
    let mut prev = None;
    for _ in 0..count {
        let kind = c.u16()?;
        let value = f32::from_bits(u32::from_be_bytes(c.array::<4>()?));
        let r = Reading { kind, value };
        check_reading(prev, &r)?;
        prev = Some(kind);
        readings.push(r)?;
    }
    let signature = c.array::<SIGNATURE_LEN>()?;
    if !c.rest.is_empty() {
        return Err(EnvelopeError::TrailingBytes);
    }
    Ok(Envelope {
        version,
        device_id,
        seq,
        ts_ms,
        readings,
        signature,
    })
}
