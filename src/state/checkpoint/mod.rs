//! Checkpoints of one shard's state, and restoring the newest good one at start.
//!
//! Layout under `state.dir/shard-N/checkpoints/`:
//! ```text
//! ckpt-00000000000000000042/
//!     spill/     RocksDB checkpoint of the spill store (table files hard-linked)
//!     hot.bin    header (`HotHeader`), the hot records' stored images, the keys that left
//!                the hot table (incremental), the spill journal (see `state::snapshot`)
//!     COMMIT     the manifest (key=value lines, its own CRC last): written last, so a
//!                checkpoint without it is incomplete
//! ```
//! A checkpoint is built under `ckpt-N.tmp` and renamed when its COMMIT is on disk, so a
//! crash leaves either a complete checkpoint or a `.tmp` that restore deletes.
//!
//! `format` and `restore` read checkpoints; `writer` takes them: the shard flips a snapshot
//! at a cycle boundary (microseconds), copies its records a slice per cycle, and a writer
//! thread of its own takes the spill store's RocksDB checkpoint, writes, syncs, commits and
//! prunes (see `state::snapshot` for why that equals the state at the flip).
// Reached by checkpoint files: no index that could panic (hardening issue; tests may index).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

mod changes;
pub mod disk;
mod pin;
mod restore;
mod writer;

pub use changes::{read_changes, Change, ChangeCounts};

pub use pin::{pin_newest_chain, Pinned};
pub use restore::{
    check_chains, committed, load_bytes, load_records, newest_chain_dirs, newest_layout,
    newest_manifest, read_verified, restore, restore_to, ChainCheck, RestorePoint, RestoreTarget,
};
pub use writer::{
    buffer_bytes, free_bytes, full_checkpoint_bound, journal_bytes, CheckpointSpec,
    CheckpointStats, Checkpointer, CrashPoint, Input, WriterFault, WriterRun,
};

use std::path::{Path, PathBuf};

use super::{SpillError, StateError};

const MAGIC: &[u8; 8] = b"SLUICEHT";
/// COMMIT format (3 added kafka_offsets, 4 `since`); 2 and 3 still read.
const FORMAT: u32 = 4;
/// hot.bin format: 3 added the spill journal (and its count in the header); 4 the gone keys'
/// sources and a full snapshot's change set (`changed` keys); 2 and 3 still read.
const HOT_FORMAT: u32 = 4;
/// Header bytes of the hot.bin this build writes.
const HEADER_BYTES: usize = HotHeader::BYTES;

/// hot.bin's header: magic, format, words per record, then counts of records, gone keys,
/// (format 3) journal entries and (format 4) changed keys, little-endian. Sections follow in
/// that order but the journal last: records, gone (format 4: key and source, 16 bytes; before:
/// key, 8), changed keys, journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HotHeader {
    pub format: u32,
    pub words: u32,
    pub records: u64,
    pub gone: u64,
    pub journal: u64,
    pub changed: u64,
}

impl HotHeader {
    const BYTES: usize = 8 + 4 + 4 + 8 + 8 + 8 + 8;
    const BYTES_V3: usize = 8 + 4 + 4 + 8 + 8 + 8;
    const BYTES_V2: usize = 8 + 4 + 4 + 8 + 8;

    /// Bytes of one gone entry in this format.
    pub fn gone_bytes(&self) -> usize {
        if self.format >= 4 {
            16
        } else {
            8
        }
    }

    fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        let fields: [&[u8]; 7] = [
            MAGIC,
            &HOT_FORMAT.to_le_bytes(),
            &self.words.to_le_bytes(),
            &self.records.to_le_bytes(),
            &self.gone.to_le_bytes(),
            &self.journal.to_le_bytes(),
            &self.changed.to_le_bytes(),
        ];
        let mut at = 0;
        for f in fields {
            for (o, b) in out.iter_mut().skip(at).zip(f) {
                *o = *b;
            }
            at += f.len();
        }
        crate::invariant_eq!(at, Self::BYTES);
        out
    }

    /// The header and its length (format 2 has no journal count, 3 no changed count).
    fn decode(b: &[u8]) -> Option<(Self, usize)> {
        let u32_at = |i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
        let u64_at = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        if b.get(..8)? != MAGIC {
            return None;
        }
        let format = u32_at(8)?;
        let (journal, changed, len) = match format {
            2 => (0, 0, Self::BYTES_V2),
            3 => (u64_at(32)?, 0, Self::BYTES_V3),
            4 => (u64_at(32)?, u64_at(40)?, Self::BYTES),
            _ => return None,
        };
        Some((
            Self {
                format,
                words: u32_at(12)?,
                records: u64_at(16)?,
                gone: u64_at(24)?,
                journal,
                changed,
            },
            len,
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}", mismatch_said(path, root, found, want))]
    Mismatch {
        path: PathBuf,
        root: PathBuf,
        found: String,
        want: String,
    },
    #[error(transparent)]
    Spill(#[from] SpillError),
    #[error(transparent)]
    State(#[from] StateError),
    /// A checkpoint written by a newer sluice (its COMMIT format is past this build's): a
    /// downgrade. Never set aside as damaged: restoring an older one, or none, would lose
    /// the state the newer version kept.
    #[error("checkpoint {path}: written by a newer sluice (COMMIT format {found}; this build reads 2 to {FORMAT}): run the version that wrote it, or move state.dir away to start without its state")]
    Newer { path: PathBuf, found: u64 },
    #[error("checkpoints in {root}: the newest chain was pruned under the linking {attempts} times in a row (checkpoint.interval_ms and checkpoint.keep give a chain too short a life): try again, or raise checkpoint.keep")]
    Pruned { root: PathBuf, attempts: usize },
}

/// What a restore of the checkpoints in `root`, written for `found`, says when the run wants
/// `want` (for `check-config`, which asks before a start).
pub fn layout_refusal(root: &Path, found: &str, want: &str) -> String {
    mismatch_said(root, root, found, want)
}

/// A layout mismatch, naming only the parts that differ (a layout is `name=value` parts
/// joined by `;`, the feature list among them, so the whole strings bury the difference).
fn mismatch_said(path: &Path, root: &Path, found: &str, want: &str) -> String {
    let part = |layout: &str, name: &str| {
        layout
            .split(';')
            .find(|p| p.split('=').next() == Some(name))
            .map(str::to_owned)
    };
    let mut names: Vec<&str> = Vec::new();
    for p in found.split(';').chain(want.split(';')) {
        let name = p.split('=').next().unwrap_or(p);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let differ: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let (then, now) = (part(found, n), part(want, n));
            (then != now).then(|| {
                let none = || format!("no {n}");
                format!(
                    "{} then, {} now",
                    then.unwrap_or_else(none),
                    now.unwrap_or_else(none)
                )
            })
        })
        .collect();
    let kafka_grew = part(found, "kafka").is_some() && part(found, "kafka") != part(want, "kafka");
    // The shard count is in `shards` and, with dealt Kafka partitions, in `over`; a group
    // member's state (`group`) is not re-dealt by the rescale.
    let only_shards = names
        .iter()
        .all(|n| *n == "shards" || *n == "over" || part(found, n) == part(want, n));
    let fix = if only_shards && part(found, "group").is_none() {
        format!(
            " Only the shard count differs: `sluice state rescale` with this config (the service stopped) re-deals the state over it, every key (a Kafka-fed one with its input partition and the partition's offset) to its new shard; or restore the old count, or move {} away to start empty",
            root.display()
        )
    } else if kafka_grew {
        format!(" The input topics' partitions differ from the checkpoint's (partitions added to a topic?): a key's state lives with its Kafka partition, and sluice carries it over only to a topic grown to a multiple of the partitions its state was first dealt over (2 -> 4, 6, 8: a modulo partitioner keeps each key in its family), with dealt partitions, the same shard count and no changelog; this is not a multiple, or not such a run, so this state cannot be carried over (README, Kafka, partitions added to an input topic). Go back to the topics it was written for, or move the whole state.dir ({} and its siblings) away to start empty (under exactly_once with a new egress.kafka.transactional_id_prefix too, whose progress records name no checkpoint)", root.display())
    } else {
        format!(
            " Restore the old settings, or move {} away to start empty",
            root.display()
        )
    };
    format!(
        "checkpoint {} was written for another state layout ({}): it cannot be restored.{fix}",
        path.display(),
        differ.join("; ")
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a consumed Kafka partition stands in a checkpoint: the next offset to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
}

fn render_offsets(offsets: &[PartitionOffset]) -> String {
    let parts: Vec<String> = offsets
        .iter()
        .map(|o| format!("{}/{}/{}", o.topic, o.partition, o.next))
        .collect();
    parts.join(";")
}

fn parse_offsets(v: &str) -> Result<Vec<PartitionOffset>, String> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    v.split(';')
        .map(|item| {
            let mut it = item.rsplitn(3, '/');
            let next = it.next().and_then(|n| n.parse::<i64>().ok());
            let partition = it.next().and_then(|n| n.parse::<i32>().ok());
            match (it.next(), partition, next) {
                (Some(topic), Some(partition), Some(next)) if !topic.is_empty() && next >= 0 => {
                    Ok(PartitionOffset {
                        topic: topic.to_owned(),
                        partition,
                        next,
                    })
                }
                _ => Err(format!("bad Kafka offset {item:?} in COMMIT")),
            }
        })
        .collect()
}

/// The COMMIT manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub seq: u64,
    pub shard: usize,
    /// What the records' placement and layout depend on: shard count and feature list.
    pub layout: String,
    /// Full checkpoint: 0. Incremental: the checkpoint this one applies on top of.
    pub parent: u64,
    /// The checkpoint whose state this one's change set (an incremental one's records and
    /// gone keys; a full one's changed and gone keys) leads on from: the previous flip. 0: no
    /// change set (a full checkpoint whose change lists were incomplete, or the first of a
    /// run): a changelog must take it whole.
    pub since: u64,
    /// Records in hot.bin: every hot record (full), or those changed since the parent.
    pub hot_records: u64,
    /// Incremental: keys that left the hot table since the parent (listed after the records).
    pub gone: u64,
    pub spilled: u64,
    pub hot_bytes: u64,
    pub hot_crc: u32,
    /// The shard's newest event time (its event-time watermark before lateness).
    pub max_event_ns: u64,
    /// Observations applied on this shard up to the snapshot.
    pub observations_applied: u64,
    pub created_unix_ms: u64,
    /// The next offset of every Kafka partition the shard owns, as of the snapshot: every
    /// record before it is in the state, none after it.
    pub kafka_offsets: Vec<PartitionOffset>,
}

impl Manifest {
    pub fn render(&self) -> String {
        let body = format!(
            "format={FORMAT}\nseq={}\nshard={}\nlayout={}\nparent={}\nsince={}\nhot_records={}\ngone={}\nspilled={}\nhot_bytes={}\nhot_crc={}\nmax_event_ns={}\nobservations_applied={}\ncreated_unix_ms={}\nkafka_offsets={}\n",
            self.seq,
            self.shard,
            self.layout,
            self.parent,
            self.since,
            self.hot_records,
            self.gone,
            self.spilled,
            self.hot_bytes,
            self.hot_crc,
            self.max_event_ns,
            self.observations_applied,
            self.created_unix_ms,
            render_offsets(&self.kafka_offsets)
        );
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body}crc={crc}\n")
    }

    /// Parse a COMMIT file; the reason names what is wrong.
    /// The format of a COMMIT (its checksum good) written by a newer build than this one:
    /// such a manifest may hold keys this build does not know, so it is recognised before
    /// `parse` would call it damaged.
    pub fn newer_format(text: &str) -> Option<u64> {
        let (body, last) = text.trim_end_matches('\n').rsplit_once('\n')?;
        let crc = last.strip_prefix("crc=")?.parse::<u32>().ok()?;
        let body = format!("{body}\n");
        if crc32fast::hash(body.as_bytes()) != crc {
            return None;
        }
        body.lines()
            .find_map(|l| l.strip_prefix("format="))?
            .parse::<u64>()
            .ok()
            .filter(|&f| f > u64::from(FORMAT))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let (body, last) = text
            .trim_end_matches('\n')
            .rsplit_once('\n')
            .ok_or("COMMIT has no crc line")?;
        let crc = last
            .strip_prefix("crc=")
            .and_then(|c| c.parse::<u32>().ok())
            .ok_or("COMMIT's last line is not crc=N")?;
        let body = format!("{body}\n");
        if crc32fast::hash(body.as_bytes()) != crc {
            return Err("COMMIT checksum mismatch".into());
        }
        let mut m = Manifest::default();
        let mut format = None;
        for line in body.lines() {
            let (k, v) = line
                .split_once('=')
                .ok_or(format!("bad COMMIT line {line:?}"))?;
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| format!("bad COMMIT value {line:?}"))
            };
            match k {
                "format" => format = Some(num()?),
                "seq" => m.seq = num()?,
                "shard" => m.shard = num()? as usize,
                "layout" => m.layout = v.to_owned(),
                "parent" => m.parent = num()?,
                "since" => m.since = num()?,
                "hot_records" => m.hot_records = num()?,
                "gone" => m.gone = num()?,
                "spilled" => m.spilled = num()?,
                "hot_bytes" => m.hot_bytes = num()?,
                "hot_crc" => m.hot_crc = num()? as u32,
                "max_event_ns" => m.max_event_ns = num()?,
                "observations_applied" => m.observations_applied = num()?,
                "created_unix_ms" => m.created_unix_ms = num()?,
                "kafka_offsets" => m.kafka_offsets = parse_offsets(v)?,
                _ => return Err(format!("unknown COMMIT key {k:?}")),
            }
        }
        // Format 2 (before Kafka) has no kafka_offsets line and reads as "no offsets"; 2 and 3
        // have no since line: no change set.
        if !matches!(format, Some(2..=4)) {
            return Err(format!(
                "COMMIT format {format:?}, this build reads {FORMAT}"
            ));
        }
        Ok(m)
    }
}

/// The newest committed checkpoint under `root` written by a newer sluice, with its format:
/// what a start refuses (`CheckpointError::Newer`), for check-config to say first.
pub fn written_by_newer(root: &Path) -> Result<Option<(PathBuf, u64)>, CheckpointError> {
    Ok(list(root)?.done.into_iter().find_map(|(_, path)| {
        let text = std::fs::read_to_string(path.join("COMMIT")).ok()?;
        Manifest::newer_format(&text).map(|f| (path, f))
    }))
}

/// Directory name of checkpoint `seq`.
fn name(seq: u64) -> String {
    format!("ckpt-{seq:020}")
}

/// Where committed checkpoint `seq` lies under `root`.
pub fn path_of(root: &Path, seq: u64) -> PathBuf {
    root.join(name(seq))
}

/// Checkpoint directories under a root: committed ones as (seq, path), newest first, and
/// `.tmp` leftovers.
struct Listing {
    done: Vec<(u64, PathBuf)>,
    partial: Vec<PathBuf>,
}

fn list(root: &Path) -> Result<Listing, CheckpointError> {
    let mut done = Vec::new();
    let mut partial = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listing { done, partial }),
        Err(e) => return Err(io(root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(root))?;
        let file = entry.file_name();
        let Some(n) = file.to_str().and_then(|f| f.strip_prefix("ckpt-")) else {
            continue;
        };
        if n.ends_with(".tmp") {
            partial.push(entry.path());
        } else if let Ok(seq) = n.parse::<u64>() {
            done.push((seq, entry.path()));
        }
    }
    done.sort_by_key(|d| std::cmp::Reverse(d.0));
    Ok(Listing { done, partial })
}

#[cfg(test)]
mod tests;
