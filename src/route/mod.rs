//! Key -> owner shard, and the N x N mesh of SPSC rings that carries events to their owner.
//!
//! Owner = `(mix64(key) * shards) >> 64`: a SplitMix64 finaliser spreads sequential and
//! clustered ids, and the multiply-shift maps the hash onto `0..shards` without a division.
//! It depends only on the key and the shard count, so it is stable across restarts (state and
//! checkpoints rely on that); changing `shards.count` re-homes keys.

mod mesh;

pub use mesh::{Inbound, Mesh, Outbound};

use std::net::SocketAddr;

use crate::limits::FEATURES_INLINE_MAX;
use crate::wire::EventKind;

/// SplitMix64's finaliser: a bijection on u64 with good avalanche.
#[inline]
pub fn mix64(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The shard that owns `key` among `shards` (> 0).
#[inline]
pub fn owner(key: u64, shards: usize) -> usize {
    crate::invariant!(shards > 0);
    ((u128::from(mix64(key)) * shards as u128) >> 64) as usize
}

/// An event as it travels between shards: a fixed-size copy of the fields sluice uses, plus
/// where its datagram came from and when. Copy, no heap: one ring slot.
#[derive(Debug, Clone, Copy)]
pub struct RoutedEvent {
    pub key: u64,
    pub seq: u64,
    /// Event time (ns since epoch); 0 was replaced by the arrival time at decode.
    pub ts_ns: u64,
    /// Kernel receive time of the datagram (CLOCK_REALTIME ns), or pickup time without one.
    pub recv_ns: u64,
    /// When the receiving shard picked the datagram up (CLOCK_REALTIME ns).
    pub pickup_ns: u64,
    pub reply_to: SocketAddr,
    pub amount: f32,
    pub label: f32,
    pub kind: EventKind,
    pub features_len: u8,
    pub features: [f32; FEATURES_INLINE_MAX],
}

/// A ring slot is one `RoutedEvent`: `route.ring_capacity` × this many bytes per ring pair.
/// A layout change must be deliberate (the resident-memory check and the ring figures in the
/// docs depend on it).
pub const ROUTED_EVENT_BYTES: usize = 152;
const _: () = assert!(std::mem::size_of::<RoutedEvent>() == ROUTED_EVENT_BYTES);
const _: () = assert!(std::mem::align_of::<RoutedEvent>() == 8);

impl RoutedEvent {
    pub fn features(&self) -> &[f32] {
        &self.features[..usize::from(self.features_len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_in_range_stable_and_balanced() {
        for shards in 1..=8usize {
            let mut counts = vec![0usize; shards];
            for key in 0..80_000u64 {
                let o = owner(key, shards);
                assert!(o < shards);
                assert_eq!(o, owner(key, shards), "owner must be a pure function");
                counts[o] += 1;
            }
            let expect = 80_000 / shards;
            for c in counts {
                assert!(
                    c.abs_diff(expect) < expect / 10,
                    "shard load {c} far from {expect}"
                );
            }
        }
    }

    #[test]
    fn documented_owners_do_not_change() {
        // Pinned so that a change to the hash (which would re-home every key and orphan
        // checkpointed state) cannot happen by accident.
        let got: Vec<usize> = (0..8u64).map(|k| owner(k, 4)).collect();
        let again: Vec<usize> = (0..8u64)
            .map(|k| ((u128::from(mix64(k)) * 4) >> 64) as usize)
            .collect();
        assert_eq!(got, again);
        assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
    }
}
