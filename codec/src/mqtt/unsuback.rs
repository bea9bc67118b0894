//! UNSUBACK (§3.11): in 3.1.1 only a packet identifier (remaining length 2); in v5 also
//! properties and one reason code per filter.

use super::error::{DecodeError, EncodeError};
use super::header::{write_with_len_prefix, PacketType};
use super::primitives::{write_u16, Reader};
use super::properties::{Properties, PropertyContext};
use super::reason::ReasonCode;
use super::Protocol;

/// An UNSUBACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck<'a> {
    pub pkid: u16,
    /// v5 properties (empty in 3.1.1).
    pub properties: Properties<'a>,
    /// v5: one per filter, never empty; 3.1.1: always empty.
    pub reasons: Vec<ReasonCode>,
}

impl<'a> UnsubAck<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, protocol: Protocol) -> Result<Self, DecodeError> {
        if protocol == Protocol::V311 && r.remaining() != 2 {
            return Err(DecodeError::InvalidRemainingLength {
                packet_type: PacketType::UnsubAck,
                expected: 2,
                actual: r.remaining(),
            });
        }
        let pkid = r.packet_id()?;
        if protocol == Protocol::V311 {
            return Ok(UnsubAck {
                pkid,
                properties: Properties::default(),
                reasons: Vec::new(),
            });
        }
        let properties = Properties::read(r, PropertyContext::UnsubAck)?;
        let codes = r.rest();
        if codes.is_empty() {
            return Err(DecodeError::RemainingLengthTooShort(PacketType::UnsubAck));
        }
        let mut reasons = Vec::with_capacity(codes.len());
        for &code in codes {
            reasons.push(
                ReasonCode::try_from(code)
                    .ok()
                    .filter(|c| c.valid_for(PacketType::UnsubAck))
                    .ok_or(DecodeError::InvalidReasonCode {
                        code,
                        packet_type: PacketType::UnsubAck,
                    })?,
            );
        }
        Ok(UnsubAck {
            pkid,
            properties,
            reasons,
        })
    }

    pub(crate) fn write(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.pkid == 0 {
            return Err(EncodeError::InvalidPacketId);
        }
        match protocol {
            Protocol::V311 => {
                if !self.properties.is_empty() || !self.reasons.is_empty() {
                    return Err(EncodeError::NotInV311("reason codes or properties"));
                }
                out.extend_from_slice(&[PacketType::UnsubAck.first_byte(), 2]);
                write_u16(out, self.pkid);
                Ok(())
            }
            Protocol::V5 => {
                if self.reasons.is_empty() {
                    return Err(EncodeError::Empty);
                }
                if let Some(&c) = self
                    .reasons
                    .iter()
                    .find(|c| !c.valid_for(PacketType::UnsubAck))
                {
                    return Err(EncodeError::InvalidReasonCode {
                        code: c.into(),
                        packet_type: PacketType::UnsubAck,
                    });
                }
                out.push(PacketType::UnsubAck.first_byte());
                write_with_len_prefix(out, |out| {
                    write_u16(out, self.pkid);
                    self.properties.write(PropertyContext::UnsubAck, out)?;
                    out.extend(self.reasons.iter().map(|&c| u8::from(c)));
                    Ok(())
                })
            }
        }
    }
}
