//! When each datagram is due: one rate for the run's duration, optionally followed by a second
//! rate (an overload, then the load it must recover to).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    first_interval_ns: f64,
    /// Datagrams of the first phase; datagram `switch_d` is the second phase's first.
    switch_d: u64,
    switch_ns: f64,
    then_interval_ns: f64,
    total: u64,
}

impl Schedule {
    /// `rate` events/s for `duration`, then `then` (events/s, duration) if given, in
    /// datagrams of `batch` events. Rates and batch must be > 0 (checked by the caller).
    pub fn new(rate: u64, duration: Duration, batch: usize, then: Option<(u64, Duration)>) -> Self {
        let first_interval_ns = batch as f64 * 1e9 / rate as f64;
        let switch_d = (duration.as_secs_f64() * 1e9 / first_interval_ns).ceil() as u64;
        let switch_ns = switch_d as f64 * first_interval_ns;
        let (then_interval_ns, then_d) = match then {
            Some((r, d)) if r > 0 => {
                let i = batch as f64 * 1e9 / r as f64;
                (i, (d.as_secs_f64() * 1e9 / i).ceil() as u64)
            }
            _ => (first_interval_ns, 0),
        };
        Self {
            first_interval_ns,
            switch_d,
            switch_ns,
            then_interval_ns,
            total: switch_d + then_d,
        }
    }

    pub fn datagrams(&self) -> u64 {
        self.total
    }

    /// Scheduled send time of datagram `d`, in ns from the run's origin.
    pub fn due_ns(&self, d: u64) -> u64 {
        if d < self.switch_d {
            (d as f64 * self.first_interval_ns) as u64
        } else {
            (self.switch_ns + (d - self.switch_d) as f64 * self.then_interval_ns) as u64
        }
    }

    /// Whether datagram `d` belongs to the second phase.
    pub fn in_second_phase(&self, d: u64) -> bool {
        d >= self.switch_d && self.total > self.switch_d
    }

    /// Start of the second phase (ns from the origin); None without one.
    pub fn switch_ns(&self) -> Option<u64> {
        (self.total > self.switch_d).then_some(self.switch_ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_phase_is_a_fixed_interval() {
        let s = Schedule::new(1000, Duration::from_secs(2), 10, None);
        assert_eq!(s.datagrams(), 200);
        assert_eq!(s.due_ns(0), 0);
        assert_eq!(s.due_ns(150), 1_500_000_000);
        assert!(!s.in_second_phase(199));
        assert_eq!(s.switch_ns(), None);
    }

    #[test]
    fn the_second_phase_starts_where_the_first_ends_at_its_own_rate() {
        // 1000 events/s in 10s: 100 datagrams/s for 2 s, then 10 datagrams/s for 3 s.
        let s = Schedule::new(
            1000,
            Duration::from_secs(2),
            10,
            Some((100, Duration::from_secs(3))),
        );
        assert_eq!(s.datagrams(), 230);
        assert_eq!(s.due_ns(199), 1_990_000_000);
        assert_eq!(s.due_ns(200), 2_000_000_000);
        assert_eq!(s.due_ns(201), 2_100_000_000);
        assert!(!s.in_second_phase(199));
        assert!(s.in_second_phase(200));
        assert_eq!(s.switch_ns(), Some(2_000_000_000));
    }
}
