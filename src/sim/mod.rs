//! A deterministic crash simulation of the shard cores (TigerBeetle's VOPR idea, issue #14).
//!
//! One seed decides everything: how many shards, how small their hot tables and rings, the
//! checkpoint settings, a log of events from a few producers, and then every step — which
//! producer sends a datagram to which shard, which shard drains its rings, ticks its
//! checkpointer or lets its writer do the next piece of work, and where faults land. The
//! pieces are the real ones: `ShardCore` (decode, route over real `rtrb` rings, keyed state,
//! features, the linear model), `KeyedState` with its spill store's in-memory twin
//! (`state::cold::MemoryCold`), the real `Checkpointer` in stepped mode (its writer runs only
//! when the scheduler says, on this thread) and the real checkpoint files and restore, on a
//! scratch directory. Time is virtual: the cores get `now` from the scheduler.
//!
//! Faults: the writer crashes mid-write (torn hot.bin, no COMMIT, COMMIT but no rename,
//! renamed but not pruned) or finds the disk full; the process dies between any two steps
//! (mid-snapshot included); at rest, a committed checkpoint's hot.bin is bit-flipped or cut,
//! or its COMMIT is lost. After every crash the shards restore from disk, the oracle checks
//! the restored state (`oracle`), and the producers replay from the first event the restored
//! state lacks (a few earlier, so `state.dedup` refuses replays): a log with per-key seqs is
//! what a replayable source (Kafka) gives. At the end every key's state must equal the fold
//! of all its events, each applied once.
//!
//! A failing seed prints itself and replays the same run exactly: the run depends on the seed
//! alone (no clock in any decision, no hash-order iteration; `run_seed` twice gives the same
//! trace digest, which a test checks).
//!
//!   sluice-sim --seeds 10000              # the long run (see bench/README.md)
//!   sluice-sim --seed 42 --verbose        # one seed, every step logged

mod oracle;
mod world;

pub use world::{run_seed, Sabotage, SeedReport, SimSpec, Violation};
