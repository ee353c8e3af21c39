//! `sluice state show`: what a state.dir holds, from its checkpoint manifests alone — read
//! only, no lock taken, nothing restored, so it runs beside a serving sluice too. Per shard:
//! its newest committed checkpoint (number, full or incremental, when written, records,
//! Observations applied, the Kafka offsets it resumes at), how many it keeps and the disk it
//! holds; then what else is there (a rescale's kept shards, a swap cut short). What an
//! operator wants before a rescale, an upgrade or a restore; `--json` gives the same to a
//! script (one document, the `StateView` below).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::state_check::bytes_under;
use crate::config::Config;
use crate::egress::kafka::committed_mark;
use crate::state::checkpoint::{self, Manifest};

/// What `state show` found.
#[derive(Debug, Serialize)]
pub struct StateView {
    pub state_dir: String,
    /// The first shard's with a checkpoint: the layout (shard count, features, Kafka
    /// dealing) its newest checkpoint was written for, what a start compares with its own.
    pub layout: Option<String>,
    pub shards: Vec<ShardView>,
    /// A rescale's swap cut short: why a start would refuse.
    pub interrupted_rescale: Option<String>,
    /// What stops nothing (the shards a rescale kept aside, with their size).
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ShardView {
    pub shard: usize,
    /// None: no committed checkpoint.
    pub newest: Option<CheckpointView>,
    /// Committed checkpoints kept.
    pub checkpoints: usize,
    /// Disk under the shard's directory, each hard link counted once.
    pub bytes: u64,
    /// The `exactly-once-committed` mark's lines (`transactional.id=…`, `progress_topic=…`).
    pub exactly_once_committed: Option<Vec<String>>,
    /// `--verify`: what reading the checkpoints back found (None without it).
    pub verified: Option<VerifiedView>,
}

/// The chains a start would try, read back (`checkpoint::check_chains`).
#[derive(Debug, Serialize)]
pub struct VerifiedView {
    /// The newest checkpoint whose whole chain reads back: what a start restores (under
    /// exactly_once, the one the progress topic names, which may be older).
    pub restorable: Option<u64>,
    /// Checkpoints in that chain.
    pub chain: usize,
    /// Newer checkpoints whose chain does not read back, with why.
    pub bad: Vec<BadCheckpoint>,
}

#[derive(Debug, Serialize)]
pub struct BadCheckpoint {
    pub seq: u64,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct CheckpointView {
    pub seq: u64,
    /// None: a full checkpoint; else the one it applies on top of.
    pub parent: Option<u64>,
    pub created_unix_ms: u64,
    pub created: String,
    pub layout: String,
    /// Every hot record (full), or those changed since the parent (incremental).
    pub hot_records: u64,
    /// Incremental: keys that left the hot table since the parent.
    pub gone: u64,
    pub spilled: u64,
    pub observations_applied: u64,
    /// The shard's newest event time, ns since the epoch.
    pub max_event_ns: u64,
    /// Where each Kafka partition the shard owns resumes.
    pub kafka: Vec<ResumeAt>,
}

#[derive(Debug, Serialize)]
pub struct ResumeAt {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

impl From<&Manifest> for CheckpointView {
    fn from(m: &Manifest) -> Self {
        Self {
            seq: m.seq,
            parent: (m.parent != 0).then_some(m.parent),
            created_unix_ms: m.created_unix_ms,
            created: humantime::format_rfc3339_millis(
                UNIX_EPOCH + Duration::from_millis(m.created_unix_ms),
            )
            .to_string(),
            layout: m.layout.clone(),
            hot_records: m.hot_records,
            gone: m.gone,
            spilled: m.spilled,
            observations_applied: m.observations_applied,
            max_event_ns: m.max_event_ns,
            kafka: m
                .kafka_offsets
                .iter()
                .map(|o| ResumeAt {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    next_offset: o.next,
                })
                .collect(),
        }
    }
}

/// `config`'s state.dir, which must be set and exist (what `show` and `backup` read).
pub(super) fn existing_state_dir(config: &Config) -> Result<&Path, String> {
    let dir = &config.state.dir;
    if dir.is_empty() {
        return Err("state.dir is not set: the state lives in memory only".into());
    }
    let root = Path::new(dir);
    if !root.is_dir() {
        return Err(format!("state.dir {dir} does not exist"));
    }
    Ok(root)
}

/// Read `config`'s state.dir (`verify`: every checkpoint chain a start would try, read back
/// and checked; otherwise the manifests only); Err when it is not set, not there, or a
/// shard's checkpoints do not list.
pub fn look(config: &Config, verify: bool) -> Result<StateView, String> {
    let root = existing_state_dir(config)?;
    let dir = &config.state.dir;
    let mut shards = Vec::new();
    for (i, shard) in super::rescale::shard_dirs(root).iter().enumerate() {
        let cps = shard.join("checkpoints");
        let (newest, checkpoints) = checkpoint::committed(&cps).map_err(|e| e.to_string())?;
        let verified = if verify {
            let c = checkpoint::check_chains(&cps).map_err(|e| e.to_string())?;
            Some(VerifiedView {
                restorable: c.good.map(|g| g.0),
                chain: c.good.map_or(0, |g| g.1),
                bad: c
                    .bad
                    .into_iter()
                    .map(|(seq, why)| BadCheckpoint { seq, why })
                    .collect(),
            })
        } else {
            None
        };
        let exactly_once_committed = std::fs::read_to_string(committed_mark::path(shard))
            .ok()
            .map(|mark| mark.lines().map(str::to_owned).collect());
        shards.push(ShardView {
            shard: i,
            newest: newest.as_ref().map(CheckpointView::from),
            checkpoints,
            bytes: bytes_under(shard, &mut HashSet::new()),
            exactly_once_committed,
            verified,
        });
    }
    let layout = shards
        .iter()
        .find_map(|s| s.newest.as_ref())
        .map(|c| c.layout.clone());
    Ok(StateView {
        state_dir: dir.clone(),
        layout,
        shards,
        interrupted_rescale: super::rescale::interrupted(dir),
        warnings: super::state_check::warnings(config),
    })
}

impl StateView {
    /// `--verify` found a checkpoint that does not read back (the command exits 1).
    pub fn verify_failed(&self) -> bool {
        self.shards
            .iter()
            .any(|s| s.verified.as_ref().is_some_and(|v| !v.bad.is_empty()))
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "state.dir {}: {} shard(s){}",
            self.state_dir,
            self.shards.len(),
            self.layout
                .as_ref()
                .map_or_else(String::new, |l| format!(", layout {l}"))
        );
        for s in &self.shards {
            let _ = write!(out, "  shard {}: ", s.shard);
            match &s.newest {
                None => out.push_str("no checkpoint"),
                Some(c) => {
                    out.push_str(&describe(c));
                    if self.layout.as_ref().is_some_and(|l| *l != c.layout) {
                        let _ = write!(out, "; written for another layout: {}", c.layout);
                    }
                }
            }
            let _ = writeln!(
                out,
                "; {} checkpoint(s), {} MB",
                s.checkpoints,
                s.bytes / 1_000_000
            );
            if let Some(said) = &s.exactly_once_committed {
                let _ = writeln!(
                    out,
                    "    exactly_once transactions committed ({})",
                    said.join(", ")
                );
            }
            if let Some(v) = &s.verified {
                out.push_str(&verified_text(v));
            }
        }
        if let Some(why) = &self.interrupted_rescale {
            let _ = writeln!(out, "  {why}");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "  {w}");
        }
        out
    }
}

/// What `--verify` found of one shard, in lines.
fn verified_text(v: &VerifiedView) -> String {
    let mut out = String::new();
    for b in &v.bad {
        let _ = writeln!(
            out,
            "    checkpoint {} does NOT read back: {}",
            b.seq, b.why
        );
    }
    let _ = match (v.restorable, v.bad.is_empty()) {
        (Some(seq), true) => writeln!(
            out,
            "    verified: checkpoint {seq} reads back whole ({} checkpoint(s) in its chain)",
            v.chain
        ),
        (Some(seq), false) => writeln!(
            out,
            "    a start sets those aside and restores checkpoint {seq}, which reads back whole ({} checkpoint(s) in its chain); under exactly_once it restores the one the progress topic names and refuses if that is among them",
            v.chain
        ),
        (None, false) => writeln!(
            out,
            "    no checkpoint reads back whole: a start sets them aside and begins empty (under exactly_once it refuses)"
        ),
        (None, true) => Ok(()),
    };
    out
}

/// One checkpoint in a line.
fn describe(c: &CheckpointView) -> String {
    let records = match c.parent {
        None => format!(
            "full: {} hot + {} spilled record(s)",
            c.hot_records, c.spilled
        ),
        Some(parent) => format!(
            "incremental on {parent}: {} changed, {} gone, {} spilled",
            c.hot_records, c.gone, c.spilled
        ),
    };
    let mut s = format!(
        "checkpoint {} of {} ({records}), {} Observation(s) applied",
        c.seq, c.created, c.observations_applied
    );
    if !c.kafka.is_empty() {
        let at: Vec<String> = c
            .kafka
            .iter()
            .map(|o| format!("{}/{} at {}", o.topic, o.partition, o.next_offset))
            .collect();
        let _ = write!(s, "; Kafka resumes {}", at.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::checkpoint::PartitionOffset;

    #[test]
    fn a_manifest_reads_as_one_line_full_or_incremental_with_its_offsets() {
        let mut m = Manifest {
            seq: 9,
            layout: "shards=1".into(),
            hot_records: 20,
            spilled: 3,
            observations_applied: 70,
            created_unix_ms: 1_796_443_409_260,
            ..Manifest::default()
        };
        let said = describe(&CheckpointView::from(&m));
        assert!(said.starts_with("checkpoint 9 of 2026-"), "{said}");
        assert!(
            said.contains("(full: 20 hot + 3 spilled record(s)), 70 Observation(s)"),
            "{said}"
        );
        assert!(!said.contains("Kafka"), "{said}");
        m.parent = 8;
        m.gone = 2;
        m.kafka_offsets = vec![PartitionOffset {
            topic: "events".into(),
            partition: 3,
            next: 125,
        }];
        let view = CheckpointView::from(&m);
        let said = describe(&view);
        assert!(
            said.contains("incremental on 8: 20 changed, 2 gone, 3 spilled"),
            "{said}"
        );
        assert!(said.ends_with("; Kafka resumes events/3 at 125"), "{said}");
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["parent"], 8);
        assert_eq!(json["kafka"][0]["next_offset"], 125);
        assert_eq!(json["created"], view.created.as_str());
    }
}
