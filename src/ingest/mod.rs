//! Receiving datagrams: the edge where bytes enter. `udp` owns sockets and the kernel
//! interfaces (io_uring, recvmmsg); `xdp` the kernel-bypass path (an XDP program and AF_XDP
//! sockets); `kafka` owns each shard's consumer of the partitions it owns.
// Reached by the network and Kafka: no index that could panic (hardening issue; tests may index).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod kafka;
pub mod udp;
pub mod xdp;

use std::net::SocketAddr;

/// One received datagram, borrowed from the receiver's buffer for the length of a callback.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    pub payload: &'a [u8],
    pub src: SocketAddr,
    /// Kernel receive time (CLOCK_REALTIME ns, SO_TIMESTAMPNS); 0 when the kernel gave none.
    pub recv_ns: u64,
    /// The kernel cut the payload to the buffer size: the datagram was larger than allowed.
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("socket {addr}: {what}: {source}")]
    Socket {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("io_uring: {what}: {source}")]
    Uring {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("recvmmsg: {0}")]
    Recvmmsg(std::io::Error),
    #[error("af_xdp: {0}")]
    Xdp(String),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("{0}")]
    Kafka(String),
    #[error("shard {0}'s thread panicked (a bug: its drain and last checkpoint did not run; a restart restores the checkpoint before)")]
    ShardPanicked(usize),
}
