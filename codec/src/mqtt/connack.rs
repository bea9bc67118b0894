//! CONNACK (§3.2): the server's answer to CONNECT.
//!
//! The code is held as a v5 [`ReasonCode`] in both versions; on 3.1.1 it must be one of the
//! six that have a return-code equivalent (§3.2.2.3), anything else is an [`EncodeError`].

use super::error::{DecodeError, EncodeError};
use super::header::{write_with_len_prefix, PacketType};
use super::primitives::Reader;
use super::properties::{Properties, PropertyContext};
use super::reason::{ConnectReturnCode, ReasonCode};
use super::Protocol;

/// A CONNACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck<'a> {
    pub session_present: bool,
    pub reason: ReasonCode,
    /// v5 CONNACK properties (empty in 3.1.1).
    pub properties: Properties<'a>,
}

impl<'a> ConnAck<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, protocol: Protocol) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        // Bits 7–1 of the acknowledge flags are reserved and must be 0 (§3.2.2.1).
        if flags & 0xFE != 0 {
            return Err(DecodeError::InvalidConnAckFlags(flags));
        }
        let code = r.u8()?;
        let (reason, properties) = match protocol {
            Protocol::V311 => {
                let rc =
                    ConnectReturnCode::try_from(code).map_err(DecodeError::InvalidReturnCode)?;
                (ReasonCode::from(rc), Properties::default())
            }
            Protocol::V5 => {
                let reason = ReasonCode::try_from(code)
                    .ok()
                    .filter(|c| c.valid_for(PacketType::ConnAck))
                    .ok_or(DecodeError::InvalidReasonCode {
                        code,
                        packet_type: PacketType::ConnAck,
                    })?;
                (reason, Properties::read(r, PropertyContext::ConnAck)?)
            }
        };
        r.finish()?;
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            reason,
            properties,
        })
    }

    pub(crate) fn write(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let code = match protocol {
            Protocol::V311 => {
                if !self.properties.is_empty() {
                    return Err(EncodeError::NotInV311("properties"));
                }
                u8::from(self.reason.to_connect_return_code().ok_or(
                    EncodeError::InvalidReasonCode {
                        code: self.reason.into(),
                        packet_type: PacketType::ConnAck,
                    },
                )?)
            }
            Protocol::V5 => {
                if !self.reason.valid_for(PacketType::ConnAck) {
                    return Err(EncodeError::InvalidReasonCode {
                        code: self.reason.into(),
                        packet_type: PacketType::ConnAck,
                    });
                }
                self.reason.into()
            }
        };
        out.push(PacketType::ConnAck.first_byte());
        write_with_len_prefix(out, |out| {
            out.push(u8::from(self.session_present));
            out.push(code);
            if protocol == Protocol::V5 {
                self.properties.write(PropertyContext::ConnAck, out)?;
            }
            Ok(())
        })
    }
}
