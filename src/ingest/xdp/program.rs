//! Loading the XDP program (the committed object built from `sluice_xdp.c`) with `aya`, told
//! sluice's port and address, attached to the interface through a `bpf_link`: the link is a
//! file descriptor of this process, so any end of the process — a clean stop, a panic, kill -9
//! — detaches the program. The AF_XDP sockets are entered in its map by receive queue.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use aya::maps::{MapData, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::{include_bytes_aligned, Ebpf, EbpfLoader};

use crate::config::XdpAttach;
// aya's top-level messages omit the errno: its causes go into ours.
use crate::error_text::error_text;

/// The object `scripts/build-xdp` writes (tests/af_xdp.rs checks it matches the source).
static OBJECT: &[u8] = include_bytes_aligned!("sluice_xdp.o");
const PROGRAM: &str = "sluice_xdp";
const SOCKETS: &str = "sluice_xsks";
/// `max_entries` of the socket map in the C source: the highest queue id + 1 it can hold.
pub const QUEUES_MAX: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("no network interface named {0:?} (ingest.udp.interface)")]
    NoInterface(String),
    #[error("loading the XDP program: {0} (af_xdp needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or root: the af-xdp systemd drop-in grants them)")]
    Load(String),
    #[error("attaching the XDP program to {interface} in {mode} mode: {why} (another XDP program attached? `ip link show {interface}`)")]
    Attach {
        interface: String,
        mode: &'static str,
        why: String,
    },
    #[error("entering the AF_XDP socket of queue {queue} in the program's map: {why}")]
    Register { queue: u32, why: String },
}

/// The program, attached; dropping it detaches it.
pub struct XdpProgram {
    _ebpf: Ebpf,
    sockets: XskMap<MapData>,
    pub interface: String,
    pub ifindex: u32,
    pub mode: &'static str,
}

/// The interface's index, or why not.
pub fn ifindex(interface: &str) -> Result<u32, XdpError> {
    super::xsk::if_index(interface).ok_or_else(|| XdpError::NoInterface(interface.to_owned()))
}

fn mode_name(mode: XdpAttach) -> &'static str {
    match mode {
        XdpAttach::Auto => "auto (the driver's native mode where it has one, else generic)",
        XdpAttach::Native => "native",
        XdpAttach::Generic => "generic",
    }
}

impl XdpProgram {
    /// Load the program for UDP to `listen` (its port; its address unless unspecified) and
    /// attach it to `interface`.
    pub fn attach(interface: &str, mode: XdpAttach, listen: SocketAddr) -> Result<Self, XdpError> {
        let ifindex = ifindex(interface)?;
        let port = listen.port().to_be();
        let (families, v4, v6): (u8, u32, [u8; 16]) = match listen {
            SocketAddr::V4(a) if a.ip().is_unspecified() => (1, 0, [0; 16]),
            SocketAddr::V4(a) => (1, u32::from_ne_bytes(a.ip().octets()), [0; 16]),
            // An unspecified IPv6 address takes IPv4 too (a dual-stack socket would).
            SocketAddr::V6(a) if a.ip().is_unspecified() => (3, 0, [0; 16]),
            SocketAddr::V6(a) => (2, 0, a.ip().octets()),
        };
        let mut ebpf = EbpfLoader::new()
            // No CO-RE relocations in the program: skip parsing the kernel's BTF.
            .btf(None)
            .override_global("sluice_port", &port, true)
            .override_global("sluice_families", &families, true)
            .override_global("sluice_ipv4", &v4, true)
            .override_global("sluice_ipv6", &v6, true)
            .load(OBJECT)
            .map_err(|e| XdpError::Load(error_text(&e)))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| XdpError::Load(format!("the object has no program {PROGRAM}")))?
            .try_into()
            .map_err(|e| XdpError::Load(error_text(&e)))?;
        program.load().map_err(|e| XdpError::Load(error_text(&e)))?;
        let aya_mode = match mode {
            XdpAttach::Auto => XdpMode::Default,
            XdpAttach::Native => XdpMode::Driver,
            XdpAttach::Generic => XdpMode::Skb,
        };
        program
            .attach_to_if_index(ifindex, aya_mode)
            .map_err(|e| XdpError::Attach {
                interface: interface.to_owned(),
                mode: mode_name(mode),
                why: error_text(&e),
            })?;
        let map = ebpf
            .take_map(SOCKETS)
            .ok_or_else(|| XdpError::Load(format!("the object has no map {SOCKETS}")))?;
        let sockets = XskMap::try_from(map).map_err(|e| XdpError::Load(error_text(&e)))?;
        Ok(Self {
            _ebpf: ebpf,
            sockets,
            interface: interface.to_owned(),
            ifindex,
            mode: mode_name(mode),
        })
    }

    /// Frames of UDP to sluice arriving on `queue` go to the socket `fd` from now on.
    pub fn register(&mut self, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        // The map takes its own reference to the socket.
        self.sockets
            .set(queue, Fd(fd), 0)
            .map_err(|e| XdpError::Register {
                queue,
                why: error_text(&e),
            })
    }
}

struct Fd(RawFd);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
