//! The `sluice` binary as a user runs it: config checking, `run` stopped by SIGTERM, and `demo`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use sluice::wire::{read_scores, EventBatchEncoder, EventIn};

mod common;
use common::spawn_run;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_config_lists_every_problem_and_exits_non_zero() {
    let bad = temp_file("bad.toml", "[shards]\ncount = \"four\"\n[state]\nhot_capacity = 0\ncolour = 1\n[route]\nfull = \"explode\"\n");
    let out = sluice().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shards.count must be a non-negative integer"),
        "{err}"
    );
    assert!(err.contains("unknown key state.colour"), "{err}");
    // Fix the type errors: the range and enum problems are then all listed together.
    let bad = temp_file(
        "bad2.toml",
        "[state]\nhot_capacity = 0\nttl_sweep_slots = 0\n[route]\nfull = \"explode\"\n",
    );
    let out = sluice().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("explode"), "{err}");
}

/// The new user's five runs, in one: a problem at every stage (unknown key, a value serde
/// refuses, a range/format rule, the model file, the state directory, the admin socket's
/// directory), each naming its key and the value found.
#[test]
fn check_config_reports_a_problem_of_every_stage_in_one_run() {
    let bad = temp_file(
        "stages.toml",
        "[ingest.udp]\nlisten = \"nope\"\ndriver = \"dpdk\"\ncolour = \"blue\"\n\
         [model]\nkind = \"onnx\"\npath = \"/nonexistent/model.onnx\"\n\
         [state]\ndir = \"/proc/sluice-state\"\n\
         [admin]\nsocket = \"/nonexistent-dir/admin.sock\"\n",
    );
    let out = sluice().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "unknown key ingest.udp.colour",
        "ingest.udp.driver = \"dpdk\": unknown variant `dpdk`",
        "ingest.udp.listen = \"nope\"",
        "model.path = \"/nonexistent/model.onnx\"",
        "state.dir = \"/proc/sluice-state\"",
        "admin.socket = \"/nonexistent-dir/admin.sock\"",
        "(6 problem(s))",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // `run` refuses the same file with every config-level problem listed too.
    let run = sluice()
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_ne!(run.status.code(), Some(0));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("ingest.udp.colour") && err.contains("dpdk") && err.contains("nope"),
        "{err}"
    );
}

/// The Kafka clients' own properties: each refused alone is listed with librdkafka's reason,
/// what only the whole config shows (a SASL mechanism this build cannot do) is a problem of its
/// client, and a property of the other client's kind a warning — all in one run, none twice.
#[test]
fn check_config_lists_what_librdkafka_refuses_in_the_kafka_tables() {
    let bad = temp_file(
        "kafka-props.toml",
        "[ingest.kafka]\nbrokers = \"127.0.0.1:9\"\ntopics = [\"events\"]\n\
         [kafka.consumer]\n\"linger.ms\" = \"2\"\n\
         [kafka.producer]\n\"security.protocol\" = \"sasl_plaintext\"\n\
         \"sasl.mechanisms\" = \"GSSAPI\"\n\
         \"lingr.ms\" = \"2\"\n\"message.timeout.ms\" = \"soon\"\n",
    );
    let out = sluice().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "kafka.producer.\"lingr.ms\" = \"2\": librdkafka refuses it: No such configuration property",
        "kafka.producer.\"message.timeout.ms\" = \"soon\": librdkafka refuses it",
        "the Kafka producer cannot be made",
        "GSSAPI",
        "warning: the Kafka consumer: librdkafka: CONFWARN",
        "is a producer property and will be ignored",
        "(3 problem(s))",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // Refused alone, it is left out of the client check: one line, not two.
    assert_eq!(
        err.lines().filter(|l| l.contains("lingr.ms")).count(),
        1,
        "{err}"
    );
}

#[test]
fn check_config_checks_ranges_and_cores_against_this_machine() {
    let bad = temp_file(
        "ranges.toml",
        "[state]\nhot_capacity = 0\nttl_sweep_slots = 0\n[ingest.udp]\nuring_buffers = 1000\n",
    );
    let out = sluice().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "state.hot_capacity = 0",
        "state.ttl_sweep_slots = 0",
        "power of two",
        "(3 problem(s))",
    ] {
        assert!(err.contains(needle), "missing {needle:?}: {err}");
    }
    let cores = temp_file("cores.toml", "[shards]\ncores = [0, 4096]\n");
    let out = sluice().arg("check-config").arg(&cores).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shards.cores[1] = 4096"));
    let no_model = temp_file(
        "model.toml",
        "[model]\npath = \"/nonexistent/fraud.onnx\"\n[shards]\ncores = [4096]\n",
    );
    let out = sluice()
        .arg("check-config")
        .arg(&no_model)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read model file /nonexistent/fraud.onnx")
            && err.contains("shards.cores[0] = 4096")
            && err.contains("2 problem(s)"),
        "{err}"
    );
    let good = temp_file("good.toml", "[shards]\ncount = 1\n");
    let out = sluice().arg("check-config").arg(&good).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = sluice()
        .args(["check-config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config file"));
}

#[test]
fn run_refuses_a_bad_config_with_a_clear_error() {
    let out = sluice()
        .args(["run", "--set", "shards.count=-1", "--set", "wire.nope=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shards.count") && err.contains("unknown key wire.nope"),
        "{err}"
    );
}

#[test]
fn run_refuses_a_hot_state_larger_than_the_machine_before_allocating_it() {
    // 2^28 records x ~0.5 KiB: ~140 GiB per shard, valid config, more than this machine has.
    let out = sluice()
        .args([
            "run",
            "--set",
            "ingest.udp.listen=127.0.0.1:0",
            "--set",
            "shards.count=1",
            "--set",
            "state.hot_capacity=268435456",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "started anyway: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hot state needs")
            && err.contains("state.hot_capacity = 268435456")
            && err.contains("available"),
        "{err}"
    );
    // check-config says the same, beside the other problems it finds.
    let file = temp_file("huge.toml", "[state]\nhot_capacity = 268435456\n");
    let out = sluice()
        .args([
            "check-config",
            file.to_str().unwrap(),
            "--set",
            "shards.count=1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hot state needs"), "{err}");
}

#[test]
fn run_serves_then_drains_and_reports_on_sigterm() {
    let hgrm_dir = std::env::temp_dir().join(format!("sluice-hgrm-{}", std::process::id()));
    let (mut child, mut stdout, addr) = spawn_run(&[
        "shards.count=2".to_owned(),
        format!("metrics.hgrm_dir={}", hgrm_dir.display()),
    ]);

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut enc = EventBatchEncoder::new();
    let bytes = enc.encode((0..5u64).map(|i| EventIn {
        key: i % 2,
        seq: i,
        amount: 3.0,
        ..EventIn::default()
    }));
    client.send_to(bytes, &addr).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < 5 {
        let n = client.recv(&mut buf).expect("scores come back");
        read_scores(&buf[..n], &mut got).unwrap();
    }
    got.sort_by_key(|s| s.seq);
    assert_eq!(
        got.iter().map(|s| s.count).collect::<Vec<_>>(),
        vec![1, 1, 2, 2, 3]
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "exit {status:?}: {rest}");
    for needle in [
        "sluice_scores_emitted_total              5",
        "p99.99",
        "max",
        "receive->emit",
    ] {
        assert!(rest.contains(needle), "missing {needle:?} in:\n{rest}");
    }
    let hgrm = std::fs::read_to_string(hgrm_dir.join("receive_to_emit.hgrm")).unwrap();
    assert!(hgrm.contains("Total count    =            5"), "{hgrm}");
    let _ = std::fs::remove_dir_all(&hgrm_dir);
}

#[test]
fn reload_through_the_admin_socket_and_sighup() {
    let dir = std::env::temp_dir().join(format!("sluice-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("admin.sock");
    let model = dir.join("model.onnx");
    std::fs::write(
        &model,
        sluice::infer::onnx::model_bytes("builtin:fraud_lr").unwrap(),
    )
    .unwrap();
    let (mut child, _stdout, addr) = spawn_run(&[
        "shards.count=1".to_owned(),
        format!("admin.socket={}", socket.display()),
        format!("model.path={}", model.display()),
    ]);

    let reload = |model: &str| {
        sluice()
            .args(["reload", "--socket"])
            .arg(&socket)
            .args(["--model", model])
            .output()
            .unwrap()
    };
    let ok = reload("builtin:fraud_gbdt");
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "ok 2");
    let bad = reload("/nonexistent/model.onnx");
    assert_eq!(bad.status.code(), Some(1));
    let said = String::from_utf8_lossy(&bad.stdout);
    assert!(
        said.starts_with("error ")
            && said.contains("cannot read model file /nonexistent/model.onnx"),
        "{said}"
    );

    // `sluice state get` asks the owner shard through the same socket.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut enc = EventBatchEncoder::new();
    client
        .send_to(
            enc.encode(
                [EventIn {
                    key: 77,
                    seq: 1,
                    amount: 4.0,
                    ..EventIn::default()
                }]
                .into_iter(),
            ),
            &addr,
        )
        .unwrap();
    let mut buf = vec![0u8; 65536];
    client.recv(&mut buf).expect("a score comes back");
    let state = sluice()
        .args(["state", "get", "77", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(state.status.code(), Some(0));
    let text = String::from_utf8_lossy(&state.stdout);
    assert!(
        text.contains("key 77 (shard 0, hot): observations=1")
            && text.contains("mean(amount, lifetime) = 4.000000")
            && text.contains("amount = (per event)"),
        "{text}"
    );

    // SIGHUP re-reads model.path: a corrupt file is refused (version stays), a good one loads.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let version = || sluice::admin::request(&socket, "version").unwrap();
    std::fs::write(&model, b"corrupt").unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(version(), "ok 2");
    std::fs::write(
        &model,
        sluice::infer::onnx::model_bytes("builtin:fraud_lr").unwrap(),
    )
    .unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let mut v = version();
    for _ in 0..100 {
        if v == "ok 3" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        v = version();
    }
    assert_eq!(v, "ok 3");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!socket.exists(), "the admin socket is removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_state_dir_or_model_every_user_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("sluice-cli-open-{}", std::process::id()));
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let model = dir.join("model.onnx");
    std::fs::write(&model, sluice::infer::onnx::BUILTIN[0].1).unwrap();
    std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o666)).unwrap();
    let sets = [
        format!("state.dir={}", state.display()),
        format!("model.path={}", model.display()),
        "ingest.udp.listen=127.0.0.1:0".to_owned(),
    ];
    let cfg = temp_file("open.toml", "");
    let mut check = sluice();
    check.arg("check-config").arg(&cfg);
    for s in &sets {
        check.args(["--set", s]);
    }
    let out = check.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("state.dir") && err.contains("writable by every user"),
        "{err}"
    );
    assert!(
        err.contains("model file") && err.contains("refused"),
        "{err}"
    );

    // sluice run refuses to start on either.
    let mut run = sluice();
    run.arg("run");
    for s in &sets {
        run.args(["--set", s]);
    }
    let out = run.output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writable by every user"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `n` events of key 7 (seqs from `first`) to `addr`; the counts their Scores carry.
fn counts_of_key_7(addr: &str, first: u64, n: u64) -> Vec<u64> {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut enc = EventBatchEncoder::new();
    let bytes = enc.encode((first..first + n).map(|seq| EventIn {
        key: 7,
        seq,
        amount: 1.0,
        ..EventIn::default()
    }));
    client.send_to(bytes, addr).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < n as usize {
        let len = client.recv(&mut buf).expect("scores come back");
        read_scores(&buf[..len], &mut got).unwrap();
    }
    got.sort_by_key(|s| s.seq);
    got.iter().map(|s| s.count).collect()
}

/// A second `sluice run` beside a running one (by hand beside the systemd unit, say) would
/// share its state directory, UDP port or admin socket without failing: refused at start, each
/// naming what holds it, and the first goes on serving with its state and admin socket whole.
/// After the first is killed (-9: nothing cleaned up), the same start succeeds.
#[test]
fn a_second_sluice_on_the_same_state_dir_port_or_admin_socket_is_refused() {
    let dir = std::env::temp_dir().join(format!("sluice-cli-twice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state");
    let socket = dir.join("admin.sock");
    let first_sets = [
        "shards.count=1".to_owned(),
        format!("state.dir={}", state.display()),
        format!("admin.socket={}", socket.display()),
    ];
    let (mut first, _stdout, addr) = spawn_run(&first_sets);
    let pid = first.id();
    assert_eq!(counts_of_key_7(&addr, 0, 3), vec![1, 2, 3]);

    let same_state = common::run_refused(&[format!("state.dir={}", state.display())]);
    assert!(
        same_state.contains(&format!(
            "state.dir {} is in use by another sluice process (pid {pid};",
            state.display()
        )),
        "{same_state}"
    );
    let same_port = common::run_refused(&[format!("ingest.udp.listen={addr}")]);
    assert!(
        same_port.contains(&format!(
            "a UDP socket is already bound to {addr} (process {pid} (sluice)"
        )) && same_port.contains("SO_REUSEPORT"),
        "{same_port}"
    );
    let same_admin = common::run_refused(&[format!("admin.socket={}", socket.display())]);
    assert!(
        same_admin.contains(&format!(
            "admin.socket {}: a running sluice answers on it (model version 1)",
            socket.display()
        )),
        "{same_admin}"
    );

    // The first one still counts on from its state, and its admin socket still answers.
    assert_eq!(counts_of_key_7(&addr, 3, 2), vec![4, 5]);
    let state_of_7 = sluice()
        .args(["state", "get", "7", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&state_of_7.stdout);
    assert!(
        state_of_7.status.success() && said.contains("key 7 (shard 0, hot): observations=5"),
        "{said}"
    );

    first.kill().unwrap();
    first.wait().unwrap();
    assert!(socket.exists(), "kill -9 leaves the admin socket behind");
    let (mut again, _stdout, addr_again) = spawn_run(&[
        "shards.count=1".to_owned(),
        format!("state.dir={}", state.display()),
        format!("admin.socket={}", socket.display()),
        format!("ingest.udp.listen={addr}"),
    ]);
    assert_eq!(addr_again, addr);
    // Restored from the first one's checkpoints: key 7 counts on from what they hold (at most 5).
    let counts = counts_of_key_7(&addr, 5, 1);
    assert!((1..=6).contains(&counts[0]), "{counts:?}");
    again.kill().unwrap();
    again.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each thread of a running sluice, by name, with the CPUs it may run on.
fn thread_masks(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(t.join("comm")),
            std::fs::read_to_string(t.join("status")),
        ) else {
            continue; // a thread that ended meanwhile
        };
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned();
        out.push((comm.trim().to_owned(), mask));
    }
    out
}

#[test]
fn helper_threads_run_on_the_helper_cores_not_the_shards() {
    let allowed: Vec<usize> = {
        let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
        (0..nix::sched::CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .collect()
    };
    let shard_cpu = allowed[0];
    let helper = *allowed.last().unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-cli-helpers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut child, _stdout, _) = spawn_run(&[
        format!("shards.cores=[{shard_cpu}]"),
        format!("shards.helper_cores=[{helper}]"),
        format!("state.dir={}", dir.display()),
    ]);
    let threads = thread_masks(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mask_of = |prefix: &str| -> Vec<&String> {
        threads
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, m)| m)
            .collect()
    };
    assert_eq!(
        mask_of("sluice-shard-0").first().map(|m| m.as_str()),
        Some(shard_cpu.to_string().as_str()),
        "{threads:?}"
    );
    // The checkpoint writer and RocksDB's background threads start on the shard's thread,
    // the control and metrics threads on the main one: all on the helper core.
    for prefix in [
        "sluice-ckpt-0",
        "rocksdb:",
        "sluice-control",
        "sluice-metrics",
    ] {
        let masks = mask_of(prefix);
        assert!(!masks.is_empty(), "no {prefix} thread in {threads:?}");
        assert!(
            masks.iter().all(|m| **m == helper.to_string()),
            "{prefix} threads not on helper CPU {helper}: {threads:?}"
        );
    }
}

#[test]
fn a_helper_core_that_is_not_available_is_a_clear_start_up_error() {
    let err = common::run_refused(&["shards.helper_cores=[1000]".into()]);
    assert!(
        err.contains("shards.helper_cores[0] = 1000: no such CPU available"),
        "{err}"
    );
}

/// The numbers after `label` in `text` (e.g. "lost " -> the count that follows).
fn count_after(text: &str, label: &str) -> u64 {
    text.split(label)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} count in:\n{text}"))
}

/// `sluice demo ARGS` in a short, light run (its own metrics port, a small table): its stdout,
/// once it has exited 0.
fn demo(args: &[&str]) -> String {
    let out = sluice()
        .arg("demo")
        .args(["--seconds", "2", "--rate", "2000", "--keys", "500"])
        .args(args)
        .args(["--set", "metrics.listen=127.0.0.1:0"])
        .args(["--set", "state.hot_capacity=4096"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The demo client's accounting line (the one starting with `prefix`): some answers came back
/// (the count after `back`), no duplicate, no wrong count, nothing unexpected.
fn check_accounting(text: &str, prefix: &str, back: &str) {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line:\n{text}"));
    assert!(count_after(line, back) > 0, "{text}");
    for label in ["duplicates ", "wrong counts ", "unexpected "] {
        assert_eq!(count_after(line, label), 0, "{label}in:\n{text}");
    }
}

/// README command 1's job, `sluice demo`, in a short run: it exits 0 and its client's
/// accounting finds no duplicate, no wrong count and nothing unexpected. (A loss would be
/// this machine's socket buffers under the suite's load, not a wrong answer: only that
/// some replies came back is asserted.)
#[test]
fn the_demo_runs_on_loopback_and_no_reply_is_wrong() {
    let text = demo(&[]);
    check_accounting(&text, "replies:", "replies: ");
}

/// `sluice demo --kafka` (its own local broker, one event a record, Scores read back
/// read_committed), both delivery modes, in short runs: exit 0, no duplicate, no wrong count,
/// nothing unexpected, and the service's Kafka latency table is printed.
#[test]
fn the_kafka_demo_runs_in_both_delivery_modes_and_no_score_is_wrong() {
    for mode in [&["--kafka"][..], &["--kafka", "--exactly-once"][..]] {
        let text = demo(mode);
        assert!(text.contains("kafka record->produce"), "{mode:?}: {text}");
        check_accounting(&text, "produced ", "Scores ");
    }
}
