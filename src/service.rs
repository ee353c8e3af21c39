//! systemd integration (`Type=notify`): readiness once every shard serves, human-readable
//! `STATUS=` lines, start-up time extended while a long restore runs, and a watchdog fed only
//! while every shard's loop keeps turning. Without `NOTIFY_SOCKET` (not under systemd) the
//! notifications are skipped and the heartbeat check still logs a stuck shard.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How much more start-up time each `EXTEND_TIMEOUT_USEC` asks for; sent every second while
/// shards restore, so a restore that keeps going keeps the service alive and one that hangs
/// is killed this long after its last sign of life.
pub const START_EXTENSION: Duration = Duration::from_secs(30);

/// The service manager's end, as the environment describes it.
pub struct Systemd {
    notify: bool,
    warned: bool,
    watchdog: Option<Duration>,
}

impl Systemd {
    /// Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (left in the environment).
    pub fn from_env() -> Self {
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec))
            .filter(|d| !d.is_zero());
        Self {
            notify: std::env::var_os("NOTIFY_SOCKET").is_some(),
            warned: false,
            watchdog,
        }
    }

    /// `WatchdogSec=` as systemd passed it (None: no watchdog).
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// A failure to notify (the socket is gone, say) is logged once and never stops serving.
    fn send(&mut self, states: &[NotifyState<'_>]) {
        if !self.notify {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    "systemd notify socket {:?}: {e}; readiness and watchdog messages are not delivered (serving goes on)",
                    std::env::var_os("NOTIFY_SOCKET").unwrap_or_default()
                );
            }
        }
    }

    /// Still starting: ask for more time and say why.
    pub fn starting(&mut self, status: &str) {
        let usec = u32::try_from(START_EXTENSION.as_micros()).unwrap_or(u32::MAX);
        self.send(&[
            NotifyState::ExtendTimeoutUsec(usec),
            NotifyState::Status(status),
        ]);
    }

    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&mut self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog_ping(&mut self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&mut self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

/// Which shards' loops stopped turning between two looks at their heartbeats.
#[derive(Debug, Default)]
pub struct Heartbeats {
    last: Vec<u64>,
    stuck_since: Vec<Option<Instant>>,
}

impl Heartbeats {
    /// Compare each shard's loop count with the last look; the shards that did not advance,
    /// each with how long it has been stuck. The first look finds none stuck.
    pub fn check(&mut self, loops: &[u64], now: Instant) -> Vec<(usize, Duration)> {
        if self.last.len() != loops.len() {
            self.last = loops.to_vec();
            self.stuck_since = vec![None; loops.len()];
            return Vec::new();
        }
        let mut stuck = Vec::new();
        for (i, (&now_loops, last)) in loops.iter().zip(self.last.iter_mut()).enumerate() {
            let since = &mut self.stuck_since[i];
            if now_loops == *last {
                let t = *since.get_or_insert(now);
                stuck.push((i, now.duration_since(t)));
            } else {
                *since = None;
            }
            *last = now_loops;
        }
        stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_whose_loop_count_stays_put_is_stuck_until_it_moves() {
        let t0 = Instant::now();
        let mut h = Heartbeats::default();
        assert!(
            h.check(&[5, 9], t0).is_empty(),
            "the first look has nothing to compare"
        );
        assert!(h.check(&[6, 10], t0 + Duration::from_secs(1)).is_empty());
        let stuck = h.check(&[6, 11], t0 + Duration::from_secs(2));
        assert_eq!(stuck, vec![(0, Duration::ZERO)]);
        let stuck = h.check(&[6, 12], t0 + Duration::from_secs(5));
        assert_eq!(stuck, vec![(0, Duration::from_secs(3))]);
        assert!(h.check(&[7, 13], t0 + Duration::from_secs(6)).is_empty());
    }
}
