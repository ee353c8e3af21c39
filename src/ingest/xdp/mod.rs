//! AF_XDP ingest (`ingest.udp.driver = af_xdp`): an XDP program on the interface sends UDP
//! for sluice's port to one AF_XDP socket per shard (by receive queue), and the shard reads
//! frames from its socket's UMEM with no system call while frames keep coming. `frame` turns a
//! frame into the same `Datagram` the other drivers hand out, so nothing above ingest knows.
//!
//! The shard's kernel UDP socket stays bound (replies leave through it, and what the program
//! leaves to the kernel — IP fragments, frames on a queue with no AF_XDP socket — arrives
//! there): the receiver reads it too, every 16th call and after every park.

pub mod frame;
mod program;
mod xsk;

pub use program::{ifindex, XdpError, XdpProgram, QUEUES_MAX};
pub use xsk::{Xsk, XskError, XskKernelStats, XskSpec};

use std::os::fd::RawFd;
use std::time::Duration;

use self::frame::FrameError;
use super::udp::{MmsgReceiver, RecvStats};
use super::{Datagram, IngestError};

/// The kernel socket is read once per this many receive calls (and on the first call after a
/// park): a syscall per call would cost the AF_XDP path what it saves; what arrives there
/// (fragments, mostly) waits at most this many passes.
const KERNEL_SOCKET_EVERY: u32 = 16;
/// The kernel's socket counters (a getsockopt) are read once per this many `stats` calls (the
/// shard calls it once a loop turn: about once a second when idle, more often under load).
const KERNEL_STATS_EVERY: u32 = 1024;

pub struct XdpReceiver {
    xsk: Xsk,
    kernel: MmsgReceiver,
    /// A multi-buffer packet's pieces, joined (sized once: headers + wire.datagram_bytes_max).
    joined: Vec<u8>,
    check_udp_sum: bool,
    dropped: [u64; FrameError::ALL.len()],
    kernel_stats: XskKernelStats,
    frames: u64,
    calls: u32,
    stats_calls: u32,
}

/// Ethernet + two VLAN tags + IPv6 + UDP: the most header a datagram can carry here.
pub const HEADERS_MAX: usize = 14 + 8 + 40 + 8;

impl XdpReceiver {
    pub fn new(
        xsk: Xsk,
        kernel: MmsgReceiver,
        datagram_bytes_max: usize,
        check_udp_sum: bool,
    ) -> Self {
        Self {
            xsk,
            kernel,
            joined: Vec::with_capacity(HEADERS_MAX + datagram_bytes_max),
            check_udp_sum,
            dropped: [0; FrameError::ALL.len()],
            kernel_stats: XskKernelStats::default(),
            frames: 0,
            calls: 0,
            stats_calls: 0,
        }
    }

    pub fn zero_copy(&self) -> bool {
        self.xsk.zero_copy()
    }

    /// Hand up to `max` datagrams to `f`; returns how many frames were taken (refused ones
    /// included: they are work done).
    pub fn recv(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(Datagram<'_>),
    ) -> Result<usize, IngestError> {
        self.calls = self.calls.wrapping_add(1);
        let ready = self.xsk.ready();
        let mut taken = 0usize;
        if ready > 0 {
            // No kernel receive timestamp reaches an AF_XDP socket in copy mode: one clock
            // read per batch stands in for it (the batch was all there at this instant).
            let now = crate::clock::realtime_ns();
            let mut i = 0u32;
            let mut used = 0u32;
            while i < ready && taken < max {
                let (bytes, more) = self.xsk.peek(i);
                if !more {
                    deliver(bytes, now, self.check_udp_sum, &mut self.dropped, f);
                    i += 1;
                } else {
                    // A packet in several frames (XDP_USE_SG): join its pieces.
                    let cap = self.joined.capacity();
                    self.joined.clear();
                    let mut whole = false;
                    let mut too_long = false;
                    while i < ready {
                        let (piece, more) = self.xsk.peek(i);
                        i += 1;
                        if self.joined.len() + piece.len() <= cap {
                            self.joined.extend_from_slice(piece);
                        } else {
                            too_long = true;
                        }
                        if !more {
                            whole = true;
                            break;
                        }
                    }
                    if !whole {
                        // The kernel publishes a packet's pieces together; if this batch
                        // still ends inside one, leave it (from `used` on) for the next call.
                        break;
                    }
                    if too_long {
                        if let Some(c) = self.dropped.get_mut(FrameError::TooLong.index()) {
                            *c += 1;
                        }
                    } else {
                        deliver(&self.joined, now, self.check_udp_sum, &mut self.dropped, f);
                    }
                }
                used = i;
                taken += 1;
            }
            self.xsk.release(used);
            self.frames += taken as u64;
        }
        if self.calls % KERNEL_SOCKET_EVERY == 0 {
            taken += self.kernel.recv(max.saturating_sub(taken).max(1), f)?;
        }
        Ok(taken)
    }

    /// Sleep until a frame or a datagram arrives, `wake_fd` is written, or `timeout` passes.
    pub fn park(&mut self, timeout: Duration, wake_fd: RawFd) -> Result<(), IngestError> {
        // A driver waiting for a kick before it takes fill frames would never deliver one.
        self.xsk.wake_if_asked();
        // The next call reads the kernel socket: the wake-up may be for it.
        self.calls = KERNEL_SOCKET_EVERY - 1;
        xsk::poll_readable(&[self.xsk.fd(), self.kernel.as_raw_fd(), wake_fd], timeout)
            .map_err(|e| IngestError::Xdp(format!("poll: {e}")))
    }

    pub fn stats(&mut self) -> RecvStats {
        self.stats_calls = self.stats_calls.wrapping_add(1);
        if self.stats_calls % KERNEL_STATS_EVERY == 0 {
            self.kernel_stats = self.xsk.kernel_stats();
        }
        let mut s = self.kernel.stats();
        s.xdp_frames = self.frames;
        s.xdp_frames_dropped = self.dropped;
        s.xdp_kernel = self.kernel_stats;
        s
    }
}

fn deliver(
    frame: &[u8],
    now: u64,
    check_udp_sum: bool,
    dropped: &mut [u64; FrameError::ALL.len()],
    f: &mut dyn FnMut(Datagram<'_>),
) {
    match frame::parse(frame, check_udp_sum) {
        Ok(udp) => f(Datagram {
            payload: frame.get(udp.payload).unwrap_or(&[]),
            src: udp.src,
            recv_ns: now,
            truncated: false,
        }),
        Err(e) => {
            if let Some(c) = dropped.get_mut(e.index()) {
                *c += 1;
            }
        }
    }
}
