//! `sluice state show`: what a state.dir holds, from its checkpoint manifests alone — read
//! only, no lock taken, nothing restored, so it runs beside a serving sluice too. Per shard:
//! its newest committed checkpoint (number, full or incremental, when written, records,
//! Observations applied, the Kafka offsets it resumes at), how many it keeps and the disk it
//! holds; then what else is there (a rescale's kept shards, a swap cut short). What an
//! operator wants before a rescale, an upgrade or a restore.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::state_check::bytes_under;
use crate::config::Config;
use crate::egress::kafka::committed_mark;
use crate::state::checkpoint::{self, Manifest};

/// The summary as text; Err when state.dir is not set or not there.
pub fn show(config: &Config) -> Result<String, String> {
    let dir = &config.state.dir;
    if dir.is_empty() {
        return Err("state.dir is not set: the state lives in memory only".into());
    }
    let root = Path::new(dir);
    if !root.is_dir() {
        return Err(format!("state.dir {dir} does not exist"));
    }
    let shards = super::rescale::shard_dirs(root);
    let mut out = String::new();
    let mut first_layout = None;
    let mut body = String::new();
    for (i, shard) in shards.iter().enumerate() {
        let cps = shard.join("checkpoints");
        let newest = checkpoint::newest_manifest(&cps).map_err(|e| e.to_string())?;
        let kept = checkpoint::committed_count(&cps).map_err(|e| e.to_string())?;
        let bytes = bytes_under(shard, &mut HashSet::new());
        let _ = write!(body, "  shard {i}: ");
        match &newest {
            None => body.push_str("no checkpoint"),
            Some(m) => {
                body.push_str(&describe(m));
                match &first_layout {
                    None => first_layout = Some(m.layout.clone()),
                    Some(l) if *l != m.layout => {
                        let _ = write!(body, "; written for another layout: {}", m.layout);
                    }
                    Some(_) => {}
                }
            }
        }
        let _ = writeln!(body, "; {kept} checkpoint(s), {} MB", bytes / 1_000_000);
        if let Ok(mark) = std::fs::read_to_string(committed_mark::path(shard)) {
            let said: Vec<&str> = mark.lines().collect();
            let _ = writeln!(
                body,
                "    exactly_once transactions committed ({})",
                said.join(", ")
            );
        }
    }
    let _ = writeln!(
        out,
        "state.dir {dir}: {} shard(s){}",
        shards.len(),
        first_layout.map_or_else(String::new, |l| format!(", layout {l}"))
    );
    out.push_str(&body);
    if let Some(why) = super::rescale::interrupted(dir) {
        let _ = writeln!(out, "  {why}");
    }
    for w in super::state_check::warnings(config) {
        let _ = writeln!(out, "  {w}");
    }
    Ok(out)
}

/// One checkpoint's manifest in a line.
fn describe(m: &Manifest) -> String {
    let when =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(m.created_unix_ms));
    let records = if m.parent == 0 {
        format!(
            "full: {} hot + {} spilled record(s)",
            m.hot_records, m.spilled
        )
    } else {
        format!(
            "incremental on {}: {} changed, {} gone, {} spilled",
            m.parent, m.hot_records, m.gone, m.spilled
        )
    };
    let mut s = format!(
        "checkpoint {} of {when} ({records}), {} Observation(s) applied",
        m.seq, m.observations_applied
    );
    if !m.kafka_offsets.is_empty() {
        let at: Vec<String> = m
            .kafka_offsets
            .iter()
            .map(|o| format!("{}/{} at {}", o.topic, o.partition, o.next))
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
        let said = describe(&m);
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
        let said = describe(&m);
        assert!(
            said.contains("incremental on 8: 20 changed, 2 gone, 3 spilled"),
            "{said}"
        );
        assert!(said.ends_with("; Kafka resumes events/3 at 125"), "{said}");
    }
}
