//! The shard socket: SO_REUSEPORT so every shard binds the same address and the kernel spreads
//! flows across them, kernel receive timestamps, and the drop counter as a control message.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
};

use crate::ingest::IngestError;

fn io(addr: SocketAddr, what: &'static str) -> impl FnOnce(nix::Error) -> IngestError {
    move |e| IngestError::Socket {
        addr,
        what,
        source: std::io::Error::from(e),
    }
}

/// A blocking UDP socket bound to `addr` with SO_REUSEPORT. Receives use MSG_DONTWAIT (or
/// io_uring), so blocking mode only affects sends, where it is what we want: a full send
/// buffer waits instead of dropping a reply.
pub fn bind_reuseport(
    addr: SocketAddr,
    rcvbuf_bytes: usize,
) -> Result<(UdpSocket, usize), IngestError> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(io(addr, "socket"))?;
    setsockopt(&fd, sockopt::ReusePort, &true).map_err(io(addr, "SO_REUSEPORT"))?;
    setsockopt(&fd, sockopt::ReceiveTimestampns, &true).map_err(io(addr, "SO_TIMESTAMPNS"))?;
    setsockopt(&fd, sockopt::RxqOvfl, &1).map_err(io(addr, "SO_RXQ_OVFL"))?;
    // SO_RCVBUFFORCE passes net.core.rmem_max when we have CAP_NET_ADMIN; else fall back.
    if setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf_bytes).is_err() {
        setsockopt(&fd, sockopt::RcvBuf, &rcvbuf_bytes).map_err(io(addr, "SO_RCVBUF"))?;
    }
    let granted =
        nix::sys::socket::getsockopt(&fd, sockopt::RcvBuf).map_err(io(addr, "SO_RCVBUF"))?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(io(addr, "bind"))?;
    Ok((UdpSocket::from(fd), granted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sockets_share_one_port() {
        let (a, _) = bind_reuseport("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap();
        let addr = a.local_addr().unwrap();
        let (b, granted) = bind_reuseport(addr, 1 << 16).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        assert!(
            granted >= 1 << 16,
            "kernel doubles the request, got {granted}"
        );
    }
}
