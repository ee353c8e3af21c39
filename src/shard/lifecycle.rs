//! Stopping without losing accepted events. On stop every shard stops receiving, finishes
//! handing on what it holds (stalled events under backpressure), and says so; once all have,
//! no event can enter a ring again, so each shard drains its inbound rings to empty, scores,
//! flushes its replies, writes a last checkpoint (with `state.dir`) and exits.
//!
//! A shard whose thread panics (a bug) stops the service too: its `PanicStop` guard asks for
//! the stop and counts it as done handing on, so its peers' drains finish instead of waiting
//! for it forever, and the exit status says what happened.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use super::Shard;

pub struct Control {
    stop: AtomicBool,
    /// Every shard built (restored, bound, attached): until then none serves, so a start
    /// refused for one shard's state takes nothing and commits nothing on another's.
    all_built: AtomicBool,
    /// Per shard: it hands on nothing more (drained its stalled events, or its thread died).
    done_producing: Vec<AtomicBool>,
    /// A shard's thread panicked: what it would take from its peers' stalled events is lost.
    panicked: AtomicBool,
    /// Fault injection (`admin.faults`): a held shard (`FAULT_HOLD`) stops turning its loop, as
    /// a stuck one would, until released; `holding` says it has stopped. `FAULT_PANIC`: it
    /// panics at its next loop turn, as a bug would.
    fault: Vec<AtomicU8>,
    holding: Vec<AtomicBool>,
    /// Fault injection: each shard's checkpoint writer's "fail the next write" switch, handed
    /// over when its checkpointer starts (none without `state.dir`).
    checkpoint_faults: Vec<std::sync::OnceLock<std::sync::Arc<AtomicBool>>>,
}

impl Control {
    pub fn new(shards: usize) -> Self {
        Self {
            stop: AtomicBool::new(false),
            all_built: AtomicBool::new(false),
            done_producing: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            panicked: AtomicBool::new(false),
            fault: (0..shards).map(|_| AtomicU8::new(FAULT_NONE)).collect(),
            holding: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            checkpoint_faults: (0..shards).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// Hold (or release) a shard's loop; false if there is no such shard.
    pub fn set_hold(&self, shard: usize, hold: bool) -> bool {
        self.set_fault(shard, if hold { FAULT_HOLD } else { FAULT_NONE })
    }

    /// Make `shard` panic at its next loop turn; false if there is no such shard.
    pub fn set_panic(&self, shard: usize) -> bool {
        self.set_fault(shard, FAULT_PANIC)
    }

    fn set_fault(&self, shard: usize, fault: u8) -> bool {
        match self.fault.get(shard) {
            Some(f) => {
                f.store(fault, Ordering::SeqCst);
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
    /// A panic asked for while held happens here, before the shard takes anything more.
    pub(super) fn wait_while_held(&self, shard: usize) {
        let (Some(fault), Some(holding)) = (self.fault.get(shard), self.holding.get(shard)) else {
            return;
        };
        if fault.load(Ordering::Relaxed) == FAULT_NONE {
            return;
        }
        holding.store(true, Ordering::SeqCst);
        while fault.load(Ordering::SeqCst) == FAULT_HOLD && !self.stop_requested() {
            std::thread::sleep(Duration::from_millis(1));
        }
        holding.store(false, Ordering::SeqCst);
        if fault.load(Ordering::SeqCst) == FAULT_PANIC {
            fault.store(FAULT_NONE, Ordering::SeqCst);
            // Deliberate, and only with `admin.faults`: the test of a shard's bug.
            #[allow(clippy::panic)]
            {
                panic!("fault injected: shard {shard} panics (admin fault panic)");
            }
        }
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// At start, once every shard has reported built: they may serve.
    pub fn set_all_built(&self) {
        self.all_built.store(true, Ordering::SeqCst);
    }

    pub fn is_all_built(&self) -> bool {
        self.all_built.load(Ordering::SeqCst)
    }

    /// A built shard waits here for its peers (start-up only: polled every millisecond). False
    /// when the start was given up (a peer failed): the shard must serve nothing then.
    pub fn wait_until_all_built(&self) -> bool {
        loop {
            if self.all_built.load(Ordering::SeqCst) {
                return true;
            }
            if self.stop_requested() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A shard that failed to start never hands on anything: its peers that did start must
    /// not wait for it when they drain (they waited forever: a start refused for one shard's
    /// checkpoint hung instead of exiting, found by the rescale test).
    pub fn never_started(&self, shard: usize) {
        self.done_producing(shard);
    }

    fn done_producing(&self, shard: usize) {
        if let Some(done) = self.done_producing.get(shard) {
            done.store(true, Ordering::SeqCst);
        }
    }

    fn all_done_producing(&self) -> bool {
        self.done_producing.iter().all(|d| d.load(Ordering::SeqCst))
    }

    /// Whether a shard's thread panicked (the service is stopping).
    pub fn a_shard_panicked(&self) -> bool {
        self.panicked.load(Ordering::SeqCst)
    }
}

const FAULT_NONE: u8 = 0;
const FAULT_HOLD: u8 = 1;
const FAULT_PANIC: u8 = 2;

/// Held by a shard's thread while it runs: if the thread unwinds from a panic, the service
/// stops (a shard that serves nothing must not look like one that is idle) and the shard
/// counts as done handing on, so its peers' drains end.
pub struct PanicStop<'a> {
    pub control: &'a Control,
    pub shard: usize,
}

impl Drop for PanicStop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                shard = self.shard,
                "shard thread panicked (a bug): stopping the service; events it held since its last checkpoint are lost, a restart restores that checkpoint"
            );
            self.control.panicked.store(true, Ordering::SeqCst);
            self.control.done_producing(self.shard);
            self.control.request_stop();
        }
    }
}

pub(super) fn drain(shard: &mut Shard, control: &Control) {
    let pause = Duration::from_micros(50);
    // Phase 1: hand on stalled events; keep draining inbound so peers can do the same.
    // Not to a peer whose thread died: nothing takes from its ring any more. What this shard
    // handed or held for it is counted and said rather than lost without a word.
    loop {
        if control.a_shard_panicked() {
            let events = shard.core.give_up_on_dead_peers();
            if events > 0 {
                tracing::error!(
                    shard = shard.core.id,
                    events,
                    "a shard panicked: the events this shard routed to it and did not see taken are dropped (sluice_events_dropped_total{{reason=\"shard_panicked\"}}; a restart restores the last checkpoint)"
                );
            }
        }
        if !shard.core.is_stalled() {
            break;
        }
        shard.tick_draining();
        std::thread::sleep(pause);
    }
    control.done_producing(shard.core.id);
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
