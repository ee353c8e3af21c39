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

/// One cycle: the datagrams, then the cycle's end.
fn cycle(c: &mut ShardCore, datagrams: &[Vec<(u64, u64, bool)>], sink: &mut dyn ScoreSink) {
    for d in datagrams {
        let bytes = datagram(d);
        let dg = Datagram {
            payload: &bytes,
            src: client(),
            recv_ns: 1_000,
            truncated: false,
        };
        c.on_datagram(dg, 2_000, sink);
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
    ) {
        // The production store on the waiting side, the twin on the other.
        let mut waiting = core_on(hot, wait, "prop", true);
        let mut direct = core(hot, 0, "prop");
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
        }
        for sink in [&s_wait, &s_direct] {
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
