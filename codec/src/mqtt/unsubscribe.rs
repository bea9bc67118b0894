//! UNSUBSCRIBE (§3.10): packet identifier, v5 properties, one or more topic filters
//! [MQTT-3.10.3-2], each syntactically valid.

use super::error::{DecodeError, EncodeError};
use super::header::{write_with_len_prefix, PacketType};
use super::primitives::{valid_topic_filter, write_string, write_u16, Reader};
use super::properties::{Properties, PropertyContext};
use super::Protocol;

/// An UNSUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub pkid: u16,
    /// v5 properties (empty in 3.1.1).
    pub properties: Properties<'a>,
    /// Never empty.
    pub filters: Vec<&'a str>,
}

impl<'a> Unsubscribe<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, protocol: Protocol) -> Result<Self, DecodeError> {
        let pkid = r.packet_id()?;
        let properties = match protocol {
            Protocol::V5 => Properties::read(r, PropertyContext::Unsubscribe)?,
            Protocol::V311 => Properties::default(),
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string()?;
            if !valid_topic_filter(filter, protocol == Protocol::V5) {
                return Err(DecodeError::InvalidTopicFilter);
            }
            filters.push(filter);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::Unsubscribe));
        }
        Ok(Unsubscribe {
            pkid,
            properties,
            filters,
        })
    }

    pub(crate) fn write(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.pkid == 0 {
            return Err(EncodeError::InvalidPacketId);
        }
        if self.filters.is_empty() {
            return Err(EncodeError::Empty);
        }
        if protocol == Protocol::V311 && !self.properties.is_empty() {
            return Err(EncodeError::NotInV311("properties"));
        }
        out.push(PacketType::Unsubscribe.first_byte());
        write_with_len_prefix(out, |out| {
            write_u16(out, self.pkid);
            if protocol == Protocol::V5 {
                self.properties.write(PropertyContext::Unsubscribe, out)?;
            }
            for f in &self.filters {
                if !valid_topic_filter(f, protocol == Protocol::V5) {
                    return Err(EncodeError::InvalidTopicFilter);
                }
                write_string(out, f)?;
            }
            Ok(())
        })
    }
}
