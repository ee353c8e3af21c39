//! Embedded inference against the real ONNX Runtime (libonnxruntime 1.31.1 from
//! scripts/install-deps): parity with Python, batching, refusals, and hot swap under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::infer::onnx::model_bytes;
use sluice::infer::{OnnxScorer, Scorer};
use sluice::wire::{read_scores, EventBatchEncoder, EventIn};

use common::models::{edited_model, parity_fixture, parity_rows, score_rows, set_attr_s, spec};

fn load(path: &str) -> Result<OnnxScorer, String> {
    let s = spec(path);
    let bytes = model_bytes(&s.path).map_err(|e| e.to_string())?;
    OnnxScorer::load(&s, &bytes).map_err(|e| e.to_string())
}

#[test]
fn scores_equal_python_onnxruntime_for_both_models() {
    let fx = parity_fixture();
    let rows = parity_rows();
    for name in ["fraud_lr", "fraud_gbdt"] {
        let want: Vec<f64> = fx["models"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let mut m = load(&format!("builtin:{name}")).unwrap();
        assert_eq!(m.width(), 8, "the default features.list");
        let got = score_rows(&mut m, &rows, 64);
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() < 1e-5,
                "{name} row {i}: sluice {g} vs python {w}"
            );
        }
    }
}

#[test]
fn micro_batched_scores_equal_one_at_a_time() {
    let rows = parity_rows();
    for name in ["builtin:fraud_lr", "builtin:fraud_gbdt"] {
        let mut m = load(name).unwrap();
        let one = score_rows(&mut m, &rows, 1);
        for batch in [7, 16, 64] {
            // A batched GEMM sums in another order than one row at a time: equal to float
            // rounding, not bit for bit.
            for (i, (b, o)) in score_rows(&mut m, &rows, batch)
                .iter()
                .zip(&one)
                .enumerate()
            {
                assert!(
                    (b - o).abs() <= 1e-6,
                    "{name} batch {batch} row {i}: {b} vs {o}"
                );
            }
        }
    }
}

#[test]
fn bad_models_are_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("sluice-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.onnx");
    std::fs::write(&corrupt, b"\x08\x07this is not protobuf at all").unwrap();
    let truncated = dir.join("truncated.onnx");
    let gbdt = model_bytes("builtin:fraud_gbdt").unwrap();
    std::fs::write(&truncated, &gbdt[..gbdt.len() / 2]).unwrap();
    let bad_shape = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bad_shape.onnx");

    let e = load(corrupt.to_str().unwrap()).err().unwrap();
    assert!(e.contains("not a loadable ONNX model"), "{e}");
    let e = load(truncated.to_str().unwrap()).err().unwrap();
    assert!(e.contains("not a loadable ONNX model"), "{e}");
    // A valid model trained on another row is refused against features.list.
    let e = sluice::infer::build_primary(&Config::defaults().unwrap(), Some(bad_shape))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("takes 3 inputs but features.list has 8"), "{e}");
    let e = load("/nonexistent/model.onnx").err().unwrap();
    assert!(e.contains("cannot read model file"), "{e}");
    let e = load("builtin:nope").err().unwrap();
    assert!(e.contains("no builtin model"), "{e}");

    let mut s = spec("builtin:fraud_lr");
    s.output = "scores".into();
    let e = OnnxScorer::load(&s, &model_bytes(&s.path).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no output named \"scores\"") && e.contains("probabilities"),
        "{e}"
    );
    let mut s = spec("builtin:fraud_lr");
    s.probability_column = 2;
    let e = OnnxScorer::load(&s, &model_bytes(&s.path).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("probability_column = 2"), "{e}");
    let mut s = spec("builtin:fraud_lr");
    s.output = "label".into();
    let e = OnnxScorer::load(&s, &model_bytes(&s.path).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("must be float32"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_model_stops_start_up_with_a_clear_error() {
    let config = common::config("recvmmsg", &["model.path=/nonexistent/fraud.onnx"]);
    let err = sluice::app::start(&config)
        .err()
        .expect("start-up must fail")
        .to_string();
    assert!(
        err.contains("cannot read model file /nonexistent/fraud.onnx"),
        "{err}"
    );
}

/// Load from a sender thread while the test swaps models; every reply datagram must carry one
/// version, nothing may be lost, and a refused model must leave the old one serving.
#[test]
fn hot_swap_under_load_loses_nothing_and_never_mixes_versions() {
    let running = common::start("io_uring", &["shards.count=2"]);
    let target = running.local_addr;
    let stop = Arc::new(AtomicBool::new(false));
    let socks: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for s in &socks {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    let sender = {
        let socks: Vec<UdpSocket> = socks.iter().map(|s| s.try_clone().unwrap()).collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut enc = EventBatchEncoder::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (i, s) in socks.iter().enumerate() {
                    let events = (0..8u64).map(|j| EventIn {
                        key: i as u64 + 4 * ((seq + j) % 100),
                        seq: seq + j,
                        amount: 42.0,
                        ..EventIn::default()
                    });
                    s.send_to(enc.encode(events), target).unwrap();
                    seq += 8;
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            seq
        })
    };
    let receivers: Vec<_> = socks
        .into_iter()
        .map(|s| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut datagrams = Vec::new();
                let mut idle_since: Option<Instant> = None;
                loop {
                    match s.recv(&mut buf) {
                        Ok(n) => {
                            let mut scores = Vec::new();
                            read_scores(&buf[..n], &mut scores).unwrap();
                            datagrams.push(scores);
                            idle_since = None;
                        }
                        Err(_) if stop.load(Ordering::Relaxed) => {
                            // Stop once the stream has been quiet for a while after the sender ended.
                            let t = *idle_since.get_or_insert_with(Instant::now);
                            if t.elapsed() > Duration::from_millis(500) {
                                break;
                            }
                        }
                        Err(_) => {}
                    }
                }
                datagrams
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(running.reload(Some("builtin:fraud_gbdt")), Ok(2));
    std::thread::sleep(Duration::from_millis(200));
    let refused = running.reload(Some(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bad_shape.onnx"
    )));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("takes 3 inputs")),
        "{refused:?}"
    );
    // Engines switch on a reload too: the default LR and the GBDT run natively, this edited LR
    // (a PROBIT post transform) only on ONNX Runtime (tests/native_parity.rs), and back.
    std::thread::sleep(Duration::from_millis(200));
    let probit = ort_only_model();
    assert_eq!(running.reload(Some(probit.to_str().unwrap())), Ok(3));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(running.reload(Some("builtin:fraud_lr")), Ok(4));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let sent = sender.join().unwrap();
    let datagrams: Vec<Vec<_>> = receivers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    let report = running.stop().unwrap();

    let mut seqs = BTreeSet::new();
    let mut versions = BTreeSet::new();
    for d in &datagrams {
        let v: BTreeSet<u32> = d.iter().map(|s| s.model_version).collect();
        assert_eq!(v.len(), 1, "one reply mixed model versions {v:?}");
        versions.extend(v);
        for s in d {
            assert!(seqs.insert(s.seq), "duplicate score for seq {}", s.seq);
        }
    }
    assert_eq!(
        seqs.len() as u64,
        sent,
        "every event scored exactly once across the swaps"
    );
    assert_eq!(report.scores_emitted, sent);
    assert!(
        versions.contains(&1) && versions.contains(&4),
        "served versions {versions:?}"
    );
    assert!(
        versions.iter().all(|v| (1..=4).contains(v)),
        "served versions {versions:?}"
    );
}

/// The builtin LR with a PROBIT post transform, written to a file of this test process: a
/// model ONNX Runtime runs and the native engine does not compile.
fn ort_only_model() -> std::path::PathBuf {
    let bytes = edited_model("builtin:fraud_lr", |n| {
        set_attr_s(n, "post_transform", b"PROBIT")
    });
    let dir = std::env::temp_dir().join(format!("sluice-ort-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lr_probit.onnx");
    std::fs::write(&path, bytes).unwrap();
    // Private to this user, as model files must be.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn online_learning_from_feedback_publishes_averaged_versions() {
    let running = common::start(
        "io_uring",
        &[
            "shards.count=2",
            "model.kind=online",
            "model.online.average_interval_ms=50",
        ],
    );
    let mut client = common::Client::new(running.local_addr, 2);
    for round in 0..20u64 {
        for sock in 0..2u64 {
            let batch: Vec<(u64, bool)> = (0..10u64)
                .map(|j| (sock + 2 * ((round + j) % 20), j % 2 == 0))
                .collect();
            client.send(&batch);
        }
    }
    let first = client.collect(client.replies_wanted());
    client.check(&first);
    // Averaging rounds run every 50 ms once Feedback has arrived.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.model_version().unwrap() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let v = running.model_version().unwrap();
    assert!(v >= 2, "online averaging made no new version (still {v})");
    client.send(&[(0, false)]);
    let later = client.collect(1);
    assert_eq!(later.len(), 1);
    assert!(
        later[0].model_version >= 2,
        "scores after averaging carry the new version"
    );
    running.stop().unwrap();
}

/// `model_version` names what produced the score: averaging rounds of an online model the
/// scores do not use (the default blend 0 beside an ONNX model) leave it alone; with blend > 0
/// every round changes the scores, and the version.
#[test]
fn online_rounds_change_the_version_only_when_the_online_model_scores() {
    for (blend, climbs) in [("0", false), ("0.5", true)] {
        let blend_set = format!("model.online.blend={blend}");
        let running = common::start(
            "io_uring",
            &[
                "shards.count=2",
                "model.online.average_interval_ms=50",
                blend_set.as_str(),
            ],
        );
        let mut client = common::Client::new(running.local_addr, 2);
        let rounds = |r: &sluice::app::Running| -> u64 {
            r.counters()
                .iter()
                .map(|c| c.model_online_rounds.get())
                .sum()
        };
        // Feedback keeps arriving until the shards applied at least three averaging rounds.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut round = 0u64;
        while rounds(&running) < 6 && Instant::now() < deadline {
            for sock in 0..2u64 {
                let batch: Vec<(u64, bool)> = (0..10u64)
                    .map(|j| (sock + 2 * (j % 3), (round + j) % 2 == 0))
                    .collect();
                client.send(&batch);
            }
            client.pump_for(Duration::from_millis(20));
            round += 1;
        }
        assert!(
            rounds(&running) >= 6,
            "blend {blend}: averaging rounds never reached the shards"
        );
        client.send(&[(0, false)]);
        let scores = client.collect(client.replies_wanted());
        client.check(&scores);
        let newest = scores.iter().map(|s| s.model_version).max().unwrap();
        let v = running.model_version().unwrap();
        if climbs {
            assert!(
                v >= 3,
                "blend {blend}: {} rounds but version {v}",
                rounds(&running)
            );
            assert!(
                newest >= 2,
                "blend {blend}: scores still carry version {newest}"
            );
        } else {
            assert_eq!(
                v, 1,
                "blend {blend}: the served model never changed, yet version {v}"
            );
            assert!(
                scores.iter().all(|s| s.model_version == 1),
                "blend {blend}: a score carried another version"
            );
        }
        running.stop().unwrap();
    }
}

/// Found by `sluice-fuzz model`: the builtin GBDT with two bytes changed, which ONNX Runtime
/// accepts and then never finishes scoring (its warm-up row loops forever in the tree
/// ensemble). The load is refused after `model.load_timeout_ms`; the stuck thread is left
/// behind (it cannot be stopped) and ends with this test's process.
#[test]
fn a_model_onnx_runtime_never_finishes_scoring_is_refused_after_the_load_timeout() {
    let mut s = spec(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/models/looping_gbdt.onnx"
    ));
    s.load_timeout = std::time::Duration::from_millis(1500);
    let bytes = model_bytes(&s.path).unwrap();
    let err = OnnxScorer::load(&s, &bytes)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("did not load and score a warm-up row within 1500 ms"),
        "{err}"
    );
    // The same bytes with the two changed ones put back load and score.
    let good = model_bytes("builtin:fraud_gbdt").unwrap();
    assert_eq!(good.len(), bytes.len());
    assert_eq!(good.iter().zip(&bytes).filter(|(a, b)| a != b).count(), 2);
    assert!(OnnxScorer::load(&s, &good).is_ok());
}
