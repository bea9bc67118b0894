//! Batch signature verification, an optimisation over [`Envelope::verify`].
//!
//! A batch check (ed25519-dalek `verify_batch`) costs roughly half of verifying each
//! signature alone. If it passes, every item is accepted; if it fails, each item is
//! re-verified with `verify_strict` to find the bad ones, so the per-item verdicts are those
//! of single verification.
//!
//! One caveat: the batch equation is *cofactored*, while `verify_strict` is not. They agree
//! on every signature made honestly by a key holder and on every forgery attempt without the
//! key; they can differ only for (a) small-order ("weak") public keys, which [`push`] rejects
//! here and the key registry must refuse at enrolment (`VerifyingKey::is_weak`), and (b)
//! signatures whose R carries a small-order component, which only the private-key holder can
//! construct, so they are not forgeries. Callers that need bit-for-bit `verify_strict`
//! verdicts in that corner should use [`Envelope::verify`].
//!
//! Buffers (messages, keys, signatures, results) are reused between batches; `verify_batch`
//! itself allocates per batch, not per message.
//!
//! [`push`]: BatchVerifier::push

use ed25519_dalek::{Signature, VerifyingKey};

use super::{Envelope, EnvelopeError};

/// Collects up to `capacity` (key, topic, envelope) items and verifies them together.
pub struct BatchVerifier {
    capacity: usize,
    messages: Vec<u8>,
    ends: Vec<usize>,
    sigs: Vec<Signature>,
    keys: Vec<VerifyingKey>,
    /// An item already known to fail (weak key, topic over 65535 bytes) is not batched.
    pre: Vec<Option<EnvelopeError>>,
}

impl BatchVerifier {
    /// A verifier holding at most `capacity` items per batch.
    pub fn new(capacity: usize) -> BatchVerifier {
        BatchVerifier {
            capacity,
            messages: Vec::with_capacity(capacity.saturating_mul(128)),
            ends: Vec::with_capacity(capacity),
            sigs: Vec::with_capacity(capacity),
            keys: Vec::with_capacity(capacity),
            pre: Vec::with_capacity(capacity),
        }
    }

    /// Items in the current batch.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the current batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// True when no more items fit.
    pub fn is_full(&self) -> bool {
        self.ends.len() >= self.capacity
    }

    /// Adds an item; returns its index in the results, or `None` when the batch is full.
    pub fn push(&mut self, key: &VerifyingKey, topic: &str, env: &Envelope<'_>) -> Option<usize> {
        if self.is_full() {
            return None;
        }
        let start = self.messages.len();
        let pre = if key.is_weak() {
            Some(EnvelopeError::BadSignature)
        } else {
            env.write_signed_message(topic, &mut self.messages).err()
        };
        if pre.is_some() {
            self.messages.truncate(start);
        }
        self.ends.push(self.messages.len());
        self.sigs.push(Signature::from_bytes(&env.signature));
        self.keys.push(*key);
        self.pre.push(pre);
        Some(self.ends.len() - 1)
    }

    /// Verifies the batch, writing one result per pushed item (in push order) into `out`
    /// (cleared first), and empties the batch for reuse.
    pub fn verify(&mut self, out: &mut Vec<Result<(), EnvelopeError>>) {
        out.clear();
        let mut msgs: Vec<&[u8]> = Vec::with_capacity(self.ends.len());
        let mut start = 0;
        for end in &self.ends {
            msgs.push(self.messages.get(start..*end).unwrap_or(&[]));
            start = *end;
        }
        let all_batchable = self.pre.iter().all(Option::is_none);
        let batch_ok = all_batchable
            && !msgs.is_empty()
            && ed25519_dalek::verify_batch(&msgs, &self.sigs, &self.keys).is_ok();
        for (((msg, sig), key), pre) in msgs.iter().zip(&self.sigs).zip(&self.keys).zip(&self.pre) {
            let r = match pre {
                Some(e) => Err(*e),
                None if batch_ok => Ok(()),
                None => key
                    .verify_strict(msg, sig)
                    .map_err(|_| EnvelopeError::BadSignature),
            };
            out.push(r);
        }
        drop(msgs);
        self.clear();
    }

    /// Drops the current batch without verifying it.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.ends.clear();
        self.sigs.clear();
        self.keys.clear();
        self.pre.clear();
    }
}
