//! The core (decode, route, state, features, infer, the shard core and its two delivery
//! sequences) reads no clock and does no I/O: its sources name no clock, file, socket, thread,
//! RocksDB or Kafka client API. A few files of those
//! modules are edges that live there for now, each listed with why; a new file that reaches for
//! one of these fails here.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// What the core must not touch (a `SocketAddr` is a value, not I/O: not listed).
const FORBIDDEN: &[&str] = &[
    "Instant::now",
    "SystemTime",
    "clock::",
    "std::fs",
    "std::thread",
    "UdpSocket",
    "TcpStream",
    "rocksdb",
    "io_uring",
    "rdkafka",
];

/// Files inside the core's folders that are edges, and why.
const EDGES: &[(&str, &str)] = &[
    (
        "state/spill.rs",
        "the RocksDB cold store, behind the `state::cold::ColdStore` trait",
    ),
    (
        "state/cold_memory.rs",
        "the cold store's in-memory twin (simulation): its checkpoint is one file",
    ),
    (
        "state/checkpoint/",
        "the checkpoint writer thread, its files and the restore's reads",
    ),
    (
        "state/resident.rs",
        "reads /proc/meminfo once at start to size the table",
    ),
    (
        "state/snapshot.rs",
        "times (and for the writer, waits on) the rare full spill journal",
    ),
    (
        "state/keyed_tests.rs",
        "tests: a scratch directory for the spill store",
    ),
    (
        "state/spill_sweep_tests.rs",
        "tests: a scratch directory for the spill store's in-memory twin",
    ),
    (
        "infer/onnx.rs",
        "loads a model file on a thread of its own (the load timeout)",
    ),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_core_names_no_clock_file_socket_thread_or_rocksdb() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // The delivery sequences are core too: the service runs them over rdkafka, the crash
    // simulation over its twin broker.
    let mut files = vec![
        src.join("shard/core.rs"),
        src.join("shard/exactly_once.rs"),
        src.join("shard/at_least_once.rs"),
    ];
    for dir in ["wire", "route", "state", "features", "infer"] {
        sources(&src.join(dir), &mut files);
    }
    assert!(
        files.len() > 20,
        "the core's files were not found: {files:?}"
    );
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if EDGES.iter().any(|(e, _)| rel.starts_with(e)) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if code.contains(word) {
                    found.push(format!("{rel}:{}: {word}", n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the core reaches for the outside world:\n{}",
        found.join("\n")
    );
}
