//! Waking a parked shard: an eventfd plus a `parked` flag, so producers pay a syscall only
//! when the consumer is actually asleep (never per event while it spins).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};

use crate::ingest::IngestError;

pub struct Waker {
    fd: OwnedFd,
    parked: AtomicBool,
}

impl Waker {
    pub fn new() -> Result<Self, IngestError> {
        // SAFETY: eventfd takes no pointers; a negative return is checked before the fd is used.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(IngestError::EventFd(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor we own and nothing else closes.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self {
            fd,
            parked: AtomicBool::new(false),
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Consumer: announce the intent to sleep. The caller must re-check its inbound work after
    /// this and call `unpark` instead of sleeping if there is any.
    pub fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    pub fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Producer, after publishing work: wake the consumer if it may be asleep.
    pub fn wake_if_parked(&self) {
        // Pairs with the fence in `park`: either the consumer sees our push when it re-checks,
        // or we see its flag here.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    pub fn wake(&self) {
        // An eventfd write only fails when the counter would overflow, i.e. it is already
        // signalled; either way the consumer will wake.
        let _ = nix::unistd::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Consumer, between `park` and `unpark`: sleep until woken or `timeout` passes (a failed
    /// or interrupted wait returns early; the caller checks its work again either way).
    pub fn sleep(&self, timeout: std::time::Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let _ = poll(&mut fds, ms);
        self.clear();
    }

    /// Consumer, after waking: reset the counter so the next wait blocks again.
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(&self.fd, &mut buf);
    }
}
