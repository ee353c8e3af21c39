//! `ingest.udp.driver = af_xdp` at start: the XDP program attached to the interface (here, on
//! the main thread) and one AF_XDP socket per shard on its receive queue, opened by the shard
//! itself once pinned (`XdpSeat::open`), so that its UMEM — touched at open — lies on the
//! shard's NUMA node like the rest of its memory, then entered in the program's map. Any
//! failure is a start-up error naming what is missing (interface, privilege, locked memory,
//! queue).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::ingest::xdp::{XdpError, XdpProgram, Xsk, XskError, XskSpec};

#[derive(Debug, thiserror::Error)]
pub enum XdpStartError {
    #[error(transparent)]
    Program(#[from] XdpError),
    #[error("shard {shard}'s AF_XDP socket on {interface} queue {queue}: {source}")]
    Socket {
        shard: usize,
        interface: String,
        queue: u32,
        source: XskError,
    },
    #[error("{shards} shard(s) but ingest.udp.queues lists {queues}: one queue per shard")]
    Queues { shards: usize, queues: usize },
}

/// The attached program, shared by the shards for the one moment each enters its socket in
/// the map (a lock taken once per shard at start, never while serving).
pub(super) type SharedProgram = Arc<Mutex<XdpProgram>>;

/// What one shard needs to open its AF_XDP socket.
pub(super) struct XdpSeat {
    shard: usize,
    spec: XskSpec,
    interface: String,
    program: SharedProgram,
}

/// Attach the program; each shard's seat, in shard order.
pub(super) fn attach(
    config: &Config,
    shards: usize,
    listen: SocketAddr,
) -> Result<(SharedProgram, Vec<XdpSeat>), XdpStartError> {
    let udp = &config.ingest.udp;
    // shards.count = 0 (one per CPU) is only known here, so the count is checked here too.
    if !udp.queues.is_empty() && udp.queues.len() != shards {
        return Err(XdpStartError::Queues {
            shards,
            queues: udp.queues.len(),
        });
    }
    let program = XdpProgram::attach(&udp.interface, udp.xdp_mode, listen)?;
    tracing::info!(interface = %program.interface, xdp_mode = program.mode, %listen, "XDP program attached");
    let ifindex = program.ifindex;
    let program = Arc::new(Mutex::new(program));
    let seats = (0..shards)
        .map(|shard| XdpSeat {
            shard,
            spec: XskSpec {
                ifindex,
                queue: udp.queues.get(shard).copied().unwrap_or(shard as u32),
                frames: udp.xdp_frames as u32,
                frame_bytes: udp.xdp_frame_bytes as u32,
                zero_copy: udp.xdp_zero_copy,
            },
            interface: udp.interface.clone(),
            program: program.clone(),
        })
        .collect();
    Ok((program, seats))
}

impl XdpSeat {
    /// On the shard's thread, after pinning: open its socket (UMEM allocated and touched
    /// here) and enter it in the program's map. Until then the program passes that queue's
    /// frames to the kernel, where the shard's UDP socket receives them: nothing is lost.
    pub(super) fn open(self) -> Result<Xsk, XdpStartError> {
        let queue = self.spec.queue;
        let xsk = Xsk::open(&self.spec).map_err(|source| XdpStartError::Socket {
            shard: self.shard,
            interface: self.interface.clone(),
            queue,
            source,
        })?;
        // A shard that panicked while holding the lock left nothing half-done in the map:
        // entering a socket is one map update.
        let mut program = self.program.lock().unwrap_or_else(|p| p.into_inner());
        program.register(queue, xsk.fd())?;
        drop(program);
        tracing::info!(
            shard = self.shard,
            interface = %self.interface,
            queue,
            mode = if xsk.zero_copy() { "zero-copy" } else { "copy" },
            "AF_XDP socket bound"
        );
        Ok(xsk)
    }
}
