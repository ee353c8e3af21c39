//! The scanner half of the spill sweep (`state::spill_sweep`): a thread per shard that walks
//! the shard's spill store in key order, a slice at a time at `state.spill_sweep_keys_per_s`,
//! and names the keys whose stored record is idle past the TTL at the shard's reference time
//! (which the shard publishes every cycle: processing time, or its newest event time). The
//! names go to the shard over a bounded ring; the shard checks each against the store's
//! current record before deleting it, so a stale name costs a read, never a wrong deletion.
//! When the ring is full the scanner waits: it never runs ahead of the shard by more than the
//! ring. A pass starts every `ttl / 2` (at least 1 s, at most 10 min), so a key is deleted
//! within about that plus one pass after its TTL ran out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::state::cold::ColdStore;
use crate::state::spill_image;

/// Keys a slice of the scan reads with one iterator.
const SLICE: usize = 1024;
/// Names the ring holds, in cycles' worth of the shard's batch.
const RING_BATCHES: usize = 8;
/// How often the scanner looks whether the shard has published a reference time yet.
const REFERENCE_WAIT: Duration = Duration::from_millis(50);

/// How often a pass starts for a TTL of `ttl_ns`.
pub fn pass_every(ttl_ns: u64) -> Duration {
    Duration::from_nanos(ttl_ns / 2).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// What the scanner has done so far: passes made and records read (tests look at them).
#[derive(Debug, Default)]
pub struct SweepProgress {
    pub passes: AtomicU64,
    pub scanned: AtomicU64,
}

pub struct SpillSweeper {
    names: rtrb::Consumer<u64>,
    reference: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    progress: Arc<SweepProgress>,
    thread: Option<JoinHandle<()>>,
    /// The cycle's names (sized once: `per_cycle`).
    keys: Vec<u64>,
    per_cycle: usize,
}

impl SpillSweeper {
    /// Start the scanner over `store` (records of `words` window words), for TTL `ttl_ns`,
    /// reading `keys_per_s`, the shard taking at most `per_cycle` names a cycle. The thread
    /// starts with the caller's CPU mask (`topology::with_cpus`).
    pub fn start(
        store: Arc<dyn ColdStore>,
        words: usize,
        ttl_ns: u64,
        keys_per_s: u64,
        per_cycle: usize,
        shard: usize,
    ) -> std::io::Result<Self> {
        let (mut sweeper, tx) = Self::fed(per_cycle);
        let scan = Scan {
            store,
            words,
            ttl_ns,
            slice_takes: Duration::from_secs_f64(SLICE as f64 / keys_per_s.max(1) as f64),
            reference: Arc::clone(&sweeper.reference),
            stop: Arc::clone(&sweeper.stop),
            progress: Arc::clone(&sweeper.progress),
            tx,
            shard,
        };
        sweeper.thread = Some(
            std::thread::Builder::new()
                .name(format!("sluice-sweep-{shard}"))
                .spawn(move || scan.run())?,
        );
        Ok(sweeper)
    }

    /// Without a scanner: names come from the returned end of the ring (the deterministic
    /// simulation feeds names of its choosing, stale ones included, at steps of its choosing).
    pub fn fed(per_cycle: usize) -> (Self, rtrb::Producer<u64>) {
        let (tx, names) = rtrb::RingBuffer::new(per_cycle.max(1) * RING_BATCHES);
        let sweeper = Self {
            names,
            reference: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(SweepProgress::default()),
            thread: None,
            keys: Vec::with_capacity(per_cycle),
            per_cycle,
        };
        (sweeper, tx)
    }

    /// The shard's TTL reference time now (each cycle): the scanner judges records by it.
    pub fn publish(&self, reference_ns: u64) {
        self.reference.store(reference_ns, Ordering::Release);
    }

    /// Up to `per_cycle` names taken from the ring (empty when none waits).
    pub fn take(&mut self) -> &[u64] {
        self.keys.clear();
        while self.keys.len() < self.per_cycle {
            match self.names.pop() {
                Ok(k) => self.keys.push(k),
                Err(_) => break,
            }
        }
        &self.keys
    }

    pub fn progress(&self) -> &SweepProgress {
        &self.progress
    }
}

impl Drop for SpillSweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if t.join().is_err() {
                tracing::error!("the spill sweep's thread panicked");
            }
        }
    }
}

struct Scan {
    store: Arc<dyn ColdStore>,
    words: usize,
    ttl_ns: u64,
    slice_takes: Duration,
    reference: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    progress: Arc<SweepProgress>,
    tx: rtrb::Producer<u64>,
    shard: usize,
}

impl Scan {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleep until `until` or the stop (parked, so `Drop`'s unpark ends it at once).
    fn sleep_until(&self, until: Instant) {
        while !self.stopping() {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::park_timeout(until - now);
        }
    }

    fn run(mut self) {
        let every = pass_every(self.ttl_ns);
        let mut words = vec![0u64; self.words];
        let mut idle = Vec::with_capacity(SLICE);
        let mut errors = 0u64;
        while !self.stopping() {
            let started = Instant::now();
            // Nothing is judged before the shard has said what time it is. The thread starts
            // before the shard's first cycle: it looks again shortly, not a pass period later
            // (up to 10 min), so a restored store's idle keys go at start.
            if self.reference.load(Ordering::Acquire) == 0 {
                self.sleep_until(started + REFERENCE_WAIT);
                continue;
            }
            if let Err(e) = self.pass(&mut words, &mut idle) {
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::warn!(
                        shard = self.shard,
                        errors,
                        "spill sweep: a pass stopped early: {e}"
                    );
                }
            }
            self.progress.passes.fetch_add(1, Ordering::Relaxed);
            self.sleep_until(started + every);
        }
    }

    /// One pass over the store, in slices of `SLICE` keys at the configured rate.
    fn pass(
        &mut self,
        words: &mut [u64],
        idle: &mut Vec<u64>,
    ) -> Result<(), crate::state::SpillError> {
        let mut from = Some(0u64);
        while let Some(at) = from {
            if self.stopping() {
                return Ok(());
            }
            let slice_started = Instant::now();
            let reference = self.reference.load(Ordering::Acquire);
            let ttl = self.ttl_ns;
            idle.clear();
            let mut scanned = 0u64;
            from = self.store.scan_from(at, SLICE, &mut |key, image| {
                scanned += 1;
                // A record that does not decode is the shard's to report (its own read
                // refuses it): not named here.
                if spill_image::unpack(key, image, words)
                    .is_some_and(|r| r.idle_past(reference, ttl))
                {
                    idle.push(key);
                }
                Ok(())
            })?;
            self.progress.scanned.fetch_add(scanned, Ordering::Relaxed);
            for &key in idle.iter() {
                // The ring full: the shard has not caught up; wait for room (1 ms naps).
                while self.tx.push(key).is_err() {
                    if self.stopping() {
                        return Ok(());
                    }
                    std::thread::park_timeout(Duration::from_millis(1));
                }
            }
            self.sleep_until(slice_started + self.slice_takes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Record, Spill};

    const SEC: u64 = 1_000_000_000;

    /// On a real RocksDB store: the thread names every record idle past the TTL at the
    /// published reference time and none other, waits for the shard when its ring is full,
    /// and stops when dropped.
    #[test]
    fn the_scanner_names_exactly_the_idle_records() {
        let dir = std::env::temp_dir().join(format!("sluice-sweeper-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spill = Spill::open(&dir, 1 << 20, 1, None).unwrap();
        let mut idle = Vec::new();
        for key in 0..3_000u64 {
            // Every third record idle (last event at 1 s), the others seen at 95 s; one in
            // fifty never had an event applied (not idle whatever its time).
            let mut rec = Record::fresh(key, if key % 3 == 0 { SEC } else { 95 * SEC });
            rec.observations = u64::from(key % 50 != 0);
            if key % 3 == 0 && key % 50 != 0 {
                idle.push(key);
            }
            spill.put(&rec, &[key]).unwrap();
        }
        // A ring of 8 x 4 names: the scanner must wait for this "shard" many times. A TTL of
        // 20 min (a pass every 10 min): the first pass must start once the time is published,
        // not a pass period after the thread found none (which the wait below would not see
        // the end of).
        let ttl = 1_200 * SEC;
        let mut sweeper = SpillSweeper::start(spill.shared(), 1, ttl, 1_000_000, 4, 0).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        sweeper.publish(95 * SEC + ttl);
        let mut named = std::collections::BTreeSet::new();
        let give_up = Instant::now() + Duration::from_secs(60);
        while named.len() < idle.len() && Instant::now() < give_up {
            let keys = sweeper.take();
            assert!(keys.len() <= 4);
            if keys.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
            named.extend(keys.iter().copied());
        }
        let named: Vec<u64> = named.into_iter().collect();
        assert_eq!(named, idle);
        assert!(sweeper.progress().scanned.load(Ordering::Relaxed) >= 3_000);
        drop(sweeper);
        drop(spill);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Before the shard has published a reference time nothing is judged.
    #[test]
    fn nothing_is_named_before_a_reference_time() {
        let dir = std::env::temp_dir().join(format!("sluice-sweeper-0-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spill = Spill::open_memory(&dir, 1, None).unwrap();
        let mut rec = Record::fresh(1, SEC);
        rec.observations = 1;
        spill.put(&rec, &[0]).unwrap();
        let mut sweeper = SpillSweeper::start(spill.shared(), 1, SEC, 1_000_000, 4, 0).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(sweeper.take().is_empty());
        assert_eq!(sweeper.progress().passes.load(Ordering::Relaxed), 0);
        drop(sweeper);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pass_starts_every_half_ttl_within_bounds() {
        assert_eq!(pass_every(0), Duration::from_secs(1));
        assert_eq!(pass_every(10_000_000_000), Duration::from_secs(5));
        assert_eq!(pass_every(u64::MAX), Duration::from_secs(600));
    }
}
