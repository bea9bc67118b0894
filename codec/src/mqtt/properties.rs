//! MQTT 5.0 properties (§2.2.2): a property length (variable byte integer) followed by
//! identifier/value pairs.
//!
//! One [`Properties`] struct holds every property any packet may carry; which of them a given
//! packet may carry is table 2-4, enforced here on decode and on encode via
//! [`PropertyContext`]. Strings and binary values borrow the buffer; only User Property and
//! (server→client PUBLISH) Subscription Identifier, which may repeat, live in `Vec`s, and an
//! empty `Vec` does not allocate.

use super::error::{DecodeError, EncodeError};
use super::primitives::{write_binary, write_string, write_u16, write_u32, write_var, Reader};

/// Where a property block appears: a packet type, or the Will properties inside CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Property identifiers (§2.2.2.2, table 2-4).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Whether table 2-4 allows property `pid` in `ctx`.
pub fn allowed(pid: u8, ctx: PropertyContext) -> bool {
    use PropertyContext as C;
    match pid {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => matches!(ctx, C::Publish | C::Will),
        id::SUBSCRIPTION_IDENTIFIER => matches!(ctx, C::Publish | C::Subscribe),
        id::SESSION_EXPIRY_INTERVAL => matches!(ctx, C::Connect | C::ConnAck | C::Disconnect),
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => {
            matches!(ctx, C::Connect | C::ConnAck | C::Auth)
        }
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => ctx == C::Connect,
        id::WILL_DELAY_INTERVAL => ctx == C::Will,
        id::SERVER_REFERENCE => matches!(ctx, C::ConnAck | C::Disconnect),
        id::REASON_STRING => !matches!(
            ctx,
            C::Connect | C::Will | C::Publish | C::Subscribe | C::Unsubscribe
        ),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            matches!(ctx, C::Connect | C::ConnAck)
        }
        id::TOPIC_ALIAS => ctx == C::Publish,
        id::USER_PROPERTY => true,
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => ctx == C::ConnAck,
        _ => false,
    }
}

/// Every v5 property. `None` / empty means absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties<'a> {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<&'a str>,
    pub response_topic: Option<&'a str>,
    pub correlation_data: Option<&'a [u8]>,
    /// Several only in a server→client PUBLISH; at most one in SUBSCRIBE.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<&'a str>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<&'a str>,
    pub authentication_data: Option<&'a [u8]>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<&'a str>,
    pub server_reference: Option<&'a str>,
    pub reason_string: Option<&'a str>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(&'a str, &'a str)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// Value rules that the spec states as protocol errors, shared by decoder and encoder.
fn value_ok(pid: u8, value: u32) -> bool {
    match pid {
        // "It is a Protocol Error to include ... a value other than 0 or 1" (§3.1.2.11.7/8,
        // §3.2.2.3.4/5/11/12/13, §3.3.2.3.2).
        id::PAYLOAD_FORMAT_INDICATOR
        | id::REQUEST_PROBLEM_INFORMATION
        | id::REQUEST_RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => value <= 1,
        // Zero is a protocol error for Receive Maximum (§3.1.2.11.3), Maximum Packet Size
        // (§3.1.2.11.4), Topic Alias (§3.3.2.3.4), Subscription Identifier (§3.3.2.3.8).
        id::RECEIVE_MAXIMUM | id::MAXIMUM_PACKET_SIZE | id::TOPIC_ALIAS => value != 0,
        id::SUBSCRIPTION_IDENTIFIER => value != 0 && value as usize <= super::header::MAX_VAR_INT,
        _ => true,
    }
}

fn set_once<T>(slot: &mut Option<T>, pid: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(pid));
    }
    *slot = Some(value);
    Ok(())
}

fn check_value(pid: u8, value: u32) -> Result<u32, DecodeError> {
    if value_ok(pid, value) {
        Ok(value)
    } else {
        Err(DecodeError::InvalidPropertyValue { id: pid, value })
    }
}

impl<'a> Properties<'a> {
    /// True when no property is set (what 3.1.1 packets must have).
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property length and the properties it covers from `r`.
    pub(crate) fn read(r: &mut Reader<'a>, ctx: PropertyContext) -> Result<Self, DecodeError> {
        let len = r.var_int()?;
        let block = r.take(len)?;
        let mut p = Reader::new(block, r.packet_type());
        let mut props = Properties::default();
        while !p.is_empty() {
            props.read_one(&mut p, ctx).map_err(|e| match e {
                DecodeError::RemainingLengthTooShort(_) => DecodeError::PropertyLengthMismatch,
                other => other,
            })?;
        }
        // §3.1.2.11.10 / §3.15.2.2.3: Authentication Data without a method.
        if props.authentication_data.is_some() && props.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(props)
    }

    fn read_one(&mut self, p: &mut Reader<'a>, ctx: PropertyContext) -> Result<(), DecodeError> {
        // Identifiers are variable byte integers, but every defined one is < 0x80, so a
        // first byte with the continuation bit is simply unknown.
        let pid = p.u8()?;
        if pid == 0 || pid > id::SHARED_SUBSCRIPTION_AVAILABLE || !known(pid) {
            return Err(DecodeError::UnknownProperty(pid));
        }
        if !allowed(pid, ctx) {
            return Err(DecodeError::PropertyNotAllowed {
                id: pid,
                context: ctx,
            });
        }
        let byte = |p: &mut Reader<'a>| -> Result<u8, DecodeError> {
            let v = p.u8()?;
            check_value(pid, u32::from(v)).map(|_| v)
        };
        let two = |p: &mut Reader<'a>| -> Result<u16, DecodeError> {
            let v = p.u16()?;
            check_value(pid, u32::from(v)).map(|_| v)
        };
        let four = |p: &mut Reader<'a>| -> Result<u32, DecodeError> { check_value(pid, p.u32()?) };
        match pid {
            id::PAYLOAD_FORMAT_INDICATOR => {
                set_once(&mut self.payload_format_indicator, pid, byte(p)?)
            }
            id::MESSAGE_EXPIRY_INTERVAL => {
                set_once(&mut self.message_expiry_interval, pid, four(p)?)
            }
            id::CONTENT_TYPE => set_once(&mut self.content_type, pid, p.string()?),
            id::RESPONSE_TOPIC => {
                let topic = p.string()?;
                // The Response Topic is a topic name: non-empty, no wildcards [MQTT-3.3.2-14].
                if topic.is_empty() {
                    return Err(DecodeError::EmptyTopic);
                }
                super::primitives::check_topic_name(topic)?;
                set_once(&mut self.response_topic, pid, topic)
            }
            id::CORRELATION_DATA => set_once(&mut self.correlation_data, pid, p.binary()?),
            id::SUBSCRIPTION_IDENTIFIER => {
                let v = p.var_int()?;
                let v = u32::try_from(v).unwrap_or(0);
                check_value(pid, v)?;
                // Several are allowed only in PUBLISH (§3.3.2.3.8), one in SUBSCRIBE.
                if ctx != PropertyContext::Publish && !self.subscription_identifiers.is_empty() {
                    return Err(DecodeError::DuplicateProperty(pid));
                }
                self.subscription_identifiers.push(v);
                Ok(())
            }
            id::SESSION_EXPIRY_INTERVAL => {
                set_once(&mut self.session_expiry_interval, pid, four(p)?)
            }
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                set_once(&mut self.assigned_client_identifier, pid, p.string()?)
            }
            id::SERVER_KEEP_ALIVE => set_once(&mut self.server_keep_alive, pid, two(p)?),
            id::AUTHENTICATION_METHOD => {
                set_once(&mut self.authentication_method, pid, p.string()?)
            }
            id::AUTHENTICATION_DATA => set_once(&mut self.authentication_data, pid, p.binary()?),
            id::REQUEST_PROBLEM_INFORMATION => {
                set_once(&mut self.request_problem_information, pid, byte(p)?)
            }
            id::WILL_DELAY_INTERVAL => set_once(&mut self.will_delay_interval, pid, four(p)?),
            id::REQUEST_RESPONSE_INFORMATION => {
                set_once(&mut self.request_response_information, pid, byte(p)?)
            }
            id::RESPONSE_INFORMATION => set_once(&mut self.response_information, pid, p.string()?),
            id::SERVER_REFERENCE => set_once(&mut self.server_reference, pid, p.string()?),
            id::REASON_STRING => set_once(&mut self.reason_string, pid, p.string()?),
            id::RECEIVE_MAXIMUM => set_once(&mut self.receive_maximum, pid, two(p)?),
            id::TOPIC_ALIAS_MAXIMUM => set_once(&mut self.topic_alias_maximum, pid, two(p)?),
            id::TOPIC_ALIAS => set_once(&mut self.topic_alias, pid, two(p)?),
            id::MAXIMUM_QOS => set_once(&mut self.maximum_qos, pid, byte(p)?),
            id::RETAIN_AVAILABLE => set_once(&mut self.retain_available, pid, byte(p)?),
            id::USER_PROPERTY => {
                let k = p.string()?;
                let v = p.string()?;
                self.user_properties.push((k, v));
                Ok(())
            }
            id::MAXIMUM_PACKET_SIZE => set_once(&mut self.maximum_packet_size, pid, four(p)?),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                set_once(&mut self.wildcard_subscription_available, pid, byte(p)?)
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                set_once(&mut self.subscription_identifier_available, pid, byte(p)?)
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                set_once(&mut self.shared_subscription_available, pid, byte(p)?)
            }
            other => Err(DecodeError::UnknownProperty(other)),
        }
    }

    /// Writes the property length and the properties, checking each against `ctx` and the
    /// value rules so that the output is something [`Properties::read`] accepts.
    pub(crate) fn write(&self, ctx: PropertyContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(EncodeError::Invalid("authentication data without method"));
        }
        if ctx != PropertyContext::Publish && self.subscription_identifiers.len() > 1 {
            return Err(EncodeError::Invalid("several subscription identifiers"));
        }
        if self
            .response_topic
            .is_some_and(|t| t.is_empty() || t.contains(['+', '#']))
        {
            return Err(EncodeError::InvalidTopicName);
        }
        super::header::write_with_len_prefix(out, |out| {
            let head = |out: &mut Vec<u8>, pid: u8, value: u32| -> Result<(), EncodeError> {
                if !allowed(pid, ctx) {
                    return Err(EncodeError::PropertyNotAllowed {
                        id: pid,
                        context: ctx,
                    });
                }
                if !value_ok(pid, value) {
                    return Err(EncodeError::InvalidPropertyValue { id: pid, value });
                }
                out.push(pid);
                Ok(())
            };
            if let Some(v) = self.payload_format_indicator {
                head(out, id::PAYLOAD_FORMAT_INDICATOR, v.into())?;
                out.push(v);
            }
            if let Some(v) = self.message_expiry_interval {
                head(out, id::MESSAGE_EXPIRY_INTERVAL, v)?;
                write_u32(out, v);
            }
            if let Some(v) = self.content_type {
                head(out, id::CONTENT_TYPE, 0)?;
                write_string(out, v)?;
            }
            if let Some(v) = self.response_topic {
                head(out, id::RESPONSE_TOPIC, 0)?;
                write_string(out, v)?;
            }
            if let Some(v) = self.correlation_data {
                head(out, id::CORRELATION_DATA, 0)?;
                write_binary(out, v)?;
            }
            for &v in &self.subscription_identifiers {
                head(out, id::SUBSCRIPTION_IDENTIFIER, v)?;
                write_var(out, v as usize)?;
            }
            if let Some(v) = self.session_expiry_interval {
                head(out, id::SESSION_EXPIRY_INTERVAL, v)?;
                write_u32(out, v);
            }
            if let Some(v) = self.assigned_client_identifier {
                head(out, id::ASSIGNED_CLIENT_IDENTIFIER, 0)?;
                write_string(out, v)?;
            }
            if let Some(v) = self.server_keep_alive {
                head(out, id::SERVER_KEEP_ALIVE, v.into())?;
                write_u16(out, v);
            }
            if let Some(v) = self.authentication_method {
                head(out, id::AUTHENTICATION_METHOD, 0)?;
                write_string(out, v)?;
            }
            if let Some(v) = self.authentication_data {
                head(out, id::AUTHENTICATION_DATA, 0)?;
                write_binary(out, v)?;
            }
            if let Some(v) = self.request_problem_information {
                head(out, id::REQUEST_PROBLEM_INFORMATION, v.into())?;
                out.push(v);
            }
            if let Some(v) = self.will_delay_interval {
                head(out, id::WILL_DELAY_INTERVAL, v)?;
                write_u32(out, v);
            }
            if let Some(v) = self.request_response_information {
                head(out, id::REQUEST_RESPONSE_INFORMATION, v.into())?;
                out.push(v);
            }
            if let Some(v) = self.response_information {
                head(out, id::RESPONSE_INFORMATION, 0)?;
                write_string(out, v)?;
            }
            if let Some(v) = self.server_reference {
                head(out, id::SERVER_REFERENCE, 0)?;
                write_string(out, v)?;
            }
            if let Some(v) = self.reason_string {
                head(out, id::REASON_STRING, 0)?;
                write_string(out, v)?;
            }
            if let Some(v) = self.receive_maximum {
                head(out, id::RECEIVE_MAXIMUM, v.into())?;
                write_u16(out, v);
            }
            if let Some(v) = self.topic_alias_maximum {
                head(out, id::TOPIC_ALIAS_MAXIMUM, v.into())?;
                write_u16(out, v);
            }
            if let Some(v) = self.topic_alias {
                head(out, id::TOPIC_ALIAS, v.into())?;
                write_u16(out, v);
            }
            if let Some(v) = self.maximum_qos {
                head(out, id::MAXIMUM_QOS, v.into())?;
                out.push(v);
            }
            if let Some(v) = self.retain_available {
                head(out, id::RETAIN_AVAILABLE, v.into())?;
                out.push(v);
            }
            for (k, v) in &self.user_properties {
                head(out, id::USER_PROPERTY, 0)?;
                write_string(out, k)?;
                write_string(out, v)?;
            }
            if let Some(v) = self.maximum_packet_size {
                head(out, id::MAXIMUM_PACKET_SIZE, v)?;
                write_u32(out, v);
            }
            if let Some(v) = self.wildcard_subscription_available {
                head(out, id::WILDCARD_SUBSCRIPTION_AVAILABLE, v.into())?;
                out.push(v);
            }
            if let Some(v) = self.subscription_identifier_available {
                head(out, id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, v.into())?;
                out.push(v);
            }
            if let Some(v) = self.shared_subscription_available {
                head(out, id::SHARED_SUBSCRIPTION_AVAILABLE, v.into())?;
                out.push(v);
            }
            Ok(())
        })
    }
}

fn known(pid: u8) -> bool {
    matches!(
        pid,
        0x01 | 0x02
            | 0x03
            | 0x08
            | 0x09
            | 0x0B
            | 0x11
            | 0x12
            | 0x13
            | 0x15..=0x19
            | 0x1A
            | 0x1C
            | 0x1F
            | 0x21..=0x2A
    )
}
