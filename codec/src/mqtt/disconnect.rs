//! DISCONNECT (§3.14): an optional reason code and optional properties.
//!
//! 3.1.1 DISCONNECT has remaining length 0 [MQTT-3.14.1-1]. v5 DISCONNECT: remaining length 0
//! means Normal disconnection, 1 a reason code without properties (§3.14.2.1). Reason codes
//! are limited to the DISCONNECT set (§3.14.2.1).

use super::error::{DecodeError, EncodeError};
use super::header::{write_with_len_prefix, PacketType};
use super::primitives::Reader;
use super::properties::{Properties, PropertyContext};
use super::reason::ReasonCode;
use super::Protocol;

/// A DISCONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect<'a> {
    /// `Success` (normal disconnection) in 3.1.1.
    pub reason: ReasonCode,
    /// v5 properties (empty in 3.1.1).
    pub properties: Properties<'a>,
}

pub(crate) fn read_reason(
    r: &mut Reader<'_>,
    packet_type: PacketType,
) -> Result<ReasonCode, DecodeError> {
    let code = r.u8()?;
    ReasonCode::try_from(code)
        .ok()
        .filter(|c| c.valid_for(packet_type))
        .ok_or(DecodeError::InvalidReasonCode { code, packet_type })
}

pub(crate) fn check_reason(reason: ReasonCode, packet_type: PacketType) -> Result<(), EncodeError> {
    if reason.valid_for(packet_type) {
        Ok(())
    } else {
        Err(EncodeError::InvalidReasonCode {
            code: reason.into(),
            packet_type,
        })
    }
}

impl<'a> Disconnect<'a> {
    /// Normal disconnection, no properties.
    pub fn normal() -> Self {
        Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }
    }

    pub(crate) fn read(r: &mut Reader<'a>, protocol: Protocol) -> Result<Self, DecodeError> {
        let mut d = Disconnect::normal();
        match protocol {
            Protocol::V311 => {
                if !r.is_empty() {
                    return Err(DecodeError::InvalidRemainingLength {
                        packet_type: PacketType::Disconnect,
                        expected: 0,
                        actual: r.remaining(),
                    });
                }
            }
            Protocol::V5 => {
                if !r.is_empty() {
                    d.reason = read_reason(r, PacketType::Disconnect)?;
                }
                if !r.is_empty() {
                    d.properties = Properties::read(r, PropertyContext::Disconnect)?;
                }
            }
        }
        r.finish()?;
        Ok(d)
    }

    pub(crate) fn write(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let first = PacketType::Disconnect.first_byte();
        match protocol {
            Protocol::V311 => {
                if self.reason != ReasonCode::Success || !self.properties.is_empty() {
                    return Err(EncodeError::NotInV311("reason code or properties"));
                }
                out.extend_from_slice(&[first, 0]);
            }
            Protocol::V5 => {
                check_reason(self.reason, PacketType::Disconnect)?;
                if self.properties.is_empty() {
                    if self.reason == ReasonCode::Success {
                        out.extend_from_slice(&[first, 0]);
                    } else {
                        out.extend_from_slice(&[first, 1, self.reason.into()]);
                    }
                } else {
                    out.push(first);
                    write_with_len_prefix(out, |out| {
                        out.push(self.reason.into());
                        self.properties.write(PropertyContext::Disconnect, out)
                    })?;
                }
            }
        }
        Ok(())
    }
}
