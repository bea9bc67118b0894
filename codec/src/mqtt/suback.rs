//! SUBACK (§3.9): packet identifier, v5 properties, one return/reason code per filter.
//!
//! 3.1.1 return codes are 0x00, 0x01, 0x02 and 0x80 (§3.9.3); they are held as the v5
//! [`ReasonCode`]s with the same values (Success, GrantedQoS1, GrantedQoS2, UnspecifiedError).

use super::error::{DecodeError, EncodeError};
use super::header::{write_with_len_prefix, PacketType};
use super::primitives::{write_u16, Reader};
use super::properties::{Properties, PropertyContext};
use super::reason::ReasonCode;
use super::Protocol;

/// A SUBACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck<'a> {
    pub pkid: u16,
    /// v5 properties (empty in 3.1.1).
    pub properties: Properties<'a>,
    /// One per filter of the SUBSCRIBE; never empty.
    pub return_codes: Vec<ReasonCode>,
}

fn valid_v311(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::Success
            | ReasonCode::GrantedQoS1
            | ReasonCode::GrantedQoS2
            | ReasonCode::UnspecifiedError
    )
}

impl<'a> SubAck<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, protocol: Protocol) -> Result<Self, DecodeError> {
        let pkid = r.packet_id()?;
        let properties = match protocol {
            Protocol::V5 => Properties::read(r, PropertyContext::SubAck)?,
            Protocol::V311 => Properties::default(),
        };
        let codes = r.rest();
        if codes.is_empty() {
            return Err(DecodeError::RemainingLengthTooShort(PacketType::SubAck));
        }
        let mut return_codes = Vec::with_capacity(codes.len());
        for &code in codes {
            let rc = ReasonCode::try_from(code).ok();
            let rc = match protocol {
                Protocol::V311 => rc
                    .filter(|c| valid_v311(*c))
                    .ok_or(DecodeError::InvalidReturnCode(code))?,
                Protocol::V5 => rc.filter(|c| c.valid_for(PacketType::SubAck)).ok_or(
                    DecodeError::InvalidReasonCode {
                        code,
                        packet_type: PacketType::SubAck,
                    },
                )?,
            };
            return_codes.push(rc);
        }
        Ok(SubAck {
            pkid,
            properties,
            return_codes,
        })
    }

    pub(crate) fn write(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.pkid == 0 {
            return Err(EncodeError::InvalidPacketId);
        }
        if self.return_codes.is_empty() {
            return Err(EncodeError::Empty);
        }
        if protocol == Protocol::V311 && !self.properties.is_empty() {
            return Err(EncodeError::NotInV311("properties"));
        }
        for &c in &self.return_codes {
            let ok = match protocol {
                Protocol::V311 => valid_v311(c),
                Protocol::V5 => c.valid_for(PacketType::SubAck),
            };
            if !ok {
                return Err(EncodeError::InvalidReasonCode {
                    code: c.into(),
                    packet_type: PacketType::SubAck,
                });
            }
        }
        out.push(PacketType::SubAck.first_byte());
        write_with_len_prefix(out, |out| {
            write_u16(out, self.pkid);
            if protocol == Protocol::V5 {
                self.properties.write(PropertyContext::SubAck, out)?;
            }
            out.extend(self.return_codes.iter().map(|&c| u8::from(c)));
            Ok(())
        })
    }
}
