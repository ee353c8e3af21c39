//! The shard's side of checkpointing (`Checkpointer`) and its writer thread.
//!
//! At a cycle boundary the shard *flips* a snapshot (`KeyedState::begin_snapshot`: swap the
//! change lists, flip two bits; no record copied) and hands the writer the spill store's
//! RocksDB checkpoint. Each later cycle copies one slice of records
//! (`checkpoint.copy_slice_records`) until the snapshot has them all and the writer has the
//! spill store; then the writer writes hot.bin and COMMIT, syncs, renames and prunes. The
//! flip, each slice and a wait on a full spill journal are measured. If the writer is still
//! busy with the previous checkpoint when the next is due, that one is skipped (counted), so
//! a slow disk stretches the interval instead of stalling the shard.
//!
//! `Checkpointer::start_stepped` runs the same writer code without its thread: work waits in
//! a queue until the caller runs it (`run_writer`), with a crash or a full disk injected where
//! the caller says — how the deterministic simulation (`crate::sim`) drives it.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::{
    disk, io, list, name, CheckpointError, HotHeader, Manifest, PartitionOffset, HEADER_BYTES,
};
use crate::state::cold::ColdStore;
use crate::state::record::image_bytes;
use crate::state::snapshot::journal_entry_bytes;
use crate::state::{KeyedState, SpillMark};

/// Counters of one shard's checkpointing.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckpointStats {
    pub written: u64,
    /// Of the snapshots taken, how many were full (the rest are incremental).
    pub full: u64,
    pub failed: u64,
    pub skipped_busy: u64,
    pub last_seq: u64,
    /// hot.bin of the last snapshot (records, gone keys, journal).
    pub last_bytes: u64,
    /// The flip: how long the shard stopped to start the last snapshot, and the longest (ns).
    pub last_pause_ns: u64,
    pub max_pause_ns: u64,
    /// Snapshots started (flips), so a reader can tell a new `last_pause_ns` from the old.
    pub flips: u64,
    /// The longest slice of copying one cycle did (ns).
    pub max_step_ns: u64,
    /// Finishing a snapshot in one go (at shutdown, or exactly_once's commit): the longest.
    pub max_finish_ns: u64,
    /// Of the last snapshot: flip to its last record copied (the shard served meanwhile).
    pub last_capture_ns: u64,
    /// Spill journal entries of the last snapshot.
    pub last_journal_entries: u64,
    /// Times the spill journal was full and the shard waited for the writer; the longest wait.
    pub journal_waits: u64,
    pub journal_wait_max_ns: u64,
}

pub(super) struct Job {
    pub tmp: PathBuf,
    pub done: PathBuf,
    pub buffer: Vec<u8>,
    pub journal: Vec<u8>,
    pub manifest: Manifest,
    /// Written and synced, but renamed into place only when the shard says so (`release`).
    pub gated: bool,
}

/// The shard's word on a gated checkpoint: (seq, commit it or drop it).
type Gate = mpsc::Receiver<(u64, bool)>;

/// Writer-thread work.
enum Work {
    /// Once, at start: touch the snapshot and journal buffers, so their pages are in memory
    /// before the first snapshot instead of faulting in on the shard during it.
    Prefault(Vec<u8>, Vec<u8>),
    /// At a flip: the spill store's RocksDB checkpoint into `tmp/spill` (an empty directory
    /// without a store), then `mark` set.
    Spill {
        tmp: PathBuf,
        db: Option<Arc<dyn ColdStore>>,
        mark: Arc<SpillMark>,
        /// Bytes the checkpoint may write besides the store's memtables (see `room_for`).
        reserve: u64,
    },
    Write(Job),
}

/// The writer's answer: the buffers back, and (for a checkpoint) whether it committed.
struct Done {
    buffer: Vec<u8>,
    journal: Vec<u8>,
    /// None for a prefault.
    result: Option<Result<u64, String>>,
}

/// The snapshot buffer a shard needs: every hot record's image, or (incremental) as many
/// plus the bounded list of keys that left the table (`KeyedState::track_changes`).
/// Records copied between two looks at the clock in a time-bounded slice.
const SLICE_CHUNK: usize = 16;

pub fn buffer_bytes(hot_capacity: usize, words: usize) -> usize {
    // Gone (key, source) pairs, and a full snapshot's changed keys.
    HEADER_BYTES
        + hot_capacity * image_bytes(words)
        + crate::state::changes_bound(hot_capacity) * (16 + 8)
}

/// The spill journal's buffer: `records` entries.
pub fn journal_bytes(records: usize, words: usize) -> usize {
    records * journal_entry_bytes(words)
}

/// What the shard has consumed, recorded with a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Rises with every input record taken (applied or skipped): a change even when no
    /// state changed.
    pub position: u64,
    pub offsets: Vec<PartitionOffset>,
}

/// Rises with every change a checkpoint must capture: the state's own changes and every input
/// record taken (a skipped record changes no state but moves an offset).
fn stamp(state: &KeyedState, input: &Input) -> u64 {
    state.stats.changes().wrapping_add(input.position)
}

/// How one shard checkpoints.
pub struct CheckpointSpec {
    /// `state.dir/shard-N/checkpoints`.
    pub root: PathBuf,
    pub shard: usize,
    /// `Config::state_layout`: what a restore must match.
    pub layout: String,
    pub interval_ns: u64,
    /// Full checkpoints kept (with the incremental ones after them).
    pub keep: usize,
    /// Every this many checkpoints one is full.
    pub full_every: usize,
    /// Bound of a snapshot: every hot record's image (allocated and touched at start).
    pub buffer_bytes: usize,
    /// Records copied per cycle while a snapshot runs, and at most this long (0: no bound).
    pub slice_records: usize,
    pub slice_ns: u64,
    /// Spill journal entries (see `state::snapshot`), and the window words of a record.
    pub journal_records: usize,
    pub words: usize,
    /// Sequence number of the first checkpoint (after the restored one).
    pub next_seq: u64,
    /// The checkpoint the state was restored from (its changes are tracked from there on):
    /// what the first checkpoint's change set leads on from.
    pub restored: Option<u64>,
    /// Each checkpoint taken by `tick_with` is written but committed (renamed into place) only
    /// when the caller `release`s it: at_least_once Kafka, whose Scores produced before the
    /// flip must be acknowledged first, without the shard waiting for them.
    pub gated: bool,
}

/// A snapshot between its flip and its hand-over to the writer.
struct Running {
    seq: u64,
    manifest: Manifest,
    /// The spill store's checkpoint, for the writer (sent at the first slice).
    spill: Option<Work>,
    flipped: Instant,
    tmp: PathBuf,
    done: PathBuf,
}

/// The shard's side of checkpointing.
pub struct Checkpointer {
    root: PathBuf,
    shard: usize,
    layout: String,
    interval_ns: u64,
    next_due_ns: u64,
    seq: u64,
    words: usize,
    /// The snapshot and journal buffers: lent to the state while a snapshot runs, away at the
    /// writer while a checkpoint is written.
    buffers: Option<(Vec<u8>, Vec<u8>)>,
    link: Link,
    /// `stamp` at the last flip (None: take the next one regardless).
    snapshot_changes: Option<u64>,
    /// The last snapshot taken (None: the next must be full: at start, or after a failure).
    parent: Option<u64>,
    /// What the next snapshot's change set leads on from: the last flip, or at start the
    /// restored checkpoint (None after a failure: its changes are lost from the lists).
    prev_flip: Option<u64>,
    deltas_since_full: usize,
    /// Every this many checkpoints one is full (bounds the chain a restore reads).
    full_every: usize,
    slice: usize,
    slice_ns: u64,
    journal_max: u64,
    mark: Arc<SpillMark>,
    running: Option<Running>,
    /// Why the last snapshot failed before reaching the writer.
    failure: Option<String>,
    /// The last snapshot's outcome, until `take_outcome` (a caller that does not wait).
    outcome: Option<Result<u64, String>>,
    /// The largest hot.bin this shard can ever write (snapshot and journal buffers).
    reserve: u64,
    /// Failures since the last commit (logs are rate-limited by it).
    failing: u64,
    /// See `CheckpointSpec::gated`; the channel carries `release`.
    gated: bool,
    gate: mpsc::Sender<(u64, bool)>,
    /// The writer's fault switch (`fault_switch`).
    fail_next: Arc<std::sync::atomic::AtomicBool>,
    pub stats: CheckpointStats,
}

impl Checkpointer {
    /// Start the shard's writer thread and hand it the buffers to touch.
    pub fn start(spec: CheckpointSpec) -> Result<Self, CheckpointError> {
        Self::with_link(spec, false)
    }

    /// A checkpointer whose writer work waits in a queue until `run_writer` does it, on the
    /// caller's thread: the deterministic simulation decides when the writer makes progress
    /// and where it crashes. Gated, a checkpoint waits in the queue until it is released.
    pub fn start_stepped(spec: CheckpointSpec) -> Result<Self, CheckpointError> {
        Self::with_link(spec, true)
    }

    fn with_link(spec: CheckpointSpec, stepped: bool) -> Result<Self, CheckpointError> {
        let CheckpointSpec {
            root,
            shard,
            layout,
            interval_ns,
            keep,
            full_every,
            buffer_bytes,
            slice_records,
            slice_ns,
            journal_records,
            words,
            next_seq,
            restored,
            gated,
        } = spec;
        disk::create_dir_all_synced(&root).map_err(io(&root))?;
        let (gate, gate_rx) = mpsc::channel::<(u64, bool)>();
        let fail_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let core = WriterCore {
            shard,
            root: root.clone(),
            keep,
            failing: 0,
            fail_next: fail_next.clone(),
        };
        let mut link = if stepped {
            Link::Stepped(Box::new(Stepped {
                queue: std::collections::VecDeque::new(),
                done: std::collections::VecDeque::new(),
                core,
                gate: gate_rx,
                released: std::collections::BTreeMap::new(),
            }))
        } else {
            // A flip queues a Spill and later a Write: never more than two jobs.
            let (jobs, rx) = mpsc::sync_channel::<Work>(2);
            let (tx, results) = mpsc::sync_channel::<Done>(1);
            std::thread::Builder::new()
                .name(format!("sluice-ckpt-{shard}"))
                .spawn(move || writer(rx, tx, core, &gate_rx))
                .map_err(io(&root))?;
            Link::Thread { jobs, results }
        };
        // The buffers are away being touched until the writer hands them back; a checkpoint
        // due before then is skipped (counted) like one due while the writer is busy.
        let prefault = Work::Prefault(
            Vec::with_capacity(buffer_bytes),
            Vec::with_capacity(journal_bytes(journal_records, words)),
        );
        if link.send(prefault).is_some() {
            return Err(CheckpointError::Io {
                path: root.clone(),
                source: std::io::Error::other("checkpoint writer thread exited at start"),
            });
        }
        Ok(Self {
            root,
            shard,
            layout,
            interval_ns,
            next_due_ns: 0,
            seq: next_seq,
            words,
            buffers: None,
            link,
            snapshot_changes: None,
            parent: None,
            prev_flip: restored,
            deltas_since_full: 0,
            full_every: full_every.max(1),
            slice: slice_records.max(1),
            slice_ns,
            journal_max: journal_records as u64,
            mark: Arc::new(SpillMark::default()),
            running: None,
            failure: None,
            outcome: None,
            reserve: (buffer_bytes + journal_bytes(journal_records, words)) as u64,
            failing: 0,
            gated,
            gate,
            fail_next,
            stats: CheckpointStats::default(),
        })
    }

    /// The switch that makes the writer's next write fail as on a full disk (the admin
    /// socket's `fault checkpoint`, for fault tests; the stepped writer takes its faults from
    /// `run_writer` instead).
    pub fn fault_switch(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.fail_next.clone()
    }

    /// Stepped (`start_stepped`): do the writer's next queued piece of work, with `fault`
    /// injected into it. Does nothing for a threaded checkpointer.
    pub fn run_writer(&mut self, fault: Option<WriterFault>) -> WriterRun {
        match &mut self.link {
            Link::Thread { .. } => WriterRun::Idle,
            Link::Stepped(st) => st.run_one(fault),
        }
    }

    /// Stepped: writer work waiting.
    pub fn writer_pending(&self) -> usize {
        match &self.link {
            Link::Thread { .. } => 0,
            Link::Stepped(st) => st.queue.len(),
        }
    }

    /// Wait until the writer has touched the buffers (start-up: so the first snapshot's
    /// pages do not fault in while the shard serves).
    pub fn wait_ready(&mut self) {
        if self.buffers.is_none() && self.running.is_none() {
            self.collect(true);
        }
    }

    /// A snapshot is being copied: the shard should not park.
    pub fn capturing(&self) -> bool {
        self.running.is_some()
    }

    /// Collect the writer's answer, if any (between cycles).
    fn collect(&mut self, wait: bool) -> Option<Result<u64, String>> {
        let d = self.link.recv(wait)?;
        self.buffers = Some((d.buffer, d.journal));
        let result = d.result?;
        self.outcome = Some(result.clone());
        match &result {
            Ok(seq) => {
                self.stats.written += 1;
                self.stats.last_seq = *seq;
                if self.failing > 0 {
                    tracing::warn!(
                        shard = self.shard,
                        seq,
                        "checkpoints resumed after {} failed",
                        self.failing
                    );
                    self.failing = 0;
                }
            }
            Err(_) => self.failed(),
        }
        Some(result)
    }

    /// A snapshot was lost: its changes are not on disk, so the next must be full.
    fn failed(&mut self) {
        self.stats.failed += 1;
        self.failing += 1;
        self.snapshot_changes = None;
        self.parent = None;
        self.prev_flip = None;
    }

    /// Between cycles: go on with the running snapshot, or flip one if due and the state
    /// changed since the last one (an idle shard writes nothing). `max_event_ns` is the
    /// shard's newest event time.
    pub fn tick(&mut self, now_ns: u64, state: &mut KeyedState, max_event_ns: u64) {
        let _ = self.tick_with(now_ns, state, max_event_ns, &Input::default());
    }

    /// Is a snapshot due (interval passed, something changed since the last one)? `input` is
    /// what the shard has consumed: its position counts as a change even when no state did
    /// (a skipped Kafka record still moves the offset).
    pub fn due(&self, now_ns: u64, state: &KeyedState, input: &Input) -> bool {
        now_ns >= self.next_due_ns && self.snapshot_changes != Some(stamp(state, input))
    }

    /// `tick` for a shard with an input position to record (Kafka offsets). Returns the
    /// sequence number of the snapshot flipped now, if one was.
    pub fn tick_with(
        &mut self,
        now_ns: u64,
        state: &mut KeyedState,
        max_event_ns: u64,
        input: &Input,
    ) -> Option<u64> {
        self.collect(false);
        if self.running.is_some() {
            self.advance(state, false);
            return None;
        }
        if !self.due(now_ns, state, input) {
            return None;
        }
        self.next_due_ns = now_ns.saturating_add(self.interval_ns);
        if self.buffers.is_none() {
            self.stats.skipped_busy += 1;
            return None;
        }
        self.flip(state, max_event_ns, input)
    }

    /// Between cycles, for a shard whose input position a checkpoint records (Kafka): copy the
    /// running snapshot's next slice (its input is in it already: None), or, when one is due,
    /// the input to flip it with (`input(true)`, with the offsets; `input(false)`, the
    /// position alone, tells whether anything changed). The delivery sequences decide then
    /// whether and how to flip.
    pub fn due_input(
        &mut self,
        now_ns: u64,
        state: &mut KeyedState,
        max_event_ns: u64,
        input: impl Fn(bool) -> Input,
    ) -> Option<Input> {
        if self.capturing() {
            self.tick_with(now_ns, state, max_event_ns, &Input::default());
            return None;
        }
        self.due(now_ns, state, &input(false)).then(|| input(true))
    }

    /// Postpone the next snapshot by one interval (the caller could not take it now).
    pub fn postpone(&mut self, now_ns: u64) {
        self.next_due_ns = now_ns.saturating_add(self.interval_ns);
        self.stats.skipped_busy += 1;
    }

    /// Between cycles, without flipping a new snapshot: copy the running one's next slice and
    /// collect the writer's answer (see `take_outcome`).
    pub fn step(&mut self, state: &mut KeyedState) {
        self.collect(false);
        if self.running.is_some() {
            self.advance(state, false);
        }
    }

    /// How the last snapshot ended, once: Ok(seq) when it is committed on disk, or why it
    /// failed. For exactly_once, which commits its Kafka transaction only after that and must
    /// not wait on the shard for it.
    pub fn take_outcome(&mut self) -> Option<Result<u64, String>> {
        self.outcome.take()
    }

    /// Finish the running snapshot now and wait until the writer has it on disk; whether it
    /// committed (its seq) or failed.
    pub fn wait_written(&mut self, state: &mut KeyedState) -> Result<u64, String> {
        let written = self.wait_written_inner(state);
        // Answered here: not again through `take_outcome`.
        self.outcome = None;
        written
    }

    fn wait_written_inner(&mut self, state: &mut KeyedState) -> Result<u64, String> {
        if self.running.is_some() {
            self.advance(state, true);
        }
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        if self.buffers.is_some() {
            return Err("no checkpoint was being written".into());
        }
        match self.collect(true) {
            Some(result) => result,
            None if self.buffers.is_some() => Err("the writer answered a prefault".into()),
            None => Err("the checkpoint writer thread is gone".into()),
        }
    }

    /// A gated checkpoint (`CheckpointSpec::gated`): commit it (rename it into place) or drop
    /// it. Never waits; the writer acts on it once it has the checkpoint written (a word for
    /// a checkpoint that failed before that is ignored).
    pub fn release(&self, seq: u64, commit: bool) {
        // The writer is gone only when this side is: nothing left to release.
        let _ = self.gate.send((seq, commit));
    }

    /// Take the next snapshot even if the state has not changed since the last one.
    /// The sequence number the next flip takes (it moves at every flip).
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    pub fn force_next(&mut self) {
        self.snapshot_changes = None;
    }

    /// A last checkpoint at shutdown (unless the newest already holds this state), waited for.
    pub fn finish(&mut self, state: &mut KeyedState, max_event_ns: u64) {
        self.finish_with(state, max_event_ns, &Input::default());
    }

    /// `finish` for a shard with an input position (Kafka offsets). Returns the seq of the
    /// last checkpoint if it was written now and committed.
    pub fn finish_with(
        &mut self,
        state: &mut KeyedState,
        max_event_ns: u64,
        input: &Input,
    ) -> Option<u64> {
        // A failure is counted and logged by the writer; a shard goes on without its words.
        self.finish_saying(state, max_event_ns, input)
            .ok()
            .flatten()
    }

    /// `finish_with` that says why a checkpoint was not written (an offline writer, the
    /// rescale, has no log reader to point at): Ok(None) when nothing changed since the last.
    pub fn finish_saying(
        &mut self,
        state: &mut KeyedState,
        max_event_ns: u64,
        input: &Input,
    ) -> Result<Option<u64>, String> {
        // Waited for here, so never gated: the caller has what it waits for (at_least_once:
        // every Score acknowledged) before it asks.
        let gated = std::mem::replace(&mut self.gated, false);
        if self.running.is_some() {
            self.advance(state, true);
        }
        if self.buffers.is_none() {
            self.collect(true);
        }
        let written = if self.snapshot_changes != Some(stamp(state, input)) {
            match self.flip(state, max_event_ns, input) {
                Some(_) => self.wait_written(state).map(Some),
                None => Err("the writer still held the previous checkpoint's buffers".into()),
            }
        } else {
            Ok(None)
        };
        self.gated = gated;
        written
    }

    /// One cycle's slice of copying: up to `slice` records, in chunks, until `slice_ns` has
    /// passed since `started`. Measured before the time bound: 128 records took p99 64-90 µs
    /// of a cycle in an incremental snapshot (keys looked up all over the table) against
    /// 13-16 µs in a full one's slot scan.
    fn copy_slice(&self, state: &mut KeyedState, started: Instant) -> bool {
        if self.slice_ns == 0 {
            return state.snapshot_step(self.slice);
        }
        let mut left = self.slice;
        loop {
            let n = left.min(SLICE_CHUNK);
            if state.snapshot_step(n) {
                return true;
            }
            left -= n;
            if left == 0 || started.elapsed().as_nanos() as u64 >= self.slice_ns {
                return false;
            }
        }
    }

    /// The flip (see `state::snapshot`): microseconds, whatever the state's size.
    fn flip(&mut self, state: &mut KeyedState, max_event_ns: u64, input: &Input) -> Option<u64> {
        let started = Instant::now();
        let (mut buf, journal) = self.buffers.take()?;
        self.failure = None;
        self.outcome = None;
        let full = self.parent.is_none()
            || !state.changes_complete()
            || self.deltas_since_full + 1 >= self.full_every;
        // What this snapshot's change set leads on from: the previous flip, when the change
        // lists hold everything since (a changelog then needs only them, full or not).
        let since = if state.changes_complete() {
            self.prev_flip.unwrap_or(0)
        } else {
            0
        };
        self.snapshot_changes = Some(stamp(state, input));
        let seq = self.seq;
        self.seq += 1;
        // The chain: an incremental snapshot's parent is an earlier, committed one.
        crate::invariant!(
            full || self.parent.is_some_and(|p| p < seq),
            "incremental checkpoint {seq} without an earlier parent ({:?})",
            self.parent
        );
        buf.clear();
        buf.resize(HEADER_BYTES, 0);
        let manifest = Manifest {
            seq,
            shard: self.shard,
            layout: self.layout.clone(),
            parent: if full { 0 } else { self.parent.unwrap_or(0) },
            since,
            // The counts are filled in when the snapshot ends, the checksum by the writer.
            hot_records: 0,
            gone: 0,
            spilled: state.spilled_len(),
            hot_bytes: 0,
            hot_crc: 0,
            max_event_ns,
            observations_applied: state.stats.observations_applied,
            created_unix_ms: crate::clock::realtime_ns() / 1_000_000,
            kafka_offsets: input.offsets.clone(),
        };
        self.mark.reset();
        state.begin_snapshot(full, buf, journal, self.journal_max, Arc::clone(&self.mark));
        let tmp = self.root.join(format!("{}.tmp", name(seq)));
        // Sent with the first slice, not here: waking the writer is a syscall (and on a
        // small machine the woken thread may take this CPU), the biggest part of the flip.
        let spill = Work::Spill {
            tmp: tmp.clone(),
            db: state.spill().map(|s| s.shared()),
            mark: Arc::clone(&self.mark),
            reserve: self.reserve_now(state),
        };
        self.parent = Some(seq);
        self.prev_flip = Some(seq);
        self.deltas_since_full = if full { 0 } else { self.deltas_since_full + 1 };
        if full {
            self.stats.full += 1;
        }
        self.running = Some(Running {
            seq,
            manifest,
            spill: Some(spill),
            flipped: started,
            done: self.root.join(name(seq)),
            tmp,
        });
        let pause = started.elapsed().as_nanos() as u64;
        self.stats.last_pause_ns = pause;
        self.stats.flips += 1;
        self.stats.max_pause_ns = self.stats.max_pause_ns.max(pause);
        Some(seq)
    }

    /// The largest hot.bin this snapshot can write: every hot record (a full snapshot's, or
    /// an incremental one's bound), as many keys gone, a full spill journal; at most the
    /// buffers. A free-space guard, not a prediction: a million-slot table holding a
    /// thousand keys must not need the whole table's room.
    fn reserve_now(&self, state: &KeyedState) -> u64 {
        let hot = state.hot_len() as u64;
        let bound = HEADER_BYTES as u64
            + hot * (image_bytes(self.words) as u64 + 8)
            + self.journal_max * journal_entry_bytes(self.words) as u64;
        bound.min(self.reserve)
    }

    /// Copy the next slice of the running snapshot (`all`: the rest of it, and wait for the
    /// spill store's checkpoint); once it is whole, hand it to the writer.
    fn advance(&mut self, state: &mut KeyedState, all: bool) {
        let Some(run) = &mut self.running else {
            return;
        };
        let started = Instant::now();
        if let Some(spill) = run.spill.take() {
            if self.link.send(spill).is_some() {
                // The writer thread is gone (it only exits when this side does): the snapshot
                // runs to its end and fails there.
                self.mark
                    .fail("the checkpoint writer thread is gone".into());
            }
        }
        let copied = if all {
            state.snapshot_step(usize::MAX)
        } else {
            self.copy_slice(state, started)
        };
        if copied && all && !self.mark.is_done() {
            if let Link::Stepped(st) = &mut self.link {
                // Nothing else would run the queued spill checkpoint.
                st.run_until(|| self.mark.is_done());
            }
            self.mark.wait();
        }
        let ns = started.elapsed().as_nanos() as u64;
        if all {
            self.stats.max_finish_ns = self.stats.max_finish_ns.max(ns);
        } else {
            self.stats.max_step_ns = self.stats.max_step_ns.max(ns);
        }
        if !copied || !self.mark.is_done() {
            return;
        }
        let (Some(run), Some(taken)) = (self.running.take(), state.end_snapshot()) else {
            return;
        };
        self.stats.last_capture_ns = run.flipped.elapsed().as_nanos() as u64;
        (self.stats.journal_waits, self.stats.journal_wait_max_ns) = state.journal_waits();
        self.stats.last_journal_entries = taken.journal_entries;
        let mut out = taken.out;
        if taken.overflowed || self.mark.failed() || out.len() < HEADER_BYTES {
            // Failure path only: the reason's words are allocated here.
            let why = if self.mark.failed() {
                match self.mark.failure() {
                    w if w.is_empty() => "the spill store's checkpoint failed".to_owned(),
                    w => format!("the spill store's checkpoint failed: {w}"),
                }
            } else {
                "the snapshot outgrew its buffer".to_owned()
            };
            // A full disk fails every interval: the 1st, 2nd, 4th, ... of a streak are logged.
            if (self.failing + 1).is_power_of_two() {
                tracing::error!(
                    shard = self.shard,
                    failed_in_a_row = self.failing + 1,
                    "checkpoint {}: {why}",
                    run.seq
                );
            }
            // Failure path only: the writer removed its directory if it failed itself.
            let _ = disk::remove_dir_all(&run.tmp);
            self.failure = Some(why.clone());
            self.outcome = Some(Err(why));
            self.buffers = Some((out, taken.journal));
            self.failed();
            return;
        }
        let header = HotHeader {
            format: super::HOT_FORMAT,
            words: self.words as u32,
            records: taken.records,
            gone: taken.gone,
            journal: taken.journal_entries,
            changed: taken.changed,
        }
        .encode();
        // out holds at least HEADER_BYTES (checked above).
        if let Some(h) = out.get_mut(..HEADER_BYTES) {
            h.copy_from_slice(&header);
        }
        let manifest = Manifest {
            hot_records: taken.records,
            gone: taken.gone,
            hot_bytes: (out.len() + taken.journal.len()) as u64,
            ..run.manifest
        };
        self.stats.last_bytes = manifest.hot_bytes;
        let job = Job {
            tmp: run.tmp,
            done: run.done,
            buffer: out,
            journal: taken.journal,
            manifest,
            gated: self.gated,
        };
        if let Some(Work::Write(job)) = self.link.send(Work::Write(job)) {
            self.failure = Some("the checkpoint writer thread is gone".into());
            self.outcome = Some(Err("the checkpoint writer thread is gone".into()));
            self.buffers = Some((job.buffer, job.journal));
            self.failed();
        }
    }
}

/// Where the writer's work goes: its thread, or (simulation) a queue the caller runs.
enum Link {
    Thread {
        jobs: mpsc::SyncSender<Work>,
        results: mpsc::Receiver<Done>,
    },
    Stepped(Box<Stepped>),
}

impl Link {
    /// Hand over work: given back if the writer is gone.
    fn send(&mut self, work: Work) -> Option<Work> {
        match self {
            Link::Thread { jobs, .. } => jobs.send(work).err().map(|mpsc::SendError(w)| w),
            Link::Stepped(st) => {
                st.queue.push_back(work);
                None
            }
        }
    }

    /// The writer's next answer; `wait`: block for it (stepped: run the queue until there is
    /// one).
    fn recv(&mut self, wait: bool) -> Option<Done> {
        match self {
            Link::Thread { results, .. } if wait => results.recv().ok(),
            Link::Thread { results, .. } => results.try_recv().ok(),
            Link::Stepped(st) => {
                if wait && st.done.is_empty() {
                    st.run_until(|| false);
                }
                st.done.pop_front()
            }
        }
    }
}

/// A fault for the stepped writer's next piece of work (simulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterFault {
    /// The disk is full: the spill store's checkpoint or the write fails (cleanly, as the
    /// free-space check or a write would).
    NoSpace,
    /// The process dies during the write, at this point; nothing after it happens.
    Crash(CrashPoint),
}

/// Where in writing a checkpoint a crash lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// hot.bin is cut after this many bytes (a torn write: the page cache never reached the
    /// disk), no COMMIT.
    TornHotBin(usize),
    /// hot.bin is whole, COMMIT never written.
    BeforeCommit,
    /// COMMIT is written and synced; the rename into place never happened.
    BeforeRename,
    /// Renamed and committed; older checkpoints not yet pruned.
    BeforePrune,
}

/// What `run_writer` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterRun {
    /// Nothing was queued.
    Idle,
    /// The next piece is a gated checkpoint not yet released (`Checkpointer::release`).
    Held,
    Ran,
    /// The injected crash happened: the caller must drop this process's state now.
    Crashed,
}

/// The stepped writer: queued work, answers, and the writer's own state.
struct Stepped {
    queue: std::collections::VecDeque<Work>,
    done: std::collections::VecDeque<Done>,
    core: WriterCore,
    /// The shard's words on gated checkpoints (`release`), and those read but not yet used.
    gate: Gate,
    released: std::collections::BTreeMap<u64, bool>,
}

impl Stepped {
    fn run_one(&mut self, fault: Option<WriterFault>) -> WriterRun {
        // A gated checkpoint waits (unwritten) for the shard's word; the thread writes it
        // first and then waits, which a crash leaves as the same: nothing renamed into place.
        let mut word = None;
        if let Some(Work::Write(job)) = self.queue.front() {
            if job.gated {
                while let Ok((seq, commit)) = self.gate.try_recv() {
                    self.released.insert(seq, commit);
                }
                let seq = job.manifest.seq;
                let Some(commit) = self.released.remove(&seq) else {
                    return WriterRun::Held;
                };
                // Words for older checkpoints (failed before this point) are never needed.
                self.released.retain(|&s, _| s > seq);
                let (tx, rx) = mpsc::channel();
                let _ = tx.send((seq, commit));
                word = Some(rx);
            }
        }
        let Some(work) = self.queue.pop_front() else {
            return WriterRun::Idle;
        };
        match self.core.run(work, word.as_ref(), fault) {
            Step::Answer(d) => self.done.push_back(d),
            Step::Quiet => {}
            Step::Crashed => return WriterRun::Crashed,
        }
        WriterRun::Ran
    }

    /// Run queued work until `enough` or none is left.
    fn run_until(&mut self, enough: impl Fn() -> bool) {
        while !enough() && self.run_one(None) == WriterRun::Ran {}
    }
}

/// What one piece of writer work came to.
enum Step {
    Answer(Done),
    /// A spill checkpoint: answered through the mark.
    Quiet,
    Crashed,
}

/// The writer's side: one job at a time.
struct WriterCore {
    shard: usize,
    root: PathBuf,
    keep: usize,
    /// Failures in a row, for rate-limited logging.
    failing: u64,
    /// Fault injection (`fault checkpoint SHARD` on the admin socket): the next write fails as
    /// on a full disk.
    fail_next: Arc<std::sync::atomic::AtomicBool>,
}

impl WriterCore {
    fn log_failure(&mut self, what: &dyn std::fmt::Display) {
        self.failing += 1;
        if self.failing.is_power_of_two() {
            tracing::error!(shard = self.shard, failed_in_a_row = self.failing, "{what}");
        }
    }

    fn run(&mut self, work: Work, gate: Option<&Gate>, fault: Option<WriterFault>) -> Step {
        let no_space = || Err("no space left on device (injected)".to_owned());
        match work {
            Work::Prefault(mut buffer, mut journal) => {
                buffer.resize(buffer.capacity(), 0);
                journal.resize(journal.capacity(), 0);
                Step::Answer(Done {
                    buffer,
                    journal,
                    result: None,
                })
            }
            Work::Spill {
                tmp,
                db,
                mark,
                reserve,
            } => {
                let dir = tmp.join("spill");
                let result = if fault == Some(WriterFault::NoSpace) {
                    no_space()
                } else {
                    room_for(&self.root, db.as_deref(), reserve)
                        .and_then(|()| disk::create_dir_all(&tmp).map_err(|e| e.to_string()))
                        .and_then(|()| match &db {
                            Some(db) => db.checkpoint(&dir).map_err(|e| e.to_string()),
                            None => disk::create_dir_all(&dir).map_err(|e| e.to_string()),
                        })
                };
                drop(db);
                if let Err(e) = &result {
                    self.log_failure(&format_args!(
                        "spill store checkpoint into {}: {e}",
                        dir.display()
                    ));
                    let _ = disk::remove_dir_all(&tmp);
                }
                match &result {
                    Ok(()) => mark.set(false),
                    Err(e) => mark.fail(e.clone()),
                }
                Step::Quiet
            }
            Work::Write(job) => {
                let crash = match fault {
                    Some(WriterFault::Crash(at)) => Some(at),
                    _ => None,
                };
                let result = if fault == Some(WriterFault::NoSpace) {
                    no_space()
                } else {
                    match write_staged(&job, &self.root, self.keep, gate, crash) {
                        Ok(Written::Crashed) => return Step::Crashed,
                        Ok(Written::Done) => Ok(()),
                        Err(e) => Err(e.to_string()),
                    }
                };
                match &result {
                    Err(e) => {
                        // Else the partial directory would wait for the next start.
                        let _ = disk::remove_dir_all(&job.tmp);
                        self.log_failure(&format_args!(
                            "checkpoint {} failed: {e}",
                            job.manifest.seq
                        ));
                    }
                    Ok(()) => self.failing = 0,
                }
                Step::Answer(Done {
                    buffer: job.buffer,
                    journal: job.journal,
                    result: Some(result.map(|_| job.manifest.seq)),
                })
            }
        }
    }
}

/// The writer thread: one job at a time, until the shard's side is dropped.
fn writer(rx: mpsc::Receiver<Work>, tx: mpsc::SyncSender<Done>, mut core: WriterCore, gate: &Gate) {
    for work in rx {
        let injected = matches!(work, Work::Write(_))
            && core
                .fail_next
                .swap(false, std::sync::atomic::Ordering::SeqCst);
        let fault = injected.then_some(WriterFault::NoSpace);
        match core.run(work, Some(gate), fault) {
            Step::Answer(done) => {
                if tx.send(done).is_err() {
                    return;
                }
            }
            Step::Quiet | Step::Crashed => {}
        }
    }
}

/// The most a full checkpoint of `state` can write: its hot records' images (what
/// `reserve_now` bounds a snapshot by, without the spill journal a full one does not fill),
/// what flushing the spill store's memtables writes, and `room_for`'s MiB. For a caller that
/// writes several at once (the rescale) and must know before the first.
pub fn full_checkpoint_bound(state: &KeyedState) -> u64 {
    let words = state.plan().words();
    let hot = state.hot_len() as u64;
    let memtables = state.spill().map_or(0, |s| s.shared().unflushed_bytes());
    HEADER_BYTES as u64 + hot * (image_bytes(words) as u64 + 8) + memtables + (1 << 20)
}

/// Bytes free to an unprivileged writer on `path`'s filesystem.
pub fn free_bytes(path: &Path) -> Result<u64, String> {
    let fs =
        nix::sys::statvfs::statvfs(path).map_err(|e| format!("statvfs {}: {e}", path.display()))?;
    Ok(fs.blocks_available().saturating_mul(fs.fragment_size()))
}

/// Whether `root`'s filesystem has room for a checkpoint: `reserve` (the largest hot.bin) plus
/// what flushing the spill store's memtables writes. Checked before the RocksDB checkpoint,
/// because a flush that runs out of space puts the store in a background-error state that
/// stops its writes (spilling) until RocksDB recovers; a checkpoint refused here fails
/// cleanly (counted, the next one full) and the shard goes on.
fn room_for(root: &Path, db: Option<&dyn ColdStore>, reserve: u64) -> Result<(), String> {
    let memtables = db.map_or(0, |db| db.unflushed_bytes());
    let need = reserve.saturating_add(memtables).saturating_add(1 << 20);
    let free = free_bytes(root)?;
    if free < need {
        return Err(format!(
            "not started: {} has {free} bytes free, a checkpoint may need {need} (hot.bin bound + the spill store's memtables + 1 MiB)",
            root.display()
        ));
    }
    Ok(())
}

/// Write `parts` one after another into a new file at `path` and sync it.
fn sync_file(path: &Path, parts: &[&[u8]]) -> Result<(), CheckpointError> {
    disk::write_synced(path, parts).map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<(), CheckpointError> {
    disk::sync_dir(path).map_err(io(path))
}

#[cfg(test)]
pub(super) fn write_job(
    job: &Job,
    root: &Path,
    keep: usize,
    gate: Option<&Gate>,
) -> Result<(), CheckpointError> {
    write_staged(job, root, keep, gate, None).map(|_| ())
}

/// How a write ended (an injected crash stops it where it lands).
enum Written {
    Done,
    Crashed,
}

fn write_staged(
    job: &Job,
    root: &Path,
    keep: usize,
    gate: Option<&Gate>,
    crash: Option<CrashPoint>,
) -> Result<Written, CheckpointError> {
    disk::create_dir_all(&job.tmp).map_err(io(&job.tmp))?;
    let hot = job.tmp.join("hot.bin");
    if let Some(CrashPoint::TornHotBin(n)) = crash {
        let whole = [job.buffer.as_slice(), job.journal.as_slice()].concat();
        sync_file(&hot, &[whole.get(..n.min(whole.len())).unwrap_or(&[])])?;
        return Ok(Written::Crashed);
    }
    sync_file(&hot, &[&job.buffer, &job.journal])?;
    if crash == Some(CrashPoint::BeforeCommit) {
        return Ok(Written::Crashed);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&job.buffer);
    crc.update(&job.journal);
    let manifest = Manifest {
        hot_crc: crc.finalize(),
        ..job.manifest.clone()
    };
    sync_file(&job.tmp.join("COMMIT"), &[manifest.render().as_bytes()])?;
    sync_dir(&job.tmp)?;
    if crash == Some(CrashPoint::BeforeRename) {
        return Ok(Written::Crashed);
    }
    if job.gated {
        wait_for_release(gate, job.manifest.seq, &job.tmp)?;
    }
    disk::rename(&job.tmp, &job.done).map_err(io(&job.done))?;
    sync_dir(root)?;
    if crash == Some(CrashPoint::BeforePrune) {
        return Ok(Written::Crashed);
    }
    // Only a new full checkpoint moves the cutoff (the keep-th newest full one).
    if job.manifest.parent == 0 {
        prune(root, keep)?;
    }
    Ok(Written::Done)
}

/// Block (the writer thread) until the shard commits or drops checkpoint `seq`; words for
/// older checkpoints, which failed before reaching this point, are skipped.
fn wait_for_release(gate: Option<&Gate>, seq: u64, tmp: &Path) -> Result<(), CheckpointError> {
    let withheld = |why: &str| CheckpointError::Io {
        path: tmp.to_owned(),
        source: std::io::Error::other(format!("not committed: {why}")),
    };
    let Some(gate) = gate else {
        return Err(withheld("gated, but nothing can release it"));
    };
    loop {
        match gate.recv() {
            Ok((s, commit)) if s == seq => {
                return if commit {
                    Ok(())
                } else {
                    Err(withheld(
                        "Score records produced before it were not acknowledged in time",
                    ))
                };
            }
            Ok(_) => {}
            Err(_) => return Err(withheld("the shard is gone")),
        }
    }
}

/// Keep the newest `keep` full checkpoints and every checkpoint after the oldest of them (the
/// incremental ones build on it); delete the rest.
fn prune(root: &Path, keep: usize) -> Result<(), CheckpointError> {
    let done = list(root)?.done;
    let mut fulls = 0;
    let mut cutoff = None;
    for (seq, path) in &done {
        let full = std::fs::read_to_string(path.join("COMMIT"))
            .ok()
            .and_then(|t| Manifest::parse(&t).ok())
            .is_some_and(|m| m.parent == 0);
        if full {
            fulls += 1;
            if fulls == keep {
                cutoff = Some(*seq);
                break;
            }
        }
    }
    let Some(cutoff) = cutoff else {
        return Ok(());
    };
    for (seq, old) in &done {
        if *seq < cutoff {
            disk::remove_dir_all(old).map_err(io(old))?;
        }
    }
    Ok(())
}
