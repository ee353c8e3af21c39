//! The dead-letter topic (`egress.kafka.dead_letter_topic`): what sluice took from Kafka and
//! could not use goes there instead of being lost. Two kinds of record, told apart by their
//! `sluice-reason` header (the two label sets are disjoint):
//!
//! - an input record that is not a valid EventBatch, as it came (key, value, timestamp, its
//!   own headers first); `sluice-reason` = its `sluice_kafka_records_skipped_total` label;
//! - the events of a valid record that were refused (`egress.kafka.dead_letter_events`:
//!   late, key on two partitions, state full, state error), gathered per input record over
//!   the cycle into one EventBatch of those events in their order, with the record's key,
//!   timestamp and own headers (up to `HEADER_BYTES_KEPT_MAX` of them; more and none, with
//!   `sluice-headers-dropped` = their size); `sluice-reason` = each event's
//!   `sluice_events_dropped_total` label, in the batch's order, comma-separated.
//!
//! Both carry `sluice-src` = topic/partition/offset (after the record's own headers, so a
//! reader taking a header's last value, as Kafka's `Headers.lastHeader` does, gets sluice's
//! even when a re-produced dead letter is dead-lettered again) and go to the producer the
//! Scores go to, counted in the open epoch: in exactly_once they join the transaction that
//! commits the record's offset, in at_least_once a checkpoint past the record waits for
//! their acknowledgement, as for a Score. A refused send stops the shard as a refused Score does
//! (`undelivered`): the input would be lost.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};

use super::{order_by_source, source_run_end, KafkaSink, ScoreProducer};
use crate::metrics::{DropReason, ShardCounters};
use crate::route::RoutedEvent;
use crate::wire::{EventIn, EventKind};

/// The reasons an event may be dead-lettered for (`egress.kafka.dead_letter_events`): those
/// that lose an event sluice took. A duplicate was applied before, a model or send error
/// happens after the state took the event (its replay would count it twice).
pub const EVENT_REASONS: [DropReason; 4] = [
    DropReason::Late,
    DropReason::KeyOnTwoPartitions,
    DropReason::StateFull,
    DropReason::StateError,
];

/// Longest `sluice-reason` label of `EVENT_REASONS`, and its comma.
const REASON_BYTES_MAX: usize = 22;

/// `egress.kafka.dead_letter_events` as a set of `DropReason`s (unknown names are a config
/// error, see `config::validate_kafka`).
pub fn reason_mask(names: &[String]) -> u32 {
    EVENT_REASONS
        .iter()
        .filter(|r| names.iter().any(|n| n == r.label()))
        .fold(0, |m, &r| m | bit(r))
}

fn bit(r: DropReason) -> u32 {
    1 << (r as u32)
}

/// The most bytes of one input record's headers kept for its refused events' dead letter
/// (each header counts its key, its value and 6 bytes).
pub const HEADER_BYTES_KEPT_MAX: usize = 512;

/// An input record's headers as its refused events' dead letter will carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeptHeaders {
    /// None kept: it had none, or no event of it was refused or left waiting for a read.
    None,
    /// In `kept_headers[at..at + len]`: per header a 2-byte key length, the key, a 4-byte
    /// value length (`u32::MAX` = no value) and the value, big-endian.
    Kept { at: u32, len: u16 },
    /// Over `HEADER_BYTES_KEPT_MAX` (this many bytes): not kept.
    Dropped(u32),
}

/// One header's size in `KeptHeaders::Kept`.
fn kept_size(key: &str, value: Option<&[u8]>) -> usize {
    6 + key.len() + value.map_or(0, <[u8]>::len)
}

/// The headers of a `KeptHeaders::Kept` run, in order.
fn kept_iter(mut bytes: &[u8]) -> impl Iterator<Item = Header<'_, &[u8]>> {
    std::iter::from_fn(move || {
        let (len, rest) = bytes.split_first_chunk::<2>()?;
        let (key, rest) = rest.split_at_checked(u16::from_be_bytes(*len) as usize)?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len);
        let (value, rest) = if len == u32::MAX {
            (None, rest)
        } else {
            let (v, r) = rest.split_at_checked(len as usize)?;
            (Some(v), r)
        };
        bytes = rest;
        // Written from a `&str` by `keep_headers`.
        let key = std::str::from_utf8(key).ok()?;
        Some(Header { key, value })
    })
}

/// An event refused inside a valid record, kept until its cycle's end.
#[derive(Debug, Clone, Copy)]
pub(super) struct RefusedEvent {
    /// Its input record (`KafkaSink::begin_source`).
    src: u32,
    reason: DropReason,
    ev: RoutedEvent,
}

/// The input record's own headers in a dead letter.
enum Theirs<'a> {
    /// A whole record's letter: the record itself (a letter too large for the producer goes
    /// without them and without its value, see `send`).
    Message(&'a BorrowedMessage<'a>),
    /// A letter of refused events: their record's headers as `keep_headers` kept them.
    Kept(&'a [u8]),
    /// Their record's headers were over `HEADER_BYTES_KEPT_MAX` (this many bytes).
    Dropped(u32),
    None,
}

/// One dead-letter record's parts.
struct Letter<'a> {
    /// None: the input record had no key.
    key: Option<&'a [u8]>,
    /// Where the input record's own headers (which come first) are.
    theirs: Theirs<'a>,
    value: &'a [u8],
    /// Kafka record time (ns since the epoch); 0 = none (the producer stamps it).
    timestamp_ns: u64,
    src: &'a [u8],
    reason: &'a [u8],
}

impl KafkaSink {
    /// An input record (registered as `src` by `begin_source`) that is not a valid
    /// EventBatch: to `dead_letter_topic` as it came. One send per bad record (the producer
    /// copies key, value and headers), never per good one.
    pub fn dead_letter(
        &mut self,
        src: u32,
        message: &BorrowedMessage<'_>,
        timestamp_ns: u64,
        reason: crate::wire::DecodeError,
        counters: &ShardCounters,
    ) {
        if self.dead_letter_topic.is_empty() {
            return;
        }
        let Some(source) = self.sources.get(src as usize).copied() else {
            return;
        };
        Self::write_src_header(&mut self.src_header, &self.src_prefix, source);
        let letter = Letter {
            // librdkafka gives no key and an empty one alike; a record produced without one
            // stays without.
            key: message.key().filter(|k| !k.is_empty()),
            theirs: Theirs::Message(message),
            value: message.payload().unwrap_or(&[]),
            timestamp_ns,
            src: &self.src_header,
            reason: reason.reason().as_bytes(),
        };
        let slot = Self::slot(self.epoch);
        self.sent_since_switch = true;
        let producer = &self.producers[self.active];
        if send(producer, &self.dead_letter_topic, slot, letter, counters) {
            counters.kafka_dead_letters.inc();
        }
    }

    /// After input record `src` (`message`) was applied: keep its headers for a dead letter
    /// of its events when some were refused, or when events wait for a cold read
    /// (`waiting`, asked only when none was: maybe its own, refused or not once the read is
    /// back, when the message is gone). Nothing to do for a record without headers or with
    /// event letters off; with them on, a copy of the headers per record while cold reads
    /// are out.
    pub fn keep_headers(
        &mut self,
        src: u32,
        message: &BorrowedMessage<'_>,
        waiting: impl FnOnce() -> bool,
    ) {
        if self.dead_letter_events == 0 {
            return;
        }
        let refused = self.refused.last().is_some_and(|r| r.src == src);
        if !(refused || waiting()) {
            return;
        }
        let Some(headers) = message.headers() else {
            return;
        };
        let Some(source) = self.sources.get_mut(src as usize) else {
            return;
        };
        let size: usize = headers.iter().map(|h| kept_size(h.key, h.value)).sum();
        if size > HEADER_BYTES_KEPT_MAX {
            source.headers = KeptHeaders::Dropped(size.min(u32::MAX as usize) as u32);
            return;
        }
        if self.kept_headers.capacity() == 0 {
            // Once, at the first record kept, to the bound: every source's headers.
            self.kept_headers
                .reserve_exact(self.sources_max * HEADER_BYTES_KEPT_MAX);
        }
        crate::invariant!(
            self.kept_headers.len() + size <= self.sources_max * HEADER_BYTES_KEPT_MAX,
            "kept headers past their bound"
        );
        let at = self.kept_headers.len() as u32;
        for h in headers.iter() {
            // Within HEADER_BYTES_KEPT_MAX, so every length fits its field.
            self.kept_headers
                .extend_from_slice(&(h.key.len() as u16).to_be_bytes());
            self.kept_headers.extend_from_slice(h.key.as_bytes());
            let len = h.value.map_or(u32::MAX, |v| v.len() as u32);
            self.kept_headers.extend_from_slice(&len.to_be_bytes());
            self.kept_headers
                .extend_from_slice(h.value.unwrap_or_default());
        }
        source.headers = KeptHeaders::Kept {
            at,
            len: size as u16,
        };
    }

    /// An event of input record `src` refused for `reason` (already counted): kept for the
    /// cycle's end (`send_refused`) when `reason` is one of `dead_letter_events`.
    pub fn refused(&mut self, src: u32, ev: &RoutedEvent, reason: DropReason) {
        if self.dead_letter_events & bit(reason) == 0 {
            return;
        }
        crate::invariant!((src as usize) < self.sources.len());
        if self.refused.capacity() == 0 {
            // Once, at the first refused event, to the bound: a shard that refuses nothing
            // keeps nothing (the bound is every event its kept records may hold).
            self.refused.reserve_exact(self.scores_max);
            self.reasons_header
                .reserve_exact(self.events_per_record * REASON_BYTES_MAX);
        }
        // Each event is scored or refused once, so a cycle's refusals are bounded as its
        // Scores are (`scores_max`); past it the Vec would grow, not lose one.
        crate::invariant!(
            self.refused.len() < self.scores_max,
            "refused events past their bound"
        );
        self.refused.push(RefusedEvent {
            src,
            reason,
            ev: *ev,
        });
    }

    /// End of a cycle: one dead-letter record per input record that had events refused.
    /// Called before the cycle's sources may be dropped.
    pub(super) fn send_refused(&mut self, counters: &ShardCounters) {
        if self.refused.is_empty() {
            return;
        }
        order_by_source(&mut self.refused, |r| r.src);
        let slot = Self::slot(self.epoch);
        let mut start = 0;
        while start < self.refused.len() {
            let src = self.refused[start].src;
            let end = source_run_end(&self.refused, start, |r| r.src);
            let group = &self.refused[start..end];
            start = end;
            let Some(source) = self.sources.get(src as usize).copied() else {
                continue;
            };
            self.reasons_header.clear();
            for (i, r) in group.iter().enumerate() {
                if i > 0 {
                    self.reasons_header.push(b',');
                }
                self.reasons_header
                    .extend_from_slice(r.reason.label().as_bytes());
            }
            Self::write_src_header(&mut self.src_header, &self.src_prefix, source);
            // The input record's key, or the first event's entity key when that one was too
            // long to keep (`KEY_BYTES_MAX`).
            let entity_key = group[0].ev.key.to_be_bytes();
            let key = match source.key {
                Some((_, 0)) => None,
                Some((at, len)) => Some(&self.keys[at as usize..at as usize + len as usize]),
                None => Some(&entity_key[..]),
            };
            let letter = Letter {
                key,
                theirs: match source.headers {
                    KeptHeaders::None => Theirs::None,
                    KeptHeaders::Kept { at, len } => Theirs::Kept(
                        self.kept_headers
                            .get(at as usize..at as usize + len as usize)
                            .unwrap_or_default(),
                    ),
                    KeptHeaders::Dropped(size) => Theirs::Dropped(size),
                },
                value: self
                    .events_encoder
                    .encode(group.iter().map(|r| event_in(&r.ev))),
                timestamp_ns: source.timestamp_ns,
                src: &self.src_header,
                reason: &self.reasons_header,
            };
            self.sent_since_switch = true;
            if send(
                &self.producers[self.active],
                &self.dead_letter_topic,
                slot,
                letter,
                counters,
            ) {
                counters.kafka_dead_letters.inc();
                counters.kafka_dead_letter_events.add(group.len() as u64);
            }
        }
        self.refused.clear();
    }
}

/// The event as sluice took it (an event stamped 0 carries the time it was given: the
/// record's timestamp).
fn event_in(ev: &RoutedEvent) -> EventIn<'_> {
    EventIn {
        key: ev.key,
        seq: ev.seq,
        ts_ns: ev.ts_ns,
        feedback: matches!(ev.kind, EventKind::Feedback),
        amount: ev.amount,
        label: ev.label,
        features: ev.features(),
    }
}

/// Hands one dead-letter record to `producer` in epoch `slot`; false (counted, and the
/// shard stops: `undelivered`) when the producer refuses it. A whole record too large for
/// the producer (`message.max.bytes`; the broker it came from may take larger ones) goes
/// without its value and its own headers (and a key over `KEY_BYTES_MAX`),
/// `sluice-value-dropped` = the value's length: refusing it would stop sluice at that record
/// on every restart.
fn send(
    producer: &ScoreProducer,
    topic: &str,
    slot: usize,
    letter: Letter<'_>,
    counters: &ShardCounters,
) -> bool {
    let e = match try_send(producer, topic, slot, &letter, None) {
        Ok(()) => return true,
        Err(e) => e,
    };
    let e = match (e, &letter.theirs) {
        (
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            Theirs::Message(_),
        ) => {
            counters.kafka_dead_letter_values_dropped.inc();
            let n = counters.kafka_dead_letter_values_dropped.get();
            if n.is_power_of_two() {
                tracing::warn!(
                    topic,
                    bytes = letter.value.len(),
                    dropped = n,
                    "a skipped record is larger than the producer's message.max.bytes: dead-lettered without its value and headers (its sluice-src names it)"
                );
            }
            // A rare path (records over message.max.bytes): the length's text may allocate.
            let len = letter.value.len().to_string();
            match try_send(producer, topic, slot, &letter, Some(len.as_bytes())) {
                Ok(()) => return true,
                Err(e) => e,
            }
        }
        (e, _) => e,
    };
    // Lost: the shard stops (`undelivered`).
    producer.context().lost();
    counters.kafka_delivery_failures.add_shared(1);
    let n = counters.kafka_delivery_failures.get();
    if n.is_power_of_two() {
        tracing::error!(
            topic,
            failures = n,
            "Kafka producer refused a dead-letter record: {e}"
        );
    }
    false
}

/// One attempt of `send`: `dropped` = the text of the value's length, to send the record
/// without its value and the input record's headers. On Err it is counted as never handed
/// over (`send` decides whether it is lost).
fn try_send(
    producer: &ScoreProducer,
    topic: &str,
    slot: usize,
    letter: &Letter<'_>,
    dropped: Option<&[u8]>,
) -> Result<(), KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(4);
    // A rare path (refused events of a record with many headers): the size's text may
    // allocate.
    let mut headers_dropped = None;
    match letter.theirs {
        Theirs::Message(m) if dropped.is_none() => {
            for h in m.headers().iter().flat_map(|h| h.iter()) {
                headers = headers.insert(h);
            }
        }
        Theirs::Kept(run) => {
            for h in kept_iter(run) {
                headers = headers.insert(h);
            }
        }
        Theirs::Dropped(size) => headers_dropped = Some(size.to_string()),
        Theirs::Message(_) | Theirs::None => {}
    }
    headers = headers
        .insert(Header {
            key: "sluice-src",
            value: Some(letter.src),
        })
        .insert(Header {
            key: "sluice-reason",
            value: Some(letter.reason),
        });
    if let Some(len) = dropped {
        headers = headers.insert(Header {
            key: "sluice-value-dropped",
            value: Some(len),
        });
    }
    if let Some(size) = &headers_dropped {
        headers = headers.insert(Header {
            key: "sluice-headers-dropped",
            value: Some(size.as_bytes()),
        });
    }
    let value: &[u8] = if dropped.is_some() { &[] } else { letter.value };
    let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, slot)
        .payload(value)
        .headers(headers);
    // Without its value the record keeps its key unless that is long too (so the record is
    // then within `config::producer_queue::RECORD_FRAMING_BYTES_MAX` of nothing).
    if let Some(key) = letter
        .key
        .filter(|k| dropped.is_none() || k.len() <= super::KEY_BYTES_MAX)
    {
        record = record.key(key);
    }
    if letter.timestamp_ns > 0 {
        record = record.timestamp((letter.timestamp_ns / 1_000_000) as i64);
    }
    let counter = producer.context();
    counter.handing(slot, value.len());
    producer.send(record).map_err(|(e, _)| {
        counter.not_handed(slot, value.len());
        e
    })
}
