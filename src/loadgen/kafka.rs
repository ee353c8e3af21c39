//! Open-loop Kafka load: one event a record on a fixed schedule, keyed by entity key (Kafka's
//! default partitioner keeps each key on one partition), and a read_committed reader of the
//! Scores topic. Latency = Score visible to the reader - the event's *scheduled* produce time
//! (no coordinated omission). Event i has seq i and key (i x P) mod keys, so every Score's
//! expected per-key count is known: lost, duplicate and wrong-count Scores are all detected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::clock;
use crate::wire::{read_scores, EventBatchEncoder, EventIn, ScoreOut};

/// A prime above any key count used: i -> (i x STEP) mod keys visits every key once per
/// `keys` events.
const STEP: u64 = 1_000_000_007;

#[derive(Debug, Clone)]
pub struct KafkaLoadSpec {
    pub brokers: String,
    pub events_topic: String,
    pub scores_topic: String,
    /// Events (records) per second.
    pub rate: u64,
    pub keys: u64,
    pub duration: Duration,
    /// Scores of events scheduled before this are checked but not timed.
    pub warmup: Duration,
    /// How long to wait for Scores after the last produce.
    pub drain: Duration,
    /// The reader's fetch.wait.max.ms (its own share of the latency floor).
    pub fetch_wait_ms: u32,
}

#[derive(Debug)]
pub struct KafkaLoadResult {
    pub sent: u64,
    pub elapsed: Duration,
    /// Largest lag behind the schedule the producer had (it is open loop only if small).
    pub max_send_lag: Duration,
    pub scores: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub count_errors: u64,
    /// Scores with a seq no event had.
    pub unexpected: u64,
    /// Scheduled produce -> Score read (ns), after the warm-up.
    pub latency: Histogram<u64>,
}

/// Hand one record to `producer`, serving delivery reports while its queue is full; any other
/// refusal is an error. (For load generators and the harness: this waits, the shard never does.)
pub fn send_when_room(
    producer: &BaseProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
) -> anyhow::Result<()> {
    while let Err((e, _)) = producer.send(BaseRecord::to(topic).key(key).payload(value)) {
        anyhow::ensure!(
            e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
            "producing to {topic}: {e}"
        );
        producer.poll(Duration::from_millis(1));
    }
    Ok(())
}

/// Event `i` of the load (its key, seq `i`, event time `due`), one to a record.
fn send_event(
    producer: &BaseProducer,
    spec: &KafkaLoadSpec,
    enc: &mut EventBatchEncoder,
    i: u64,
    due: u64,
) -> anyhow::Result<()> {
    let key = key_of(i, spec.keys);
    let value = enc.encode(std::iter::once(EventIn {
        key,
        seq: i,
        ts_ns: due,
        feedback: false,
        amount: 5.0 + (key % 97) as f32,
        label: -1.0,
        features: &[],
    }));
    send_when_room(producer, &spec.events_topic, &key.to_be_bytes(), value)
}

fn key_of(i: u64, keys: u64) -> u64 {
    (i.wrapping_mul(STEP)) % keys.max(1)
}

/// Producer client for events, as a user's low-latency producer would be set up.
fn producer(brokers: &str) -> anyhow::Result<BaseProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the load producer")
}

fn reader(brokers: &str, topic: &str, fetch_wait_ms: u32) -> anyhow::Result<BaseConsumer> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-load-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("fetch.error.backoff.ms", "10")
        .create()
        .context("creating the Score reader")?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("Scores topic metadata")?;
    let parts = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    anyhow::ensure!(parts > 0, "Scores topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        // From the end: only this run's Scores count.
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// Run the load; blocks for `duration + drain` at most.
pub fn run(spec: &KafkaLoadSpec) -> anyhow::Result<KafkaLoadResult> {
    let total = spec
        .rate
        .saturating_mul(spec.duration.as_secs_f64() as u64)
        .max(1);
    let consumer = reader(&spec.brokers, &spec.scores_topic, spec.fetch_wait_ms)?;
    // Give the reader its assignment before the first Score can be written.
    consumer.poll(Duration::from_millis(200));
    let producer = producer(&spec.brokers)?;
    let period_ns = 1e9 / spec.rate.max(1) as f64;
    let mut enc = EventBatchEncoder::new();
    // The first record goes out, delivered, before the clock starts: a new idempotent
    // producer holds its first records until it has connected and has its producer id (~0.5 s
    // on the local test broker), and a record's timestamp is its send() call, so records sent
    // meanwhile counted that wait in sluice's own "record -> produce" figure (p99 0.4-0.9 s in
    // a 10 s `sluice demo --kafka`; with idempotence off, 24-31 ms). That one record is in the
    // warm-up, which the client's figures leave out.
    let first_ns = clock::realtime_ns();
    send_event(&producer, spec, &mut enc, 0, first_ns)?;
    producer
        .flush(Duration::from_secs(30))
        .context("the load producer's first record")?;
    // Record 1 is due at the start and each next one a period later; record 0, sent, one
    // period before the start.
    let zero_ns = (clock::realtime_ns() + 50_000_000).saturating_sub(period_ns as u64);
    let sched = move |i: u64| zero_ns + (i as f64 * period_ns) as u64;
    let sending = Arc::new(AtomicBool::new(true));
    let reading = {
        let sending = sending.clone();
        let spec = spec.clone();
        std::thread::Builder::new()
            .name("sluice-kafka-reader".into())
            .spawn(move || read_all(consumer, &spec, total, sched, &sending))?
    };
    let started = Instant::now();
    let mut max_lag = 0u64;
    for i in 1..total {
        let due = sched(i);
        loop {
            let now = clock::realtime_ns();
            if now >= due {
                max_lag = max_lag.max(now - due);
                break;
            }
            if due - now > 200_000 {
                std::thread::sleep(Duration::from_nanos(due - now - 100_000));
            } else {
                std::hint::spin_loop();
            }
        }
        send_event(&producer, spec, &mut enc, i, due)?;
        if i % 64 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the load producer")?;
    let elapsed = started.elapsed();
    sending.store(false, Ordering::SeqCst);
    let mut r = reading
        .join()
        .map_err(|_| anyhow::anyhow!("the Score reader panicked"))??;
    r.sent = total;
    r.elapsed = elapsed;
    r.max_send_lag = Duration::from_nanos(max_lag);
    Ok(r)
}

fn read_all(
    consumer: BaseConsumer,
    spec: &KafkaLoadSpec,
    total: u64,
    sched: impl Fn(u64) -> u64,
    sending: &AtomicBool,
) -> anyhow::Result<KafkaLoadResult> {
    let mut seen = vec![false; total as usize];
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3)?;
    let warm_ns = sched(0) + spec.warmup.as_nanos() as u64;
    let mut r = KafkaLoadResult {
        sent: 0,
        elapsed: Duration::ZERO,
        max_send_lag: Duration::ZERO,
        scores: 0,
        lost: 0,
        duplicates: 0,
        count_errors: 0,
        unexpected: 0,
        latency: Histogram::new(3)?,
    };
    let mut scores: Vec<ScoreOut> = Vec::new();
    let mut drain_until: Option<Instant> = None;
    loop {
        if r.scores >= total {
            break;
        }
        if !sending.load(Ordering::Relaxed) {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + spec.drain);
            if Instant::now() > until {
                break;
            }
        }
        let Some(m) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let m = m.context("reading Scores")?;
        let now = clock::realtime_ns();
        scores.clear();
        if read_scores(m.payload().unwrap_or(&[]), &mut scores).is_err() {
            r.unexpected += 1;
            continue;
        }
        for s in &scores {
            let Some(slot) = seen.get_mut(s.seq as usize) else {
                r.unexpected += 1;
                continue;
            };
            if std::mem::replace(slot, true) {
                r.duplicates += 1;
                continue;
            }
            r.scores += 1;
            let want_count = s.seq / spec.keys.max(1) + 1;
            if s.key != key_of(s.seq, spec.keys) || s.count != want_count {
                r.count_errors += 1;
            }
            let due = sched(s.seq);
            if due >= warm_ns {
                latency.saturating_record(now.saturating_sub(due).max(1));
            }
        }
    }
    r.lost = seen.iter().filter(|s| !**s).count() as u64;
    r.latency = latency;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cycle_so_counts_are_known() {
        // Every window of `keys` consecutive events visits each key once: the expected
        // count of event i is i / keys + 1.
        for keys in [1u64, 7, 1000] {
            let mut count = std::collections::HashMap::new();
            for i in 0..keys * 3 {
                let c = count.entry(key_of(i, keys)).or_insert(0u64);
                *c += 1;
                assert_eq!(*c, i / keys + 1, "keys {keys} event {i}");
            }
            assert_eq!(count.len() as u64, keys);
        }
    }
}
