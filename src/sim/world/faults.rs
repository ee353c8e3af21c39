//! Faults and their aftermath: the writer's injected crashes and full disks, the process
//! dying, checkpoints damaged at rest, and the producers' replay after a restart.

use std::path::PathBuf;

use crate::metrics::DropReason;
use crate::route;
use crate::state::checkpoint::disk;
use crate::state::checkpoint::{CrashPoint, WriterFault, WriterRun};

use super::{Sabotage, World};

impl World {
    /// The shard's writer does its next piece of work, maybe with a fault.
    pub(super) fn writer(&mut self, id: usize) -> Result<(), String> {
        let roll = self.rng.below(100);
        let fault = if !self.faults_on() {
            None
        } else if roll < 4 {
            Some(WriterFault::NoSpace)
        } else if roll < 7 {
            let at = match self.rng.below(4) {
                0 => CrashPoint::TornHotBin(self.rng.below(4096) as usize),
                1 => CrashPoint::BeforeCommit,
                2 => CrashPoint::BeforeRename,
                _ => CrashPoint::BeforePrune,
            };
            Some(WriterFault::Crash(at))
        } else {
            None
        };
        let ran = self.nodes[id].cp.run_writer(fault);
        self.mix(ran as u64);
        match ran {
            WriterRun::Crashed => {
                self.report.writer_crashes += 1;
                self.crash(&format!("shard {id}'s writer crashed: {fault:?}"))
            }
            WriterRun::Ran => {
                if fault == Some(WriterFault::NoSpace) {
                    self.report.disk_full += 1;
                }
                // UDP: the shard collects the answer now. Kafka: its checkpoint step does (the
                // answer decides the commit).
                if !self.kafka {
                    let node = &mut self.nodes[id];
                    node.cp.step(node.core.state_mut());
                    self.outcome(id);
                }
                Ok(())
            }
            WriterRun::Idle | WriterRun::Held => Ok(()),
        }
    }

    pub(super) fn outcome(&mut self, id: usize) {
        match self.nodes[id].cp.take_outcome() {
            Some(Ok(seq)) => {
                self.report.checkpoints_committed += 1;
                self.committed[id] = self.committed[id].max(seq);
                self.mix(seq);
            }
            Some(Err(_)) => self.report.checkpoints_failed += 1,
            None => {}
        }
    }

    /// The process dies: everything in memory is gone (rings, hot tables, the cold stores'
    /// twins, queued writer work); the disk keeps what was written. Sometimes a committed
    /// checkpoint is damaged at rest too. Then restart, check, and replay.
    pub(super) fn crash(&mut self, why: &str) -> Result<(), String> {
        self.trace(format_args!("crash: {why}"));
        self.report.crashes += 1;
        self.stop();
        // A third of the crashes are power losses (drawn from the seed and step, so that the
        // rng's draws stay as they were): the checkpoint files' operations whose directory
        // was not synced yet may be lost, the newest first (`checkpoint::disk`).
        if route::mix64(self.seed ^ self.step ^ 0x90E7) % 3 == 0 {
            let pending = disk::pending();
            let undo =
                (route::mix64(self.seed ^ self.step ^ 0x90E8) % (pending as u64 + 1)) as usize;
            let undone = disk::power_loss(undo).map_err(|e| format!("power loss: {e}"))?;
            self.report.power_losses += 1;
            self.report.ops_undone += undone as u64;
            self.trace(format_args!(
                "power lost: {undone} of {pending} operations undone"
            ));
            self.mix(undone as u64);
        }
        // Kafka: the checkpoint a committed transaction names must be there (a damaged one
        // is refused, by design: exactly-once state cannot be restored), so no damage.
        if !self.kafka && self.rng.below(5) == 0 {
            let id = self.rng.below(self.shards as u64) as usize;
            self.damage(id)?;
        }
        self.boot()?;
        if !self.kafka {
            self.rewind();
        }
        Ok(())
    }

    /// The process ends (a crash or a stop): its counters go into the report.
    pub(super) fn stop(&mut self) {
        for n in &self.nodes {
            self.report.waiting_lost += n.core.waiting_for_cold() as u64;
            let s = &n.core.state().stats;
            self.report.spills += s.spills + s.reloads;
            self.report.expired += s.expired;
            self.report.spill_expired += s.spill_expired;
            self.report.duplicates += n.counters.events_dropped_by(DropReason::Duplicate);
        }
        self.nodes.clear();
    }

    /// Damage shard `id`'s newest committed checkpoint: flip a byte of hot.bin, cut it, or
    /// lose its COMMIT. Restore must refuse it and fall back to an older one (or none).
    pub(super) fn damage(&mut self, id: usize) -> Result<(), String> {
        let root = self.dir.join(format!("shard-{id}")).join("checkpoints");
        let mut done: Vec<PathBuf> = std::fs::read_dir(&root)
            .map_err(|e| format!("{}: {e}", root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("ckpt-"))
                    .is_some_and(|seq| seq.bytes().all(|b| b.is_ascii_digit()))
            })
            // One damaged before and set aside may be back (a power loss took the set-aside
            // rename back): restore refuses it again; damage a committed one.
            .filter(|p| p.join("COMMIT").is_file())
            .collect();
        done.sort();
        let Some(newest) = done.last() else {
            return Ok(());
        };
        let hot = newest.join("hot.bin");
        let bytes = std::fs::read(&hot).map_err(|e| format!("{}: {e}", hot.display()))?;
        let how = self.rng.below(3);
        let at = self.rng.below(bytes.len().max(1) as u64) as usize;
        let io = |e: std::io::Error| format!("damaging {}: {e}", newest.display());
        match how {
            0 => {
                let mut b = bytes;
                if let Some(x) = b.get_mut(at) {
                    *x ^= 0x5a;
                }
                std::fs::write(&hot, b).map_err(io)?;
            }
            1 => std::fs::write(&hot, bytes.get(..at).unwrap_or(&[])).map_err(io)?,
            _ => std::fs::remove_file(newest.join("COMMIT")).map_err(io)?,
        }
        self.trace(format_args!(
            "damaged {} ({how}, at {at})",
            newest.display()
        ));
        self.report.corrupted += 1;
        self.damaged[id] = true;
        Ok(())
    }

    /// Each producer goes back to the first of its events the restored state lacks, and a
    /// few before it (replays the state must refuse).
    pub(super) fn rewind(&mut self) {
        if self.sabotage == Some(Sabotage::NoReplay) {
            return;
        }
        let mut have = std::collections::BTreeMap::new();
        for key in self.oracle.keys() {
            let n = self
                .state_of(key)
                .ok()
                .flatten()
                .map_or(0, |(r, _)| r.seq_end);
            have.insert(key, n);
        }
        for p in 0..self.producers.len() {
            let prod = &self.producers[p];
            let first_missing = prod
                .events
                .iter()
                .position(|&i| {
                    let e = &self.log[i];
                    e.seq >= have.get(&e.key).copied().unwrap_or(0)
                })
                .unwrap_or(prod.events.len());
            let back = self.rng.below(6) as usize;
            let from = first_missing.saturating_sub(back).min(prod.next);
            self.report.replayed += (self.producers[p].next - from) as u64;
            self.producers[p].next = from;
        }
    }
}
