//! One AF_XDP socket over `libc`: its UMEM (frames the kernel copies received frames into, or
//! the NIC writes into in zero-copy mode), the fill ring (frames handed to the kernel), the RX
//! ring (frames handed back, filled) and the completion ring the kernel requires beside them.
//! Rings are single-producer/single-consumer arrays shared with the kernel through mmap; the
//! producer and consumer indices are the only synchronisation, with acquire/release order.
//! All of sluice's AF_XDP `unsafe` is in this file.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// What a socket is made with (checked by config validation before this runs).
#[derive(Debug, Clone, Copy)]
pub struct XskSpec {
    pub ifindex: u32,
    pub queue: u32,
    /// UMEM frames, also the size of the fill and RX rings (power of two), so the fill ring
    /// can hold every frame and a frame taken from RX always has a slot to go back to.
    pub frames: u32,
    /// Bytes per frame: 2048 or 4096.
    pub frame_bytes: u32,
    /// Try zero-copy first (falls back to copy mode when the driver refuses it).
    pub zero_copy: bool,
}

/// Why a socket could not be made, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("AF_XDP {what}: {source}{hint}")]
    Sys {
        what: &'static str,
        source: io::Error,
        hint: &'static str,
    },
}

fn sys(what: &'static str, e: io::Error) -> XskError {
    let hint = match (what, e.raw_os_error()) {
        ("socket", Some(libc::EPERM | libc::EACCES)) => {
            " (AF_XDP needs CAP_NET_RAW and CAP_BPF; the af-xdp systemd drop-in grants them)"
        }
        ("socket", Some(libc::EAFNOSUPPORT)) => " (kernel built without CONFIG_XDP_SOCKETS)",
        // ENOBUFS is what the kernel says when the UMEM would pass RLIMIT_MEMLOCK (seen as an
        // unprivileged user with every capability of the drop-in except CAP_IPC_LOCK).
        ("UMEM registration", Some(libc::ENOMEM | libc::ENOBUFS | libc::EPERM)) => {
            " (the UMEM is locked memory: raise LimitMEMLOCK or grant CAP_IPC_LOCK)"
        }
        ("mmap UMEM", Some(libc::ENOMEM)) => " (not enough memory for the UMEM)",
        ("bind", Some(libc::EINVAL)) => {
            " (no such receive queue on the interface: see ingest.udp.queues)"
        }
        ("bind", Some(libc::EBUSY)) => " (another AF_XDP socket is bound to this queue)",
        _ => "",
    };
    XskError::Sys {
        what,
        source: e,
        hint,
    }
}

fn last(what: &'static str) -> XskError {
    sys(what, io::Error::last_os_error())
}

/// One mapped ring. `T` is `u64` (fill, completion: frame addresses) or `xdp_desc` (RX).
struct Ring<T> {
    map: *mut libc::c_void,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut T,
    mask: u32,
}

impl<T> Ring<T> {
    /// Map ring `pgoff` of `fd` with `size` entries at the offsets the kernel gave.
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: libc::off_t,
        what: &'static str,
    ) -> Result<Self, XskError> {
        let map_len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: a fresh shared mapping of the socket's ring at the kernel's page offset for
        // it, of the length the kernel's own offsets and the ring size give; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(last(what));
        }
        let at = |o: u64| map.cast::<u8>().wrapping_add(o as usize);
        Ok(Self {
            map,
            map_len,
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            desc: at(off.desc).cast(),
            mask: size - 1,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: the pointer lies in the live mapping (kernel offset), aligned by the kernel,
        // and the kernel writes it only through atomic stores.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, i: u32) -> *mut T {
        // `& mask` keeps the index inside the `mask + 1` entries mapped after `desc`.
        self.desc.wrapping_add((i & self.mask) as usize)
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; nothing points into it after this
        // (the ring owns every pointer into it).
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// Counters the kernel keeps for the socket (XDP_STATISTICS).
#[derive(Debug, Default, Clone, Copy)]
pub struct XskKernelStats {
    /// Frames the kernel dropped for this socket: RX ring full, no fill frame, invalid.
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub fill_ring_empty: u64,
}

pub struct Xsk {
    fd: OwnedFd,
    umem: *mut u8,
    umem_len: usize,
    frame_bytes: u32,
    fill: Ring<u64>,
    _completion: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    /// Our copies of the indices we own (RX consumer, fill producer).
    rx_cons: u32,
    fill_prod: u32,
    zero_copy: bool,
}

// SAFETY: the socket and its mappings belong to one shard thread at a time; the raw pointers
// are into mappings owned by this value and move with it.
unsafe impl Send for Xsk {}

impl Xsk {
    pub fn open(spec: &XskSpec) -> Result<Self, XskError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last("socket"));
        }
        // SAFETY: raw is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem_len = spec.frames as usize * spec.frame_bytes as usize;
        // SAFETY: a fresh private anonymous mapping of umem_len bytes; checked below.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            return Err(last("mmap UMEM"));
        }
        let umem = umem.cast::<u8>();
        // From here the mapping must be released on every error path: a guard does it until
        // the socket value owns it.
        let guard = UmemGuard(umem, umem_len);
        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: umem_len as u64,
            chunk_size: spec.frame_bytes,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setopt(&fd, libc::XDP_UMEM_REG, &reg, "UMEM registration")?;
        setopt(
            &fd,
            libc::XDP_UMEM_FILL_RING,
            &spec.frames,
            "fill ring size",
        )?;
        setopt(
            &fd,
            libc::XDP_UMEM_COMPLETION_RING,
            &spec.frames,
            "completion ring size",
        )?;
        setopt(&fd, libc::XDP_RX_RING, &spec.frames, "RX ring size")?;
        // SAFETY: xdp_mmap_offsets is plain old data; all-zero is a valid value to overwrite.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: off and len are live and len gives off's size; the kernel writes at most it.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&raw mut off).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(last("ring offsets"));
        }
        let raw = fd.as_raw_fd();
        let fill = Ring::<u64>::map(
            raw,
            &off.fr,
            spec.frames,
            libc::XDP_UMEM_PGOFF_FILL_RING as libc::off_t,
            "mmap fill ring",
        )?;
        let completion = Ring::<u64>::map(
            raw,
            &off.cr,
            spec.frames,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as libc::off_t,
            "mmap completion ring",
        )?;
        let rx = Ring::<libc::xdp_desc>::map(
            raw,
            &off.rx,
            spec.frames,
            libc::XDP_PGOFF_RX_RING,
            "mmap RX ring",
        )?;
        std::mem::forget(guard);
        let mut xsk = Self {
            fd,
            umem,
            umem_len,
            frame_bytes: spec.frame_bytes,
            fill,
            _completion: completion,
            rx,
            rx_cons: 0,
            fill_prod: 0,
            zero_copy: false,
        };
        // Every frame starts in the fill ring; one taken from RX goes straight back.
        for i in 0..spec.frames {
            xsk.refill(u64::from(i) * u64::from(spec.frame_bytes));
        }
        xsk.publish_fill();
        xsk.bind(spec)?;
        Ok(xsk)
    }

    fn bind(&mut self, spec: &XskSpec) -> Result<(), XskError> {
        let base = libc::XDP_USE_NEED_WAKEUP | libc::XDP_USE_SG;
        let tries: &[(u16, bool)] = if spec.zero_copy {
            &[(libc::XDP_ZEROCOPY, true), (libc::XDP_COPY, false)]
        } else {
            &[(libc::XDP_COPY, false)]
        };
        let mut err = None;
        for &(mode, zc) in tries {
            let addr = libc::sockaddr_xdp {
                sxdp_family: libc::AF_XDP as u16,
                sxdp_flags: base | mode,
                sxdp_ifindex: spec.ifindex,
                sxdp_queue_id: spec.queue,
                sxdp_shared_umem_fd: 0,
            };
            // SAFETY: addr is a live sockaddr_xdp and its size is passed with it.
            let r = unsafe {
                libc::bind(
                    self.fd.as_raw_fd(),
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if r == 0 {
                self.zero_copy = zc;
                return Ok(());
            }
            let e = io::Error::last_os_error();
            // Zero-copy refused by the driver: copy mode next. Anything else is final.
            if !(zc
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT)
                ))
            {
                return Err(sys("bind", e));
            }
            err = Some(e);
        }
        Err(sys(
            "bind",
            err.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)),
        ))
    }

    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn refill(&mut self, addr: u64) {
        // Aligned mode: the kernel wants a frame's start (it adds its headroom itself).
        let frame = addr & !(u64::from(self.frame_bytes) - 1);
        // SAFETY: the slot is inside the mapped fill ring (masked index). We are its only
        // producer, and there is room: the ring has a slot per frame, and a frame is put
        // back only after the kernel handed it to us through RX.
        unsafe { self.fill.slot(self.fill_prod).write(frame) };
        self.fill_prod = self.fill_prod.wrapping_add(1);
    }

    fn publish_fill(&mut self) {
        self.fill
            .producer()
            .store(self.fill_prod, Ordering::Release);
    }

    /// Received descriptors not yet taken.
    pub fn ready(&self) -> u32 {
        self.rx
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(self.rx_cons)
    }

    /// The `i`-th ready descriptor (i < `ready()`): the frame's bytes and whether more pieces
    /// of the same packet follow (XDP_PKT_CONTD).
    pub fn peek(&self, i: u32) -> (&[u8], bool) {
        // SAFETY: slot in the mapped RX ring (masked); i < ready() so the kernel has written
        // it (acquire load of the producer in `ready`) and will not touch it until we move
        // the consumer past it.
        let d = unsafe { self.rx.slot(self.rx_cons.wrapping_add(i)).read() };
        let start = (d.addr as usize).min(self.umem_len);
        let len = (d.len as usize).min(self.umem_len - start);
        // SAFETY: [start, start + len) is clamped into the UMEM mapping owned by self; the
        // kernel handed this frame to us and does not write it until it is refilled.
        let bytes = unsafe { std::slice::from_raw_parts(self.umem.add(start), len) };
        (bytes, d.options & libc::XDP_PKT_CONTD != 0)
    }

    /// Release the first `n` ready descriptors: their frames go back to the fill ring, the
    /// kernel sees both moves, and is woken if it asked to be (XDP_USE_NEED_WAKEUP: a syscall
    /// only when the kernel found the fill ring empty).
    pub fn release(&mut self, n: u32) {
        for i in 0..n {
            // SAFETY: as in `peek`: a ready slot of the mapped RX ring.
            let d = unsafe { self.rx.slot(self.rx_cons.wrapping_add(i)).read() };
            self.refill(d.addr);
        }
        self.rx_cons = self.rx_cons.wrapping_add(n);
        self.rx.consumer().store(self.rx_cons, Ordering::Release);
        self.publish_fill();
        self.wake_if_asked();
    }

    /// Kick the kernel to take fill frames if it asked (XDP_RING_NEED_WAKEUP: a zero-copy
    /// driver waits for it before it fills its own ring); a no-op receive, as libxdp does.
    pub fn wake_if_asked(&self) {
        if !self.fill.needs_wakeup() {
            return;
        }
        // SAFETY: a zero-length non-blocking receive on our own socket; no buffer is passed.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// The kernel's counters for this socket (one getsockopt: call it off the per-event path).
    pub fn kernel_stats(&self) -> XskKernelStats {
        // SAFETY: plain old data; all-zero is valid.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: s and len are live and len gives s's size.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&raw mut s).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return XskKernelStats::default();
        }
        XskKernelStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            fill_ring_empty: s.rx_fill_ring_empty_descs,
        }
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // The rings unmap themselves; the socket closes after this (field order does not
        // matter: the kernel keeps the UMEM pinned until the socket is gone, and our mapping
        // of it is only ours).
        // SAFETY: unmaps exactly the UMEM mapped in `open`; no slice into it outlives a
        // `peek` borrow of self.
        unsafe { libc::munmap(self.umem.cast(), self.umem_len) };
    }
}

/// The index of network interface `name` in this thread's network namespace (None: no such).
pub fn if_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: name is a live NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Block until one of `fds` is readable or `timeout` passes (EINTR is a wake-up too).
pub fn poll_readable(fds: &[RawFd], timeout: std::time::Duration) -> io::Result<()> {
    let mut polls = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 4];
    for (p, fd) in polls.iter_mut().zip(fds) {
        p.fd = *fd;
    }
    let n = fds.len().min(polls.len());
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: polls is a live array of at least n pollfd and n is passed with it.
    let r = unsafe { libc::poll(polls.as_mut_ptr(), n as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(())
}

struct UmemGuard(*mut u8, usize);

impl Drop for UmemGuard {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, not yet owned by an Xsk (forgotten once it is).
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

fn setopt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T, what: &'static str) -> Result<(), XskError> {
    // SAFETY: v is a live T and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(last(what));
    }
    Ok(())
}
