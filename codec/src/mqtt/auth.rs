//! AUTH (§3.15, v5 only): extended authentication exchange.
//!
//! Remaining length 0 means Success with no properties; otherwise the reason code and the
//! property length are both present (§3.15.2.1), so a 1-byte AUTH is malformed. Reason codes
//! are limited to Success, Continue authentication and Re-authenticate.

use super::disconnect::{check_reason, read_reason};
use super::error::{DecodeError, EncodeError};
use super::header::{write_with_len_prefix, PacketType};
use super::primitives::Reader;
use super::properties::{Properties, PropertyContext};
use super::reason::ReasonCode;
use super::Protocol;

/// An AUTH packet (v5 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth<'a> {
    pub reason: ReasonCode,
    pub properties: Properties<'a>,
}

impl<'a> Auth<'a> {
    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        if r.is_empty() {
            return Ok(Auth {
                reason: ReasonCode::Success,
                properties: Properties::default(),
            });
        }
        let reason = read_reason(r, PacketType::Auth)?;
        let properties = Properties::read(r, PropertyContext::Auth)?;
        r.finish()?;
        Ok(Auth { reason, properties })
    }

    pub(crate) fn write(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if protocol == Protocol::V311 {
            return Err(EncodeError::NotInV311("AUTH"));
        }
        check_reason(self.reason, PacketType::Auth)?;
        let first = PacketType::Auth.first_byte();
        if self.reason == ReasonCode::Success && self.properties.is_empty() {
            out.extend_from_slice(&[first, 0]);
            return Ok(());
        }
        out.push(first);
        write_with_len_prefix(out, |out| {
            out.push(self.reason.into());
            self.properties.write(PropertyContext::Auth, out)
        })
    }
}
