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
pub fn split_cpus(shards: usize) -> anyhow::Result<(Vec<usize>, Vec<usize>)> {
    let cpus: Vec<usize> = sluice::topology::discover()
        .cpus
        .iter()
        .map(|c| c.os_index)
        .collect();
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
