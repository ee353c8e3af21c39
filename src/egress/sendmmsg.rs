//! Batched reply sending: encoded datagrams are copied into a preallocated slab and handed to
//! the kernel with one `sendmmsg` call per batch.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use crate::ingest::udp::encode_sockaddr;
use crate::metrics::ShardCounters;

pub(super) struct Sender {
    sock: UdpSocket,
    slab: Vec<u8>,
    slot_len: usize,
    lens: Vec<usize>,
    names: Vec<[u8; 28]>,
    name_lens: Vec<u32>,
    /// Scores carried by each queued datagram (0 for alert copies), for counting.
    scores: Vec<u32>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside `iovs`/`hdrs` are rebuilt from owned buffers before every
// sendmmsg call and never dereferenced otherwise, so moving the Sender to its shard thread is sound.
unsafe impl Send for Sender {}

impl Sender {
    pub(super) fn new(sock: UdpSocket, batch: usize, datagram_bytes_max: usize) -> Self {
        Self {
            sock,
            slab: vec![0; batch * datagram_bytes_max],
            slot_len: datagram_bytes_max,
            lens: Vec::with_capacity(batch),
            names: vec![[0; 28]; batch],
            name_lens: vec![0; batch],
            scores: Vec::with_capacity(batch),
            // SAFETY: iovec and mmsghdr are plain old data; zero is valid and pointers are set
            // before use.
            iovs: (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect(),
            // SAFETY: as above.
            hdrs: (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect(),
        }
    }

    /// No slot left: `send_all` before queueing more.
    pub(super) fn is_full(&self) -> bool {
        self.lens.len() == self.hdrs.len()
    }

    /// Copy one datagram into the next slot; false when the batch is full (send first).
    pub(super) fn queue(&mut self, dest: SocketAddr, bytes: &[u8], scores: u32) -> bool {
        let i = self.lens.len();
        if i == self.hdrs.len() {
            return false;
        }
        // The encoder's bound keeps a batch under datagram_bytes_max; a longer one is a bug.
        crate::invariant!(
            bytes.len() <= self.slot_len,
            "reply of {} bytes over the slot",
            bytes.len()
        );
        let len = bytes.len().min(self.slot_len);
        self.slab[i * self.slot_len..i * self.slot_len + len].copy_from_slice(&bytes[..len]);
        self.name_lens[i] = encode_sockaddr(&dest, &mut self.names[i]);
        self.lens.push(len);
        self.scores.push(scores);
        true
    }

    /// Send every queued datagram; failures are counted, never retried forever.
    pub(super) fn send_all(&mut self, counters: &ShardCounters) {
        let n = self.lens.len();
        if n == 0 {
            return;
        }
        let slab = self.slab.as_mut_ptr();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                // SAFETY: slot i lies inside the slab (i < batch, slot_len per slot).
                iov_base: unsafe { slab.add(i * self.slot_len) }.cast(),
                iov_len: self.lens[i],
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = self.names[i].as_mut_ptr().cast();
            h.msg_namelen = self.name_lens[i];
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut done = 0;
        let mut interrupted = 0;
        while done < n {
            // SAFETY: headers done..n point at live buffers of self with their true lengths.
            let r = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(done),
                    (n - done) as u32,
                    0,
                )
            };
            if r > 0 {
                for i in done..done + r as usize {
                    counters.reply_datagrams.inc();
                    counters.scores_emitted.add(u64::from(self.scores[i]));
                }
                done += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if r < 0 && e.raw_os_error() == Some(libc::EINTR) && interrupted < 8 {
                interrupted += 1;
                continue;
            }
            // The first unsent datagram failed (unreachable, too large, ...): count its Scores
            // as lost and carry on with the rest.
            super::count_send_failure(counters, self.scores[done]);
            let failed = counters.events_dropped_by(crate::metrics::DropReason::SendError);
            if failed.is_power_of_two() {
                tracing::debug!(error = %e, failed, "reply datagram not sent");
            }
            done += 1;
        }
        self.lens.clear();
        self.scores.clear();
    }
}
