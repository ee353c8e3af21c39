//! `sluice state rescale` for a Kafka-fed state dealt over shards (`ingest.kafka.membership =
//! "deal"`). A Kafka key's state lives with its input partition (its record's `source` is the
//! partition's tag) and partitions are dealt to shards by `PartitionTable`, not keys by
//! `route::owner`: the rescale moves each partition whole — its keys' records and its next
//! offset — to the shard the new count's table gives it, so the partition resumes there where
//! it stopped. UDP-fed keys beside them (source 0) go by key, as without Kafka.
//!
//! exactly_once: a start restores, per shard, the checkpoint its last committed transaction
//! names (a progress record keyed by the shard's transactional.id), not the newest. The
//! rescale restores those same checkpoints, after fencing every old and new transactional.id
//! (a transaction a killed run left open is aborted, and the progress read does not wait on
//! it). Once the new shards are staged it commits, for each new shard's transactional.id, a
//! transaction holding one progress record naming the shard's new checkpoint — what its first
//! commit would have done — and writes the shard's committed mark. The swap mark holds that
//! checkpoint's number, so a rescale cut short before or after the commit commits it again
//! (the same record) and finishes; `run` refuses the state.dir until then.

use std::collections::HashMap;
use std::path::Path;

use super::rescale::{RescaleError, STAGING};
use crate::config::{Config, Delivery, Membership};
use crate::egress::kafka::{
    self as kafka_out, committed_mark, progress, second_transactional_id, transactional_id,
};
use crate::ingest::kafka::{PartitionId, PartitionTable};
use crate::state::checkpoint::{self, PartitionOffset, RestoreTarget};

/// How a Kafka-fed state is re-dealt.
pub(super) struct KafkaDeal {
    topics: Vec<String>,
    to: usize,
    /// Every input partition's source tag -> its shard under the new count.
    owner_of: HashMap<u64, usize>,
    /// The old checkpoints' layout (shard 0's newest), whole: every old shard's must be it.
    pub old_layout: String,
    /// The new checkpoints' layout, whole.
    pub new_layout: String,
    /// exactly_once: per old shard, the checkpoint its last committed transaction names.
    committed: Option<Vec<u64>>,
}

impl KafkaDeal {
    /// The plan for a state whose shard 0 wrote `layout` (its newest checkpoint's) over `from`
    /// shards. Under exactly_once this asks the brokers (fencing, then the progress records).
    pub fn plan(
        config: &Config,
        from: usize,
        to: usize,
        layout: &str,
    ) -> Result<Self, RescaleError> {
        let k = &config.ingest.kafka;
        if k.membership == Membership::Group {
            return Err(RescaleError::Refused(
                "ingest.kafka.membership = \"group\": a group member's shards take whichever partitions the group gives them, with their state from the changelog; a rescale re-deals only a dealt state. To change a group member's shard count, move its state.dir away: with egress.kafka.changelog each partition is rebuilt from the changelog as it is assigned".into(),
            ));
        }
        let base = config.state_layout(from);
        let part = layout
            .strip_prefix(base.as_str())
            .and_then(|rest| rest.strip_prefix(';'))
            .filter(|p| p.ends_with(&format!(";over={from}")))
            .ok_or_else(|| {
                RescaleError::Refused(format!(
                    "shard 0's newest checkpoint was written for {layout:?}, not for this config's features and lateness over {from} shards with Kafka partitions dealt to them: only the shard count may differ"
                ))
            })?;
        let (then, bases) = PartitionTable::bases_of_layout(part, &k.topics).ok_or_else(|| {
            RescaleError::Refused(format!(
                "the state was written for the input topics {part:?}, not ingest.kafka.topics = {:?}: only the shard count may differ",
                k.topics
            ))
        })?;
        // The table a start over `to` shards deals (`kafka_part::dealt_table`): the topics'
        // counts and families as the state knows them.
        let table = if then == bases {
            PartitionTable::balanced(&then, to)
        } else {
            PartitionTable::grown(&bases, &then, to).ok_or_else(|| {
                RescaleError::Refused(format!(
                    "the layout {part:?} names partition counts that are not multiples of their families"
                ))
            })?
        };
        let owner_of = table
            .owners
            .iter()
            .map(|(p, s)| (p.source_tag(), *s))
            .collect();
        let new_layout = super::full_layout(config, to, Some(&table.layout(&k.topics, to)));
        let committed = if config.egress.kafka.delivery == Delivery::ExactlyOnce {
            Some(last_committed(config, from, to)?)
        } else {
            None
        };
        Ok(Self {
            topics: k.topics.clone(),
            to,
            owner_of,
            old_layout: layout.to_owned(),
            new_layout,
            committed,
        })
    }

    /// The input partitions each new shard owns.
    pub fn partitions_per_shard(&self) -> Vec<usize> {
        let mut n = vec![0; self.to];
        for &s in self.owner_of.values() {
            if let Some(c) = n.get_mut(s) {
                *c += 1;
            }
        }
        n
    }

    pub fn exactly_once(&self) -> bool {
        self.committed.is_some()
    }

    /// Which of old shard `i`'s checkpoints to restore: the one a start would.
    pub fn target(&self, i: usize) -> RestoreTarget {
        match &self.committed {
            Some(seqs) => seqs
                .get(i)
                .map_or(RestoreTarget::Nothing, |&s| RestoreTarget::Exactly(s)),
            None => RestoreTarget::Newest,
        }
    }

    /// The new shard of a record of `source` (a partition's tag, or 0 for UDP) and `key`;
    /// None for a source that is no input partition of this layout.
    pub fn shard_of(&self, source: u64, key: u64) -> Option<usize> {
        match source {
            0 => Some(crate::route::owner(key, self.to)),
            tag => self.owner_of.get(&tag).copied(),
        }
    }

    /// "topic/partition" of a source tag, for messages.
    pub fn name_of(&self, tag: u64) -> String {
        if tag == 0 {
            return "UDP".into();
        }
        match PartitionId::from_source_tag(tag) {
            Some(p) => {
                let topic = self.topics.get(usize::from(p.topic)).map_or("?", |t| t);
                format!("{topic}/{}", p.partition)
            }
            None => format!("source {tag}"),
        }
    }

    /// The old shards' input offsets dealt to the new shards: each partition's next offset
    /// goes with its state.
    pub fn deal_offsets(
        &self,
        all: &[PartitionOffset],
    ) -> Result<Vec<Vec<PartitionOffset>>, RescaleError> {
        let mut out = vec![Vec::new(); self.to];
        for o in all {
            let shard = self
                .topics
                .iter()
                .position(|t| *t == o.topic)
                .and_then(|t| {
                    self.owner_of.get(
                        &PartitionId {
                            topic: t as u16,
                            partition: o.partition,
                        }
                        .source_tag(),
                    )
                });
            match shard.and_then(|&s| out.get_mut(s)) {
                Some(list) => list.push(o.clone()),
                None => {
                    return Err(RescaleError::Refused(format!(
                        "a checkpoint holds the offset of {}/{}, which is no partition of the state's input topics",
                        o.topic, o.partition
                    )))
                }
            }
        }
        for list in &mut out {
            list.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        }
        Ok(out)
    }
}

/// Fence the transactional.ids of every old and new shard (both of each shard's producers),
/// then read each old shard's last committed progress record. A shard with checkpoints and no
/// committed transaction is refused: a start would set its checkpoints aside, and a rescale
/// does not drop state on its own.
fn last_committed(config: &Config, from: usize, to: usize) -> Result<Vec<u64>, RescaleError> {
    // Brokers that do not answer are named as such (a fencing would only time out).
    crate::ingest::kafka::discover(config, crate::ingest::kafka::CONNECT_PATIENCE)?;
    for i in 0..from.max(to) {
        let id = transactional_id(config, i);
        kafka_out::fence(config, &id)?;
        kafka_out::fence(config, &second_transactional_id(&id))?;
    }
    let ids: Vec<String> = (0..from).map(|i| transactional_id(config, i)).collect();
    let found = progress::last_committed(config, &ids)?;
    let mut seqs = Vec::with_capacity(from);
    let mut none = Vec::new();
    let mut lost = (Vec::new(), Vec::new());
    let topic = &config.egress.kafka.progress_topic;
    for (i, id) in ids.iter().enumerate() {
        let dir = super::shard_dir(config, i);
        match found.get(id) {
            Some(p) => seqs.push(p.seq),
            // Its mark says transactions committed: the records are lost, not absent (the
            // start refuses it the same way).
            None if committed_mark::committed_here(&dir, id, topic) => {
                lost.0.push(dir);
                lost.1.push(id.as_str());
            }
            None => none.push(format!("shard {i} (transactional.id {id})")),
        }
    }
    if !lost.0.is_empty() {
        return Err(RescaleError::Refused(committed_mark::lost(
            &lost.0, &lost.1, topic,
        )));
    }
    if !none.is_empty() {
        return Err(RescaleError::Refused(format!(
            "exactly_once: the progress topic {:?} holds no committed transaction of {}: no checkpoint of theirs is known to match the Scores committed, so there is nothing to re-deal for them (a start would set their checkpoints aside and take the input again). Start once with the old shard count, let it commit, stop it, and rescale then",
            config.egress.kafka.progress_topic,
            none.join(", ")
        )));
    }
    Ok(seqs)
}

/// exactly_once, once the new shards are staged (or partly moved in): commit, for each new
/// shard's transactional.id, the progress record naming checkpoint `seq`, and write the
/// shard's committed mark. Committing it again names the same checkpoint: a swap resumed
/// after a crash does this again.
pub(super) fn commit_progress(
    config: &Config,
    root: &Path,
    to: usize,
    seq: u64,
) -> Result<(), RescaleError> {
    if config.egress.kafka.delivery != Delivery::ExactlyOnce
        || !config.ingest.kafka.enabled()
        || config.ingest.kafka.membership != Membership::Deal
    {
        return Err(RescaleError::Refused(format!(
            "the rescale under way re-dealt an exactly_once Kafka state: its new shards' checkpoint {seq} is still to be named in the progress topic, which needs the config the service runs with (ingest.kafka on, egress.kafka.delivery = \"exactly_once\")"
        )));
    }
    let topic = &config.egress.kafka.progress_topic;
    for j in 0..to {
        let id = transactional_id(config, j);
        let p = progress::Progress {
            seq,
            changelog: false,
        };
        kafka_out::commit_progress_alone(config, &id, p)?;
        let staged = root.join(STAGING).join(format!("shard-{j}"));
        let dir = if staged.is_dir() {
            staged
        } else {
            root.join(format!("shard-{j}"))
        };
        let mark = committed_mark::path(&dir);
        let text = committed_mark::text(&id, topic);
        checkpoint::disk::write_synced(&mark, &[text.as_bytes()]).map_err(|source| {
            RescaleError::Io {
                what: "writing",
                path: mark.clone(),
                source,
            }
        })?;
        tracing::info!(shard = j, transactional_id = %id, checkpoint = seq, "progress record committed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deal(counts: &[i32], bases: &[i32], to: usize) -> KafkaDeal {
        let table = if counts == bases {
            PartitionTable::balanced(counts, to)
        } else {
            PartitionTable::grown(bases, counts, to).unwrap()
        };
        KafkaDeal {
            topics: vec!["a".into(), "b".into()],
            to,
            owner_of: table
                .owners
                .iter()
                .map(|(p, s)| (p.source_tag(), *s))
                .collect(),
            old_layout: String::new(),
            new_layout: String::new(),
            committed: None,
        }
    }

    fn tag(topic: u16, partition: i32) -> u64 {
        PartitionId { topic, partition }.source_tag()
    }

    #[test]
    fn partitions_go_whole_to_the_shard_the_new_table_gives_and_their_offsets_with_them() {
        let d = deal(&[4, 2], &[4, 2], 3);
        let t = PartitionTable::balanced(&[4, 2], 3);
        for (p, s) in &t.owners {
            // Every key of the partition, whatever its hash.
            for key in [1u64, 2, 99, u64::MAX] {
                assert_eq!(d.shard_of(p.source_tag(), key), Some(*s));
            }
        }
        assert_eq!(d.shard_of(0, 7), Some(crate::route::owner(7, 3)));
        assert_eq!(d.shard_of(tag(0, 4), 7), None, "no such partition");
        assert_eq!(d.name_of(tag(1, 1)), "b/1");
        let at = |topic: &str, partition, next| PartitionOffset {
            topic: topic.into(),
            partition,
            next,
        };
        let dealt = d
            .deal_offsets(&[at("b", 1, 5), at("a", 0, 10), at("a", 3, 7)])
            .unwrap();
        let owner = |t: u16, p: i32| d.shard_of(tag(t, p), 0).unwrap();
        assert_eq!(dealt.iter().map(Vec::len).sum::<usize>(), 3);
        assert!(dealt[owner(0, 0)].contains(&at("a", 0, 10)));
        assert!(dealt[owner(0, 3)].contains(&at("a", 3, 7)));
        assert!(dealt[owner(1, 1)].contains(&at("b", 1, 5)));
        assert!(d.deal_offsets(&[at("c", 0, 1)]).is_err());
        assert!(d.deal_offsets(&[at("a", 9, 1)]).is_err());
    }

    #[test]
    fn a_grown_topic_keeps_each_family_on_one_shard() {
        // Topic a dealt over 2 partitions, grown to 4: partitions 2 and 3 carry the keys of
        // families 0 and 1, whose tags the records keep.
        let d = deal(&[4, 2], &[2, 2], 3);
        assert_eq!(d.shard_of(tag(0, 2), 0), d.shard_of(tag(0, 0), 0));
        assert_eq!(d.shard_of(tag(0, 3), 0), d.shard_of(tag(0, 1), 0));
        assert_ne!(d.shard_of(tag(0, 0), 0), d.shard_of(tag(0, 1), 0));
    }
}
