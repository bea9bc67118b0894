//! PUBLISH (§3.3), the hot path: topic and payload borrow the read buffer, and with no v5
//! User Property or Subscription Identifier nothing is allocated.
//!
//! Fixed-header flag rules (QoS 3, DUP with QoS 0) are enforced in [`super::header`]; topic
//! and packet identifier rules here. Whether a client may send a Subscription Identifier
//! depends on direction and is checked by [`super::decode_from`].

use super::error::{DecodeError, EncodeError};
use super::header::{write_with_len_prefix, PacketType};
use super::primitives::{check_topic_name, write_string, write_u16, Reader};
use super::properties::{Properties, PropertyContext};
use super::{Protocol, QoS};

/// A PUBLISH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in v5 with a Topic Alias property.
    pub topic: &'a str,
    /// 0 for QoS 0 (no identifier on the wire), non-zero otherwise.
    pub pkid: u16,
    /// v5 PUBLISH properties (empty in 3.1.1).
    pub properties: Properties<'a>,
    pub payload: &'a [u8],
}

impl<'a> Publish<'a> {
    /// `flags` are the fixed-header flags, already validated.
    pub(crate) fn read(
        r: &mut Reader<'a>,
        flags: u8,
        protocol: Protocol,
    ) -> Result<Self, DecodeError> {
        let qos = QoS::try_from((flags >> 1) & 0b11).map_err(|_| DecodeError::InvalidQoS)?;
        let topic = r.string()?;
        check_topic_name(topic)?;
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            r.packet_id()?
        };
        let properties = match protocol {
            Protocol::V5 => Properties::read(r, PropertyContext::Publish)?,
            Protocol::V311 => Properties::default(),
        };
        // [MQTT-3.3.2-1] (3.1.1) / §3.3.2.3.4 (v5: a zero-length topic needs a Topic Alias).
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopic);
        }
        let payload = r.rest();
        Ok(Publish {
            dup: flags & 0b1000 != 0,
            qos,
            retain: flags & 1 != 0,
            topic,
            pkid,
            properties,
            payload,
        })
    }

    pub(crate) fn write(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if (self.qos == QoS::AtMostOnce) != (self.pkid == 0) {
            return Err(EncodeError::InvalidPacketId);
        }
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(EncodeError::Invalid("DUP with QoS 0"));
        }
        if self.topic.contains(['+', '#'])
            || (self.topic.is_empty() && self.properties.topic_alias.is_none())
        {
            return Err(EncodeError::InvalidTopicName);
        }
        if protocol == Protocol::V311 && !self.properties.is_empty() {
            return Err(EncodeError::NotInV311("properties"));
        }
        let flags = (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain);
        out.push(((PacketType::Publish as u8) << 4) | flags);
        write_with_len_prefix(out, |out| {
            write_string(out, self.topic)?;
            if self.qos != QoS::AtMostOnce {
                write_u16(out, self.pkid);
            }
            if protocol == Protocol::V5 {
                self.properties.write(PropertyContext::Publish, out)?;
            }
            out.extend_from_slice(self.payload);
            Ok(())
        })
    }
}
