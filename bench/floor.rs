//! The protocol floor: the least work that still speaks sluice's protocol. One thread, a plain
//! blocking UDP socket: receive, verify the EventBatch, answer each Observation with a Score
//! (no state, no routing, no batching across datagrams), send. Whatever latency this shows on a
//! machine is the kernel's and the network stack's, not sluice's. With `spin`, the socket is
//! non-blocking and the thread polls it without sleeping, as sluice's shards do: on a VM,
//! where a blocked thread's vCPU halts and must be woken by the host, that is the lower floor.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sluice::wire::{Decoder, EventKind, ScoreBatchEncoder, ScoreOut};

pub struct Floor {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<u64>>>,
}

impl Floor {
    /// `rcvbuf_bytes`: the same socket buffer sluice gets, so neither is starved by default.
    pub fn start(
        cpu: Option<usize>,
        wire: sluice::config::Wire,
        rcvbuf_bytes: usize,
        spin: bool,
        ip: std::net::IpAddr,
    ) -> anyhow::Result<Self> {
        let (sock, _) = sluice::ingest::udp::bind_reuseport(SocketAddr::new(ip, 0), rcvbuf_bytes)?;
        if spin {
            sock.set_nonblocking(true)?;
        } else {
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        }
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("floor".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    sluice::topology::pin_current(cpu)?;
                }
                serve(&sock, &flag, &Decoder::new(&wire))
            })?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Stop; returns the datagrams it answered.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("floor thread panicked"))?,
            None => Ok(0),
        }
    }
}

fn serve(sock: &UdpSocket, stop: &AtomicBool, decoder: &Decoder) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 65_536];
    let mut enc = ScoreBatchEncoder::new(256);
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                std::hint::spin_loop();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Ok(events) = decoder.decode(&buf[..n]) else {
            continue;
        };
        let scores = events
            .iter()
            .filter(|e| e.kind() == EventKind::Observation)
            .map(|e| ScoreOut {
                key: e.key(),
                seq: e.seq(),
                score: 0.5,
                ..ScoreOut::default()
            });
        let reply = enc.encode(scores);
        sock.send_to(reply, from)?;
        answered += 1;
    }
    Ok(answered)
}
