//! Checkpoints of one shard's state, and restoring the newest good one at start.
//!
//! Layout under `state.dir/shard-N/checkpoints/`:
//! ```text
//! ckpt-00000000000000000042/
//!     spill/     RocksDB checkpoint of the spill store (table files hard-linked)
//!     hot.bin    "SLUICEHT", format, words per record, record count, then the hot records'
//!                stored images
//!     COMMIT     the manifest (key=value lines, its own CRC last): written last, so a
//!                checkpoint without it is incomplete
//! ```
//! A checkpoint is built under `ckpt-N.tmp` and renamed when its COMMIT is on disk, so a
//! crash leaves either a complete checkpoint or a `.tmp` that restore deletes.
//!
//! The shard takes the snapshot at a cycle boundary: it copies its hot records into a buffer
//! allocated once (no event is in flight inside the shard then, so hot records and the spill
//! store agree) and has RocksDB flush and link the spill store; a writer thread of its own
//! writes, syncs, commits and prunes. That pause is measured and counted. If the writer is
//! still busy with the previous checkpoint the next one is skipped (counted), so a slow disk
//! stretches the interval instead of stalling the shard.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use super::record::{image_bytes, DIRTY};
use super::{KeyedState, Record, Spill, SpillError, StateError};

const MAGIC: &[u8; 8] = b"SLUICEHT";
/// COMMIT format (3 added kafka_offsets); hot.bin's layout is unchanged since 2.
const FORMAT: u32 = 3;
const HOT_FORMAT: u32 = 2;
/// magic, format, words per record, records, gone keys.
const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("checkpoint {path} was written for {found}, but this run has {want}: it cannot be restored. Restore the old settings, or move {root} away to start empty")]
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
    fn render(&self) -> String {
        let body = format!(
            "format={FORMAT}\nseq={}\nshard={}\nlayout={}\nparent={}\nhot_records={}\ngone={}\nspilled={}\nhot_bytes={}\nhot_crc={}\nmax_event_ns={}\nobservations_applied={}\ncreated_unix_ms={}\nkafka_offsets={}\n",
            self.seq,
            self.shard,
            self.layout,
            self.parent,
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
        // Format 2 (before Kafka) has no kafka_offsets line and reads as "no offsets".
        if format != Some(u64::from(FORMAT)) && format != Some(2) {
            return Err(format!(
                "COMMIT format {format:?}, this build reads {FORMAT}"
            ));
        }
        Ok(m)
    }
}

/// Directory name of checkpoint `seq`.
fn name(seq: u64) -> String {
    format!("ckpt-{seq:020}")
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

/// The checkpoint a shard restores from.
#[derive(Debug)]
pub struct RestorePoint {
    /// The newest checkpoint's manifest.
    pub manifest: Manifest,
    pub path: PathBuf,
    /// hot.bin of the full checkpoint and of every incremental one after it up to `path`,
    /// oldest first, each verified.
    chain: Vec<(Manifest, Vec<u8>)>,
}

impl RestorePoint {
    /// Checkpoints read to rebuild the hot records (1 for a full one).
    pub fn chain_len(&self) -> usize {
        self.chain.len()
    }
}

/// The checkpoint at `path` and the ones it builds on, oldest (the full one) first.
fn read_chain(
    path: &Path,
    by_seq: &std::collections::HashMap<u64, PathBuf>,
    words: usize,
) -> Result<Vec<(Manifest, Vec<u8>)>, CheckpointError> {
    let mut chain = Vec::new();
    let mut at = path.to_owned();
    loop {
        let (m, hot) = read_verified(&at, words)?;
        let parent = m.parent;
        chain.push((m, hot));
        if parent == 0 {
            break;
        }
        at = by_seq
            .get(&parent)
            .cloned()
            .ok_or_else(|| CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: format!("builds on checkpoint {parent}, which is gone"),
            })?;
        if chain.len() > by_seq.len() {
            return Err(CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: "its chain of parents loops".into(),
            });
        }
    }
    chain.reverse();
    Ok(chain)
}

/// Find the newest checkpoint under `root` whose whole chain (it, and the incremental ones
/// and the full one it builds on) is good, and install its spill store at `spill_dir`, opened
/// with `open` (emptied when nothing is restored). Incomplete or corrupt checkpoints are
/// logged and skipped for older ones; one written for another layout is an error (restoring
/// it would put keys on the wrong shards or misread their words). The caller then loads the
/// hot records with `load_records`.
pub fn restore(
    root: &Path,
    layout: &str,
    spill_dir: &Path,
    words: usize,
    open: impl FnMut(&Path, Option<u64>) -> Result<Spill, SpillError>,
) -> Result<(Spill, Option<RestorePoint>), CheckpointError> {
    restore_to(root, layout, spill_dir, words, open, RestoreTarget::Newest)
}

/// Which checkpoint a restore may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The newest whose chain checks out (older ones when it does not).
    Newest,
    /// exactly_once: this one, which the last committed Kafka transaction names. Newer ones
    /// belong to transactions that never committed and are deleted; if this one is missing or
    /// corrupt the restore fails (an older one would replay Scores already committed).
    Exactly(u64),
    /// exactly_once with no committed transaction yet: none. Checkpoints found are set aside
    /// (renamed, not deleted: they may be a run in another delivery mode).
    Nothing,
}

/// `restore` with a target (see `RestoreTarget`).
pub fn restore_to(
    root: &Path,
    layout: &str,
    spill_dir: &Path,
    words: usize,
    mut open: impl FnMut(&Path, Option<u64>) -> Result<Spill, SpillError>,
    target: RestoreTarget,
) -> Result<(Spill, Option<RestorePoint>), CheckpointError> {
    let Listing { done, partial } = list(root)?;
    for p in partial {
        tracing::warn!(path = %p.display(), "removing an incomplete checkpoint (the process stopped while writing it)");
        std::fs::remove_dir_all(&p).map_err(io(&p))?;
    }
    let done = match target {
        RestoreTarget::Newest => done,
        RestoreTarget::Nothing => {
            if !done.is_empty() {
                let aside = root.with_extension(format!(
                    "uncommitted-{}",
                    crate::clock::realtime_ns() / 1_000_000
                ));
                tracing::warn!(from = %root.display(), to = %aside.display(), "no committed Kafka transaction names a checkpoint: starting empty; the checkpoints found are set aside");
                std::fs::rename(root, &aside).map_err(io(root))?;
                std::fs::create_dir_all(root).map_err(io(root))?;
            }
            return Ok((open(spill_dir, None)?, None));
        }
        RestoreTarget::Exactly(want) => {
            let (newer, keep): (Vec<_>, Vec<_>) = done.into_iter().partition(|(s, _)| *s > want);
            for (seq, path) in newer {
                tracing::warn!(seq, "removing checkpoint {seq}: its Kafka transaction never committed (the last committed one names {want})");
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            }
            if !keep.iter().any(|(s, _)| *s == want) {
                return Err(CheckpointError::Corrupt {
                    path: root.join(name(want)),
                    reason: format!("the last committed Kafka transaction names checkpoint {want}, which is not here: exactly-once state cannot be restored (was state.dir moved or cleaned? Move the progress topic's records or start with a new egress.kafka.transactional_id_prefix to start over)"),
                });
            }
            keep
        }
    };
    let by_seq: std::collections::HashMap<u64, PathBuf> = done.iter().cloned().collect();
    for (seq, path) in done {
        if let RestoreTarget::Exactly(want) = target {
            if seq != want {
                continue;
            }
        }
        let chain = match read_chain(&path, &by_seq, words) {
            Ok(c) => c,
            Err(e) if matches!(target, RestoreTarget::Exactly(_)) => return Err(e),
            Err(e) => {
                tracing::error!("skipping checkpoint {}: {e}", path.display());
                continue;
            }
        };
        let Some((manifest, _)) = chain.last() else {
            continue;
        };
        let manifest = manifest.clone();
        if let Some((m, _)) = chain.iter().find(|(m, _)| m.layout != layout) {
            return Err(CheckpointError::Mismatch {
                path,
                root: root.to_owned(),
                found: m.layout.clone(),
                want: layout.to_owned(),
            });
        }
        install_spill(&path.join("spill"), spill_dir)?;
        match open(spill_dir, Some(manifest.spilled)) {
            Ok(spill) => {
                return Ok((
                    spill,
                    Some(RestorePoint {
                        manifest,
                        path,
                        chain,
                    }),
                ))
            }
            Err(e) => {
                tracing::error!(path = %path.display(), "skipping checkpoint: its spill store does not open: {e}");
            }
        }
    }
    if let RestoreTarget::Exactly(want) = target {
        return Err(CheckpointError::Corrupt {
            path: root.join(name(want)),
            reason: "the checkpoint the last committed Kafka transaction names does not open: exactly-once state cannot be restored".into(),
        });
    }
    Ok((open(spill_dir, None)?, None))
}

/// Read a checkpoint's manifest and hot records, checking the commit marker, the checksums
/// and the sizes.
pub fn read_verified(path: &Path, words: usize) -> Result<(Manifest, Vec<u8>), CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let commit = path.join("COMMIT");
    let text = std::fs::read_to_string(&commit)
        .map_err(|e| corrupt(format!("no readable COMMIT marker ({e}): incomplete")))?;
    let manifest = Manifest::parse(&text).map_err(corrupt)?;
    let hot = std::fs::read(path.join("hot.bin")).map_err(|e| corrupt(format!("hot.bin: {e}")))?;
    if hot.len() as u64 != manifest.hot_bytes {
        return Err(corrupt(format!(
            "hot.bin is {} bytes, COMMIT says {}",
            hot.len(),
            manifest.hot_bytes
        )));
    }
    if crc32fast::hash(&hot) != manifest.hot_crc {
        return Err(corrupt("hot.bin checksum mismatch".into()));
    }
    let want =
        HEADER_BYTES as u64 + manifest.hot_records * image_bytes(words) as u64 + manifest.gone * 8;
    let header_ok = hot.len() >= HEADER_BYTES
        && &hot[..8] == MAGIC
        && hot[8..12] == HOT_FORMAT.to_le_bytes()
        && hot[12..16] == (words as u32).to_le_bytes()
        && hot[16..24] == manifest.hot_records.to_le_bytes()
        && hot[24..32] == manifest.gone.to_le_bytes();
    if !header_ok || hot.len() as u64 != want {
        return Err(corrupt(format!(
            "hot.bin header or size does not match {} records of {} words",
            manifest.hot_records, words
        )));
    }
    if !path.join("spill").is_dir() {
        return Err(corrupt("no spill/ directory".into()));
    }
    Ok((manifest, hot))
}

/// Put a checkpoint's spill store in place of the live one: table files are immutable, so
/// they are hard-linked; everything else (MANIFEST, CURRENT, OPTIONS) is copied, because the
/// live store appends to it.
fn install_spill(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(io(to))?;
    }
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let is_table = src.extension().is_some_and(|e| e == "sst");
        let linked = is_table && std::fs::hard_link(&src, &dst).is_ok();
        if !linked {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

/// Load a restore point's hot records into `state` (built on the spill store `restore`
/// returned); returns how many. The incremental checkpoints of the chain are folded first
/// into the newest fate of each key they touch (an image, or gone); the full checkpoint's
/// records are then loaded except those keys, then the touched keys' newest images. So only
/// the final hot set is inserted, whatever `state.hot_capacity` is now.
pub fn load_records(state: &mut KeyedState, point: &RestorePoint) -> Result<u64, CheckpointError> {
    let words = state.plan().words();
    let image = image_bytes(words);
    let corrupt = |reason: &str| CheckpointError::Corrupt {
        path: point.path.clone(),
        reason: reason.to_owned(),
    };
    let key_at = |b: &[u8]| -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(
            b.get(..8)
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| corrupt("short record"))?,
        ))
    };
    let records = |m: &Manifest| HEADER_BYTES..HEADER_BYTES + m.hot_records as usize * image;
    // key -> newest image in the incremental part of the chain: (checkpoint, offset), or None
    // when the key left the hot table.
    let mut touched: std::collections::HashMap<u64, Option<(usize, usize)>> =
        std::collections::HashMap::new();
    for (i, (m, hot)) in point.chain.iter().enumerate().skip(1) {
        let recs = records(m);
        for key in hot[recs.end..].chunks_exact(8) {
            touched.insert(key_at(key)?, None);
        }
        for (j, img) in hot[recs.clone()].chunks_exact(image).enumerate() {
            touched.insert(key_at(img)?, Some((i, recs.start + j * image)));
        }
    }
    let mut w = vec![0u64; words];
    let mut n = 0;
    let mut load = |img: &[u8], state: &mut KeyedState| -> Result<(), CheckpointError> {
        let rec = Record::read_image(img, &mut w)
            .ok_or_else(|| corrupt("record image of the wrong size"))?;
        state.restore(rec, &w)?;
        n += 1;
        Ok(())
    };
    if let Some((m, hot)) = point.chain.first() {
        for img in hot[records(m)].chunks_exact(image) {
            if !touched.contains_key(&key_at(img)?) {
                load(img, state)?;
            }
        }
    }
    for (i, at) in touched.values().flatten() {
        load(&point.chain[*i].1[*at..*at + image], state)?;
    }
    state.stats.observations_applied = point.manifest.observations_applied;
    Ok(n)
}

/// Counters of one shard's checkpointing.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckpointStats {
    pub written: u64,
    /// Of the snapshots taken, how many were full (the rest are incremental).
    pub full: u64,
    pub failed: u64,
    pub skipped_busy: u64,
    pub last_seq: u64,
    pub last_bytes: u64,
    /// Of the last pause, the time spent copying hot records (the rest is the RocksDB
    /// checkpoint of the spill store).
    pub last_copy_ns: u64,
    /// Time the shard spent taking the last snapshot (ns), and the longest so far.
    pub last_pause_ns: u64,
    pub max_pause_ns: u64,
}

struct Job {
    tmp: PathBuf,
    done: PathBuf,
    buffer: Vec<u8>,
    manifest: Manifest,
}

/// Writer-thread work: a checkpoint to write, or (once, at start) the snapshot buffer to
/// touch, so its pages are in memory before the first snapshot instead of faulting in
/// during it (that made the first pause at 1M keys 5-10x the later ones).
enum Work {
    Write(Job),
    Prefault(Vec<u8>),
}

/// The writer's answer: the buffer back, and whether the checkpoint committed.
struct Done {
    buffer: Vec<u8>,
    /// None for a prefault.
    result: Option<Result<u64, String>>,
}

/// The snapshot buffer a shard needs: every hot record's image, or (incremental) as many
/// plus the bounded list of keys that left the table (`KeyedState::track_changes`).
pub fn buffer_bytes(hot_capacity: usize, words: usize) -> usize {
    HEADER_BYTES + hot_capacity * image_bytes(words) + super::changes_bound(hot_capacity) * 8
}

/// What the shard has consumed, recorded with a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Rises with every input record taken (applied or skipped): a change even when no
    /// state changed.
    pub position: u64,
    pub offsets: Vec<PartitionOffset>,
}

/// Rises with every change a checkpoint must capture: the state's own changes and every input
/// record taken (a skipped record changes no state but moves an offset).
fn stamp(state: &KeyedState, input: &Input) -> u64 {
    state.stats.changes().wrapping_add(input.position)
}

/// How one shard checkpoints.
pub struct CheckpointSpec {
    /// `state.dir/shard-N/checkpoints`.
    pub root: PathBuf,
    pub shard: usize,
    /// `Config::state_layout`: what a restore must match.
    pub layout: String,
    pub interval_ns: u64,
    /// Full checkpoints kept (with the incremental ones after them).
    pub keep: usize,
    /// Every this many checkpoints one is full.
    pub full_every: usize,
    /// Bound of a snapshot: every hot record's image (allocated and touched at start).
    pub buffer_bytes: usize,
    /// Sequence number of the first checkpoint (after the restored one).
    pub next_seq: u64,
}

/// The shard's side of checkpointing.
pub struct Checkpointer {
    root: PathBuf,
    shard: usize,
    layout: String,
    interval_ns: u64,
    next_due_ns: u64,
    seq: u64,
    /// The snapshot buffer, away at the writer while a checkpoint is being written.
    buffer: Option<Vec<u8>>,
    jobs: mpsc::SyncSender<Work>,
    results: mpsc::Receiver<Done>,
    /// `StateStats::changes()` at the last snapshot (None: take the next one regardless).
    snapshot_changes: Option<u64>,
    /// The last snapshot taken (None: the next must be full: at start, or after a failure).
    parent: Option<u64>,
    deltas_since_full: usize,
    /// Every this many checkpoints one is full (bounds the chain a restore reads).
    full_every: usize,
    pub stats: CheckpointStats,
}

impl Checkpointer {
    /// Start the shard's writer thread and hand it the snapshot buffer to touch.
    pub fn start(spec: CheckpointSpec) -> Result<Self, CheckpointError> {
        let CheckpointSpec {
            root,
            shard,
            layout,
            interval_ns,
            keep,
            full_every,
            buffer_bytes,
            next_seq,
        } = spec;
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let (jobs, rx) = mpsc::sync_channel::<Work>(1);
        let (tx, results) = mpsc::sync_channel::<Done>(1);
        let prune_root = root.clone();
        std::thread::Builder::new()
            .name(format!("sluice-ckpt-{shard}"))
            .spawn(move || {
                for work in rx {
                    let done = match work {
                        Work::Prefault(mut buffer) => {
                            buffer.resize(buffer.capacity(), 0);
                            Done {
                                buffer,
                                result: None,
                            }
                        }
                        Work::Write(job) => {
                            let result =
                                write_job(&job, &prune_root, keep).map_err(|e| e.to_string());
                            if let Err(e) = &result {
                                // Else the partial directory would wait for the next start.
                                let _ = std::fs::remove_dir_all(&job.tmp);
                                tracing::error!(
                                    shard,
                                    "checkpoint {} failed: {e}",
                                    job.manifest.seq
                                );
                            }
                            Done {
                                buffer: job.buffer,
                                result: Some(result.map(|_| job.manifest.seq)),
                            }
                        }
                    };
                    if tx.send(done).is_err() {
                        return;
                    }
                }
            })
            .map_err(io(&root))?;
        // The buffer is away being touched until the writer hands it back; a checkpoint due
        // before then is skipped (counted) like one due while the writer is busy.
        jobs.send(Work::Prefault(Vec::with_capacity(buffer_bytes)))
            .map_err(|_| CheckpointError::Io {
                path: root.clone(),
                source: std::io::Error::other("checkpoint writer thread exited at start"),
            })?;
        Ok(Self {
            root,
            shard,
            layout,
            interval_ns,
            next_due_ns: 0,
            seq: next_seq,
            buffer: None,
            jobs,
            results,
            snapshot_changes: None,
            parent: None,
            deltas_since_full: 0,
            full_every: full_every.max(1),
            stats: CheckpointStats::default(),
        })
    }

    /// Collect the writer's answer, if any (between cycles).
    fn collect(&mut self, wait: bool) {
        let done = if wait {
            self.results.recv().ok()
        } else {
            self.results.try_recv().ok()
        };
        if let Some(d) = done {
            self.buffer = Some(d.buffer);
            match d.result {
                None => {}
                Some(Ok(seq)) => {
                    self.stats.written += 1;
                    self.stats.last_seq = seq;
                }
                Some(Err(_)) => {
                    self.stats.failed += 1;
                    self.snapshot_changes = None;
                    // Its changes are lost with it; the next checkpoint must be full.
                    self.parent = None;
                }
            }
        }
    }

    /// Between cycles: snapshot if due and the state changed since the last one (an idle
    /// shard writes nothing). `max_event_ns` is the shard's newest event time.
    pub fn tick(&mut self, now_ns: u64, state: &mut KeyedState, max_event_ns: u64) {
        let _ = self.tick_with(now_ns, state, max_event_ns, &Input::default());
    }

    /// Is a snapshot due (interval passed, something changed since the last one)? `input` is
    /// what the shard has consumed: its position counts as a change even when no state did
    /// (a skipped Kafka record still moves the offset).
    pub fn due(&self, now_ns: u64, state: &KeyedState, input: &Input) -> bool {
        now_ns >= self.next_due_ns && self.snapshot_changes != Some(stamp(state, input))
    }

    /// `tick` for a shard with an input position to record (Kafka offsets). Returns the
    /// sequence number of the snapshot taken, if one was.
    pub fn tick_with(
        &mut self,
        now_ns: u64,
        state: &mut KeyedState,
        max_event_ns: u64,
        input: &Input,
    ) -> Option<u64> {
        self.collect(false);
        if !self.due(now_ns, state, input) {
            return None;
        }
        self.next_due_ns = now_ns.saturating_add(self.interval_ns);
        if self.buffer.is_none() {
            self.stats.skipped_busy += 1;
            return None;
        }
        self.snapshot(state, max_event_ns, input)
    }

    /// Postpone the next snapshot by one interval (the caller could not take it now).
    pub fn postpone(&mut self, now_ns: u64) {
        self.next_due_ns = now_ns.saturating_add(self.interval_ns);
        self.stats.skipped_busy += 1;
    }

    /// Wait until the writer has finished the snapshot in flight (if any); whether it
    /// committed (its seq) or failed.
    pub fn wait_written(&mut self) -> Result<u64, String> {
        if self.buffer.is_some() {
            return Err("no checkpoint was being written".into());
        }
        match self.results.recv() {
            Ok(d) => {
                self.buffer = Some(d.buffer);
                match d.result {
                    Some(Ok(seq)) => {
                        self.stats.written += 1;
                        self.stats.last_seq = seq;
                        Ok(seq)
                    }
                    Some(Err(e)) => {
                        self.stats.failed += 1;
                        self.snapshot_changes = None;
                        self.parent = None;
                        Err(e)
                    }
                    None => Err("the writer answered a prefault".into()),
                }
            }
            Err(_) => Err("the checkpoint writer thread is gone".into()),
        }
    }

    /// Take the next snapshot even if the state has not changed since the last one.
    pub fn force_next(&mut self) {
        self.snapshot_changes = None;
    }

    /// A last checkpoint at shutdown (unless the newest already holds this state), waited for.
    pub fn finish(&mut self, state: &mut KeyedState, max_event_ns: u64) {
        self.finish_with(state, max_event_ns, &Input::default());
    }

    /// `finish` for a shard with an input position (Kafka offsets). Returns the seq of the
    /// last checkpoint if it was written now and committed.
    pub fn finish_with(
        &mut self,
        state: &mut KeyedState,
        max_event_ns: u64,
        input: &Input,
    ) -> Option<u64> {
        if self.buffer.is_none() {
            self.collect(true);
        }
        if self.snapshot_changes != Some(stamp(state, input)) {
            self.snapshot(state, max_event_ns, input)?;
            return self.wait_written().ok();
        }
        None
    }

    fn snapshot(
        &mut self,
        state: &mut KeyedState,
        max_event_ns: u64,
        input: &Input,
    ) -> Option<u64> {
        let mut buf = self.buffer.take()?;
        let started = Instant::now();
        self.snapshot_changes = Some(stamp(state, input));
        let seq = self.seq;
        self.seq += 1;
        let tmp = self.root.join(format!("{}.tmp", name(seq)));
        let done = self.root.join(name(seq));
        let (changes, hot) = state.changes_mut();
        let full = match self.parent {
            None => true,
            Some(_) => {
                !changes.on || changes.overflowed || self.deltas_since_full + 1 >= self.full_every
            }
        };
        let words = hot.stride();
        let image = image_bytes(words);
        // Each hot key is written at most once (its DIRTY bit is cleared as it is), so a delta
        // holds at most the hot table's records, plus the gone keys: within `buffer_bytes`.
        let (records, gone) = if full {
            (hot.len(), 0)
        } else {
            (changes.dirty.len().min(hot.len()), changes.gone.len())
        };
        // Size the buffer once (it keeps its length between snapshots, so only growth is
        // zero-filled), write every image at its fixed offset, then cut to what was written
        // (a dirty key may have left the table since it was listed).
        buf.resize(HEADER_BYTES + records * image + gone * 8, 0);
        let (header, body) = buf.split_at_mut(HEADER_BYTES);
        let mut written = 0;
        if full {
            let mut outs = body.chunks_exact_mut(image);
            for slot in 0..hot.slots() {
                let (head, w) = hot.slot_mut(slot);
                if !head.is_occupied() {
                    continue;
                }
                head.flags &= !DIRTY;
                if let Some(out) = outs.next() {
                    head.write_image(w, out);
                    written += 1;
                }
            }
        } else {
            let mut outs = body.chunks_exact_mut(image);
            for &key in &changes.dirty {
                let Some(slot) = hot.find(key) else {
                    continue;
                };
                let (head, w) = hot.slot_mut(slot);
                if head.flags & DIRTY == 0 {
                    continue;
                }
                head.flags &= !DIRTY;
                if let Some(out) = outs.next() {
                    head.write_image(w, out);
                    written += 1;
                }
            }
        }
        let records_end = written * image;
        for (out, key) in body[records_end..].chunks_exact_mut(8).zip(&changes.gone) {
            out.copy_from_slice(&key.to_le_bytes());
        }
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&HOT_FORMAT.to_le_bytes());
        header[12..16].copy_from_slice(&(words as u32).to_le_bytes());
        header[16..24].copy_from_slice(&(written as u64).to_le_bytes());
        header[24..32].copy_from_slice(&(gone as u64).to_le_bytes());
        buf.truncate(HEADER_BYTES + records_end + gone * 8);
        changes.clear();
        let parent = if full { 0 } else { self.parent.unwrap_or(0) };
        self.parent = Some(seq);
        self.deltas_since_full = if full { 0 } else { self.deltas_since_full + 1 };
        let copied_ns = started.elapsed().as_nanos() as u64;
        let spill_ok = match state.spill() {
            Some(s) => std::fs::create_dir_all(&tmp)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    s.checkpoint_to(&tmp.join("spill"))
                        .map_err(|e| e.to_string())
                }),
            None => std::fs::create_dir_all(tmp.join("spill")).map_err(|e| e.to_string()),
        };
        let pause = started.elapsed().as_nanos() as u64;
        self.stats.last_copy_ns = copied_ns;
        self.stats.last_pause_ns = pause;
        self.stats.max_pause_ns = self.stats.max_pause_ns.max(pause);
        if let Err(e) = spill_ok {
            tracing::error!(
                shard = self.shard,
                "checkpoint {seq}: spill store checkpoint failed: {e}"
            );
            let _ = std::fs::remove_dir_all(&tmp);
            self.stats.failed += 1;
            self.snapshot_changes = None;
            // The changes this one took are not on disk: the next must be full.
            self.parent = None;
            self.buffer = Some(buf);
            return None;
        }
        self.stats.last_bytes = buf.len() as u64;
        if full {
            self.stats.full += 1;
        }
        let manifest = Manifest {
            seq,
            shard: self.shard,
            layout: self.layout.clone(),
            parent,
            hot_records: written as u64,
            gone: gone as u64,
            spilled: state.spilled_len(),
            hot_bytes: buf.len() as u64,
            // Filled in by the writer thread: a checksum of the whole buffer is not the
            // shard's time to spend.
            hot_crc: 0,
            max_event_ns,
            observations_applied: state.stats.observations_applied,
            created_unix_ms: crate::clock::realtime_ns() / 1_000_000,
            kafka_offsets: input.offsets.clone(),
        };
        let job = Job {
            tmp,
            done,
            buffer: buf,
            manifest,
        };
        if let Err(mpsc::SendError(work)) = self.jobs.send(Work::Write(job)) {
            // The writer thread is gone (it only exits when this side does).
            self.stats.failed += 1;
            if let Work::Write(job) = work {
                self.buffer = Some(job.buffer);
            }
            self.parent = None;
            return None;
        }
        Some(seq)
    }
}

fn sync_file(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}

fn write_job(job: &Job, root: &Path, keep: usize) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(&job.tmp).map_err(io(&job.tmp))?;
    sync_file(&job.tmp.join("hot.bin"), &job.buffer)?;
    let manifest = Manifest {
        hot_crc: crc32fast::hash(&job.buffer),
        ..job.manifest.clone()
    };
    sync_file(&job.tmp.join("COMMIT"), manifest.render().as_bytes())?;
    sync_dir(&job.tmp)?;
    std::fs::rename(&job.tmp, &job.done).map_err(io(&job.done))?;
    sync_dir(root)?;
    // Only a new full checkpoint moves the cutoff (the keep-th newest full one).
    if job.manifest.parent == 0 {
        prune(root, keep)?;
    }
    Ok(())
}

/// Keep the newest `keep` full checkpoints and every checkpoint after the oldest of them (the
/// incremental ones build on it); delete the rest.
fn prune(root: &Path, keep: usize) -> Result<(), CheckpointError> {
    let done = list(root)?.done;
    let mut fulls = 0;
    let mut cutoff = None;
    for (seq, path) in &done {
        let full = std::fs::read_to_string(path.join("COMMIT"))
            .ok()
            .and_then(|t| Manifest::parse(&t).ok())
            .is_some_and(|m| m.parent == 0);
        if full {
            fulls += 1;
            if fulls == keep {
                cutoff = Some(*seq);
                break;
            }
        }
    }
    let Some(cutoff) = cutoff else {
        return Ok(());
    };
    for (seq, old) in &done {
        if *seq < cutoff {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
