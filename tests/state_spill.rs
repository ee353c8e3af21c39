//! Keyed state with a real RocksDB spill store: far more keys than the hot table holds, every
//! count exact, every record in exactly one place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice::state::{HotTable, KeyedState, Spill, Update};
use sluice::wire::EventKind;

fn obs(key: u64, ts: u64) -> Update {
    Update {
        key,
        ts_ns: ts,
        kind: EventKind::Observation,
        amount: 2.0,
        label: -1.0,
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()))
}

#[test]
fn a_million_keys_through_a_thousand_hot_slots_keep_every_count() {
    let dir = temp_dir("spill-1m");
    let spill = Spill::open(&dir, 8 << 20).unwrap();
    let mut state = KeyedState::new(HotTable::new(1_000, 0.1), Some(spill));
    const KEYS: u64 = 1_000_000;
    // Pass 1 in order, pass 2 in reverse: apart from the last 1000 keys (still hot), every
    // second event finds its key spilled and brings it back.
    for k in 0..KEYS {
        assert_eq!(state.apply(&obs(k, 1)).unwrap().observations, 1);
    }
    for k in (0..KEYS).rev() {
        assert_eq!(state.apply(&obs(k, 2)).unwrap().observations, 2, "key {k}");
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
        let r = state.get(k).unwrap().expect("every key is somewhere");
        assert_eq!(
            (r.key, r.observations, r.first_event_ns, r.last_event_ns),
            (k, 2, 1, 2)
        );
    }
    drop(state);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_spill_directory_a_full_table_refuses_new_keys() {
    let mut state = KeyedState::new(HotTable::new(2, 0.1), None);
    state.apply(&obs(1, 1)).unwrap();
    state.apply(&obs(2, 1)).unwrap();
    let err = state.apply(&obs(3, 1)).unwrap_err().to_string();
    assert!(
        err.contains("state.hot_capacity = 2") && err.contains("state.dir"),
        "{err}"
    );
    assert_eq!(state.apply(&obs(1, 2)).unwrap().observations, 2);
}

#[test]
fn spill_store_starts_empty_and_survives_nothing_from_a_previous_run() {
    let dir = temp_dir("spill-reopen");
    {
        let mut s = Spill::open(&dir, 1 << 20).unwrap();
        let mut state = KeyedState::new(HotTable::new(1, 0.1), None);
        state.apply(&obs(5, 1)).unwrap();
        s.put(&state.get(5).unwrap().unwrap()).unwrap();
        assert_eq!(s.peek(5).unwrap().map(|r| r.observations), Some(1));
    }
    let s = Spill::open(&dir, 1 << 20).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.peek(5).unwrap(), None);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
