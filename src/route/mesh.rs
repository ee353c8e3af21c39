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
