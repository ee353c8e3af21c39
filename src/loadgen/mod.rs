//! Open-loop load generator: the demo's traffic and the benchmark harness's engine.
//!
//! Datagrams are sent on a fixed schedule (rate / batch per second) whatever the replies do,
//! and each Score's latency is taken from its datagram's *scheduled* send time, so a stall in
//! sluice shows up as latency instead of silently slowing the generator (coordinated omission).
//! Each key is always sent from the same socket, so its events reach sluice in order and the
//! expected per-key `count` of every reply is known: lost, duplicate and wrong-count replies
//! are all detected.

pub mod broker;
pub mod kafka;
mod keys;
pub mod rng;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};

use crate::wire::{read_scores, EventBatchEncoder, EventIn, ScoreOut};
use keys::KeyDist;
use rng::Rng;

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: SocketAddr,
    /// Events per second.
    pub rate: u64,
    /// Events per datagram.
    pub batch: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Zipf exponent for key popularity; None = uniform.
    pub zipf: Option<f64>,
    pub duration: Duration,
    /// Replies to datagrams scheduled before this are checked but not timed.
    pub warmup: Duration,
    /// Sending sockets (distinct source ports, so SO_REUSEPORT spreads them over shards).
    /// Rounded up to a multiple of `senders`; each socket belongs to one sender thread.
    pub sockets: usize,
    /// Sender threads, each with its share of the schedule and its own sockets, and one
    /// receiver thread for the same sockets.
    pub senders: usize,
    /// CPUs for the generator's threads (senders first, then receivers), round-robin;
    /// empty = not pinned.
    pub cpus: Vec<usize>,
    /// Every n-th event is a Feedback (0 = none).
    pub feedback_every: u64,
    /// How long to wait for late replies after the last send.
    pub drain: Duration,
    /// Producer features per event.
    pub features: usize,
    /// Check each reply's per-key `count` (off for a stateless responder such as the floor).
    pub check_counts: bool,
    pub seed: u64,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            target: SocketAddr::from((Ipv4Addr::LOCALHOST, 7600)),
            rate: 50_000,
            batch: 1,
            keys: 100_000,
            zipf: None,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            sockets: 4,
            senders: 1,
            cpus: Vec::new(),
            feedback_every: 0,
            drain: Duration::from_millis(500),
            features: 0,
            check_counts: true,
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

/// What each sent event expects back, shared by senders (writers) and receivers (readers).
struct Ledger {
    /// seq -> expected count; 0 = no reply expected (Feedback, or never sent).
    expected: Vec<AtomicU32>,
    seen: Vec<AtomicU8>,
    /// Observations sent so far per key; each key belongs to one socket, so to one sender.
    counts: Vec<AtomicU32>,
}

impl Ledger {
    fn answered(&self) -> u64 {
        self.seen
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) > 0)
            .count() as u64
    }
}

fn pin(cpus: &[usize], i: usize) {
    if !cpus.is_empty() {
        let cpu = cpus[i % cpus.len()];
        if let Err(e) = crate::topology::pin_current(cpu) {
            tracing::warn!("load generator thread not pinned: {e}");
        }
    }
}

pub fn run(spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        spec.rate > 0 && spec.batch > 0 && spec.keys > 0 && spec.sockets > 0 && spec.senders > 0,
        "rate, batch, keys, sockets and senders must be > 0"
    );
    let senders = spec.senders;
    let sockets_n = spec.sockets.div_ceil(senders) * senders;
    let datagrams =
        (spec.rate as f64 * spec.duration.as_secs_f64() / spec.batch as f64).ceil() as u64;
    let events = datagrams * spec.batch as u64;
    let interval_ns = spec.batch as f64 * 1e9 / spec.rate as f64;
    let bind = if spec.target.is_ipv4() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    } else {
        "[::1]:0".parse()?
    };
    let sockets: Vec<UdpSocket> = (0..sockets_n)
        .map(|_| UdpSocket::bind(bind))
        .collect::<Result<_, _>>()
        .context("binding generator sockets")?;
    for s in &sockets {
        // Receivers poll and drain; senders' sends never block on a UDP socket anyway.
        s.set_nonblocking(true)?;
    }
    let ledger = Arc::new(Ledger {
        expected: (0..events).map(|_| AtomicU32::new(0)).collect(),
        seen: (0..events).map(|_| AtomicU8::new(0)).collect(),
        counts: (0..spec.keys).map(|_| AtomicU32::new(0)).collect(),
    });
    let per_socket_keys = (spec.keys / sockets_n as u64).max(1);
    let dist = Arc::new(KeyDist::new(per_socket_keys, spec.zipf));

    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let warmup_ns = spec.warmup.as_nanos() as u64;
    // One receiver thread per sender, over the same sockets, woken by poll for whatever has
    // arrived on any of them: a blocking thread per socket cost the generator's CPU a context
    // switch per reply, which capped the rate it could check before sluice's.
    let mut receivers = Vec::new();
    for t in 0..senders {
        let socks = share_of(&sockets, t, senders)?;
        let ledger = ledger.clone();
        let stop = stop.clone();
        let batch = spec.batch as u64;
        let cpus = spec.cpus.clone();
        let check_counts = spec.check_counts;
        receivers.push(
            std::thread::Builder::new()
                .name("loadgen-rx".into())
                .spawn(move || {
                    pin(&cpus, senders + t);
                    receive(
                        &socks,
                        &ledger,
                        &stop,
                        origin,
                        interval_ns,
                        batch,
                        warmup_ns,
                        check_counts,
                    )
                })?,
        );
    }

    let mut threads = Vec::new();
    for t in 0..senders {
        let socks = share_of(&sockets, t, senders)?;
        let ledger = ledger.clone();
        let dist = dist.clone();
        let spec = spec.clone();
        threads.push(
            std::thread::Builder::new()
                .name("loadgen-tx".into())
                .spawn(move || {
                    pin(&spec.cpus, t);
                    // Sleeps end within a microsecond of their deadline instead of the default
                    // 50 us slack, so the sender can sleep between sends instead of spinning.
                    let _ = nix::sys::prctl::set_timerslack(1_000);
                    send(
                        &spec,
                        t,
                        sockets_n,
                        &socks,
                        &ledger,
                        &dist,
                        datagrams,
                        interval_ns,
                        per_socket_keys,
                        origin,
                    )
                })?,
        );
    }
    let mut send_errors = 0;
    let mut max_lag = Duration::ZERO;
    for t in threads {
        let (errors, lag) = t
            .join()
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
        send_errors += errors;
        max_lag = max_lag.max(lag);
    }
    let sent_at = origin.elapsed();
    let expected_replies = ledger
        .expected
        .iter()
        .filter(|c| c.load(Ordering::Relaxed) > 0)
        .count() as u64;
    // Wait for the stragglers, then stop the receivers.
    let deadline = Instant::now() + spec.drain;
    while Instant::now() < deadline && ledger.answered() < expected_replies {
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
    Ok(LoadReport {
        sent_datagrams: datagrams - send_errors,
        sent_events: events - send_errors * spec.batch as u64,
        send_errors,
        expected_replies,
        replies,
        lost: expected_replies.saturating_sub(ledger.answered()),
        duplicates,
        count_errors,
        unexpected,
        max_send_lag: max_lag,
        elapsed: sent_at,
        latency,
    })
}

/// Sender (and receiver) `t` owns sockets t, t + senders, ... and the datagrams sent on them.
fn share_of(sockets: &[UdpSocket], t: usize, senders: usize) -> std::io::Result<Vec<UdpSocket>> {
    sockets
        .iter()
        .skip(t)
        .step_by(senders)
        .map(UdpSocket::try_clone)
        .collect()
}

/// One sender thread: its share of the schedule, open loop.
#[allow(clippy::too_many_arguments)]
fn send(
    spec: &LoadSpec,
    t: usize,
    sockets_n: usize,
    socks: &[UdpSocket],
    ledger: &Ledger,
    dist: &KeyDist,
    datagrams: u64,
    interval_ns: f64,
    per_socket_keys: u64,
    origin: Instant,
) -> (u64, Duration) {
    let mut rng = Rng::new(spec.seed ^ (t as u64).wrapping_mul(0x9E37_79B9));
    let features: Vec<f32> = (0..spec.features).map(|i| i as f32 * 0.1).collect();
    let mut enc = EventBatchEncoder::new();
    let mut batch: Vec<EventIn<'_>> = Vec::with_capacity(spec.batch);
    let mut errors = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut d = t as u64;
    while d < datagrams {
        let sock = (d % sockets_n as u64) as usize;
        batch.clear();
        for j in 0..spec.batch as u64 {
            let seq = d * spec.batch as u64 + j;
            let key = (sock as u64
                + sockets_n as u64 * dist.sample(&mut rng).min(per_socket_keys - 1))
            .min(spec.keys - 1);
            let feedback = spec.feedback_every > 0 && (seq + 1) % spec.feedback_every == 0;
            let label = if feedback {
                f32::from(u8::from(rng.unit() < 0.1))
            } else {
                -1.0
            };
            batch.push(EventIn {
                key,
                seq,
                ts_ns: 0,
                feedback,
                amount: rng.amount_for(key),
                label,
                features: &features,
            });
        }
        let due = Duration::from_nanos((d as f64 * interval_ns) as u64);
        loop {
            let now = origin.elapsed();
            if now >= due {
                max_lag = max_lag.max(now - due);
                break;
            }
            let left = due - now;
            if left > Duration::from_micros(30) {
                std::thread::sleep(left - Duration::from_micros(15));
            } else {
                // Yield rather than spin: the receiver threads may share this CPU, and a
                // spinning sender would delay them by whole scheduler slices. Lateness of
                // the send itself is still charged to the latency (scheduled time).
                std::thread::yield_now();
            }
        }
        // Expected counts are published before the send, so a reply never finds them unset.
        for e in batch.iter().filter(|e| !e.feedback) {
            let c = ledger.counts[e.key as usize].fetch_add(1, Ordering::Relaxed) + 1;
            ledger.expected[e.seq as usize].store(c, Ordering::Release);
        }
        let bytes = enc.encode(batch.iter().copied());
        if send_to(&socks[sock / spec.senders], bytes, spec.target).is_err() {
            errors += 1;
            // Not sent: undo, so later counts and the loss figure stay right.
            for e in batch.iter().filter(|e| !e.feedback) {
                ledger.expected[e.seq as usize].store(0, Ordering::Release);
                ledger.counts[e.key as usize].fetch_sub(1, Ordering::Relaxed);
            }
        }
        d += spec.senders as u64;
    }
    (errors, max_lag)
}

/// Send one datagram; a full send buffer (the sockets are non-blocking for the receivers)
/// is waited out, as a blocking socket would.
fn send_to(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    loop {
        match sock.send_to(bytes, to) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                std::thread::yield_now()
            }
            r => return r,
        }
    }
}

struct Received {
    latency: Histogram<u64>,
    replies: u64,
    duplicates: u64,
    count_errors: u64,
    unexpected: u64,
    /// The schedule (ns between datagrams, events per datagram), to know each seq's send time.
    interval_ns: f64,
    batch: u64,
    warmup_ns: u64,
    check_counts: bool,
}

#[allow(clippy::too_many_arguments)]
fn receive(
    socks: &[UdpSocket],
    ledger: &Ledger,
    stop: &AtomicBool,
    origin: Instant,
    interval_ns: f64,
    batch: u64,
    warmup_ns: u64,
    check_counts: bool,
) -> anyhow::Result<Received> {
    let mut r = Received {
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
        replies: 0,
        duplicates: 0,
        count_errors: 0,
        unexpected: 0,
        interval_ns,
        batch,
        warmup_ns,
        check_counts,
    };
    let mut buf = vec![0u8; 65_536];
    let mut scores: Vec<ScoreOut> = Vec::with_capacity(1024);
    let mut fds: Vec<PollFd<'_>> = socks
        .iter()
        .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // The timeout only bounds how long a stop takes to be seen.
        match poll(&mut fds, 20u16) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        for (i, s) in socks.iter().enumerate() {
            if !fds[i]
                .revents()
                .is_some_and(|f| f.intersects(PollFlags::POLLIN))
            {
                continue;
            }
            loop {
                let n = match s.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                let now_ns = origin.elapsed().as_nanos() as u64;
                scores.clear();
                if read_scores(&buf[..n], &mut scores).is_err() {
                    r.unexpected += 1;
                    continue;
                }
                for sc in &scores {
                    r.check(sc, ledger, now_ns);
                }
            }
        }
    }
    Ok(r)
}

impl Received {
    /// Account one Score received at `now_ns` (ns since the run's origin).
    fn check(&mut self, s: &ScoreOut, ledger: &Ledger, now_ns: u64) {
        self.replies += 1;
        let Some(want) = ledger
            .expected
            .get(s.seq as usize)
            .map(|c| c.load(Ordering::Acquire))
        else {
            self.unexpected += 1;
            return;
        };
        if want == 0 {
            self.unexpected += 1;
            return;
        }
        if ledger.seen[s.seq as usize].swap(1, Ordering::Relaxed) != 0 {
            self.duplicates += 1;
            return;
        }
        if self.check_counts && u64::from(want) != s.count {
            self.count_errors += 1;
        }
        let scheduled_ns = ((s.seq / self.batch) as f64 * self.interval_ns) as u64;
        if scheduled_ns >= self.warmup_ns {
            self.latency
                .saturating_record(now_ns.saturating_sub(scheduled_ns).max(1));
        }
    }
}
