//! Fault runs through the real binary. SIGSTOP for 5 s then SIGCONT under a steady load:
//! every datagram sent is either answered or counted by the kernel as a socket drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::Read;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use sluice::wire::{read_scores, EventBatchEncoder, EventIn};

mod common;
use common::spawn_run;

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

/// The shutdown report's value of `name` (0 if the line is absent).
fn report_value(report: &str, name: &str) -> u64 {
    report
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next().and_then(|v| v.parse().ok()))?
        })
        .unwrap_or(0)
}

#[test]
fn a_stopped_service_loses_nothing_beyond_the_kernels_counted_socket_drops() {
    let (mut child, mut stdout, addr) = spawn_run(&[
        "shards.count=1".into(),
        // A small socket buffer so the 5 s stop overflows it: the drops must be counted.
        "ingest.udp.socket_rcvbuf_bytes=65536".into(),
    ]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ =
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &(16 << 20));
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let reader = sock.try_clone().unwrap();
    let sending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let receiving = {
        let sending = sending.clone();
        std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut duplicates = 0u64;
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            let mut quiet_since = Instant::now();
            loop {
                match reader.recv(&mut buf) {
                    Ok(n) => {
                        got.clear();
                        read_scores(&buf[..n], &mut got).unwrap();
                        for s in &got {
                            if !seen.insert(s.seq) {
                                duplicates += 1;
                            }
                        }
                        quiet_since = Instant::now();
                    }
                    Err(_) => {
                        let done = !sending.load(std::sync::atomic::Ordering::SeqCst);
                        if done && quiet_since.elapsed() > Duration::from_secs(3) {
                            break;
                        }
                    }
                }
            }
            (seen.len() as u64, duplicates)
        })
    };
    // 2 000 events/s, one a datagram, for 8 s; the service is stopped from 1 s to 6 s.
    let sender = {
        let sock = sock.try_clone().unwrap();
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut enc = EventBatchEncoder::new();
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < 16_000 {
                let due = start + Duration::from_micros(sent * 500);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let bytes = enc.encode(std::iter::once(EventIn {
                    key: sent % 512,
                    seq: sent,
                    amount: 3.0,
                    ..EventIn::default()
                }));
                sock.send_to(bytes, &addr).unwrap();
                sent += 1;
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    signal(child.id(), nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    signal(child.id(), nix::sys::signal::Signal::SIGCONT);
    let sent = sender.join().unwrap();
    sending.store(false, std::sync::atomic::Ordering::SeqCst);
    let (answered, duplicates) = receiving.join().unwrap();

    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    assert!(child.wait().unwrap().success());
    let mut report = String::new();
    stdout.read_to_string(&mut report).unwrap();
    let received = report_value(&report, "sluice_datagrams_received_total");
    let drops = report_value(&report, "sluice_socket_drops_total");
    let scored = report_value(&report, "sluice_scores_emitted_total");
    eprintln!(
        "SIGSTOP 5 s at 2000 events/s: sent {sent}, received {received}, socket drops {drops}, scored {scored}, answered {answered}"
    );
    assert_eq!(duplicates, 0);
    assert!(
        drops > 0,
        "a 64 KiB buffer cannot hold 5 s of 2000 datagrams/s: {report}"
    );
    assert_eq!(
        received + drops,
        sent,
        "every datagram answered or counted as dropped: {report}"
    );
    assert_eq!(scored, received, "every accepted event scored: {report}");
    assert_eq!(answered, scored, "every Score reached the client");
}
