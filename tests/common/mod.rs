//! Helpers for tests that run sluice on real loopback sockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::app::{self, Running};
use sluice::config::Config;
use sluice::wire::{read_scores, EventBatchEncoder, EventIn, ScoreOut};

pub mod kafka;
pub mod models;

/// Small bounds so many instances fit beside each other on a 2-core test machine.
pub fn config(driver: &str, extra: &[&str]) -> Config {
    let mut sets: Vec<String> = [
        "ingest.udp.listen=127.0.0.1:0",
        "ingest.udp.uring_buffers=512",
        "wire.datagram_bytes_max=8192",
        "state.hot_capacity=65536",
        "route.ring_capacity=4096",
        "shards.count=2",
        "shards.idle_spins=200",
        "shards.park_timeout_us=2000",
        "log.level=warn",
        // Each instance serves its live metrics on its own port.
        "metrics.listen=127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!("ingest.udp.driver={driver}"));
    sets.extend(extra.iter().map(|s| s.to_string()));
    Config::from_layers(None, &sets).unwrap()
}

/// `sluice run` (the real binary) on an ephemeral loopback port with `sets`; returns the
/// child, its stdout (past the first line) and the address it announced.
pub fn spawn_run(sets: &[String]) -> (Child, BufReader<ChildStdout>, String) {
    let (child, stdout, addr, _) = spawn_run_with_metrics(sets);
    (child, stdout, addr)
}

/// `sluice state rescale` with `extra` arguments and `sets` as `--set`s.
pub fn rescale(sets: &[String], extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["state", "rescale"])
        .args(extra)
        .args(sets.iter().flat_map(|s| ["--set".to_owned(), s.clone()]))
        .output()
        .unwrap()
}

/// `sluice state show` with `sets`: its stdout (it must succeed).
pub fn state_show(sets: &[String]) -> String {
    state_show_with(sets, &[])
}

/// `sluice state show --json` with `sets`, parsed (it must succeed).
pub fn state_show_json(sets: &[String]) -> serde_json::Value {
    let said = state_show_with(sets, &["--json"]);
    serde_json::from_str(&said).unwrap_or_else(|e| panic!("{e}: {said}"))
}

fn state_show_with(sets: &[String], extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["state", "show"])
        .args(extra)
        .args(sets.iter().flat_map(|s| ["--set".to_owned(), s.clone()]))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// The sum of the figures `state show` prints before `unit` (e.g. " Observation(s) applied").
pub fn shown_sum(said: &str, unit: &str) -> u64 {
    said.split(unit)
        .filter_map(|before| before.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `sluice check-config` of an empty file written in `dir`, with `sets` as `--set`s.
pub fn check_config(dir: &std::path::Path, sets: &[String], connect: bool) -> std::process::Output {
    let file = dir.join("empty.toml");
    std::fs::write(&file, "").unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&file)
        .args(connect.then_some("--connect"))
        .args(sets.iter().flat_map(|s| ["--set".to_owned(), s.clone()]))
        .output()
        .unwrap()
}

/// How long a start that must be refused may take before the test calls it started.
const REFUSAL_PATIENCE: Duration = Duration::from_secs(120);

/// `sluice run` that must refuse to start (on an ephemeral port, a small table, `sets` after
/// them): its stderr, once it has exited non-zero. A start not refused within
/// `REFUSAL_PATIENCE` (it serves, or hangs) fails the test instead of waiting forever.
pub fn run_refused(sets: &[String]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "run",
            "--set",
            "ingest.udp.listen=127.0.0.1:0",
            "--set",
            "state.hot_capacity=1024",
        ])
        .args(sets.iter().flat_map(|s| ["--set".to_owned(), s.clone()]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on a thread: a service that was not refused may log more than a pipe holds.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + REFUSAL_PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = reader.join().unwrap_or_default();
            panic!(
                "sluice was not refused within {} s with {sets:?}; its stderr:\n{text}",
                REFUSAL_PATIENCE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap_or_default();
    assert!(!status.success(), "sluice started with {sets:?}:\n{text}");
    text
}

/// `sluice run` children of this test process: killed if the test panics, so a failed
/// assertion does not leave services running (and taking CPU from the tests after it).
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
static REAP_HOOK: std::sync::Once = std::sync::Once::new();

fn kill_on_panic(pid: u32) {
    REAP_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(pids) = CHILDREN.lock() {
                for &pid in pids.iter() {
                    // Already gone (stopped by the test) is fine: ESRCH, ignored.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            previous(info);
        }));
    });
    if let Ok(mut pids) = CHILDREN.lock() {
        pids.push(pid);
    }
}

/// `spawn_run`, and the live metrics URL its first line names.
pub fn spawn_run_with_metrics(sets: &[String]) -> (Child, BufReader<ChildStdout>, String, String) {
    spawn_binary_wrapped(env!("CARGO_BIN_EXE_sluice").as_ref(), &[], sets)
}

/// `spawn_run_with_metrics` with `binary` (the build's, or a copy an unprivileged user can
/// reach), started through `wrapper` (e.g. `nsenter --net=...`, which execs it in place, so
/// the child is still sluice itself).
pub fn spawn_binary_wrapped(
    binary: &std::path::Path,
    wrapper: &[String],
    sets: &[String],
) -> (Child, BufReader<ChildStdout>, String, String) {
    // SLUICE_TEST_STDERR=1 shows the service's log (debugging a failing test).
    let stderr = if std::env::var_os("SLUICE_TEST_STDERR").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    spawn_with(binary, wrapper, sets, stderr, &[])
}

/// `spawn_run_with_metrics` with the service's log written to `log`, for a test that reads
/// what sluice says while it keeps running; `envs` added to its environment.
pub fn spawn_run_logged(
    sets: &[String],
    log: &std::path::Path,
    envs: &[(&str, &std::ffi::OsStr)],
) -> (Child, BufReader<ChildStdout>, String, String) {
    let file = std::fs::File::create(log).unwrap();
    spawn_with(
        env!("CARGO_BIN_EXE_sluice").as_ref(),
        &[],
        sets,
        file.into(),
        envs,
    )
}

/// Wait (up to `patience`) until `log` holds `needle`; the log as it stands then.
pub fn wait_for_log(log: &std::path::Path, needle: &str, patience: Duration) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let said = std::fs::read_to_string(log).unwrap_or_default();
        if said.contains(needle) || Instant::now() > deadline {
            return said;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_with(
    binary: &std::path::Path,
    wrapper: &[String],
    sets: &[String],
    stderr: Stdio,
    envs: &[(&str, &std::ffi::OsStr)],
) -> (Child, BufReader<ChildStdout>, String, String) {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.args([
        "run",
        "--set",
        "ingest.udp.listen=127.0.0.1:0",
        "--set",
        "state.hot_capacity=1024",
        "--set",
        "metrics.listen=127.0.0.1:0",
    ]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let mut child = cmd
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    kill_on_panic(child.id());
    let (stdout, addr, metrics) = announced_with_metrics(&mut child);
    (child, stdout, addr, metrics)
}

/// `GET /metrics` from the live endpoint: the sum of the samples of `name` (all labels).
pub fn scrape(metrics: &str, name: &str) -> u64 {
    scrape_where(metrics, name, "")
}

/// `scrape`, over the samples whose line also contains `with` (e.g. `reason="truncated"`).
pub fn scrape_where(metrics: &str, name: &str, with: &str) -> u64 {
    scrape_body(metrics)
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The whole response to `GET /metrics` (status line and headers too).
pub fn scrape_body(metrics: &str) -> String {
    use std::io::{Read, Write};
    let hostport = metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// One Observation of `key` (amount 2.0) from a fresh socket to `addr`; its Score.
pub fn score_one(addr: &str, key: u64, seq: u64) -> ScoreOut {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut enc = EventBatchEncoder::new();
    let bytes = enc.encode(std::iter::once(EventIn {
        key,
        seq,
        amount: 2.0,
        ..EventIn::default()
    }));
    client.send_to(bytes, addr).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = client.recv(&mut buf).expect("a Score comes back");
    let mut got = Vec::new();
    read_scores(&buf[..n], &mut got).unwrap();
    got.pop().unwrap()
}

/// A started `sluice run`'s stdout past its first line, and the address that line announced.
pub fn announced(child: &mut Child) -> (BufReader<ChildStdout>, String) {
    let (stdout, addr, _) = announced_with_metrics(child);
    (stdout, addr)
}

/// `announced`, and the metrics URL the line ends with (`off` when there is none).
pub fn announced_with_metrics(child: &mut Child) -> (BufReader<ChildStdout>, String, String) {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("sluice listening on"), "{line}");
    let addr = line
        .split_whitespace()
        .nth(3)
        .expect("listening line names the address")
        .to_owned();
    let metrics = line
        .split_whitespace()
        .last()
        .expect("listening line names the metrics")
        .to_owned();
    (stdout, addr, metrics)
}

pub fn start(driver: &str, extra: &[&str]) -> Running {
    let r = app::start(&config(driver, extra)).unwrap();
    assert_eq!(
        r.driver.name(),
        driver,
        "the requested driver must be the one running"
    );
    r
}

/// A test client: several sockets (distinct source ports), keys pinned to one socket each so
/// a key's events arrive in order, and the expected per-key count of every reply.
pub struct Client {
    pub socks: Vec<UdpSocket>,
    target: SocketAddr,
    enc: EventBatchEncoder,
    counts: HashMap<u64, u64>,
    /// seq -> expected count (None = Feedback, no reply).
    pub expected: HashMap<u64, Option<u64>>,
    next_seq: u64,
    /// Scores read so far (the client reads while it sends, so its socket buffers never
    /// overflow and lose replies).
    received: Vec<ScoreOut>,
    buf: Vec<u8>,
}

impl Client {
    pub fn new(target: SocketAddr, sockets: usize) -> Self {
        Self::new_from(target, sockets, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// A client whose sockets bind `ip` (created in the calling thread's network namespace).
    pub fn new_from(target: SocketAddr, sockets: usize, ip: std::net::IpAddr) -> Self {
        let socks: Vec<UdpSocket> = (0..sockets)
            .map(|_| UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap())
            .collect();
        for s in &socks {
            s.set_nonblocking(true).unwrap();
            // Root (CI) may pass rmem_max; elsewhere the default stays and pumping must keep up.
            let _ =
                nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20));
        }
        Self {
            socks,
            target,
            enc: EventBatchEncoder::new(),
            counts: HashMap::new(),
            expected: HashMap::new(),
            next_seq: 0,
            received: Vec::new(),
            buf: vec![0; 65536],
        }
    }

    pub fn socket_of(&self, key: u64) -> usize {
        (key % self.socks.len() as u64) as usize
    }

    /// Send one batch of (key, is_feedback) from the socket that owns the first key; all keys
    /// of a batch must belong to that socket.
    pub fn send(&mut self, events: &[(u64, bool)]) -> Vec<u64> {
        let (sock, seqs, bytes) = self.prepare(events);
        self.socks[sock].send_to(&bytes, self.target).unwrap();
        self.pump();
        seqs
    }

    /// `send`'s batch, expected as if sent, for the caller to put on the wire some other way
    /// (the AF_XDP tests' raw frames, from `local_addr(socket)`): the socket it must seem to
    /// come from, its seqs, its bytes.
    pub fn prepare(&mut self, events: &[(u64, bool)]) -> (usize, Vec<u64>, Vec<u8>) {
        let sock = self.socket_of(events[0].0);
        let mut seqs = Vec::new();
        let mut list = Vec::new();
        for &(key, feedback) in events {
            assert_eq!(self.socket_of(key), sock);
            let seq = self.next_seq;
            self.next_seq += 1;
            let expect = if feedback {
                None
            } else {
                let c = self.counts.entry(key).or_insert(0);
                *c += 1;
                Some(*c)
            };
            self.expected.insert(seq, expect);
            seqs.push(seq);
            list.push(EventIn {
                key,
                seq,
                feedback,
                label: if feedback { 1.0 } else { -1.0 },
                amount: 5.0 + key as f32,
                ..EventIn::default()
            });
        }
        let bytes = self.enc.encode(list.into_iter()).to_vec();
        (sock, seqs, bytes)
    }

    pub fn local_addr(&self, i: usize) -> SocketAddr {
        self.socks[i].local_addr().unwrap()
    }

    /// Pace the sender: keep reading replies for `d`.
    pub fn pump_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.pump() == 0 {
                std::thread::yield_now();
            }
        }
    }

    /// Read every reply waiting on any socket; returns how many Scores arrived.
    pub fn pump(&mut self) -> usize {
        let before = self.received.len();
        for s in &self.socks {
            while let Ok(n) = s.recv(&mut self.buf) {
                read_scores(&self.buf[..n], &mut self.received)
                    .expect("replies are valid ScoreBatches");
            }
        }
        self.received.len() - before
    }

    /// Send raw bytes from socket `i`.
    pub fn send_raw(&self, i: usize, bytes: &[u8]) {
        self.socks[i].send_to(bytes, self.target).unwrap();
    }

    pub fn replies_wanted(&self) -> usize {
        self.expected.values().filter(|e| e.is_some()).count()
    }

    /// All Scores received, once `want` have arrived (plus a short linger to catch extras,
    /// i.e. duplicates) or a generous deadline passed: a liveness bound, not a timing check.
    pub fn collect(&mut self, want: usize) -> Vec<ScoreOut> {
        self.collect_until(|got| got >= want)
    }

    pub fn collect_until(&mut self, mut done: impl FnMut(usize) -> bool) -> Vec<ScoreOut> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut linger_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now > deadline || linger_until.is_some_and(|t| now > t) {
                break;
            }
            if self.pump() == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            if linger_until.is_none() && done(self.received.len()) {
                linger_until = Some(Instant::now() + Duration::from_millis(100));
            }
        }
        std::mem::take(&mut self.received)
    }

    /// Every expected reply exactly once, with its count; nothing for Feedback.
    pub fn check(&self, scores: &[ScoreOut]) {
        let mut seen = HashMap::new();
        for s in scores {
            assert!(
                seen.insert(s.seq, ()).is_none(),
                "duplicate Score for seq {}",
                s.seq
            );
            match self.expected.get(&s.seq) {
                Some(Some(count)) => {
                    assert_eq!(s.count, *count, "seq {} key {}: wrong count", s.seq, s.key)
                }
                Some(None) => panic!("Feedback seq {} got a Score", s.seq),
                None => panic!("Score for unknown seq {}", s.seq),
            }
            assert!((0.0..=1.0).contains(&s.score));
            assert!(s.latency_ns > 0);
        }
        let missing: Vec<_> = self
            .expected
            .iter()
            .filter(|(seq, e)| e.is_some() && !seen.contains_key(seq))
            .map(|(s, _)| *s)
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "{} Observations got no Score, e.g. seqs {missing:?}",
            self.replies_wanted() - seen.len()
        );
    }
}

/// systemd's side of the notify protocol: a datagram socket for `NOTIFY_SOCKET`, and every
/// message read from it.
pub struct NotifyManager {
    sock: std::os::unix::net::UnixDatagram,
    pub seen: Vec<(Instant, String)>,
}

impl NotifyManager {
    pub fn bind(path: &std::path::Path) -> Self {
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Self {
            sock,
            seen: Vec::new(),
        }
    }

    /// Read messages until one contains `needle` (returned) or `within` passes (None).
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), msg.clone()));
                if msg.contains(needle) {
                    return Some(msg);
                }
            }
        }
        None
    }

    pub fn count_since(&self, t: Instant, needle: &str) -> usize {
        self.seen
            .iter()
            .filter(|(at, m)| *at >= t && m.lines().any(|l| l == needle))
            .count()
    }
}

/// SIGTERM to a `sluice run`, its report read to the end, and a clean exit asserted (the
/// report in the failure).
pub fn stop_cleanly(mut child: Child, mut out: BufReader<ChildStdout>) -> String {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut report = String::new();
    std::io::Read::read_to_string(&mut out, &mut report).unwrap();
    assert!(child.wait().unwrap().success(), "{report}");
    report
}

/// A finished command: whether it succeeded, and its stdout then stderr.
pub fn succeeded_saying(out: &std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
