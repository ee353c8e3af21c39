//! The N x N mesh: ring (i, j) carries events received on shard i and owned by shard j.
//! Each ring has one producer and one consumer thread, so `rtrb` needs no lock; capacity is
//! fixed at startup (`route.ring_capacity`).

use rtrb::{Consumer, Producer, RingBuffer};

use super::RoutedEvent;

/// Producers from one shard to every other shard (`None` at its own index).
pub struct Outbound {
    pub(crate) to: Vec<Option<Producer<RoutedEvent>>>,
}

/// Consumers into one shard from every other shard.
pub struct Inbound {
    pub(crate) from: Vec<Consumer<RoutedEvent>>,
}

impl Outbound {
    /// Push to `owner`'s ring; hands the event back when the ring is full.
    // Handing the 152-byte event back by value is the point: the caller decides to drop or
    // hold it, and boxing would allocate per full ring.
    #[allow(clippy::result_large_err)]
    #[inline]
    pub fn push(&mut self, owner: usize, ev: RoutedEvent) -> Result<(), RoutedEvent> {
        match self.to.get_mut(owner).and_then(Option::as_mut) {
            Some(p) => p.push(ev).map_err(|rtrb::PushError::Full(ev)| ev),
            None => Err(ev),
        }
    }

    /// Lets go of every ring whose consumer is gone (its shard's thread died): the events
    /// each had not been taken from are lost, their sum returned. Pushes to those owners fail
    /// from then on.
    pub fn let_go_of_abandoned(&mut self) -> usize {
        let mut left = 0;
        for slot in &mut self.to {
            if slot.as_ref().is_some_and(Producer::is_abandoned) {
                if let Some(p) = slot.take() {
                    left += p.buffer().capacity() - p.slots();
                }
            }
        }
        left
    }

    /// Whether `owner` has no ring from here (this shard itself, or one let go of).
    pub fn is_gone(&self, owner: usize) -> bool {
        self.to.get(owner).is_none_or(Option::is_none)
    }
}

impl Inbound {
    /// Pop up to `max` events across all inbound rings, round-robin so no sender starves,
    /// a chunk of at most `CHUNK` per ring a turn. `f` gets each chunk whole (as the ring's
    /// two slices, in order), so the owner can prefetch its records before applying it.
    #[inline]
    pub fn drain(
        &mut self,
        max: usize,
        mut f: impl FnMut(&[RoutedEvent], &[RoutedEvent]),
    ) -> usize {
        const CHUNK: usize = 32;
        let mut n = 0;
        loop {
            let before = n;
            for c in &mut self.from {
                let want = CHUNK.min(max - n).min(c.slots());
                if want == 0 {
                    continue;
                }
                let Ok(chunk) = c.read_chunk(want) else {
                    continue;
                };
                let (a, b) = chunk.as_slices();
                f(a, b);
                n += want;
                chunk.commit_all();
            }
            if n == before || n >= max {
                return n;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.from.iter().all(Consumer::is_empty)
    }
}

/// Builds every ring and hands each shard its `(Outbound, Inbound)`.
pub struct Mesh;

impl Mesh {
    pub fn build(shards: usize, ring_capacity: usize) -> Vec<(Outbound, Inbound)> {
        let mut outs: Vec<Outbound> = (0..shards)
            .map(|_| Outbound {
                to: (0..shards).map(|_| None).collect(),
            })
            .collect();
        let mut ins: Vec<Inbound> = (0..shards).map(|_| Inbound { from: Vec::new() }).collect();
        for (i, out) in outs.iter_mut().enumerate() {
            for (j, inbound) in ins.iter_mut().enumerate() {
                if i != j {
                    let (p, c) = RingBuffer::new(ring_capacity);
                    out.to[j] = Some(p);
                    inbound.from.push(c);
                }
            }
        }
        outs.into_iter().zip(ins).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::limits::FEATURES_INLINE_MAX;
    use crate::wire::EventKind;

    fn ev(key: u64, seq: u64) -> RoutedEvent {
        RoutedEvent {
            key,
            seq,
            ts_ns: 1,
            recv_ns: 1,
            pickup_ns: 1,
            reply_to: SocketAddr::from(([127, 0, 0, 1], 9)),
            amount: 1.0,
            label: -1.0,
            kind: EventKind::Observation,
            features_len: 0,
            features: [0.0; FEATURES_INLINE_MAX],
        }
    }

    /// Drain everything the shard's inbound rings hold, at most `max` a call.
    fn drain_all(inbound: &mut Inbound, max: usize) -> Vec<Vec<RoutedEvent>> {
        let mut calls = Vec::new();
        loop {
            let mut got = Vec::new();
            let n = inbound.drain(max, |a, b| got.extend(a.iter().chain(b).copied()));
            assert_eq!(n, got.len(), "the count returned is what f was shown");
            assert!(n <= max, "drained {n} with max {max}");
            if n == 0 {
                return calls;
            }
            calls.push(got);
        }
    }

    #[test]
    fn drain_is_bounded_fair_and_keeps_each_rings_order() {
        let mut mesh = Mesh::build(3, 256);
        let (_, mut inbound) = mesh.remove(2);
        // Shards 0 and 1 (keys 0 and 1) each send 100 events to shard 2.
        for seq in 0..100 {
            for (key, (out, _)) in mesh.iter_mut().enumerate() {
                assert!(out.push(2, ev(key as u64, seq)).is_ok());
            }
        }
        let calls = drain_all(&mut inbound, 50);
        assert_eq!(calls.len(), 4);
        for call in &calls {
            // No ring starves the other within one call.
            assert!(call.iter().any(|e| e.key == 0) && call.iter().any(|e| e.key == 1));
        }
        for key in 0..2 {
            let seqs: Vec<u64> = calls
                .iter()
                .flatten()
                .filter(|e| e.key == key)
                .map(|e| e.seq)
                .collect();
            assert_eq!(
                seqs,
                (0..100).collect::<Vec<_>>(),
                "ring {key} out of order"
            );
        }
        assert!(inbound.is_empty());
    }

    #[test]
    fn a_chunk_across_the_rings_end_arrives_whole_and_in_order() {
        let mut mesh = Mesh::build(2, 40);
        let (_, mut inbound) = mesh.remove(1);
        let out = &mut mesh[0].0;
        for seq in 0..30 {
            assert!(out.push(1, ev(7, seq)).is_ok());
        }
        assert_eq!(drain_all(&mut inbound, 1000).concat().len(), 30);
        // The next 30 wrap around the end of the 40-slot ring.
        for seq in 30..60 {
            assert!(out.push(1, ev(7, seq)).is_ok());
        }
        let mut split = false;
        let n = inbound.drain(1000, |a, b| {
            split |= !a.is_empty() && !b.is_empty();
            let seqs: Vec<u64> = a.iter().chain(b).map(|e| e.seq).collect();
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        });
        assert_eq!(n, 30);
        assert!(split, "the chunk should have wrapped the ring");
    }
}
