//! `sluice-fuzz`: a structured mutational fuzzer on stable Rust for the inputs sluice takes
//! from the network and from files: the EventBatch decoder, the config (TOML file and
//! `--set`), the feature-list compiler and the checkpoint manifest (COMMIT) parser.
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
    /// decode | config | set | features | manifest | all, or `seeds` to write the built-in
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

fn targets() -> Vec<(&'static str, Target)> {
    vec![
        ("decode", decode_target()),
        ("config", config_target),
        ("set", set_target),
        ("features", features_target),
        ("manifest", manifest_target),
    ]
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
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(|| target(&input));
        let took = t.elapsed();
        let (allocs, bytes) = (
            ALLOCS.load(Ordering::Relaxed) - a0,
            ALLOC_BYTES.load(Ordering::Relaxed) - b0,
        );
        run.execs += 1;
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
                let file = cli.crashes.join(format!(
                    "{name}-{:016x}",
                    sluice::route::mix64(
                        input
                            .iter()
                            .fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b))
                    )
                ));
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

#[derive(Serialize)]
struct Results {
    command: String,
    seed: u64,
    runs: Vec<TargetRun>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.target == "seeds" {
        for (name, _) in targets() {
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
        "unknown target {:?} (decode, config, set, features, manifest, all)",
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
            "  {:<9} {:>10} execs in {:>6.1} s ({:>9.0}/s): {} crashes, {} hangs, corpus {}, outcomes {}, longest {:.0} us{}",
            r.target,
            r.execs,
            r.seconds,
            r.execs_per_s,
            r.crashes,
            r.hangs,
            r.corpus,
            r.outcomes,
            r.longest_exec_us,
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
