//! Keyed state with a real RocksDB spill store: far more keys than the hot table holds, every
//! count and window exact, every record in exactly one place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice::features::FeaturePlan;
use sluice::state::{HotTable, KeyedState, Outcome, Spill, Update};
use sluice::wire::EventKind;

const SEC: u64 = 1_000_000_000;

fn obs(key: u64, ts: u64) -> Update<'static> {
    Update {
        key,
        seq: ts,
        ts_ns: ts,
        kind: EventKind::Observation,
        amount: 2.0,
        label: -1.0,
        features: &[],
        source: 0,
    }
}

fn plan() -> FeaturePlan {
    FeaturePlan::compile(
        &[
            "count(lifetime)".to_string(),
            "sum(amount, sliding 10s by 1s)".to_string(),
        ],
        0,
    )
    .unwrap()
}

fn state(capacity: usize, spill: Option<Spill>) -> KeyedState {
    let p = plan();
    KeyedState::new(HotTable::new(capacity, p.words()), spill, p, 0, false)
}

/// Apply and return (observations, features).
fn apply(s: &mut KeyedState, u: &Update<'_>) -> Result<(u64, [f32; 2]), String> {
    match s.apply(u, u.ts_ns).map_err(|e| e.to_string())? {
        Outcome::Applied(slot) => {
            let (head, words) = s.slot(slot);
            let mut row = [0f32; 2];
            s.plan()
                .build_row(words, head.prev_event_ns, &u.obs(), &mut row);
            Ok((head.observations, row))
        }
        Outcome::Duplicate => Err("duplicate".into()),
        Outcome::OtherSource(s) => Err(format!("other source {s}")),
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()))
}

#[test]
fn a_million_keys_through_a_thousand_hot_slots_keep_every_count() {
    let dir = temp_dir("spill-1m");
    let spill = Spill::open(&dir, 8 << 20, plan().words(), None).unwrap();
    let mut state = state(1_000, Some(spill));
    const KEYS: u64 = 1_000_000;
    // Pass 1 in order, pass 2 in reverse: apart from the last 1000 keys (still hot), every
    // second event finds its key spilled and brings it back, window words included.
    for k in 0..KEYS {
        assert_eq!(apply(&mut state, &obs(k, SEC)).unwrap(), (1, [1.0, 2.0]));
    }
    for k in (0..KEYS).rev() {
        assert_eq!(
            apply(&mut state, &obs(k, 2 * SEC)).unwrap(),
            (2, [2.0, 4.0]),
            "key {k}"
        );
    }
    assert_eq!(
        state.hot_len() as u64 + state.spilled_len(),
        KEYS,
        "each record in exactly one place"
    );
    assert_eq!(state.hot_len(), 1_000);
    // Which 1000 stay hot is CLOCK's choice; the books must balance whatever it chose:
    // every insertion past the first 1000 evicts one record.
    let st = state.stats;
    assert!(st.reloads >= KEYS - 1_000, "{st:?}");
    assert_eq!(st.spills, (KEYS - 1_000) + st.reloads, "{st:?}");
    assert_eq!(st.hot_hits + st.hot_misses, 2 * KEYS, "{st:?}");
    for k in 0..KEYS {
        let r = state
            .locate(k)
            .unwrap()
            .expect("every key is somewhere")
            .record;
        assert_eq!(
            (r.key, r.observations, r.first_event_ns, r.last_event_ns),
            (k, 2, SEC, 2 * SEC)
        );
    }
    drop(state);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_spill_directory_a_full_table_refuses_new_keys() {
    let mut state = state(2, None);
    apply(&mut state, &obs(1, 1)).unwrap();
    apply(&mut state, &obs(2, 1)).unwrap();
    let err = apply(&mut state, &obs(3, 1)).unwrap_err();
    assert!(
        err.contains("state.hot_capacity = 2") && err.contains("state.dir"),
        "{err}"
    );
    assert_eq!(apply(&mut state, &obs(1, 2)).unwrap().0, 2);
}

#[test]
fn spill_store_opened_without_a_checkpoint_starts_empty() {
    let dir = temp_dir("spill-reopen");
    let words = plan().words();
    {
        let mut s = Spill::open(&dir, 1 << 20, words, None).unwrap();
        let mut state = state(1, None);
        apply(&mut state, &obs(5, 1)).unwrap();
        let st = state.locate(5).unwrap().unwrap();
        s.put(&st.record, &st.words).unwrap();
        let mut w = vec![0; words];
        assert_eq!(s.peek(5, &mut w).unwrap().map(|r| r.observations), Some(1));
        assert_eq!(w, st.words);
    }
    let s = Spill::open(&dir, 1 << 20, words, None).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.peek(5, &mut vec![0; words]).unwrap(), None);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
