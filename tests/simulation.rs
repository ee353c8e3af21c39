//! The deterministic crash simulation (`sluice::sim`, `sluice-sim`): a budget of seeds in the
//! test run, each bug it found replayed by its seed, and proof that the oracle catches a lost
//! event. The long run is `sluice-sim --seeds 10000` (bench/README.md).

use std::path::PathBuf;

use sluice::sim::{run_seed, Sabotage, SeedReport, SimSpec};

fn spec(name: &str) -> SimSpec {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    SimSpec {
        events: 1000,
        dir: base.join(format!("sluice-sim-test-{name}-{}", std::process::id())),
        verbose: false,
        sabotage: None,
        rocksdb: false,
    }
}

fn pass(seed: u64, spec: &SimSpec) -> SeedReport {
    match run_seed(seed, spec) {
        Ok(r) => r,
        Err(v) => panic!("{v}"),
    }
}

#[test]
fn a_budget_of_seeds_with_crashes_breaks_no_invariant() {
    let spec = spec("budget");
    let (mut crashes, mut restored, mut damaged, mut writer_crashes) = (0, 0, 0, 0);
    let (mut kafka, mut transactions, mut ttl, mut expired) = (0, 0, 0, 0);
    let (mut aborted, mut stops, mut at_least_once, mut redelivered) = (0, 0, 0, 0);
    let (mut power_losses, mut undone, mut cold_settles, mut spill_expired) = (0, 0, 0, 0);
    for seed in 1..=200 {
        let r = pass(seed, &spec);
        cold_settles += r.cold_settles;
        kafka += u64::from(r.kafka);
        ttl += u64::from(r.ttl_ms > 0);
        expired += r.expired;
        spill_expired += r.spill_expired;
        transactions += r.transactions;
        aborted += r.transactions_aborted;
        power_losses += r.power_losses;
        undone += r.ops_undone;
        at_least_once += u64::from(r.at_least_once);
        redelivered += r.scores_redelivered;
        stops += r.sequence_stops;
        crashes += r.crashes;
        restored += r.restored_from_checkpoint;
        damaged += r.corrupted;
        writer_crashes += r.writer_crashes;
    }
    // The faults really happened (else the budget proves nothing).
    assert!(crashes > 500, "{crashes} crashes in 200 seeds");
    assert!(
        writer_crashes > 20,
        "{writer_crashes} crashes inside the writer"
    );
    assert!(damaged > 50, "{damaged} checkpoints damaged at rest");
    assert!(restored > 500, "{restored} restores from a checkpoint");
    assert!(kafka > 50, "{kafka} of 200 seeds ran Kafka exactly_once");
    assert!(transactions > 1000, "{transactions} transactions committed");
    // The product's exactly_once sequence (`shard::exactly_once`) decided stops: commits the
    // twin broker aborted, checkpoints not written while the next transaction held Scores.
    assert!(aborted > 20, "{aborted} transactions aborted");
    assert!(stops > aborted, "{stops} stops the sequence decided");
    // at_least_once seeds ran the service's own sequence (`shard::at_least_once`) and a
    // replay delivered Scores again (at least once, never with another count).
    assert!(
        at_least_once > 15,
        "{at_least_once} seeds ran at_least_once"
    );
    assert!(redelivered > 1000, "{redelivered} Scores delivered twice");
    // Power losses took back checkpoint file operations no directory sync had made durable.
    assert!(power_losses > 300, "{power_losses} power losses");
    assert!(undone > 300, "{undone} file operations undone by them");
    // Kafka seeds with deferred cold reads had flips wait for events still waiting for a
    // read (`shard::flip_waits_for_cold`; without it 63 of seeds 1-400 fail).
    assert!(
        cold_settles > 500,
        "{cold_settles} flips waited for cold reads"
    );
    assert!(ttl > 20, "{ttl} of 200 seeds ran with a TTL");
    assert!(expired > 1000, "{expired} keys expired");
    // Of them, spilled keys the spill sweep deleted, names fed at random (stale ones too).
    eprintln!("spill sweep: {spill_expired} of {expired} expired keys");
    assert!(
        spill_expired > 1000,
        "{spill_expired} spilled keys deleted by the spill sweep"
    );
    let _ = std::fs::remove_dir_all(&spec.dir);
}

/// The twin keeps RocksDB's contract: the same seeds pass on the real store, and run the same
/// (the digest covers every decision and outcome).
#[test]
fn seeds_on_rocksdb_pass_and_run_as_on_the_twin() {
    let twin = spec("twin");
    let rocks = SimSpec {
        rocksdb: true,
        ..spec("rocksdb")
    };
    for seed in 1..=6 {
        let a = pass(seed, &twin);
        let b = pass(seed, &rocks);
        assert_eq!(a, b, "seed {seed}: the twin and RocksDB ran differently");
    }
    let _ = std::fs::remove_dir_all(&twin.dir);
    let _ = std::fs::remove_dir_all(&rocks.dir);
}

#[test]
fn a_seed_replays_exactly() {
    let spec = spec("replay");
    let mut at_least_once = false;
    for seed in [3, 77, 4] {
        let a = pass(seed, &spec);
        let b = pass(seed, &spec);
        assert!(a.crashes > 0, "seed {seed} should crash: {a:?}");
        assert_eq!(a, b, "seed {seed} ran differently twice");
        at_least_once |= a.at_least_once;
    }
    // The gated writer waits for the sequence's word: replayed the same way too.
    assert!(at_least_once, "seed 4 runs Kafka at_least_once");
    let _ = std::fs::remove_dir_all(&spec.dir);
}

/// Found by the simulation's power losses: the checkpoint root made at the first start was
/// never synced as a name in its parent, so a power loss could take every checkpoint back
/// (these seeds failed: exactly_once found the checkpoint its committed transaction names
/// gone). Unit tests in `state::checkpoint` pin the two fixes; these seeds lose power.
#[test]
fn seeds_1_3_5_6_lose_power_and_keep_their_committed_checkpoints() {
    let spec = spec("power");
    for seed in [1, 3, 5, 6] {
        let r = pass(seed, &spec);
        assert!(
            r.power_losses > 0 && r.ops_undone > 0,
            "seed {seed} loses power: {r:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&spec.dir);
}

/// Found by the simulation: a checkpoint restore skipped (damaged) stayed in place as the
/// newest; the run went on numbering its checkpoints from the older one restored, and pruning
/// counted the damaged one as the newest full checkpoint and deleted each new checkpoint as
/// soon as it was written. The next crash restored nothing: every key's state was lost. Now
/// restore sets such a checkpoint aside (`ckpt-N.bad`).
#[test]
fn seed_14_a_damaged_checkpoint_left_in_place_pruned_every_new_one() {
    let spec = spec("seed14");
    let r = pass(14, &spec);
    assert!(r.corrupted > 0, "seed 14 damages a checkpoint: {r:?}");
    let _ = std::fs::remove_dir_all(&spec.dir);
}

#[test]
fn the_oracle_catches_lost_events_no_replay_a_wrong_restore_reordered_scores_and_unsent_acks() {
    for sabotage in [
        Sabotage::LoseEvent,
        Sabotage::NoReplay,
        Sabotage::RestoreNewest,
        Sabotage::ReorderScores,
        Sabotage::AckUnsent,
    ] {
        let spec = SimSpec {
            sabotage: Some(sabotage),
            ..spec("sabotage")
        };
        let caught: Vec<u64> = (1..=10)
            .filter(|&seed| run_seed(seed, &spec).is_err())
            .collect();
        assert!(
            caught.len() >= 8,
            "{sabotage:?}: only seeds {caught:?} of 1..=10 were caught"
        );
        let _ = std::fs::remove_dir_all(&spec.dir);
    }
}
