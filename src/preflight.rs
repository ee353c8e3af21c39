//! What `sluice check-config` (and the unit's `ExecStartPre`) checks beyond the config itself:
//! that this machine can run it. Every check runs and every problem is returned, each naming
//! its key and the value found.

use std::path::Path;

use crate::config::Config;
use crate::topology::{self, Placement};

/// The machine checks' findings.
pub struct Preflight {
    pub problems: Vec<String>,
    pub placements: Vec<Placement>,
    pub topology: String,
}

pub fn check(config: &Config) -> Preflight {
    let topo = topology::discover();
    let mut problems = Vec::new();
    if let Err(e) = crate::infer::build_primary(config, None) {
        problems.push(format!("model.path = {:?}: {e}", config.model.path));
    }
    let placements = topology::plan(&config.shards, &topo).unwrap_or_else(|placement| {
        problems.extend(placement);
        Vec::new()
    });
    if !placements.is_empty() {
        if let Err(e) = crate::state::resident::check_machine(config, placements.len()) {
            problems.push(e);
        }
    }
    if !config.state.dir.is_empty() {
        if let Err(e) = writable_dir(Path::new(&config.state.dir), true) {
            problems.push(format!("state.dir = {:?}: {e}", config.state.dir));
        }
    }
    if !config.metrics.hgrm_dir.is_empty() {
        if let Err(e) = writable_dir(Path::new(&config.metrics.hgrm_dir), true) {
            problems.push(format!(
                "metrics.hgrm_dir = {:?}: {e}",
                config.metrics.hgrm_dir
            ));
        }
    }
    if !config.admin.socket.is_empty() {
        let socket = Path::new(&config.admin.socket);
        match socket.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) => {
                if let Err(e) = writable_dir(dir, false) {
                    problems.push(format!(
                        "admin.socket = {:?}: its directory {}: {e}",
                        config.admin.socket,
                        dir.display()
                    ));
                }
            }
            None => problems.push(format!(
                "admin.socket = {:?}: give an absolute path (e.g. /run/sluice/admin.sock)",
                config.admin.socket
            )),
        }
    }
    Preflight {
        problems,
        placements,
        topology: topo.summary(),
    }
}

/// The directory exists (or, with `create`, can be made) and a file can be written in it.
fn writable_dir(dir: &Path, create: bool) -> Result<(), String> {
    if create {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))?;
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err("not a directory".into()),
        Err(e) => return Err(format!("{e}")),
    }
    let probe = dir.join(format!(".sluice-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| format!("cannot write in it (the service user needs to): {e}"))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
