//! The time an event is applied at: one rule for the shard (`Owner::apply`) and for a
//! Score-less replay of a partition's input (`replay`), so both give the state the same times.

use crate::config::{Config, LatePolicy, TimeMode};

/// `time.mode` with its watermark: the newest event time applied so far.
#[derive(Debug, Clone, Copy)]
pub struct EventTimes {
    pub mode: TimeMode,
    lateness_ns: u64,
    late: LatePolicy,
    /// Newest event time applied (the watermark is this minus the lateness).
    pub max_event_ns: u64,
}

/// What the rule made of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timed {
    /// Apply it at `ts_ns`, with `now_ns` the TTL's reference time.
    At { ts_ns: u64, now_ns: u64 },
    /// Older than the watermark under `time.late = apply`: applied at the watermark.
    LateApplied { ts_ns: u64, now_ns: u64 },
    /// Older than the watermark under `time.late = drop`.
    LateDropped,
}

impl EventTimes {
    pub fn new(config: &Config, max_event_ns: u64) -> Self {
        Self {
            mode: config.time.mode,
            lateness_ns: config.time.lateness_ns(),
            late: config.time.late,
            max_event_ns,
        }
    }

    /// The times of an event stamped `ts_ns` (its own time, or its receive time when it
    /// carried none), received at `recv_ns` and taken by the shard at `pickup_ns`.
    #[inline]
    pub fn of(&mut self, ts_ns: u64, recv_ns: u64, pickup_ns: u64) -> Timed {
        match self.mode {
            TimeMode::Processing => {
                self.max_event_ns = self.max_event_ns.max(recv_ns);
                Timed::At {
                    ts_ns: recv_ns,
                    now_ns: pickup_ns.max(recv_ns),
                }
            }
            TimeMode::Event => {
                let watermark = self.max_event_ns.saturating_sub(self.lateness_ns);
                if ts_ns >= watermark {
                    self.max_event_ns = self.max_event_ns.max(ts_ns);
                    return Timed::At {
                        ts_ns,
                        now_ns: self.max_event_ns,
                    };
                }
                match self.late {
                    LatePolicy::Drop => Timed::LateDropped,
                    LatePolicy::Apply => Timed::LateApplied {
                        ts_ns: watermark,
                        now_ns: self.max_event_ns,
                    },
                }
            }
        }
    }

    /// The TTL's reference time at a cycle's end: processing time, or the newest event time.
    pub fn reference(&self, now_ns: u64) -> u64 {
        match self.mode {
            TimeMode::Processing => now_ns,
            TimeMode::Event => self.max_event_ns,
        }
    }
}
