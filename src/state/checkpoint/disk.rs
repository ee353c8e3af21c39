//! The checkpoint files' directory operations, in one place, and what a power loss may take
//! back. A file's data is durable once it is synced; its *name* in a directory (a file or
//! directory created, renamed or removed there) only once that directory is synced. The
//! writer and restore call these instead of `std::fs`, so their durability rules are in
//! one file, and the crash simulation can journal them: with the journal on (the calling
//! thread's; the service never turns it on), each operation whose directory is not synced
//! yet is kept, and `power_loss` undoes the newest of them, as a machine that lost power
//! after they reached the page cache but not the disk. A missing directory sync then shows
//! as a checkpoint that vanished (or lost its COMMIT) after it was counted committed.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An operation not yet durable: undone (newest first) by a power loss.
#[derive(Debug)]
enum Op {
    /// A file or directory created (its name in `dir` not synced).
    Created(PathBuf),
    /// `from` renamed to `to`; `moved`: the older pending operations whose paths it moved
    /// (their ids), moved back when it is undone.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        moved: Vec<u64>,
    },
    /// A directory tree removed; a copy of it kept at `shadow` to put back.
    Removed { path: PathBuf, shadow: PathBuf },
}

impl Op {
    /// The directory whose sync makes it durable.
    fn dir(&self) -> Option<&Path> {
        match self {
            Op::Created(p) | Op::Removed { path: p, .. } => p.parent(),
            Op::Renamed { to, .. } => to.parent(),
        }
    }
}

struct Journal {
    /// Oldest first, each with its id.
    pending: Vec<(u64, Op)>,
    next_id: u64,
    /// Where removed trees are kept until a power loss or a sync decides their fate.
    shadow: PathBuf,
    removed: u64,
}

thread_local! {
    static JOURNAL: RefCell<Option<Journal>> = const { RefCell::new(None) };
}

/// Journal an operation (built only when the journal is on).
fn note(op: impl FnOnce() -> Op) {
    JOURNAL.with(|j| {
        if let Some(j) = j.borrow_mut().as_mut() {
            j.next_id += 1;
            j.pending.push((j.next_id, op()));
        }
    })
}

fn journaling() -> bool {
    JOURNAL.with(|j| j.borrow().is_some())
}

/// Simulation: journal this thread's operations from now on; removed trees are kept under
/// `shadow` meanwhile.
pub fn journal(shadow: PathBuf) {
    JOURNAL.with(|j| {
        *j.borrow_mut() = Some(Journal {
            pending: Vec::new(),
            next_id: 0,
            shadow,
            removed: 0,
        })
    });
}

/// Simulation: stop journaling (the pending operations are forgotten, as durable).
pub fn journal_off() {
    JOURNAL.with(|j| *j.borrow_mut() = None);
}

/// Simulation: operations that a power loss now could undo.
pub fn pending() -> usize {
    JOURNAL.with(|j| j.borrow().as_ref().map_or(0, |j| j.pending.len()))
}

/// Simulation: the power fails. The newest `undo` operations not yet durable are undone,
/// newest first (a file system that keeps a prefix of what it was told); the rest are
/// durable from then on. Returns how many were undone.
pub fn power_loss(undo: usize) -> std::io::Result<usize> {
    let ops = JOURNAL.with(|j| {
        j.borrow_mut()
            .as_mut()
            .map(|j| std::mem::take(&mut j.pending))
            .unwrap_or_default()
    });
    let from = ops.len().saturating_sub(undo);
    let mut ops = ops;
    let mut lost: Vec<(u64, Op)> = ops.split_off(from);
    // The rest are durable: a removed tree kept for an undo is gone for good.
    for (_, op) in ops {
        if let Op::Removed { shadow, .. } = op {
            let _ = std::fs::remove_dir_all(shadow);
        }
    }
    let mut undone = 0;
    while let Some((_, op)) = lost.pop() {
        match op {
            Op::Created(p) => {
                if p.is_dir() {
                    std::fs::remove_dir_all(&p)?;
                } else if p.exists() {
                    std::fs::remove_file(&p)?;
                }
            }
            Op::Renamed {
                from,
                to,
                moved: ids,
            } => {
                std::fs::rename(&to, &from)?;
                // What it moved (and is still to undo) is back under its old name.
                moved(&mut lost, &to, &from, Some(&ids));
            }
            Op::Removed { path, shadow } => std::fs::rename(&shadow, &path)?,
        }
        undone += 1;
    }
    Ok(undone)
}

/// Paths below `from` are below `to` now (a rename moved them); only the operations `only`
/// names, if given. Returns the ids of the operations moved.
fn moved(ops: &mut [(u64, Op)], from: &Path, to: &Path, only: Option<&[u64]>) -> Vec<u64> {
    let mut ids = Vec::new();
    for (id, op) in ops {
        if only.is_some_and(|only| !only.contains(id)) {
            continue;
        }
        let p = match op {
            Op::Created(p) => p,
            Op::Renamed { to: t, .. } => t,
            Op::Removed { path, .. } => path,
        };
        if let Ok(rest) = p.strip_prefix(from) {
            *p = to.join(rest);
            ids.push(*id);
        }
    }
    ids
}

/// The directories `create_dir_all(path)` would make, deepest first.
fn missing(path: &Path) -> Vec<PathBuf> {
    let mut made = Vec::new();
    let mut p = Some(path);
    while let Some(d) = p {
        if d.exists() {
            break;
        }
        made.push(d.to_owned());
        p = d.parent();
    }
    made
}

pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    if !journaling() {
        return std::fs::create_dir_all(path);
    }
    make_dirs(path).map(drop)
}

/// `create_dir_all`, journaling each directory made (a name in its parent); the directories
/// made, deepest first.
fn make_dirs(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let made = missing(path);
    std::fs::create_dir_all(path)?;
    for d in made.iter().rev() {
        note(|| Op::Created(d.clone()));
    }
    Ok(made)
}

/// `create_dir_all`, each directory it makes durable (its parent synced): for the checkpoint
/// root, whose own name no checkpoint's sync covers — without it a power loss after the
/// first start could take the whole root, every checkpoint in it, back.
pub fn create_dir_all_synced(path: &Path) -> std::io::Result<()> {
    for d in make_dirs(path)?.iter().rev() {
        match d.parent() {
            // A relative path's first directory: its parent is the working directory.
            Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new("."))?,
            Some(parent) => sync_dir(parent)?,
            None => {}
        }
    }
    Ok(())
}

/// A new file at `path` holding `parts` one after another, its data synced (its name is
/// durable once its directory is synced).
pub fn write_synced(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    for p in parts {
        f.write_all(p)?;
    }
    f.sync_all()?;
    note(|| Op::Created(path.to_owned()));
    Ok(())
}

/// Sync a directory: the names created, renamed or removed in it are durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    JOURNAL.with(|j| {
        if let Some(j) = j.borrow_mut().as_mut() {
            let (durable, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut j.pending)
                .into_iter()
                .partition(|(_, op)| op.dir() == Some(path));
            j.pending = pending;
            for (_, op) in durable {
                if let Op::Removed { shadow, .. } = op {
                    let _ = std::fs::remove_dir_all(shadow);
                }
            }
        }
    });
    Ok(())
}

pub fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    JOURNAL.with(|j| {
        if let Some(j) = j.borrow_mut().as_mut() {
            let ids = moved(&mut j.pending, from, to, None);
            j.next_id += 1;
            j.pending.push((
                j.next_id,
                Op::Renamed {
                    from: from.to_owned(),
                    to: to.to_owned(),
                    moved: ids,
                },
            ));
        }
    });
    Ok(())
}

pub fn remove_dir_all(path: &Path) -> std::io::Result<()> {
    let shadow = JOURNAL.with(|j| {
        j.borrow_mut().as_mut().map(|j| {
            j.removed += 1;
            j.shadow.join(j.removed.to_string())
        })
    });
    let Some(shadow) = shadow else {
        return std::fs::remove_dir_all(path);
    };
    // Kept aside instead of deleted, until its directory is synced or the power fails.
    if let Some(parent) = shadow.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(path, &shadow)?;
    note(|| Op::Removed {
        path: path.to_owned(),
        shadow,
    });
    Ok(())
}
