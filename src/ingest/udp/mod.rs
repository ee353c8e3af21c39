//! UDP ingest per shard: one SO_REUSEPORT socket each, read by io_uring (multishot RecvMsg
//! into a provided-buffer ring) or, where the kernel refuses that, by recvmmsg batches; or,
//! when asked for, frames from an AF_XDP socket (`super::xdp`) beside it.
//! One kernel interface per file; both parse addresses and control messages with `cmsg`.

mod cmsg;
mod recvmmsg;
mod socket;
mod uring;

pub use cmsg::{encode_sockaddr, parse_sockaddr, ControlInfo};
pub use recvmmsg::MmsgReceiver;
pub use socket::bind_reuseport;
pub use uring::{probe as probe_io_uring, UringReceiver};

use std::os::fd::RawFd;
use std::time::Duration;

use super::xdp::frame::FrameError;
use super::xdp::{XdpReceiver, XskKernelStats};
use super::{Datagram, IngestError};
use crate::config::UdpDriver;

/// Which receive path a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Recvmmsg,
    AfXdp,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Recvmmsg => "recvmmsg",
            Driver::AfXdp => "af_xdp",
        }
    }

    /// Resolve `ingest.udp.driver`: `auto` probes io_uring (ring + provided-buffer
    /// registration) and falls back to recvmmsg with the reason.
    pub fn resolve(wanted: UdpDriver) -> Result<(Driver, String), IngestError> {
        match wanted {
            UdpDriver::IoUring => {
                probe_io_uring()?;
                Ok((Driver::IoUring, "ingest.udp.driver = io_uring".to_owned()))
            }
            UdpDriver::Recvmmsg => {
                Ok((Driver::Recvmmsg, "ingest.udp.driver = recvmmsg".to_owned()))
            }
            // Never chosen by auto: it takes over a NIC queue and needs privileges.
            UdpDriver::AfXdp => Ok((Driver::AfXdp, "ingest.udp.driver = af_xdp".to_owned())),
            UdpDriver::Auto => match probe_io_uring() {
                Ok(()) => Ok((
                    Driver::IoUring,
                    "auto: io_uring multishot RecvMsg with provided buffers is available"
                        .to_owned(),
                )),
                Err(e) => Ok((
                    Driver::Recvmmsg,
                    format!("auto: io_uring unavailable ({e}); falling back to recvmmsg"),
                )),
            },
        }
    }
}

/// Counters a receiver updates beside the datagrams it hands out.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecvStats {
    /// Kernel's cumulative count of datagrams dropped on this socket (SO_RXQ_OVFL), newest seen.
    pub socket_drops: u64,
    pub enobufs: u64,
    pub rearms: u64,
    /// af_xdp: frames taken from the AF_XDP socket.
    pub xdp_frames: u64,
    /// af_xdp: frames refused by reason (`FrameError::ALL` order).
    pub xdp_frames_dropped: [u64; FrameError::ALL.len()],
    /// af_xdp: the kernel's counters for the shard's AF_XDP socket.
    pub xdp_kernel: XskKernelStats,
}

pub enum UdpReceiver {
    IoUring(Box<UringReceiver>),
    Recvmmsg(Box<MmsgReceiver>),
    AfXdp(Box<XdpReceiver>),
}

impl UdpReceiver {
    /// Hand up to `max` datagrams to `f`; returns how many.
    #[inline]
    pub fn recv(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(Datagram<'_>),
    ) -> Result<usize, IngestError> {
        match self {
            UdpReceiver::IoUring(r) => r.recv(max, f),
            UdpReceiver::Recvmmsg(r) => r.recv(max, f),
            UdpReceiver::AfXdp(r) => r.recv(max, f),
        }
    }

    /// Sleep until a datagram arrives, `wake_fd` is written, or `timeout` passes.
    pub fn park(&mut self, timeout: Duration, wake_fd: RawFd) -> Result<(), IngestError> {
        match self {
            UdpReceiver::IoUring(r) => r.park(timeout, wake_fd),
            UdpReceiver::Recvmmsg(r) => r.park(timeout, wake_fd),
            UdpReceiver::AfXdp(r) => r.park(timeout, wake_fd),
        }
    }

    pub fn stats(&mut self) -> RecvStats {
        match self {
            UdpReceiver::IoUring(r) => r.stats(),
            UdpReceiver::Recvmmsg(r) => r.stats(),
            UdpReceiver::AfXdp(r) => r.stats(),
        }
    }
}
