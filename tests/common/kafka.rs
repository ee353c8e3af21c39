//! A real Kafka-compatible broker per test (`sluice::loadgen::broker`: noida-db, installed
//! by scripts/install-deps, on a free loopback port with a fresh data dir, stopped by PID),
//! and the rdkafka clients the tests produce events and read Scores with.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use sluice::loadgen::broker::LocalBroker;
use sluice::wire::{read_scores, EventBatchEncoder, EventIn, ScoreOut};

/// The library's local broker, with the test's conveniences (panics instead of errors).
pub struct Broker(pub LocalBroker);

impl std::ops::Deref for Broker {
    type Target = LocalBroker;
    fn deref(&self) -> &LocalBroker {
        &self.0
    }
}

impl Broker {
    pub fn start(name: &str) -> Self {
        Broker(LocalBroker::start(name).expect("starting the local broker"))
    }

    pub fn restart(&mut self) {
        self.0.restart().unwrap();
    }

    pub fn stop(&mut self) {
        self.0.stop();
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.0.create_topic(topic, partitions).unwrap();
    }

    pub fn create_topic_with(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        self.0
            .create_topic_with(topic, partitions, configs)
            .unwrap();
    }

    pub fn producer(&self) -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("linger.ms", "0")
            .set("enable.idempotence", "true")
            .create()
            .unwrap()
    }

    /// The sluice settings that point it at this broker.
    pub fn sets(&self) -> Vec<String> {
        vec![
            format!("ingest.kafka.brokers={}", self.addr),
            // The broker needs session.timeout.ms >= 6000 (DEPENDENCIES.md).
            "kafka.consumer.session.timeout.ms=6000".into(),
            "kafka.consumer.heartbeat.interval.ms=500".into(),
        ]
    }
}

/// One event the tests produce: entity key, per-key seq, Observation or Feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ev {
    pub key: u64,
    pub seq: u64,
    pub feedback: bool,
}

/// Produce one EventBatch record of `events` to `topic`/`partition`, keyed by the first
/// event's entity key (8 bytes big-endian); waits for room when the producer queue is full.
pub fn produce_to(
    p: &BaseProducer,
    enc: &mut EventBatchEncoder,
    topic: &str,
    events: &[Ev],
    partition: i32,
) {
    produce_with_headers(p, enc, topic, events, partition, &[]);
}

/// `produce_to` with `headers` on the record, in order.
pub fn produce_with_headers(
    p: &BaseProducer,
    enc: &mut EventBatchEncoder,
    topic: &str,
    events: &[Ev],
    partition: i32,
    headers: &[(&str, Option<&[u8]>)],
) {
    produce_record(p, enc, topic, events, partition, headers, None);
}

/// `produce_to` with the record's timestamp set (ms since the epoch).
pub fn produce_at(
    p: &BaseProducer,
    enc: &mut EventBatchEncoder,
    topic: &str,
    events: &[Ev],
    partition: i32,
    timestamp_ms: i64,
) {
    produce_record(p, enc, topic, events, partition, &[], Some(timestamp_ms));
}

fn produce_record(
    p: &BaseProducer,
    enc: &mut EventBatchEncoder,
    topic: &str,
    events: &[Ev],
    partition: i32,
    headers: &[(&str, Option<&[u8]>)],
    timestamp_ms: Option<i64>,
) {
    let bytes = enc
        .encode(events.iter().map(|e| EventIn {
            key: e.key,
            seq: e.seq,
            ts_ns: 0,
            feedback: e.feedback,
            amount: 10.0 + (e.key % 13) as f32,
            label: if e.feedback { 1.0 } else { -1.0 },
            features: &[],
        }))
        .to_vec();
    let key = events[0].key.to_be_bytes();
    loop {
        let owned = headers
            .iter()
            .fold(rdkafka::message::OwnedHeaders::new(), |h, &(key, value)| {
                h.insert(rdkafka::message::Header { key, value })
            });
        let mut rec = BaseRecord::to(topic)
            .key(&key[..])
            .payload(&bytes[..])
            .partition(partition);
        if !headers.is_empty() {
            rec = rec.headers(owned);
        }
        if let Some(ts) = timestamp_ms {
            rec = rec.timestamp(ts);
        }
        match p.send(rec) {
            Ok(()) => break,
            Err(_) => p.poll(Duration::from_millis(10)),
        }
    }
    p.poll(Duration::ZERO);
}

/// A Score as read from the scores topic, with where it came from.
#[derive(Debug, Clone)]
pub struct ScoreRecord {
    pub src: String,
    pub index: usize,
    pub score: ScoreOut,
}

/// Read every committed Score record of `topic` (all partitions, from the start) until
/// `done(scores so far)` or `timeout`; returns the last read.
///
/// Each attempt is a fresh read_committed consumer reading to the end of every partition.
/// A long-lived reader is not used: on noida-db 0.2.3 a read_committed consumer positioned
/// behind a fenced zombie's open transaction never sees the new producer's committed records
/// (measured: 1 of 51), while a fresh consumer sees them all.
pub fn read_scores_until(
    addr: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[ScoreRecord]) -> bool,
) -> Vec<ScoreRecord> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = read_committed_to_end(addr, topic);
        if done(&out) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Everything committed in `topic` now, read by a fresh consumer up to each partition's end.
pub fn read_committed_to_end(addr: &str, topic: &str) -> Vec<ScoreRecord> {
    let mut out = Vec::new();
    read_committed_messages(addr, topic, |m| {
        let src = header(m, "sluice-src").expect("every Score record carries sluice-src");
        let mut scores = Vec::new();
        read_scores(m.payload().unwrap(), &mut scores).unwrap();
        for (index, score) in scores.into_iter().enumerate() {
            out.push(ScoreRecord {
                src: src.clone(),
                index,
                score,
            });
        }
    });
    out
}

/// A record of the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetter {
    pub src: String,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp_ms: Option<i64>,
    /// Every header in order (sluice's included).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Every committed record of a dead-letter topic now.
pub fn read_dead_letters(addr: &str, topic: &str) -> Vec<DeadLetter> {
    let mut out = Vec::new();
    read_committed_messages(addr, topic, |m| {
        out.push(DeadLetter {
            src: header(m, "sluice-src").expect("a dead letter carries sluice-src"),
            reason: header(m, "sluice-reason").expect("a dead letter carries sluice-reason"),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            timestamp_ms: m.timestamp().to_millis(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        })
    });
    out
}

/// The header's last value (as Kafka's `Headers.lastHeader`).
fn header(m: &rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<String> {
    m.headers()
        .and_then(|h| h.iter().filter(|h| h.key == key).last())
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Each committed record of `topic`, read by a fresh read_committed consumer up to each
/// partition's end.
fn read_committed_messages(
    addr: &str,
    topic: &str,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "sluice-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let parts = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut at_end = std::collections::BTreeSet::new();
    let guard = Instant::now() + Duration::from_secs(30);
    while at_end.len() < parts && Instant::now() < guard {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
                continue;
            }
            // A consumer error is librdkafka reporting what it retries itself (seen: a
            // transport error from the test broker under the full suite's load); reaching
            // every partition's end within the guard is what counts.
            Err(e) => {
                eprintln!("reading {topic}: {e} (the reader goes on)");
                continue;
            }
        };
        each(&m);
    }
    assert_eq!(
        at_end.len(),
        parts,
        "{topic}: not every partition read to its end in 30 s"
    );
}

/// The compression codec of every record batch in `topic`/`partition` (0 none, 1 gzip,
/// 2 snappy, 3 lz4, 4 zstd: the batch attributes' low 3 bits), read off the wire with Fetch v4
/// requests rather than through librdkafka, which decompresses without saying what it found.
pub fn batch_codecs(addr: &str, topic: &str, partition: i32) -> Vec<u8> {
    use std::io::{Read, Write};
    fn take<const N: usize>(b: &[u8], at: &mut usize) -> [u8; N] {
        let v: [u8; N] = b[*at..*at + N].try_into().unwrap();
        *at += N;
        v
    }
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut codecs = Vec::new();
    let mut offset = 0i64;
    for correlation in 1..1_000i32 {
        let mut req = Vec::new();
        req.extend(1i16.to_be_bytes()); // Fetch
        req.extend(4i16.to_be_bytes()); // v4
        req.extend(correlation.to_be_bytes());
        req.extend(4i16.to_be_bytes());
        req.extend(b"test");
        req.extend((-1i32).to_be_bytes()); // replica id: a consumer
        req.extend(100i32.to_be_bytes()); // max wait ms
        req.extend(1i32.to_be_bytes()); // min bytes
        req.extend((8i32 << 20).to_be_bytes()); // max bytes
        req.push(0); // read_uncommitted: every batch
        req.extend(1i32.to_be_bytes());
        req.extend((topic.len() as i16).to_be_bytes());
        req.extend(topic.as_bytes());
        req.extend(1i32.to_be_bytes());
        req.extend(partition.to_be_bytes());
        req.extend(offset.to_be_bytes());
        req.extend((8i32 << 20).to_be_bytes());
        s.write_all(&(req.len() as i32).to_be_bytes()).unwrap();
        s.write_all(&req).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut r = vec![0u8; i32::from_be_bytes(len) as usize];
        s.read_exact(&mut r).unwrap();
        let mut at = 0;
        assert_eq!(i32::from_be_bytes(take(&r, &mut at)), correlation);
        at += 4; // throttle
        assert_eq!(i32::from_be_bytes(take(&r, &mut at)), 1, "one topic");
        let name_len = i16::from_be_bytes(take(&r, &mut at)) as usize;
        at += name_len;
        assert_eq!(i32::from_be_bytes(take(&r, &mut at)), 1, "one partition");
        at += 4; // partition
        let error = i16::from_be_bytes(take(&r, &mut at));
        assert_eq!(error, 0, "fetching {topic}/{partition} at {offset}");
        let high_watermark = i64::from_be_bytes(take(&r, &mut at));
        at += 8; // last stable offset
        let aborted = i32::from_be_bytes(take(&r, &mut at));
        at += aborted.max(0) as usize * 16;
        let records_len = i32::from_be_bytes(take(&r, &mut at)).max(0) as usize;
        let end = at + records_len;
        // Whole batches only (a broker may cut the last one short at max bytes).
        while at + 61 <= end {
            let base = i64::from_be_bytes(take(&r, &mut at));
            let batch_len = i32::from_be_bytes(take(&r, &mut at)) as usize;
            if at + batch_len > end {
                break;
            }
            let body = at;
            at += 4 + 1 + 4; // leader epoch, magic, crc
            let attributes = i16::from_be_bytes(take(&r, &mut at));
            let last_delta = i32::from_be_bytes(take(&r, &mut at));
            codecs.push((attributes & 7) as u8);
            offset = base + i64::from(last_delta) + 1;
            at = body + batch_len;
        }
        if offset >= high_watermark {
            return codecs;
        }
    }
    panic!("{topic}/{partition}: not read to its end in 1 000 fetches");
}
