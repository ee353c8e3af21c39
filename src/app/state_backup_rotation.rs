//! `sluice state backup --into DIR --keep N`: backups on a schedule (the systemd timer
//! `sluice-backup.timer` runs it). Each run makes `DIR/sluice-backup-<UTC time>` with
//! [`super::state_backup::backup`] and then, only once that one is complete, removes the
//! oldest of DIR's backups beyond the newest N. A timer that ran for months would otherwise
//! fill the backup disk, and an operator who prunes by hand with `rm` can remove the one
//! being written. Only names this command makes are counted or removed: anything else in DIR
//! is left alone.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::state_backup::{self, BackedUp};
use crate::config::Config;

/// A scheduled backup's name: this prefix, then the UTC time it began, to the millisecond,
/// with no separators (`20261205T103000.123Z`): names sort as times do.
pub const PREFIX: &str = "sluice-backup-";

/// What a scheduled backup took, and what it removed.
#[derive(Debug)]
pub struct Rotated {
    pub taken: BackedUp,
    /// The backups DIR holds now, the newest last (the one just taken among them).
    pub kept: Vec<PathBuf>,
    /// Older backups removed, beyond `--keep`; and the leftovers of killed backups.
    pub removed: Vec<PathBuf>,
}

/// The name a backup begun at `at` gets.
pub fn name_at(at: SystemTime) -> String {
    let stamp: String = humantime::format_rfc3339_millis(at)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("{PREFIX}{stamp}")
}

/// Whether `name` is one [`name_at`] makes (`sluice-backup-YYYYMMDDTHHMMSS.mmmZ`).
fn is_backup_name(name: &str) -> bool {
    let Some(stamp) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 20
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'.'
        && b[16..19].iter().all(u8::is_ascii_digit)
        && b[19] == b'Z'
}

/// DIR's backups, oldest first: a scheduled name and a shard directory inside (a backup is
/// renamed into place only when whole, so a name is a complete backup).
pub fn backups_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(is_backup_name))
        .map(|e| e.path())
        .filter(|p| p.join("shard-0").is_dir())
        .collect();
    found.sort();
    Ok(found)
}

/// A copy a killed backup left in DIR (`.sluice-backup-<time>.partial-<pid>`, its pid gone).
fn killed_partial(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((backup, pid)) = rest.rsplit_once(".partial-") else {
        return false;
    };
    is_backup_name(backup) && pid.parse().is_ok_and(state_backup::pid_gone)
}

pub fn backup_into(config: &Config, dir: &Path, keep: Option<usize>) -> Result<Rotated, String> {
    if keep == Some(0) {
        return Err("--keep 0 would remove the backup just taken: keep at least 1".into());
    }
    if !dir.is_dir() {
        return Err(format!(
            "{} is not a directory: make it first (on another disk than state.dir, for a copy that outlives it)",
            dir.display()
        ));
    }
    let to = dir.join(name_at(SystemTime::now()));
    let mut removed = Vec::new();
    // Before the backup: a killed one's partial copy may hold as much disk as a backup.
    let partials: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(killed_partial))
        .map(|e| e.path())
        .collect();
    for p in partials {
        match std::fs::remove_dir_all(&p) {
            Ok(()) => removed.push(p),
            Err(e) => tracing::warn!(dir = %p.display(), "removing a killed backup's copy: {e}"),
        }
    }
    let taken = state_backup::backup(config, &to)?;
    let mut kept = backups_in(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    if !kept.contains(&to) {
        return Err(format!(
            "{} was written but is not among the backups in {} any more: nothing removed",
            to.display(),
            dir.display()
        ));
    }
    if let Some(keep) = keep {
        let over = kept.len().saturating_sub(keep);
        // The oldest first; the one just taken is the newest name unless the clock went
        // back, and it is never removed.
        let old: Vec<PathBuf> = kept
            .iter()
            .filter(|p| **p != to)
            .take(over)
            .cloned()
            .collect();
        for p in old {
            std::fs::remove_dir_all(&p)
                .map_err(|e| format!("removing the old backup {}: {e}", p.display()))?;
            kept.retain(|k| *k != p);
            removed.push(p);
        }
        crate::state::checkpoint::disk::sync_dir(dir)
            .map_err(|e| format!("syncing {}: {e}", dir.display()))?;
    }
    Ok(Rotated {
        taken,
        kept,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn names_sort_as_times_and_only_they_are_taken_for_backups() {
        let a = name_at(UNIX_EPOCH + Duration::from_millis(1_764_930_600_123));
        assert_eq!(a, "sluice-backup-20251205T103000.123Z");
        let b = name_at(UNIX_EPOCH + Duration::from_millis(1_764_930_600_124));
        let c = name_at(UNIX_EPOCH + Duration::from_millis(1_795_000_000_000));
        assert!(a < b && b < c, "{a} {b} {c}");
        for n in [&a, &b, &c] {
            assert!(is_backup_name(n), "{n}");
        }
        for n in [
            "sluice-backup-notes",
            "sluice-backup-20251205T103000.123",
            "sluice-backup-20251205T103000.123Z.old",
            "sluice-backup-2025120xT103000.123Z",
            "backup-20251205T103000.123Z",
        ] {
            assert!(!is_backup_name(n), "{n}");
        }
        let gone = format!(".{a}.partial-999999999");
        assert!(killed_partial(&gone));
        let alive = format!(".{a}.partial-{}", std::process::id());
        assert!(!killed_partial(&alive), "this process is not gone");
        assert!(!killed_partial(".notes.partial-999999999"));
    }
}
