use super::super::{HotTable, KeyedState, Spill, Update};
use crate::features::FeaturePlan;
use crate::state::Outcome;
use crate::wire::EventKind;

const SEC: u64 = 1_000_000_000;
const TTL: u64 = 10 * SEC;

fn plan() -> FeaturePlan {
    FeaturePlan::compile(&["count(lifetime)".to_string()], 0).unwrap()
}

/// A state of `capacity` hot slots over the in-memory spill twin, TTL 10 s, sweeping up to
/// `max` names a call.
fn state(dir: &std::path::Path, capacity: usize, max: usize) -> KeyedState {
    let p = plan();
    let spill = Spill::open_memory(dir, p.words(), None).unwrap();
    let mut s = KeyedState::new(
        HotTable::new(capacity, p.words()),
        Some(spill),
        p,
        TTL,
        false,
    );
    s.track_changes();
    s.sweep_spilled_keys(max);
    s
}

fn obs(key: u64, ts_ns: u64) -> Update<'static> {
    Update {
        key,
        seq: 0,
        ts_ns,
        kind: EventKind::Observation,
        amount: 1.0,
        label: -1.0,
        features: &[],
        source: 7,
    }
}

/// The key's observation count after one more event at `now`.
fn count_after(s: &mut KeyedState, key: u64, now: u64) -> u64 {
    match s.apply(&obs(key, now), now).unwrap() {
        Outcome::Applied(slot) => s.slot(slot).0.observations,
        other => panic!("key {key}: {other:?}"),
    }
}

/// Take an incremental snapshot (its spill checkpoint already taken) and return the
/// (key, source) pairs it lists gone, sorted.
fn snapshot(s: &mut KeyedState) -> Vec<(u64, u64)> {
    let mark = std::sync::Arc::new(crate::state::SpillMark::default());
    mark.set(false);
    s.begin_snapshot(false, Vec::with_capacity(1 << 20), Vec::new(), 0, mark);
    while !s.snapshot_step(1 << 10) {}
    let taken = s.end_snapshot().unwrap();
    assert!(!taken.overflowed);
    let image = crate::state::image_bytes(plan().words());
    let gone_at = taken.records as usize * image;
    let mut gone: Vec<(u64, u64)> = taken.out[gone_at..]
        .chunks_exact(16)
        .take(taken.gone as usize)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().unwrap()),
                u64::from_le_bytes(c[8..].try_into().unwrap()),
            )
        })
        .collect();
    gone.sort_unstable();
    gone
}

fn location(s: &KeyedState, key: u64) -> Option<&'static str> {
    s.locate(key).unwrap().map(|k| k.location)
}

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("sluice-sweep-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn only_spilled_keys_idle_past_the_ttl_and_not_busy_are_deleted() {
    let d = Dir::new("only");
    let mut s = state(&d.0, 4, 256);
    // Keys 0..32 last seen at 1 s, keys 32..64 at 20 s (each twice: two observations); the
    // 4 hot slots hold a few of the newest, the rest are spilled.
    for t in [SEC, SEC + 1] {
        for key in 0..32 {
            count_after(&mut s, key, t);
        }
    }
    for t in [20 * SEC, 20 * SEC + 1] {
        for key in 32..64 {
            count_after(&mut s, key, t);
        }
    }
    let before = s.spilled_len();
    let expired_before = s.stats.expired;
    assert!(before >= 56, "most keys spilled: {before}");
    // A snapshot now takes the change lists so far: the next one holds only the sweep's.
    snapshot(&mut s);
    // At 25 s keys 0..32 are idle 24 s, keys 32..64 only 5 s. Key 5 has an event waiting for a
    // cold read (busy); keys 64..70 were never seen. Names arrive unsorted and repeated.
    let mut names: Vec<u64> = (0..70).rev().collect();
    names.extend([3, 3, 40]);
    let deleted = s.expire_spilled(&names, &[5], 25 * SEC).unwrap();
    let want: Vec<u64> = (0..32).filter(|&k| k != 5).collect();
    assert_eq!(deleted, want.len() as u64);
    for key in 0..64 {
        let loc = location(&s, key);
        if want.contains(&key) {
            assert_eq!(loc, None, "key {key} idle past the TTL");
        } else {
            assert!(loc.is_some(), "key {key} kept");
        }
    }
    assert_eq!(location(&s, 5), Some("spilled"));
    assert_eq!(s.spilled_len(), before - deleted);
    assert_eq!(s.stats.expired, expired_before + deleted);
    assert_eq!(s.stats.spill_expired, deleted);
    // Each deletion is a change the next incremental checkpoint lists gone, with the key's
    // source (a changelog's tombstone goes to that partition).
    assert_eq!(
        snapshot(&mut s),
        want.iter().map(|&k| (k, 7)).collect::<Vec<_>>()
    );
    // A deleted key starts over on its next event, as it would have without the sweep; the
    // busy one expires on its event instead (counted then).
    assert_eq!(count_after(&mut s, 0, 26 * SEC), 1);
    assert_eq!(count_after(&mut s, 5, 26 * SEC), 1);
    assert_eq!(s.stats.expired, expired_before + deleted + 1);
    assert_eq!(count_after(&mut s, 40, 26 * SEC), 3, "a key within the TTL");
}

#[test]
fn a_call_looks_at_no_more_names_than_its_bound() {
    let d = Dir::new("bound");
    let mut s = state(&d.0, 2, 3);
    for key in 0..20 {
        count_after(&mut s, key, SEC);
    }
    let names: Vec<u64> = (0..20).collect();
    let deleted = s.expire_spilled(&names, &[], 30 * SEC).unwrap();
    assert!(deleted <= 3 && deleted > 0, "deleted {deleted}");
}

#[test]
fn a_stale_name_deletes_nothing() {
    let d = Dir::new("stale");
    let mut s = state(&d.0, 2, 16);
    count_after(&mut s, 1, SEC);
    for key in 10..14 {
        count_after(&mut s, key, 2 * SEC);
    }
    assert_eq!(location(&s, 1), Some("spilled"));
    // The scanner saw key 1 idle at 12 s; before the shard gets the name the key comes back
    // (an event at 12 s: it starts over) and is spilled again, its stored record now fresh.
    assert_eq!(count_after(&mut s, 1, 12 * SEC), 1);
    for key in 20..24 {
        count_after(&mut s, key, 12 * SEC);
    }
    assert_eq!(location(&s, 1), Some("spilled"));
    assert_eq!(s.expire_spilled(&[1], &[], 13 * SEC).unwrap(), 0);
    assert_eq!(count_after(&mut s, 1, 13 * SEC), 2);
}

#[test]
fn a_record_no_event_was_applied_to_is_not_expired() {
    let d = Dir::new("untouched");
    let mut s = state(&d.0, 2, 16);
    let p = plan();
    let words = vec![0u64; p.words()];
    // Spilled before any event applied to it (a fresh record a batch moved out again).
    let rec = crate::state::Record::fresh(9, SEC);
    s.restore(rec, &words).unwrap();
    for key in 10..14 {
        count_after(&mut s, key, SEC);
    }
    assert_eq!(location(&s, 9), Some("spilled"));
    assert_eq!(s.expire_spilled(&[9], &[], 60 * SEC).unwrap(), 0);
}

#[test]
fn with_no_ttl_or_no_bound_nothing_is_deleted() {
    let d = Dir::new("off");
    let p = plan();
    let spill = Spill::open_memory(&d.0, p.words(), None).unwrap();
    let mut s = KeyedState::new(HotTable::new(2, p.words()), Some(spill), p, 0, false);
    s.sweep_spilled_keys(16);
    for key in 0..8 {
        count_after(&mut s, key, SEC);
    }
    assert_eq!(s.expire_spilled(&[0, 1, 2], &[], 1_000 * SEC).unwrap(), 0);
    let d2 = Dir::new("off-bound");
    let mut s = state(&d2.0, 2, 0);
    for key in 0..8 {
        count_after(&mut s, key, SEC);
    }
    assert_eq!(s.expire_spilled(&[0, 1, 2], &[], 1_000 * SEC).unwrap(), 0);
}
