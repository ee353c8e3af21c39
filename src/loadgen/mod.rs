//! Open-loop load generator: the demo's traffic and the benchmark harness's engine.
//!
//! Datagrams are sent on a fixed schedule (rate / batch per second) whatever the replies do,
//! and each Score's latency is taken from its datagram's *scheduled* send time, so a stall in
//! sluice shows up as latency instead of silently slowing the generator (coordinated omission).
//! Each key is always sent from the same socket, so its events reach sluice in order and the
//! expected per-key `count` of every reply is known: lost, duplicate and wrong-count replies
//! are all detected.

mod rng;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::wire::{read_scores, EventBatchEncoder, EventIn, ScoreOut};
use rng::Rng;

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: SocketAddr,
    /// Events per second.
    pub rate: u64,
    /// Events per datagram.
    pub batch: usize,
    /// Distinct keys, drawn uniformly.
    pub keys: u64,
    pub duration: Duration,
    /// Replies to datagrams scheduled before this are checked but not timed.
    pub warmup: Duration,
    /// Sending sockets (distinct source ports, so SO_REUSEPORT spreads them over shards).
    pub sockets: usize,
    /// Every n-th event is a Feedback (0 = none).
    pub feedback_every: u64,
    /// How long to wait for late replies after the last send.
    pub drain: Duration,
    /// Producer features per event.
    pub features: usize,
    pub seed: u64,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            target: SocketAddr::from((Ipv4Addr::LOCALHOST, 7600)),
            rate: 50_000,
            batch: 1,
            keys: 100_000,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            sockets: 4,
            feedback_every: 0,
            drain: Duration::from_millis(500),
            features: 0,
            seed: 1,
        }
    }
}

#[derive(Debug)]
pub struct LoadReport {
    pub sent_datagrams: u64,
    pub sent_events: u64,
    pub send_errors: u64,
    pub expected_replies: u64,
    pub replies: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub count_errors: u64,
    pub unexpected: u64,
    /// Largest lag of an actual send behind its schedule (the generator's own limit).
    pub max_send_lag: Duration,
    pub elapsed: Duration,
    /// Scheduled send -> reply received, in ns, after warm-up.
    pub latency: Histogram<u64>,
}

impl LoadReport {
    pub fn achieved_rate(&self) -> f64 {
        self.sent_events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What one sent event expects back: 0 = no reply (Feedback or not sent), else the count.
struct Ledger {
    expected: Vec<u32>,
    seen: Vec<AtomicU8>,
}

pub fn run(spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        spec.rate > 0 && spec.batch > 0 && spec.keys > 0 && spec.sockets > 0,
        "rate, batch, keys and sockets must be > 0"
    );
    let datagrams =
        (spec.rate as f64 * spec.duration.as_secs_f64() / spec.batch as f64).ceil() as u64;
    let events = datagrams * spec.batch as u64;
    let interval_ns = spec.batch as f64 * 1e9 / spec.rate as f64;
    let bind = if spec.target.is_ipv4() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    } else {
        "[::1]:0".parse()?
    };
    let sockets: Vec<UdpSocket> = (0..spec.sockets)
        .map(|_| UdpSocket::bind(bind))
        .collect::<Result<_, _>>()
        .context("binding generator sockets")?;
    for s in &sockets {
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
    }

    // Expected counts are computed while sending; the receivers read them after the send
    // that created them (a reply cannot precede its request), through `Ledger`'s atomics.
    let mut ledger = Ledger {
        expected: vec![0; events as usize],
        seen: (0..events).map(|_| AtomicU8::new(0)).collect(),
    };
    let mut counts = vec![0u32; spec.keys as usize];
    // Precompute the whole schedule's events so the send loop only encodes and sends.
    let mut rng = Rng::new(spec.seed);
    let mut plan: Vec<(u64, bool, f32, f32)> = Vec::with_capacity(events as usize);
    for d in 0..datagrams {
        let sock = d % spec.sockets as u64;
        let per_sock = (spec.keys / spec.sockets as u64).max(1);
        for j in 0..spec.batch as u64 {
            let seq = d * spec.batch as u64 + j;
            let key = (sock + spec.sockets as u64 * rng.below(per_sock)).min(spec.keys - 1);
            let feedback = spec.feedback_every > 0 && (seq + 1) % spec.feedback_every == 0;
            let amount = 1.0 + rng.unit() as f32 * 500.0;
            let label = if feedback {
                f32::from(u8::from(rng.unit() < 0.1))
            } else {
                -1.0
            };
            if !feedback {
                counts[key as usize] += 1;
                ledger.expected[seq as usize] = counts[key as usize];
            }
            plan.push((key, feedback, amount, label));
        }
    }
    let expected_replies = ledger.expected.iter().filter(|&&c| c > 0).count() as u64;
    let ledger = Arc::new(ledger);

    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let warmup_ns = spec.warmup.as_nanos() as u64;
    let mut receivers = Vec::new();
    for s in &sockets {
        let s = s.try_clone()?;
        let ledger = ledger.clone();
        let stop = stop.clone();
        let batch = spec.batch as u64;
        receivers.push(
            std::thread::Builder::new()
                .name("loadgen-rx".into())
                .spawn(move || receive(s, &ledger, &stop, origin, interval_ns, batch, warmup_ns))?,
        );
    }

    let features: Vec<f32> = (0..spec.features).map(|i| i as f32 * 0.1).collect();
    let mut enc = EventBatchEncoder::new();
    let mut send_errors = 0u64;
    let mut max_lag = Duration::ZERO;
    for d in 0..datagrams {
        let due = Duration::from_nanos((d as f64 * interval_ns) as u64);
        loop {
            let now = origin.elapsed();
            if now >= due {
                max_lag = max_lag.max(now - due);
                break;
            }
            let left = due - now;
            if left > Duration::from_micros(200) {
                std::thread::sleep(left - Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
        }
        let first = (d * spec.batch as u64) as usize;
        let bytes = enc.encode(plan[first..first + spec.batch].iter().enumerate().map(
            |(j, &(key, feedback, amount, label))| EventIn {
                key,
                seq: (first + j) as u64,
                ts_ns: 0,
                feedback,
                amount,
                label,
                features: &features,
            },
        ));
        if sockets[(d % spec.sockets as u64) as usize]
            .send_to(bytes, spec.target)
            .is_err()
        {
            send_errors += 1;
        }
    }
    let sent_at = origin.elapsed();
    // Wait for the stragglers, then stop the receivers.
    let deadline = Instant::now() + spec.drain;
    while Instant::now() < deadline {
        let seen = ledger
            .seen
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) > 0)
            .count() as u64;
        if seen >= expected_replies {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut replies, mut duplicates, mut count_errors, mut unexpected) = (0, 0, 0, 0);
    for r in receivers {
        let part = r
            .join()
            .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
        latency.add(&part.latency)?;
        replies += part.replies;
        duplicates += part.duplicates;
        count_errors += part.count_errors;
        unexpected += part.unexpected;
    }
    let answered = ledger
        .seen
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) > 0)
        .count() as u64;
    Ok(LoadReport {
        sent_datagrams: datagrams - send_errors,
        sent_events: events - send_errors * spec.batch as u64,
        send_errors,
        expected_replies,
        replies,
        lost: expected_replies.saturating_sub(answered),
        duplicates,
        count_errors,
        unexpected,
        max_send_lag: max_lag,
        elapsed: sent_at,
        latency,
    })
}

struct Received {
    latency: Histogram<u64>,
    replies: u64,
    duplicates: u64,
    count_errors: u64,
    unexpected: u64,
}

fn receive(
    sock: UdpSocket,
    ledger: &Ledger,
    stop: &AtomicBool,
    origin: Instant,
    interval_ns: f64,
    batch: u64,
    warmup_ns: u64,
) -> anyhow::Result<Received> {
    let mut r = Received {
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
        replies: 0,
        duplicates: 0,
        count_errors: 0,
        unexpected: 0,
    };
    let mut buf = vec![0u8; 65_536];
    let mut scores: Vec<ScoreOut> = Vec::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        };
        let now_ns = origin.elapsed().as_nanos() as u64;
        scores.clear();
        if read_scores(&buf[..n], &mut scores).is_err() {
            r.unexpected += 1;
            continue;
        }
        for s in &scores {
            r.replies += 1;
            let Some(&want) = ledger.expected.get(s.seq as usize) else {
                r.unexpected += 1;
                continue;
            };
            if want == 0 {
                r.unexpected += 1;
                continue;
            }
            if ledger.seen[s.seq as usize].swap(1, Ordering::Relaxed) != 0 {
                r.duplicates += 1;
                continue;
            }
            if u64::from(want) != s.count {
                r.count_errors += 1;
            }
            let scheduled_ns = ((s.seq / batch) as f64 * interval_ns) as u64;
            if scheduled_ns >= warmup_ns {
                r.latency
                    .saturating_record(now_ns.saturating_sub(scheduled_ns).max(1));
            }
        }
    }
    Ok(r)
}
