//! What `sluice check-config` (and the unit's `ExecStartPre`) checks beyond the config itself:
//! that this machine can run it. Every check runs and every problem is returned, each naming
//! its key and the value found.

use std::path::Path;

use crate::config::Config;
use crate::topology::{self, Placement};

/// Who else can change a path sluice trusts (`state.dir`, a model file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Only this service's user (or root), or the path does not exist yet.
    Private,
    /// Another user may be able to change it: start, but warn (the reason).
    Shared(String),
    /// Every user can change it: refused (the reason).
    Open(String),
}

/// Whether users other than this service's can write `path` (and, for a file, replace it in
/// its directory). Checked for `state.dir` (a restore trusts what it finds there) and a model
/// file (sluice runs what it finds there).
pub fn access(path: &Path) -> Access {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(m) = std::fs::metadata(path) else {
        return Access::Private;
    };
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Access::Open(format!(
            "{} is writable by every user (mode {mode:o}): chmod o-w it",
            path.display()
        ));
    }
    if m.is_file() {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = std::fs::metadata(dir) {
            let dmode = d.permissions().mode() & 0o7777;
            if dmode & 0o002 != 0 && dmode & 0o1000 == 0 {
                return Access::Open(format!(
                    "{} is in {}, which every user can write without the sticky bit: anyone can replace it",
                    path.display(),
                    dir.display()
                ));
            }
        }
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me && m.uid() != 0 {
        return Access::Shared(format!(
            "{} is owned by uid {}, not by this service's user (uid {me})",
            path.display(),
            m.uid()
        ));
    }
    if mode & 0o020 != 0 {
        return Access::Shared(format!(
            "{} is writable by its group (mode {mode:o})",
            path.display()
        ));
    }
    Access::Private
}

/// `access` of `state.dir` for a start-up: refused as an error, shared logged as a warning.
pub fn check_state_dir(dir: &str) -> Result<(), String> {
    if dir.is_empty() {
        return Ok(());
    }
    match access(Path::new(dir)) {
        Access::Private => Ok(()),
        Access::Shared(why) => {
            tracing::warn!("state.dir: {why}; another user could change the state sluice restores");
            Ok(())
        }
        Access::Open(why) => Err(format!(
            "state.dir = {dir:?}: {why}; another user could change the state sluice restores"
        )),
    }
}

/// The machine checks' findings.
pub struct Preflight {
    pub problems: Vec<String>,
    /// Worth a look but not wrong: printed by check-config, which still passes.
    pub warnings: Vec<String>,
    pub placements: Vec<Placement>,
    pub topology: String,
}

pub fn check(config: &Config) -> Preflight {
    let topo = topology::discover();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let model_file = (config.model.kind == crate::config::ModelKind::Onnx
        && !config.model.path.starts_with("builtin:"))
    .then(|| {
        (
            Path::new(&config.model.path),
            "model.path",
            &config.model.path,
        )
    });
    let state_dir = (!config.state.dir.is_empty())
        .then(|| (Path::new(&config.state.dir), "state.dir", &config.state.dir));
    for (path, key, value) in model_file.into_iter().chain(state_dir) {
        match access(path) {
            Access::Private => {}
            // The model's refusal comes with the model check below.
            Access::Open(_) if key == "model.path" => {}
            Access::Open(why) => problems.push(format!("{key} = {value:?}: {why}")),
            Access::Shared(why) => warnings.push(format!("{key} = {value:?}: {why}")),
        }
    }
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
    if config.ingest.kafka.enabled() {
        let (refused, warned) = crate::ingest::kafka::clients_check(config);
        problems.extend(refused);
        warnings.extend(warned);
    }
    if !config.state.dir.is_empty() {
        if let Err(e) = writable_dir(Path::new(&config.state.dir), true) {
            problems.push(format!("state.dir = {:?}: {e}", config.state.dir));
        } else if !placements.is_empty() {
            warnings.extend(checkpoint_room(config, placements.len()));
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
                if matches!(access(dir), Access::Open(_)) {
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
        warnings,
        placements,
        topology: topo.summary(),
    }
}

/// A warning when state.dir's file system has less room than the full checkpoints of full hot
/// tables take: per shard the `checkpoint.keep` full ones kept and one being written, each
/// every hot slot's record image (their incremental ones and the spilled records, in
/// RocksDB's compressed tables, come on top: a floor, not a bound). The
/// writer refuses a checkpoint it has no room for (counted in
/// sluice_checkpoints_failed_total, the shard goes on); better known before the first one.
fn checkpoint_room(config: &Config, shards: usize) -> Option<String> {
    let words = config.feature_plan().ok()?.words();
    let mut at = Path::new(&config.state.dir);
    while !at.exists() {
        at = at.parent().filter(|p| !p.as_os_str().is_empty())?;
    }
    let free = crate::state::checkpoint::free_bytes(at).ok()?;
    let per_checkpoint =
        config.state.hot_capacity as u64 * (crate::state::record::image_bytes(words) as u64 + 8);
    let need = per_checkpoint
        .saturating_mul(config.checkpoint.keep as u64 + 1)
        .saturating_mul(shards as u64);
    (free < need).then(|| {
        format!(
            "state.dir = {:?}: its file system has {} MB free; the full checkpoints of {shards} full hot table(s) take {} MB ({} slots x {} B a record, {} kept + 1 being written a shard; incremental checkpoints and spilled records on top): checkpoints it has no room for are refused (sluice_checkpoints_failed_total) and the state since the last one would be lost to a crash",
            config.state.dir,
            free / 1_000_000,
            need.div_ceil(1_000_000),
            config.state.hot_capacity,
            crate::state::record::image_bytes(words) + 8,
            config.checkpoint.keep,
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_state_dir_with_less_room_than_its_full_checkpoints_is_warned_about() {
        let dir = std::env::temp_dir().join(format!("sluice-room-{}", std::process::id()));
        let mut config = Config::from_layers(
            None,
            &[format!("state.dir={}", dir.join("state").display())],
        )
        .unwrap();
        config.state.hot_capacity = 1024;
        assert_eq!(checkpoint_room(&config, 2), None, "a few MB fit anywhere");
        // A trillion slots: no test machine has the petabytes; state.dir not made yet, its
        // nearest existing ancestor's file system is the one asked.
        config.state.hot_capacity = 1 << 40;
        let said = checkpoint_room(&config, 2).unwrap();
        assert!(
            said.contains("MB free; the full checkpoints of 2 full hot table(s) take ")
                && said.contains("2 kept + 1 being written"),
            "{said}"
        );
        assert!(!dir.exists(), "check-config makes nothing");
    }

    #[test]
    fn paths_other_users_can_write_are_refused_or_warned_about() {
        let base = std::env::temp_dir().join(format!("sluice-access-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("state");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(access(&base.join("missing")), Access::Private);
        chmod(&dir, 0o755);
        assert_eq!(access(&dir), Access::Private);
        chmod(&dir, 0o775);
        assert!(matches!(access(&dir), Access::Shared(w) if w.contains("group")));
        chmod(&dir, 0o777);
        assert!(matches!(access(&dir), Access::Open(w) if w.contains("every user")));
        assert!(check_state_dir(dir.to_str().unwrap()).is_err());
        chmod(&dir, 0o755);
        assert!(check_state_dir(dir.to_str().unwrap()).is_ok());

        // A file: its own mode, and a directory anyone can replace it in.
        let model = dir.join("m.onnx");
        std::fs::write(&model, b"x").unwrap();
        chmod(&model, 0o644);
        assert_eq!(access(&model), Access::Private);
        chmod(&model, 0o666);
        assert!(matches!(access(&model), Access::Open(_)));
        chmod(&model, 0o644);
        chmod(&dir, 0o777);
        assert!(matches!(access(&model), Access::Open(w) if w.contains("sticky")));
        chmod(&dir, 0o1777);
        assert_eq!(
            access(&model),
            Access::Private,
            "sticky: only its owner can replace it"
        );
        chmod(&dir, 0o755);
        // Another owner (only root can give a file away; CI runs as root).
        if nix::unistd::chown(&model, Some(nix::unistd::Uid::from_raw(54_321)), None).is_ok() {
            assert!(matches!(access(&model), Access::Shared(w) if w.contains("uid 54321")));
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
