use std::collections::BTreeMap;

use super::*;
use crate::features::FeaturePlan;
use crate::state::{HotTable, KeyState, Outcome, Update};
use crate::wire::EventKind;

const SEC: u64 = 1_000_000_000;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("sluice-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
    fn spill(&self) -> PathBuf {
        self.0.join("spill")
    }
    fn root(&self) -> PathBuf {
        self.0.join("checkpoints")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn plan() -> FeaturePlan {
    FeaturePlan::compile(
        &[
            "count(lifetime)".into(),
            "max(amount, sliding 10s by 1s)".into(),
        ],
        0,
    )
    .unwrap()
}

fn open(path: &Path, len: Option<u64>) -> Result<Spill, SpillError> {
    Spill::open(path, 1 << 20, plan().words(), len)
}

fn state(spill: Spill) -> KeyedState {
    let p = plan();
    let mut s = KeyedState::new(HotTable::new(8, p.words()), Some(spill), p, 0, false);
    s.track_changes();
    s
}

/// 40 keys (more than the 8 hot slots), `rounds` events each.
fn load(s: &mut KeyedState, rounds: std::ops::Range<u64>) {
    for r in rounds {
        for key in 0..40u64 {
            let u = Update {
                key,
                seq: r,
                ts_ns: (r + 1) * SEC,
                kind: EventKind::Observation,
                amount: (key + r) as f32,
                label: -1.0,
                features: &[],
                source: 0,
            };
            assert!(matches!(s.apply(&u, 0).unwrap(), Outcome::Applied(_)));
        }
    }
}

fn dump(s: &KeyedState) -> BTreeMap<u64, KeyState> {
    dump_keys(s, 40)
}

/// The state of keys 0..n that exist, as comparable values.
fn dump_keys(s: &KeyedState, n: u64) -> BTreeMap<u64, KeyState> {
    (0..n)
        .filter_map(|k| {
            s.locate(k).unwrap().map(|mut st| {
                st.location = "";
                // Where a record lives and its CLOCK and DIRTY bits are not state.
                st.record.flags = crate::state::record::OCCUPIED;
                (k, st)
            })
        })
        .collect()
}

/// Every `full_every`-th checkpoint full, the rest incremental.
fn checkpointer(d: &Dir, layout: &str, next: u64, full_every: usize) -> Checkpointer {
    Checkpointer::start(CheckpointSpec {
        root: d.root(),
        shard: 0,
        layout: layout.into(),
        interval_ns: 0,
        keep: 2,
        full_every,
        buffer_bytes: 1 << 20,
        next_seq: next,
    })
    .unwrap()
}

fn restore_into_new(d: &Dir, layout: &str) -> Result<(KeyedState, Option<u64>), CheckpointError> {
    let (spill, point) = restore(&d.root(), layout, &d.spill(), plan().words(), open)?;
    let mut s = state(spill);
    let seq = match point {
        Some(p) => {
            let n = load_records(&mut s, &p)?;
            assert_eq!(
                n,
                s.hot_len() as u64,
                "every record loaded is hot (same capacity)"
            );
            Some(p.manifest.seq)
        }
        None => None,
    };
    Ok((s, seq))
}

#[test]
fn restore_brings_back_hot_and_spilled_records_exactly() {
    let d = Dir::new("roundtrip");
    let mut s = state(open(&d.spill(), None).unwrap());
    let mut cp = checkpointer(&d, "L1", 1, 50);
    load(&mut s, 0..3);
    assert!(s.spilled_len() > 0, "the test needs spilled records");
    cp.finish(&mut s, 3 * SEC);
    let first = dump(&s);
    load(&mut s, 3..5);
    cp.finish(&mut s, 5 * SEC);
    let second = dump(&s);
    assert_eq!(
        (cp.stats.written, cp.stats.failed, cp.stats.last_seq),
        (2, 0, 2)
    );
    let applied = s.stats.observations_applied;
    drop(s);

    let (back, seq) = restore_into_new(&d, "L1").unwrap();
    assert_eq!(seq, Some(2));
    assert_eq!(dump(&back), second);
    assert_eq!(back.stats.observations_applied, applied);
    assert_eq!(back.hot_len() as u64 + back.spilled_len(), 40);
    drop(back);

    // Corrupt the newest (incremental) hot.bin: the previous checkpoint is restored instead.
    let newest = d.root().join(name(2)).join("hot.bin");
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&newest, bytes).unwrap();
    let (back, seq) = restore_into_new(&d, "L1").unwrap();
    assert_eq!(seq, Some(1));
    assert_eq!(dump(&back), first);
    drop(back);

    // A checkpoint without its COMMIT marker is incomplete, and the incremental one after it
    // cannot be rebuilt without it: with none left, start empty.
    std::fs::remove_file(d.root().join(name(1)).join("COMMIT")).unwrap();
    let (back, seq) = restore_into_new(&d, "L1").unwrap();
    assert_eq!(seq, None);
    assert_eq!((back.hot_len(), back.spilled_len()), (0, 0));
}

#[test]
fn truncated_checkpoints_and_leftovers_are_skipped_and_old_ones_pruned() {
    let d = Dir::new("prune");
    let mut s = state(open(&d.spill(), None).unwrap());
    let mut cp = checkpointer(&d, "L1", 7, 1);
    for r in 0..4 {
        load(&mut s, r..r + 1);
        cp.finish(&mut s, 0);
    }
    let seqs: Vec<u64> = list(&d.root()).unwrap().done.iter().map(|x| x.0).collect();
    assert_eq!(seqs, vec![10, 9], "keep = 2, numbering continues from 7");
    let at_9 = {
        drop(s);
        let (back, seq) = restore_into_new(&d, "L1").unwrap();
        assert_eq!(seq, Some(10));
        drop(back);
        // Truncate the newest hot.bin; leave a half-written directory behind as a crash would.
        let hot = d.root().join(name(10)).join("hot.bin");
        let len = std::fs::metadata(&hot).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&hot)
            .unwrap()
            .set_len(len - 7)
            .unwrap();
        std::fs::create_dir_all(d.root().join(format!("{}.tmp", name(11)))).unwrap();
        restore_into_new(&d, "L1").unwrap()
    };
    assert_eq!(at_9.1, Some(9));
    assert!(!d.root().join(format!("{}.tmp", name(11))).exists());
    let three_rounds = at_9.0.locate(5).unwrap().unwrap().record.observations;
    assert_eq!(three_rounds, 3);
}

#[test]
fn a_checkpoint_for_another_layout_stops_the_restore() {
    let d = Dir::new("layout");
    let mut s = state(open(&d.spill(), None).unwrap());
    let mut cp = checkpointer(&d, "shards=2;features=a", 1, 50);
    load(&mut s, 0..1);
    cp.finish(&mut s, 0);
    drop(s);
    let err = restore_into_new(&d, "shards=3;features=a").err().unwrap();
    assert!(err.to_string().contains("cannot be restored"), "{err}");
}

#[test]
fn manifest_round_trips_and_refuses_tampering() {
    let m = Manifest {
        seq: 3,
        shard: 1,
        layout: "shards=2;features=x".into(),
        parent: 4,
        hot_records: 10,
        gone: 2,
        spilled: 4,
        hot_bytes: 999,
        hot_crc: 42,
        max_event_ns: 5,
        observations_applied: 77,
        created_unix_ms: 1,
        kafka_offsets: vec![
            PartitionOffset {
                topic: "events.v1".into(),
                partition: 3,
                next: 1_234,
            },
            PartitionOffset {
                topic: "other-topic".into(),
                partition: 0,
                next: 0,
            },
        ],
    };
    let text = m.render();
    assert_eq!(Manifest::parse(&text).unwrap(), m);
    // Without Kafka the line is empty; a COMMIT of format 2 (no line at all) still reads.
    let plain = Manifest {
        kafka_offsets: Vec::new(),
        ..m.clone()
    };
    assert_eq!(Manifest::parse(&plain.render()).unwrap(), plain);
    let body = "format=2\nseq=1\nshard=0\nlayout=x\nparent=0\nhot_records=0\ngone=0\nspilled=0\nhot_bytes=0\nhot_crc=0\nmax_event_ns=0\nobservations_applied=0\ncreated_unix_ms=0\n";
    let v2 = format!("{body}crc={}\n", crc32fast::hash(body.as_bytes()));
    assert!(Manifest::parse(&v2).unwrap().kafka_offsets.is_empty());
    let bad = text.replace("events.v1/3/1234", "events.v1/x/1234");
    assert!(
        Manifest::parse(&bad).is_err(),
        "a changed body fails its checksum first"
    );
    let tampered = text.replace("spilled=4", "spilled=5");
    assert!(Manifest::parse(&tampered).unwrap_err().contains("checksum"));
    assert!(Manifest::parse("").is_err());
}

/// Random traffic over more keys than the hot table holds (spills, reloads, TTL expiry), with
/// incremental checkpoints between bursts: every restore equals the state at its checkpoint.
#[test]
fn incremental_checkpoints_restore_exactly_through_spills_reloads_and_expiry() {
    let d = Dir::new("incremental");
    let p = plan();
    let mut s = KeyedState::new(
        HotTable::new(8, p.words()),
        Some(open(&d.spill(), None).unwrap()),
        p,
        30 * SEC,
        false,
    );
    s.track_changes();
    let mut cp = checkpointer(&d, "L1", 1, 4);
    let mut snapshots = Vec::new();
    let mut x = 12345u64;
    let mut now = SEC;
    for _ in 0..10 {
        for _ in 0..25 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = (x >> 33) % 30;
            now += (x >> 20) % (3 * SEC);
            let u = Update {
                key,
                seq: 0,
                ts_ns: now,
                kind: EventKind::Observation,
                amount: (x % 100) as f32,
                label: -1.0,
                features: &[],
                source: 0,
            };
            s.apply(&u, now).unwrap();
        }
        s.expire_idle(now, 3);
        cp.finish(&mut s, now);
        snapshots.push((dump_keys(&s, 30), s.hot_len() as u64 + s.spilled_len()));
    }
    assert_eq!(
        (cp.stats.written, cp.stats.full),
        (10, 3),
        "full at 1, 5, 9"
    );
    assert!(
        s.stats.spills > 0 && s.stats.reloads > 0 && s.stats.expired > 0,
        "{:?}",
        s.stats
    );
    drop(s);
    drop(cp);

    let restore_all = |d: &Dir| {
        let (spill, point) = restore(&d.root(), "L1", &d.spill(), plan().words(), open).unwrap();
        let p = plan();
        let mut back =
            KeyedState::new(HotTable::new(8, p.words()), Some(spill), p, 30 * SEC, false);
        let point = point.unwrap();
        load_records(&mut back, &point).unwrap();
        (
            point.manifest.seq,
            point.chain_len(),
            dump_keys(&back, 30),
            back.hot_len() as u64 + back.spilled_len(),
        )
    };
    // Newest: checkpoint 10, built on full 9.
    let (seq, chain, all, n) = restore_all(&d);
    assert_eq!((seq, chain), (10, 2));
    assert_eq!(all, snapshots[9].0);
    assert_eq!(n, snapshots[9].1, "every record in exactly one place");
    // Corrupt the full checkpoint 9: 10 cannot be rebuilt either; 8 (on full 5) is restored.
    let full9 = d.root().join(name(9)).join("hot.bin");
    let mut bytes = std::fs::read(&full9).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&full9, bytes).unwrap();
    let (seq, chain, all, n) = restore_all(&d);
    assert_eq!((seq, chain), (8, 4));
    assert_eq!(all, snapshots[7].0);
    assert_eq!(n, snapshots[7].1);
}
