//! Encoding within the peer's Maximum Packet Size (MQTT 5 §3.1.2.11.4, §3.2.2.3.6).
//!
//! A client may announce the largest packet it accepts; the server must never send it a
//! larger one [MQTT-3.1.2-24]. What may be left out to fit is the spec's "optional"
//! diagnostics, Reason String and User Property ([MQTT-3.2.2-19], [MQTT-3.2.2-20] and the
//! same sentences for every other packet), then, in CONNACK only, the capabilities the
//! server announces that have a default a client assumes when absent (Receive Maximum,
//! Maximum Packet Size, Maximum QoS, Retain Available, Topic Alias Maximum and the three
//! subscription flags). What a client cannot do without (Assigned Client Identifier,
//! Server Keep Alive, Session Expiry Interval, authentication, Response Information,
//! Server Reference) is kept. If the packet still does not fit it is not sent: the caller
//! closes the connection [MQTT-3.1.2-25]. The closing DISCONNECT is subject to the same
//! limit; its 3-byte form (reason code, no properties) fits every limit but 1 and 2.

use super::error::EncodeError;
use super::properties::Properties;
use super::{Packet, Protocol};

/// What [`encode_within`] had to leave out to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fitted {
    /// The packet as given.
    Whole,
    /// Without Reason String and User Properties.
    WithoutDiagnostics,
    /// CONNACK also without the capabilities that have defaults: the minimal form.
    Minimal,
}

/// Why a packet was not encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    /// Even the smallest allowed form is larger than the peer accepts: send nothing, close.
    #[error(
        "packet of at least {size_min} bytes exceeds the peer's maximum packet size of {max} bytes"
    )]
    TooLarge { size_min: usize, max: usize },
    /// The packet does not encode at all (a bug on the sending side).
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Appends `packet` to `out` as [`Packet::encode`] does, but never more than `max_bytes`
/// (the whole frame, fixed header included): optional properties are left out, in the order
/// the module comment gives, until it fits. On error `out` is left as it was.
///
/// `max_bytes` is the client's Maximum Packet Size ([`super::Connect::packet_bytes_max`]);
/// a 3.1.1 client announces none (`usize::MAX`). Packets with no optional property to drop
/// (PUBLISH, a plain PUBACK) are sent whole or refused.
pub fn encode_within(
    packet: &Packet<'_>,
    protocol: Protocol,
    max_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<Fitted, FitError> {
    let start = out.len();
    packet.encode(protocol, out)?;
    let mut size_min = out.len() - start;
    if size_min <= max_bytes {
        return Ok(Fitted::Whole);
    }
    out.truncate(start);
    for (stage, strip) in [
        (
            Fitted::WithoutDiagnostics,
            strip_diagnostics as fn(&mut Properties<'_>),
        ),
        (Fitted::Minimal, strip_defaults),
    ] {
        let mut smaller = packet.clone();
        let Some(properties) = properties_mut(&mut smaller, stage) else {
            continue;
        };
        strip(properties);
        smaller.encode(protocol, out)?;
        size_min = out.len() - start;
        if size_min <= max_bytes {
            return Ok(stage);
        }
        out.truncate(start);
    }
    Err(FitError::TooLarge {
        size_min,
        max: max_bytes,
    })
}

/// The properties a stage may trim: every packet's for the diagnostics, CONNACK's only for
/// the defaults. The later stage starts from a copy of the packet, so it strips both.
fn properties_mut<'p, 'a>(
    packet: &'p mut Packet<'a>,
    stage: Fitted,
) -> Option<&'p mut Properties<'a>> {
    let properties = match packet {
        Packet::ConnAck(p) => &mut p.properties,
        _ if stage == Fitted::Minimal => return None,
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            &mut p.properties
        }
        Packet::SubAck(p) => &mut p.properties,
        Packet::UnsubAck(p) => &mut p.properties,
        Packet::Disconnect(p) => &mut p.properties,
        Packet::Auth(p) => &mut p.properties,
        // PUBLISH's User Properties are the application's message, not diagnostics;
        // the client-only packets are never sent by a server.
        Packet::Publish(_)
        | Packet::Connect(_)
        | Packet::Subscribe(_)
        | Packet::Unsubscribe(_)
        | Packet::PingReq
        | Packet::PingResp => return None,
    };
    let has_diagnostics =
        properties.reason_string.is_some() || !properties.user_properties.is_empty();
    (stage == Fitted::Minimal || has_diagnostics).then_some(properties)
}

fn strip_diagnostics(p: &mut Properties<'_>) {
    p.reason_string = None;
    p.user_properties.clear();
}

fn strip_defaults(p: &mut Properties<'_>) {
    strip_diagnostics(p);
    p.receive_maximum = None;
    p.maximum_packet_size = None;
    p.maximum_qos = None;
    p.retain_available = None;
    p.topic_alias_maximum = None;
    p.wildcard_subscription_available = None;
    p.subscription_identifier_available = None;
    p.shared_subscription_available = None;
}
