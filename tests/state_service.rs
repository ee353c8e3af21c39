//! Spill and state inspection through the running service: real sockets, real RocksDB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

/// Threads of this process (the service runs in it) whose name starts with `prefix`, each
/// with its scheduling policy (`/proc/<tid>/stat` field 41: 0 normal, 5 SCHED_IDLE).
fn threads_named(prefix: &str) -> Vec<(String, u32)> {
    let mut found: Vec<(String, u32)> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the ")" that closes the name start at field 3.
            let policy = stat.rsplit_once(')')?.1.split_whitespace().nth(41 - 3)?;
            Some((name.trim().to_owned(), policy.parse().ok()?))
        })
        .filter(|(n, _)| n.starts_with(prefix))
        .collect();
    found.sort();
    found
}

/// `threads_named` once it lists `want`, or after 30 s. A thread sets its own name once it
/// runs (Rust's `Builder::name`; until then /proc shows its parent's), which may be after
/// the service answered: looking at once can miss it.
fn threads_named_soon(prefix: &str, want: &[(String, u32)]) -> Vec<(String, u32)> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let found = threads_named(prefix);
        if found == want || std::time::Instant::now() > give_up {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn more_keys_than_hot_slots_still_get_exact_counts() {
    exact_counts_with("thread");
}

#[test]
fn more_keys_than_hot_slots_get_exact_counts_reading_on_the_shard_thread() {
    exact_counts_with("shard");
}

#[test]
fn more_keys_than_hot_slots_get_exact_counts_reading_on_an_idle_thread_on_the_shards_cpu() {
    exact_counts_with("idle");
}

/// 2000 keys through 64 hot slots a shard, with the batched cold reads made where
/// `state.cold_reader` says.
fn exact_counts_with(reader: &str) {
    let dir =
        std::env::temp_dir().join(format!("sluice-state-svc-{}-{reader}", std::process::id()));
    let dir_set = format!("state.dir={}", dir.display());
    let reader_set = format!("state.cold_reader={reader}");
    let running = common::start(
        "io_uring",
        &[
            "shards.count=2",
            "state.hot_capacity=64",
            &dir_set,
            "state.spill_cache_bytes=1048576",
            &reader_set,
        ],
    );
    // One reader thread a shard, or none. (Tests of one binary run in processes of their
    // own under nextest, so no other test's threads are counted.)
    let policy = if reader == "idle" { 5 } else { 0 };
    let want: Vec<(String, u32)> = match reader {
        "shard" => vec![],
        _ => vec![
            ("sluice-cold-0".into(), policy),
            ("sluice-cold-1".into(), policy),
        ],
    };
    assert_eq!(threads_named_soon("sluice-cold-", &want), want);
    let mut client = common::Client::new(running.local_addr, 4);
    // 2000 keys, three rounds each, in batches of 10 keys sharing a socket.
    for round in 0..3u64 {
        for start in (0..2000u64).step_by(40) {
            for sock in 0..4u64 {
                let batch: Vec<(u64, bool)> =
                    (0..10u64).map(|j| (start + sock + 4 * j, false)).collect();
                client.send(&batch);
            }
            if start % 400 == 0 {
                client.pump_for(std::time::Duration::from_millis(2));
            }
        }
        let _ = round;
    }
    let scores = client.collect(client.replies_wanted());
    client.check(&scores);
    assert_eq!(scores.len(), 6000);

    let spilled = running.state_get(1999).unwrap();
    assert!(spilled.contains("observations=3"), "{spilled}");
    let states: Vec<String> = (0..2000u64)
        .step_by(97)
        .map(|k| running.state_get(k).unwrap())
        .collect();
    assert!(
        states.iter().all(|s| s.contains("observations=3")),
        "{states:?}"
    );
    assert!(
        states.iter().any(|s| s.contains(", spilled)")),
        "some keys live in RocksDB: {states:?}"
    );
    assert!(running.state_get(123_456_789).unwrap().contains("no state"));

    let metrics = format!("http://{}/metrics", running.metrics_addr.unwrap());
    assert!(
        common::scrape(&metrics, "sluice_state_cold_reads_total") > 0,
        "batched cold reads landed"
    );
    assert_eq!(
        common::scrape(&metrics, "sluice_state_cold_waiting_events"),
        0
    );
    let report = running.stop().unwrap();
    assert!(
        report.spills > 0 && report.reloads > 0,
        "spills {} reloads {}",
        report.spills,
        report.reloads
    );
    assert_eq!(
        report.hot_keys + report.spilled_keys,
        2000,
        "each key in exactly one place"
    );
    assert_eq!(
        report.events_dropped_by("state_full") + report.events_dropped_by("state_error"),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One Observation for each key in 0..keys (a multiple of 40), ten keys a datagram from the
/// socket that owns them.
fn one_event_each(client: &mut common::Client, keys: u64) {
    for start in (0..keys).step_by(40) {
        for sock in 0..4u64 {
            let batch: Vec<(u64, bool)> =
                (0..10u64).map(|j| (start + sock + 4 * j, false)).collect();
            client.send(&batch);
        }
        client.pump_for(std::time::Duration::from_millis(1));
    }
}

/// Spilled keys that get no more events are deleted once idle past the TTL (the spill sweep),
/// not kept on disk for good: 1520 keys through 64 hot slots a shard, then silence; every key
/// leaves the hot table and the spill store, counted as expired, and comes back fresh.
#[test]
fn spilled_keys_idle_past_the_ttl_leave_the_store_without_an_event() {
    let dir = std::env::temp_dir().join(format!("sluice-state-sweep-{}", std::process::id()));
    let dir_set = format!("state.dir={}", dir.display());
    let running = common::start(
        "io_uring",
        &[
            "shards.count=2",
            "state.hot_capacity=64",
            &dir_set,
            "time.mode=processing",
            "state.ttl_ms=2000",
            // A slow scan and small batches: the shard takes many cycles to delete them all.
            "state.spill_sweep_keys_per_s=20000",
            "state.spill_sweep_keys_per_cycle=8",
        ],
    );
    let want: Vec<(String, u32)> = ["sluice-sweep-0", "sluice-sweep-1"]
        .map(|n| (n.to_string(), 0))
        .into();
    assert_eq!(threads_named_soon("sluice-sweep-", &want), want);
    let keys = 1520u64;
    let mut client = common::Client::new(running.local_addr, 4);
    one_event_each(&mut client, keys);
    let scores = client.collect(client.replies_wanted());
    client.check(&scores);
    let metrics = format!("http://{}/metrics", running.metrics_addr.unwrap());
    // Most keys were spilled (no more than 128 fit the hot slots): nothing but the spill
    // sweep takes a spilled key out of the store without an event for it.
    assert!(
        common::scrape(&metrics, "sluice_state_spills_total") > 0,
        "no key was spilled"
    );
    // Nothing more is sent: the hot sweep empties the hot table, the spill sweep the store.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let (mut spilled, mut hot) = (1, 1);
    while (spilled, hot) != (0, 0) && std::time::Instant::now() < give_up {
        std::thread::sleep(std::time::Duration::from_millis(200));
        spilled = common::scrape(&metrics, "sluice_spilled_keys");
        hot = common::scrape(&metrics, "sluice_hot_keys");
    }
    assert_eq!(
        (spilled, hot),
        (0, 0),
        "spilled and hot keys left after the TTL"
    );
    assert_eq!(common::scrape(&metrics, "sluice_state_expired_total"), keys);
    // A key ends spilled once per spill not undone by a reload (a batched read may push out
    // a key it just brought in, which its event then reads back): the keys spilled when the
    // events stopped are exactly the ones the spill sweep deleted; the others were swept from
    // the hot table.
    let spills = common::scrape(&metrics, "sluice_state_spills_total");
    let reloads = common::scrape(&metrics, "sluice_state_reloads_total");
    assert_eq!(
        common::scrape(&metrics, "sluice_state_spill_expired_total"),
        spills - reloads,
        "the spill sweep deleted every key left spilled ({spills} spills, {reloads} reloads)"
    );
    for k in [0, 777, keys - 1] {
        assert!(
            running.state_get(k).unwrap().contains("no state"),
            "key {k}"
        );
    }
    // The keys start over: a new client (its counts from 0) expects count 1 for each.
    let mut again = common::Client::new(running.local_addr, 4);
    one_event_each(&mut again, 200);
    let scores = again.collect(again.replies_wanted());
    again.check(&scores);
    assert_eq!(scores.len(), 200);
    let report = running.stop().unwrap();
    assert_eq!(
        report.events_dropped_by("state_full") + report.events_dropped_by("state_error"),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unusable_state_dir_stops_start_up() {
    let config = common::config("recvmmsg", &["state.dir=/proc/sluice-cannot-write-here"]);
    let err = sluice::app::start(&config)
        .err()
        .expect("start-up must fail")
        .to_string();
    assert!(
        // Refused when its lock file cannot be made, before any shard opens its spill store.
        err.contains("state.dir /proc/sluice-cannot-write-here: cannot make it"),
        "{err}"
    );
}
