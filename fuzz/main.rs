//! `sluice-fuzz`: a structured mutational fuzzer on stable Rust for the inputs sluice takes
//! from the network and from files: the EventBatch decoder, the config (TOML file and
//! `--set`), the feature-list compiler, the checkpoint manifest (COMMIT) parser, a whole
//! checkpoint restore (COMMIT + hot.bin loaded into a state), admin-socket requests and the
//! ONNX model checks (a session built from mutated model bytes and checked as `sluice run`
//! checks a model).
//!
//! Why not cargo-fuzz (libFuzzer): it builds every crate with sanitizer-coverage flags, and a
//! change of flags rebuilds RocksDB's C++ (17-40 min on the dev VM) for each fuzz build, which
//! the CI budget cannot carry. This loop is outcome-guided, not coverage-guided: an input is
//! kept in the corpus when it produces an outcome not seen before (error reason, event count,
//! problem count), and mutations are byte-level (bit flips, interesting values, inserts,
//! deletes, duplicated ranges, splices) plus structure-aware seeds (valid encodings).
//!
//! Every execution runs under `catch_unwind` (a panic is a crash: the input is saved), is
//! timed (over 1 s is a hang), and for the decoder its heap allocations are counted: decoding
//! must allocate nothing, whatever the input.
//!
//!   sluice-fuzz decode --execs 10000000          # the long run (see bench/README.md)
//!   sluice-fuzz all --seconds 5                  # what the test run does, per target

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use sluice::config::Config;
use sluice::loadgen::rng::Rng;
use sluice::wire::{Decoder, EventBatchEncoder, EventIn};

/// Counts allocations so a target can be held to "allocates nothing".
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser)]
#[command(
    name = "sluice-fuzz",
    about = "Structured mutational fuzzing of sluice's input parsers"
)]
struct Cli {
    /// decode | config | set | features | manifest | restore | admin | model | all, or `seeds`
    /// to write the built-in
    /// seeds into --corpus (how fuzz/corpus was made).
    target: String,
    /// Stop after this many executions (per target).
    #[arg(long)]
    execs: Option<u64>,
    /// Stop after this many seconds (per target); default 10 unless --execs is given.
    #[arg(long)]
    seconds: Option<f64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seed corpora (one directory per target).
    #[arg(long, default_value = "fuzz/corpus")]
    corpus: PathBuf,
    /// Where crashing inputs are written.
    #[arg(long, default_value = "fuzz/crashes")]
    crashes: PathBuf,
    /// One execution running longer than this is a hang that never ends: its input is
    /// saved and the process exits 3 (one over 1 s that does end is counted as a hang).
    #[arg(long, default_value_t = 30.0)]
    hang_seconds: f64,
    /// Results JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Serialize, Default, Clone)]
struct TargetRun {
    target: String,
    execs: u64,
    seconds: f64,
    execs_per_s: f64,
    crashes: u64,
    hangs: u64,
    /// Inputs kept for a new outcome, plus the seeds.
    corpus: usize,
    outcomes: usize,
    /// Decoder only: accepted inputs whose decoding allocated (must be 0); refused inputs
    /// whose decoding allocated (flatbuffers' verifier builds an error trace, bounded by
    /// wire.depth_max), and the most bytes one such refusal allocated.
    allocating_execs: u64,
    allocating_refusals: u64,
    max_refusal_alloc_bytes: u64,
    longest_exec_us: f64,
    /// Model target: models refused by the load timeout (ONNX Runtime never finished).
    refused_for_time: u64,
    crash_files: Vec<String>,
}

/// An outcome class: inputs that reach a new one are kept in the corpus. A number, so the
/// harness allocates nothing between the allocation counters.
type Target = fn(&[u8]) -> u64;

fn decode_target() -> Target {
    fn run(input: &[u8]) -> u64 {
        thread_local! {
            static DECODER: Decoder = Decoder::new(&Config::defaults().map(|c| c.wire).unwrap_or_else(|_| unreachable_wire()));
        }
        DECODER.with(|d| match d.decode(input) {
            Ok(events) => {
                let mut feats = [0f32; sluice::limits::FEATURES_INLINE_MAX];
                let mut sum = 0u64;
                for e in events.iter() {
                    sum = sum
                        .wrapping_add(e.key())
                        .wrapping_add(e.seq())
                        .wrapping_add(e.ts_ns())
                        .wrapping_add(e.amount().to_bits() as u64)
                        .wrapping_add(e.label().to_bits() as u64)
                        .wrapping_add(e.copy_features(&mut feats) as u64)
                        .wrapping_add(e.kind() as u64);
                }
                std::hint::black_box(sum);
                events.len().min(64) as u64
            }
            Err(e) => 1000 + e.index() as u64,
        })
    }
    run
}

/// The defaults always load (a test checks it); this keeps the fuzzer free of `expect`.
fn unreachable_wire() -> sluice::config::Wire {
    panic!("the embedded defaults do not load")
}

fn config_target(input: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(input);
    match Config::from_layers(Some(&text), &[]) {
        Ok(_) => 0,
        Err(e) => 1 + e.problems.len().min(16) as u64,
    }
}

fn set_target(input: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(input);
    let sets: Vec<String> = text.lines().take(16).map(str::to_owned).collect();
    match Config::from_layers(None, &sets) {
        Ok(_) => 0,
        Err(e) => 1 + e.problems.len().min(16) as u64,
    }
}

fn features_target(input: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(input);
    let list: Vec<String> = text.lines().take(64).map(str::to_owned).collect();
    match sluice::features::FeaturePlan::compile(&list, 1_000_000_000) {
        Ok(p) => p.words().min(64) as u64,
        Err(problems) => 1000 + problems.len().min(16) as u64,
    }
}

fn manifest_target(input: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(input);
    match sluice::state::checkpoint::Manifest::parse(&text) {
        Ok(m) => {
            // What parses must render and parse back to the same manifest.
            let again = sluice::state::checkpoint::Manifest::parse(&m.render());
            assert!(
                again.as_ref() == Ok(&m),
                "manifest does not round-trip: {again:?}"
            );
            0
        }
        // The message's first word: which check refused it.
        Err(e) => e.split_whitespace().next().map_or(1, |w| {
            sluice::route::mix64(w.bytes().fold(0, |h, b| h * 31 + u64::from(b)))
        }),
    }
}

/// The first few words of an error message without numbers, as an outcome class.
fn class_of(message: &str, words: usize) -> u64 {
    message
        .split_whitespace()
        .filter(|w| !w.bytes().any(|b| b.is_ascii_digit()))
        .take(words)
        .flat_map(str::bytes)
        .fold(7u64, |h, b| sluice::route::mix64(h ^ u64::from(b)))
}

/// The state a restore target loads into: the defaults' feature list, 256 hot slots.
fn restore_config() -> Option<Config> {
    Config::from_layers(None, &["state.hot_capacity=256".to_owned()]).ok()
}

/// Input: flags (1 byte), the COMMIT text's length (2 bytes LE), the COMMIT text, hot.bin.
/// Flag 1 rewrites the manifest's size and checksum to hot.bin's, flag 2 its record and gone
/// counts to hot.bin's header: so mutations get past the checks that guard the loading. Flag 4
/// makes it a chain of two: first a full checkpoint framed with its hot.bin's length (the
/// COMMIT's length, 2 bytes LE, the COMMIT, hot.bin's length, 4 bytes LE, hot.bin), then an
/// incremental one framed as above, so the fold of incremental records over a full
/// checkpoint is fuzzed too.
fn restore_target(input: &[u8]) -> u64 {
    use sluice::state::checkpoint::load_bytes;
    let Some((&flags, mut rest)) = input.split_first() else {
        return 1;
    };
    let mut chain: Vec<(String, &[u8])> = Vec::new();
    if flags & 4 != 0 {
        let Some((commit, hot, after)) = restore_framed(rest, true) else {
            return 1;
        };
        chain.push((restore_commit(commit, hot, flags), hot));
        rest = after;
    }
    let Some((commit, hot, _)) = restore_framed(rest, false) else {
        return 1;
    };
    chain.push((restore_commit(commit, hot, flags), hot));
    let Some(config) = restore_config() else {
        return 2;
    };
    let Ok(mut state) = sluice::state::KeyedState::from_config(&config, None) else {
        return 3;
    };
    let links = chain.len() as u64;
    let chain = chain
        .iter()
        .map(|(commit, hot)| (commit.as_str(), hot.to_vec()))
        .collect();
    match load_bytes(chain, &mut state) {
        Ok((records, journal)) => {
            assert_eq!(
                state.hot_len() as u64,
                records,
                "loaded records are in the table"
            );
            // Powers of two of each count: a class per size range, not per size.
            10_000
                + links * 1_000
                + u64::from(records.checked_ilog2().unwrap_or(0)) * 64
                + u64::from(journal.checked_ilog2().unwrap_or(0))
        }
        Err(e) => class_of(&e.to_string(), 5),
    }
}

/// One checkpoint of a restore input: (COMMIT, hot.bin, what follows). `sized`: hot.bin's
/// length is given (4 bytes LE after the COMMIT); otherwise it is the rest of the input.
fn restore_framed(b: &[u8], sized: bool) -> Option<(&[u8], &[u8], &[u8])> {
    let len = usize::from(u16::from_le_bytes(b.get(..2)?.try_into().ok()?));
    let body = b.get(2..)?;
    let (commit, body) = body.split_at(len.min(body.len()));
    if !sized {
        return Some((commit, body, &[]));
    }
    let hot_len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let body = body.get(4..)?;
    let (hot, after) = body.split_at(hot_len.min(body.len()));
    Some((commit, hot, after))
}

/// A restore input's COMMIT text, with flags 1 and 2's fix-ups applied to it.
fn restore_commit(commit: &[u8], hot: &[u8], flags: u8) -> String {
    use sluice::state::checkpoint::Manifest;
    let mut commit = String::from_utf8_lossy(commit).into_owned();
    if flags & 3 != 0 {
        if let Ok(mut m) = Manifest::parse(&commit) {
            if flags & 1 != 0 {
                m.hot_bytes = hot.len() as u64;
                m.hot_crc = crc32fast::hash(hot);
            }
            let u64_at = |i: usize| {
                hot.get(i..i + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
            };
            if flags & 2 != 0 {
                m.hot_records = u64_at(16).unwrap_or(m.hot_records);
                m.gone = u64_at(24).unwrap_or(m.gone);
            }
            commit = m.render();
        }
    }
    commit
}

/// The model target's `model.load_timeout_ms`.
const MODEL_TIMEOUT: Duration = Duration::from_millis(500);
/// Outcome of an input refused for taking too long: counted, never kept in the corpus.
const SLOW_REFUSED: u64 = u64::MAX;

/// An admin connection's bytes: read as the socket reads them, then parsed.
fn admin_target(input: &[u8]) -> u64 {
    use sluice::admin::{read_request, Command, Fault, REQUEST_BYTES_MAX};
    let Ok(line) = read_request(input) else {
        return 1;
    };
    assert!(
        line.len() as u64 <= REQUEST_BYTES_MAX,
        "request read past its bound"
    );
    match Command::parse(&line) {
        Command::Reload(None) => 2,
        Command::Reload(Some(_)) => 3,
        Command::Version => 4,
        Command::State(_) => 5,
        Command::Fault(Some(Fault::Hold(hold, _))) => 6 + u64::from(hold),
        Command::Fault(Some(Fault::FailCheckpoint(_))) => 10,
        Command::Fault(Some(Fault::Panic(_))) => 11,
        Command::Fault(None) => 8,
        Command::ClusterStatus => 9,
        Command::Refused(why) => 100 + u64::from(why.contains("not a key")),
    }
}

/// Model bytes through a session and the checks `sluice run` makes (input and output names,
/// types and shapes, the warm-up run's probability).
fn model_target(input: &[u8]) -> u64 {
    thread_local! {
        static SPEC: Option<sluice::infer::OnnxSpec> = Config::defaults().ok().map(|c| {
            let mut spec = c.onnx_spec();
            spec.load_timeout = MODEL_TIMEOUT;
            // ONNX Runtime logs every refused model to stderr itself: errors are outcomes here.
            if let Ok(env) = sluice::infer::runtime::environment(&spec.runtime_path) {
                env.set_log_level(ort::logging::LogLevel::Fatal);
            }
            spec
        });
    }
    SPEC.with(|spec| {
        let Some(spec) = spec else {
            return 1;
        };
        match sluice::infer::OnnxScorer::load(spec, input) {
            Ok(m) => {
                use sluice::infer::Scorer;
                10 + m.width() as u64
            }
            // A model ONNX Runtime never finishes with, refused by the load timeout: a known
            // finding (bench/README.md), counted, and not kept (each leaves a spinning thread).
            Err(e) if e.to_string().contains("model.load_timeout_ms") => SLOW_REFUSED,
            // Past the model path: the check that refused it.
            Err(e) => class_of(&e.to_string(), 6),
        }
    })
}

/// Model bytes through the native engine's compiler; what compiles must score a zero row, the
/// fixture-like rows and NaN rows to probabilities (and the walk must end: the watchdog catches
/// a loop), the same to the bit whichever way its trees are walked (node by node, the scalar
/// branch-free walk, the vector one).
fn native_target(input: &[u8]) -> u64 {
    use sluice::infer::native::Walk;
    use sluice::infer::{FeatureBatch, NativeScorer, Scorer};
    const ROWS: usize = 8;
    thread_local! {
        static SPEC: Option<sluice::infer::OnnxSpec> = Config::defaults().ok().map(|c| c.onnx_spec());
    }
    SPEC.with(|spec| {
        let Some(spec) = spec else {
            return 1;
        };
        match NativeScorer::compile(spec, input) {
            Ok(mut m) => {
                let w = m.width();
                let mut batch = FeatureBatch::new(w, ROWS);
                for fill in [0.0f32, 1.0, -250.0, f32::NAN] {
                    if let Some(row) = batch.next_row() {
                        row.fill(fill);
                    }
                }
                // Mixed rows, so different branches go different ways.
                const MIXED: [f32; 7] = [-1.0, 0.5, 3.0, f32::NAN, 0.0, 100.0, -0.0];
                for r in 0..ROWS - 4 {
                    if let Some(row) = batch.next_row() {
                        for (c, v) in row.iter_mut().enumerate() {
                            *v = MIXED[(c * 3 + r) % MIXED.len()];
                        }
                    }
                }
                let mut out = [0.0f32; ROWS];
                match m.score(&batch, &mut out) {
                    Ok(()) => {
                        assert!(
                            out.iter().all(|p| (0.0..=1.0).contains(p)),
                            "native scores outside [0, 1]: {out:?}"
                        );
                        for walk in [Walk::BranchFreeScalar, Walk::NodeByNode] {
                            let Ok(mut other) = NativeScorer::compile_with(spec, input, walk)
                            else {
                                panic!("compiles walked the fastest way, not {walk:?}");
                            };
                            let mut theirs = [0.0f32; ROWS];
                            assert!(other.score(&batch, &mut theirs).is_ok(), "{walk:?} refused");
                            assert!(
                                out.iter()
                                    .zip(&theirs)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{}: {out:?}, {walk:?}: {theirs:?}",
                                m.describe()
                            );
                        }
                        10 + w as u64
                    }
                    Err(e) => class_of(&e.to_string(), 4),
                }
            }
            Err(e) => 100 + class_of(&e.to_string(), 3),
        }
    })
}

/// Raw frames through the AF_XDP receiver's parser: never a panic, a payload inside the frame,
/// and the same answer with the UDP checksum check on as off unless the answer is the checksum.
fn frame_target(input: &[u8]) -> u64 {
    use sluice::ingest::xdp::frame::{parse, FrameError};
    let checked = parse(input, true);
    let unchecked = parse(input, false);
    match (&checked, &unchecked) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the checksum check changed a parse"),
        (Err(FrameError::BadChecksum), _) => {}
        (a, b) => assert_eq!(a, b, "the UDP checksum check changed a refusal"),
    }
    match checked {
        Ok(udp) => {
            assert!(udp.payload.end <= input.len() && udp.payload.start <= udp.payload.end);
            1 + u64::from(udp.src.is_ipv6())
        }
        Err(e) => 10 + e.index() as u64,
    }
}

fn frame_seeds() -> Vec<Vec<u8>> {
    use sluice::ingest::xdp::frame::encode;
    let macs = ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let pairs: [(&str, &str); 2] = [
        ("169.254.7.2:40000", "169.254.7.1:7600"),
        ("[fe80::2]:40000", "[fe80::1]:7600"),
    ];
    let mut seeds = Vec::new();
    for (src, dst) in pairs {
        let (Ok(src), Ok(dst)) = (src.parse(), dst.parse()) else {
            continue;
        };
        for vlan in [&[][..], &[7], &[1, 2]] {
            seeds.push(encode(macs, vlan, src, dst, b"\x10\x00\x00\x00sluice"));
        }
    }
    seeds
}

fn targets() -> Vec<(&'static str, Target)> {
    vec![
        ("decode", decode_target()),
        ("config", config_target),
        ("set", set_target),
        ("features", features_target),
        ("manifest", manifest_target),
        ("restore", restore_target),
        ("admin", admin_target),
        ("model", model_target),
        ("native", native_target),
        ("frame", frame_target),
    ]
}

/// Real checkpoints (a full one, then an incremental one) of a state with a spill store,
/// framed as `restore_target` takes them (flags 0: as written).
fn restore_seeds() -> anyhow::Result<Vec<Vec<u8>>> {
    use sluice::state::checkpoint::{self, CheckpointSpec, Checkpointer};
    use sluice::state::{KeyedState, Spill, Update};
    let dir = std::env::temp_dir().join(format!("sluice-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = restore_config().context("restore config")?;
    let plan = config.feature_plan()?;
    let words = plan.words();
    let spill = Spill::open(&dir.join("spill"), 1 << 20, words, None)?;
    let mut hot_config = config.clone();
    hot_config.state.hot_capacity = 64;
    let mut state = KeyedState::with_plan(&hot_config, plan, Some(spill));
    state.track_changes();
    let mut cp = Checkpointer::start(CheckpointSpec {
        root: dir.join("checkpoints"),
        shard: 0,
        layout: config.state_layout(1),
        interval_ns: 0,
        keep: 2,
        full_every: 10,
        buffer_bytes: checkpoint::buffer_bytes(64, words),
        slice_records: 16,
        slice_ns: 0,
        journal_records: 1024,
        words,
        next_seq: 1,
        restored: None,
        gated: false,
    })?;
    cp.wait_ready();
    let t0 = 1_700_000_000_000_000_000u64;
    let mut seeds = Vec::new();
    let mut files = Vec::new();
    for round in 0..2u64 {
        // 200 keys through 64 hot slots: records hot and spilled, keys leaving the table.
        for k in 0..200u64 {
            let u = Update {
                key: k * 3 + round,
                seq: round,
                ts_ns: t0 + round * 1_000_000_000 + k,
                kind: sluice::wire::EventKind::Observation,
                amount: k as f32,
                label: -1.0,
                features: &[],
                source: 0,
            };
            state.apply(&u, u.ts_ns)?;
        }
        cp.finish(&mut state, t0 + round * 1_000_000_000);
        let path = dir
            .join("checkpoints")
            .join(format!("ckpt-{:020}", round + 1));
        let commit = std::fs::read(path.join("COMMIT"))
            .with_context(|| format!("reading {}", path.display()))?;
        let hot = std::fs::read(path.join("hot.bin"))?;
        let mut seed = vec![0u8];
        seed.extend_from_slice(&u16::try_from(commit.len())?.to_le_bytes());
        seed.extend_from_slice(&commit);
        seed.extend_from_slice(&hot);
        seeds.push(seed);
        files.push((commit, hot));
    }
    // The two as a chain (flag 4): the full one with its hot.bin's length, then the
    // incremental one.
    if let [(c1, h1), (c2, h2)] = files.as_slice() {
        let mut seed = vec![4u8];
        seed.extend_from_slice(&u16::try_from(c1.len())?.to_le_bytes());
        seed.extend_from_slice(c1);
        seed.extend_from_slice(&u32::try_from(h1.len())?.to_le_bytes());
        seed.extend_from_slice(h1);
        seed.extend_from_slice(&u16::try_from(c2.len())?.to_le_bytes());
        seed.extend_from_slice(c2);
        seed.extend_from_slice(h2);
        seeds.push(seed);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(seeds)
}

/// Valid EventBatches of several shapes: the structure the byte mutations start from.
fn decode_seeds() -> Vec<Vec<u8>> {
    let mut enc = EventBatchEncoder::new();
    let feats = [1.5f32, -2.0, 0.25, 1e6];
    let mut seeds = Vec::new();
    for (n, nf, feedback) in [(1, 0, false), (3, 2, false), (8, 4, true), (64, 0, false)] {
        let bytes = enc.encode((0..n).map(|i| EventIn {
            key: i * 7 + 1,
            seq: i,
            ts_ns: 1_700_000_000_000_000_000 + i,
            feedback: feedback && i % 2 == 1,
            amount: 10.0 + i as f32,
            label: if feedback && i % 2 == 1 { 1.0 } else { -1.0 },
            features: &feats[..nf],
        }));
        seeds.push(bytes.to_vec());
    }
    seeds
}

fn builtin_seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "decode" => decode_seeds(),
        "frame" => frame_seeds(),
        "config" => vec![
            sluice::config::DEFAULTS_TOML.as_bytes().to_vec(),
            include_bytes!("../systemd/sluice.toml").to_vec(),
        ],
        "set" => {
            vec![b"shards.count=2\ningest.udp.driver=recvmmsg\nfeatures.list=[\"amount\"]".to_vec()]
        }
        "features" => {
            vec![b"amount\ncount(1h)\nmean(amount, 10m)\nfeature[0]\nlog1p(amount)".to_vec()]
        }
        "manifest" => {
            let m = sluice::state::checkpoint::Manifest::default();
            vec![m.render().into_bytes()]
        }
        "restore" => restore_seeds().unwrap_or_else(|e| {
            eprintln!("sluice-fuzz: no restore seeds: {e:#}");
            Vec::new()
        }),
        "admin" => [
            "reload\n",
            "reload /var/lib/sluice/models/v2.onnx\n",
            "version\n",
            "state 18446744073709551615\n",
            "fault hold 0\n",
            "fault release 1\n",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        // The builtin models (committed under src/infer/models/), not copied into fuzz/corpus.
        "model" => sluice::infer::onnx::BUILTIN
            .iter()
            .map(|(_, b)| b.to_vec())
            .collect(),
        // The builtins and the LightGBM / XGBoost / HistGradientBoosting / opset-5 TreeEnsemble
        // fixtures, two three-class ones and a decision tree (committed under tests/fixtures/),
        // not copied into fuzz/corpus.
        "native" => sluice::infer::onnx::BUILTIN
            .iter()
            .map(|(_, b)| b.to_vec())
            .chain(
                [
                    "fraud_lgbm",
                    "fraud_xgb",
                    "fraud_hgb",
                    "tree_ensemble_v5",
                    "multiclass_gbdt",
                    "multiclass_xgb",
                    "forest_dt",
                ]
                .iter()
                .filter_map(|n| {
                    std::fs::read(format!(
                        "{}/tests/fixtures/{n}.onnx",
                        env!("CARGO_MANIFEST_DIR")
                    ))
                    .ok()
                }),
            )
            .collect(),
        _ => Vec::new(),
    }
}

fn load_corpus(dir: &Path, target: &str) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join(target)) {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            if let Ok(b) = std::fs::read(&f) {
                seeds.push(b);
            }
        }
    }
    if seeds.is_empty() {
        seeds = builtin_seeds(target);
    }
    seeds
}

const INTERESTING: [u32; 10] = [
    0,
    1,
    2,
    4,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], max_len: usize) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                input[i] = INTERESTING[rng.below(INTERESTING.len() as u64) as usize] as u8;
            }
            2 if len >= 4 => {
                let i = rng.below(len as u64 - 3) as usize;
                let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize]
                    .wrapping_add(rng.below(3) as u32)
                    .wrapping_sub(1);
                input[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 if len < max_len => {
                let i = rng.below(len as u64 + 1) as usize;
                input.insert(i, rng.next_u64() as u8);
            }
            4 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                let n = (1 + rng.below(8) as usize).min(len - i);
                input.drain(i..i + n);
            }
            5 if len > 0 && len < max_len => {
                let i = rng.below(len as u64) as usize;
                let n = (1 + rng.below(16) as usize).min(len - i).min(max_len - len);
                let chunk: Vec<u8> = input[i..i + n].to_vec();
                let at = rng.below(input.len() as u64 + 1) as usize;
                input.splice(at..at, chunk);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len() as u64) as usize];
                if !other.is_empty() {
                    let cut = rng.below(len as u64 + 1) as usize;
                    let from = rng.below(other.len() as u64) as usize;
                    input.truncate(cut);
                    input.extend_from_slice(&other[from..]);
                    input.truncate(max_len);
                }
            }
            _ => {
                let i = rng.below(len as u64 + 1) as usize;
                input.truncate(i);
            }
        }
    }
}

fn fuzz(
    name: &str,
    target: Target,
    cli: &Cli,
    deadline: Duration,
    execs_max: u64,
) -> anyhow::Result<TargetRun> {
    let mut corpus = load_corpus(&cli.corpus, name);
    anyhow::ensure!(!corpus.is_empty(), "no seeds for {name}");
    let max_len = match name {
        "decode" => 16 * 1024,
        "model" | "native" => 1 << 20,
        _ => 64 * 1024,
    };
    let mut rng = Rng::new(cli.seed ^ sluice::route::mix64(name.len() as u64));
    let mut outcomes: HashSet<u64> = HashSet::new();
    let mut run = TargetRun {
        target: name.to_owned(),
        ..TargetRun::default()
    };
    // Panics are caught and counted; keep their messages off the terminal.
    std::panic::set_hook(Box::new(|_| {}));
    let watch = Watchdog::start(name, &cli.crashes, cli.hang_seconds, max_len);
    // One run outside the counts: a target's one-time set-up (the decoder's config) is not
    // an allocation of the input's.
    let _ = std::panic::catch_unwind(|| target(&corpus[0]));
    let started = Instant::now();
    let mut input = Vec::with_capacity(max_len);
    while run.execs < execs_max && started.elapsed() < deadline {
        let base = &corpus[rng.below(corpus.len() as u64) as usize];
        input.clear();
        input.extend_from_slice(base);
        if run.execs >= corpus.len() as u64 {
            mutate(&mut rng, &mut input, &corpus, max_len);
        }
        let (a0, b0) = (
            ALLOCS.load(Ordering::Relaxed),
            ALLOC_BYTES.load(Ordering::Relaxed),
        );
        watch.arm(&input);
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(|| target(&input));
        let took = t.elapsed();
        watch.disarm();
        let (allocs, bytes) = (
            ALLOCS.load(Ordering::Relaxed) - a0,
            ALLOC_BYTES.load(Ordering::Relaxed) - b0,
        );
        run.execs += 1;
        if matches!(outcome, Ok(SLOW_REFUSED)) {
            run.refused_for_time += 1;
            continue;
        }
        run.longest_exec_us = run.longest_exec_us.max(took.as_secs_f64() * 1e6);
        if took > Duration::from_secs(1) {
            run.hangs += 1;
        }
        match outcome {
            Ok(o) => {
                // Accepting allocates nothing; a refusal may allocate the verifier's error
                // trace (bounded: counted and its largest size reported).
                if name == "decode" && allocs > 0 {
                    if o < 1000 {
                        run.allocating_execs += 1;
                    } else {
                        run.allocating_refusals += 1;
                        run.max_refusal_alloc_bytes = run.max_refusal_alloc_bytes.max(bytes);
                    }
                }
                if outcomes.insert(o) && corpus.len() < 4096 {
                    corpus.push(input.clone());
                }
            }
            Err(_) => {
                run.crashes += 1;
                std::fs::create_dir_all(&cli.crashes)?;
                let file = cli
                    .crashes
                    .join(format!("{name}-{:016x}", content_hash(&input)));
                std::fs::write(&file, &input)?;
                run.crash_files.push(file.display().to_string());
            }
        }
    }
    let _ = std::panic::take_hook();
    run.seconds = started.elapsed().as_secs_f64();
    run.execs_per_s = run.execs as f64 / run.seconds.max(1e-9);
    run.corpus = corpus.len();
    run.outcomes = outcomes.len();
    Ok(run)
}

/// Catches an execution that never returns (a `catch_unwind` cannot): a thread that, when
/// one execution has run longer than `--hang-seconds`, writes its input to the crash
/// directory as `NAME-hang-HASH` and exits the process with status 3.
struct Watchdog {
    shared: std::sync::Arc<WatchState>,
}

struct WatchState {
    /// Start of the running execution, ns since `origin`; 0 = none running.
    started_ns: AtomicU64,
    origin: Instant,
    input: std::sync::Mutex<Vec<u8>>,
}

impl Watchdog {
    fn start(name: &str, crashes: &Path, hang_seconds: f64, max_len: usize) -> Self {
        let shared = std::sync::Arc::new(WatchState {
            started_ns: AtomicU64::new(0),
            origin: Instant::now(),
            // Preallocated: arming copies into it without allocating.
            input: std::sync::Mutex::new(Vec::with_capacity(max_len)),
        });
        let (state, name, crashes) = (shared.clone(), name.to_owned(), crashes.to_owned());
        let limit_ns = (hang_seconds * 1e9) as u64;
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            let started = state.started_ns.load(Ordering::Acquire);
            let now = state.origin.elapsed().as_nanos() as u64;
            if started == 0 || now.saturating_sub(started) < limit_ns {
                continue;
            }
            let input = state.input.lock().map(|i| i.clone()).unwrap_or_default();
            let file = crashes.join(format!("{name}-hang-{:016x}", content_hash(&input)));
            let _ = std::fs::create_dir_all(&crashes);
            let _ = std::fs::write(&file, &input);
            eprintln!(
                "sluice-fuzz: {name}: one execution has run {:.1} s (> --hang-seconds): a hang; its input is {}",
                (now - started) as f64 * 1e-9,
                file.display()
            );
            std::process::exit(3);
        });
        Self { shared }
    }

    fn arm(&self, input: &[u8]) {
        if let Ok(mut i) = self.shared.input.lock() {
            i.clear();
            i.extend_from_slice(input);
        }
        let now = (self.shared.origin.elapsed().as_nanos() as u64).max(1);
        self.shared.started_ns.store(now, Ordering::Release);
    }

    fn disarm(&self) {
        self.shared.started_ns.store(0, Ordering::Release);
    }
}

fn content_hash(input: &[u8]) -> u64 {
    sluice::route::mix64(
        input
            .iter()
            .fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b)),
    )
}

#[derive(Serialize)]
struct Results {
    command: String,
    seed: u64,
    runs: Vec<TargetRun>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.target == "seeds" {
        for (name, _) in targets()
            .into_iter()
            .filter(|(n, _)| *n != "model" && *n != "native")
        {
            let dir = cli.corpus.join(name);
            std::fs::create_dir_all(&dir)?;
            for (i, seed) in builtin_seeds(name).iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), seed)?;
            }
        }
        return Ok(());
    }
    let all = targets();
    let chosen: Vec<(&str, Target)> = if cli.target == "all" {
        all
    } else {
        all.into_iter().filter(|(n, _)| *n == cli.target).collect()
    };
    anyhow::ensure!(
        !chosen.is_empty(),
        "unknown target {:?} (decode, config, set, features, manifest, restore, admin, model, all)",
        cli.target
    );
    let deadline = Duration::from_secs_f64(cli.seconds.unwrap_or(if cli.execs.is_some() {
        1e9
    } else {
        10.0
    }));
    let execs_max = cli.execs.unwrap_or(u64::MAX);
    let mut runs = Vec::new();
    for (name, target) in chosen {
        let r = fuzz(name, target, &cli, deadline, execs_max)?;
        eprintln!(
            "  {:<9} {:>10} execs in {:>6.1} s ({:>9.0}/s): {} crashes, {} hangs, corpus {}, outcomes {}, longest {:.0} us{}{}",
            r.target,
            r.execs,
            r.seconds,
            r.execs_per_s,
            r.crashes,
            r.hangs,
            r.corpus,
            r.outcomes,
            r.longest_exec_us,
            if r.refused_for_time > 0 {
                format!(", refused by the load timeout {}", r.refused_for_time)
            } else {
                String::new()
            },
            if r.target == "decode" {
                format!(
                    ", accepted inputs that allocated {}, refusals that allocated {} (at most {} bytes)",
                    r.allocating_execs, r.allocating_refusals, r.max_refusal_alloc_bytes
                )
            } else {
                String::new()
            }
        );
        runs.push(r);
    }
    let failed = runs
        .iter()
        .any(|r| r.crashes > 0 || r.hangs > 0 || r.allocating_execs > 0);
    if let Some(out) = &cli.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let results = Results {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            seed: cli.seed,
            runs,
        };
        std::fs::write(out, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    anyhow::ensure!(
        !failed,
        "crashes, hangs or allocations found (inputs under {})",
        cli.crashes.display()
    );
    Ok(())
}
