//! The one list of tuning operations every verb works from, built from the config (the
//! service's shard map and socket sizes) and what the host under `root` has.

use std::collections::BTreeSet;

use super::root::{format_cpu_list, parse_cpu_list, Root};
use super::{HostError, Op, Target, Want};
use crate::config::Config;

/// What the plan is built from.
#[derive(Debug, Clone)]
pub struct Facts {
    pub online: Vec<usize>,
    pub shard_cpus: Vec<usize>,
    pub nic: Option<String>,
    /// CPU -> NUMA node, from /sys/devices/system/node/node*/cpulist.
    pub cpu_nodes: Vec<(usize, usize)>,
    pub nic_node: Option<i64>,
}

impl Facts {
    pub fn housekeeping(&self) -> Vec<usize> {
        self.online
            .iter()
            .copied()
            .filter(|c| !self.shard_cpus.contains(c))
            .collect()
    }

    fn node_of(&self, cpu: usize) -> Option<usize> {
        self.cpu_nodes
            .iter()
            .find(|(c, _)| *c == cpu)
            .map(|(_, n)| *n)
    }
}

/// Read the facts; a shard map or NIC that does not match the host is an error here, before
/// anything is planned (nothing half-applied).
pub fn facts(config: &Config, root: &Root, nic: Option<&str>) -> Result<Facts, HostError> {
    let online = root
        .read("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(&s))
        .filter(|l| !l.is_empty())
        .ok_or_else(|| HostError::Host("cannot read /sys/devices/system/cpu/online".into()))?;
    let shard_cpus = if !config.shards.cores.is_empty() {
        let missing: Vec<usize> = config
            .shards
            .cores
            .iter()
            .copied()
            .filter(|c| !online.contains(c))
            .collect();
        if !missing.is_empty() {
            return Err(HostError::Host(format!(
                "shards.cores = {:?} does not match this host: CPU(s) {missing:?} are not online (online: {})",
                config.shards.cores,
                format_cpu_list(&online)
            )));
        }
        config.shards.cores.clone()
    } else if root.is_live() {
        let topo = crate::topology::discover();
        crate::topology::plan(&config.shards, &topo)
            .map_err(|p| HostError::Host(p.join("; ")))?
            .iter()
            .map(|p| p.cpu)
            .collect()
    } else {
        let n = match config.shards.count {
            0 => online.len(),
            n => n.min(online.len()),
        };
        online[..n].to_vec()
    };
    let nic = match nic {
        Some(n) => {
            if !root.exists(&format!("/sys/class/net/{n}")) {
                let known = root.list("/sys/class/net").join(", ");
                return Err(HostError::Host(format!(
                    "--nic {n}: no such network interface (this host has: {known})"
                )));
            }
            Some(n.to_owned())
        }
        None => default_route_nic(root),
    };
    let mut cpu_nodes = Vec::new();
    for node in root.list("/sys/devices/system/node") {
        let Some(id) = node
            .strip_prefix("node")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if let Some(cpus) = root
            .read(&format!("/sys/devices/system/node/{node}/cpulist"))
            .ok()
            .and_then(|s| parse_cpu_list(&s))
        {
            cpu_nodes.extend(cpus.into_iter().map(|c| (c, id)));
        }
    }
    let nic_node = nic.as_ref().and_then(|n| {
        root.read(&format!("/sys/class/net/{n}/device/numa_node"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    Ok(Facts {
        online,
        shard_cpus,
        nic,
        cpu_nodes,
        nic_node,
    })
}

/// The interface of the default route (/proc/net/route, destination 00000000).
fn default_route_nic(root: &Root) -> Option<String> {
    let table = root.read("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|l| {
        let mut f = l.split_whitespace();
        let (iface, dest) = (f.next()?, f.next()?);
        (dest == "00000000").then(|| iface.to_owned())
    })
}

fn file(name: String, path: String, want: Want, why: &str) -> Op {
    Op {
        name,
        target: Target::File(path),
        want,
        why: why.to_owned(),
        skip: None,
    }
}

/// A shard CPU's PM QoS resume latency: no idle state slower to leave than its shallowest
/// sleep (C1). A shard parks after `shards.idle_spins` empty polls, and the next event waits
/// for its core to wake: intel_idle's Skylake-SP table gives C6 133 µs, C1 2 µs. Per CPU
/// (the sysfs file DPDK's `rte_power_qos_set_cpu_resume_latency` writes), a setting apply
/// journals, rather than the system-wide `/dev/cpu_dma_latency` (tuned's way), a request that
/// holds every core and lasts only while a process keeps it open.
fn resume_latency(root: &Root, cpu: usize) -> Op {
    let name = format!("cpu{cpu} resume latency (PM QoS)");
    let why =
        "a parked shard's core sleeps no deeper than C1 and wakes in microseconds; 0 = no bound";
    let path = format!("/sys/devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us");
    if !root.exists(&path) {
        return skipped(&name, why, format!("no {path}"));
    }
    let idle = format!("/sys/devices/system/cpu/cpu{cpu}/cpuidle");
    // The states in index order; state0 is the polling loop on x86 (no sleep at all).
    let mut states = root
        .list(&idle)
        .into_iter()
        .filter(|s| s.starts_with("state"));
    let shallowest = states.find_map(|state| {
        let at = |f: &str| root.read(&format!("{idle}/{state}/{f}")).ok();
        if at("name")?.trim() == "POLL" {
            return None;
        }
        at("latency")?.trim().parse::<u32>().ok()
    });
    match shallowest {
        // "0" in this file means no constraint at all (and "n/a" none but polling), so the
        // bound is at least 1 µs. A stricter one already there (tuned, DPDK) is kept.
        Some(us) => file(name, path, Want::LatencyAtMost(us.max(1)), why),
        None => skipped(
            &name,
            why,
            "no cpuidle sleep states (no cpuidle driver, or idle=poll): nothing deeper to keep the core out of".into(),
        ),
    }
}

fn skipped(name: &str, why: &str, reason: String) -> Op {
    Op {
        name: name.to_owned(),
        target: Target::Inspect,
        want: Want::Exact(String::new()),
        why: why.to_owned(),
        skip: Some(reason),
    }
}

fn sysctl(key: &str, want: Want, why: &str) -> Op {
    file(
        format!("sysctl {key}"),
        format!("/proc/sys/{}", key.replace('.', "/")),
        want,
        why,
    )
}

/// Every operation, in the order apply writes them.
pub fn build(config: &Config, root: &Root, f: &Facts, systemd_dropin: bool) -> Vec<Op> {
    let mut ops = vec![
        sysctl(
            "net.core.rmem_max",
            Want::AtLeast(config.ingest.udp.socket_rcvbuf_bytes as u64),
            "each shard socket gets ingest.udp.socket_rcvbuf_bytes without CAP_NET_ADMIN",
        ),
        sysctl(
            "net.core.netdev_max_backlog",
            Want::AtLeast(10_000),
            "bursts queue per CPU instead of being dropped before the socket",
        ),
        // Tried and dropped: 50 us each. On the dev VM it raised the loopback round trip's p50
        // from ~180 to 250-310 us (the client's poll() spun beside its sender); sluice's own
        // shards spin by themselves (shards.idle_spins) and io_uring does not use it.
        sysctl(
            "net.core.busy_read",
            Want::Exact("0".into()),
            "no socket busy-polling: the shards spin themselves and it stole the clients' CPU",
        ),
        sysctl(
            "net.core.busy_poll",
            Want::Exact("0".into()),
            "no poll() busy-polling, for the same reason",
        ),
        sysctl(
            "vm.swappiness",
            Want::Exact("1".into()),
            "hot state and rings are never swapped out for page cache",
        ),
        sysctl(
            "kernel.numa_balancing",
            Want::Exact("0".into()),
            "no page-migration faults on the shards' memory (shards are placed by hand)",
        ),
        sysctl(
            "kernel.timer_migration",
            Want::Exact("0".into()),
            "timers stay on their CPU instead of waking a shard's core",
        ),
    ];
    for (what, want) in [("enabled", "madvise"), ("defrag", "madvise")] {
        ops.push(Op {
            name: format!("transparent hugepages {what}"),
            target: Target::ChoiceFile(format!("/sys/kernel/mm/transparent_hugepage/{what}")),
            want: Want::Choice(want.into()),
            why: "no khugepaged scans or direct compaction stalls behind the shards' backs".into(),
            skip: None,
        });
    }
    let cs = "/sys/devices/system/clocksource/clocksource0";
    match root.read(&format!("{cs}/available_clocksource")) {
        Ok(avail) if avail.split_whitespace().any(|c| c == "tsc") => ops.push(file(
            "clocksource".into(),
            format!("{cs}/current_clocksource"),
            Want::Exact("tsc".into()),
            "clock_gettime (every cycle's timestamps) from the vDSO without a trap",
        )),
        Ok(avail) => ops.push(skipped(
            "clocksource",
            "clock_gettime from the vDSO",
            format!("no tsc clocksource (available: {avail})"),
        )),
        Err(_) => ops.push(skipped("clocksource", "", "no clocksource in /sys".into())),
    }
    for &cpu in &f.shard_cpus {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
        let name = format!("cpu{cpu} frequency governor");
        let why = "a shard core never waits to clock up";
        if root.exists(&path) {
            ops.push(file(name, path, Want::Exact("performance".into()), why));
        } else {
            ops.push(skipped(
                &name,
                why,
                "no cpufreq driver (a virtual machine, or fixed frequency)".into(),
            ));
        }
    }
    for &cpu in &f.shard_cpus {
        ops.push(resume_latency(root, cpu));
    }
    nic_ops(root, f, &mut ops);
    ops.push(numa_placement(f));
    if config.ingest.udp.driver == crate::config::UdpDriver::AfXdp {
        xdp_ops(config, root, f, &mut ops);
    }
    let name = "systemd placement drop-in";
    let why = "the service's helper threads and memory match the shard map";
    let dropin = "/etc/systemd/system/sluice.service.d/50-sluice-placement.conf";
    if systemd_dropin {
        ops.push(Op {
            name: name.into(),
            target: Target::WholeFile(dropin.into()),
            want: Want::Content(dropin_text(f)),
            why: why.into(),
            skip: None,
        });
    } else {
        ops.push(skipped(
            name,
            why,
            format!("not asked for (--systemd-dropin writes {dropin})"),
        ));
    }
    ops.push(backup_placement(f, systemd_dropin));
    ops
}

/// The scheduled backup (`sluice-backup.service`: reading and copying state.dir, nice 19)
/// kept on the CPUs no shard runs on. Nice alone does not keep it off a shard's core: the
/// scheduler still gives it slices there, each a stall for the shard.
fn backup_placement(f: &Facts, systemd_dropin: bool) -> Op {
    let name = "systemd backup placement drop-in";
    let why = "the scheduled backup runs on the housekeeping CPUs, never on a shard's";
    let dropin = "/etc/systemd/system/sluice-backup.service.d/50-sluice-placement.conf";
    if !systemd_dropin {
        return skipped(
            name,
            why,
            format!("not asked for (--systemd-dropin writes {dropin})"),
        );
    }
    let housekeeping = f.housekeeping();
    if housekeeping.is_empty() {
        return skipped(
            name,
            why,
            "every CPU runs a shard: no CPU to keep the backup on (leave one core for the host)"
                .into(),
        );
    }
    Op {
        name: name.into(),
        target: Target::WholeFile(dropin.into()),
        want: Want::Content(format!(
            "{DROPIN_HEAD}CPUAffinity={}\n",
            format_cpu_list(&housekeeping)
        )),
        why: why.into(),
        skip: None,
    }
}

/// What `ingest.udp.driver = af_xdp` needs of the host: the interface with a receive queue per
/// shard, the BPF JIT, and the capabilities drop-in the plain unit does not have.
fn xdp_ops(config: &Config, root: &Root, f: &Facts, ops: &mut Vec<Op>) {
    let udp = &config.ingest.udp;
    let iface = &udp.interface;
    let queues_needed = udp
        .queues
        .iter()
        .map(|q| *q as usize + 1)
        .max()
        .unwrap_or(f.shard_cpus.len());
    let present = !iface.is_empty() && root.exists(&format!("/sys/class/net/{iface}"));
    let rx = root
        .list(&format!("/sys/class/net/{iface}/queues"))
        .iter()
        .filter(|q| q.starts_with("rx-"))
        .count();
    ops.push(Op {
        name: "af_xdp interface and queues".into(),
        target: Target::Inspect,
        want: Want::Inspect {
            current: if present {
                format!("{iface}: {rx} receive queue(s)")
            } else {
                format!("no interface {iface:?}")
            },
            wanted: format!(
                "{iface:?} with at least {queues_needed} receive queue(s) (ingest.udp.queues, or one per shard); apply cannot"
            ),
            ok: present && rx >= queues_needed,
        },
        why: "each shard's AF_XDP socket binds its own receive queue".into(),
        skip: None,
    });
    ops.push(sysctl(
        "net.core.bpf_jit_enable",
        Want::AtLeast(1),
        "the XDP program runs compiled, not interpreted, on every frame",
    ));
    let dropin = "/etc/systemd/system/sluice.service.d/af-xdp.conf";
    ops.push(Op {
        name: "af_xdp capabilities drop-in".into(),
        target: Target::Inspect,
        want: Want::Inspect {
            current: if root.exists(dropin) {
                format!("{dropin} present")
            } else {
                format!("{dropin} missing")
            },
            wanted: "installed from /usr/local/share/doc/sluice/sluice-af-xdp.conf (CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK); apply cannot".into(),
            ok: root.exists(dropin),
        },
        why: "the unit grants no capability; AF_XDP needs five (README, AF_XDP)".into(),
        skip: None,
    });
}

/// How every drop-in `--systemd-dropin` writes begins.
const DROPIN_HEAD: &str =
    "# Written by `sluice host apply --systemd-dropin`; `sluice host revert` removes it.\n[Service]\n";

fn dropin_text(f: &Facts) -> String {
    let mut s = String::from(DROPIN_HEAD);
    s.push_str(&format!("CPUAffinity={}\n", format_cpu_list(&f.online)));
    let nodes: BTreeSet<usize> = f.shard_cpus.iter().filter_map(|&c| f.node_of(c)).collect();
    if nodes.len() == 1 {
        if let Some(n) = nodes.first() {
            s.push_str(&format!("NUMAPolicy=bind\nNUMAMask={n}\n"));
        }
    }
    s
}

fn numa_placement(f: &Facts) -> Op {
    let name = "shards on the NIC's NUMA node";
    let why = "packets, their socket buffers and the shards share one memory node";
    let (Some(nic), Some(node)) = (&f.nic, f.nic_node.filter(|n| *n >= 0)) else {
        return skipped(
            name,
            why,
            "the NIC reports no NUMA node (one node, or a virtual NIC)".into(),
        );
    };
    let off: Vec<usize> = f
        .shard_cpus
        .iter()
        .copied()
        .filter(|&c| f.node_of(c).is_some_and(|n| n as i64 != node))
        .collect();
    Op {
        name: name.into(),
        target: Target::Inspect,
        want: Want::Inspect {
            current: format!(
                "shards on CPUs {} ({nic} on node {node})",
                format_cpu_list(&f.shard_cpus)
            ),
            wanted: format!("every shard CPU on node {node}; change shards.cores (apply cannot)"),
            ok: off.is_empty(),
        },
        why: why.into(),
        skip: None,
    }
}

fn nic_ops(root: &Root, f: &Facts, ops: &mut Vec<Op>) {
    let Some(nic) = &f.nic else {
        for n in [
            "NIC IRQ affinity",
            "RPS",
            "XPS",
            "RSS flow hash",
            "irqbalance",
        ] {
            ops.push(skipped(
                n,
                "",
                "no NIC found (no default route): give --nic".into(),
            ));
        }
        return;
    };
    let house = f.housekeeping();
    // A PCI NIC lists its MSI-X vectors under device/; a virtio NIC's device is the virtio
    // function, whose PCI parent holds them.
    let mut irqs: Vec<String> = root.list(&format!("/sys/class/net/{nic}/device/msi_irqs"));
    if irqs.is_empty() {
        irqs = root.list(&format!("/sys/class/net/{nic}/device/../msi_irqs"));
    }
    irqs.retain(|irq| root.exists(&format!("/proc/irq/{irq}/smp_affinity_list")));
    let why = "the NIC's interrupts and their softirq work stay off the shard cores";
    if irqs.is_empty() {
        ops.push(skipped(
            "NIC IRQ affinity",
            why,
            format!("{nic} has no MSI/MSI-X IRQs under /sys/class/net/{nic}/device/msi_irqs"),
        ));
    } else if house.is_empty() {
        ops.push(skipped(
            "NIC IRQ affinity",
            why,
            "every CPU runs a shard: no CPU to move the IRQs to (leave one core for the host)"
                .into(),
        ));
    } else {
        for irq in &irqs {
            ops.push(file(
                format!("{nic} irq {irq} affinity"),
                format!("/proc/irq/{irq}/smp_affinity_list"),
                Want::CpuList(house.clone()),
                why,
            ));
        }
    }
    if irqbalance_running(root) && !irqs.is_empty() && !house.is_empty() {
        ops.push(Op {
            name: "irqbalance keeps off the shard cores".into(),
            target: Target::WholeFile("/etc/default/irqbalance".into()),
            want: Want::EnvLine {
                key: "IRQBALANCE_BANNED_CPULIST".into(),
                value: format_cpu_list(&f.shard_cpus),
            },
            why: "irqbalance would move the NIC's IRQs back (restart irqbalance after apply)"
                .into(),
            skip: None,
        });
    } else {
        ops.push(skipped(
            "irqbalance keeps off the shard cores",
            "irqbalance would move the NIC's IRQs back",
            "irqbalance is not running".into(),
        ));
    }
    let (rx, tx): (Vec<String>, Vec<String>) = root
        .list(&format!("/sys/class/net/{nic}/queues"))
        .into_iter()
        .filter(|q| q.starts_with("rx-") || q.starts_with("tx-"))
        .partition(|q| q.starts_with("rx-"));
    // Enough hardware queues: RSS spreads flows, RPS would only add an IPI per batch. Fewer
    // queues than shards: RPS spreads the protocol work over the shard CPUs.
    let rps = if rx.len() >= f.shard_cpus.len() {
        Vec::new()
    } else {
        f.shard_cpus.clone()
    };
    for q in &rx {
        let path = format!("/sys/class/net/{nic}/queues/{q}/rps_cpus");
        if root.exists(&path) {
            ops.push(file(
                format!("{nic} {q} RPS"),
                path,
                Want::CpuMask(rps.clone()),
                if rps.is_empty() {
                    "RSS has a queue per shard: no software steering"
                } else {
                    "fewer receive queues than shards: spread protocol work over the shard CPUs"
                },
            ));
        }
    }
    for (i, q) in tx.iter().enumerate() {
        let path = format!("/sys/class/net/{nic}/queues/{q}/xps_cpus");
        if let (true, Some(&cpu)) = (
            root.exists(&path),
            f.shard_cpus.get(i % f.shard_cpus.len().max(1)),
        ) {
            ops.push(file(
                format!("{nic} {q} XPS"),
                path,
                Want::CpuMask(vec![cpu]),
                "a shard's replies leave by its own transmit queue (no queue lock shared)",
            ));
        }
    }
    let why = "UDP flows hash on addresses and ports, so each source port lands on its queue";
    if !root.is_live() {
        ops.push(skipped(
            "RSS flow hash udp4",
            why,
            "ethtool acts on the live host only (--root is set)".into(),
        ));
    } else if !super::ethtool::available() {
        ops.push(skipped(
            "RSS flow hash udp4",
            why,
            "ethtool is not installed".into(),
        ));
    } else if super::ethtool::read_udp4_hash(nic).is_ok_and(|h| h.is_empty()) {
        // A NIC that hashes UDP on no field ("None": virtio's, one queue) takes `-N` without
        // an error and still reports None: there is nothing to steer, so nothing to check.
        ops.push(skipped(
            "RSS flow hash udp4",
            why,
            format!("{nic} reports no RSS hash for UDP (one queue, or a virtual NIC)"),
        ));
    } else {
        ops.push(Op {
            name: format!("{nic} RSS flow hash udp4"),
            target: Target::Ethtool { nic: nic.clone() },
            want: Want::Exact("sdfn".into()),
            why: why.into(),
            skip: None,
        });
    }
}

fn irqbalance_running(root: &Root) -> bool {
    root.list("/proc")
        .iter()
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
        .any(|p| {
            root.read(&format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "irqbalance")
        })
}
