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
                use std::os::unix::fs::PermissionsExt;
                if std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o002 != 0) {
                    problems.push(format!(
                        "admin.socket = {:?}: {} is writable by every user; use a directory only the service can write (e.g. /run/sluice)",
                        config.admin.socket,
                        dir.display()
                    ));
                } else if let Err(e) = writable_dir(dir, false) {
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

/// The directory exists and a file can be written in it; or, with `create` (sluice makes it
/// at start), its nearest existing ancestor is a directory a file can be written in. Nothing
/// is left behind: check-config changes nothing on the machine.
fn writable_dir(dir: &Path, create: bool) -> Result<(), String> {
    let mut at = dir;
    if create {
        while !at.exists() {
            match at.parent() {
                Some(p) if !p.as_os_str().is_empty() => at = p,
                _ => break,
            }
        }
    }
    match std::fs::metadata(at) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", at.display())),
        Err(e) => return Err(format!("{}: {e}", at.display())),
    }
    let probe = at.join(format!(".sluice-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        if at == dir {
            format!("cannot write in it (the service user needs to): {e}")
        } else {
            format!("cannot be created: cannot write in {}: {e}", at.display())
        }
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
