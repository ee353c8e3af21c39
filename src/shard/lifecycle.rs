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
    /// Fault injection (`admin.faults`): a held shard stops turning its loop, as a stuck one
    /// would, until released; `holding` says it has stopped.
    hold: Vec<AtomicBool>,
    holding: Vec<AtomicBool>,
    /// Fault injection: each shard's checkpoint writer's "fail the next write" switch, handed
    /// over when its checkpointer starts (none without `state.dir`).
    checkpoint_faults: Vec<std::sync::OnceLock<std::sync::Arc<AtomicBool>>>,
}

impl Control {
    pub fn new(shards: usize) -> Self {
        Self {
            stop: AtomicBool::new(false),
            done_producing: AtomicUsize::new(0),
            shards,
            hold: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            holding: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            checkpoint_faults: (0..shards).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// Hold (or release) a shard's loop; false if there is no such shard.
    pub fn set_hold(&self, shard: usize, hold: bool) -> bool {
        match self.hold.get(shard) {
            Some(h) => {
                h.store(hold, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// At start: `shard`'s checkpoint writer's fault switch (`Checkpointer::fault_switch`).
    pub fn set_checkpoint_fault(&self, shard: usize, switch: std::sync::Arc<AtomicBool>) {
        if let Some(slot) = self.checkpoint_faults.get(shard) {
            let _ = slot.set(switch);
        }
    }

    /// Make `shard`'s next checkpoint write fail; false if it has no checkpoints.
    pub fn fail_next_checkpoint(&self, shard: usize) -> bool {
        match self.checkpoint_faults.get(shard).and_then(|s| s.get()) {
            Some(switch) => {
                switch.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Whether the shard has stopped for a hold.
    pub fn is_holding(&self, shard: usize) -> bool {
        self.holding
            .get(shard)
            .is_some_and(|h| h.load(Ordering::SeqCst))
    }

    /// Called by the shard once per loop turn: stop here while held (a relaxed load when not).
    pub(super) fn wait_while_held(&self, shard: usize) {
        let (Some(hold), Some(holding)) = (self.hold.get(shard), self.holding.get(shard)) else {
            return;
        };
        if !hold.load(Ordering::Relaxed) {
            return;
        }
        holding.store(true, Ordering::SeqCst);
        while hold.load(Ordering::SeqCst) && !self.stop_requested() {
            std::thread::sleep(Duration::from_millis(1));
        }
        holding.store(false, Ordering::SeqCst);
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
