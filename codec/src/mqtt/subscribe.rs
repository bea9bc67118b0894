//! SUBSCRIBE (§3.8): packet identifier, v5 properties, then one or more topic filters each
//! with a subscription options byte.
//!
//! Enforced: at least one filter [MQTT-3.8.3-2], filter syntax (§4.7.1, and v5 shared
//! subscriptions §4.8.2), reserved option bits [MQTT-3.8.3-5], QoS 3, v5 Retain Handling 3,
//! No Local on a shared subscription [MQTT-3.8.3-4].

use super::error::{DecodeError, EncodeError};
use super::header::{write_with_len_prefix, PacketType};
use super::primitives::{is_shared, valid_topic_filter, write_string, write_u16, Reader};
use super::properties::{Properties, PropertyContext};
use super::{Protocol, QoS};

/// A SUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub pkid: u16,
    /// v5 properties (empty in 3.1.1).
    pub properties: Properties<'a>,
    /// Never empty.
    pub filters: Vec<SubscribeFilter<'a>>,
}

/// One topic filter and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter<'a> {
    pub filter: &'a str,
    pub options: SubscriptionOptions,
}

/// The subscription options byte (§3.8.3.1). In 3.1.1 only `qos` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with only a maximum QoS (all a 3.1.1 subscription has).
    pub fn qos(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }
}

/// v5 Retain Handling (§3.8.3.1); 3 is a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RetainHandling {
    SendAtSubscribe = 0,
    SendIfNewSubscription = 1,
    DoNotSend = 2,
}

impl SubscriptionOptions {
    fn read(byte: u8, filter: &str, protocol: Protocol) -> Result<Self, DecodeError> {
        let reserved = match protocol {
            Protocol::V311 => 0xFC,
            Protocol::V5 => 0xC0,
        };
        if byte & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions(byte));
        }
        let qos = QoS::try_from(byte & 0b11).map_err(|_| DecodeError::InvalidQoS)?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNewSubscription,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        let no_local = byte & 0b100 != 0;
        if no_local && is_shared(filter) {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        Ok(SubscriptionOptions {
            qos,
            no_local,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    fn byte(&self, filter: &str, protocol: Protocol) -> Result<u8, EncodeError> {
        let v5_bits = u8::from(self.no_local) << 2
            | u8::from(self.retain_as_published) << 3
            | (self.retain_handling as u8) << 4;
        if protocol == Protocol::V311 && v5_bits != 0 {
            return Err(EncodeError::NotInV311(
                "subscription options other than QoS",
            ));
        }
        if self.no_local && protocol == Protocol::V5 && is_shared(filter) {
            return Err(EncodeError::Invalid("No Local on a shared subscription"));
        }
        Ok(self.qos as u8 | v5_bits)
    }
}

impl<'a> Subscribe<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, protocol: Protocol) -> Result<Self, DecodeError> {
        let pkid = r.packet_id()?;
        let properties = match protocol {
            Protocol::V5 => Properties::read(r, PropertyContext::Subscribe)?,
            Protocol::V311 => Properties::default(),
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string()?;
            if !valid_topic_filter(filter, protocol == Protocol::V5) {
                return Err(DecodeError::InvalidTopicFilter);
            }
            let options = SubscriptionOptions::read(r.u8()?, filter, protocol)?;
            filters.push(SubscribeFilter { filter, options });
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::Subscribe));
        }
        Ok(Subscribe {
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
        out.push(PacketType::Subscribe.first_byte());
        write_with_len_prefix(out, |out| {
            write_u16(out, self.pkid);
            if protocol == Protocol::V5 {
                self.properties.write(PropertyContext::Subscribe, out)?;
            }
            for f in &self.filters {
                if !valid_topic_filter(f.filter, protocol == Protocol::V5) {
                    return Err(EncodeError::InvalidTopicFilter);
                }
                write_string(out, f.filter)?;
                out.push(f.options.byte(f.filter, protocol)?);
            }
            Ok(())
        })
    }
}
