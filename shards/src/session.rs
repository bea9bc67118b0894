//! The per-device MQTT session state the home shard keeps between packets and, for
//! persistent sessions, between connections.
//!
//! Inbound QoS 2 is the only flow with server-side state ([MQTT-4.3.3]): a PUBLISH's packet
//! id is remembered from its arrival until the PUBREL, so a redelivered PUBLISH (DUP) is
//! answered with PUBREC again but never delivered onward twice. QoS 1 needs none here: a
//! redelivery carries the same sequence number and the replay window recognises it.

use std::collections::HashMap;

/// Where an inbound QoS 2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2State {
    /// Received; its record is not yet durable, so no PUBREC was sent.
    Pending,
    /// Durable and PUBREC sent; waiting for PUBREL.
    Durable,
}

/// What to do with an inbound QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Action {
    /// A new message: process it; PUBREC once durable.
    Deliver,
    /// A redelivery of a message not yet durable: its PUBREC will follow; do nothing.
    AwaitDurable,
    /// A redelivery of a durable message: send PUBREC again, deliver nothing.
    ResendPubrec,
    /// More unreleased QoS 2 messages than the receive maximum allows.
    TooMany,
}

/// Session state of one device.
#[derive(Debug, Clone, Default)]
pub struct Session {
    qos2: HashMap<u16, Qos2State>,
}

impl Session {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An inbound QoS 2 PUBLISH with `pkid`; `max` bounds the unreleased ids kept.
    pub fn qos2_publish(&mut self, pkid: u16, max: usize) -> Qos2Action {
        match self.qos2.get(&pkid) {
            Some(Qos2State::Pending) => Qos2Action::AwaitDurable,
            Some(Qos2State::Durable) => Qos2Action::ResendPubrec,
            None if self.qos2.len() >= max => Qos2Action::TooMany,
            None => {
                self.qos2.insert(pkid, Qos2State::Pending);
                Qos2Action::Deliver
            }
        }
    }

    /// The record of QoS 2 message `pkid` is durable; PUBREC is being sent.
    pub fn qos2_durable(&mut self, pkid: u16) {
        if let Some(state) = self.qos2.get_mut(&pkid) {
            *state = Qos2State::Durable;
        }
    }

    /// The message `pkid` was refused before it became a record (nothing was stored, and
    /// its refusal was acknowledged): forget it so a corrected resend is processed anew.
    pub fn qos2_forget(&mut self, pkid: u16) {
        self.qos2.remove(&pkid);
    }

    /// PUBREL for `pkid`: the exchange ends. False when the id was unknown (v5 answers
    /// PUBCOMP with "packet identifier not found"; 3.1.1 answers PUBCOMP anyway).
    pub fn pubrel(&mut self, pkid: u16) -> bool {
        self.qos2.remove(&pkid).is_some()
    }

    /// A connection ended before its pending records were durable: those messages were
    /// never acknowledged and the device will resend them, so they start over.
    pub fn drop_pending(&mut self) {
        self.qos2.retain(|_, state| *state == Qos2State::Durable);
    }

    /// Unreleased QoS 2 ids.
    #[must_use]
    pub fn qos2_len(&self) -> usize {
        self.qos2.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos2_exactly_once_flow() {
        let mut session = Session::new();
        assert_eq!(session.qos2_publish(1, 10), Qos2Action::Deliver);
        // Redelivered before durable: wait for the first.
        assert_eq!(session.qos2_publish(1, 10), Qos2Action::AwaitDurable);
        session.qos2_durable(1);
        // Redelivered after PUBREC was lost: PUBREC again, no second delivery.
        assert_eq!(session.qos2_publish(1, 10), Qos2Action::ResendPubrec);
        assert!(session.pubrel(1));
        assert!(!session.pubrel(1));
        // The id is free again.
        assert_eq!(session.qos2_publish(1, 10), Qos2Action::Deliver);
    }

    #[test]
    fn qos2_is_bounded_by_receive_maximum() {
        let mut session = Session::new();
        assert_eq!(session.qos2_publish(1, 2), Qos2Action::Deliver);
        assert_eq!(session.qos2_publish(2, 2), Qos2Action::Deliver);
        assert_eq!(session.qos2_publish(3, 2), Qos2Action::TooMany);
        // A known id is still answered.
        assert_eq!(session.qos2_publish(2, 2), Qos2Action::AwaitDurable);
    }

    #[test]
    fn reconnect_keeps_durable_and_drops_pending() {
        let mut session = Session::new();
        session.qos2_publish(1, 10);
        session.qos2_publish(2, 10);
        session.qos2_durable(1);
        session.drop_pending();
        assert_eq!(session.qos2_publish(1, 10), Qos2Action::ResendPubrec);
        assert_eq!(session.qos2_publish(2, 10), Qos2Action::Deliver);
    }

    #[test]
    fn refused_message_can_be_resent() {
        let mut session = Session::new();
        session.qos2_publish(5, 10);
        session.qos2_forget(5);
        assert_eq!(session.qos2_publish(5, 10), Qos2Action::Deliver);
    }
}
