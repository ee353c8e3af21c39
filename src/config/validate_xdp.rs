//! The `af_xdp` driver's settings: checked only when it is chosen, every rule run.

use super::{Config, UdpDriver};
use crate::limits;

pub(super) fn validate(c: &Config, p: &mut Vec<String>) {
    let u = &c.ingest.udp;
    if u.driver != UdpDriver::AfXdp {
        return;
    }
    if u.interface.is_empty() {
        p.push(
            "ingest.udp.driver = af_xdp needs ingest.udp.interface (the network interface the XDP program attaches to)"
                .to_owned(),
        );
    }
    if !u.xdp_frames.is_power_of_two() || !(64..=limits::XDP_FRAMES_MAX).contains(&u.xdp_frames) {
        p.push(format!(
            "ingest.udp.xdp_frames = {}: must be a power of two between 64 and {}",
            u.xdp_frames,
            limits::XDP_FRAMES_MAX
        ));
    }
    if u.xdp_frame_bytes != 2048 && u.xdp_frame_bytes != 4096 {
        p.push(format!(
            "ingest.udp.xdp_frame_bytes = {}: must be 2048 or 4096",
            u.xdp_frame_bytes
        ));
    }
    if !u.queues.is_empty() && c.shards.count != 0 && u.queues.len() != c.shards.count {
        p.push(format!(
            "ingest.udp.queues lists {} queue(s) for {} shard(s): one per shard, or [] for queue i on shard i",
            u.queues.len(),
            c.shards.count
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for q in &u.queues {
        if *q >= crate::ingest::xdp::QUEUES_MAX {
            p.push(format!(
                "ingest.udp.queues: queue {q} is beyond the XDP program's {} sockets",
                crate::ingest::xdp::QUEUES_MAX
            ));
        }
        if !seen.insert(q) {
            p.push(format!(
                "ingest.udp.queues lists queue {q} twice: one AF_XDP socket per queue"
            ));
        }
    }
}
