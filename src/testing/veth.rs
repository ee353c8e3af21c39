//! Two throwaway network namespaces joined by a veth pair (one queue a side unless asked),
//! for the AF_XDP tests and `sluice-bench --veth` (root only). Each namespace is held by an `unshare -n sleep`
//! process: when the holders end (dropped, or their sleep runs out after a killed run) the
//! namespaces go, and with them the veth pair and any XDP program on it — nothing leaks into
//! the host. `rx` holds interface `xr` (where sluice listens), `tx` holds `xt` (the senders).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RX_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 1);
pub const TX_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 2);
/// Unique-local IPv6 addresses beside them (added without duplicate detection: usable at once).
pub const RX_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 7, 0, 0, 0, 1);
pub const TX_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 7, 0, 0, 0, 2);
pub const RX_MAC: [u8; 6] = [2, 0, 0, 0, 7, 1];
pub const TX_MAC: [u8; 6] = [2, 0, 0, 0, 7, 2];
pub const RX_IF: &str = "xr";
pub const TX_IF: &str = "xt";

pub struct VethPair {
    rx: Child,
    tx: Child,
}

/// Run a command to success, or say what it printed.
pub fn run(args: &[&str]) -> Result<String, String> {
    let (program, rest) = args.split_first().ok_or("no command")?;
    let out = Command::new(program)
        .args(rest)
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn holder() -> Result<Child, String> {
    Command::new("unshare")
        .args(["-n", "sleep", "900"])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("unshare -n: {e}"))
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl VethPair {
    /// The pair, up, MTU 9000, link-local IPv4 and unique-local IPv6 addresses, fixed MACs,
    /// the sender's checksum offload off (a veth peer would otherwise hand XDP frames with
    /// unfinished UDP checksums), neighbours resolved by one ping each (IPv4, IPv6).
    pub fn new() -> Result<Self, String> {
        Self::with_queues(1)
    }

    /// `new` with `queues` receive and transmit queues on each side: the sender's flows
    /// spread over its transmit queues by hash, and a veth delivers each on the peer's receive
    /// queue of the same number (one AF_XDP socket per queue, one shard each).
    pub fn with_queues(queues: u32) -> Result<Self, String> {
        let queues = queues.to_string();
        let pair = Self {
            rx: holder()?,
            tx: holder()?,
        };
        // unshare has made its namespace once /proc/PID/ns/net differs from ours.
        let ours = std::fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        for pid in [pair.rx.id(), pair.tx.id()] {
            while std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .as_ref()
                == Some(&ours)
            {
                if Instant::now() > deadline {
                    return Err("unshare -n never made its namespace".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let (rx, tx) = (pair.rx.id().to_string(), pair.tx.id().to_string());
        let (rx_mac, tx_mac) = (mac(RX_MAC), mac(TX_MAC));
        run(&[
            "ip",
            "link",
            "add",
            RX_IF,
            "address",
            &rx_mac,
            "netns",
            &rx,
            "numrxqueues",
            &queues,
            "numtxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            TX_IF,
            "address",
            &tx_mac,
            "netns",
            &tx,
            "numrxqueues",
            &queues,
            "numtxqueues",
            &queues,
        ])?;
        for (ns, dev, ip, ip6) in [
            (pair.rx_ns(), RX_IF, RX_IP, RX_IP6),
            (pair.tx_ns(), TX_IF, TX_IP, TX_IP6),
        ] {
            let addr = format!("{ip}/24");
            let addr6 = format!("{ip6}/64");
            run(&["nsenter", &ns, "ip", "link", "set", "lo", "up"])?;
            run(&["nsenter", &ns, "ip", "link", "set", dev, "mtu", "9000"])?;
            run(&["nsenter", &ns, "ip", "addr", "add", &addr, "dev", dev])?;
            run(&[
                "nsenter", &ns, "ip", "-6", "addr", "add", &addr6, "dev", dev, "nodad",
            ])?;
            run(&["nsenter", &ns, "ip", "link", "set", dev, "up"])?;
        }
        run(&[
            "nsenter",
            &pair.tx_ns(),
            "ethtool",
            "-K",
            TX_IF,
            "tx",
            "off",
        ])?;
        run(&[
            "nsenter",
            &pair.tx_ns(),
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            &RX_IP.to_string(),
        ])?;
        run(&[
            "nsenter",
            &pair.tx_ns(),
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "5",
            &RX_IP6.to_string(),
        ])?;
        Ok(pair)
    }

    /// `--net=` argument for nsenter into the receiving namespace.
    pub fn rx_ns(&self) -> String {
        format!("--net=/proc/{}/ns/net", self.rx.id())
    }

    pub fn tx_ns(&self) -> String {
        format!("--net=/proc/{}/ns/net", self.tx.id())
    }

    /// Run `f` on a thread that has joined namespace `pid`'s network: sockets it makes stay in
    /// that namespace wherever they are used later, and threads it starts are born in it.
    fn inside<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                    .map_err(|e| format!("netns of {pid}: {e}"))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns: {e}"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| "the thread in the namespace panicked".to_owned())?
        })
    }

    pub fn in_rx<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        Self::inside(self.rx.id(), f)
    }

    pub fn in_tx<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        Self::inside(self.tx.id(), f)
    }

    /// `ip -d link show xr`: "prog/xdp" in it while an XDP program is attached.
    pub fn rx_link(&self) -> Result<String, String> {
        run(&["nsenter", &self.rx_ns(), "ip", "-d", "link", "show", RX_IF])
    }
}

/// Raw Ethernet frames out of `xt` to `xr`'s MAC (an AF_PACKET socket): what a broken sender
/// puts on the wire (the tests), or prebuilt frames at a rate no UDP socket reaches (the
/// benchmark). Make it on a thread inside the sending namespace (`VethPair::in_tx`).
pub struct RawSender {
    fd: OwnedFd,
    to: libc::sockaddr_ll,
}

/// Frames one `send` hands to the kernel at most (one sendmmsg).
pub const RAW_BATCH: usize = 32;

impl RawSender {
    pub fn new() -> Result<Self, String> {
        let ifindex = crate::ingest::xdp::ifindex(TX_IF).map_err(|e| e.to_string())?;
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(format!("AF_PACKET: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: raw is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&RX_MAC);
        Ok(Self { fd, to })
    }

    /// Send up to `RAW_BATCH` of `frames` in one sendmmsg; how many went (0 when the device
    /// queue is full for now: ENOBUFS, EAGAIN).
    pub fn send(&self, frames: &[&[u8]]) -> std::io::Result<usize> {
        let n = frames.len().min(RAW_BATCH);
        let mut iovs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; RAW_BATCH];
        // SAFETY: all-zero is a valid mmsghdr; the first n are pointed at an iovec and `to`.
        let mut hdrs: [libc::mmsghdr; RAW_BATCH] = unsafe { std::mem::zeroed() };
        let to = (&raw const self.to).cast_mut().cast();
        for ((h, iov), f) in hdrs.iter_mut().zip(iovs.iter_mut()).zip(frames).take(n) {
            // The kernel only reads the frame: the cast to *mut is the iovec type's, not a write.
            *iov = libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast(),
                iov_len: f.len(),
            };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = to;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        }
        // SAFETY: the first n headers point at live iovecs over live frames and at `self.to`;
        // the kernel only reads them.
        let r = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), hdrs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for c in [&mut self.rx, &mut self.tx] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
