use super::*;

const SEC: u64 = 1_000_000_000;

fn plan() -> FeaturePlan {
    let list: Vec<String> = ["count(lifetime)", "sum(amount, sliding 10s by 1s)"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    FeaturePlan::compile(&list, 0).unwrap()
}

fn state(capacity: usize, spill: Option<Spill>, ttl_ns: u64, dedup: bool) -> KeyedState {
    let p = plan();
    KeyedState::new(HotTable::new(capacity, p.words()), spill, p, ttl_ns, dedup)
}

fn obs(key: u64, seq: u64, ts_ns: u64) -> Update<'static> {
    Update {
        key,
        seq,
        ts_ns,
        kind: EventKind::Observation,
        amount: 2.0,
        label: -1.0,
        features: &[],
        source: 0,
    }
}

/// The key's (observations, features) after applying `u`.
fn apply(s: &mut KeyedState, u: &Update<'_>, now: u64) -> Option<(u64, [f32; 2])> {
    match s.apply(u, now).unwrap() {
        Outcome::Applied(slot) => {
            let (head, words) = s.slot(slot);
            let mut row = [0f32; 2];
            s.plan()
                .build_row(words, head.prev_event_ns, &u.obs(), &mut row);
            Some((head.observations, row))
        }
        Outcome::Duplicate | Outcome::OtherSource(_) => None,
    }
}

#[test]
fn idle_keys_start_over_after_the_ttl() {
    let mut s = state(16, None, 10 * SEC, false);
    assert_eq!(apply(&mut s, &obs(1, 0, SEC), SEC), Some((1, [1.0, 2.0])));
    assert_eq!(
        apply(&mut s, &obs(1, 1, 5 * SEC), 5 * SEC),
        Some((2, [2.0, 4.0]))
    );
    // 10 s idle is within the TTL; 10 s + 1 ns is not.
    assert_eq!(
        apply(&mut s, &obs(1, 2, 15 * SEC), 15 * SEC),
        Some((3, [3.0, 2.0]))
    );
    assert_eq!(s.stats.expired, 0);
    assert_eq!(
        apply(&mut s, &obs(1, 3, 25 * SEC + 1), 25 * SEC + 1),
        Some((1, [1.0, 2.0]))
    );
    assert_eq!(s.stats.expired, 1);
    // The sweep removes idle keys without an event for them.
    apply(&mut s, &obs(2, 0, 30 * SEC), 30 * SEC);
    let slots = s.hot().slots();
    assert_eq!(
        s.expire_idle(36 * SEC, slots),
        1,
        "key 1 idle 11 s, key 2 idle 6 s"
    );
    assert_eq!((s.hot_len(), s.stats.expired), (1, 2));
    assert!(s.locate(1).unwrap().is_none());
    assert!(s.locate(2).unwrap().is_some());
}

#[test]
fn replayed_seqs_are_refused_once_applied() {
    let mut s = state(16, None, 0, true);
    assert!(apply(&mut s, &obs(1, 5, SEC), SEC).is_some());
    assert!(apply(&mut s, &obs(1, 5, SEC), SEC).is_none());
    assert!(apply(&mut s, &obs(1, 3, SEC), SEC).is_none());
    assert_eq!(apply(&mut s, &obs(1, 6, SEC), SEC).map(|x| x.0), Some(2));
    // Another key's seqs are its own.
    assert!(apply(&mut s, &obs(2, 0, SEC), SEC).is_some());
    assert_eq!(s.stats.duplicates, 2);
    // Without dedup the same replay counts again.
    let mut s = state(16, None, 0, false);
    apply(&mut s, &obs(1, 5, SEC), SEC);
    assert_eq!(apply(&mut s, &obs(1, 5, SEC), SEC).map(|x| x.0), Some(2));
}

#[test]
fn windows_survive_a_trip_through_the_spill_store() {
    let dir = std::env::temp_dir().join(format!("sluice-keyed-spill-{}", std::process::id()));
    let p = plan();
    let spill = Spill::open(&dir, 1 << 20, p.words(), None).unwrap();
    let mut s = state(4, Some(spill), 0, false);
    for round in 0..3u64 {
        for key in 0..64u64 {
            let got = apply(&mut s, &obs(key, round, (round + 1) * SEC), SEC).unwrap();
            assert_eq!(
                got,
                (round + 1, [(round + 1) as f32, 2.0 * (round + 1) as f32]),
                "key {key}"
            );
        }
    }
    assert_eq!(s.hot_len() as u64 + s.spilled_len(), 64);
    assert!(s.stats.spills > 0 && s.stats.reloads > 0);
    let far = s.locate(0).unwrap().unwrap();
    assert_eq!(far.record.observations, 3);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_key_belongs_to_the_source_that_first_wrote_it() {
    let mut s = state(16, None, 0, false);
    let from = |source: u64, seq: u64| Update {
        source,
        ..obs(7, seq, seq * SEC)
    };
    assert!(matches!(
        s.apply(&from(3, 1), SEC).unwrap(),
        Outcome::Applied(_)
    ));
    // Another partition (or UDP) is refused and changes nothing.
    for other in [0, 4] {
        assert_eq!(
            s.apply(&from(other, 2), 2 * SEC).unwrap(),
            Outcome::OtherSource(3)
        );
    }
    assert_eq!(s.stats.other_source, 2);
    assert_eq!(apply(&mut s, &from(3, 3), 3 * SEC).map(|r| r.0), Some(2));
    // A key that expires starts over and may then belong to a new source.
    let mut s = state(16, None, SEC, false);
    s.apply(&from(3, 1), SEC).unwrap();
    assert!(matches!(
        s.apply(&from(5, 2), 10 * SEC).unwrap(),
        Outcome::Applied(_)
    ));
}

fn obs_from(key: u64, seq: u64, ts_ns: u64, source: u64) -> Update<'static> {
    Update {
        source,
        ..obs(key, seq, ts_ns)
    }
}

/// Every key's (observations, source, features at `now`), sorted by key.
fn every_key(
    s: &KeyedState,
    keys: std::ops::Range<u64>,
    now: u64,
) -> Vec<(u64, u64, u64, [f32; 2])> {
    let mut out = Vec::new();
    for key in keys {
        if let Some(st) = s.locate(key).unwrap() {
            let words: Vec<u64> = st.words.clone();
            let mut row = [0f32; 2];
            let u = obs(key, 0, now);
            s.plan()
                .build_row(&words, st.record.prev_event_ns, &u.obs(), &mut row);
            out.push((key, st.record.observations, st.record.source, row));
        }
    }
    out
}

/// A partition's keys, hot and spilled, leave one state and arrive in another exactly as they
/// were (counts, windows, source); the other partition's keys never move; a second import of
/// the same keys, an image of another partition and a torn image are refused whole.
#[test]
fn a_partitions_state_moves_between_states_whole_and_alone() {
    let base = std::env::temp_dir().join(format!("sluice-partition-move-{}", std::process::id()));
    let p = plan();
    let (a, b) = (7u64, 9u64);
    let mut from = state(
        8,
        Some(Spill::open(&base.join("from"), 1 << 20, p.words(), None).unwrap()),
        0,
        false,
    );
    // 40 keys (more than the 8 hot slots: most are spilled), alternating partitions, a few
    // events each at different times so windows differ per key.
    for round in 0..3u64 {
        for key in 0..40u64 {
            let source = if key % 2 == 0 { a } else { b };
            let ts = (round * 3 + key % 5) * SEC;
            apply(&mut from, &obs_from(key, round, ts, source), ts);
        }
    }
    assert!(
        from.spilled_len() > 0,
        "the test must move spilled records too"
    );
    let now = 20 * SEC;
    let before = every_key(&from, 0..40, now);
    assert_eq!(before.len(), 40);

    let image = from.export_partition(a).unwrap();
    assert_eq!(image.records, 20);
    // The one-pass export of several partitions (a handover's kept copy) holds the same
    // records, hot and spilled (in its own order), and gives up past its bound.
    let sorted = |img: &crate::state::partition::PartitionImage| {
        let size = crate::state::record::image_bytes(p.words());
        let mut v: Vec<Vec<u8>> = img.bytes.chunks(size).map(<[u8]>::to_vec).collect();
        v.sort();
        v
    };
    let both = from.export_partitions(&[b, a], 40).unwrap().unwrap();
    assert_eq!((both[0].records, both[1].records), (20, 20));
    assert_eq!(sorted(&both[1]), sorted(&image));
    assert_eq!(sorted(&both[0]), sorted(&from.export_partition(b).unwrap()));
    assert!(from.export_partitions(&[b, a], 39).unwrap().is_none());
    assert!(from.export_partitions(&[a], 19).unwrap().is_none());
    assert!(from.export_partitions(&[a], 20).unwrap().is_some());
    assert_eq!(from.drop_partition(a).unwrap(), 20);
    let left = every_key(&from, 0..40, now);
    assert!(left.iter().all(|k| k.2 == b), "only b's keys stay");
    assert_eq!(
        left,
        before
            .iter()
            .filter(|k| k.2 == b)
            .cloned()
            .collect::<Vec<_>>()
    );

    let mut to = state(
        4,
        Some(Spill::open(&base.join("to"), 1 << 20, p.words(), None).unwrap()),
        0,
        false,
    );
    to.track_changes();
    let changes_before = to.stats.changes();
    assert_eq!(to.import_partition(a, &image.bytes).unwrap(), 20);
    // An import is a change a checkpointer sees (its "anything changed?" stamp), though no
    // event came: the partition moving in is checkpointed without waiting for its traffic.
    assert_eq!(to.stats.changes() - changes_before, 20);
    // Every imported key is a change, the 16 that found no hot slot too (listed gone: the
    // change set takes their images from the spill store).
    let mut changed: Vec<u64> = to.changes.dirty.clone();
    changed.extend(to.changes.gone.iter().map(|&(k, _)| k));
    changed.sort_unstable();
    let mut imported: Vec<u64> = before.iter().filter(|k| k.2 == a).map(|k| k.0).collect();
    imported.sort_unstable();
    assert_eq!(changed, imported);
    assert_eq!((to.changes.dirty.len(), to.changes.gone.len()), (4, 16));
    let moved = every_key(&to, 0..40, now);
    assert_eq!(
        moved,
        before
            .iter()
            .filter(|k| k.2 == a)
            .cloned()
            .collect::<Vec<_>>()
    );
    // The moved keys go on counting where they were.
    let (n, _) = apply(&mut to, &obs_from(0, 9, 21 * SEC, a), 21 * SEC).unwrap();
    assert_eq!(n, 4);

    // Refusals leave the state as it was.
    assert!(matches!(
        to.import_partition(a, &image.bytes),
        Err(partition::PartitionError::Present { .. })
    ));
    let mut other = state(64, None, 0, false);
    assert!(matches!(
        other.import_partition(b, &image.bytes),
        Err(partition::PartitionError::OtherSource { .. })
    ));
    assert!(matches!(
        other.import_partition(a, &image.bytes[..image.bytes.len() - 1]),
        Err(partition::PartitionError::Torn { .. })
    ));
    assert_eq!(other.hot_len(), 0);
    // Too many for a spill-less state's free slots: refused before any lands.
    let mut small = state(8, None, 0, false);
    assert!(matches!(
        small.import_partition(a, &image.bytes),
        Err(partition::PartitionError::State(StateError::Full { .. }))
    ));
    assert_eq!(small.hot_len(), 0);
    let _ = std::fs::remove_dir_all(&base);
}

/// A rebuilt partition goes into a serving state a slice at a time (the shard's other keys
/// untouched), waits while a snapshot runs, and ends with every key in, as it was.
#[test]
fn a_read_changelog_goes_in_a_slice_at_a_time_and_waits_out_snapshots() {
    use crate::egress::kafka::rebuild::{ChangelogRead, Import};
    let (a, b) = (7u64, 9u64);
    let mut from = state(64, None, 0, false);
    for key in 0..25u64 {
        apply(&mut from, &obs_from(key, 0, (key % 5) * SEC, a), 5 * SEC);
    }
    let now = 6 * SEC;
    let want = every_key(&from, 0..25, now);
    let image = from.export_partition(a).unwrap();
    // The shard's state: one key of its own partition b, being served.
    let mut to = state(64, None, 0, false);
    apply(&mut to, &obs_from(100, 0, SEC, b), SEC);
    let read = ChangelogRead {
        partitions: vec![(a, 3, image.bytes)],
        ..ChangelogRead::default()
    };
    let mut import = Import::new(read, "t-state");
    let mut steps = 0;
    while !import.step(&mut to, 10).unwrap() {
        steps += 1;
        assert!(
            to.hot_len() <= 1 + 10 * steps,
            "a step put more than 10 keys in"
        );
        // Key 100 of partition b goes on being served between steps.
        apply(&mut to, &obs_from(100, steps as u64, SEC, b), SEC);
        if steps == 1 {
            let keys_before = to.hot_len();
            let mark = Arc::new(SpillMark::default());
            to.begin_snapshot(true, Vec::new(), Vec::new(), 0, mark);
            assert!(!import.step(&mut to, 10).unwrap());
            assert_eq!(
                to.hot_len(),
                keys_before,
                "nothing goes in while a snapshot runs"
            );
            while !to.snapshot_step(64) {}
            let _ = to.end_snapshot();
        }
    }
    assert_eq!(steps, 2, "25 keys, 10 a step");
    assert_eq!(import.rebuilt().keys, 25);
    assert_eq!(every_key(&to, 0..25, now), want);
    assert_eq!(to.locate(100).unwrap().unwrap().record.observations, 3);
}

/// The own older checkpoint's keys of a partition, as the base a changelog tail is read over:
/// every key once, keyed by its own key, its image whole; a torn export is refused.
#[test]
fn a_partitions_own_keys_become_a_copy_at_the_recorded_position() {
    use crate::egress::kafka::rebuild::local_copy;
    let (a, b) = (7u64, 9u64);
    let mut from = state(64, None, 0, false);
    for key in 0..30u64 {
        let source = if key % 3 == 0 { b } else { a };
        apply(&mut from, &obs_from(key, 0, SEC, source), SEC);
    }
    let words = from.plan().words();
    let image = from.export_partition(a).unwrap();
    let copy = local_copy(&image, words, 41).unwrap();
    assert!(copy.local);
    assert_eq!(copy.next_offset, 41);
    let keys: std::collections::BTreeSet<u64> = copy.images.keys().copied().collect();
    assert_eq!(keys, (0..30).filter(|k| k % 3 != 0).collect());
    for (key, img) in &copy.images {
        assert_eq!(img.len(), crate::state::image_bytes(words));
        let rec = crate::state::Record::from_bytes(&img[..crate::state::RECORD_BYTES]).unwrap();
        assert_eq!((rec.key, rec.source), (*key, a));
    }
    let mut torn = image.clone();
    torn.bytes.pop();
    assert!(local_copy(&torn, words, 41).is_none());
}
