//! Writing ScoreBatch replies (and EventBatch requests, for the load generator and tests) into
//! a reused builder: after the first few datagrams its buffer has grown to size and no more
//! allocation happens.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::{ev, sc};

/// One Score as the shard produced it, before encoding.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScoreOut {
    pub key: u64,
    pub seq: u64,
    pub score: f32,
    pub alert: bool,
    pub model_version: u32,
    pub count: u64,
    pub latency_ns: u64,
}

/// Upper bound of one encoded Score (table + its vtable + vector slot), checked by a test.
pub const SCORE_ENCODED_BYTES_MAX: usize = 96;
/// Upper bound of a ScoreBatch's fixed part (root offset, identifier, root table, vtable,
/// vector length, alignment).
pub const SCORE_BATCH_OVERHEAD_BYTES: usize = 64;

/// Upper bound of one encoded Event without features (table + its vtable + vector slot +
/// an empty features vector's length and alignment), checked by a test.
pub const EVENT_ENCODED_BYTES_MAX: usize = 96;
/// Upper bound of an EventBatch's fixed part, as for a ScoreBatch.
pub const EVENT_BATCH_OVERHEAD_BYTES: usize = 64;

/// Upper bound of a ScoreBatch of `scores` Scores.
pub fn score_batch_bytes_max(scores: usize) -> usize {
    SCORE_BATCH_OVERHEAD_BYTES + scores * SCORE_ENCODED_BYTES_MAX
}

/// Upper bound of an EventBatch of `events` events of up to `features` features each.
pub fn event_batch_bytes_max(events: usize, features: usize) -> usize {
    EVENT_BATCH_OVERHEAD_BYTES + events * (EVENT_ENCODED_BYTES_MAX + 4 * features)
}

pub struct ScoreBatchEncoder {
    fbb: FlatBufferBuilder<'static>,
    offsets: Vec<WIPOffset<sc::Score<'static>>>,
}

impl ScoreBatchEncoder {
    /// `scores_max` bounds one batch; the builder starts at the size such a batch needs.
    pub fn new(scores_max: usize) -> Self {
        Self {
            fbb: FlatBufferBuilder::with_capacity(score_batch_bytes_max(scores_max)),
            offsets: Vec::with_capacity(scores_max),
        }
    }

    /// Encode `scores` as one ScoreBatch; the bytes are valid until the next call.
    pub fn encode(&mut self, scores: impl Iterator<Item = ScoreOut>) -> &[u8] {
        self.fbb.reset();
        self.offsets.clear();
        for s in scores {
            let args = sc::ScoreArgs {
                key: s.key,
                seq: s.seq,
                score: s.score,
                alert: s.alert,
                model_version: s.model_version,
                count: s.count,
                latency_ns: s.latency_ns,
            };
            self.offsets.push(sc::Score::create(&mut self.fbb, &args));
        }
        let scores = self.fbb.create_vector(&self.offsets);
        let root = sc::ScoreBatch::create(
            &mut self.fbb,
            &sc::ScoreBatchArgs {
                scores: Some(scores),
            },
        );
        sc::finish_score_batch_buffer(&mut self.fbb, root);
        self.fbb.finished_data()
    }
}

/// One event to encode (load generator, tests, benches).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EventIn<'f> {
    pub key: u64,
    pub seq: u64,
    pub ts_ns: u64,
    pub feedback: bool,
    pub amount: f32,
    pub label: f32,
    pub features: &'f [f32],
}

pub struct EventBatchEncoder {
    fbb: FlatBufferBuilder<'static>,
    offsets: Vec<WIPOffset<ev::Event<'static>>>,
}

impl Default for EventBatchEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBatchEncoder {
    pub fn new() -> Self {
        Self {
            fbb: FlatBufferBuilder::with_capacity(4096),
            offsets: Vec::with_capacity(64),
        }
    }

    pub fn encode<'f>(&mut self, events: impl Iterator<Item = EventIn<'f>>) -> &[u8] {
        self.fbb.reset();
        self.offsets.clear();
        for e in events {
            let features = (!e.features.is_empty()).then(|| self.fbb.create_vector(e.features));
            let args = ev::EventArgs {
                key: e.key,
                seq: e.seq,
                ts_ns: e.ts_ns,
                kind: if e.feedback {
                    ev::EventKind::Feedback
                } else {
                    ev::EventKind::Observation
                },
                amount: e.amount,
                label: e.label,
                features,
            };
            self.offsets.push(ev::Event::create(&mut self.fbb, &args));
        }
        let events = self.fbb.create_vector(&self.offsets);
        let root = ev::EventBatch::create(
            &mut self.fbb,
            &ev::EventBatchArgs {
                events: Some(events),
            },
        );
        ev::finish_event_batch_buffer(&mut self.fbb, root);
        self.fbb.finished_data()
    }
}

/// Read a ScoreBatch reply (load generator, tests): verified with default limits.
pub fn read_scores(
    bytes: &[u8],
    out: &mut Vec<ScoreOut>,
) -> Result<(), flatbuffers::InvalidFlatbuffer> {
    let batch = sc::root_as_score_batch(bytes)?;
    for s in batch.scores().iter() {
        out.push(ScoreOut {
            key: s.key(),
            seq: s.seq(),
            score: s.score(),
            alert: s.alert(),
            model_version: s.model_version(),
            count: s.count(),
            latency_ns: s.latency_ns(),
        });
    }
    Ok(())
}

/// Scores that fit one reply datagram of `datagram_bytes_max` bytes.
pub fn scores_per_datagram(datagram_bytes_max: usize) -> usize {
    (datagram_bytes_max.saturating_sub(SCORE_BATCH_OVERHEAD_BYTES) / SCORE_ENCODED_BYTES_MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_batch_of_extreme_scores_fits_the_bound() {
        for bytes_max in [256usize, 1472, 9000, 65507] {
            let n = scores_per_datagram(bytes_max);
            let mut enc = ScoreBatchEncoder::new(n);
            let s = ScoreOut {
                key: u64::MAX,
                seq: u64::MAX,
                score: 1.0,
                alert: true,
                model_version: u32::MAX,
                count: u64::MAX,
                latency_ns: u64::MAX,
            };
            let len = enc.encode(std::iter::repeat_n(s, n)).len();
            assert!(
                len <= bytes_max,
                "{n} scores took {len} > {bytes_max} bytes"
            );
            let mut back = Vec::new();
            read_scores(enc.encode(std::iter::repeat_n(s, n)), &mut back).unwrap();
            assert_eq!(back.len(), n);
            assert_eq!(back[0], s);
        }
    }

    /// As below for events: every subset of a Score's fields set, each its own vtable.
    #[test]
    fn scores_of_every_field_pattern_fit_the_bound() {
        let mut enc = ScoreBatchEncoder::new(256);
        let score = |i: usize| {
            let bit = |b: usize, v: u64| if (i >> b) & 1 == 1 { v } else { 0 };
            ScoreOut {
                key: bit(0, u64::MAX),
                seq: bit(1, u64::MAX),
                score: bit(2, 1) as f32,
                alert: (i >> 3) & 1 == 1,
                model_version: bit(4, u64::from(u32::MAX)) as u32,
                count: bit(5, u64::MAX),
                latency_ns: bit(6, u64::MAX),
            }
        };
        for n in [1usize, 2, 64, 256] {
            for start in [0usize, 1, 63, 127] {
                let len = enc.encode((start..start + n).map(|i| score(i % 128))).len();
                let max = score_batch_bytes_max(n);
                assert!(len <= max, "{n} Scores took {len} > {max}");
            }
        }
    }

    /// Each event sets a different subset of its fields (a default value is left out of its
    /// table, so each subset writes a vtable of its own) and up to `features` features: the
    /// worst an encoder can be made to write per event.
    #[test]
    fn events_of_every_field_pattern_fit_the_bound() {
        let features = [7.5f32; 16];
        let mut enc = EventBatchEncoder::new();
        for f in [0usize, 1, 3, 16] {
            for n in [1usize, 2, 64, 256] {
                let ev = |i: usize| {
                    let bit = |b: usize, v: u64| if (i >> b) & 1 == 1 { v } else { 0 };
                    EventIn {
                        key: bit(0, u64::MAX),
                        seq: bit(1, u64::MAX),
                        ts_ns: bit(2, u64::MAX),
                        feedback: (i >> 3) & 1 == 1,
                        amount: bit(4, 1) as f32,
                        label: bit(5, 1) as f32,
                        features: &features[..if (i >> 6) & 1 == 1 { f } else { f.min(1) }],
                    }
                };
                // Every pattern (128) in turn, the first n events of a few offsets.
                for start in [0usize, 1, 63, 127] {
                    let len = enc.encode((start..start + n).map(|i| ev(i % 128))).len();
                    let max = event_batch_bytes_max(n, f);
                    assert!(len <= max, "{n} events of {f} features took {len} > {max}");
                }
                let len = enc.encode((0..n).map(|_| ev(127))).len();
                assert!(len <= event_batch_bytes_max(n, f));
            }
        }
    }
}
