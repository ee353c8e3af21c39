//! `--sweep`: the highest rate a target sustains. Raise the rate x1.25 a step until a run
//! misses the bound (p99 over `--sweep-p99-us`, under 99% of replies, any duplicate or count
//! error), then bisect between the last rate that held and the first that missed.

use crate::report::Run;
use crate::Args;

/// What a sweep needs from the command line.
pub struct Bounds {
    pub start_rate: u64,
    pub p99_us: f64,
    pub steps_max: usize,
    pub refine: usize,
    pub tries: usize,
}

impl From<&Args> for Bounds {
    fn from(a: &Args) -> Self {
        Self {
            start_rate: a.rate,
            p99_us: a.sweep_p99_us,
            steps_max: a.sweep_steps_max,
            refine: a.sweep_refine,
            tries: a.sweep_tries,
        }
    }
}

/// Every run goes into `runs`. Returns the final bracket: (highest rate that held, lowest
/// that missed); None where no tried rate held, or none missed.
pub fn find_max(
    b: &Bounds,
    mut run: impl FnMut(u64) -> anyhow::Result<Run>,
    runs: &mut Vec<Run>,
) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let mut held_at = |rate: u64, runs: &mut Vec<Run>| -> anyhow::Result<bool> {
        // Best of `tries`: noise on a shared machine only ever adds latency.
        for _ in 0..b.tries.max(1) {
            let r = run(rate)?;
            let held = r.sustained() && r.p(99.0) <= b.p99_us;
            if !held && r.max_send_lag_us > b.p99_us {
                eprintln!(
                    "    (the generator itself ran {:.0} us behind its schedule: this miss may be the generator's)",
                    r.max_send_lag_us
                );
            }
            runs.push(r);
            if held {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let mut rate = b.start_rate;
    let mut best = None;
    let mut missed = None;
    for _ in 0..b.steps_max {
        if !held_at(rate, runs)? {
            missed = Some(rate);
            break;
        }
        best = Some(rate);
        rate = (rate as f64 * 1.25) as u64;
    }
    if let (Some(mut lo), Some(mut hi)) = (best, missed) {
        for _ in 0..b.refine {
            let mid = lo + (hi - lo) / 2;
            if mid == lo {
                break;
            }
            if held_at(mid, runs)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (best, missed) = (Some(lo), Some(hi));
    }
    Ok((best, missed))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hdrhistogram::Histogram;
    use sluice::loadgen::LoadReport;

    use super::*;

    /// A run at `rate` against a target that keeps p99 at 100 us up to `capacity` and at
    /// 50 ms past it; `flaky` runs (counted down) miss whatever the rate.
    fn fake(rate: u64, capacity: u64, flaky: &mut usize) -> Run {
        let mut latency = Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let slow = rate > capacity || *flaky > 0;
        *flaky = flaky.saturating_sub(1);
        latency
            .record(if slow { 50_000_000 } else { 100_000 })
            .unwrap();
        let load = LoadReport {
            sent_datagrams: 100,
            sent_events: 100,
            send_errors: 0,
            expected_replies: 100,
            replies: 100,
            lost: 0,
            duplicates: 0,
            count_errors: 0,
            count_over: 0,
            unexpected: 0,
            client_socket_drops: 0,
            max_send_lag: Duration::ZERO,
            elapsed: Duration::from_secs(1),
            latency,
            latency_then: None,
            switch_at: None,
            timeline: Vec::new(),
        };
        Run::from_load("fake", rate, 1, 10, None, 1, load)
    }

    fn bounds(tries: usize) -> Bounds {
        Bounds {
            start_rate: 40_000,
            p99_us: 5_000.0,
            steps_max: 8,
            refine: 3,
            tries,
        }
    }

    #[test]
    fn bisection_brackets_the_capacity_within_a_thirty_second_of_the_step() {
        for capacity in [45_000u64, 77_000, 90_000, 120_000] {
            let mut runs = Vec::new();
            let mut flaky = 0;
            let (held, missed) =
                find_max(&bounds(1), |r| Ok(fake(r, capacity, &mut flaky)), &mut runs).unwrap();
            let (held, missed) = (held.unwrap(), missed.unwrap());
            assert!(
                held <= capacity && capacity < missed,
                "{held} {capacity} {missed}"
            );
            // Three halvings of a x1.25 step leave under 25% / 8 of the rate between them.
            assert!((missed - held) as f64 <= 0.25 / 8.0 * held as f64 + 1.0);
            assert!(runs.iter().all(|r| r.target == "fake"));
        }
    }

    #[test]
    fn nothing_held_and_nothing_missed_are_reported_as_such() {
        let mut flaky = 0;
        let (held, missed) = find_max(
            &bounds(1),
            |r| Ok(fake(r, 1_000, &mut flaky)),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!((held, missed), (None, Some(40_000)));
        let (held, missed) = find_max(
            &bounds(1),
            |r| Ok(fake(r, u64::MAX, &mut flaky)),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(missed, None);
        assert!(held.unwrap() > 40_000 * 4);
    }

    #[test]
    fn a_second_try_forgives_one_stalled_run_and_every_run_is_kept() {
        let mut runs = Vec::new();
        let mut flaky = 1;
        let (held, _) =
            find_max(&bounds(2), |r| Ok(fake(r, 77_000, &mut flaky)), &mut runs).unwrap();
        assert!(held.unwrap() > 70_000);
        assert_eq!(
            runs[0].rate, runs[1].rate,
            "the stalled rate was tried again"
        );

        let mut flaky = 1;
        let (held, missed) = find_max(
            &bounds(1),
            |r| Ok(fake(r, 77_000, &mut flaky)),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(
            (held, missed),
            (None, Some(40_000)),
            "one try: the stall ends it"
        );
    }
}
