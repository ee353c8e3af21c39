//! `sluice run` under a service manager: the notify protocol through a real `NOTIFY_SOCKET`
//! the test owns (systemd's side played by the test), READY only once state is restored, the
//! watchdog fed only while every shard's loop turns, and a notify socket that is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{announced, score_one, spawn_run, NotifyManager as Manager};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-sd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Start `sluice run` the way systemd does: NOTIFY_SOCKET, WATCHDOG_USEC, and WATCHDOG_PID
/// naming the service's own PID (a shell exports its PID, then execs sluice in its place).
fn spawn_notified(
    notify: &Path,
    watchdog_usec: u64,
    sets: &[String],
) -> (Child, BufReader<ChildStdout>, String) {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg("run");
    for s in [
        "ingest.udp.listen=127.0.0.1:0",
        "metrics.listen=127.0.0.1:0",
        "shards.park_timeout_us=2000",
        "state.hot_capacity=1024",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(sets.iter().cloned())
    {
        cmd.args(["--set", &s]);
    }
    let mut child = cmd
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", watchdog_usec.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (stdout, addr) = announced(&mut child);
    (child, stdout, addr)
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn ready_after_restore_and_a_held_shard_stops_the_watchdog() {
    let dir = temp_dir("notify");
    let state = format!("state.dir={}", dir.join("state").display());
    // A first run leaves 40 keys in a checkpoint (written at shutdown).
    let (first, _first_out, addr) = spawn_run(&["shards.count=1".into(), state.clone()]);
    for key in 0..40 {
        assert_eq!(score_one(&addr, key, key).count, 1);
    }
    sigterm(&first);
    let mut first = first;
    assert!(first.wait().unwrap().success());

    let notify = dir.join("notify.sock");
    let mut manager = Manager::bind(&notify);
    let admin = dir.join("admin.sock");
    // WatchdogSec=0.6 s: sluice looks at the heartbeats every 0.3 s.
    let (mut child, _stdout, addr) = spawn_notified(
        &notify,
        600_000,
        &[
            "shards.count=1".into(),
            state,
            format!("admin.socket={}", admin.display()),
            "admin.faults=true".into(),
        ],
    );
    let ready = manager
        .wait_for("READY=1", Duration::from_secs(60))
        .expect("READY=1 arrives");
    assert!(ready.contains("40 key(s) restored"), "{ready}");
    let before_ready: Vec<&String> = manager.seen.iter().map(|(_, m)| m).collect();
    assert!(
        before_ready
            .iter()
            .any(|m| m.contains("EXTEND_TIMEOUT_USEC=") && m.contains("STATUS=starting")),
        "start-up asked for time while it restored: {before_ready:?}"
    );
    // Restored before READY: key 7's next event is its second.
    assert_eq!(score_one(&addr, 7, 1_000).count, 2);

    for _ in 0..2 {
        manager
            .wait_for("WATCHDOG=1", Duration::from_secs(20))
            .expect("the watchdog is fed while the shards turn");
    }

    let answer = sluice::admin::request(&admin, "fault hold 0").unwrap();
    assert_eq!(answer, "ok");
    let held = Instant::now();
    // Over the next 2.5 s (eight looks): at most the one ping from a look that compared a
    // count taken before the hold with one taken after it; without the heartbeat check there
    // would be eight.
    let _ = manager.wait_for("never sent", Duration::from_millis(2_500));
    assert!(
        manager.count_since(held, "WATCHDOG=1") <= 1,
        "pings while a shard was held: {:?}",
        manager.seen
    );
    assert!(
        manager
            .seen
            .iter()
            .any(|(at, m)| *at >= held && m.contains("STATUS=stuck")),
        "a status line names the stuck shard: {:?}",
        manager.seen
    );

    let answer = sluice::admin::request(&admin, "fault release 0").unwrap();
    assert_eq!(answer, "ok");
    manager
        .wait_for("WATCHDOG=1", Duration::from_secs(20))
        .expect("pings resume once the shard turns again");

    sigterm(&child);
    assert!(
        manager
            .wait_for("STOPPING=1", Duration::from_secs(20))
            .is_some(),
        "STOPPING=1 on SIGTERM"
    );
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_notify_socket_that_is_gone_is_logged_and_serving_goes_on() {
    let dir = temp_dir("gone");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "run",
            "--set",
            "ingest.udp.listen=127.0.0.1:0",
            "--set",
            "metrics.listen=",
            "--set",
            "shards.count=1",
            "--set",
            "state.hot_capacity=1024",
        ])
        .env("NOTIFY_SOCKET", dir.join("no-such-socket"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_stdout, addr) = announced(&mut child);
    assert_eq!(score_one(&addr, 3, 1).count, 1);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("systemd notify socket"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
