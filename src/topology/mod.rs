//! Where shards run: discover packages, NUMA nodes, cores and caches with hwloc, choose one
//! CPU per shard, and pin each shard thread there with core_affinity (checked back with
//! sched_getaffinity).

mod discover;

pub use discover::{discover, Cpu, Topology};

use crate::config::Shards;

/// Where one shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub cpu: usize,
    pub numa_node: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("could not pin to CPU {0} (sched_setaffinity refused)")]
    Refused(usize),
    #[error("pinned to CPU {cpu} but the thread's affinity reads {actual}")]
    Mismatch { cpu: usize, actual: String },
}

/// One CPU per shard: `shards.cores` as given (each must exist and be allowed), else the first
/// hardware thread of each physical core, `shards.count` of them (0 = all cores).
pub fn plan(shards: &Shards, topo: &Topology) -> Result<Vec<Placement>, Vec<String>> {
    let allowed: Vec<usize> = topo.cpus.iter().map(|c| c.os_index).collect();
    let numa = |cpu: usize| {
        topo.cpus
            .iter()
            .find(|c| c.os_index == cpu)
            .and_then(|c| c.numa_node)
    };
    if !shards.cores.is_empty() {
        let problems = unavailable("shards.cores", &shards.cores, &allowed);
        if !problems.is_empty() {
            return Err(problems);
        }
        return Ok(shards
            .cores
            .iter()
            .map(|&cpu| Placement {
                cpu,
                numa_node: numa(cpu),
            })
            .collect());
    }
    let mut firsts: Vec<&Cpu> = Vec::new();
    for c in &topo.cpus {
        if !firsts.iter().any(|f| f.core == c.core) {
            firsts.push(c);
        }
    }
    let count = if shards.count == 0 {
        firsts.len()
    } else {
        shards.count
    };
    if count > firsts.len() {
        // More shards than physical cores: allowed (hyperthreads, or an oversubscribed test
        // machine), spread round-robin over all allowed CPUs.
        tracing::warn!(
            shards = count,
            cores = firsts.len(),
            "more shards than physical cores; shards will share cores"
        );
        return Ok((0..count)
            .map(|i| {
                let c = &topo.cpus[i % topo.cpus.len()];
                Placement {
                    cpu: c.os_index,
                    numa_node: c.numa_node,
                }
            })
            .collect());
    }
    Ok(firsts
        .iter()
        .take(count)
        .map(|c| Placement {
            cpu: c.os_index,
            numa_node: c.numa_node,
        })
        .collect())
}

/// Pin the calling thread to `cpu` and confirm it took.
/// Keep the calling thread (and the threads it starts later, which inherit its mask) off the
/// shards' CPUs: on the CPUs this thread may use now, minus `shard_cpus`. Nothing changes
/// when that would leave none (every CPU runs a shard) or the kernel refuses; returns the
/// CPUs the thread is now on (empty: unchanged).
pub fn keep_off(shard_cpus: &[usize]) -> Vec<usize> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let Ok(now) = sched_getaffinity(Pid::from_raw(0)) else {
        return Vec::new();
    };
    let rest: Vec<usize> = (0..CpuSet::count())
        .filter(|&i| now.is_set(i).unwrap_or(false) && !shard_cpus.contains(&i))
        .collect();
    if rest.is_empty() {
        return Vec::new();
    }
    let mut set = CpuSet::new();
    for &cpu in &rest {
        if set.set(cpu).is_err() {
            return Vec::new();
        }
    }
    match sched_setaffinity(Pid::from_raw(0), &set) {
        Ok(()) => rest,
        Err(_) => Vec::new(),
    }
}

/// Each CPU of the list `key` that this process may not use, as a config problem.
fn unavailable(key: &str, cpus: &[usize], allowed: &[usize]) -> Vec<String> {
    cpus.iter()
        .enumerate()
        .filter(|(_, c)| !allowed.contains(c))
        .map(|(i, c)| {
            format!(
                "{key}[{i}] = {c}: no such CPU available to this process (available: {allowed:?})"
            )
        })
        .collect()
}

/// `shards.helper_cores` checked against the CPUs this process may use (every one that is not
/// is listed), or the default (`helper_cpus`) when it is empty; empty when shards are not
/// pinned.
pub fn plan_helpers(
    shards: &Shards,
    topo: &Topology,
    shard_cpus: &[usize],
) -> Result<Vec<usize>, Vec<String>> {
    if !shards.pin {
        return Ok(Vec::new());
    }
    if shards.helper_cores.is_empty() {
        return Ok(helper_cpus(shard_cpus));
    }
    let allowed: Vec<usize> = topo.cpus.iter().map(|c| c.os_index).collect();
    let problems = unavailable("shards.helper_cores", &shards.helper_cores, &allowed);
    if problems.is_empty() {
        Ok(shards.helper_cores.clone())
    } else {
        Err(problems)
    }
}

/// The CPUs for sluice's helper threads (checkpoint writers, RocksDB's background pool,
/// librdkafka's threads, control and admin): those the calling thread may use, minus the
/// shards' CPUs; all it may use when that leaves none. Empty when shards are not pinned
/// (nothing to keep off; `with_cpus` then changes nothing).
pub fn helper_cpus(shard_cpus: &[usize]) -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    if shard_cpus.is_empty() {
        return Vec::new();
    }
    let Ok(now) = sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Vec::new();
    };
    let allowed: Vec<usize> = (0..CpuSet::count())
        .filter(|&i| now.is_set(i).unwrap_or(false))
        .collect();
    let rest: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !shard_cpus.contains(c))
        .collect();
    if rest.is_empty() {
        allowed
    } else {
        rest
    }
}

/// Run `f` with the calling thread allowed on `cpus` only, then restore its mask. A thread
/// inherits its creator's mask, so this is how a pinned shard thread starts helpers that must
/// not share its core: measured, the checkpoint writer, RocksDB's background threads and the
/// shard's own librdkafka consumer threads all ran pinned to the shard's CPU, competing with
/// it. `cpus` empty, or a mask the kernel refuses: `f` runs unchanged.
pub fn with_cpus<T>(cpus: &[usize], f: impl FnOnce() -> T) -> T {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    let me = nix::unistd::Pid::from_raw(0);
    let before = sched_getaffinity(me).ok();
    let mut set = CpuSet::new();
    let built = !cpus.is_empty() && cpus.iter().all(|&c| set.set(c).is_ok());
    let changed = built && before.is_some() && sched_setaffinity(me, &set).is_ok();
    let out = f();
    if let (true, Some(b)) = (changed, before) {
        if sched_setaffinity(me, &b).is_err() {
            tracing::warn!("could not restore a thread's CPU mask after starting helpers");
        }
    }
    out
}

/// Run the calling thread under SCHED_IDLE: it gets its CPU only when nothing else there
/// wants it, and gives it up as soon as something does (a shard's cold-read thread on the
/// shard's own CPU, `state.cold_reader = idle`).
pub fn make_current_idle() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the calling
    // thread; the call reads nothing else.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn pin_current(cpu: usize) -> Result<(), PinError> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        return Err(PinError::Refused(cpu));
    }
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(|_| PinError::Refused(cpu))?;
    let on: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .collect();
    if on == [cpu] {
        Ok(())
    } else {
        Err(PinError::Mismatch {
            cpu,
            actual: format!("{on:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_off_leaves_the_shard_cpus_or_changes_nothing() {
        std::thread::spawn(|| {
            let before = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
            let allowed: Vec<usize> = (0..nix::sched::CpuSet::count())
                .filter(|&i| before.is_set(i).unwrap_or(false))
                .collect();
            let first = allowed[0];
            let now = keep_off(&[first]);
            if allowed.len() == 1 {
                assert!(now.is_empty(), "no CPU left: unchanged");
            } else {
                assert_eq!(now, allowed[1..].to_vec());
                let after = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
                assert!(!after.is_set(first).unwrap());
            }
            assert!(
                keep_off(&allowed).is_empty(),
                "every CPU a shard's: unchanged"
            );
        })
        .join()
        .unwrap();
    }

    fn mask() -> Vec<usize> {
        let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
        (0..nix::sched::CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .collect()
    }

    #[test]
    fn helpers_started_from_a_pinned_thread_run_off_its_cpu() {
        std::thread::spawn(|| {
            let allowed = mask();
            let first = allowed[0];
            let helpers = helper_cpus(&[first]);
            if allowed.len() == 1 {
                assert_eq!(helpers, allowed, "no CPU left: all the allowed ones");
                return;
            }
            assert_eq!(helpers, allowed[1..].to_vec());
            pin_current(first).unwrap();
            let helper_mask = with_cpus(&helpers, || std::thread::spawn(mask).join().unwrap());
            assert_eq!(helper_mask, helpers, "the helper inherits the helper CPUs");
            assert_eq!(mask(), vec![first], "the pinned thread is pinned again");
            assert_eq!(helper_cpus(&[]), Vec::<usize>::new());
        })
        .join()
        .unwrap();
    }

    fn topo() -> Topology {
        // Two cores with two hardware threads each, on two NUMA nodes.
        let cpus = [(0, 0, 0), (1, 1, 1), (2, 0, 0), (3, 1, 1)]
            .iter()
            .map(|&(os_index, core, node)| Cpu {
                os_index,
                core,
                numa_node: Some(node),
                package: Some(0),
            })
            .collect();
        Topology {
            cpus,
            cores: 2,
            numa_nodes: 2,
            packages: 1,
            l3_bytes: None,
            source: "test",
        }
    }

    fn shards(count: usize, cores: Vec<usize>) -> Shards {
        Shards {
            count,
            cores,
            helper_cores: Vec::new(),
            pin: true,
            idle_spins: 0,
            park_timeout_us: 1000,
        }
    }

    #[test]
    fn zero_means_one_shard_per_physical_core() {
        let p = plan(&shards(0, vec![]), &topo()).unwrap();
        assert_eq!(
            p,
            vec![
                Placement {
                    cpu: 0,
                    numa_node: Some(0)
                },
                Placement {
                    cpu: 1,
                    numa_node: Some(1)
                }
            ]
        );
    }

    #[test]
    fn explicit_cores_are_checked_and_every_bad_one_reported() {
        let p = plan(&shards(0, vec![3, 2]), &topo()).unwrap();
        assert_eq!(p.iter().map(|p| p.cpu).collect::<Vec<_>>(), vec![3, 2]);
        let errs = plan(&shards(0, vec![1, 9, 17]), &topo()).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("shards.cores[1] = 9"));
    }

    #[test]
    fn the_real_machine_is_discovered() {
        let t = discover();
        assert!(!t.cpus.is_empty());
        assert!(t.cores >= 1 && t.cores <= t.cpus.len());
    }
}
