//! `ingest.udp.driver = af_xdp` on a real veth pair. Each test makes its own two throwaway
//! network namespaces (`sluice::testing::veth`: nothing outlives them). sluice runs inside the
//! receiving namespace (`nsenter`), the test's clients and raw frames come from the other. Root only: skipped with a message
//! otherwise, and a failure when CI=true (CI runs as root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command};
use std::time::Duration;

use common::{scrape, scrape_where, Client};
use sluice::ingest::xdp::frame;
use sluice::testing::veth::{
    self, RawSender, VethPair, RX_IF, RX_IP, RX_IP6, RX_MAC, TX_IP, TX_IP6, TX_MAC,
};
use sluice::wire::{EventBatchEncoder, EventIn};

const PORT: u16 = 7600;

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: AF_XDP tests need root and CI=true requires them"
    );
    eprintln!("{test}: skipped (AF_XDP tests need root: network namespaces, XDP, AF_XDP)");
    false
}

fn pair() -> VethPair {
    VethPair::new().unwrap_or_else(|e| panic!("veth pair: {e}"))
}

/// The af_xdp settings every sluice here runs with, then `sets`.
fn af_xdp_sets(sets: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = vec![
        "ingest.udp.driver=af_xdp".to_owned(),
        format!("ingest.udp.interface={RX_IF}"),
        format!("ingest.udp.listen={RX_IP}:{PORT}"),
        "shards.count=1".to_owned(),
        "shards.pin=false".to_owned(),
        "wire.datagram_bytes_max=16384".to_owned(),
        "wire.batch_events_max=512".to_owned(),
        "wire.tables_max=513".to_owned(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    all
}

/// `sluice run` on xr with `sets` after the af_xdp ones; its child and metrics URL.
fn sluice(pair: &VethPair, sets: &[&str]) -> (Child, String) {
    sluice_through(
        &["nsenter".to_owned(), pair.rx_ns()],
        env!("CARGO_BIN_EXE_sluice").as_ref(),
        sets,
    )
}

/// `sluice` with `binary`, started through `wrapper` (which enters xr's namespace).
fn sluice_through(wrapper: &[String], binary: &std::path::Path, sets: &[&str]) -> (Child, String) {
    let (mut child, stdout, _, metrics) =
        common::spawn_binary_wrapped(binary, wrapper, &af_xdp_sets(sets));
    // Keep reading stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in stdout.lines() {});
    assert!(child.try_wait().unwrap().is_none());
    (child, metrics)
}

/// `sluice run` with `binary` through `wrapper` and the af_xdp settings, then `sets`: it must
/// refuse to start; what it said.
fn refused_through(wrapper: &[String], binary: &std::path::Path, sets: &[&str]) -> String {
    let (program, args) = wrapper.split_first().expect("a wrapper");
    let out = Command::new(program)
        .args(args)
        .arg(binary)
        .arg("run")
        .args(
            af_xdp_sets(sets)
                .iter()
                .flat_map(|s| ["--set".to_owned(), s.clone()]),
        )
        // Somewhere an unprivileged user may be (its working directory).
        .current_dir(binary.parent().unwrap_or(std::path::Path::new("/")))
        .output()
        .unwrap();
    assert!(!out.status.success(), "sluice started with {sets:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether an XDP program is on xr (`ip -d link` names it "prog/xdp"), or fail with `when`.
fn assert_program(pair: &VethPair, attached: bool, when: &str) {
    let link = pair.rx_link().unwrap();
    assert_eq!(
        link.contains("prog/xdp"),
        attached,
        "{when}: XDP program attached should be {attached}:\n{link}"
    );
}

fn in_rx<T: Send>(pair: &VethPair, f: impl FnOnce() -> T + Send) -> T {
    pair.in_rx(f).unwrap()
}

fn in_tx<T: Send>(pair: &VethPair, f: impl FnOnce() -> T + Send) -> T {
    pair.in_tx(f).unwrap()
}

fn run(args: &[&str]) -> String {
    veth::run(args).unwrap()
}

fn stop(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success(), "sluice exited non-zero");
}

fn target() -> SocketAddr {
    SocketAddr::new(RX_IP.into(), PORT)
}

fn every_observation_scored_once(mode: &str) {
    let pair = pair();
    let (child, metrics) = sluice(&pair, &[&format!("ingest.udp.xdp_mode={mode}")]);
    assert_program(&pair, true, "after start");
    let tx_ip: IpAddr = TX_IP.into();
    let mut client = in_tx(&pair, || Client::new_from(target(), 4, tx_ip));
    // Small batches (one frame each), then batches of 100 events (~3.5 KB: one frame of the
    // 9000-byte MTU split over 2048-byte UMEM frames, joined by the receiver), then, once those
    // are answered, 400 (~14 KB: IP fragments, which the program leaves to the kernel and the
    // shard reads from its socket; the two paths do not keep order between each other).
    let size = |n: u64| {
        EventBatchEncoder::new()
            .encode((0..n).map(|i| EventIn {
                key: 1000 + i,
                seq: 5000 + i,
                amount: 1005.0,
                ..EventIn::default()
            }))
            .len()
    };
    assert!(size(100) > 2048 && size(100) < 8900, "{}", size(100));
    assert!(size(400) > 9000 && size(400) < 16384, "{}", size(400));
    let mut small = 0u64;
    for i in 0..2_000u64 {
        let key = i % 97;
        client.send(&[(key, i % 10 == 9)]);
        small += 1;
    }
    let mut scores = Vec::new();
    for sizes in [100usize, 400] {
        for round in 0..6u64 {
            for sock in 0..4u64 {
                let events: Vec<(u64, bool)> = (0..sizes as u64)
                    .map(|j| (1000 + sock + 4 * ((j + round) % 50), false))
                    .collect();
                client.send(&events);
            }
        }
        let want = client.replies_wanted() - scores.len();
        scores.extend(client.collect(want));
    }
    client.check(&scores);
    let (xdp_frames, dropped, kernel_dropped, received) = in_rx(&pair, || {
        (
            scrape(&metrics, "sluice_xdp_frames_received_total"),
            scrape(&metrics, "sluice_xdp_frames_dropped_total"),
            scrape(&metrics, "sluice_xdp_kernel_dropped_total"),
            scrape(&metrics, "sluice_datagrams_received_total"),
        )
    });
    assert_eq!(
        (dropped, kernel_dropped),
        (0, 0),
        "valid frames refused or dropped"
    );
    let sent = small + 2 * 6 * 4;
    assert_eq!(received, sent, "every datagram received once");
    // Everything but the fragmented datagrams came through the AF_XDP socket.
    assert!(
        xdp_frames >= small + 6 * 4 && xdp_frames < sent,
        "{xdp_frames} frames through AF_XDP of {sent} datagrams"
    );
    stop(child);
    assert_program(&pair, false, "after a clean stop");
}

#[test]
fn every_observation_gets_one_score_over_af_xdp_native() {
    if root_or_skip("af_xdp native") {
        every_observation_scored_once("native");
    }
}

#[test]
fn every_observation_gets_one_score_over_af_xdp_generic() {
    if root_or_skip("af_xdp generic") {
        every_observation_scored_once("generic");
    }
}

#[test]
fn ipv6_observations_are_scored_once_over_af_xdp() {
    if !root_or_skip("af_xdp ipv6") {
        return;
    }
    let pair = pair();
    let (child, metrics) = sluice(
        &pair,
        &[
            &format!("ingest.udp.listen=[{RX_IP6}]:{PORT}"),
            "ingest.udp.xdp_mode=generic",
        ],
    );
    let target = SocketAddr::new(RX_IP6.into(), PORT);
    let tx_ip: IpAddr = TX_IP6.into();
    let mut client = in_tx(&pair, || Client::new_from(target, 2, tx_ip));
    for i in 0..300u64 {
        client.send(&[(i % 31, false)]);
    }
    // Multi-buffer over IPv6 too (~3.5 KB in one 9000-byte frame).
    for round in 0..4u64 {
        let events: Vec<(u64, bool)> = (0..100u64)
            .map(|j| (2 * ((j + round) % 40), false))
            .collect();
        client.send(&events);
    }
    let want = client.replies_wanted();
    let scores = client.collect(want);
    client.check(&scores);
    let (xdp_frames, dropped) = in_rx(&pair, || {
        (
            scrape(&metrics, "sluice_xdp_frames_received_total"),
            scrape(&metrics, "sluice_xdp_frames_dropped_total"),
        )
    });
    assert_eq!(dropped, 0);
    assert_eq!(
        xdp_frames, 304,
        "every IPv6 datagram through the AF_XDP socket"
    );
    stop(child);
}

/// Two shards on two receive queues (a veth pair with two queues each side; the sender's
/// flows spread over them by hash): each shard's AF_XDP socket takes its queue's frames, the
/// events go to the shards that own their keys over the rings, every Observation is scored
/// once, and both sockets took frames.
#[test]
fn two_shards_on_two_queues_each_take_their_queue_and_every_observation_is_scored_once() {
    if !root_or_skip("af_xdp two queues") {
        return;
    }
    let pair = VethPair::with_queues(2).unwrap_or_else(|e| panic!("veth pair: {e}"));
    let (child, metrics) = sluice(&pair, &["shards.count=2", "ingest.udp.xdp_mode=native"]);
    let tx_ip: IpAddr = TX_IP.into();
    // Many source ports, so that the flows land on both queues.
    let mut client = in_tx(&pair, || Client::new_from(target(), 16, tx_ip));
    let sent = 1_600u64;
    for i in 0..sent {
        client.send(&[(i % 64, i % 10 == 9)]);
    }
    let want = client.replies_wanted();
    let scores = client.collect(want);
    client.check(&scores);
    let (per_shard, received) = in_rx(&pair, || {
        (
            [0, 1].map(|shard| {
                scrape_where(
                    &metrics,
                    "sluice_xdp_frames_received_total",
                    &format!("shard=\"{shard}\""),
                )
            }),
            scrape(&metrics, "sluice_datagrams_received_total"),
        )
    });
    assert_eq!(received, sent, "every datagram received once");
    assert_eq!(
        per_shard[0] + per_shard[1],
        sent,
        "every datagram through an AF_XDP socket: {per_shard:?}"
    );
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "both queues' sockets took frames: {per_shard:?}"
    );
    stop(child);
}

/// VLAN-tagged frames (one 802.1Q tag; 802.1ad outer + 802.1Q inner) from a raw socket, as a
/// trunk port hands them over: the program on xr must look past the tags to the address and
/// port, and the receiver must parse them. Raw frames rather than a VLAN interface on the
/// pair: this VM's kernel has no 802.1Q support (CONFIG_VLAN_8021Q unset), and a veth would
/// carry a VLAN interface's tag beside the frame, not in it, unless its offload is turned off.
/// Replies go back untagged through sluice's socket, to the client's.
#[test]
fn vlan_tagged_observations_are_scored_once_over_af_xdp() {
    if !root_or_skip("af_xdp vlan") {
        return;
    }
    let pair = pair();
    let (child, metrics) = sluice(&pair, &["ingest.udp.xdp_mode=native"]);
    let tx_ip: IpAddr = TX_IP.into();
    let mut client = in_tx(&pair, || Client::new_from(target(), 1, tx_ip));
    let src = client.local_addr(0);
    let mut frames = Vec::new();
    let tagged = |payload: &[u8], i: u64| {
        let qinq = i % 2 == 1;
        let tags: &[u16] = if qinq { &[100, 7] } else { &[7] };
        let mut f = frame::encode((TX_MAC, RX_MAC), tags, src, target(), payload);
        if qinq {
            // 802.1ad for the outer tag (the encoder writes 802.1Q for each).
            f[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
        }
        assert_eq!(f[if qinq { 20 } else { 16 }..][..2], [0x08, 0x00]);
        f
    };
    for i in 0..300u64 {
        let (_, _, payload) = client.prepare(&[(i % 41, i % 10 == 9)]);
        frames.push(tagged(&payload, i));
    }
    // Multi-buffer with the tags (~3.5 KB in one frame over two UMEM frames).
    for round in 0..4u64 {
        let events: Vec<(u64, bool)> = (0..100u64)
            .map(|j| (3 * ((j + round) % 40), false))
            .collect();
        let (_, _, payload) = client.prepare(&events);
        frames.push(tagged(&payload, round));
    }
    in_tx(&pair, || send_frames(&frames));
    let want = client.replies_wanted();
    let scores = client.collect(want);
    client.check(&scores);
    let (xdp_frames, dropped, received) = in_rx(&pair, || {
        (
            scrape(&metrics, "sluice_xdp_frames_received_total"),
            scrape(&metrics, "sluice_xdp_frames_dropped_total"),
            scrape(&metrics, "sluice_datagrams_received_total"),
        )
    });
    assert_eq!(dropped, 0, "tagged frames refused");
    assert_eq!(received, 304, "every datagram received once");
    assert_eq!(
        xdp_frames, 304,
        "every tagged datagram through the AF_XDP socket (the kernel here drops tagged frames)"
    );
    stop(child);
}

/// Send raw Ethernet frames out of xt, as a broken sender would; every one must go.
fn send_frames(frames: &[Vec<u8>]) {
    let sender = RawSender::new().unwrap();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut sent = 0;
    while sent < refs.len() {
        sent += sender.send(&refs[sent..]).unwrap();
    }
}

#[test]
fn malformed_frames_are_counted_by_reason_and_other_traffic_still_reaches_the_kernel() {
    if !root_or_skip("af_xdp malformed frames") {
        return;
    }
    let pair = pair();
    let (child, metrics) = sluice(&pair, &[]);
    let src = SocketAddr::new(TX_IP.into(), 40000);
    let payload = {
        let mut enc = EventBatchEncoder::new();
        enc.encode(std::iter::once(EventIn {
            key: 5,
            seq: 0,
            ..EventIn::default()
        }))
        .to_vec()
    };
    let good = frame::encode((TX_MAC, RX_MAC), &[], src, target(), &payload);
    const IP: usize = 14;
    const UDP: usize = IP + 20;
    let with = |at: usize, bytes: &[u8]| {
        let mut f = good.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let total = good.len() - IP;
    let frames = vec![
        // The IP header promises 40 bytes more than the frame holds.
        with(IP + 2, &((total + 40) as u16).to_be_bytes()),
        good[..UDP + 4].to_vec(),
        // UDP length beyond the IP payload; under its own header.
        with(UDP + 4, &((total as u16) + 8).to_be_bytes()),
        with(UDP + 4, &[0, 3]),
        // IPv4 header checksum; UDP checksum (a payload byte changed).
        with(IP + 10, &[0xde, 0xad]),
        with(good.len() - 1, &[good[good.len() - 1] ^ 0x55]),
    ];
    in_tx(&pair, || send_frames(&frames));
    // The same frame, intact, is scored: the path is alive after the bad ones.
    let tx_ip: IpAddr = TX_IP.into();
    let mut client = in_tx(&pair, || Client::new_from(target(), 1, tx_ip));
    for i in 0..50 {
        client.send(&[(i % 5, false)]);
    }
    let scores = client.collect(50);
    client.check(&scores);
    let by = |reason: &str| {
        in_rx(&pair, || {
            scrape_where(
                &metrics,
                "sluice_xdp_frames_dropped_total",
                &format!("reason=\"{reason}\""),
            )
        })
    };
    assert_eq!(
        [
            by("truncated"),
            by("bad_length"),
            by("bad_checksum"),
            by("not_udp")
        ],
        [2, 2, 2, 0]
    );
    // ARP was answered by the kernel (the client reached sluice), and so are ping and a UDP
    // socket on another port of the same address.
    run(&[
        "nsenter",
        &pair.tx_ns(),
        "ping",
        "-c",
        "2",
        "-W",
        "5",
        &RX_IP.to_string(),
    ]);
    let other = in_rx(&pair, || UdpSocket::bind((RX_IP, 7700)).unwrap());
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    in_tx(&pair, || {
        UdpSocket::bind((TX_IP, 0))
            .unwrap()
            .send_to(b"not for sluice", (RX_IP, 7700))
            .unwrap()
    });
    let mut buf = [0u8; 64];
    let (n, from) = other
        .recv_from(&mut buf)
        .expect("the kernel socket got nothing");
    assert_eq!(&buf[..n], b"not for sluice");
    assert_eq!(from.ip(), IpAddr::from(TX_IP));
    stop(child);
}

#[test]
fn a_killed_sluice_leaves_no_program_attached_and_a_restart_attaches_again() {
    if !root_or_skip("af_xdp kill -9") {
        return;
    }
    let pair = pair();
    for round in 0..2 {
        let (mut child, _) = sluice(&pair, &[]);
        assert_program(&pair, true, &format!("round {round}, after start"));
        let tx_ip: IpAddr = TX_IP.into();
        let mut client = in_tx(&pair, || Client::new_from(target(), 1, tx_ip));
        client.send(&[(1, false)]);
        let scores = client.collect(1);
        client.check(&scores);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_program(&pair, false, &format!("round {round}, after kill -9"));
    }
}

#[test]
fn af_xdp_without_an_interface_is_a_start_error_naming_it() {
    let err = common::run_refused(&[
        "ingest.udp.driver=af_xdp".into(),
        "ingest.udp.interface=sluice-none0".into(),
    ]);
    assert!(
        err.contains("no network interface named \"sluice-none0\""),
        "{err}"
    );
}

/// The socket is opened on the shard's own thread (its UMEM on the shard's NUMA node): a
/// queue the interface does not have is still a start-up error naming the shard and the
/// queue, the exit status non-zero, and the program attached before it is gone again.
#[test]
fn a_queue_the_interface_lacks_is_a_start_error_naming_it_and_leaves_no_program() {
    if !root_or_skip("af_xdp missing queue") {
        return;
    }
    let pair = pair();
    let err = refused_through(
        &["nsenter".to_owned(), pair.rx_ns()],
        env!("CARGO_BIN_EXE_sluice").as_ref(),
        &["ingest.udp.queues=[5]", "state.hot_capacity=1024"],
    );
    assert!(
        err.contains(&format!("shard 0's AF_XDP socket on {RX_IF} queue 5")),
        "{err}"
    );
    assert_program(&pair, false, "after the refused start");
}

/// sluice as user nobody: a copy of the binary nobody can reach (the build's is under /root),
/// started through `setpriv` with only `caps` (ambient, so they survive the exec) and
/// RLIMIT_MEMLOCK at 64 KiB (`prlimit`), inside the receiving namespace. What systemd does with
/// the drop-in besides the capabilities (address families, system call filter) is not
/// reproduced here; `scripts/check-service` verifies the files.
struct Unprivileged {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl Unprivileged {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let bin = dir.join("sluice");
        if std::fs::hard_link(env!("CARGO_BIN_EXE_sluice"), &bin).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_sluice"), &bin).unwrap();
        }
        Self { dir, bin }
    }

    /// The wrapper for `caps` (names as systemd writes them: `CAP_BPF`).
    fn wrapper(&self, pair: &VethPair, caps: &[String]) -> Vec<String> {
        let list: String = caps
            .iter()
            .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        [
            "nsenter".to_owned(),
            pair.rx_ns(),
            "prlimit".to_owned(),
            "--memlock=65536:65536".to_owned(),
            "setpriv".to_owned(),
            "--reuid=65534".to_owned(),
            "--regid=65534".to_owned(),
            "--clear-groups".to_owned(),
            format!("--inh-caps=-all{list}"),
            format!("--ambient-caps=-all{list}"),
            format!("--bounding-set=-all{list}"),
        ]
        .into()
    }

    /// Start it with `caps`: it must refuse; what it said.
    fn refused(&self, pair: &VethPair, caps: &[String]) -> String {
        refused_through(
            &self.wrapper(pair, caps),
            &self.bin,
            &["state.hot_capacity=1024"],
        )
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The capabilities systemd/sluice-af-xdp.conf grants (its AmbientCapabilities line).
fn drop_in_capabilities() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/sluice-af-xdp.conf"
    ))
    .unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the drop-in sets AmbientCapabilities");
    line.split_whitespace().map(str::to_owned).collect()
}

/// Started as a user with no capability (a unit without the drop-in): a start-up error that
/// names the capabilities, exit status non-zero, nothing attached.
#[test]
fn af_xdp_without_privileges_is_a_start_error_naming_the_capabilities() {
    if !root_or_skip("af_xdp without privileges") {
        return;
    }
    let pair = pair();
    let err = Unprivileged::new("no-caps").refused(&pair, &[]);
    assert!(
        err.contains("af_xdp needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or root"),
        "{err}"
    );
    assert_program(&pair, false, "after the refused start");
}

/// The drop-in's capabilities but CAP_IPC_LOCK, with a 64 KiB RLIMIT_MEMLOCK: the shard's
/// UMEM (32 MiB) cannot be locked, and the error says which limit and capability.
#[test]
fn af_xdp_without_cap_ipc_lock_and_a_low_memlock_is_a_start_error_naming_both() {
    if !root_or_skip("af_xdp without CAP_IPC_LOCK") {
        return;
    }
    let pair = pair();
    let caps: Vec<String> = drop_in_capabilities()
        .into_iter()
        .filter(|c| c != "CAP_IPC_LOCK")
        .collect();
    let err = Unprivileged::new("no-ipc-lock").refused(&pair, &caps);
    assert!(
        err.contains("shard 0's AF_XDP socket")
            && err.contains("raise LimitMEMLOCK or grant CAP_IPC_LOCK"),
        "{err}"
    );
    assert_program(&pair, false, "after the refused start");
}

/// As user nobody with exactly the drop-in's capabilities (and the same 64 KiB
/// RLIMIT_MEMLOCK): sluice starts on af_xdp and scores every Observation through the AF_XDP
/// socket. Found by it: the drop-in lacked CAP_PERFMON, without which the verifier refuses
/// the program to a non-root user.
#[test]
fn af_xdp_runs_as_nobody_with_exactly_the_drop_in_capabilities() {
    if !root_or_skip("af_xdp with the drop-in capabilities") {
        return;
    }
    let pair = pair();
    let user = Unprivileged::new("drop-in");
    let wrapper = user.wrapper(&pair, &drop_in_capabilities());
    let (child, metrics) = sluice_through(&wrapper, &user.bin, &[]);
    assert_program(&pair, true, "after an unprivileged start");
    let tx_ip: IpAddr = TX_IP.into();
    let mut client = in_tx(&pair, || Client::new_from(target(), 2, tx_ip));
    for i in 0..200u64 {
        client.send(&[(i % 23, false)]);
    }
    let scores = client.collect(200);
    client.check(&scores);
    let xdp_frames = in_rx(&pair, || {
        scrape(&metrics, "sluice_xdp_frames_received_total")
    });
    assert_eq!(xdp_frames, 200, "every datagram through the AF_XDP socket");
    stop(child);
}

#[test]
fn the_committed_xdp_object_is_built_from_its_source() {
    let have_clang = Command::new("clang").arg("--version").output().is_ok()
        && std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists();
    if !have_clang {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI installs clang and libbpf-dev (scripts/install-deps): the object must be checked"
        );
        eprintln!("skipped: no clang + libbpf-dev to rebuild src/ingest/xdp/sluice_xdp.o");
        return;
    }
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-xdp"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
