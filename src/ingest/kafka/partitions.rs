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

    /// The partition a record's `source` tag names (`source_tag` read back); None for UDP's 0
    /// and for a tag no `source_tag` gives (a topic index past 16 bits, `MOVED`).
    pub fn from_source_tag(tag: u64) -> Option<Self> {
        let raw = tag.checked_sub(1)?;
        Some(Self {
            topic: u16::try_from(raw >> 32).ok()?,
            partition: raw as u32 as i32,
        })
    }

    /// The tag this partition's keys carry when its topic's state was first dealt over
    /// `bases` partitions (per topic; `PartitionTable::bases`): its family's (partition mod
    /// the base), so a key that moved to an added partition of its family finds its state.
    /// Its own tag when the topic did not grow.
    pub fn family_tag(self, bases: &[i32]) -> u64 {
        let base = bases.get(usize::from(self.topic)).copied().unwrap_or(0);
        let partition = if base > 0 {
            self.partition % base
        } else {
            self.partition
        };
        PartitionId { partition, ..self }.source_tag()
    }
}

/// Partition -> shard, in (topic, partition) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// Rises whenever the assignment changes (scale-out moves partitions; one instance keeps 1).
    pub version: u64,
    pub owners: Vec<(PartitionId, usize)>,
    /// Per topic, the partition count its state was first dealt over (its families): a topic
    /// grown to a multiple of it since (`grown`) keeps partition q's keys in family q % base,
    /// on one shard, because a modulo partitioner (Kafka's and librdkafka's defaults) moves a
    /// key only from partition p to some p + k * base. Equal to the count when not grown.
    pub bases: Vec<i32>,
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
        Self {
            version: 1,
            owners,
            bases: counts.iter().map(|&n| n.max(0)).collect(),
        }
    }

    /// The deal of a topic set whose state was dealt over `bases` partitions and that has
    /// `counts` now, each a multiple of its base: the first `bases` dealt as before, every
    /// added partition q to the shard of q % base, its family (None when a count is not a
    /// multiple of its base, or fewer: keys would move between shards, or the topic was made
    /// again).
    pub fn grown(bases: &[i32], counts: &[i32], shards: usize) -> Option<Self> {
        if bases.len() != counts.len()
            || bases
                .iter()
                .zip(counts)
                .any(|(&b, &n)| b <= 0 || n < b || n % b != 0)
        {
            return None;
        }
        let mut t = Self::balanced(bases, shards);
        let mut added = Vec::new();
        for (topic, (&b, &n)) in bases.iter().zip(counts).enumerate() {
            for q in b..n {
                let family = PartitionId {
                    topic: topic as u16,
                    partition: q % b,
                };
                let shard = t.owners.iter().find(|(p, _)| *p == family)?.1;
                added.push((
                    PartitionId {
                        topic: topic as u16,
                        partition: q,
                    },
                    shard,
                ));
            }
        }
        t.owners.extend(added);
        t.owners.sort();
        Some(t)
    }

    /// The families (`bases`) a dealt layout (`layout`) names for `topics`: "t:4/2" is four
    /// partitions in two families, "t:4" four in four. None when the layout is not a dealt
    /// one over these topics.
    pub fn bases_of_layout(layout: &str, topics: &[String]) -> Option<(Vec<i32>, Vec<i32>)> {
        let kafka = layout.split(';').find_map(|p| p.strip_prefix("kafka="))?;
        let named = kafka_topics(kafka)?;
        if named.len() != topics.len() || named.iter().zip(topics).any(|(n, t)| n.0 != t) {
            return None;
        }
        Some(named.iter().map(|&(_, c, b)| (c, b)).unzip())
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
            .enumerate()
            .map(|(i, (t, n))| match self.bases.get(i) {
                Some(b) if b != n => format!("{t}:{n}/{b}"),
                _ => format!("{t}:{n}"),
            })
            .collect();
        format!("kafka={};over={shards}", parts.join(","))
    }
}

/// A layout's `kafka=` part read back: (topic, count, families) per topic, "t:4/2" being four
/// partitions in two families and "t:4" four in four (`PartitionTable::layout`).
fn kafka_topics(kafka: &str) -> Option<Vec<(&str, i32, i32)>> {
    kafka
        .split(',')
        .map(|t| {
            let (name, n) = t.rsplit_once(':')?;
            let (count, base) = match n.split_once('/') {
                Some((c, b)) => (c.parse().ok()?, b.parse().ok()?),
                None => {
                    let c: i32 = n.parse().ok()?;
                    (c, c)
                }
            };
            Some((name, count, base))
        })
        .collect()
}

/// Whether state written under the (state) layout `found` may be restored into `want`: the
/// same but for the `kafka=` part's input topics, grown to multiples of their families
/// (`PartitionTable::grown`): the same topics in order, the same families, each count at
/// least the one before. The restore's rule for a dealt state across a topic's growth.
pub fn layout_grows_into(found: &str, want: &str) -> bool {
    let (f, w): (Vec<&str>, Vec<&str>) = (found.split(';').collect(), want.split(';').collect());
    if f.len() != w.len() {
        return false;
    }
    f.iter().zip(&w).all(|(a, b)| {
        if a == b {
            return true;
        }
        let (Some(a), Some(b)) = (a.strip_prefix("kafka="), b.strip_prefix("kafka=")) else {
            return false;
        };
        let (Some(a), Some(b)) = (kafka_topics(a), kafka_topics(b)) else {
            return false;
        };
        a.len() == b.len()
            && a.iter().zip(&b).all(|((na, ca, ba), (nb, cb, bb))| {
                na == nb && ba == bb && *bb > 0 && cb >= ca && cb % bb == 0
            })
    })
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
    fn a_topic_grown_to_a_multiple_deals_each_added_partition_to_its_familys_shard() {
        let topics = vec!["a".to_owned(), "b".to_owned()];
        let before = PartitionTable::balanced(&[2, 3], 2);
        assert_eq!(before.layout(&topics, 2), "kafka=a:2,b:3;over=2");
        let grown = PartitionTable::grown(&[2, 3], &[4, 6], 2).unwrap();
        assert_eq!(grown.owners.len(), 10);
        let shard_of = |t: &PartitionTable, topic: u16, partition: i32| {
            t.owners
                .iter()
                .find(|(p, _)| *p == PartitionId { topic, partition })
                .map(|(_, s)| *s)
        };
        // The partitions dealt before keep their shards (their state is there) ...
        for (p, s) in &before.owners {
            assert_eq!(shard_of(&grown, p.topic, p.partition), Some(*s));
        }
        // ... and each added one goes where its family lives, sharing the family's tag.
        for (topic, base, n) in [(0u16, 2, 4), (1, 3, 6)] {
            for q in base..n {
                let id = PartitionId {
                    topic,
                    partition: q,
                };
                let family = PartitionId {
                    topic,
                    partition: q % base,
                };
                assert_eq!(
                    shard_of(&grown, topic, q),
                    shard_of(&grown, topic, q % base)
                );
                assert_eq!(id.family_tag(&grown.bases), family.source_tag());
            }
        }
        assert_eq!(grown.layout(&topics, 2), "kafka=a:4/2,b:6/3;over=2");
        assert_eq!(
            PartitionTable::bases_of_layout("shards=2;kafka=a:4/2,b:6/3;over=2", &topics),
            Some((vec![4, 6], vec![2, 3]))
        );
        assert_eq!(
            PartitionTable::bases_of_layout("shards=2;kafka=a:2,b:3;over=2", &topics),
            Some((vec![2, 3], vec![2, 3]))
        );
        // Grown again (to 8 and 9 over the same families): the same rule.
        let again = PartitionTable::grown(&[2, 3], &[8, 9], 2).unwrap();
        for (p, s) in &grown.owners {
            assert_eq!(shard_of(&again, p.topic, p.partition), Some(*s));
        }
        // Not a multiple (keys would move across families and shards), fewer (made again),
        // or other topics: no growth deal.
        assert_eq!(PartitionTable::grown(&[2, 3], &[3, 6], 2), None);
        assert_eq!(PartitionTable::grown(&[2, 3], &[2, 2], 2), None);
        assert_eq!(PartitionTable::grown(&[2], &[4, 6], 2), None);
        assert_eq!(
            PartitionTable::bases_of_layout("kafka=x:2,b:3;over=2", &topics),
            None
        );
        // Not grown: every partition its own family.
        assert_eq!(
            PartitionId {
                topic: 1,
                partition: 2
            }
            .family_tag(&before.bases),
            PartitionId {
                topic: 1,
                partition: 2
            }
            .source_tag()
        );
    }

    #[test]
    fn a_state_restores_across_its_topics_growth_to_multiples_only() {
        let base = "shards=2;features=a;kafka=a:2,b:3;over=2";
        for (want, ok) in [
            (base, true),
            ("shards=2;features=a;kafka=a:4/2,b:3;over=2", true),
            ("shards=2;features=a;kafka=a:8/2,b:9/3;over=2", true),
            // Not a multiple, fewer, families changed, other topics, other parts.
            ("shards=2;features=a;kafka=a:5/2,b:3;over=2", false),
            ("shards=2;features=a;kafka=a:5,b:3;over=2", false),
            ("shards=2;features=a;kafka=a:1,b:3;over=2", false),
            ("shards=2;features=a;kafka=a:4/4,b:3;over=2", false),
            ("shards=2;features=a;kafka=x:4/2,b:3;over=2", false),
            ("shards=2;features=a;kafka=a:4/2;over=2", false),
            ("shards=3;features=a;kafka=a:4/2,b:3;over=3", false),
            ("shards=2;features=b;kafka=a:4/2,b:3;over=2", false),
        ] {
            assert_eq!(layout_grows_into(base, want), ok, "{want}");
        }
        // Once grown, a later checkpoint's layout goes on growing from the same families.
        assert!(layout_grows_into(
            "kafka=a:4/2,b:3;over=2",
            "kafka=a:8/2,b:6/3;over=2"
        ));
        assert!(!layout_grows_into("kafka=a:4/2;over=2", "kafka=a:2;over=2"));
    }

    #[test]
    fn source_tags_are_distinct_and_never_udp() {
        let t = PartitionTable::balanced(&[3, 3], 2);
        for (p, _) in &t.owners {
            assert_eq!(PartitionId::from_source_tag(p.source_tag()), Some(*p));
        }
        assert_eq!(PartitionId::from_source_tag(0), None);
        assert_eq!(PartitionId::from_source_tag(u64::MAX), None);
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
