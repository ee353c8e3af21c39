//! The simulated machine: shards, producers, the scheduler that interleaves them, and crashes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod faults;
mod kafka;

use kafka::{Broker, Partition, Txn};

use super::oracle::{masked, Ev, Image, Oracle};
use crate::config::Config;
use crate::egress::{PendingScore, ReplyTo};
use crate::features::FeaturePlan;
use crate::infer::{build_primary, ShardModel};
use crate::ingest::kafka::PartitionId;
use crate::ingest::Datagram;
use crate::loadgen::rng::Rng;
use crate::metrics::{DropReason, ShardCounters};
use crate::route::{self, Mesh};
use crate::shard::{ColdReader, Commit, ShardCore, SpillSweeper};
use crate::state::checkpoint::{self, CheckpointSpec, Checkpointer, Input, RestoreTarget};
use crate::state::{KeyedState, Spill};
use crate::wire::EventBatchEncoder;

/// What one run is given besides its seed.
#[derive(Debug, Clone)]
pub struct SimSpec {
    /// Events in the source log (at most 20 000: the spill journal is sized for that).
    pub events: usize,
    /// Scratch directory for the seed's checkpoints (a tmpfs is fastest); the seed's own
    /// folder under it is removed after a run that passed.
    pub dir: PathBuf,
    /// Log every step (tracing, debug level) — for replaying a failing seed.
    pub verbose: bool,
    /// A deliberate bug in the simulated world, for tests that the oracle catches it.
    pub sabotage: Option<Sabotage>,
    /// The cold store: the in-memory twin (fast), or RocksDB as the service runs it (to check
    /// that the twin keeps RocksDB's contract; ~10x slower per seed).
    pub rocksdb: bool,
}

/// Deliberate bugs (see `SimSpec::sabotage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// A producer skips one event (at the 50th send): it never reaches the shards. The seed
    /// runs UDP without faults (a crash's replay would heal the loss).
    LoseEvent,
    /// After a crash the producers go on where they were instead of replaying what the
    /// restored state lacks. The seed runs UDP and crashes at least once.
    NoReplay,
    /// Kafka exactly_once restarts from the newest checkpoint on disk instead of the one the
    /// last committed transaction names (whose offsets the input resumes from). The seed runs
    /// Kafka and crashes at least once.
    RestoreNewest,
    /// The twin broker appends each batch of acknowledged Scores in reverse order (a key's
    /// later Score before its earlier one on the Score topic). The seed runs Kafka.
    ReorderScores,
    /// at_least_once: the twin producer says the Scores before the open epoch are all
    /// acknowledged when they are not, so checkpoints commit ahead of their Scores. The seed
    /// runs Kafka at_least_once on the slowest broker and crashes at least once.
    AckUnsent,
}

/// What one seed did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedReport {
    pub seed: u64,
    /// Events came from Kafka partitions, exactly_once (else UDP datagrams over the rings).
    pub kafka: bool,
    pub shards: usize,
    pub keys: usize,
    pub hot_capacity: usize,
    /// `state.cold_wait_max` (0: each miss read on its own).
    pub cold_wait_max: usize,
    /// The batched cold reads are made off the shard (a deferred reader, whose reads land at
    /// steps the seed picks, while later events go on), as `state.cold_reader = thread`
    /// does; on Kafka seeds a checkpoint due while events wait lands them first, as the
    /// service's does (`shard::flip_waits_for_cold`).
    pub cold_reads_deferred: bool,
    /// Kafka seeds: `egress.kafka.delivery = at_least_once` (the service's default) instead
    /// of exactly_once: Scores are delivered as they are acknowledged, and a checkpoint
    /// commits once the Scores before its flip are all acknowledged.
    pub at_least_once: bool,
    /// Kafka exactly_once seeds: `egress.kafka.overlap_commits` — records are taken while a
    /// checkpoint is on its way to its commit, their Scores in the next transaction.
    pub overlap_commits: bool,
    /// Of those records' Scores, how many (committed later or lost by a crash).
    pub scores_while_committing: u64,
    /// Kafka seeds with deferred cold reads: checkpoint turns that landed waiting events
    /// before flipping (`shard::flip_waits_for_cold`).
    pub cold_settles: u64,
    /// `state.ttl_ms` (Kafka seeds only; 0: off).
    pub ttl_ms: u64,
    pub events: usize,
    pub steps: u64,
    /// Process deaths (spontaneous, and the writer's injected crashes).
    pub crashes: u64,
    pub writer_crashes: u64,
    /// Crashes that were power losses, and the checkpoint files' operations they undid
    /// (written but their directory not synced yet).
    pub power_losses: u64,
    pub ops_undone: u64,
    /// Shard restores (one per shard per crash, and at the end).
    pub restores: u64,
    /// Restores that found a checkpoint (the rest started empty).
    pub restored_from_checkpoint: u64,
    pub checkpoints_committed: u64,
    pub checkpoints_failed: u64,
    pub disk_full: u64,
    /// Committed checkpoints damaged at rest (bit flip, cut hot.bin, lost COMMIT).
    pub corrupted: u64,
    /// Events sent again after a crash (the first ones refused as replays by dedup).
    pub replayed: u64,
    /// Events refused as replays.
    pub duplicates: u64,
    /// Spills and reloads through the cold store.
    pub spills: u64,
    /// Events that were waiting for a batched cold read when a crash took them (replayed).
    pub waiting_lost: u64,
    /// Keys expired (TTL): restarted by their next event or swept.
    pub expired: u64,
    /// Of those, spilled keys the spill sweep deleted (names fed by `feed_sweep`).
    pub spill_expired: u64,
    /// Longest checkpoint chain a restore read.
    pub chain_max: usize,
    /// Kafka: transactions committed, and the Scores they held.
    pub transactions: u64,
    /// Kafka: transactions the twin broker aborted at their commit (the shard stops).
    pub transactions_aborted: u64,
    /// at_least_once: Scores delivered a second time (a replay after a crash).
    pub scores_redelivered: u64,
    /// Kafka: stops the exactly_once sequence decided (an aborted commit, a checkpoint not
    /// written while the next transaction held Scores); each one ends the process.
    pub sequence_stops: u64,
    pub scores_committed: u64,
    /// A digest of every decision and outcome: equal for two runs of one seed.
    pub digest: u64,
}

/// An invariant the oracle found broken.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub what: String,
    /// The seed's scratch folder, kept for a look.
    pub dir: PathBuf,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} step {}: {} (files kept in {}; replay: sluice-sim --seed {} --verbose)",
            self.seed,
            self.step,
            self.what,
            self.dir.display(),
            self.seed
        )
    }
}

/// Run one seed to its end; the oracle's first complaint (or a panic) is the violation.
pub fn run_seed(seed: u64, spec: &SimSpec) -> Result<SeedReport, Violation> {
    let dir = spec.dir.join(format!("seed-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    // This thread's checkpoint file operations are journaled for power losses.
    crate::state::checkpoint::disk::journal(dir.join("lost-power-shadow"));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut world = World::new(seed, spec, &dir).map_err(|what| (0, what))?;
        world.run().map_err(|what| (world.step, what))?;
        Ok::<_, (u64, String)>(world.report)
    }));
    crate::state::checkpoint::disk::journal_off();
    let failed = |(step, what)| Violation {
        seed,
        step,
        what,
        dir: dir.clone(),
    };
    match outcome {
        Ok(Ok(report)) => {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(report)
        }
        Ok(Err(e)) => Err(failed(e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".into());
            Err(failed((u64::MAX, format!("panicked: {what}"))))
        }
    }
}

/// A producer: its events in log order (indices into the log) and the next to send. Each
/// key has one producer and each producer one ingest shard, as a UDP client's flow lands on
/// one SO_REUSEPORT socket: a key's events reach its owner in order.
struct Producer {
    events: Vec<usize>,
    next: usize,
    ingest: usize,
}

/// One shard of the running process.
struct Node {
    core: ShardCore,
    cp: Checkpointer,
    counters: Arc<ShardCounters>,
    /// Kafka mode: the shard's partitions and open transaction.
    txn: Txn,
    /// UDP mode: the shard's cycle is left open (events on cold keys may wait for its
    /// batched cold read), so a crash can take them; closed before a checkpoint tick, as the
    /// shard's loop does.
    open: bool,
    /// TTL seeds: where the spill sweep's names come from (the scanner's stand-in).
    names: Option<rtrb::Producer<u64>>,
}

/// Step weights (out of their sum).
const W_SEND: u64 = 40;
const W_DRAIN: u64 = 25;
const W_TICK: u64 = 20;
const W_WRITER: u64 = 14;
/// Per mille of steps where the process dies (each seed picks one).
const CRASH_PER_MILLE: [u64; 3] = [1, 3, 10];
/// A seed injects at most this many crashes, then runs fault-free to its end: as in
/// TigerBeetle's VOPR, safety is checked under faults and liveness after them (a shard whose
/// snapshots take longer than its lifetimes would never commit one).
const CRASHES_MAX: u64 = 40;

struct World {
    seed: u64,
    kafka: bool,
    /// Each key's owner shard.
    owners: std::collections::BTreeMap<u64, usize>,
    partitions: Vec<Partition>,
    broker: Broker,
    rng: Rng,
    config: Config,
    plan: FeaturePlan,
    layout: String,
    shards: usize,
    dir: PathBuf,
    log: Vec<Ev>,
    producers: Vec<Producer>,
    nodes: Vec<Node>,
    oracle: Oracle,
    encoder: EventBatchEncoder,
    sink: Vec<(ReplyTo, PendingScore)>,
    /// Virtual time (ns).
    now: u64,
    step: u64,
    /// Per shard: the newest checkpoint seen committed, and whether one was damaged since.
    committed: Vec<u64>,
    damaged: Vec<bool>,
    verbose: bool,
    /// This seed's crash rate and crash budget.
    crash_per_mille: u64,
    crashes_max: u64,
    sabotage: Option<Sabotage>,
    rocksdb: bool,
    /// `state.ttl_ms` in ns (0: keys never expire).
    ttl_ns: u64,
    sends: u64,
    report: SeedReport,
}

impl World {
    fn new(seed: u64, spec: &SimSpec, dir: &Path) -> Result<Self, String> {
        if spec.events > 20_000 {
            return Err("at most 20 000 events per seed".into());
        }
        let mut rng = Rng::new(seed);
        let shards = 1 + rng.below(3) as usize;
        let hot = [4usize, 8, 16, 32][rng.below(4) as usize];
        let keys = hot + 1 + rng.below(6 * hot as u64) as usize;
        let ring = [2usize, 4, 16, 256][rng.below(4) as usize];
        let dir_text = dir.display().to_string();
        let interval_ms = 1 + rng.below(20);
        let keep_extra = rng.below(3);
        let full_every = 1 + rng.below(6);
        let slice = [1, 3, 16, 1024][rng.below(4) as usize];
        let coin = rng.below(2) == 0;
        let kafka = match spec.sabotage {
            None => coin,
            Some(Sabotage::RestoreNewest | Sabotage::ReorderScores | Sabotage::AckUnsent) => true,
            Some(Sabotage::LoseEvent | Sabotage::NoReplay) => false,
        };
        let dedup = !kafka || rng.below(2) == 0;
        // TTL on half the Kafka seeds, each shard with one partition at most: its newest
        // event time then rises with that partition's, so a key the sweep removes is one its
        // next event would restart anyway, and the fold predicts the state. (Over UDP rings,
        // or two partitions on a shard, the sweep's reference runs ahead of some keys' next
        // events: when a key expires depends on the interleaving.)
        let ttl_on = kafka && rng.below(2) == 0;
        let (ttl_ms, sweep_slots) = if ttl_on {
            (2_000 + rng.below(28_001), 1 + rng.below(8))
        } else {
            (0, 256)
        };
        // exactly_once needs two (config validation says so: the checkpoint the last
        // committed transaction names must survive until the next one commits).
        let keep = if kafka { 2 } else { 1 } + keep_extra;
        let crash_per_mille = CRASH_PER_MILLE[rng.below(3) as usize];
        let crashes_max = match spec.sabotage {
            None | Some(Sabotage::ReorderScores) => rng.below(CRASHES_MAX + 1),
            Some(Sabotage::LoseEvent) => 0,
            Some(Sabotage::NoReplay | Sabotage::RestoreNewest | Sabotage::AckUnsent) => {
                1 + rng.below(CRASHES_MAX)
            }
        };
        // Keys spread over the hash space (they route to every shard); a few producers.
        let key_ids: Vec<u64> = (0..keys).map(|_| rng.next_u64()).collect();
        // UDP: producers, each to one ingest shard. Kafka: partitions, each owned by a shard.
        let n_producers = 1 + rng.below(4) as usize;
        let n_producers = if ttl_on {
            n_producers.min(shards)
        } else {
            n_producers
        };
        let tag = |p: usize| {
            PartitionId {
                topic: 0,
                partition: p as i32,
            }
            .source_tag()
        };
        let mut producers: Vec<Producer> = (0..n_producers)
            .map(|p| Producer {
                events: Vec::new(),
                next: 0,
                ingest: p % shards,
            })
            .collect();
        let mut seqs = vec![0u64; keys];
        // Event times from late 2023 on, 0-400 ms apart: the 5-minute sliding windows slide.
        let mut ts = 1_700_000_000_000_000_000u64;
        let mut log = Vec::with_capacity(spec.events);
        for i in 0..spec.events {
            // Skewed: a third of the events on the first few keys.
            let k = if rng.below(3) == 0 {
                rng.below(keys.min(4) as u64) as usize
            } else {
                rng.below(keys as u64) as usize
            };
            ts += rng.below(400) * 1_000_000;
            let key = key_ids[k];
            log.push(Ev {
                key,
                seq: seqs[k],
                ts_ns: ts,
                feedback: rng.below(5) == 0,
                amount: 1.0 + rng.below(10_000) as f32 / 100.0,
                source: if kafka { tag(k % n_producers) } else { 0 },
            });
            seqs[k] += 1;
            producers[k % n_producers].events.push(i);
        }
        let span_ms = log.last().map_or(0, |e| e.ts_ns - log[0].ts_ns) / 1_000_000;
        let partitions: Vec<Partition> = if kafka {
            producers
                .iter()
                .enumerate()
                .map(|(p, prod)| {
                    let mut records = Vec::new();
                    let mut rest = prod.events.as_slice();
                    while !rest.is_empty() {
                        let n = (1 + rng.below(4) as usize).min(rest.len());
                        let (head, tail) = rest.split_at(n);
                        records.push(head.to_vec());
                        rest = tail;
                    }
                    Partition {
                        records,
                        shard: p % shards,
                        tag: tag(p),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        // Batched cold reads off, tiny (the batch evicts its own keys), or larger than the
        // table: from the seed itself, so the world's other draws stay as they were.
        let cold_wait = [0usize, 1, 3, 8, 256][(route::mix64(seed ^ 0xC01D) % 5) as usize];
        let cold_reads_deferred = cold_wait > 0 && route::mix64(seed ^ 0xA5C0) % 2 == 0;
        // A third of the Kafka seeds run at_least_once (the sabotages that need exactly_once
        // keep it); drawn from the seed alone, as the choices above.
        let at_least_once = match spec.sabotage {
            None => kafka && route::mix64(seed ^ 0xA71E) % 3 == 0,
            Some(s) => s == Sabotage::AckUnsent,
        };
        let overlap_commits = kafka && !at_least_once && route::mix64(seed ^ 0x0E7A) % 2 == 0;
        let sets = [
            "model.kind=linear".to_owned(),
            format!("state.cold_wait_max={cold_wait}"),
            format!("state.dir={dir_text}"),
            format!("state.hot_capacity={hot}"),
            format!("state.dedup={dedup}"),
            format!("state.ttl_ms={ttl_ms}"),
            format!("state.ttl_sweep_slots={sweep_slots}"),
            format!("route.ring_capacity={ring}"),
            "route.full=backpressure".into(),
            // Longer than the log's span: a replayed event is never late.
            format!("time.allowed_lateness_ms={}", span_ms + 1000),
            format!("checkpoint.interval_ms={interval_ms}"),
            format!("checkpoint.keep={keep}"),
            format!("checkpoint.full_every={full_every}"),
            format!("checkpoint.copy_slice_records={slice}"),
            "checkpoint.copy_slice_us=0".into(),
            // Never full (a full journal waits for the writer, which only the scheduler runs):
            // at most two entries per event delivered, and one process lifetime delivers each
            // event once plus the few replayed at its start.
            format!("checkpoint.spill_journal_records={}", 4 * spec.events + 64),
        ];
        let config = Config::from_layers(None, &sets).map_err(|e| e.to_string())?;
        let plan = config.feature_plan().map_err(|e| e.to_string())?;
        let layout = config.state_layout(shards);
        let oracle = Oracle::new(&config, plan.clone(), &log);
        let now = log.first().map_or(0, |e| e.ts_ns);
        let owners = log
            .iter()
            .map(|e| {
                let owner = match partitions.iter().find(|p| p.tag == e.source) {
                    Some(p) if kafka => p.shard,
                    _ => route::owner(e.key, shards),
                };
                (e.key, owner)
            })
            .collect();
        let mut world = Self {
            seed,
            kafka,
            owners,
            partitions,
            broker: Broker {
                progress: vec![None; shards],
                reverse: spec.sabotage == Some(Sabotage::ReorderScores),
                ack_unsent: spec.sabotage == Some(Sabotage::AckUnsent),
                ..Broker::default()
            },
            rng,
            config,
            plan,
            layout,
            shards,
            dir: dir.to_owned(),
            log,
            producers,
            nodes: Vec::new(),
            oracle,
            encoder: EventBatchEncoder::new(),
            sink: Vec::new(),
            now,
            step: 0,
            committed: vec![0; shards],
            damaged: vec![false; shards],
            verbose: spec.verbose,
            crash_per_mille,
            crashes_max,
            sabotage: spec.sabotage,
            rocksdb: spec.rocksdb,
            ttl_ns: ttl_ms * 1_000_000,
            sends: 0,
            report: SeedReport {
                seed,
                kafka,
                shards,
                keys,
                hot_capacity: hot,
                cold_wait_max: cold_wait,
                cold_reads_deferred,
                at_least_once,
                overlap_commits,
                ttl_ms,
                events: spec.events,
                ..SeedReport::default()
            },
        };
        world.boot()?;
        Ok(world)
    }

    fn mix(&mut self, v: u64) {
        self.report.digest = route::mix64(self.report.digest ^ v);
    }

    fn trace(&self, what: std::fmt::Arguments<'_>) {
        if self.verbose {
            tracing::debug!(seed = self.seed, step = self.step, "{what}");
        }
    }

    /// Start the process: every shard restores from its checkpoints, as `sluice run` does.
    fn boot(&mut self) -> Result<(), String> {
        let words = self.plan.words();
        let mut nodes = Vec::with_capacity(self.shards);
        for (id, rings) in Mesh::build(self.shards, self.config.route.ring_capacity)
            .into_iter()
            .enumerate()
        {
            let base = self.dir.join(format!("shard-{id}"));
            let root = base.join("checkpoints");
            let rocksdb = self.rocksdb;
            let open = |d: &Path, len: Option<u64>| {
                if rocksdb {
                    Spill::open(d, 1 << 20, words, len)
                } else {
                    Spill::open_memory(d, words, len)
                }
            };
            // Kafka, as exactly_once restarts: the checkpoint the last committed transaction
            // names, or none; newer ones (their transactions never committed) are dropped.
            let progress = self.broker.progress[id].clone();
            let target = match (self.kafka, &progress) {
                (false, _) => RestoreTarget::Newest,
                // at_least_once: the newest checkpoint committed on disk.
                _ if self.report.at_least_once => RestoreTarget::Newest,
                _ if self.sabotage == Some(Sabotage::RestoreNewest) => RestoreTarget::Newest,
                (true, Some((seq, _))) => RestoreTarget::Exactly(*seq),
                (true, None) => RestoreTarget::Nothing,
            };
            let (spill, point) = checkpoint::restore_to(
                &root,
                &self.layout,
                &base.join("spill"),
                words,
                open,
                target,
            )
            .map_err(|e| format!("shard {id}: restore failed: {e}"))?;
            let mut state = KeyedState::with_plan(&self.config, self.plan.clone(), Some(spill));
            self.report.restores += 1;
            let (restored, max_event_ns) = match &point {
                Some(p) => {
                    checkpoint::load_records(&mut state, p)
                        .map_err(|e| format!("shard {id}: loading the hot records: {e}"))?;
                    self.report.restored_from_checkpoint += 1;
                    self.report.chain_max = self.report.chain_max.max(p.chain_len());
                    (Some(p.manifest.seq), p.manifest.max_event_ns)
                }
                None => (None, 0),
            };
            let seq = restored.unwrap_or(0);
            self.trace(format_args!("shard {id} restored checkpoint {seq}"));
            self.mix(seq);
            let mut txn = Txn::new(
                self.report.overlap_commits,
                self.report.at_least_once,
                &mut self.broker,
            );
            if self.kafka {
                let held = point
                    .as_ref()
                    .map(|p| p.manifest.kafka_offsets.clone())
                    .unwrap_or_default();
                if !self.report.at_least_once {
                    // exactly_once: the checkpoint the last committed transaction names,
                    // holding the offsets committed with it.
                    let (named, offsets) = progress.unwrap_or_default();
                    if seq != named || held != offsets {
                        return Err(format!(
                            "shard {id}: restored checkpoint {seq} with offsets {held:?}, the last committed transaction names {named} with {offsets:?}"
                        ));
                    }
                }
                for (p, part) in self.partitions.iter().enumerate() {
                    if part.shard == id {
                        let next = held
                            .iter()
                            .find(|o| o.partition == p as i32)
                            .map_or(0, |o| o.next as u64);
                        txn.positions.push((p, next));
                    }
                }
            }
            // UDP and at_least_once: the newest checkpoint the run saw committed, or a later
            // one (Kafka seeds are never damaged at rest).
            if (!self.kafka || self.report.at_least_once)
                && !self.damaged[id]
                && seq < self.committed[id]
            {
                return Err(format!(
                    "shard {id} restored checkpoint {seq}, but {} was committed and nothing damaged it",
                    self.committed[id]
                ));
            }
            self.committed[id] = seq;
            self.damaged[id] = false;
            state.track_changes();
            let c = &self.config.checkpoint;
            let mut cp = Checkpointer::start_stepped(CheckpointSpec {
                root,
                shard: id,
                layout: self.layout.clone(),
                interval_ns: c.interval_ms * 1_000_000,
                keep: c.keep,
                full_every: c.full_every,
                buffer_bytes: checkpoint::buffer_bytes(self.config.state.hot_capacity, words),
                slice_records: c.copy_slice_records,
                slice_ns: 0,
                journal_records: c.spill_journal_records,
                words,
                next_seq: seq + 1,
                restored,
                // at_least_once: a checkpoint commits when the sequence releases it.
                gated: self.report.at_least_once,
            })
            .map_err(|e| format!("shard {id}: checkpointer: {e}"))?;
            cp.wait_ready();
            let model = build_primary(&self.config, None).map_err(|e| e.to_string())?;
            let counters = Arc::new(ShardCounters::default());
            let mut core = ShardCore::new(
                id,
                self.shards,
                &self.config,
                rings,
                ShardModel::new(&self.config, model, 1),
                state,
                max_event_ns,
                Arc::clone(&counters),
            );
            if self.report.cold_reads_deferred {
                let reader = ColdReader::deferred(core.state());
                core.use_cold_reader(reader);
            }
            let names = match core.state().spilled_sweep_max() {
                0 => None,
                max => {
                    let (sweeper, names) = SpillSweeper::fed(max);
                    core.use_spill_sweeper(sweeper);
                    Some(names)
                }
            };
            nodes.push(Node {
                core,
                cp,
                counters,
                txn,
                open: false,
                names,
            });
        }
        self.nodes = nodes;
        self.check_restored()?;
        if self.report.at_least_once {
            self.check_scores_below_offsets()?;
        }
        Ok(())
    }

    /// After a restore: every key's state is the fold of a prefix of its events (none lost
    /// in the middle, none applied twice), each key in one place only, and each shard's count
    /// of applied Observations the sum over its keys.
    fn check_restored(&mut self) -> Result<(), String> {
        let mut observations = vec![0u64; self.shards];
        let keys: Vec<u64> = self.oracle.keys().collect();
        for key in keys {
            let id = self.owner(key);
            let got = self.state_of(key)?;
            let n = if self.kafka {
                // Exactly what the committed offsets hold: no more, no less.
                self.committed_events(key)
            } else {
                got.as_ref().map_or(0, |(r, _)| r.seq_end as usize)
            };
            if n > self.oracle.events_of(key) {
                return Err(format!(
                    "key {key:#x} on shard {id}: seq_end {n} is past its {} events",
                    self.oracle.events_of(key)
                ));
            }
            let want = self.oracle.fold(key, n)?;
            if !self.same(id, &got, &want) {
                return Err(format!(
                    "key {key:#x} on shard {id}: restored state is not the fold of its first {n} events\n got: {got:?}\nwant: {want:?}"
                ));
            }
            observations[id] += got.map_or(0, |(r, _)| r.observations);
            self.mix(key ^ n as u64);
        }
        // Expired keys take their counts with them.
        if self.ttl_ns == 0 {
            for (id, node) in self.nodes.iter().enumerate() {
                let applied = node.core.state().stats.observations_applied;
                if applied != observations[id] {
                    return Err(format!(
                        "shard {id}: restored observations_applied {applied}, its keys hold {}",
                        observations[id]
                    ));
                }
            }
        }
        Ok(())
    }

    /// The shard's state of a key is the fold's: equal, or (TTL) swept away where the fold's
    /// record is idle past the TTL at the shard's newest event time.
    fn same(&self, shard: usize, got: &Option<Image>, want: &Option<Image>) -> bool {
        if got == want {
            return true;
        }
        let reference = self.nodes[shard].core.max_event_ns();
        self.ttl_ns > 0
            && got.is_none()
            && want
                .as_ref()
                .is_some_and(|(r, _)| reference.saturating_sub(r.last_event_ns) > self.ttl_ns)
    }

    /// The shard that owns `key`: by hash (UDP), or its partition's owner (Kafka).
    fn owner(&self, key: u64) -> usize {
        self.owners.get(&key).copied().unwrap_or(0)
    }

    /// A key's state at its owner, checked to be in one place only.
    fn state_of(&self, key: u64) -> Result<Option<Image>, String> {
        let id = self.owner(key);
        let state = self.nodes[id].core.state();
        let hot = state.hot().get(key).map(|(r, w)| masked(r, w));
        let mut words = vec![0u64; self.plan.words()];
        let cold = match state.spill() {
            Some(s) => s
                .peek(key, &mut words)
                .map_err(|e| format!("key {key:#x}: spill store: {e}"))?
                .map(|r| masked(&r, &words)),
            None => None,
        };
        match (hot, cold) {
            (Some(_), Some(_)) => Err(format!(
                "key {key:#x} on shard {id} is both hot and spilled"
            )),
            (h, c) => Ok(h.or(c)),
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let budget = 200 * self.log.len() as u64 + 10_000;
        while !self.finished() {
            if self.step > budget {
                let shards: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        let phase = match &n.txn.sequence.commit {
                            None => "open",
                            Some(Commit::Writing { .. }) => "writing",
                            Some(Commit::Committing { .. }) => "committing",
                        };
                        format!(
                            "shard {}: {phase}, positions {:?}, writer queue {}, capturing {}",
                            n.core.id,
                            n.txn.positions,
                            n.cp.writer_pending(),
                            n.cp.capturing()
                        )
                    })
                    .collect();
                return Err(format!(
                    "no progress: {budget} steps; {}",
                    shards.join("; ")
                ));
            }
            self.one_step()?;
        }
        if self.kafka {
            return self.end_kafka();
        }
        self.drain_all()?;
        self.check_final("at the end")?;
        // A clean stop: the last checkpoint is waited for; a restart must find it all.
        for n in &mut self.nodes {
            let max = n.core.max_event_ns();
            // The restart must restore this one (`boot` checks it restores the newest seen).
            if let Some(seq) = n.cp.finish_with(n.core.state_mut(), max, &Input::default()) {
                self.committed[n.core.id] = self.committed[n.core.id].max(seq);
            }
        }
        self.stop();
        self.boot()?;
        self.check_final("after a clean stop and a restart")?;
        self.report.steps = self.step;
        self.stop();
        Ok(())
    }

    /// Faults are injected until the seed's crash budget is spent.
    fn faults_on(&self) -> bool {
        self.report.crashes < self.crashes_max
    }

    /// UDP: every event sent. Kafka: every record's offset committed.
    fn finished(&self) -> bool {
        if !self.kafka {
            return self.producers.iter().all(|p| p.next >= p.events.len());
        }
        if self.report.at_least_once {
            // Every record taken, applied (none waiting for a deferred cold read) and its Score
            // delivered (the stop at the end commits it).
            return self
                .nodes
                .iter()
                .all(|n| n.txn.producers.settled() && n.core.waiting_for_cold() == 0)
                && self
                    .partitions
                    .iter()
                    .enumerate()
                    .all(|(p, part)| self.position(p) >= part.records.len());
        }
        self.partitions.iter().enumerate().all(|(p, part)| {
            self.broker.progress[part.shard]
                .as_ref()
                .and_then(|(_, offs)| offs.iter().find(|o| o.partition == p as i32))
                .is_some_and(|o| o.next as usize >= part.records.len())
        })
    }

    fn one_step(&mut self) -> Result<(), String> {
        self.step += 1;
        self.now += 1_000_000;
        let faults = self.faults_on();
        if self.rng.below(1000) < self.crash_per_mille && faults {
            return self.crash("the process died");
        }
        let id = self.rng.below(self.shards as u64) as usize;
        let pick = self.rng.below(W_SEND + W_DRAIN + W_TICK + W_WRITER);
        self.mix(pick << 8 | id as u64);
        if self.kafka {
            return if pick < W_SEND {
                self.take(id)
            } else if pick < W_SEND + W_DRAIN {
                self.commit(id)
            } else if pick < W_SEND + W_DRAIN + W_TICK {
                self.kafka_checkpoint(id)
            } else {
                self.writer(id)
            };
        }
        if pick < W_SEND {
            self.send()
        } else if pick < W_SEND + W_DRAIN {
            self.drain(id)
        } else if pick < W_SEND + W_DRAIN + W_TICK {
            self.feed_sweep(id);
            let node = &mut self.nodes[id];
            if node.open {
                node.core.finish_cycle(self.now, &mut self.sink);
                node.open = false;
                self.sink.clear();
            }
            let max = node.core.max_event_ns();
            node.cp.tick(self.now, node.core.state_mut(), max);
            self.outcome(id);
            Ok(())
        } else {
            self.writer(id)
        }
    }

    /// TTL seeds: at a quarter of the cycle ends (drawn from the seed and step, as
    /// `maybe_read_cold`'s) the spill sweep gets 1-8 names as a scanner would send them: any
    /// keys of the seed, stale or not, on this shard or not, hot, spilled, waiting for a cold
    /// read or gone. The shard's `finish_cycle` deletes those it finds idle past the TTL, which
    /// `same` then accepts only where the fold's record is.
    fn feed_sweep(&mut self, id: usize) {
        let draw = route::mix64(self.seed ^ self.step ^ 0x5EEB);
        if draw % 4 != 0 || self.nodes.get(id).is_none_or(|n| n.names.is_none()) {
            return;
        }
        let keys: Vec<u64> = self.oracle.keys().collect();
        let Some(names) = self.nodes.get_mut(id).and_then(|n| n.names.as_mut()) else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        for i in 0..1 + (draw >> 8) % 8 {
            let at = route::mix64(draw ^ i) % keys.len() as u64;
            // A full ring drops the name, as a scanner would wait: either way not deleted yet.
            let _ = names.push(keys[at as usize]);
        }
    }

    /// Deferred cold reads: at half the cycle ends (drawn from the seed and step, so that the
    /// rng's draws stay as they were) the read out is made first and lands in that cycle's
    /// end; otherwise it stays out while later events come.
    fn maybe_read_cold(&mut self, id: usize) {
        if self.report.cold_reads_deferred && route::mix64(self.seed ^ self.step ^ 0x4EAD) % 2 == 0
        {
            self.nodes[id].core.read_cold_deferred();
        }
    }

    /// A producer sends its next 1-4 events in one datagram to its ingest shard (not while
    /// that shard holds stalled events: it receives nothing then).
    fn send(&mut self) -> Result<(), String> {
        let p = self.rng.below(self.producers.len() as u64) as usize;
        let n = 1 + self.rng.below(4) as usize;
        let prod = &self.producers[p];
        let ingest = prod.ingest;
        if prod.next >= prod.events.len() || self.nodes[ingest].core.is_stalled() {
            return Ok(());
        }
        let batch: Vec<Ev> = prod.events[prod.next..]
            .iter()
            .take(n)
            .map(|&i| self.log[i])
            .collect();
        self.producers[p].next += batch.len();
        self.sends += 1;
        let batch = if self.sabotage == Some(Sabotage::LoseEvent) && self.sends == 50 {
            batch.get(1..).unwrap_or_default().to_vec()
        } else {
            batch
        };
        self.trace(format_args!(
            "producer {p} -> shard {ingest}: {:?}",
            batch.iter().map(|e| (e.key, e.seq)).collect::<Vec<_>>()
        ));
        let bytes = self.encoder.encode(batch.iter().map(Ev::wire)).to_vec();
        let dg = Datagram {
            payload: &bytes,
            src: std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + p as u16)),
            recv_ns: self.now,
            truncated: false,
        };
        // A quarter of the sends leave the cycle open, drawn from the seed and step rather
        // than the rng so that seeds keep the draws they had before this was added.
        let leave_open = route::mix64(self.seed ^ self.step ^ 0x09E1) % 4 == 0;
        self.maybe_read_cold(ingest);
        self.feed_sweep(ingest);
        let node = &mut self.nodes[ingest];
        node.core.on_datagram(dg, self.now, &mut self.sink);
        if leave_open {
            node.open = true;
        } else {
            node.core.finish_cycle(self.now, &mut self.sink);
            node.open = false;
        }
        self.sink.clear();
        self.refused(ingest)
    }

    /// The shard retries its stalled events and drains some of its inbound rings.
    fn drain(&mut self, id: usize) -> Result<(), String> {
        let max = 1 + self.rng.below(16) as usize;
        self.maybe_read_cold(id);
        self.feed_sweep(id);
        let node = &mut self.nodes[id];
        node.core.retry_stalled();
        let n = node.core.drain_inbound(max, &mut self.sink);
        node.core.finish_cycle(self.now, &mut self.sink);
        node.open = false;
        self.sink.clear();
        self.mix(n as u64);
        self.refused(id)
    }

    /// Nothing may be refused but replays: no state errors, no full table, no ring drops.
    fn refused(&self, id: usize) -> Result<(), String> {
        let c = &self.nodes[id].counters;
        for r in [
            DropReason::StateError,
            DropReason::StateFull,
            DropReason::RingFull,
        ] {
            if c.events_dropped_by(r) > 0 {
                return Err(format!("shard {id} dropped an event: {r:?}"));
            }
        }
        Ok(())
    }

    /// Drain every ring and stall queue (all producers are done).
    fn drain_all(&mut self) -> Result<(), String> {
        for _ in 0..100_000 {
            let busy = self.nodes.iter().any(|n| {
                n.open
                    || n.core.is_stalled()
                    || !n.core.inbound_is_empty()
                    || n.core.waiting_for_cold() > 0
            });
            if !busy {
                return Ok(());
            }
            for id in 0..self.shards {
                self.step += 1;
                self.nodes[id].core.read_cold_deferred();
                self.drain(id)?;
            }
        }
        Err("rings never drained".into())
    }

    /// Every key holds the fold of all its events; every Observation applied once.
    fn check_final(&mut self, when: &str) -> Result<(), String> {
        let keys: Vec<u64> = self.oracle.keys().collect();
        for key in keys {
            let got = self.state_of(key)?;
            let want = self.oracle.fold(key, self.oracle.events_of(key))?;
            if !self.same(self.owner(key), &got, &want) {
                return Err(format!(
                    "{when}: key {key:#x} on shard {}: state is not the fold of all its {} events\n got: {got:?}\nwant: {want:?}",
                    self.owner(key),
                    self.oracle.events_of(key)
                ));
            }
        }
        if self.ttl_ns > 0 {
            return Ok(());
        }
        let observations = self.log.iter().filter(|e| !e.feedback).count() as u64;
        let applied: u64 = self
            .nodes
            .iter()
            .map(|n| n.core.state().stats.observations_applied)
            .sum();
        if applied != observations {
            return Err(format!(
                "{when}: {applied} Observations applied, the log holds {observations}"
            ));
        }
        Ok(())
    }
}
