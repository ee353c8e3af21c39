//! `ingest.udp.driver = af_xdp` at start: the XDP program attached to the interface and one
//! AF_XDP socket per shard on its receive queue, entered in the program's map. Any failure is a
//! start-up error naming what is missing (interface, privilege, locked memory, queue).

use std::net::SocketAddr;

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

/// The attached program and each shard's socket, in shard order.
pub(super) fn open(
    config: &Config,
    shards: usize,
    listen: SocketAddr,
) -> Result<(XdpProgram, Vec<Xsk>), XdpStartError> {
    let udp = &config.ingest.udp;
    // shards.count = 0 (one per CPU) is only known here, so the count is checked here too.
    if !udp.queues.is_empty() && udp.queues.len() != shards {
        return Err(XdpStartError::Queues {
            shards,
            queues: udp.queues.len(),
        });
    }
    let mut program = XdpProgram::attach(&udp.interface, udp.xdp_mode, listen)?;
    let mut sockets = Vec::with_capacity(shards);
    for shard in 0..shards {
        let queue = udp.queues.get(shard).copied().unwrap_or(shard as u32);
        let spec = XskSpec {
            ifindex: program.ifindex,
            queue,
            frames: udp.xdp_frames as u32,
            frame_bytes: udp.xdp_frame_bytes as u32,
            zero_copy: udp.xdp_zero_copy,
        };
        let xsk = Xsk::open(&spec).map_err(|source| XdpStartError::Socket {
            shard,
            interface: udp.interface.clone(),
            queue,
            source,
        })?;
        program.register(queue, xsk.fd())?;
        tracing::info!(
            shard,
            interface = %udp.interface,
            queue,
            mode = if xsk.zero_copy() { "zero-copy" } else { "copy" },
            "AF_XDP socket bound"
        );
        sockets.push(xsk);
    }
    tracing::info!(interface = %program.interface, xdp_mode = program.mode, %listen, "XDP program attached");
    Ok((program, sockets))
}
