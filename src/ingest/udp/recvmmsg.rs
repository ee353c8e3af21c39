//! The fallback receive path: `recvmmsg` with MSG_DONTWAIT into preallocated buffers, one
//! syscall per batch of up to `ingest.udp.batch_datagrams_max` datagrams.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use super::cmsg::{parse_sockaddr, ControlInfo};
use super::RecvStats;
use crate::ingest::{Datagram, IngestError};

const NAME_LEN: usize = 128;
const CONTROL_LEN: usize = 64;

pub struct MmsgReceiver {
    sock: UdpSocket,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<[u8; NAME_LEN]>,
    controls: Vec<[u8; CONTROL_LEN]>,
    bufs: Vec<u8>,
    buf_len: usize,
    stats: RecvStats,
}

impl MmsgReceiver {
    pub fn new(sock: UdpSocket, batch: usize, datagram_bytes_max: usize) -> Self {
        // A datagram longer than the buffer comes back cut, with MSG_TRUNC set.
        let buf_len = datagram_bytes_max;
        Self {
            sock,
            // SAFETY: mmsghdr and iovec are plain old data; all-zero is valid (null pointers
            // are replaced before every call).
            hdrs: (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect(),
            // SAFETY: as above.
            iovs: (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect(),
            names: vec![[0; NAME_LEN]; batch],
            controls: vec![[0; CONTROL_LEN]; batch],
            bufs: vec![0; batch * buf_len],
            buf_len,
            stats: RecvStats::default(),
        }
    }

    pub fn stats(&self) -> RecvStats {
        self.stats
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub fn recv(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(Datagram<'_>),
    ) -> Result<usize, IngestError> {
        let n = max.min(self.hdrs.len());
        let bufs = self.bufs.as_mut_ptr();
        let slots = self
            .hdrs
            .iter_mut()
            .zip(self.iovs.iter_mut())
            .zip(self.names.iter_mut())
            .zip(self.controls.iter_mut())
            .take(n);
        for (i, (((h, iov), name), control)) in slots.enumerate() {
            *iov = libc::iovec {
                // SAFETY: i < n <= batch and bufs holds batch * buf_len bytes, so the offset
                // stays in the allocation.
                iov_base: unsafe { bufs.add(i * self.buf_len) }.cast(),
                iov_len: self.buf_len,
            };
            h.msg_len = 0;
            h.msg_hdr.msg_name = name.as_mut_ptr().cast();
            h.msg_hdr.msg_namelen = NAME_LEN as u32;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = control.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CONTROL_LEN;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: each of the first n headers points at a name, control and payload buffer
        // owned by self with the lengths given; the kernel writes within them and returns.
        let got = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                _ => Err(IngestError::Recvmmsg(e)),
            };
        }
        let got = (got as usize).min(n);
        let filled = self
            .hdrs
            .iter()
            .zip(&self.names)
            .zip(&self.controls)
            .zip(self.bufs.chunks_exact(self.buf_len))
            .take(got);
        for (((hdr, name), control), buf) in filled {
            let h = &hdr.msg_hdr;
            let ctl = ControlInfo::parse(
                control
                    .get(..h.msg_controllen.min(CONTROL_LEN))
                    .unwrap_or(&[]),
            );
            if let Some(d) = ctl.drops {
                self.stats.socket_drops = u64::from(d);
            }
            let src = parse_sockaddr(
                name.get(..(h.msg_namelen as usize).min(NAME_LEN))
                    .unwrap_or(&[]),
            )
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
            f(Datagram {
                payload: buf.get(..hdr.msg_len as usize).unwrap_or(buf),
                src,
                recv_ns: ctl.recv_ns.unwrap_or(0),
                truncated: h.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(got)
    }

    /// Block in poll(2) on the socket and the wake eventfd, at most `timeout`.
    pub fn park(&mut self, timeout: Duration, wake_fd: RawFd) -> Result<(), IngestError> {
        let mut fds = [
            libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: fds is a live array of two pollfd and its length is passed with it.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(IngestError::Recvmmsg(e));
            }
        }
        Ok(())
    }
}
