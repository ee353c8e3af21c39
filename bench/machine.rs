//! What the numbers were measured on, recorded beside them.

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub topology: String,
    pub kernel: String,
    pub rustc: String,
    pub git_rev: String,
    pub profile: &'static str,
}

fn command(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// This machine's CPUs for a run with `shards` shards: the first `shards` for the service,
/// the rest for the load generator.
/// The CPUs this process may run on (OS numbering).
pub fn usable_cpus() -> Vec<usize> {
    sluice::topology::discover()
        .cpus
        .iter()
        .map(|c| c.os_index)
        .collect()
}

pub fn split_cpus(shards: usize) -> anyhow::Result<(Vec<usize>, Vec<usize>)> {
    let cpus = usable_cpus();
    anyhow::ensure!(
        shards >= 1 && shards <= cpus.len(),
        "--shards must be 1..={}",
        cpus.len()
    );
    let generator = cpus[shards..].to_vec();
    let mut service = cpus;
    service.truncate(shards);
    Ok((service, generator))
}

pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let topo = sluice::topology::discover();
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_else(|_| "unknown".to_owned());
    // The results directory itself changes as runs write into it; only code counts as dirty.
    let status = command(
        "git",
        &[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!bench/results",
        ],
    );
    let dirty = status != "unknown" && !status.is_empty();
    Machine {
        cpu_model,
        cpus: topo.cpus.len(),
        topology: topo.summary(),
        kernel,
        rustc: command("rustc", &["-V"]),
        git_rev: format!(
            "{}{}",
            command("git", &["rev-parse", "--short", "HEAD"]),
            if dirty { "-dirty" } else { "" }
        ),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    }
}

/// Clock ticks per second of /proc's CPU times (USER_HZ: 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// Busy time of the whole machine so far (every CPU; everything but idle and iowait in
/// /proc/stat), seconds: softirq work on any CPU counts, which a per-thread figure misses.
pub fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle) as f64 / TICKS_PER_S)
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`,
/// seconds (e.g. "sluice-shard": the shards' own cores).
pub fn threads_cpu_s(prefix: &str) -> Option<f64> {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        ticks += stat_cpu_ticks(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    }
    Some(ticks as f64 / TICKS_PER_S)
}

/// utime + stime of a /proc `stat` line (a process's or a thread's), in clock ticks.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the ")" that ends comm: state is 3rd, utime 14th, stime 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPUs counted in /proc/stat's "cpu " line (what `machine_busy_s` sums over).
pub fn stat_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| {
            s.lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count()
        })
        .unwrap_or(0)
}

/// CPU time (user + system) of process `pid`, all its threads, seconds (e.g. the broker's).
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_cpu_ticks(&stat)? as f64 / TICKS_PER_S)
}

/// CPU time so far of the shard threads and of the whole machine: two of them, `per_datagram`
/// apart, give each one's CPU per datagram over a run.
#[derive(Clone, Copy)]
pub struct CpuSample {
    shards_s: Option<f64>,
    machine_s: Option<f64>,
}

impl CpuSample {
    pub fn now() -> Self {
        Self {
            shards_s: threads_cpu_s("sluice-shard"),
            machine_s: machine_busy_s(),
        }
    }

    /// (shard threads, whole machine) microseconds per datagram from `self` to `later`.
    pub fn per_datagram(&self, later: &Self, datagrams: u64) -> (Option<f64>, Option<f64>) {
        let per = |a: Option<f64>, b: Option<f64>| Some((b? - a?) * 1e6 / datagrams.max(1) as f64);
        (
            per(self.shards_s, later.shards_s),
            per(self.machine_s, later.machine_s),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_cpu_s() -> f64 {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .expect("thread CPU clock");
        t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9
    }

    #[test]
    fn a_process_cpu_time_counts_its_threads_and_the_machine_its_cpus() {
        let start = thread_cpu_s();
        let mut x = 0u64;
        // Spin until this thread has used 0.3 s of CPU (not of wall time).
        while thread_cpu_s() - start < 0.3 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let process = process_cpu_s(std::process::id()).expect("own /proc stat");
        let threads = threads_cpu_s("").expect("own threads");
        // /proc's times are in 10 ms ticks.
        assert!(process >= 0.29, "process {process} s");
        assert!(
            threads >= 0.29 && threads <= process + 0.011,
            "threads {threads}, process {process}"
        );
        assert!(stat_cpus() >= 1);
        assert!(machine_busy_s().is_some_and(|m| m >= 0.29));
        assert!(process_cpu_s(u32::MAX).is_none());
    }
}
