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
