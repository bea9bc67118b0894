//! PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4–3.7): a packet identifier and, in v5, an optional
//! reason code and properties.
//!
//! v5 allows the short forms (§3.4.2.1): remaining length 2 means Success with no
//! properties, 3 means a reason code with no properties. The encoder emits the shortest form.
//! The `encode_*` fast paths write the common frames without building a [`super::Packet`].

use super::error::{DecodeError, EncodeError};
use super::header::{write_with_len_prefix, PacketType};
use super::primitives::{write_u16, Reader};
use super::properties::{Properties, PropertyContext};
use super::reason::ReasonCode;
use super::Protocol;

/// PUBACK / PUBREC / PUBREL / PUBCOMP (the packet type says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack<'a> {
    pub pkid: u16,
    /// Always `Success` in 3.1.1.
    pub reason: ReasonCode,
    /// v5 properties (empty in 3.1.1).
    pub properties: Properties<'a>,
}

impl Ack<'_> {
    /// A plain acknowledgement: Success, no properties.
    pub fn new(pkid: u16) -> Self {
        Ack {
            pkid,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }
    }
}

pub(crate) fn context(packet_type: PacketType) -> PropertyContext {
    match packet_type {
        PacketType::PubRec => PropertyContext::PubRec,
        PacketType::PubRel => PropertyContext::PubRel,
        PacketType::PubComp => PropertyContext::PubComp,
        _ => PropertyContext::PubAck,
    }
}

impl<'a> Ack<'a> {
    pub(crate) fn read(
        r: &mut Reader<'a>,
        packet_type: PacketType,
        protocol: Protocol,
    ) -> Result<Self, DecodeError> {
        if protocol == Protocol::V311 && r.remaining() != 2 {
            return Err(DecodeError::InvalidRemainingLength {
                packet_type,
                expected: 2,
                actual: r.remaining(),
            });
        }
        let pkid = r.packet_id()?;
        let mut ack = Ack::new(pkid);
        if protocol == Protocol::V5 && !r.is_empty() {
            let code = r.u8()?;
            ack.reason = ReasonCode::try_from(code)
                .ok()
                .filter(|c| c.valid_for(packet_type))
                .ok_or(DecodeError::InvalidReasonCode { code, packet_type })?;
            if !r.is_empty() {
                ack.properties = Properties::read(r, context(packet_type))?;
            }
        }
        r.finish()?;
        Ok(ack)
    }

    pub(crate) fn write(
        &self,
        packet_type: PacketType,
        protocol: Protocol,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if self.pkid == 0 {
            return Err(EncodeError::InvalidPacketId);
        }
        let plain = self.reason == ReasonCode::Success && self.properties.is_empty();
        match protocol {
            Protocol::V311 if !plain => Err(EncodeError::NotInV311("reason code or properties")),
            _ if !self.reason.valid_for(packet_type) => Err(EncodeError::InvalidReasonCode {
                code: self.reason.into(),
                packet_type,
            }),
            _ if plain => {
                out.extend_from_slice(&[packet_type.first_byte(), 2]);
                write_u16(out, self.pkid);
                Ok(())
            }
            _ => {
                out.push(packet_type.first_byte());
                write_with_len_prefix(out, |out| {
                    write_u16(out, self.pkid);
                    out.push(self.reason.into());
                    if !self.properties.is_empty() {
                        self.properties.write(context(packet_type), out)?;
                    }
                    Ok(())
                })
            }
        }
    }
}

fn encode_short(
    packet_type: PacketType,
    pkid: u16,
    reason: ReasonCode,
    protocol: Protocol,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if pkid == 0 {
        return Err(EncodeError::InvalidPacketId);
    }
    let [hi, lo] = pkid.to_be_bytes();
    match (reason, protocol) {
        (ReasonCode::Success, _) => out.extend_from_slice(&[packet_type.first_byte(), 2, hi, lo]),
        (_, Protocol::V311) => return Err(EncodeError::NotInV311("reason code")),
        (code, Protocol::V5) if code.valid_for(packet_type) => {
            out.extend_from_slice(&[packet_type.first_byte(), 3, hi, lo, code.into()])
        }
        (code, Protocol::V5) => {
            return Err(EncodeError::InvalidReasonCode {
                code: code.into(),
                packet_type,
            })
        }
    }
    Ok(())
}

/// Appends a Success PUBACK (4 bytes, same in both versions). Fails only for `pkid == 0`.
pub fn encode_puback(pkid: u16, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    encode_short(PacketType::PubAck, pkid, ReasonCode::Success, protocol, out)
}

/// Appends a Success PUBREC.
pub fn encode_pubrec(pkid: u16, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    encode_short(PacketType::PubRec, pkid, ReasonCode::Success, protocol, out)
}

/// Appends a Success PUBREL.
pub fn encode_pubrel(pkid: u16, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    encode_short(PacketType::PubRel, pkid, ReasonCode::Success, protocol, out)
}

/// Appends a Success PUBCOMP.
pub fn encode_pubcomp(pkid: u16, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    encode_short(
        PacketType::PubComp,
        pkid,
        ReasonCode::Success,
        protocol,
        out,
    )
}

/// Appends a v5 PUBACK with a reason code and no properties (remaining length 3, or 2 for
/// Success). On 3.1.1 only Success is possible.
pub fn encode_puback_reason(
    pkid: u16,
    reason: ReasonCode,
    protocol: Protocol,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_short(PacketType::PubAck, pkid, reason, protocol, out)
}

/// Appends a v5 PUBREC with a reason code and no properties.
pub fn encode_pubrec_reason(
    pkid: u16,
    reason: ReasonCode,
    protocol: Protocol,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_short(PacketType::PubRec, pkid, reason, protocol, out)
}

/// Appends a v5 PUBREL with a reason code and no properties.
pub fn encode_pubrel_reason(
    pkid: u16,
    reason: ReasonCode,
    protocol: Protocol,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_short(PacketType::PubRel, pkid, reason, protocol, out)
}

/// Appends a v5 PUBCOMP with a reason code and no properties.
pub fn encode_pubcomp_reason(
    pkid: u16,
    reason: ReasonCode,
    protocol: Protocol,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_short(PacketType::PubComp, pkid, reason, protocol, out)
}
