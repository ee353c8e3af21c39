//! What a shard's Kafka producer queue must hold. A record the producer refuses (its queue
//! full, or the record over `message.max.bytes`) is a lost Score, which stops the service, so
//! a full queue must be impossible: a shard stops taking records at
//! `ingest.kafka.in_flight_records_max` records or `in_flight_bytes_max` bytes unacknowledged,
//! and the queue needs room for what it may still add after the last look that let it take
//! some (the tail, below). librdkafka counts a record's value bytes against
//! `queue.buffering.max.kbytes` (not its key or headers), and so does the shard.

use super::{ColdReaderPlace, Config};
use crate::egress::kafka::dead_letter::HEADER_BYTES_KEPT_MAX;
use crate::egress::kafka::{KEY_BYTES_MAX, SOURCE_CYCLES};
use crate::shard::COLD_READS_OUT_MAX as OUT_MAX;
use crate::wire::{event_batch_bytes_max, score_batch_bytes_max};

/// librdkafka's defaults, where `[kafka.producer]` does not set the property.
const QUEUE_MESSAGES_DEFAULT: usize = 100_000;
const QUEUE_KBYTES_DEFAULT: u64 = 1_048_576;
const MESSAGE_BYTES_DEFAULT: usize = 1_000_000;
const BATCH_BYTES_DEFAULT: usize = 1_000_000;

/// A record's size beyond its value, as librdkafka checks it against `message.max.bytes`:
/// its batch framing (61 bytes for a batch of one, plus per-record varints), its key (at most
/// `KEY_BYTES_MAX`), sluice's headers (`sluice-src`: a topic of up to 249 bytes, partition,
/// offset) with room to spare, and an input record's headers kept for a dead letter.
pub const RECORD_FRAMING_BYTES_MAX: usize = 512 + KEY_BYTES_MAX + HEADER_BYTES_KEPT_MAX;

/// Progress records (exactly_once) a shard may hand over while intake is stopped: one per
/// checkpoint flip, and a flip needs the commit before it, which a stopped broker holds up.
const PROGRESS_RECORDS: usize = 2;
const PROGRESS_BYTES: u64 = 256;

/// The producer's limits as configured, and what a shard may add past its intake check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerQueue {
    /// `queue.buffering.max.messages`.
    pub records_cap: usize,
    /// `queue.buffering.max.kbytes`, in bytes.
    pub bytes_cap: u64,
    /// `message.max.bytes`.
    pub message_bytes_max: usize,
    /// `batch.size`: librdkafka fills a record batch up to the smaller of this and
    /// `message.max.bytes` (a larger record goes alone).
    pub batch_bytes_max: usize,
    /// Records a shard may hand over after its last intake check let it take records.
    pub tail_records: usize,
    /// Their value bytes.
    pub tail_bytes: u64,
    /// The largest Score, alert or refused-events record value a shard writes.
    pub value_bytes_max: usize,
    /// Refused events go to the dead-letter topic (their records count in the above).
    pub event_letters: bool,
}

/// The limits and tail for `c`; Err names a property that is not a whole number.
pub fn producer_queue(c: &Config) -> Result<ProducerQueue, String> {
    let k = &c.ingest.kafka;
    let e = &c.egress.kafka;
    let prop = |key: &str, default: u64| {
        c.kafka.producer.get(key).map_or(Ok(default), |v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("kafka.producer.\"{key}\" = {v:?} is not a whole number"))
        })
    };
    let records_cap = prop(
        "queue.buffering.max.messages",
        QUEUE_MESSAGES_DEFAULT as u64,
    )? as usize;
    let bytes_cap = prop("queue.buffering.max.kbytes", QUEUE_KBYTES_DEFAULT)?.saturating_mul(1024);
    let message_bytes_max = prop("message.max.bytes", MESSAGE_BYTES_DEFAULT as u64)? as usize;
    let batch_bytes_max = prop("batch.size", BATCH_BYTES_DEFAULT as u64)? as usize;

    let whole_letters = !e.dead_letter_topic.is_empty();
    let event_letters = whole_letters && !e.dead_letter_events.is_empty();
    // Per input record in one flush: a Score record, an alert record, a record of its refused
    // events (a record dead-lettered whole has none of these, so at most one more).
    let per_source = 2 + usize::from(event_letters);
    let r = k.records_per_cycle_max;
    // The records whose events are still being answered: one cycle's, or with cold reads off
    // the shard thread up to SOURCE_CYCLES cycles' (as the sink keeps them), whose waiting
    // events (at most (OUT_MAX + 1) x cold_wait_max) each make at most one record per flush
    // after the check's cycle.
    let (sources, waiting) = match c.state.cold_reader {
        ColdReaderPlace::Shard => (r, 0),
        _ => (
            r.saturating_mul(SOURCE_CYCLES),
            (OUT_MAX + 1).saturating_mul(c.state.cold_wait_max),
        ),
    };
    // The check's cycle's flush: each live source at most `per_source` records; later
    // flushes: each record takes at least one waiting event.
    let tail_records = per_source
        .saturating_mul(sources.saturating_add(waiting))
        .saturating_add(PROGRESS_RECORDS);
    let events = c.wire.batch_events_max;
    let mut value_bytes_max = score_batch_bytes_max(events);
    if event_letters {
        value_bytes_max =
            value_bytes_max.max(event_batch_bytes_max(events, c.wire.features_per_event_max));
    }
    // A record dead-lettered whole goes as it came, at most `message.max.bytes` (a larger one
    // goes without its value), one per record taken in the check's cycle.
    let whole_bytes = if whole_letters {
        (r as u64).saturating_mul(message_bytes_max as u64)
    } else {
        0
    };
    let tail_bytes = (tail_records as u64)
        .saturating_mul(value_bytes_max as u64)
        .saturating_add(whole_bytes)
        .saturating_add(PROGRESS_RECORDS as u64 * PROGRESS_BYTES);
    Ok(ProducerQueue {
        records_cap,
        bytes_cap,
        message_bytes_max,
        batch_bytes_max,
        tail_records,
        tail_bytes,
        value_bytes_max,
        event_letters,
    })
}

/// Every way `c`'s producer could refuse a record sluice writes, into `p`.
pub(super) fn validate(c: &Config, p: &mut Vec<String>) {
    let k = &c.ingest.kafka;
    let q = match producer_queue(c) {
        Ok(q) => q,
        Err(e) => return p.push(e),
    };
    let need = k.in_flight_records_max.saturating_add(q.tail_records);
    if q.records_cap < need {
        p.push(format!(
            "kafka.producer.\"queue.buffering.max.messages\" = {}: must be at least ingest.kafka.in_flight_records_max + {} = {need} (the records a shard may still hand over once it stops taking records{}), or a full producer queue would refuse Scores",
            q.records_cap,
            q.tail_records,
            why_tail(c),
        ));
    }
    let need = (k.in_flight_bytes_max as u64).saturating_add(q.tail_bytes);
    if q.bytes_cap < need {
        p.push(format!(
            "kafka.producer.\"queue.buffering.max.kbytes\" = {} KiB: must be at least ingest.kafka.in_flight_bytes_max + {} bytes = {} KiB (the values a shard may still hand over once it stops taking records{}), or a full producer queue would refuse Scores",
            q.bytes_cap / 1024,
            q.tail_bytes,
            need.div_ceil(1024),
            why_tail(c),
        ));
    }
    let need = q.value_bytes_max + RECORD_FRAMING_BYTES_MAX;
    if q.message_bytes_max < need {
        p.push(format!(
            "kafka.producer.\"message.max.bytes\" = {}: a Score record of wire.batch_events_max = {} Scores{} may take {need} bytes, which the producer would refuse",
            q.message_bytes_max,
            c.wire.batch_events_max,
            if q.event_letters {
                " (or a dead letter of as many refused events)"
            } else {
                ""
            },
        ));
    }
}

/// What the tail counts, for the messages above.
fn why_tail(c: &Config) -> &'static str {
    match c.state.cold_reader {
        ColdReaderPlace::Shard => "",
        _ => {
            ", with state.cold_reader off the shard thread the events still waiting for a read too"
        }
    }
}
