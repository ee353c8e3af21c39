//! A committed checkpoint chain pinned by hard links, for a copy taken while the writer goes
//! on (`sluice state backup`). A committed checkpoint's files never change, so a link to each
//! is the chain as it was; the writer may prune the chain while it is being linked, which
//! shows as a file or directory gone, and the newer chain is then taken instead.

use std::path::{Path, PathBuf};

use super::{check_chains, io, newest_chain_dirs, CheckpointError};

/// What was pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The checkpoint the pinned chain restores, and how many checkpoints it holds (None:
    /// `root` had no committed checkpoint).
    pub good: Option<(u64, usize)>,
    /// Chains given up on because they were pruned under the linking.
    pub retries: usize,
}

/// Hard-link the newest committed chain under `root` into `into` (made; a `ckpt-N` directory
/// per checkpoint, on the same file system) and read it back (`check_chains`); up to
/// `attempts` chains are tried while the writer prunes them. `before_link` sees each chain's
/// directories before they are linked (a test prunes there as the writer would).
pub fn pin_newest_chain(
    root: &Path,
    into: &Path,
    attempts: usize,
    mut before_link: impl FnMut(&[PathBuf]),
) -> Result<Pinned, CheckpointError> {
    for retries in 0..attempts {
        if into.exists() {
            std::fs::remove_dir_all(into).map_err(io(into))?;
        }
        std::fs::create_dir_all(into).map_err(io(into))?;
        let chain = newest_chain_dirs(root)?;
        if chain.is_empty() {
            return Ok(Pinned {
                good: None,
                retries,
            });
        }
        before_link(&chain);
        let linked = chain.iter().try_for_each(|c| match c.file_name() {
            Some(n) => link_tree(c, &into.join(n)),
            None => Ok(()),
        });
        match linked {
            Ok(()) => {}
            // Pruned (a newer chain committed) between the listing and the link.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(CheckpointError::Io {
                    path: into.to_owned(),
                    source,
                })
            }
        }
        // What fails to read back now is damaged on the writer's disk too: taking it again
        // would not help.
        let c = check_chains(into)?;
        return match (c.good, c.bad.first()) {
            (Some(good), None) => Ok(Pinned {
                good: Some(good),
                retries,
            }),
            (_, Some((seq, why))) => Err(CheckpointError::Corrupt {
                path: root.join(super::name(*seq)),
                reason: format!("does not read back: {why}"),
            }),
            (None, None) => Err(CheckpointError::Corrupt {
                path: into.to_owned(),
                reason: "the pinned chain holds no checkpoint".into(),
            }),
        };
    }
    Err(CheckpointError::Pruned {
        root: root.to_owned(),
        attempts,
    })
}

/// `from`'s tree again at `to`, every file a hard link (a file gone meanwhile fails with
/// NotFound).
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            link_tree(&src, &dst)?;
        } else {
            std::fs::hard_link(&src, &dst)?;
        }
    }
    Ok(())
}
