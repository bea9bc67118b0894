//! Packets of an accepted connection, and the path of a PUBLISH: the QoS flow, the cheap
//! checks (decoding the envelope once), signature verification in batches, and the
//! record (reading or dead letter) whose durability its acknowledgement waits for.
//!
//! Messages wait in arrival order for their verification batch: it is verified when full,
//! or `verify_batch_delay_us` after the oldest arrived, and then every waiting message is
//! finished in order, so acknowledgements keep the order of the PUBLISHes [MQTT-4.6.0-2].

use super::acks::PendingAck;
use super::recent::RecentReadings;
use super::record::{self, DeadLetterMeta, FraudMeta, OpaqueMeta, ReadingMeta};
use super::{ConnId, Core, DeviceIdx, Metrics, Reason, RecordKind};
use crate::fraud::engine::{address_hash, device_hash, DeviceFraud, Envelope};
use crate::replay::ReplayError;
use crate::session::Qos2Action;
use crate::validate::{precheck, topic_allowed, Rejection};
use ingestd_codec::envelope::{EnvelopeError, Kind, Readings};
use ingestd_codec::mqtt::{self, Packet, Properties, Protocol, QoS, ReasonCode, SubAck, UnsubAck};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A message waiting for its verification batch.
pub(super) struct Work {
    conn: ConnId,
    device: DeviceIdx,
    protocol: Protocol,
    peer: SocketAddr,
    /// When the connection was accepted (wall ms): names the connection in the record.
    connected_ms: u64,
    qos: QoS,
    pkid: u16,
    received_ms: u64,
    received_us: u64,
    topic: String,
    /// The PUBLISH payload: the one copy out of the read buffer.
    payload: Vec<u8>,
    verdict: Verdict,
}

/// What happens to a message once its batch is verified. The readings are kept inline
/// (no allocation per message); the queue holds at most one batch.
#[allow(clippy::large_enum_variant)]
enum Verdict {
    /// Passed the cheap checks; what the record needs from the envelope, decoded once.
    /// `slot` is its place in the verification batch (`None`: verification is off).
    Verify {
        seq: u64,
        ts_ms: u64,
        readings: Readings,
        slot: Option<usize>,
    },
    /// Refused before verification.
    Reject {
        reason: Reason,
        detail: String,
        seq: Option<u64>,
    },
    /// A redelivery (DUP) of a reading already accepted: acknowledge once everything
    /// appended so far is durable; store nothing.
    Redelivery,
    /// Stored as received, undecoded (`validation.opaque_payloads`, benchmarks only).
    Opaque,
}

/// A PUBACK, PUBREC or PUBCOMP without properties.
fn ack_packet(
    kind: fn(mqtt::Ack<'static>) -> Packet<'static>,
    pkid: u16,
    reason: ReasonCode,
) -> Packet<'static> {
    kind(mqtt::Ack {
        pkid,
        reason,
        properties: Properties::default(),
    })
}

/// A DUP redelivery of an accepted sequence: acknowledged with nothing stored when it is
/// the stored reading; otherwise acknowledged once a dead letter records it.
fn redelivery(recent: &RecentReadings, seq: u64, payload: &[u8]) -> Verdict {
    match recent.compare(seq, payload).detail(seq) {
        None => Verdict::Redelivery,
        Some(detail) => Verdict::Reject {
            reason: Reason::RedeliveryMismatch,
            detail,
            seq: Some(seq),
        },
    }
}

/// The refusal reason of a failed cheap check.
fn reason_of(rejection: &Rejection) -> Reason {
    match rejection {
        Rejection::TopicNotAllowed => Reason::TopicNotAllowed,
        Rejection::Envelope(error) => Reason::of_envelope(error),
        Rejection::Replay(error) => Reason::of_replay(error),
    }
}

impl<M: Metrics> Core<M> {
    /// One packet of an accepted connection. `Err` closes it (with a v5 reason).
    pub(super) fn on_packet(
        &mut self,
        conn: ConnId,
        packet: Packet<'_>,
    ) -> Result<(), Option<ReasonCode>> {
        let Some(state) = self.conns.get(&conn) else {
            return Ok(());
        };
        let (protocol, Some(device)) = (state.protocol, state.device) else {
            return Ok(());
        };
        if state.closing {
            return Ok(());
        }
        match packet {
            Packet::Publish(publish) => {
                if protocol == Protocol::V5 {
                    // The CONNACK said retain is not available and granted no topic aliases.
                    if publish.retain {
                        return Err(Some(ReasonCode::RetainNotSupported));
                    }
                    if publish.properties.topic_alias.is_some() {
                        return Err(Some(ReasonCode::TopicAliasInvalid));
                    }
                }
                self.on_publish(conn, device, &publish)
            }
            Packet::PubRel(ack) => {
                let known = self.devices[device.0 as usize].session.pubrel(ack.pkid);
                let reason = if known || protocol == Protocol::V311 {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.send(conn, &ack_packet(Packet::PubComp, ack.pkid, reason));
                Ok(())
            }
            Packet::PingReq => {
                self.send(conn, &Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => self.on_disconnect(conn, &disconnect),
            Packet::Subscribe(subscribe) => {
                // No downlink yet: every filter is refused [MQTT-3.8.4-5 / 3.9.3].
                let refusal = match protocol {
                    Protocol::V311 => ReasonCode::UnspecifiedError,
                    Protocol::V5 => ReasonCode::NotAuthorized,
                };
                let suback = SubAck {
                    pkid: subscribe.pkid,
                    properties: Properties::default(),
                    return_codes: vec![refusal; subscribe.filters.len()],
                };
                self.send(conn, &Packet::SubAck(suback));
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                let reasons = match protocol {
                    Protocol::V311 => Vec::new(),
                    Protocol::V5 => {
                        vec![ReasonCode::NoSubscriptionExisted; unsubscribe.filters.len()]
                    }
                };
                let unsuback = UnsubAck {
                    pkid: unsubscribe.pkid,
                    properties: Properties::default(),
                    reasons,
                };
                self.send(conn, &Packet::UnsubAck(unsuback));
                Ok(())
            }
            // The server never sends a PUBLISH, so these acknowledge nothing: a leftover of
            // an earlier session or a client's confusion. Neither specification makes them
            // a protocol error (docs/PROTOCOL.md 13.1): ignored, and counted.
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
                self.metrics.unsolicited_ack();
                Ok(())
            }
            // A second CONNECT, AUTH without an authentication method, packets only a
            // server sends: protocol errors.
            _ => Err(Some(ReasonCode::ProtocolError)),
        }
    }

    fn on_publish(
        &mut self,
        conn: ConnId,
        device: DeviceIdx,
        publish: &mqtt::Publish<'_>,
    ) -> Result<(), Option<ReasonCode>> {
        let inflight_max = usize::from(self.config.inflight_max);
        match publish.qos {
            QoS::AtMostOnce => {
                if self.overloaded() {
                    // QoS 0 is best effort: under overload it is dropped, and counted.
                    self.metrics.qos0_dropped();
                    self.metrics.rejected(Reason::Qos0DroppedOverload);
                    return Ok(());
                }
            }
            QoS::AtLeastOnce => {}
            QoS::ExactlyOnce => {
                let action = self.devices[device.0 as usize]
                    .session
                    .qos2_publish(publish.pkid, inflight_max);
                match action {
                    Qos2Action::Deliver => {}
                    Qos2Action::AwaitDurable => return Ok(()),
                    Qos2Action::ResendPubrec => {
                        let pubrec = ack_packet(Packet::PubRec, publish.pkid, ReasonCode::Success);
                        self.send(conn, &pubrec);
                        return Ok(());
                    }
                    Qos2Action::TooMany => return Err(Some(ReasonCode::ReceiveMaximumExceeded)),
                }
            }
        }
        let Some(state) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if publish.qos != QoS::AtMostOnce {
            if state.protocol == Protocol::V5 && state.inflight >= inflight_max {
                return Err(Some(ReasonCode::ReceiveMaximumExceeded));
            }
            state.inflight += 1;
        }
        let (protocol, peer, connected_ms) = (state.protocol, state.peer, state.connected_ms);
        let received_ms = self.now.wall_ms;
        let verdict = self.precheck(device, publish, received_ms);
        if self.work.is_empty() {
            self.oldest_work_us = self.now.mono_us;
        }
        self.work.push_back(Work {
            conn,
            device,
            protocol,
            peer,
            connected_ms,
            qos: publish.qos,
            pkid: publish.pkid,
            received_ms,
            received_us: self.now.mono_us,
            topic: publish.topic.to_string(),
            payload: publish.payload.to_vec(),
            verdict,
        });
        // Batch at our own pace: a bigger verification batch costs less per signature.
        if self.work.len() >= self.config.verify_batch_signatures_max || self.verifier.is_full() {
            self.process_round();
        }
        Ok(())
    }

    /// The cheap checks, decoding the envelope once; a passing message joins the batch.
    fn precheck(&mut self, device: DeviceIdx, publish: &mqtt::Publish<'_>, now_ms: u64) -> Verdict {
        let state = &self.devices[device.0 as usize];
        if self.config.opaque_payloads {
            return if topic_allowed(&state.id, publish.topic, &self.config.limits.topic_prefix) {
                Verdict::Opaque
            } else {
                Verdict::Reject {
                    reason: Reason::TopicNotAllowed,
                    detail: Rejection::TopicNotAllowed.to_string(),
                    seq: None,
                }
            };
        }
        match precheck(
            &state.id,
            publish.topic,
            publish.payload,
            &state.replay,
            now_ms,
            &self.config.limits,
        ) {
            Ok(env) => {
                let slot = if self.config.verify_signatures {
                    let key = state.entry.key;
                    // The batch is verified as soon as it is full, so there is room.
                    let slot = self.verifier.push(&key, publish.topic, &env);
                    debug_assert!(slot.is_some(), "verification batch overfull");
                    Some(slot.unwrap_or(usize::MAX))
                } else {
                    None
                };
                Verdict::Verify {
                    seq: env.seq,
                    ts_ms: env.ts_ms,
                    readings: env.readings,
                    slot,
                }
            }
            Err(Rejection::Replay(ReplayError::Duplicate { seq })) if publish.dup => {
                redelivery(&state.recent, seq, publish.payload)
            }
            Err(rejection) => Verdict::Reject {
                reason: reason_of(&rejection),
                detail: rejection.to_string(),
                seq: match rejection {
                    Rejection::Replay(
                        ReplayError::Duplicate { seq } | ReplayError::TooOld { seq, .. },
                    ) => Some(seq),
                    _ => None,
                },
            },
        }
    }

    /// Verifies the batch and finishes every waiting message, in arrival order.
    pub(super) fn process_round(&mut self) {
        self.verify_results.clear();
        if !self.verifier.is_empty() {
            self.metrics.verify_batch(self.verifier.len());
            self.verifier.verify(&mut self.verify_results);
        }
        // The commit interval counts from the arrival of the round's oldest message, so
        // the verification delay is part of it rather than added to it.
        let round_arrival_us = self.oldest_work_us;
        while let Some(work) = self.work.pop_front() {
            self.finish(work);
        }
        if self.oldest_pending_us.is_none() && self.next_offset > self.durable_end {
            self.oldest_pending_us = Some(round_arrival_us);
        }
        // Acknowledgements that need no new record (redeliveries) may be safe already.
        self.release_acks();
        self.resume_paused();
    }

    /// Appends the record for one message and queues its acknowledgement.
    fn finish(&mut self, work: Work) {
        let mut reason = ReasonCode::Success;
        let needed_end = match &work.verdict {
            Verdict::Redelivery => self.next_offset,
            Verdict::Opaque => {
                let meta = OpaqueMeta {
                    device: self.devices[work.device.0 as usize].id.clone(),
                    topic: work.topic.clone(),
                    received_ms: work.received_ms,
                    node: self.config.node_id.clone(),
                    shard: self.config.shard,
                    qos: work.qos as u8,
                    opaque: true,
                };
                let start = self.records.len();
                record::encode(&meta, &work.payload, &mut self.records);
                self.metrics.accepted();
                self.append(RecordKind::Reading, start, None) + 1
            }
            Verdict::Reject {
                reason: why,
                detail,
                seq,
            } => {
                reason = why.ack_code();
                self.dead_letter(&work, *why, detail.clone(), *seq) + 1
            }
            Verdict::Verify {
                seq,
                ts_ms,
                readings,
                slot,
            } => {
                let verified = match slot {
                    None => Ok(()),
                    Some(i) => self
                        .verify_results
                        .get(*i)
                        .copied()
                        .unwrap_or(Err(EnvelopeError::BadSignature)),
                };
                match verified {
                    Ok(()) => match self.append_reading(&work, *seq, *ts_ms, readings) {
                        Ok(offset) => offset + 1,
                        Err((why, detail)) => {
                            reason = why.ack_code();
                            self.dead_letter(&work, why, detail, Some(*seq)) + 1
                        }
                    },
                    Err(error) => {
                        let why = Reason::of_envelope(&error);
                        reason = why.ack_code();
                        self.dead_letter(&work, why, error.to_string(), Some(*seq)) + 1
                    }
                }
            }
        };
        self.queue_ack(
            PendingAck {
                needed_end,
                received_us: work.received_us,
                conn: work.conn,
                device: work.device,
                qos: work.qos,
                pkid: work.pkid,
                reason,
            },
            work.protocol,
        );
    }

    /// Commits the sequence and appends the enriched reading; returns its offset, or why
    /// it became a dead letter instead.
    fn append_reading(
        &mut self,
        work: &Work,
        seq: u64,
        ts_ms: u64,
        readings: &Readings,
    ) -> Result<u64, (Reason, String)> {
        let device = &mut self.devices[work.device.0 as usize];
        // Two copies of one sequence can pass the cheap checks in one round; only the
        // first is committed.
        device
            .replay
            .commit(seq)
            .map_err(|e| (Reason::of_replay(&e), e.to_string()))?;
        device.recent.push(seq, &work.payload);
        let mut names = BTreeMap::new();
        for reading in readings.as_slice() {
            let name = match Kind::from_code(reading.kind).and_then(Kind::name) {
                Some(name) => name.to_string(),
                None => format!("kind_{}", reading.kind),
            };
            names.insert(name, reading.value);
        }
        let peer = work.peer.to_string();
        let fraud = match self.scorer.as_mut() {
            Some(scorer) => {
                let state = device.fraud.get_or_insert_with(|| {
                    Box::new(DeviceFraud::new(
                        &device.entry.location,
                        &device.entry.region,
                    ))
                });
                let envelope = Envelope {
                    device: device_hash(&device.id),
                    seq,
                    device_ms: ts_ms,
                    received_ms: work.received_ms,
                    address: address_hash(&peer),
                    connected_ms: work.connected_ms,
                    readings: readings.as_slice(),
                };
                let scored = scorer.score(state, &envelope);
                let config = &scorer.config().score;
                let verdict = scored.verdict;
                let (flagged, quarantined) =
                    (verdict.is_flagged(config), verdict.is_quarantined(config));
                self.metrics
                    .fraud_scored(verdict.fired, verdict.score, flagged, quarantined);
                Some(FraudMeta {
                    score: verdict.score,
                    detectors: verdict.fired.iter().map(|d| d.name().to_string()).collect(),
                    flagged,
                    quarantined,
                })
            }
            None => None,
        };
        let entry = &device.entry;
        let meta = ReadingMeta {
            device: device.id.clone(),
            seq,
            ts_ms,
            readings: names,
            topic: work.topic.clone(),
            received_ms: work.received_ms,
            node: self.config.node_id.clone(),
            shard: self.config.shard,
            qos: work.qos as u8,
            region: entry.region.clone(),
            project: entry.project.clone(),
            location: entry.location.clone(),
            sensor_type: entry.sensor_type.clone(),
            peer,
            connected_ms: work.connected_ms,
            fraud,
        };
        let start = self.records.len();
        record::encode(&meta, &work.payload, &mut self.records);
        self.metrics.accepted();
        let meta = self.config.egress.then_some(meta);
        Ok(self.append(RecordKind::Reading, start, meta))
    }

    fn dead_letter(
        &mut self,
        work: &Work,
        reason: Reason,
        detail: String,
        seq: Option<u64>,
    ) -> u64 {
        self.metrics.rejected(reason);
        if let (Some(scorer), Some(seq), Reason::Replayed | Reason::StaleSequence) =
            (self.scorer.as_mut(), seq, reason)
        {
            // A refused sequence whose signature verified is clone evidence (fraud::clone).
            let device = &mut self.devices[work.device.0 as usize];
            let state = device.fraud.get_or_insert_with(|| {
                Box::new(DeviceFraud::new(
                    &device.entry.location,
                    &device.entry.region,
                ))
            });
            let address = address_hash(&work.peer.to_string());
            scorer.refused(state, seq, address, work.connected_ms, work.received_ms);
        }
        let meta = DeadLetterMeta {
            reason: reason.name().to_string(),
            detail,
            device: self.devices[work.device.0 as usize].id.clone(),
            topic: work.topic.clone(),
            received_ms: work.received_ms,
            node: self.config.node_id.clone(),
            shard: self.config.shard,
            qos: work.qos as u8,
            peer: work.peer.to_string(),
            seq,
            connected_ms: work.connected_ms,
        };
        let start = self.records.len();
        record::encode(&meta, &work.payload, &mut self.records);
        self.append(RecordKind::DeadLetter, start, None)
    }

    /// A sink refused a reading for good: a dead letter records it. (A refused dead
    /// letter is not dead-lettered again, which could loop; the driver passes readings
    /// only.)
    pub(super) fn on_sink_refused(
        &mut self,
        sink: &str,
        reason: &str,
        detail: &str,
        offset: u64,
        meta: &ReadingMeta,
        raw: &[u8],
    ) {
        let dead = DeadLetterMeta {
            reason: reason.to_string(),
            detail: format!("{sink} refused the reading at log offset {offset}: {detail}"),
            device: meta.device.clone(),
            topic: meta.topic.clone(),
            received_ms: meta.received_ms,
            node: self.config.node_id.clone(),
            shard: self.config.shard,
            qos: meta.qos,
            peer: meta.peer.clone(),
            seq: Some(meta.seq),
            connected_ms: meta.connected_ms,
        };
        let start = self.records.len();
        record::encode(&dead, raw, &mut self.records);
        self.append(RecordKind::DeadLetter, start, None);
        if self.oldest_pending_us.is_none() {
            self.oldest_pending_us = Some(self.now.mono_us);
        }
    }
}
