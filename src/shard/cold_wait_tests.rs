//! Events waiting for batched cold reads (`cold_wait`, `state::cold_reads`): one shard core
//! over the in-memory spill store, fed datagrams in cycles, against a per-key model and
//! against the same core reading each miss on its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use proptest::prelude::*;

use super::tests::datagram;
use super::*;
use crate::config::Config;
use crate::infer::{build_primary, ShardModel};
use crate::route::Mesh;
use crate::state::Spill;

type Sink = Vec<(ReplyTo, PendingScore)>;

struct Core {
    core: ShardCore,
    counters: Arc<ShardCounters>,
    full: Arc<AtomicBool>,
    dir: std::path::PathBuf,
}

impl Drop for Core {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One shard, `hot` slots, misses waiting up to `wait` events (0: read on arrival), over
/// the in-memory spill store.
fn core(hot: usize, wait: usize, name: &str) -> Core {
    core_on(hot, wait, name, false)
}

/// The same; `rocks`: over RocksDB (the production store; no failure switch).
fn core_on(hot: usize, wait: usize, name: &str, rocks: bool) -> Core {
    let sets: Vec<String> = vec![
        "model.kind=linear".into(),
        format!("state.hot_capacity={hot}"),
        format!("state.cold_wait_max={wait}"),
    ];
    let config = Config::from_layers(None, &sets).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "sluice-cold-wait-{}-{name}-{hot}-{wait}",
        std::process::id()
    ));
    let words = config.feature_plan().unwrap().words();
    let full = Arc::new(AtomicBool::new(false));
    let spill = if rocks {
        Spill::open(&dir, 1 << 20, words, None).unwrap()
    } else {
        Spill::open_memory_failing(&dir, words, None, full.clone()).unwrap()
    };
    let counters = Arc::new(ShardCounters::default());
    let rings = Mesh::build(1, config.route.ring_capacity)
        .into_iter()
        .next()
        .unwrap();
    let model = ShardModel::new(&config, build_primary(&config, None).unwrap(), 1);
    let state = KeyedState::from_config(&config, Some(spill)).unwrap();
    assert_eq!(state.cold_batch_max(), wait);
    Core {
        core: ShardCore::new(0, 1, &config, rings, model, state, 0, counters.clone()),
        counters,
        full,
        dir,
    }
}

fn client() -> SocketAddr {
    "127.0.0.1:9999".parse().unwrap()
}

/// Wakers for one shard (a reader thread wakes its shard through them).
fn wakers() -> Arc<Vec<crate::wake::Waker>> {
    Arc::new(vec![crate::wake::Waker::new().unwrap()])
}

/// One datagram of (key, seq, feedback) events into the core.
fn send(c: &mut ShardCore, events: &[(u64, u64, bool)], sink: &mut dyn ScoreSink) {
    let bytes = datagram(events);
    let dg = Datagram {
        payload: &bytes,
        src: client(),
        recv_ns: 1_000,
        truncated: false,
    };
    c.on_datagram(dg, 2_000, sink);
}

/// One cycle: the datagrams, then the cycle's end.
fn cycle(c: &mut ShardCore, datagrams: &[Vec<(u64, u64, bool)>], sink: &mut dyn ScoreSink) {
    for d in datagrams {
        send(c, d, sink);
    }
    c.finish_cycle(3_000, sink);
}

/// (observations, feedbacks) of a key wherever it is; panics if it is nowhere.
fn counts(c: &ShardCore, key: u64) -> (u64, u64) {
    let s = c.locate(key).unwrap().unwrap();
    (s.record.observations, s.record.feedbacks)
}

proptest! {
    // Each case opens a RocksDB store (~1 s here): few cases, each with many cycles.
    #![proptest_config(ProptestConfig::with_cases(20))]

    /// Random cycles over more keys than hot slots: every Observation gets exactly one Score,
    /// with its key's count as of that event (per-key order kept however the waits and the
    /// batches fall), and the state ends equal to the model's and to that of a core that
    /// reads each miss on its own.
    #[test]
    fn waiting_events_keep_per_key_order_and_each_gets_one_score(
        hot in 2usize..10,
        wait in prop::sample::select(vec![1usize, 2, 3, 8, 64]),
        cycles in prop::collection::vec(
            prop::collection::vec(prop::collection::vec((0u64..24, 0u8..5), 1..5), 1..4),
            1..30,
        ),
        lands in prop::collection::vec(0u8..4, 1..16),
    ) {
        // The production store on the waiting side, the twin on the other.
        let mut waiting = core_on(hot, wait, "prop", true);
        let mut direct = core(hot, 0, "prop");
        // Reads made off the shard: when the test says (`lands` picks, after each datagram,
        // whether the read out is made and whether the cycle ends), and on a reader thread.
        let mut deferred = core(hot, wait, "prop-deferred");
        let r = ColdReader::deferred(deferred.core.state());
        deferred.core.use_cold_reader(r);
        let mut threaded = core_on(hot, wait, "prop-thread", true);
        let r = ColdReader::thread(threaded.core.state(), 0, wakers(), false).unwrap();
        threaded.core.use_cold_reader(r);
        let mut turn = 0usize;
        let (mut s_deferred, mut s_thread) = (Sink::new(), Sink::new());
        let mut expect: HashMap<u64, u64> = HashMap::new();
        let mut model: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut seq = 0u64;
        let (mut s_wait, mut s_direct) = (Sink::new(), Sink::new());
        for c in &cycles {
            let datagrams: Vec<Vec<(u64, u64, bool)>> = c
                .iter()
                .map(|d| {
                    d.iter()
                        .map(|&(k, f)| {
                            seq += 1;
                            let key = k * 7919 + 3;
                            let feedback = f == 0;
                            let m = model.entry(key).or_default();
                            if feedback {
                                m.1 += 1;
                            } else {
                                m.0 += 1;
                                expect.insert(seq, m.0);
                            }
                            (key, seq, feedback)
                        })
                        .collect()
                })
                .collect();
            cycle(&mut waiting.core, &datagrams, &mut s_wait);
            cycle(&mut direct.core, &datagrams, &mut s_direct);
            cycle(&mut threaded.core, &datagrams, &mut s_thread);
            for d in &datagrams {
                send(&mut deferred.core, d, &mut s_deferred);
                let land = lands[turn % lands.len()];
                turn += 1;
                if land & 1 != 0 {
                    deferred.core.read_cold_deferred();
                }
                if land & 2 != 0 {
                    deferred.core.finish_cycle(3_000, &mut s_deferred);
                }
            }
        }
        deferred.core.settle_cold(&mut s_deferred);
        threaded.core.settle_cold(&mut s_thread);
        prop_assert_eq!(deferred.core.waiting_for_cold(), 0);
        prop_assert_eq!(threaded.core.waiting_for_cold(), 0);
        for (&key, &m) in &model {
            prop_assert_eq!(counts(&deferred.core, key), m, "key {}", key);
            prop_assert_eq!(counts(&threaded.core, key), m, "key {}", key);
        }
        for c in [&deferred.counters, &threaded.counters] {
            for r in DropReason::ALL {
                prop_assert_eq!(c.events_dropped_by(r), 0, "{:?}", r);
            }
        }
        for sink in [&s_wait, &s_direct, &s_deferred, &s_thread] {
            let got: HashMap<u64, u64> =
                sink.iter().map(|(_, p)| (p.score.seq, p.score.count)).collect();
            prop_assert_eq!(got.len(), sink.len(), "a Score twice");
            prop_assert_eq!(&got, &expect);
        }
        for (&key, &m) in &model {
            prop_assert_eq!(counts(&waiting.core, key), m, "key {}", key);
            prop_assert_eq!(counts(&direct.core, key), m, "key {}", key);
        }
        let t = waiting.core.state();
        prop_assert_eq!(t.hot_len() as u64 + t.spilled_len(), model.len() as u64);
        for r in DropReason::ALL {
            prop_assert_eq!(waiting.counters.events_dropped_by(r), 0, "{:?}", r);
        }
        // The waits happened: a key's first Observation finds it cold.
        if !expect.is_empty() {
            prop_assert!(s_wait.iter().any(|(_, p)| p.cold));
        }
    }
}

#[test]
fn a_failed_write_moves_nothing_and_refuses_the_waiting_events_counted() {
    let mut c = core(4, 8, "fail");
    let keys: Vec<u64> = (0..12u64).map(|k| k * 31 + 1).collect();
    let mut sink = Sink::new();
    let first: Vec<_> = keys.iter().map(|&k| vec![(k, k, false)]).collect();
    cycle(&mut c.core, &first, &mut sink);
    assert_eq!(sink.len(), 12);
    let spilled: Vec<u64> = keys
        .iter()
        .copied()
        .filter(|&k| c.core.locate(k).unwrap().unwrap().location == "spilled")
        .collect();
    assert_eq!(spilled.len(), 8);

    // The disk fills: the batch's write fails, its events are refused and counted.
    c.full.store(true, Ordering::Relaxed);
    sink.clear();
    let again: Vec<_> = spilled.iter().map(|&k| vec![(k, 100 + k, false)]).collect();
    cycle(&mut c.core, &again, &mut sink);
    assert!(sink.is_empty(), "{sink:?}");
    assert_eq!(
        c.counters.events_dropped_by(DropReason::StateError),
        spilled.len() as u64
    );
    // Every record where it was, once.
    for &k in &keys {
        assert_eq!(counts(&c.core, k), (1, 0), "key {k}");
    }
    for &k in &spilled {
        assert_eq!(c.core.locate(k).unwrap().unwrap().location, "spilled");
    }
    assert_eq!(c.core.state().hot_len(), 4);
    assert_eq!(c.core.state().spilled_len(), 8);

    // Space again: the same events go through, counted once.
    c.full.store(false, Ordering::Relaxed);
    sink.clear();
    cycle(&mut c.core, &again, &mut sink);
    assert_eq!(sink.len(), spilled.len());
    assert!(sink.iter().all(|(_, p)| p.score.count == 2 && p.cold));
    assert_eq!(
        c.core.state().hot_len() as u64 + c.core.state().spilled_len(),
        12
    );
}

/// A sink that notes the order of Scores and early flushes.
#[derive(Default)]
struct Order(Vec<String>);

impl ScoreSink for Order {
    fn emit(&mut self, _: ReplyTo, s: PendingScore) {
        self.0.push(format!("score {}", s.score.key));
    }
    fn flush_early(&mut self) {
        self.0.push("flush".into());
    }
}

#[test]
fn hot_keys_are_answered_before_the_cold_read() {
    let mut c = core(2, 8, "order");
    let mut sink = Sink::new();
    // 1 and 2 hot, 3 pushes one of them out.
    cycle(
        &mut c.core,
        &[vec![(1, 1, false), (2, 2, false)]],
        &mut sink,
    );
    cycle(&mut c.core, &[vec![(3, 3, false)]], &mut sink);
    let hot: Vec<u64> = [1u64, 2, 3]
        .into_iter()
        .filter(|&k| c.core.locate(k).unwrap().unwrap().location == "hot")
        .collect();
    let cold = [1u64, 2].into_iter().find(|k| !hot.contains(k)).unwrap();
    let mut order = Order::default();
    cycle(
        &mut c.core,
        &[vec![
            (cold, 4, false),
            (hot[0], 5, false),
            (hot[1], 6, false),
        ]],
        &mut order,
    );
    assert_eq!(
        order.0,
        vec![
            format!("score {}", hot[0]),
            format!("score {}", hot[1]),
            "flush".to_owned(),
            format!("score {cold}"),
        ]
    );
}

/// Keys 1 and 2 hot in a table of two, 3 spilled (seen first, pushed out by 1 and 2);
/// each cycle's read landed.
fn two_hot_one_spilled(c: &mut ShardCore, sink: &mut dyn ScoreSink) {
    for (k, seq) in [(3, 1), (1, 2), (2, 3)] {
        cycle(c, &[vec![(k, seq, false)]], sink);
        c.settle_cold(sink);
    }
    assert_eq!(c.locate(3).unwrap().unwrap().location, "spilled");
    assert_eq!(c.locate(1).unwrap().unwrap().location, "hot");
    assert_eq!(c.locate(2).unwrap().unwrap().location, "hot");
}

#[test]
fn a_read_out_does_not_hold_back_hot_keys_and_later_events_on_its_key_land_after_it() {
    let mut c = core(2, 8, "deferred");
    let r = ColdReader::deferred(c.core.state());
    c.core.use_cold_reader(r);
    let mut sink = Sink::new();
    two_hot_one_spilled(&mut c.core, &mut sink);
    sink.clear();

    // 3 is cold: its event waits and the cycle's end hands its read out.
    let mut order = Order::default();
    cycle(&mut c.core, &[vec![(3, 10, false)]], &mut order);
    assert!(order.0.is_empty(), "{:?}", order.0);
    assert_eq!(c.core.waiting_for_cold(), 1);
    // While it is out, hot keys are answered, and a second event on 3 waits behind the first.
    cycle(
        &mut c.core,
        &[vec![(1, 11, false), (3, 12, false), (2, 13, false)]],
        &mut order,
    );
    assert_eq!(order.0, vec!["score 1".to_owned(), "score 2".to_owned()]);
    assert_eq!(c.core.waiting_for_cold(), 2);
    // Not read yet: a cycle's end changes nothing.
    cycle(&mut c.core, &[], &mut order);
    assert_eq!(c.core.waiting_for_cold(), 2);
    // The read lands at the next cycle's end: both events on 3, in order, counts 2 and 3.
    c.core.read_cold_deferred();
    let mut sink = Sink::new();
    cycle(&mut c.core, &[], &mut sink);
    let got: Vec<(u64, u64, bool)> = sink
        .iter()
        .map(|(_, p)| (p.score.seq, p.score.count, p.cold))
        .collect();
    assert_eq!(got, vec![(10, 2, true), (12, 3, true)]);
    assert_eq!(c.core.waiting_for_cold(), 0);
    assert_eq!(counts(&c.core, 3), (3, 0));
    assert_eq!(c.core.locate(3).unwrap().unwrap().location, "hot");
}

#[test]
fn a_full_wait_list_hands_over_a_second_read_and_waits_only_when_two_are_out() {
    // Room for two waiting events.
    let mut c = core(2, 2, "full");
    let r = ColdReader::deferred(c.core.state());
    c.core.use_cold_reader(r);
    let mut sink = Sink::new();
    for k in 10..20u64 {
        cycle(&mut c.core, &[vec![(k, k, false)]], &mut sink);
        c.core.settle_cold(&mut sink);
    }
    assert_eq!(sink.len(), 10);
    sink.clear();
    // Two misses fill the list: handed over at once. Two more fill it again: a second read
    // goes out beside the first (the reader reads one while the shard lands the other).
    send(&mut c.core, &[(10, 20, false), (11, 21, false)], &mut sink);
    send(&mut c.core, &[(12, 22, false), (13, 23, false)], &mut sink);
    assert_eq!(c.core.waiting_for_cold(), 4);
    assert_eq!(c.counters.cold_read_waits.get(), 0);
    // A third full list finds two out: the shard waits for the oldest (a deferred read is
    // made then), lands it and hands over the next. Nothing refused, nothing lost.
    send(&mut c.core, &[(14, 24, false), (15, 25, false)], &mut sink);
    assert_eq!(c.counters.cold_read_waits.get(), 1);
    assert_eq!(c.core.waiting_for_cold(), 4);
    c.core.settle_cold(&mut sink);
    let mut seqs: Vec<u64> = sink.iter().map(|(_, p)| p.score.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![20, 21, 22, 23, 24, 25]);
    assert!(sink.iter().all(|(_, p)| p.score.count == 2));
    for r in DropReason::ALL {
        assert_eq!(c.counters.events_dropped_by(r), 0, "{r:?}");
    }
}

#[test]
fn a_key_with_events_in_a_read_out_is_left_out_of_the_next_and_keeps_its_order() {
    // Hot table of 2, lists of 2: key 3 spilled.
    let mut c = core(2, 2, "skip");
    let r = ColdReader::deferred(c.core.state());
    c.core.use_cold_reader(r);
    let mut sink = Sink::new();
    two_hot_one_spilled(&mut c.core, &mut sink);
    cycle(&mut c.core, &[vec![(4, 4, false)]], &mut sink);
    c.core.settle_cold(&mut sink);
    sink.clear();
    // Read 1 takes 3 and 5 (both cold); read 2's list has 3 again and 6: 3 is left out of
    // read 2 (its events wait in read 1's batch); read 2 reads 6 only.
    send(&mut c.core, &[(3, 30, false), (5, 31, false)], &mut sink);
    send(&mut c.core, &[(3, 32, false), (6, 33, false)], &mut sink);
    assert_eq!(c.core.waiting_for_cold(), 4);
    // Both reads are made (a deferred reader makes them in order) and land at the cycle's
    // end, in order: 3's events count 2 then 3.
    c.core.read_cold_deferred();
    c.core.read_cold_deferred();
    cycle(&mut c.core, &[], &mut sink);
    assert_eq!(c.core.waiting_for_cold(), 0);
    let got: HashMap<u64, u64> = sink
        .iter()
        .map(|(_, p)| (p.score.seq, p.score.count))
        .collect();
    assert_eq!(got.get(&30), Some(&2));
    assert_eq!(got.get(&32), Some(&3));
    assert_eq!(got.get(&31), Some(&1));
    assert_eq!(got.get(&33), Some(&1));
    assert_eq!(counts(&c.core, 3), (3, 0));
    assert!(c.counters.cold_reads.get() >= 2);
}

/// A cold store whose batched read panics (a bug's stand-in); the test calls nothing else.
struct PanickingStore;

impl crate::state::cold::ColdStore for PanickingStore {
    fn put(&self, _: u64, _: &[u8]) -> Result<(), crate::state::SpillError> {
        Ok(())
    }
    fn delete(&self, _: u64) -> Result<(), crate::state::SpillError> {
        Ok(())
    }
    fn peek(
        &self,
        _: u64,
        _: &mut [u64],
    ) -> Result<Option<crate::state::Record>, crate::state::SpillError> {
        Ok(None)
    }
    fn peek_many(
        &self,
        _: &[u64],
        _: &mut crate::state::cold::FoundFn<'_>,
    ) -> Result<(), crate::state::SpillError> {
        panic!("test: the store's batched read panics");
    }
    fn write(&self, _: &crate::state::cold::ColdBatch) -> Result<(), crate::state::SpillError> {
        Ok(())
    }
    fn scan(&self, _: &mut crate::state::cold::ScanFn<'_>) -> Result<(), crate::state::SpillError> {
        Ok(())
    }
    fn scan_from(
        &self,
        _: u64,
        _: usize,
        _: &mut crate::state::cold::ScanFn<'_>,
    ) -> Result<Option<u64>, crate::state::SpillError> {
        Ok(None)
    }
    fn checkpoint(&self, _: &std::path::Path) -> Result<(), crate::state::SpillError> {
        Ok(())
    }
    fn unflushed_bytes(&self) -> u64 {
        0
    }
}

/// A read that panics on the reader thread comes back failed instead of never: its event is
/// refused and counted, the key stays where it was, hot keys are answered, and the next read
/// (same store, same thread) fails the same way — the shard never waits for good.
#[test]
fn a_cold_read_that_panics_on_the_reader_thread_is_refused_counted_and_the_shard_goes_on() {
    let mut c = core(2, 8, "panic");
    let mut sink = Sink::new();
    two_hot_one_spilled(&mut c.core, &mut sink);
    let r = ColdReader::thread_over(c.core.state(), Arc::new(PanickingStore), 0, wakers(), false)
        .unwrap();
    c.core.use_cold_reader(r);
    for round in 1..=2u64 {
        sink.clear();
        cycle(
            &mut c.core,
            &[vec![(3, 10 * round, false), (1, 10 * round + 1, false)]],
            &mut sink,
        );
        // Without the guard this waits forever: the read never comes back.
        c.core.settle_cold(&mut sink);
        let keys: Vec<u64> = sink.iter().map(|(_, p)| p.score.key).collect();
        assert_eq!(keys, vec![1], "round {round}");
        assert_eq!(
            c.counters.events_dropped_by(DropReason::StateError),
            round,
            "round {round}"
        );
        assert_eq!(c.core.locate(3).unwrap().unwrap().location, "spilled");
        assert_eq!(counts(&c.core, 3), (1, 0));
        assert_eq!(counts(&c.core, 1), (1 + round, 0));
    }
}
