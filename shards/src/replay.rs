//! Per-device replay protection by sequence number.
//!
//! A device numbers its readings with a strictly increasing `seq` (docs/PROTOCOL.md). The
//! home shard keeps, per device, the highest sequence accepted and a bitmap of the
//! [`WINDOW`] sequences below it, the scheme IPsec uses (RFC 4303 §3.4.3): a reading is
//! refused when its sequence was already accepted or lies below the window. Readings may
//! arrive out of order within the window (QoS 1 redelivery after a reconnect does that).
//!
//! Checking and committing are separate on purpose: a shard checks before the expensive
//! signature verification and commits only after it passed. Committing an unverified
//! sequence would let anyone push a device's window far ahead with one forged message and
//! lock the genuine device out.

/// How many sequence numbers below the highest accepted one are still accepted once.
pub const WINDOW: u64 = 128;

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This sequence number was already accepted from this device.
    Duplicate { seq: u64 },
    /// The sequence number is below the window: too old to tell whether it was seen.
    TooOld { seq: u64, highest: u64 },
}

impl ReplayError {
    /// Stable dead-letter reason code.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            ReplayError::Duplicate { .. } => "replayed",
            ReplayError::TooOld { .. } => "stale_sequence",
        }
    }
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Duplicate { seq } => write!(f, "sequence {seq} already accepted"),
            ReplayError::TooOld { seq, highest } => write!(
                f,
                "sequence {seq} is more than {WINDOW} below the highest accepted ({highest})"
            ),
        }
    }
}

impl std::error::Error for ReplayError {}

/// The replay state of one device: 24 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest sequence accepted so far; `None` until the first reading.
    highest: Option<u64>,
    /// Bit `i` set: sequence `highest - i` was accepted. Bit 0 is `highest` itself.
    seen: u128,
}

impl ReplayWindow {
    /// A window for a device nothing has been accepted from.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a window from persisted state (the highest accepted sequence), treating
    /// everything at or below it as seen: after a restart the bitmap is gone, and refusing
    /// a late genuine reading is safer than accepting a replay.
    #[must_use]
    pub fn resume_after(highest: u64) -> Self {
        Self {
            highest: Some(highest),
            seen: u128::MAX,
        }
    }

    /// The highest sequence accepted so far.
    #[must_use]
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// The window's exact state, for a checkpoint: the highest accepted sequence and the
    /// bitmap of the [`WINDOW`] sequences at and below it (bit `i`: `highest - i` was
    /// accepted). `None` until the first reading.
    #[must_use]
    pub fn state(&self) -> Option<(u64, u128)> {
        self.highest.map(|highest| (highest, self.seen))
    }

    /// The window [`state`](Self::state) described. Bit 0 is the highest itself, accepted
    /// by definition, so it is set whatever `seen` says.
    #[must_use]
    pub fn restore(highest: u64, seen: u128) -> Self {
        Self {
            highest: Some(highest),
            seen: seen | 1,
        }
    }

    /// Adds what `other` accepted: the window of one device rebuilt from two sources (a
    /// checkpoint and the log after it, or the logs of two shards after the shard count
    /// changed). The result is the window of the union of both accepted sets, whatever the
    /// order: a sequence below the merged window is forgotten by either order.
    pub fn merge(&mut self, other: &ReplayWindow) {
        let Some((highest, seen)) = other.state() else {
            return;
        };
        for behind in 0..WINDOW {
            if seen & (1u128 << behind) == 0 {
                continue;
            }
            if let Some(seq) = highest.checked_sub(behind) {
                // A sequence accepted by both, or below the merged window, is refused here
                // and changes nothing, which is the union's answer too.
                let _ = self.commit(seq);
            }
        }
    }

    /// Would `seq` be accepted now? Changes nothing.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if seq > highest {
            return Ok(());
        }
        let behind = highest - seq;
        if behind >= WINDOW {
            return Err(ReplayError::TooOld { seq, highest });
        }
        if self.seen & (1u128 << behind) != 0 {
            return Err(ReplayError::Duplicate { seq });
        }
        Ok(())
    }

    /// Records `seq` as accepted, checking again: two readings with the same sequence may
    /// both pass [`check`](Self::check) inside one verification batch, and only the first
    /// may be committed.
    pub fn commit(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        match self.highest {
            Some(highest) if seq <= highest => {
                self.seen |= 1u128 << (highest - seq);
            }
            Some(highest) => {
                let ahead = seq - highest;
                self.seen = if ahead >= WINDOW {
                    0
                } else {
                    self.seen << ahead
                } | 1;
                self.highest = Some(seq);
            }
            None => {
                self.highest = Some(seq);
                self.seen = 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn first_reading_is_accepted_at_any_sequence() {
        let mut window = ReplayWindow::new();
        assert_eq!(window.check(u64::MAX), Ok(()));
        window.commit(1_000).unwrap();
        assert_eq!(window.highest(), Some(1_000));
    }

    #[test]
    fn duplicate_is_refused() {
        let mut window = ReplayWindow::new();
        window.commit(5).unwrap();
        assert_eq!(window.check(5), Err(ReplayError::Duplicate { seq: 5 }));
        assert_eq!(window.commit(5), Err(ReplayError::Duplicate { seq: 5 }));
    }

    #[test]
    fn out_of_order_within_window_is_accepted_once() {
        let mut window = ReplayWindow::new();
        window.commit(10).unwrap();
        window.commit(12).unwrap();
        window.commit(11).unwrap();
        assert_eq!(window.commit(11), Err(ReplayError::Duplicate { seq: 11 }));
        assert_eq!(window.highest(), Some(12));
    }

    #[test]
    fn below_window_is_too_old() {
        let mut window = ReplayWindow::new();
        window.commit(1_000).unwrap();
        let oldest_accepted = 1_000 - (WINDOW - 1);
        assert_eq!(window.check(oldest_accepted), Ok(()));
        assert_eq!(
            window.check(oldest_accepted - 1),
            Err(ReplayError::TooOld {
                seq: oldest_accepted - 1,
                highest: 1_000
            })
        );
    }

    #[test]
    fn big_jump_clears_the_bitmap() {
        let mut window = ReplayWindow::new();
        window.commit(1).unwrap();
        window.commit(1 + WINDOW + 5).unwrap();
        assert!(matches!(window.check(1), Err(ReplayError::TooOld { .. })));
        assert_eq!(window.check(1 + WINDOW + 4), Ok(()));
    }

    #[test]
    fn check_does_not_commit() {
        let mut window = ReplayWindow::new();
        window.commit(3).unwrap();
        window.check(4).unwrap();
        window.check(4).unwrap();
        window.commit(4).unwrap();
        assert_eq!(window.check(4), Err(ReplayError::Duplicate { seq: 4 }));
    }

    #[test]
    fn resumed_window_refuses_everything_up_to_the_persisted_highest() {
        let window = ReplayWindow::resume_after(500);
        assert_eq!(window.check(500), Err(ReplayError::Duplicate { seq: 500 }));
        assert_eq!(window.check(499), Err(ReplayError::Duplicate { seq: 499 }));
        assert_eq!(window.check(501), Ok(()));
    }

    #[test]
    fn a_restored_window_is_the_window_that_was_saved() {
        let mut window = ReplayWindow::new();
        for seq in [10, 12, 200, 198, 150] {
            window.commit(seq).unwrap();
        }
        let (highest, seen) = window.state().unwrap();
        let restored = ReplayWindow::restore(highest, seen);
        assert_eq!(restored, window);
        // Never used inside the window: still accepted after a restore.
        assert_eq!(restored.check(199), Ok(()));
        assert_eq!(
            restored.check(198),
            Err(ReplayError::Duplicate { seq: 198 })
        );
        assert_eq!(ReplayWindow::new().state(), None);
    }

    #[test]
    fn merging_gives_the_window_of_the_union() {
        let mut a = ReplayWindow::new();
        let mut b = ReplayWindow::new();
        let mut both = ReplayWindow::new();
        for seq in [10, 12, 300] {
            a.commit(seq).unwrap();
        }
        for seq in [11, 299, 250] {
            b.commit(seq).unwrap();
        }
        for seq in [10, 11, 12, 250, 299, 300] {
            let _ = both.commit(seq);
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, both);
        assert_eq!(ba, both);
        assert_eq!(ab.check(298), Ok(()));
    }

    #[test]
    fn extreme_sequences_do_not_overflow() {
        let mut window = ReplayWindow::new();
        window.commit(0).unwrap();
        window.commit(u64::MAX).unwrap();
        assert!(window.check(0).is_err());
        assert_eq!(
            window.check(u64::MAX),
            Err(ReplayError::Duplicate { seq: u64::MAX })
        );
    }

    proptest! {
        /// Committing the log's accepted sequences in any split and merging the parts
        /// gives the window the whole log gives: the start-up rebuild relies on it.
        #[test]
        fn merge_of_a_split_equals_the_whole(seqs in proptest::collection::vec(0u64..400, 1..200), cut in 0usize..200) {
            let mut whole = ReplayWindow::new();
            let accepted: Vec<u64> = seqs.into_iter().filter(|s| whole.commit(*s).is_ok()).collect();
            let cut = cut.min(accepted.len());
            let mut first = ReplayWindow::new();
            let mut second = ReplayWindow::new();
            for seq in &accepted[..cut] {
                let _ = first.commit(*seq);
            }
            for seq in &accepted[cut..] {
                let _ = second.commit(*seq);
            }
            first.merge(&second);
            prop_assert_eq!(first, whole);
        }

        /// Against a model that remembers every accepted sequence: the window accepts a
        /// sequence exactly when the model has not seen it and it is not below the window.
        #[test]
        fn agrees_with_a_set_model(seqs in proptest::collection::vec(0u64..600, 1..400)) {
            let mut window = ReplayWindow::new();
            let mut accepted = BTreeSet::new();
            for seq in seqs {
                let highest = accepted.iter().next_back().copied();
                let expected_ok = !accepted.contains(&seq)
                    && highest.is_none_or(|h| seq > h || h - seq < WINDOW);
                let result = window.commit(seq);
                prop_assert_eq!(result.is_ok(), expected_ok, "seq {} highest {:?}", seq, highest);
                if result.is_ok() {
                    accepted.insert(seq);
                }
            }
        }
    }
}
