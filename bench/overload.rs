//! `sluice-bench overload`: offer --rate (meant to be above what the shards can serve) for
//! --seconds, then --then-rate (a sustainable one) for --then-seconds, and report what the
//! overload did and how fast the service recovered: drops by reason, the admitted events'
//! latency during the overload, memory, and the time from the end of the overload until every
//! datagram of the lighter load was answered again (100 ms slots of scheduled send time).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use sluice::config::Config;
use sluice::loadgen::{self, LoadSpec, Slot, TIMELINE_SLOT};

use super::report::percentiles_us;

pub struct OverloadBench<'a> {
    pub rate: u64,
    pub seconds: f64,
    pub then_rate: u64,
    pub then_seconds: f64,
    pub batch: usize,
    pub keys: u64,
    pub shards: usize,
    pub repeat: usize,
    pub out: &'a Path,
    pub sets: &'a [String],
}

#[derive(Serialize)]
struct OverloadRun {
    rate: u64,
    seconds: f64,
    then_rate: u64,
    then_seconds: f64,
    batch: usize,
    /// Events the generator got out during the whole run, per second of its elapsed time.
    achieved_events_per_s: f64,
    max_send_lag_us: f64,
    /// Events answered / expected, first phase and second.
    answered_overload: (u64, u64),
    answered_after: (u64, u64),
    duplicates: u64,
    /// Replies whose per-key count fell short of what was sent (events lost before them).
    count_short: u64,
    /// Replies whose count was above what was sent: an event applied twice (must be 0).
    count_over: u64,
    /// Datagrams the kernel dropped at the shards' sockets.
    socket_drops: u64,
    /// Datagrams dropped unread after waiting past `ingest.udp.shed_after_ms`.
    datagrams_shed: u64,
    /// Datagrams and events the service refused or dropped, by reason (non-zero only).
    datagrams_dropped: Vec<(String, u64)>,
    events_dropped: Vec<(String, u64)>,
    /// Scheduled send -> reply, microseconds, for the events answered during the overload
    /// (after warm-up) and after it.
    admitted_us: Vec<(f64, f64)>,
    after_us: Vec<(f64, f64)>,
    /// End of the overload -> start of the first 100 ms slot from which every later slot was
    /// answered in full (None: the lighter load never was).
    recovered_after_ms: Option<u64>,
    /// Datagram-level loss of the lighter load's slots, in order (answered < expected).
    unanswered_after_by_slot: Vec<u64>,
    /// Resident memory of this process (service + generator) before the load, at its peak
    /// (VmHWM) and at the end, MiB. The generator's ledger (`ledger_mib`, 5 bytes an event)
    /// is allocated after the first: the service's growth is peak - before - ledger.
    rss_before_mib: f64,
    ledger_mib: f64,
    rss_peak_mib: f64,
    rss_end_mib: f64,
}

#[derive(Serialize)]
struct OverloadResults {
    machine: super::machine::Machine,
    command: String,
    sluice_config: Vec<String>,
    runs: Vec<OverloadRun>,
}

fn status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
        })
        .unwrap_or(f64::NAN)
}

/// The first slot (from the switch on) from which every slot is answered in full.
fn recovered_after(timeline: &[Slot], switch: Duration) -> Option<u64> {
    let first = (switch.as_nanos() / TIMELINE_SLOT.as_nanos()) as usize;
    let after = timeline.get(first..)?;
    let last_short = after.iter().rposition(|s| s.answered < s.expected);
    let k = last_short.map_or(0, |i| i + 1);
    (k < after.len()).then(|| (k as u64) * TIMELINE_SLOT.as_millis() as u64)
}

fn nonzero(v: &[(&'static str, u64)]) -> Vec<(String, u64)> {
    v.iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| ((*r).to_owned(), *n))
        .collect()
}

pub fn run(b: &OverloadBench<'_>) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.then_rate > 0 && b.repeat > 0,
        "--then-rate and --repeat must be > 0"
    );
    let (service_cpus, generator_cpus) = super::machine::split_cpus(b.shards)?;
    let mut sets = vec![
        "ingest.udp.listen=127.0.0.1:0".to_owned(),
        format!("shards.cores={service_cpus:?}"),
        // The generator's CPUs stand for the clients' machines: sluice's helper threads stay
        // on the service's (measured on the 2-vCPU VM, helpers beside the generator took the
        // state.dir p99 from 7-10 ms to 13-21 ms, the generator reading replies late).
        format!("shards.helper_cores={service_cpus:?}"),
        "log.level=warn".to_owned(),
    ];
    sets.extend(b.sets.iter().cloned());
    let config = Config::from_layers(None, &sets).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(b.out).with_context(|| format!("creating {}", b.out.display()))?;
    let mut runs = Vec::new();
    for _ in 0..b.repeat {
        let running = sluice::app::start(&config)?;
        let spec = LoadSpec {
            target: running.local_addr,
            rate: b.rate,
            batch: b.batch,
            keys: b.keys,
            duration: Duration::from_secs_f64(b.seconds),
            then: Some((b.then_rate, Duration::from_secs_f64(b.then_seconds))),
            warmup: Duration::from_secs(1).min(Duration::from_secs_f64(b.seconds / 5.0)),
            cpus: generator_cpus.clone(),
            drain: Duration::from_secs(2),
            ..LoadSpec::default()
        };
        let rss_before_mib = status_kib("VmRSS:") / 1024.0;
        let load = loadgen::run(&spec);
        let report = running.stop()?;
        let load = load?;
        let switch = load.switch_at.unwrap_or_default();
        let first = (switch.as_nanos() / TIMELINE_SLOT.as_nanos()) as usize;
        let sum = |slots: &[Slot]| {
            slots
                .iter()
                .fold((0, 0), |(a, e), s| (a + s.answered, e + s.expected))
        };
        let split = first.min(load.timeline.len());
        let run = OverloadRun {
            rate: b.rate,
            seconds: b.seconds,
            then_rate: b.then_rate,
            then_seconds: b.then_seconds,
            batch: b.batch,
            achieved_events_per_s: load.achieved_rate(),
            max_send_lag_us: load.max_send_lag.as_secs_f64() * 1e6,
            answered_overload: sum(&load.timeline[..split]),
            answered_after: sum(&load.timeline[split..]),
            duplicates: load.duplicates,
            count_short: load.count_errors - load.count_over,
            count_over: load.count_over,
            socket_drops: report.socket_drops,
            datagrams_shed: report.datagrams_shed,
            datagrams_dropped: nonzero(&report.datagrams_dropped),
            events_dropped: nonzero(&report.events_dropped),
            admitted_us: percentiles_us(&load.latency),
            after_us: load
                .latency_then
                .as_ref()
                .map(percentiles_us)
                .unwrap_or_default(),
            recovered_after_ms: recovered_after(&load.timeline, switch),
            unanswered_after_by_slot: load.timeline[split..]
                .iter()
                .map(|s| s.expected - s.answered)
                .collect(),
            rss_before_mib,
            ledger_mib: (load.sent_events + load.send_errors * b.batch as u64) as f64 * 5.0
                / (1024.0 * 1024.0),
            rss_peak_mib: status_kib("VmHWM:") / 1024.0,
            rss_end_mib: status_kib("VmRSS:") / 1024.0,
        };
        eprintln!(
            "  overload {}/s for {} s then {}/s: answered {}/{} then {}/{}, socket drops {}, shed {}, refused {:?}, admitted p99 {:.0} us, recovered after {:?} ms",
            b.rate,
            b.seconds,
            b.then_rate,
            run.answered_overload.0,
            run.answered_overload.1,
            run.answered_after.0,
            run.answered_after.1,
            run.socket_drops,
            run.datagrams_shed,
            run.datagrams_dropped,
            run.admitted_us.iter().find(|(p, _)| *p == 99.0).map_or(f64::NAN, |(_, v)| *v),
            run.recovered_after_ms
        );
        runs.push(run);
    }
    let results = OverloadResults {
        machine: super::machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        sluice_config: sets,
        runs,
    };
    let path = b.out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("sluice-bench: wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(expected: u64, answered: u64) -> Slot {
        Slot { expected, answered }
    }

    #[test]
    fn recovery_is_the_first_slot_after_which_nothing_is_missing() {
        let t = [slot(5, 1), slot(5, 5), slot(5, 3), slot(5, 5), slot(5, 5)];
        // Switch at 100 ms (slot 1): slot 2 was short, so recovered from slot 3 = 200 ms on.
        assert_eq!(recovered_after(&t, Duration::from_millis(100)), Some(200));
        assert_eq!(recovered_after(&t, Duration::from_millis(300)), Some(0));
        let never = [slot(5, 5), slot(5, 4)];
        assert_eq!(recovered_after(&never, Duration::ZERO), None);
    }
}
