//! What a start with this config would refuse in `state.dir`, found without starting, for
//! `sluice check-config` (run before a restart): a rescale's swap cut short, and checkpoints
//! written for another shard count, feature list or lateness — the usual way there being a
//! config changed without `sluice state rescale`. Reads only: no lock taken, nothing moved.
//! Kafka partition counts need the brokers and stay the start's (and `--connect`'s) to check:
//! the checkpoints' own `kafka=` part is taken as what the topics still have.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use crate::config::Config;
use crate::state::checkpoint;

/// The refusals a start over `shards` shards would meet, each a sentence (empty: none).
pub fn refusals(config: &Config, shards: usize) -> Vec<String> {
    let dir = &config.state.dir;
    if dir.is_empty() || !Path::new(dir).is_dir() {
        return Vec::new();
    }
    if let Some(why) = super::rescale::interrupted(dir) {
        return vec![why];
    }
    let base = config.state_layout(shards);
    let mut out = Vec::new();
    for id in 0..shards {
        let root = super::shard_dir(config, id).join("checkpoints");
        match checkpoint::written_by_newer(&root) {
            Ok(Some((path, found))) => {
                out.push(format!(
                    "state.dir, shard {id}: {}",
                    checkpoint::CheckpointError::Newer { path, found }
                ));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                out.push(format!("state.dir: shard {id}'s checkpoints: {e}"));
                continue;
            }
        }
        let found = match checkpoint::newest_layout(&root) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                out.push(format!("state.dir: shard {id}'s checkpoints: {e}"));
                continue;
            }
        };
        let want = wanted(&base, &found, shards, config.ingest.kafka.enabled());
        if found != want {
            out.push(format!(
                "state.dir, shard {id}: {}",
                checkpoint::layout_refusal(&root, &found, &want)
            ));
            // Every shard's says the same for a changed setting: one is enough.
            break;
        }
    }
    out
}

/// What is worth a look in `state.dir` but stops nothing: the shards a rescale kept aside
/// (`before-rescale-*`) or a restore replaced (`before-restore-*`), with the disk they hold,
/// for the operator to delete once the new state serves; a killed backup's pin.
pub fn warnings(config: &Config) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(&config.state.dir) else {
        return Vec::new();
    };
    let mut kept: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("before-rescale-") || n.starts_with("before-restore-")
            })
        })
        .collect();
    kept.sort();
    let mut said: Vec<String> = kept
        .iter()
        .map(|dir| {
            let mut seen = HashSet::new();
            let restore = dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("before-restore-"));
            let (what, until) = if restore {
                ("a restore replaced", "the restored state serves")
            } else {
                ("a rescale moved aside", "the new shard count serves")
            };
            format!(
                "state.dir keeps the shards {what} in {} ({} MB): delete it once {until}",
                dir.display(),
                bytes_under(dir, &mut seen) / 1_000_000
            )
        })
        .collect();
    let root = Path::new(&config.state.dir);
    for shard in super::rescale::shard_dirs(root) {
        let aside = set_aside(&shard);
        if aside.is_empty() {
            continue;
        }
        let named: Vec<String> = aside
            .iter()
            .map(|(path, why)| {
                format!(
                    "{} ({} MB, {why})",
                    path.display(),
                    bytes_under(path, &mut HashSet::new()) / 1_000_000
                )
            })
            .collect();
        said.push(format!(
            "{} holds checkpoints a start set aside, kept for a look: {}; delete them once looked at",
            shard.display(),
            named.join(", ")
        ));
    }
    for (pin, pid) in super::state_backup::pins(root) {
        if super::state_backup::pid_gone(pid) {
            said.push(format!(
                "state.dir holds {}, left by a `sluice state backup` that was killed (pid {pid}; {} MB): the next backup removes it, or delete it",
                pin.display(),
                bytes_under(&pin, &mut HashSet::new()) / 1_000_000
            ));
        }
    }
    said
}

/// What the restore set aside in `shard` (never removed by sluice): checkpoint directories
/// no committed exactly_once transaction named (`checkpoints.uncommitted-*`) and checkpoints
/// that did not read back (`checkpoints/ckpt-N.bad`), each with why.
fn set_aside(shard: &Path) -> Vec<(std::path::PathBuf, &'static str)> {
    let listed = |dir: &Path| -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        found.sort();
        found
    };
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut out: Vec<(std::path::PathBuf, &'static str)> = listed(shard)
        .into_iter()
        .filter(|p| name(p).is_some_and(|n| n.starts_with("checkpoints.uncommitted-")))
        .map(|p| (p, "no committed transaction named them"))
        .collect();
    out.extend(
        listed(&shard.join("checkpoints"))
            .into_iter()
            .filter(|p| name(p).is_some_and(|n| n.starts_with("ckpt-") && n.ends_with(".bad")))
            .map(|p| (p, "did not read back")),
    );
    out
}

/// Bytes of the files under `dir`, each counted once however many hard links it has there
/// (a checkpoint hard-links its spill store's table files).
pub(super) fn bytes_under(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.filter_map(Result::ok) {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if m.is_dir() {
            total += bytes_under(&e.path(), seen);
        } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
            total += m.len();
        }
    }
    total
}

/// The layout a start would want, as far as the config alone tells: its own part, and the
/// checkpoint's Kafka part (dealt over `shards` shards) when Kafka is on.
fn wanted(base: &str, found: &str, shards: usize, kafka: bool) -> String {
    let Some(at) = found.find(";kafka=").filter(|_| kafka) else {
        return base.to_owned();
    };
    let parts: Vec<String> = found[at + 1..]
        .split(';')
        .map(|p| match p.strip_prefix("over=") {
            Some(_) => format!("over={shards}"),
            None => p.to_owned(),
        })
        .collect();
    format!("{base};{}", parts.join(";"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_shards_are_named_with_their_bytes_each_hard_link_counted_once() {
        let dir = std::env::temp_dir().join(format!("sluice-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kept = dir.join("before-rescale-5").join("shard-0");
        std::fs::create_dir_all(kept.join("ckpt")).unwrap();
        std::fs::write(kept.join("table.sst"), vec![0u8; 3_000_000]).unwrap();
        std::fs::hard_link(kept.join("table.sst"), kept.join("ckpt").join("table.sst")).unwrap();
        std::fs::create_dir_all(dir.join("shard-0")).unwrap();
        let config = Config::from_layers(None, &[format!("state.dir={}", dir.display())]).unwrap();
        let said = warnings(&config);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("before-rescale-5 (3 MB)"), "{said:?}");
        std::fs::remove_dir_all(dir.join("before-rescale-5")).unwrap();
        assert!(warnings(&config).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn checkpoints_a_start_set_aside_are_named_with_their_bytes() {
        let dir = std::env::temp_dir().join(format!("sluice-aside-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let shard = dir.join("shard-0");
        let bad = shard
            .join("checkpoints")
            .join("ckpt-00000000000000000007.bad");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("hot.bin"), vec![0u8; 2_000_000]).unwrap();
        std::fs::create_dir_all(shard.join("checkpoints").join("ckpt-00000000000000000008"))
            .unwrap();
        std::fs::create_dir_all(shard.join("checkpoints.uncommitted-1796")).unwrap();
        let config = Config::from_layers(None, &[format!("state.dir={}", dir.display())]).unwrap();
        let said = warnings(&config);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("checkpoints.uncommitted-1796 (0 MB, no committed transaction")
                && said[0].contains("ckpt-00000000000000000007.bad (2 MB, did not read back)")
                && !said[0].contains("ckpt-00000000000000000008"),
            "{said:?}"
        );
        std::fs::remove_dir_all(&bad).unwrap();
        std::fs::remove_dir_all(shard.join("checkpoints.uncommitted-1796")).unwrap();
        assert!(warnings(&config).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn checkpoints_of_a_newer_sluice_are_a_refusal_naming_the_downgrade() {
        let dir = std::env::temp_dir().join(format!("sluice-newer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ckpt = dir.join("shard-0/checkpoints/ckpt-00000000000000000003");
        std::fs::create_dir_all(&ckpt).unwrap();
        let body = "format=99\nseq=3\nlayout=shards=1\na_future_key=1\n";
        let commit = format!("{body}crc={}\n", crc32fast::hash(body.as_bytes()));
        std::fs::write(ckpt.join("COMMIT"), commit).unwrap();
        let config = Config::from_layers(None, &[format!("state.dir={}", dir.display())]).unwrap();
        let said = refusals(&config, 1);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("written by a newer sluice (COMMIT format 99"),
            "{said:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_wanted_layout_keeps_the_checkpoints_kafka_part_dealt_over_the_new_count() {
        let found = "shards=2;features=a;kafka=events:4/2;over=2";
        assert_eq!(
            wanted("shards=3;features=a", found, 3, true),
            "shards=3;features=a;kafka=events:4/2;over=3"
        );
        assert_eq!(
            wanted(
                "shards=2;features=a",
                "shards=2;features=a;kafka=e:4;group",
                2,
                true
            ),
            "shards=2;features=a;kafka=e:4;group"
        );
        // Kafka off now: the start wants none, and refuses a Kafka-fed checkpoint.
        assert_eq!(
            wanted("shards=2;features=a", found, 2, false),
            "shards=2;features=a"
        );
        assert_eq!(
            wanted("shards=2;features=a", "shards=2;features=a", 2, true),
            "shards=2;features=a"
        );
    }
}
