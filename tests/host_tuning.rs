//! `sluice host`: every verb through the real binary, against a committed fake /proc + /sys of
//! a multi-queue NIC host (tests/fixtures/host/multiqueue, shapes from the kernel docs: see
//! make_multiqueue.py), and for real on this machine for what it has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir`, path -> bytes.
fn dump(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// The paths whose bytes differ, with both contents, for a readable failure.
fn differences(a: &BTreeMap<PathBuf, Vec<u8>>, b: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |m: &BTreeMap<PathBuf, Vec<u8>>| {
                m.get(k).map_or("(absent)".to_owned(), |v| {
                    format!("{:?}", String::from_utf8_lossy(v))
                })
            };
            format!("{}: {} vs {}", k.display(), show(a), show(b))
        })
        .collect()
}

fn assert_same(a: &BTreeMap<PathBuf, Vec<u8>>, b: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    let d = differences(a, b);
    assert!(d.is_empty(), "{what}: {d:#?}");
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in dump(from) {
        let p = to.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// A fresh copy of the fixture host.
fn fake_host(name: &str) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host/multiqueue");
    let dir = std::env::temp_dir().join(format!("sluice-host-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_tree(&fixture, &dir);
    dir
}

fn write_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("write "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn plan_apply_check_revert_on_a_multiqueue_host_restores_every_byte() {
    let root = fake_host("cycle");
    let r = root.to_str().unwrap();
    let journal = root.with_extension("journal.json");
    let j = journal.to_str().unwrap();
    let common = [
        "--root",
        r,
        "--journal",
        j,
        "--set",
        "shards.cores=[1,2]",
        "--systemd-dropin",
    ];
    let before = dump(&root);

    let check = sluice(&[&["host", "check"][..], &common].concat());
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        text(&check).contains("DIFF  sysctl vm.swappiness"),
        "{}",
        text(&check)
    );

    let plan = sluice(&[&["host", "plan"][..], &common].concat());
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert_same(&dump(&root), &before, "plan changes nothing");
    let planned = write_lines(&plan);
    for needle in [
        "/proc/irq/40/smp_affinity_list: 0-7 -> 0,3-7",
        "/sys/class/net/eth1/queues/tx-1/xps_cpus: 00 -> 4",
        "/sys/kernel/mm/transparent_hugepage/enabled: always -> madvise",
        "/sys/devices/system/cpu/cpu2/cpufreq/scaling_governor: powersave -> performance",
        // C1's exit latency (2 µs): C1E and C6 are off limits for a shard's core.
        "/sys/devices/system/cpu/cpu2/power/pm_qos_resume_latency_us: 0 -> 2",
        "IRQBALANCE_BANNED_CPULIST=\\\"1-2\\\"",
        "CPUAffinity=0-7\\nNUMAPolicy=bind\\nNUMAMask=0",
        // The backup unit on the CPUs no shard (1, 2) runs on.
        "sluice-backup.service.d/50-sluice-placement.conf",
        "[Service]\\nCPUAffinity=0,3-7\\n",
    ] {
        assert!(
            planned.iter().any(|l| l.contains(needle)),
            "missing {needle:?} in {planned:#?}"
        );
    }
    assert!(text(&plan).contains("skipped: ethtool acts on the live host only"));

    let apply = sluice(&[&["host", "apply"][..], &common].concat());
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    // The golden rule: apply makes exactly the writes plan printed.
    assert_eq!(write_lines(&apply), planned);
    let changed: Vec<_> = dump(&root)
        .into_iter()
        .filter(|(p, b)| before.get(p) != Some(b))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        changed.len(),
        planned.len(),
        "one file per write: {changed:?}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("proc/irq/42/smp_affinity_list")).unwrap(),
        "0,3-7\n"
    );

    let after = sluice(&[&["host", "check"][..], &common].concat());
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));
    assert!(!text(&after).contains("DIFF"));
    let again = sluice(&[&["host", "apply"][..], &common].concat());
    assert_eq!(
        again.status.code(),
        Some(2),
        "apply refuses an unreverted journal"
    );
    assert!(
        text(&again).contains("not yet reverted"),
        "{}",
        text(&again)
    );

    let revert = sluice(&["host", "revert", "--root", r, "--journal", j]);
    assert_eq!(revert.status.code(), Some(0), "{}", text(&revert));
    assert_eq!(
        dump(&root),
        before,
        "every touched file byte-identical after revert"
    );
    assert!(
        !journal.exists(),
        "the journal goes once everything is back"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn check_json_reports_every_setting_and_skips_what_the_host_lacks() {
    let root = fake_host("json");
    let r = root.to_str().unwrap();
    // Shards on node 1 while the NIC is on node 0: a mismatch apply cannot fix.
    let out = sluice(&[
        "host",
        "check",
        "--json",
        "--root",
        r,
        "--set",
        "shards.cores=[4,5]",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let settings = v["settings"].as_array().unwrap();
    let names: Vec<&str> = settings
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for n in [
        "sysctl net.core.rmem_max",
        "transparent hugepages enabled",
        "clocksource",
        "cpu4 frequency governor",
        "eth1 irq 43 affinity",
        "eth1 rx-0 RPS",
        "eth1 tx-3 XPS",
        "irqbalance keeps off the shard cores",
        "RSS flow hash udp4",
        "cpu4 resume latency (PM QoS)",
        "shards on the NIC's NUMA node",
        "systemd placement drop-in",
        "systemd backup placement drop-in",
    ] {
        assert!(names.contains(&n), "missing {n:?} in {names:?}");
    }
    let numa = settings
        .iter()
        .find(|s| s["name"] == "shards on the NIC's NUMA node")
        .unwrap();
    assert_eq!(numa["ok"], false);
    assert_eq!(
        v["mismatches"].as_u64().unwrap() as usize,
        settings
            .iter()
            .filter(|s| s["ok"] == false && s["skipped"].is_null())
            .count()
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// A resume latency bound at least as strict as C1's is left as it is (tuned or DPDK may have
/// set one): `n/a` (polling only) and 1 µs are kept; 10 µs (C1E allowed) is tightened to C1's
/// 2 µs; `0` (no bound) too.
#[test]
fn a_stricter_resume_latency_is_kept_and_a_looser_one_tightened() {
    let root = fake_host("pmqos");
    let r = root.to_str().unwrap();
    let file = |cpu: usize| {
        root.join(format!(
            "sys/devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us"
        ))
    };
    for (cpu, value) in [(1, "n/a\n"), (2, "1\n"), (3, "10\n")] {
        std::fs::write(file(cpu), value).unwrap();
    }
    let plan = sluice(&[
        "host",
        "plan",
        "--root",
        r,
        "--set",
        "shards.cores=[1,2,3,4]",
    ]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let writes: Vec<String> = write_lines(&plan)
        .into_iter()
        .filter(|l| l.contains("pm_qos_resume_latency_us"))
        .collect();
    assert_eq!(writes.len(), 2, "{writes:#?}");
    assert!(
        writes[0].contains("cpu3/power/pm_qos_resume_latency_us: 10 -> 2"),
        "{writes:#?}"
    );
    assert!(
        writes[1].contains("cpu4/power/pm_qos_resume_latency_us: 0 -> 2"),
        "{writes:#?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn check_reports_what_af_xdp_needs_only_when_it_is_the_driver() {
    let root = fake_host("xdp");
    let r = root.to_str().unwrap();
    let settings = |sets: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec![
            "host",
            "check",
            "--json",
            "--root",
            r,
            "--set",
            "shards.cores=[1,2]",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = sluice(&args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", text(&out));
        });
        v["settings"].as_array().unwrap().clone()
    };
    let find =
        |all: &[serde_json::Value], name: &str| all.iter().find(|s| s["name"] == name).cloned();
    let plain = settings(&[]);
    assert!(find(&plain, "af_xdp interface and queues").is_none());
    let xdp = ["ingest.udp.driver=af_xdp", "ingest.udp.interface=eth1"];
    let with = settings(&xdp);
    let iface = find(&with, "af_xdp interface and queues").expect("af_xdp checked");
    assert_eq!(iface["ok"], true, "{iface}");
    assert!(find(&with, "sysctl net.core.bpf_jit_enable").is_some());
    let dropin = find(&with, "af_xdp capabilities drop-in").unwrap();
    assert_eq!(
        dropin["ok"], false,
        "the fake host has no drop-in: {dropin}"
    );
    // More queues than the NIC has, and a missing interface: both reported.
    let many = settings(&[xdp[0], xdp[1], "ingest.udp.queues=[0, 63]"]);
    assert_eq!(
        find(&many, "af_xdp interface and queues").unwrap()["ok"],
        false
    );
    let none = settings(&[xdp[0], "ingest.udp.interface=eth9"]);
    let none = find(&none, "af_xdp interface and queues").unwrap();
    assert_eq!(none["ok"], false);
    assert!(
        none["current"].as_str().unwrap().contains("no interface"),
        "{none}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bad_input_is_a_clear_error_and_nothing_is_half_applied() {
    let root = fake_host("bad");
    let r = root.to_str().unwrap();
    let journal = root.with_extension("journal.json");
    let j = journal.to_str().unwrap();
    let before = dump(&root);

    let missing = sluice(&["host", "revert", "--root", r, "--journal", j]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing).contains("no journal at"),
        "{}",
        text(&missing)
    );

    std::fs::write(&journal, b"{ this is not json").unwrap();
    let corrupt = sluice(&["host", "revert", "--root", r, "--journal", j]);
    assert_eq!(corrupt.status.code(), Some(2));
    assert!(
        text(&corrupt).contains("is not a sluice host journal"),
        "{}",
        text(&corrupt)
    );
    std::fs::remove_file(&journal).unwrap();

    let nic = sluice(&[
        "host",
        "apply",
        "--root",
        r,
        "--journal",
        j,
        "--nic",
        "eth9",
    ]);
    assert_eq!(nic.status.code(), Some(2));
    assert!(
        text(&nic).contains("--nic eth9: no such network interface (this host has: eth1, lo)"),
        "{}",
        text(&nic)
    );

    let cores = sluice(&[
        "host",
        "apply",
        "--root",
        r,
        "--journal",
        j,
        "--set",
        "shards.cores=[0,64]",
    ]);
    assert_eq!(cores.status.code(), Some(2));
    assert!(
        text(&cores).contains("CPU(s) [64] are not online (online: 0-7)"),
        "{}",
        text(&cores)
    );
    assert_same(&dump(&root), &before, "refused inputs change nothing");
    assert!(!journal.exists());

    // A write the kernel refuses midway (an IRQ file that reads but cannot be written, as a
    // kernel-managed IRQ's): everything written before it is put back.
    let irq = root.join("proc/irq/42/smp_affinity_list");
    std::fs::remove_file(&irq).unwrap();
    std::os::unix::fs::symlink("/proc/version", &irq).unwrap();
    let before = dump(&root);
    let failed = sluice(&[
        "host",
        "apply",
        "--root",
        r,
        "--journal",
        j,
        "--set",
        "shards.cores=[1,2]",
    ]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(
        text(&failed).contains("eth1 irq 42 affinity"),
        "{}",
        text(&failed)
    );
    assert!(text(&failed).contains("were put back"), "{}", text(&failed));
    assert_same(&dump(&root), &before, "nothing half-applied");
    assert!(!journal.exists());
    let _ = std::fs::remove_dir_all(&root);
}

/// For real, on this machine: every operation it can run goes apply -> check -> revert and
/// every touched file reads back byte-identical. Root only (CI runs as root).
#[test]
fn apply_then_revert_on_this_machine_is_byte_exact() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: writing /proc/sys and /sys needs root (CI runs as root)");
        return;
    }
    let journal =
        std::env::temp_dir().join(format!("sluice-host-live-{}.json", std::process::id()));
    let j = journal.to_str().unwrap();
    // One shard, so a CPU is left for the NIC's interrupts.
    let common = ["--journal", j, "--set", "shards.count=1"];
    let plan = sluice(&[&["host", "plan"][..], &common].concat());
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let targets: Vec<String> = write_lines(&plan)
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(|p| p.trim_end_matches(':').to_owned())
        })
        .collect();
    let read = |ts: &[String]| -> Vec<(String, Vec<u8>)> {
        ts.iter()
            .map(|t| (t.clone(), std::fs::read(t).unwrap_or_default()))
            .collect()
    };
    let before = read(&targets);
    let apply = sluice(&[&["host", "apply"][..], &common].concat());
    if apply.status.code() == Some(1) {
        // The kernel refused a write here (a read-only /proc/sys in a container, say): apply
        // must then have put back everything it wrote.
        eprintln!("apply refused on this machine: {}", text(&apply));
        assert!(text(&apply).contains("were put back"), "{}", text(&apply));
        assert_eq!(
            read(&targets),
            before,
            "nothing half-applied on the live host"
        );
        assert!(!journal.exists());
        return;
    }
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    let revert_guard = scopeguard(j);
    assert_eq!(write_lines(&apply), write_lines(&plan));
    let check = sluice(&[&["host", "check"][..], &common].concat());
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    drop(revert_guard);
    assert_eq!(
        read(&targets),
        before,
        "byte-identical after revert: {targets:?}"
    );
    assert!(!journal.exists());
}

/// Reverts when dropped, so a failing assertion never leaves this machine tuned.
struct Revert(String);
fn scopeguard(journal: &str) -> Revert {
    Revert(journal.to_owned())
}
impl Drop for Revert {
    fn drop(&mut self) {
        let out = sluice(&["host", "revert", "--journal", &self.0]);
        assert!(
            out.status.success() || std::thread::panicking(),
            "{}",
            text(&out)
        );
    }
}
