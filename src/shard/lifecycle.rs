//! Stopping without losing accepted events. On stop every shard stops receiving, finishes
//! handing on what it holds (stalled events under backpressure), and says so; once all have,
//! no event can enter a ring again, so each shard drains its inbound rings to empty, scores,
//! flushes its replies, writes a last checkpoint (with `state.dir`) and exits.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::Shard;

pub struct Control {
    stop: AtomicBool,
    done_producing: AtomicUsize,
    shards: usize,
}

impl Control {
    pub fn new(shards: usize) -> Self {
        Self {
            stop: AtomicBool::new(false),
            done_producing: AtomicUsize::new(0),
            shards,
        }
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn all_done_producing(&self) -> bool {
        self.done_producing.load(Ordering::SeqCst) == self.shards
    }
}

pub(super) fn drain(shard: &mut Shard, control: &Control) {
    let pause = Duration::from_micros(50);
    // Phase 1: hand on stalled events; keep draining inbound so peers can do the same.
    while shard.core.is_stalled() {
        shard.tick_draining();
        std::thread::sleep(pause);
    }
    control.done_producing.fetch_add(1, Ordering::SeqCst);
    for w in shard.wakers.iter() {
        w.wake();
    }
    // Phase 2: wait for every producer, then empty the inbound rings.
    while !control.all_done_producing() {
        shard.tick_draining();
        std::thread::sleep(pause);
    }
    loop {
        shard.tick_draining();
        if shard.core.inbound_is_empty() {
            break;
        }
    }
    // Phase 3: everything accepted is applied; make it durable.
    shard.final_checkpoint();
}
