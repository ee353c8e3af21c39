//! A shard directory's word that its checkpoints were committed under exactly_once: written
//! once, after the shard's first committed transaction, naming the transactional.id and the
//! progress topic. At a restart with no progress record for that transactional.id, sluice set
//! the checkpoints aside as never committed and took every record still in the input again
//! (measured: the progress topic deleted between two runs, 40 + 40 records: 190 Scores for
//! 127 Observations, the first run's sent twice to read_committed readers, the state rebuilt
//! from what the topic still held). With this mark present and naming the same transactional
//! id and topic, the records are known to be lost, not absent, and the start is refused with
//! the reason. Without it (a first run that never committed, a run switched from another
//! delivery mode, a new transactional_id_prefix) the checkpoints are set aside as before.

use std::path::{Path, PathBuf};

const FILE: &str = "exactly-once-committed";

/// Where `shard_dir`'s mark lives.
pub fn path(shard_dir: &Path) -> PathBuf {
    shard_dir.join(FILE)
}

/// The mark's text for `transactional_id` and `progress_topic`.
pub fn text(transactional_id: &str, progress_topic: &str) -> String {
    format!("transactional.id={transactional_id}\nprogress_topic={progress_topic}\n")
}

/// Whether `shard_dir` holds checkpoints that a transaction of `transactional_id` committed
/// with progress in `progress_topic`: its mark says so and its checkpoint directory is not
/// empty (checkpoints removed by hand are nothing to refuse over).
pub fn committed_here(shard_dir: &Path, transactional_id: &str, progress_topic: &str) -> bool {
    let said = std::fs::read_to_string(path(shard_dir)).unwrap_or_default();
    said == text(transactional_id, progress_topic)
        && std::fs::read_dir(shard_dir.join("checkpoints"))
            .is_ok_and(|mut entries| entries.next().is_some())
}

/// The shard directories under `config`'s `state.dir` (`shard-N`) whose marks say their
/// checkpoints were committed under this configuration, each with its transactional.id: for
/// `check-config --connect`, which finds the progress topic missing without reading it.
pub fn marked_shards(config: &crate::config::Config) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(&config.state.dir) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let shard: usize = e
                .file_name()
                .to_str()?
                .strip_prefix("shard-")?
                .parse()
                .ok()?;
            let id = super::transactional_id(config, shard);
            committed_here(&e.path(), &id, &config.egress.kafka.progress_topic)
                .then(|| (shard, e.path(), id))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, dir, id)| (dir, id)).collect()
}

/// The refusal for the shards whose marks name records the progress topic no longer has.
pub fn lost(shard_dirs: &[PathBuf], transactional_ids: &[&str], progress_topic: &str) -> String {
    let listed: Vec<String> = shard_dirs
        .iter()
        .zip(transactional_ids)
        .map(|(d, id)| format!("{} (transactional.id {id})", d.display()))
        .collect();
    format!(
        "exactly_once: {} hold(s) checkpoints committed by Kafka transactions (see their {FILE} file), but the progress topic {progress_topic:?} has no record of those transactions: it was deleted or emptied, or ingest.kafka.brokers names another cluster. Without those records sluice cannot tell which checkpoint matches the Scores already committed; starting would set the checkpoints aside and take every record still in the input topics again (their Scores sent twice, the state rebuilt only from what the topics still hold). Point ingest.kafka.brokers at the cluster that has them; or, to start over knowingly, move state.dir away (and use a new egress.kafka.transactional_id_prefix)",
        listed.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_counts_only_for_its_own_id_and_topic_with_checkpoints_beside_it() {
        let dir = std::env::temp_dir().join(format!("sluice-mark-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
        assert!(!committed_here(&dir, "a-0", "p"), "no mark");
        std::fs::write(path(&dir), text("a-0", "p")).unwrap();
        assert!(!committed_here(&dir, "a-0", "p"), "no checkpoint");
        std::fs::create_dir_all(dir.join("checkpoints").join("ckpt-1")).unwrap();
        assert!(committed_here(&dir, "a-0", "p"));
        assert!(
            !committed_here(&dir, "b-0", "p"),
            "a new prefix starts over"
        );
        assert!(!committed_here(&dir, "a-0", "q"), "another progress topic");
        let said = lost(std::slice::from_ref(&dir), &["a-0"], "p");
        assert!(
            said.contains("(transactional.id a-0)") && said.contains("no record"),
            "{said}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
