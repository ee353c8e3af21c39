//! Which shard owns which Kafka partition: a versioned table (as Redpanda keeps its
//! partition -> shard map), balanced by partition count. Pure: built from the topics'
//! partition counts, tested without a broker.

/// One Kafka partition this instance consumes. `topic` indexes `ingest.kafka.topics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: u16,
    pub partition: i32,
}

impl PartitionId {
    /// The tag a key's record carries when this partition owns it (`Record::source`): never 0,
    /// which is UDP's.
    pub fn source_tag(self) -> u64 {
        1 + ((u64::from(self.topic) << 32) | u64::from(self.partition as u32))
    }
}

/// Partition -> shard, in (topic, partition) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// Rises whenever the assignment changes (scale-out moves partitions; one instance keeps 1).
    pub version: u64,
    pub owners: Vec<(PartitionId, usize)>,
}

impl PartitionTable {
    /// Deal the partitions of every topic (`counts[t]` partitions of topic t) round-robin over
    /// `shards`, continuing across topics, so shard loads differ by at most one partition.
    pub fn balanced(counts: &[i32], shards: usize) -> Self {
        let mut owners = Vec::new();
        let mut next = 0usize;
        for (t, &n) in counts.iter().enumerate() {
            for p in 0..n.max(0) {
                owners.push((
                    PartitionId {
                        topic: t as u16,
                        partition: p,
                    },
                    next % shards.max(1),
                ));
                next += 1;
            }
        }
        Self { version: 1, owners }
    }

    /// The partitions shard `shard` owns.
    pub fn owned_by(&self, shard: usize) -> Vec<PartitionId> {
        self.owners
            .iter()
            .filter(|(_, s)| *s == shard)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Group membership's layout: the topics and their partition counts, no deal (a shard's
    /// checkpoint holds whichever partitions it was given, each checked when assigned).
    pub fn group_layout(&self, topics: &[String]) -> String {
        let dealt = self.layout(topics, 1);
        let kafka = dealt.split(';').next().unwrap_or_default();
        format!("{kafka};group")
    }

    /// What a checkpoint depends on: restoring a shard's state needs the same partitions on it
    /// (a key's state lives with its partition). Topic names, partition counts, shard count.
    pub fn layout(&self, topics: &[String], shards: usize) -> String {
        let mut counts = vec![0i32; topics.len()];
        for (p, _) in &self.owners {
            if let Some(c) = counts.get_mut(usize::from(p.topic)) {
                *c = (*c).max(p.partition + 1);
            }
        }
        let parts: Vec<String> = topics
            .iter()
            .zip(&counts)
            .map(|(t, n)| format!("{t}:{n}"))
            .collect();
        format!("kafka={};over={shards}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_by_count_across_topics() {
        let t = PartitionTable::balanced(&[4, 3], 2);
        assert_eq!(t.owners.len(), 7);
        let a = t.owned_by(0);
        let b = t.owned_by(1);
        assert_eq!((a.len(), b.len()), (4, 3));
        // Every partition exactly once.
        let mut all: Vec<_> = a.iter().chain(&b).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 7);
        // One shard: it owns everything.
        assert_eq!(PartitionTable::balanced(&[4, 3], 1).owned_by(0).len(), 7);
        // More shards than partitions: some own none.
        let t = PartitionTable::balanced(&[2], 4);
        assert_eq!(t.owned_by(3), vec![]);
    }

    #[test]
    fn source_tags_are_distinct_and_never_udp() {
        let t = PartitionTable::balanced(&[3, 3], 2);
        let mut tags: Vec<u64> = t.owners.iter().map(|(p, _)| p.source_tag()).collect();
        assert!(tags.iter().all(|&s| s != 0));
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), 6);
    }

    #[test]
    fn layout_names_topics_partitions_and_shards() {
        let topics = vec!["a".to_owned(), "b".to_owned()];
        let t = PartitionTable::balanced(&[4, 1], 2);
        assert_eq!(t.layout(&topics, 2), "kafka=a:4,b:1;over=2");
        assert_ne!(
            t.layout(&topics, 2),
            PartitionTable::balanced(&[5, 1], 2).layout(&topics, 2)
        );
        // Group membership names no deal: any shard count, any partitions on a shard.
        assert_eq!(t.group_layout(&topics), "kafka=a:4,b:1;group");
        assert_eq!(
            PartitionTable::balanced(&[4, 1], 1).group_layout(&topics),
            t.group_layout(&topics)
        );
    }
}
