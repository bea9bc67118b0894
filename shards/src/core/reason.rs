//! Why a message was refused: one enum that knows its dead-letter name (a documented
//! interface: docs/PROTOCOL.md lists them, and they must never change), the MQTT 5 reason
//! code of the acknowledgement, and its metric index. Nothing on the message path matches
//! strings.

use crate::replay::ReplayError;
use ingestd_codec::envelope::EnvelopeError;
use ingestd_codec::mqtt::ReasonCode;

/// A refusal reason. The order is the metric order: the envelope's reasons first (as in
/// `EnvelopeError::ALL_REASONS`), then the shard's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Oversize,
    Truncated,
    TrailingBytes,
    UnknownVersion,
    BadFlags,
    BadDeviceId,
    NoReadings,
    TooManyReadings,
    UnsortedReadings,
    DuplicateKind,
    BadKind,
    NonFiniteValue,
    BadJson,
    BadSignatureEncoding,
    BadTopic,
    WrongDevice,
    BadSignature,
    UnknownDevice,
    Replayed,
    ClockSkew,
    StaleSequence,
    TopicNotAllowed,
    Qos0DroppedOverload,
    Malformed,
    RedeliveryMismatch,
    Other,
}

impl Reason {
    /// Every reason, in metric order.
    pub const ALL: [Reason; 26] = [
        Reason::Oversize,
        Reason::Truncated,
        Reason::TrailingBytes,
        Reason::UnknownVersion,
        Reason::BadFlags,
        Reason::BadDeviceId,
        Reason::NoReadings,
        Reason::TooManyReadings,
        Reason::UnsortedReadings,
        Reason::DuplicateKind,
        Reason::BadKind,
        Reason::NonFiniteValue,
        Reason::BadJson,
        Reason::BadSignatureEncoding,
        Reason::BadTopic,
        Reason::WrongDevice,
        Reason::BadSignature,
        Reason::UnknownDevice,
        Reason::Replayed,
        Reason::ClockSkew,
        Reason::StaleSequence,
        Reason::TopicNotAllowed,
        Reason::Qos0DroppedOverload,
        Reason::Malformed,
        Reason::RedeliveryMismatch,
        Reason::Other,
    ];

    /// The stable dead-letter name (and the metric's `reason` label).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Oversize => "oversize",
            Reason::Truncated => "truncated",
            Reason::TrailingBytes => "trailing_bytes",
            Reason::UnknownVersion => "unknown_version",
            Reason::BadFlags => "bad_flags",
            Reason::BadDeviceId => "bad_device_id",
            Reason::NoReadings => "no_readings",
            Reason::TooManyReadings => "too_many_readings",
            Reason::UnsortedReadings => "unsorted_readings",
            Reason::DuplicateKind => "duplicate_kind",
            Reason::BadKind => "bad_kind",
            Reason::NonFiniteValue => "non_finite_value",
            Reason::BadJson => "bad_json",
            Reason::BadSignatureEncoding => "bad_signature_encoding",
            Reason::BadTopic => "bad_topic",
            Reason::WrongDevice => "wrong_device",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownDevice => "unknown_device",
            Reason::Replayed => "replayed",
            Reason::ClockSkew => "clock_skew",
            Reason::StaleSequence => "stale_sequence",
            Reason::TopicNotAllowed => "topic_not_allowed",
            Reason::Qos0DroppedOverload => "qos0_dropped_overload",
            Reason::Malformed => "malformed",
            Reason::RedeliveryMismatch => "redelivery_mismatch",
            Reason::Other => "other",
        }
    }

    /// Index of this reason's counter (`ingestd_messages_rejected_total{reason}`).
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The v5 reason code of a refused PUBLISH's PUBACK or PUBREC.
    #[must_use]
    pub const fn ack_code(self) -> ReasonCode {
        match self {
            Reason::TopicNotAllowed
            | Reason::WrongDevice
            | Reason::BadSignature
            | Reason::UnknownDevice => ReasonCode::NotAuthorized,
            Reason::Replayed
            | Reason::StaleSequence
            | Reason::ClockSkew
            | Reason::RedeliveryMismatch => ReasonCode::ImplementationSpecificError,
            _ => ReasonCode::PayloadFormatInvalid,
        }
    }

    /// The reason of an envelope error.
    #[must_use]
    pub const fn of_envelope(error: &EnvelopeError) -> Reason {
        match error {
            EnvelopeError::Oversize { .. } => Reason::Oversize,
            EnvelopeError::Truncated => Reason::Truncated,
            EnvelopeError::TrailingBytes => Reason::TrailingBytes,
            EnvelopeError::UnknownVersion(_) => Reason::UnknownVersion,
            EnvelopeError::BadFlags(_) => Reason::BadFlags,
            EnvelopeError::BadDeviceId => Reason::BadDeviceId,
            EnvelopeError::NoReadings => Reason::NoReadings,
            EnvelopeError::TooManyReadings => Reason::TooManyReadings,
            EnvelopeError::UnsortedReadings => Reason::UnsortedReadings,
            EnvelopeError::DuplicateKind(_) => Reason::DuplicateKind,
            EnvelopeError::BadKind => Reason::BadKind,
            EnvelopeError::NonFiniteValue => Reason::NonFiniteValue,
            EnvelopeError::BadJson(_) => Reason::BadJson,
            EnvelopeError::BadSignatureEncoding => Reason::BadSignatureEncoding,
            EnvelopeError::BadTopic => Reason::BadTopic,
            EnvelopeError::WrongDevice => Reason::WrongDevice,
            EnvelopeError::BadSignature => Reason::BadSignature,
            EnvelopeError::UnknownDevice => Reason::UnknownDevice,
            EnvelopeError::Replayed => Reason::Replayed,
            EnvelopeError::ClockSkew => Reason::ClockSkew,
        }
    }

    /// The reason of a replay-window refusal.
    #[must_use]
    pub const fn of_replay(error: &ReplayError) -> Reason {
        match error {
            ReplayError::Duplicate { .. } => Reason::Replayed,
            ReplayError::TooOld { .. } => Reason::StaleSequence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones_in_metric_order() {
        let shard = [
            "stale_sequence",
            "topic_not_allowed",
            "qos0_dropped_overload",
            "malformed",
            "redelivery_mismatch",
            "other",
        ];
        let expected: Vec<&str> = EnvelopeError::ALL_REASONS
            .iter()
            .chain(shard.iter())
            .copied()
            .collect();
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names, expected);
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }

    #[test]
    fn envelope_and_replay_reasons_agree_with_their_own_names() {
        let errors = [
            EnvelopeError::Oversize { len: 2, max: 1 },
            EnvelopeError::BadSignature,
            EnvelopeError::ClockSkew,
            EnvelopeError::WrongDevice,
        ];
        for error in errors {
            assert_eq!(Reason::of_envelope(&error).name(), error.reason());
        }
        let dup = ReplayError::Duplicate { seq: 1 };
        let old = ReplayError::TooOld {
            seq: 1,
            highest: 500,
        };
        assert_eq!(Reason::of_replay(&dup).name(), dup.reason());
        assert_eq!(Reason::of_replay(&old).name(), old.reason());
    }

    #[test]
    fn ack_codes() {
        assert_eq!(Reason::BadSignature.ack_code(), ReasonCode::NotAuthorized);
        assert_eq!(
            Reason::Replayed.ack_code(),
            ReasonCode::ImplementationSpecificError
        );
        assert_eq!(Reason::BadJson.ack_code(), ReasonCode::PayloadFormatInvalid);
    }
}
