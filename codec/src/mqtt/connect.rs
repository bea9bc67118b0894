//! CONNECT (§3.1): the first packet of a connection, and the only one decoded before the
//! protocol version is known; it carries its own level, reported in [`Connect::protocol`].
//!
//! Enforced here: protocol name and level, reserved flag, Will flag consistency, 3.1.1
//! user name / password pairing, 3.1.1 empty client id with CleanSession=0, v5 CONNECT and
//! Will properties, Will topic validity and the Will Payload Format Indicator. Whether a
//! client id is acceptable otherwise (length, characters, v5 assignment) is the server's call.

use super::error::{DecodeError, EncodeError};
use super::header::{write_with_len_prefix, PacketType};
use super::primitives::{check_topic_name, write_binary, write_string, write_u16, Reader};
use super::properties::{Properties, PropertyContext};
use super::{Protocol, QoS};

/// A CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect<'a> {
    /// The level the client asked for (4 → 3.1.1, 5 → 5.0).
    pub protocol: Protocol,
    /// CleanSession (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns the mechanism off (§3.1.2.10).
    pub keep_alive: u16,
    /// v5 CONNECT properties (empty in 3.1.1).
    pub properties: Properties<'a>,
    /// May be empty; the server decides whether to accept or assign one.
    pub client_id: &'a str,
    pub will: Option<Will<'a>>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// The Will message carried in CONNECT (§3.1.2.5, §3.1.3.2–4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
    /// v5 Will properties (empty in 3.1.1).
    pub properties: Properties<'a>,
}

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;

impl Connect<'_> {
    /// The largest packet, in bytes (fixed header included), the client accepts: its v5
    /// Maximum Packet Size, `usize::MAX` when it announced none (and always in 3.1.1).
    /// The decoder has already refused 0 as a Protocol Error (§3.1.2.11.4). Pass this to
    /// [`super::encode_within`] for every packet sent on the connection [MQTT-3.1.2-24].
    pub fn packet_bytes_max(&self) -> usize {
        self.properties
            .maximum_packet_size
            .map_or(usize::MAX, |v| usize::try_from(v).unwrap_or(usize::MAX))
    }
}

impl<'a> Connect<'a> {
    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        // Read the name as raw bytes so that MQTT 3.1's "MQIsdp" can be told apart.
        let name = r.binary()?;
        let level = r.u8()?;
        match name {
            b"MQTT" => {}
            // MQTT 3.1 (level 3): a version we do not speak, answered with CONNACK 0x01.
            b"MQIsdp" => return Err(DecodeError::UnsupportedProtocolVersion { level }),
            _ => return Err(DecodeError::InvalidProtocolName),
        }
        let protocol = match level {
            4 => Protocol::V311,
            5 => Protocol::V5,
            // [MQTT-3.1.2-2]: answer CONNACK 0x01 / 0x84 and close.
            other => return Err(DecodeError::UnsupportedProtocolVersion { level: other }),
        };
        let flags = r.u8()?;
        if flags & FLAG_RESERVED != 0 {
            return Err(DecodeError::ReservedConnectFlag); // [MQTT-3.1.2-3]
        }
        let will_flag = flags & FLAG_WILL != 0;
        let will_qos = (flags >> 3) & 0b11;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        if !will_flag && (will_qos != 0 || will_retain) {
            return Err(DecodeError::WillFlagsWithoutWill); // [MQTT-3.1.2-11], [MQTT-3.1.2-13]
        }
        let will_qos = QoS::try_from(will_qos).map_err(|_| DecodeError::InvalidQoS)?; // [MQTT-3.1.2-14]
        let has_username = flags & FLAG_USERNAME != 0;
        let has_password = flags & FLAG_PASSWORD != 0;
        if protocol == Protocol::V311 && has_password && !has_username {
            return Err(DecodeError::PasswordWithoutUsername); // [MQTT-3.1.2-22]
        }
        let clean_start = flags & FLAG_CLEAN != 0;
        let keep_alive = r.u16()?;
        let properties = match protocol {
            Protocol::V5 => Properties::read(r, PropertyContext::Connect)?,
            Protocol::V311 => Properties::default(),
        };
        let client_id = r.string()?;
        if protocol == Protocol::V311 && client_id.is_empty() && !clean_start {
            return Err(DecodeError::ClientIdRejected); // [MQTT-3.1.3-8]
        }
        let will = if will_flag {
            let properties = match protocol {
                Protocol::V5 => Properties::read(r, PropertyContext::Will)?,
                Protocol::V311 => Properties::default(),
            };
            let topic = r.string()?;
            if topic.is_empty() {
                return Err(DecodeError::EmptyTopic);
            }
            check_topic_name(topic)?;
            let payload = r.binary()?;
            // [MQTT-3.1.3-11]: a Will declared UTF-8 must be UTF-8.
            if properties.payload_format_indicator == Some(1)
                && std::str::from_utf8(payload).is_err()
            {
                return Err(DecodeError::WillPayloadNotUtf8);
            }
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary()?)
        } else {
            None
        };
        r.finish()?;
        Ok(Connect {
            protocol,
            clean_start,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    /// Encodes with the connect's own [`Connect::protocol`].
    pub(crate) fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let v5 = self.protocol == Protocol::V5;
        if !v5 {
            if !self.properties.is_empty()
                || self.will.as_ref().is_some_and(|w| !w.properties.is_empty())
            {
                return Err(EncodeError::NotInV311("properties"));
            }
            if self.password.is_some() && self.username.is_none() {
                return Err(EncodeError::NotInV311("password without user name"));
            }
            if self.client_id.is_empty() && !self.clean_start {
                return Err(EncodeError::Invalid("empty client id needs clean session"));
            }
        }
        let mut flags = 0u8;
        if self.clean_start {
            flags |= FLAG_CLEAN;
        }
        if let Some(w) = &self.will {
            flags |= FLAG_WILL | ((w.qos as u8) << 3);
            if w.retain {
                flags |= FLAG_WILL_RETAIN;
            }
            if w.topic.is_empty() || w.topic.contains(['+', '#']) {
                return Err(EncodeError::InvalidTopicName);
            }
            if w.properties.payload_format_indicator == Some(1)
                && std::str::from_utf8(w.payload).is_err()
            {
                return Err(EncodeError::Invalid("will payload not UTF-8"));
            }
        }
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        out.push(PacketType::Connect.first_byte());
        write_with_len_prefix(out, |out| {
            write_string(out, "MQTT")?;
            out.push(if v5 { 5 } else { 4 });
            out.push(flags);
            write_u16(out, self.keep_alive);
            if v5 {
                self.properties.write(PropertyContext::Connect, out)?;
            }
            write_string(out, self.client_id)?;
            if let Some(w) = &self.will {
                if v5 {
                    w.properties.write(PropertyContext::Will, out)?;
                }
                write_string(out, w.topic)?;
                write_binary(out, w.payload)?;
            }
            if let Some(u) = self.username {
                write_string(out, u)?;
            }
            if let Some(p) = self.password {
                write_binary(out, p)?;
            }
            Ok(())
        })
    }
}
