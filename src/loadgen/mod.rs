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
pub mod keys;
pub mod rng;
mod schedule;

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
pub use schedule::Schedule;

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
    /// A second phase after `duration`: (events/s, how long), e.g. the sustainable rate after
    /// an overload. Its replies get their own latency histogram.
    pub then: Option<(u64, Duration)>,
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
    /// Address the generator's sockets bind (None: loopback of the target's family).
    pub bind: Option<std::net::IpAddr>,
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
            then: None,
            warmup: Duration::from_secs(1),
            sockets: 4,
            senders: 1,
            cpus: Vec::new(),
            feedback_every: 0,
            drain: Duration::from_millis(500),
            features: 0,
            check_counts: true,
            seed: 1,
            bind: None,
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
    /// Replies whose count is above what was sent for their key by then: an event applied
    /// twice. Under loss counts fall short (`count_errors`), but never rise above.
    pub count_over: u64,
    pub unexpected: u64,
    /// Replies the kernel dropped at the generator's own sockets (its receiver fell behind):
    /// lost on the client's side, not by the service.
    pub client_socket_drops: u64,
    /// Largest lag of an actual send behind its schedule (the generator's own limit).
    pub max_send_lag: Duration,
    pub elapsed: Duration,
    /// Scheduled send -> reply received, in ns, after warm-up (first phase only when there
    /// is a second).
    pub latency: Histogram<u64>,
    /// The same for the second phase (`LoadSpec::then`).
    pub latency_then: Option<Histogram<u64>>,
    /// Start of the second phase from the origin.
    pub switch_at: Option<Duration>,
    /// Replies expected and received per `TIMELINE_SLOT` of scheduled send time.
    pub timeline: Vec<Slot>,
}

/// Width of a timeline slot.
pub const TIMELINE_SLOT: Duration = Duration::from_millis(100);

/// One slot of the timeline: events scheduled in it that expect a reply, and how many got one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Slot {
    pub expected: u64,
    pub answered: u64,
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
    let schedule = Schedule::new(spec.rate, spec.duration, spec.batch, spec.then);
    let datagrams = schedule.datagrams();
    let events = datagrams * spec.batch as u64;
    let bind = match spec.bind {
        Some(ip) => SocketAddr::new(ip, 0),
        None if spec.target.is_ipv4() => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        None => "[::1]:0".parse()?,
    };
    let sockets: Vec<UdpSocket> = (0..sockets_n)
        .map(|_| UdpSocket::bind(bind))
        .collect::<Result<_, _>>()
        .context("binding generator sockets")?;
    for s in &sockets {
        // Receivers poll and drain; senders' sends never block on a UDP socket anyway.
        s.set_nonblocking(true)?;
        // Room for replies while the receiver thread waits for a CPU (root passes
        // rmem_max; elsewhere the default stays). Drops here are counted, see below.
        let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20));
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
                        schedule,
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
                        &schedule,
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
    let mut latency_then = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut replies, mut duplicates, mut count_errors, mut count_over, mut unexpected) =
        (0, 0, 0, 0, 0);
    for r in receivers {
        let part = r
            .join()
            .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
        latency.add(&part.latency)?;
        latency_then.add(&part.latency_then)?;
        replies += part.replies;
        duplicates += part.duplicates;
        count_errors += part.count_errors;
        count_over += part.count_over;
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
        count_over,
        unexpected,
        client_socket_drops: udp_socket_drops(&sockets),
        max_send_lag: max_lag,
        elapsed: sent_at,
        latency,
        latency_then: spec.then.map(|_| latency_then),
        switch_at: schedule.switch_ns().map(Duration::from_nanos),
        timeline: timeline(&ledger, &schedule, spec.batch as u64),
    })
}

fn timeline(ledger: &Ledger, schedule: &Schedule, batch: u64) -> Vec<Slot> {
    let slot_ns = TIMELINE_SLOT.as_nanos() as u64;
    let mut slots = Vec::new();
    for (seq, want) in ledger.expected.iter().enumerate() {
        if want.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let i = (schedule.due_ns(seq as u64 / batch) / slot_ns) as usize;
        if slots.len() <= i {
            slots.resize(i + 1, Slot::default());
        }
        slots[i].expected += 1;
        slots[i].answered += u64::from(ledger.seen[seq].load(Ordering::Relaxed) > 0);
    }
    slots
}

/// The kernel's receive-drop count of `sockets`, from /proc/net/udp{,6} (0 where unreadable).
fn udp_socket_drops(sockets: &[UdpSocket]) -> u64 {
    let ports: Vec<u16> = sockets
        .iter()
        .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
        .collect();
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    let port = cols.get(1)?.rsplit(':').next()?;
                    let port = u16::from_str_radix(port, 16).ok()?;
                    let drops: u64 = cols.last()?.parse().ok()?;
                    ports.contains(&port).then_some(drops)
                })
                .collect::<Vec<_>>()
        })
        .sum()
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
    schedule: &Schedule,
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
    while d < schedule.datagrams() {
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
        let due = Duration::from_nanos(schedule.due_ns(d));
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
    latency_then: Histogram<u64>,
    replies: u64,
    duplicates: u64,
    count_errors: u64,
    count_over: u64,
    unexpected: u64,
    /// The schedule and events per datagram, to know each seq's send time.
    schedule: Schedule,
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
    schedule: Schedule,
    batch: u64,
    warmup_ns: u64,
    check_counts: bool,
) -> anyhow::Result<Received> {
    let mut r = Received {
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
        latency_then: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
        replies: 0,
        duplicates: 0,
        count_errors: 0,
        count_over: 0,
        unexpected: 0,
        schedule,
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
            if s.count > u64::from(want) {
                self.count_over += 1;
            }
        }
        let d = s.seq / self.batch;
        let scheduled_ns = self.schedule.due_ns(d);
        let took = now_ns.saturating_sub(scheduled_ns).max(1);
        if self.schedule.in_second_phase(d) {
            self.latency_then.saturating_record(took);
        } else if scheduled_ns >= self.warmup_ns {
            self.latency.saturating_record(took);
        }
    }
}
