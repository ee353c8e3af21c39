//! Replies out: the Scores of one drain cycle, grouped by destination into ScoreBatch
//! datagrams of at most `egress.datagram_bytes_max`, sent with one `sendmmsg` per
//! `egress.batch_datagrams_max` datagrams. Latency is stamped here, at the last moment
//! before the kernel takes the reply.

pub mod kafka;
mod sendmmsg;

use std::net::{SocketAddr, UdpSocket};

use crate::clock;
use crate::config::Config;
use crate::limits::EGRESS_DESTINATIONS_MAX;
use crate::metrics::{DropReason, ShardCounters, ShardLatency};
use crate::route::RoutedEvent;
use crate::wire::{scores_per_datagram, ScoreBatchEncoder, ScoreOut};

use sendmmsg::Sender;

/// A Score waiting for its cycle's flush.
#[derive(Debug, Clone, Copy)]
pub struct PendingScore {
    pub score: ScoreOut,
    /// Kernel receive time of the datagram that carried the event (CLOCK_REALTIME ns), or its
    /// pickup time when the kernel gave none.
    pub recv_ns: u64,
    /// When a shard picked that datagram up (CLOCK_REALTIME ns).
    pub pickup_ns: u64,
    /// The event's key was not hot when it arrived (its record came from the spill store, or
    /// it was new): its latency also goes to the cold keys' histogram.
    pub cold: bool,
}

/// Where a Score goes: back over UDP, or into the Score record of one consumed Kafka record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    Udp(SocketAddr),
    /// Index of the input record in this cycle's Kafka source table (`kafka::KafkaSink`).
    Kafka(u32),
}

/// Where the core puts Scores; `Egress` sends them, tests collect them.
pub trait ScoreSink {
    fn emit(&mut self, reply_to: ReplyTo, s: PendingScore);
    /// How long one model call of `rows` rows took (ns); recorded where the shard keeps its
    /// histograms.
    fn model_ran(&mut self, _ns: u64, _rows: usize) {}
    /// A clock for that measurement (ns, any origin): the core reads none of its own, so a
    /// test or a simulation gives it whatever time it likes (this default: none).
    fn clock_ns(&mut self) -> u64 {
        0
    }
    /// Send what is pending now, before the cycle's end: the Scores of hot keys go out before
    /// the cycle's batched cold read (Kafka Score records wait for the cycle's end, which
    /// groups them per input record).
    fn flush_early(&mut self) {}
    /// An event refused for `reason` (already counted): a Kafka-borne one may go on to the
    /// dead-letter topic (`egress.kafka.dead_letter_events`). Not called on the hot path of
    /// an applied event.
    fn refused(&mut self, _reply_to: ReplyTo, _ev: &RoutedEvent, _reason: DropReason) {}
}

impl ScoreSink for Vec<(ReplyTo, PendingScore)> {
    fn emit(&mut self, reply_to: ReplyTo, s: PendingScore) {
        self.push((reply_to, s));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot clone the shard socket for sending: {0}")]
    Socket(std::io::Error),
}

pub struct Egress {
    sender: Sender,
    encoder: ScoreBatchEncoder,
    pending: Vec<(u16, PendingScore)>,
    pending_max: usize,
    dests: Vec<SocketAddr>,
    /// Indexes into `pending` for the destination being encoded (reused scratch).
    scratch: Vec<u32>,
    per_datagram: usize,
    scores_to: Option<SocketAddr>,
    alerts_to: Option<SocketAddr>,
}

impl Egress {
    /// `pending_max`: Scores one cycle can produce (the shard's drain bounds); a flush happens
    /// early if it is reached, so this is a bound, not a drop point.
    pub fn new(sock: &UdpSocket, config: &Config, pending_max: usize) -> Result<Self, EgressError> {
        let sock = sock.try_clone().map_err(EgressError::Socket)?;
        let per_datagram = scores_per_datagram(config.egress.datagram_bytes_max);
        // Both already validated at config load; an invalid one here would mean "none".
        let scores_to = Config::optional_addr("egress.scores_to", &config.egress.scores_to)
            .ok()
            .flatten();
        let alerts_to = Config::optional_addr("egress.alerts_to", &config.egress.alerts_to)
            .ok()
            .flatten();
        Ok(Self {
            sender: Sender::new(
                sock,
                config.egress.batch_datagrams_max,
                config.egress.datagram_bytes_max,
            ),
            encoder: ScoreBatchEncoder::new(per_datagram),
            pending: Vec::with_capacity(pending_max),
            pending_max,
            dests: Vec::with_capacity(EGRESS_DESTINATIONS_MAX),
            scratch: Vec::with_capacity(pending_max),
            per_datagram,
            scores_to,
            alerts_to,
        })
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Encode and send everything pending; stamp latency and record it.
    pub fn flush(&mut self, counters: &ShardCounters, latency: &mut ShardLatency) {
        if self.pending.is_empty() {
            return;
        }
        let emit_ns = clock::realtime_ns();
        for (_, p) in &mut self.pending {
            // recv_ns is never 0 here: the core puts the pickup time in when the kernel gave
            // no receive timestamp.
            p.score.latency_ns = emit_ns.saturating_sub(p.recv_ns);
            latency.record(
                p.score.latency_ns,
                emit_ns.saturating_sub(p.pickup_ns),
                p.cold,
            );
        }
        for d in 0..self.dests.len() {
            self.scratch.clear();
            self.scratch.extend(
                self.pending
                    .iter()
                    .enumerate()
                    .filter(|(_, (dest, _))| usize::from(*dest) == d)
                    .map(|(i, _)| i as u32),
            );
            let dest = self.dests[d];
            self.send_group(dest, false, counters);
        }
        if let Some(alerts_to) = self.alerts_to {
            self.scratch.clear();
            self.scratch.extend(
                self.pending
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, p))| p.score.alert)
                    .map(|(i, _)| i as u32),
            );
            self.send_group(alerts_to, true, counters);
        }
        self.sender.send_all(counters);
        self.pending.clear();
        self.dests.clear();
    }

    /// Encode the pending Scores listed in `scratch` for `dest`, one datagram per chunk.
    fn send_group(&mut self, dest: SocketAddr, alerts: bool, counters: &ShardCounters) {
        let Self {
            scratch,
            pending,
            encoder,
            sender,
            per_datagram,
            ..
        } = self;
        for chunk in scratch.chunks(*per_datagram) {
            if sender.is_full() {
                sender.send_all(counters);
            }
            let bytes = encoder.encode(chunk.iter().map(|&i| pending[i as usize].1.score));
            let queued = sender.queue(dest, bytes, if alerts { 0 } else { chunk.len() as u32 });
            crate::invariant!(queued, "a batch with room refused a datagram");
        }
    }

    fn dest_index(&mut self, dest: SocketAddr) -> Option<u16> {
        if let Some(i) = self.dests.iter().position(|d| *d == dest) {
            return Some(i as u16);
        }
        if self.dests.len() == EGRESS_DESTINATIONS_MAX {
            return None;
        }
        self.dests.push(dest);
        Some((self.dests.len() - 1) as u16)
    }

    /// Queue a Score; flushes first when a bound is reached.
    pub fn push(
        &mut self,
        reply_to: SocketAddr,
        s: PendingScore,
        counters: &ShardCounters,
        latency: &mut ShardLatency,
    ) {
        let dest = self.scores_to.unwrap_or(reply_to);
        if self.pending.len() == self.pending_max {
            self.flush(counters, latency);
        }
        let idx = match self.dest_index(dest) {
            Some(i) => i,
            None => {
                self.flush(counters, latency);
                // After a flush the table is empty, so this cannot fail.
                self.dest_index(dest).unwrap_or(0)
            }
        };
        self.pending.push((idx, s));
    }
}

/// The sink a shard hands its core: pushes into `Egress` (and the shard's Kafka sink, when
/// Kafka is on) with the shard's metrics.
pub struct EgressSink<'a> {
    pub egress: &'a mut Egress,
    pub kafka: Option<&'a mut kafka::KafkaSink>,
    pub counters: &'a ShardCounters,
    pub latency: &'a mut ShardLatency,
}

impl ScoreSink for EgressSink<'_> {
    fn emit(&mut self, reply_to: ReplyTo, s: PendingScore) {
        match reply_to {
            ReplyTo::Udp(addr) => self.egress.push(addr, s, self.counters, self.latency),
            ReplyTo::Kafka(source) => match self.kafka.as_deref_mut() {
                Some(k) => k.push(source, s),
                // Only a shard with a Kafka sink takes Kafka records.
                None => crate::invariant!(false, "a Kafka Score on a shard without Kafka"),
            },
        }
    }

    fn model_ran(&mut self, ns: u64, rows: usize) {
        self.latency.record_model_run(ns, rows);
    }

    fn clock_ns(&mut self) -> u64 {
        crate::clock::realtime_ns()
    }

    fn flush_early(&mut self) {
        self.egress.flush(self.counters, self.latency);
    }

    fn refused(&mut self, reply_to: ReplyTo, ev: &RoutedEvent, reason: DropReason) {
        // UDP has no dead-letter destination: the drop counter is the whole record of it.
        if let (ReplyTo::Kafka(source), Some(k)) = (reply_to, self.kafka.as_deref_mut()) {
            k.refused(source, ev, reason);
        }
    }
}

/// Counted when a reply datagram cannot be sent: its Scores are lost, visibly.
pub(crate) fn count_send_failure(counters: &ShardCounters, scores: u32) {
    counters.dropped_events(DropReason::SendError, u64::from(scores));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wire::read_scores;

    fn pending(seq: u64, recv_ns: u64, pickup_ns: u64) -> PendingScore {
        PendingScore {
            score: ScoreOut {
                key: seq,
                seq,
                ..ScoreOut::default()
            },
            recv_ns,
            pickup_ns,
            cold: false,
        }
    }

    #[test]
    fn a_model_call_is_recorded_whole_and_per_row() {
        let live = std::sync::Arc::new(ShardCounters::default());
        let mut latency = ShardLatency::new(60_000_000_000, live.clone()).unwrap();
        latency.record_model_run(12_000, 4);
        latency.record_model_run(900, 1);
        let near = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) / 100;
        assert_eq!(
            (near(&latency.model_run, 0.0), near(&latency.model_run, 1.0)),
            (9, 120)
        );
        let per_row = &latency.model_run_per_row;
        assert_eq!((near(per_row, 0.0), near(per_row, 1.0)), (9, 30));
        // The live histograms: 12 us and 900 ns per call; 3 us and 900 ns per row.
        let (calls, call_ns) = live.latency.model_run.snapshot();
        let (rows, row_ns) = live.latency.model_run_per_row.snapshot();
        assert_eq!((calls.iter().sum::<u64>(), call_ns), (2, 12_900));
        assert_eq!((rows.iter().sum::<u64>(), row_ns), (2, 3_900));
    }

    #[test]
    fn flush_sends_every_score_and_records_each_once_in_both_histograms() {
        let shard = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let config = Config::defaults().unwrap();
        let mut egress = Egress::new(&shard, &config, 64).unwrap();
        let counters = ShardCounters::default();
        let mut latency = ShardLatency::new(60_000_000_000, Default::default()).unwrap();
        let to = client.local_addr().unwrap();
        let now = clock::realtime_ns();
        // Two datagrams' events (3 and 2, each with its own receive time), then one more
        // received with the first.
        let times = [
            (now - 1_000_000_000, now - 999_000_000),
            (now - 1_000_000_000, now - 999_000_000),
            (now - 1_000_000_000, now - 999_000_000),
            (now - 5_000, now - 4_000),
            (now - 5_000, now - 4_000),
            (now - 1_000_000_000, now - 999_000_000),
        ];
        for (seq, (recv, pickup)) in times.iter().enumerate() {
            egress.push(
                to,
                pending(seq as u64, *recv, *pickup),
                &counters,
                &mut latency,
            );
        }
        egress.flush(&counters, &mut latency);

        assert_eq!(latency.receive_to_emit.len(), 6);
        assert_eq!(latency.in_shard.len(), 6);
        assert_eq!(counters.scores_emitted.get(), 6);

        let mut buf = [0u8; 65_536];
        let mut got = Vec::new();
        while got.len() < 6 {
            let n = client.recv(&mut buf).unwrap();
            read_scores(&buf[..n], &mut got).unwrap();
        }
        got.sort_by_key(|s| s.seq);
        assert_eq!(
            got.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        // Each Score carries its own latency; the histogram holds each as often as it was sent.
        let (old, new) = (got[0].latency_ns, got[3].latency_ns);
        assert_eq!(old - new, 1_000_000_000 - 5_000);
        assert!(got
            .iter()
            .all(|s| s.latency_ns == old || s.latency_ns == new));
        assert_eq!(latency.receive_to_emit.count_at(old), 4);
        assert_eq!(latency.receive_to_emit.count_at(new), 2);
    }
}
