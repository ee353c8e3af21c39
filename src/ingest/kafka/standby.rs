//! Standby replicas (`ingest.kafka.standby_replicas = N`, group membership): a helper thread
//! per instance tails the changelog partitions of input partitions other instances own into a
//! warm copy (each key's newest image, in memory), so that when one of them moves here its
//! new owner reads only the changelog's tail instead of all of it (Kafka Streams' standby
//! tasks). A standby never serves.
//!
//! Which instance stands by for which partition is a rule every member computes alike from
//! the group's description (DescribeGroups, once a second): the instances in name order, a
//! partition's standbys are the N after its owner (wrapping). librdkafka's assignors know
//! nothing of standbys (Kafka Streams prefers a caught-up one with its own assignor, KIP-441),
//! so a partition may move to an instance that is not its standby; that one rebuilds it from
//! the whole changelog, as without standbys. With two instances the standby is always the
//! one that takes over.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::client_errors::Counted;
use super::watermarks::{PartitionGauges, Role};
use super::{consumer_config, KafkaError};
use crate::config::Config;
use crate::egress::kafka::changelog::WHOLE_MARKER;

/// One input partition and its changelog partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyPartition {
    pub topic: String,
    pub partition: i32,
    pub changelog: i32,
}

/// A warm copy of one changelog partition: every key's newest image up to `next_offset`.
#[derive(Debug, Default)]
pub struct WarmCopy {
    /// The changelog offset the copy holds everything before.
    pub next_offset: i64,
    pub images: HashMap<u64, Vec<u8>>,
    /// Not a standby's: the shard's own older checkpoint, at the position recorded with it,
    /// or a partition this instance handed over (`Standbys::keep`).
    pub local: bool,
    /// A handed-over partition's copy, not tailed: usable until then (it goes stale: see
    /// `Standbys::keep`). None for a copy the tail keeps up to date.
    pub kept_until: Option<Instant>,
    /// Tailed from a changelog partition that had lost records when the tail began (its
    /// start offset above 0, or not known): the copy may lack their keys, so no takeover uses
    /// it (the rebuild then reads the changelog itself, or replays the input when the
    /// changelog lost records).
    pub partial: bool,
}

impl WarmCopy {
    fn usable(&self, now: Instant) -> bool {
        !self.partial && self.kept_until.is_none_or(|until| now < until)
    }

    /// A tailed changelog record into the copy. Records below the copy's offset are ones it
    /// holds already (a kept copy put in while the tail still read the partition from an
    /// older offset): skipped, so the offset never goes back.
    fn apply(&mut self, offset: i64, key: u64, value: Option<&[u8]>) {
        if offset < self.next_offset {
            return;
        }
        match value {
            Some(v) => {
                self.images.insert(key, v.to_vec());
            }
            None => {
                self.images.remove(&key);
            }
        }
        self.next_offset = offset + 1;
    }

    /// A whole-state marker tailed (`changelog::WHOLE_MARKER`): every live key of the
    /// partition follows it, so a copy that lacked the keys of deleted records is whole once
    /// it reads on from here.
    fn marked(&mut self, offset: i64) {
        if offset < self.next_offset {
            return;
        }
        self.partial = false;
        self.next_offset = offset + 1;
    }
}

/// What `cluster status` shows of a standby partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyStatus {
    pub topic: String,
    pub partition: i32,
    /// The instance that owns it now.
    pub owner: String,
    pub keys: u64,
    pub changelog_next_offset: i64,
    /// Changelog records not in the copy yet (None until a fetch told the end).
    pub changelog_lag: Option<i64>,
}

#[derive(Default)]
struct Shared {
    /// By changelog partition.
    copies: HashMap<i32, WarmCopy>,
    /// Taken by a shard taking the partition up, with the take's number: blocked from the
    /// tail until a look reads the gauges after the take (the shard marks the partition
    /// restoring before it takes the copy, so from then on the gauges say whether it is here).
    taken: HashMap<i32, u64>,
    /// Takes so far.
    takes: u64,
    status: Vec<StandbyStatus>,
    /// Keys over every copy went past `ingest.kafka.standby_keys_max` (logged once).
    full_logged: bool,
}

/// The standbys' shared side: the tailing thread fills it, a shard taking a partition up takes
/// its copy, `cluster status` reads its status.
#[derive(Clone, Default)]
pub struct Standbys {
    shared: Arc<Mutex<Shared>>,
}

/// Only the partitions stood by for (the copies can hold millions of images).
impl std::fmt::Debug for Standbys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standbys")
            .field("status", &self.status())
            .finish()
    }
}

impl Standbys {
    /// The warm copy of `changelog` partition, if this instance stood by for it or handed
    /// it over (and that copy is not stale); from now on it is not tailed (the caller reads
    /// the rest of the changelog from `next_offset`).
    pub fn take(&self, changelog: i32) -> Option<WarmCopy> {
        let mut s = self.shared.lock().ok()?;
        s.takes += 1;
        let at = s.takes;
        s.taken.insert(changelog, at);
        s.copies
            .remove(&changelog)
            .filter(|c| c.usable(Instant::now()))
    }

    /// Keys the copies may still take (`keys_max` less those of every fresh copy but the
    /// ones of `replacing`, which a keep of them would replace).
    pub fn room(&self, replacing: &[i32], keys_max: usize) -> usize {
        let Ok(s) = self.shared.lock() else {
            return 0;
        };
        keys_max.saturating_sub(held(&s.copies, replacing, Instant::now()))
    }

    /// A partition handed over keeps its keys here, at the changelog position its handover
    /// committed (`copy.next_offset`), so that if it comes back in this run it is rebuilt
    /// from them plus the changelog after that position, not from the changelog's start
    /// (Kafka Streams keeps a revoked task's state directory for `state.cleanup.delay.ms`).
    /// Kept for `keep` at most: past half the changelog's tombstone retention a key deleted
    /// meanwhile could come back (see `positions`), and memory is not held for partitions
    /// that stay away. Refused (false) when the copies would hold more than `keys_max` keys;
    /// the tail, if on, takes the copy up from its position when this instance becomes a
    /// standby of the partition.
    pub fn keep(
        &self,
        changelog: i32,
        mut copy: WarmCopy,
        keep: Duration,
        keys_max: usize,
    ) -> bool {
        let Ok(mut s) = self.shared.lock() else {
            return false;
        };
        let now = Instant::now();
        s.copies.retain(|_, c| c.usable(now));
        if held(&s.copies, &[changelog], now) + copy.images.len() > keys_max {
            return false;
        }
        copy.local = true;
        copy.kept_until = Some(now + keep);
        s.copies.insert(changelog, copy);
        true
    }

    /// The number of the last take, read before a look reads the gauges.
    fn takes_so_far(&self) -> u64 {
        self.shared.lock().map(|s| s.takes).unwrap_or(0)
    }

    pub fn status(&self) -> Vec<StandbyStatus> {
        self.shared
            .lock()
            .map(|s| s.status.clone())
            .unwrap_or_default()
    }
}

/// The rule: for each partition an instance other than `me` owns, whether `me` is among the
/// `replicas` instances after its owner in name order. `owners`: input partition index ->
/// owning instance.
pub fn standing_by(
    me: &str,
    replicas: usize,
    owners: &HashMap<usize, String>,
    instances: &BTreeSet<String>,
) -> Vec<usize> {
    let ring: Vec<&String> = instances.iter().collect();
    let mut out: Vec<usize> = owners
        .iter()
        .filter(|(_, owner)| owner.as_str() != me)
        .filter(|(_, owner)| {
            let Some(at) = ring.iter().position(|i| *i == *owner) else {
                return false;
            };
            (1..=replicas.min(ring.len().saturating_sub(1)))
                .filter_map(|k| ring.get((at + k) % ring.len()))
                .any(|i| i.as_str() == me)
        })
        .map(|(&p, _)| p)
        .collect();
    out.sort_unstable();
    out
}

/// The partitions (indexes) to tail now: those the rule gives `me`, plus any it has a copy
/// of while the group moves it (nobody owns it: its owner left; or the group gave it to
/// `me` and no shard here has taken it up yet: that is when the copy is about to be
/// needed), less those `blocked` (a shard here has it, or took its copy).
pub fn wanted(
    (me, replicas): (&str, usize),
    (owners, instances): (&HashMap<usize, String>, &BTreeSet<String>),
    partitions: usize,
    has_copy: impl Fn(usize) -> bool,
    blocked: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let mut want = standing_by(me, replicas, owners, instances);
    want.extend(
        (0..partitions)
            .filter(|i| owners.get(i).is_none_or(|o| o == me))
            .filter(|&i| has_copy(i)),
    );
    want.sort_unstable();
    want.dedup();
    want.retain(|&i| !blocked(i));
    want
}

/// Keys in the fresh copies, but those of `except`.
fn held(copies: &HashMap<i32, WarmCopy>, except: &[i32], now: Instant) -> usize {
    copies
        .iter()
        .filter(|(c, copy)| copy.usable(now) && !except.contains(c))
        .map(|(_, copy)| copy.images.len())
        .sum()
}

/// The copies a look keeps: those wanted, and handed-over partitions' copies not wanted by
/// the tail; none gone stale.
fn prune(copies: &mut HashMap<i32, WarmCopy>, wanted: &HashSet<i32>, now: Instant) {
    copies.retain(|c, copy| copy.usable(now) && (wanted.contains(c) || copy.kept_until.is_some()));
}

/// Forgets the takes numbered up to `takes_before` (those made before the gauges were read).
fn forget_settled(taken: &mut HashMap<i32, u64>, takes_before: u64) {
    taken.retain(|_, at| *at > takes_before);
}

/// A consumer-protocol assignment (the bytes a group member was assigned): (topic,
/// partition) pairs. None when malformed.
pub fn parse_assignment(b: &[u8]) -> Option<Vec<(String, i32)>> {
    let mut r = Reader(b);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let topic = std::str::from_utf8(r.take(len)?).ok()?.to_owned();
        let n = r.i32()?;
        for _ in 0..n.max(0) {
            out.push((topic.clone(), r.i32()?));
        }
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// The instance name in a sluice member's client.id (`sluice-INSTANCE-SHARD`).
fn instance_of(client_id: &str) -> Option<&str> {
    let rest = client_id.strip_prefix("sluice-")?;
    let (instance, shard) = rest.rsplit_once('-')?;
    shard.parse::<usize>().ok()?;
    Some(instance)
}

/// The tailing thread's belongings.
pub struct StandbyTail {
    pub config: Config,
    pub partitions: Vec<StandbyPartition>,
    pub gauges: PartitionGauges,
    pub standbys: Standbys,
}

impl StandbyTail {
    /// Until `stop`: once a second, who owns what and so what to stand by for; in between,
    /// the tail of those changelog partitions into their copies.
    pub fn run(self, stop: &dyn Fn() -> bool) {
        let consumer: BaseConsumer<Counted> = match consumer_config(&self.config)
            .set("receive.message.max.bytes", "2147483647")
            .create_with_context(Counted("standby tail"))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("standby replicas off: creating the changelog tail consumer: {e}");
                return;
            }
        };
        let topic = self
            .config
            .egress
            .kafka
            .changelog_topic(&self.config.ingest.kafka.group);
        let mut tailed: Vec<usize> = Vec::new();
        let mut owners: HashMap<usize, String> = HashMap::new();
        let mut next_look = Instant::now();
        while !stop() {
            if Instant::now() >= next_look {
                next_look = Instant::now() + Duration::from_secs(1);
                // rdkafka's GroupMemberInfo::client_id panics on a client.id that is not
                // UTF-8 (another client in the group): that look is skipped, not the thread.
                let looked =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.look(&consumer)))
                        .unwrap_or_else(|_| {
                            Err(KafkaError::Other(
                                "a member of the group has a client.id that is not UTF-8".into(),
                            ))
                        });
                match looked {
                    Ok((want, who)) => {
                        owners = who;
                        if want != tailed {
                            if let Err(e) = self.retail(&consumer, &topic, &want) {
                                tracing::warn!("standby replicas: {e}");
                                continue;
                            }
                            tailed = want;
                        }
                    }
                    Err(e) => tracing::warn!("standby replicas: describing the group: {e}"),
                }
                self.publish(&consumer, &topic, &tailed, &owners);
            }
            if tailed.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            self.tail(&consumer);
        }
    }

    /// The partitions to stand by for now, and every partition's owner.
    fn look(
        &self,
        consumer: &BaseConsumer<Counted>,
    ) -> Result<(Vec<usize>, HashMap<usize, String>), KafkaError> {
        let k = &self.config.ingest.kafka;
        let takes_before = self.standbys.takes_so_far();
        let list = consumer
            .fetch_group_list(Some(&k.group), Duration::from_secs(5))
            .map_err(KafkaError::client("describing the group"))?;
        let index: HashMap<(&str, i32), usize> = self
            .partitions
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.topic.as_str(), s.partition), i))
            .collect();
        let mut owners = HashMap::new();
        let mut instances = BTreeSet::new();
        instances.insert(k.instance_id.clone());
        for g in list.groups() {
            for m in g.members() {
                let Some(instance) = instance_of(m.client_id()) else {
                    continue;
                };
                instances.insert(instance.to_owned());
                for (t, p) in m
                    .assignment()
                    .and_then(parse_assignment)
                    .unwrap_or_default()
                {
                    if let Some(&i) = index.get(&(t.as_str(), p)) {
                        owners.insert(i, instance.to_owned());
                    }
                }
            }
        }
        // A shard here owns it or is taking it up (the group's view can lag this one's).
        let here: HashSet<(&str, i32)> = super::watermarks::dealt(&self.gauges)
            .iter()
            .filter(|g| g.role() != Role::None)
            .map(|g| (g.topic.as_str(), g.partition))
            .collect();
        let mine = |i: usize| {
            self.partitions
                .get(i)
                .is_some_and(|s| here.contains(&(s.topic.as_str(), s.partition)))
        };
        if let Ok(mut s) = self.standbys.shared.lock() {
            // A take the gauges read above already reflect is settled: the gauges tell
            // whether a shard here has the partition. Not a partition that was taken up and
            // released between two looks: that one was stuck blocked once (its new owner then
            // had no standby).
            forget_settled(&mut s.taken, takes_before);
            let changelog_of = |i: usize| self.partitions.get(i).map(|p| p.changelog);
            let want = wanted(
                (&k.instance_id, k.standby_replicas),
                (&owners, &instances),
                self.partitions.len(),
                |i| changelog_of(i).is_some_and(|c| s.copies.contains_key(&c)),
                |i| mine(i) || changelog_of(i).is_none_or(|c| s.taken.contains_key(&c)),
            );
            // Copies no longer wanted are dropped, but for a handed-over partition's until it
            // goes stale.
            let keep: HashSet<i32> = want
                .iter()
                .filter_map(|&i| self.partitions.get(i).map(|p| p.changelog))
                .collect();
            prune(&mut s.copies, &keep, Instant::now());
            return Ok((want, owners));
        }
        Ok((Vec::new(), owners))
    }

    /// Tail `want` from where each copy is (the start for a new one).
    fn retail(
        &self,
        consumer: &BaseConsumer<Counted>,
        topic: &str,
        want: &[usize],
    ) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::with_capacity(want.len());
        // Each partition's start offset, asked before the lock (a shard taking a copy waits
        // on it): a new copy tailed from a start above 0 lacks the deleted records' keys.
        let starts: HashMap<i32, i64> = want
            .iter()
            .filter_map(|&i| self.partitions.get(i))
            .filter_map(|p| {
                let (low, _) = consumer
                    .fetch_watermarks(topic, p.changelog, Duration::from_secs(5))
                    .ok()?;
                Some((p.changelog, low))
            })
            .collect();
        let Ok(mut s) = self.standbys.shared.lock() else {
            return Ok(());
        };
        for p in want.iter().filter_map(|&i| self.partitions.get(i)) {
            let copy = s.copies.entry(p.changelog).or_default();
            if copy.next_offset == 0 && copy.images.is_empty() {
                let start = starts.get(&p.changelog).copied();
                copy.partial = start.is_none_or(|low| low > 0);
                if copy.partial {
                    tracing::warn!(changelog = topic, partition = p.changelog, start = ?start, "standby replicas: this changelog partition lost records (or its start is not known): its copy is kept for status but no takeover uses it");
                }
            }
            // Tailed from here on, so kept fresh (a kept copy was found usable by the look): a
            // standby's copy now, counted as warm keys at a takeover.
            copy.kept_until = None;
            copy.local = false;
            let at = if copy.next_offset > 0 {
                Offset::Offset(copy.next_offset)
            } else {
                Offset::Beginning
            };
            tpl.add_partition_offset(topic, p.changelog, at)
                .map_err(KafkaError::client("standby assignment"))?;
        }
        drop(s);
        consumer
            .assign(&tpl)
            .map_err(KafkaError::client("standby assign"))?;
        tracing::info!(changelog_partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "standby replicas: tailing");
        Ok(())
    }

    /// Up to ~100 ms of changelog records into the copies.
    fn tail(&self, consumer: &BaseConsumer<Counted>) {
        let until = Instant::now() + Duration::from_millis(100);
        let keys_max = self.config.ingest.kafka.standby_keys_max;
        while Instant::now() < until {
            let Some(polled) = consumer.poll(Duration::from_millis(20)) else {
                continue;
            };
            let m = match polled {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("standby tail: {e}");
                    continue;
                }
            };
            if m.key() == Some(WHOLE_MARKER) {
                let Ok(mut s) = self.standbys.shared.lock() else {
                    return;
                };
                if let Some(copy) = s.copies.get_mut(&m.partition()) {
                    copy.marked(m.offset());
                }
                continue;
            }
            let Some(key) = m
                .key()
                .and_then(|k| <[u8; 8]>::try_from(k).ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let Ok(mut s) = self.standbys.shared.lock() else {
                return;
            };
            let total: usize = s.copies.values().map(|c| c.images.len()).sum();
            let full = total >= keys_max;
            let Some(copy) = s.copies.get_mut(&m.partition()) else {
                continue;
            };
            match m.payload() {
                Some(_) if full && !copy.images.contains_key(&key) => {
                    // Over the bound: this copy is no longer whole, so it is dropped (the
                    // takeover reads the whole changelog partition instead).
                    s.copies.remove(&m.partition());
                    if !s.full_logged {
                        s.full_logged = true;
                        tracing::warn!(keys_max, "standby replicas: ingest.kafka.standby_keys_max reached; a copy was dropped");
                    }
                    continue;
                }
                value => copy.apply(m.offset(), key, value),
            }
        }
    }

    fn publish(
        &self,
        consumer: &BaseConsumer<Counted>,
        topic: &str,
        tailed: &[usize],
        owners: &HashMap<usize, String>,
    ) {
        let Ok(mut s) = self.standbys.shared.lock() else {
            return;
        };
        let topic_c = std::ffi::CString::new(topic).unwrap_or_default();
        // The consumer's own position goes past a transaction's commit marker, which a copy's
        // next offset (after its last record) stops before: without it a copy caught up
        // showed a lag of 1 for good.
        let positions: HashMap<i32, i64> = consumer
            .position()
            .map(|tpl| {
                tpl.elements_for_topic(topic)
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((e.partition(), o)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut status = Vec::with_capacity(tailed.len());
        for &i in tailed {
            let Some(p) = self.partitions.get(i) else {
                continue;
            };
            let Some(copy) = s.copies.get(&p.changelog) else {
                continue;
            };
            let high = super::watermarks::cached_high_watermark(consumer, &topic_c, p.changelog);
            let at = positions
                .get(&p.changelog)
                .map_or(copy.next_offset, |&o| o.max(copy.next_offset));
            status.push(StandbyStatus {
                topic: p.topic.clone(),
                partition: p.partition,
                owner: owners.get(&i).cloned().unwrap_or_default(),
                keys: copy.images.len() as u64,
                changelog_next_offset: copy.next_offset,
                changelog_lag: high.map(|h| (h - at).max(0)),
            });
        }
        s.status = status;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_partition_is_stood_by_for_by_the_next_instances_after_its_owner() {
        let owners: HashMap<usize, String> = [(0, "a"), (1, "b"), (2, "c"), (3, "a")]
            .map(|(p, o)| (p, o.to_owned()))
            .into();
        let all = set(&["a", "b", "c"]);
        assert_eq!(standing_by("b", 1, &owners, &all), vec![0, 3]);
        assert_eq!(standing_by("c", 1, &owners, &all), vec![1]);
        assert_eq!(standing_by("a", 1, &owners, &all), vec![2]);
        // Two replicas: everyone stands by for every partition it does not own.
        assert_eq!(standing_by("a", 2, &owners, &all), vec![1, 2]);
        // More replicas than other instances: capped.
        assert_eq!(standing_by("a", 5, &owners, &all), vec![1, 2]);
        // Alone: nobody to stand by for.
        assert!(standing_by("a", 1, &owners, &set(&["a"])).is_empty());
    }

    /// The race the bench found: the group names this instance as the new owner before a
    /// shard here has taken the partition up; the copy must survive that look.
    #[test]
    fn a_copy_is_kept_while_its_partition_moves_until_a_shard_here_has_it() {
        let all = set(&["a", "b"]);
        let none = |_: usize| false;
        // b owns 0 and 1, a owns 2: a stands by for 0 and 1.
        let mut owners: HashMap<usize, String> = [(0, "b"), (1, "b"), (2, "a")]
            .map(|(p, o)| (p, o.to_owned()))
            .into();
        let copies = |i: usize| i < 2;
        assert_eq!(
            wanted(("a", 1), (&owners, &all), 3, copies, none),
            vec![0, 1]
        );
        // b left: 0 and 1 are nobody's for a moment; the copies stay.
        owners.retain(|&p, _| p == 2);
        assert_eq!(
            wanted(("a", 1), (&owners, &all), 3, copies, none),
            vec![0, 1]
        );
        // ...but a partition nobody owns and this instance has no copy of is not tailed.
        assert_eq!(
            wanted(("a", 1), (&owners, &all), 3, |i| i == 0, none),
            vec![0]
        );
        // The group gives them to a; no shard here has them yet: still kept.
        owners.extend([(0, "a".to_owned()), (1, "a".to_owned())]);
        assert_eq!(
            wanted(("a", 1), (&owners, &all), 3, copies, none),
            vec![0, 1]
        );
        // The shard took 0 up (its copy taken, its role set): only 1 is left to keep.
        assert_eq!(
            wanted(("a", 1), (&owners, &all), 3, copies, |i| i == 0),
            vec![1]
        );
    }

    /// The CI failure: a partition taken up and handed over again between two looks (the
    /// instance was alone for a moment at start) stayed blocked, so this instance never stood
    /// by for it. A take stays blocked only until a look has read the gauges after it.
    #[test]
    fn a_take_blocks_the_tail_only_until_the_gauges_were_read_after_it() {
        let standbys = Standbys::default();
        assert!(standbys.take(4).is_none());
        let before_second = standbys.takes_so_far();
        standbys.take(5);
        let taken = |s: &Standbys| -> BTreeSet<i32> {
            s.shared.lock().unwrap().taken.keys().copied().collect()
        };
        // A look that read the gauges before the take of 5: 5 stays blocked, 4 is settled.
        forget_settled(&mut standbys.shared.lock().unwrap().taken, before_second);
        assert_eq!(taken(&standbys), BTreeSet::from([5]));
        // The next look read them after it: nothing is blocked by a take any more.
        let now = standbys.takes_so_far();
        forget_settled(&mut standbys.shared.lock().unwrap().taken, now);
        assert!(taken(&standbys).is_empty());
    }

    #[test]
    fn a_copy_tailed_from_a_changelog_that_lost_records_is_never_taken() {
        let standbys = Standbys::default();
        if let Ok(mut s) = standbys.shared.lock() {
            s.copies.insert(
                0,
                WarmCopy {
                    partial: true,
                    ..copy(9, &[1, 2])
                },
            );
            s.copies.insert(1, copy(9, &[1, 2]));
        }
        assert!(standbys.take(0).is_none());
        assert_eq!(standbys.take(1).map(|c| c.images.len()), Some(2));
    }

    /// A partial copy is whole once it tails a whole-state marker at or past its offset (every
    /// live key follows it); a marker it has read past already changes nothing.
    #[test]
    fn a_partial_copy_is_whole_after_a_whole_state_marker() {
        let standbys = Standbys::default();
        if let Ok(mut s) = standbys.shared.lock() {
            for p in [0, 1] {
                s.copies.insert(
                    p,
                    WarmCopy {
                        partial: true,
                        ..copy(9, &[1, 2])
                    },
                );
            }
            if let Some(c) = s.copies.get_mut(&0) {
                c.marked(8);
            }
            if let Some(c) = s.copies.get_mut(&1) {
                c.marked(9);
                c.apply(10, 3, Some(&[3]));
            }
        }
        assert!(standbys.take(0).is_none());
        let whole = standbys.take(1).expect("whole after the marker");
        assert_eq!((whole.next_offset, whole.images.len()), (11, 3));
    }

    fn copy(next_offset: i64, keys: &[u64]) -> WarmCopy {
        WarmCopy {
            next_offset,
            images: keys.iter().map(|&k| (k, vec![k as u8])).collect(),
            ..WarmCopy::default()
        }
    }

    /// A handed-over partition's copy: kept while the copies stay within the bound, taken
    /// back while fresh, never once stale; a look keeps it though the tail does not want it.
    #[test]
    fn a_handed_over_copy_is_kept_within_the_bound_until_it_goes_stale() {
        let standbys = Standbys::default();
        let hour = Duration::from_secs(3600);
        assert!(standbys.keep(3, copy(10, &[1, 2, 3]), hour, 5));
        // 3 + 3 > 5: refused, and the first one stays.
        assert!(!standbys.keep(4, copy(7, &[4, 5, 6]), hour, 5));
        assert_eq!(standbys.room(&[], 5), 2);
        assert_eq!(standbys.room(&[3], 5), 5);
        // The same partition handed over again replaces its own copy (not counted twice).
        assert!(standbys.keep(3, copy(12, &[1, 2, 3, 9]), hour, 5));
        let back = standbys.take(3).expect("kept");
        assert_eq!((back.next_offset, back.images.len()), (12, 4));
        assert!(back.local && back.kept_until.is_some());
        assert!(standbys.take(4).is_none());
        // Stale: never handed back.
        assert!(standbys.keep(5, copy(1, &[1]), Duration::ZERO, 5));
        assert!(standbys.take(5).is_none());
        // A look: a kept copy stays though not wanted; a standby copy not wanted goes, a
        // stale kept one too.
        let now = Instant::now();
        let mut copies = HashMap::from([
            (0, copy(1, &[1])),
            (1, copy(1, &[1])),
            (
                2,
                WarmCopy {
                    kept_until: Some(now + hour),
                    ..copy(1, &[1])
                },
            ),
            (
                3,
                WarmCopy {
                    kept_until: Some(now),
                    ..copy(1, &[1])
                },
            ),
        ]);
        prune(&mut copies, &HashSet::from([0]), now);
        assert_eq!(
            copies.keys().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([0, 2])
        );
    }

    /// A kept copy put in while the tail still reads its partition from an older offset:
    /// the older records are skipped, the newer ones go on from the copy's offset.
    #[test]
    fn tailed_records_below_a_copys_offset_are_skipped() {
        let mut c = copy(10, &[1]);
        c.apply(4, 1, None);
        c.apply(9, 2, Some(b"old"));
        assert_eq!((c.next_offset, c.images.len()), (10, 1));
        c.apply(10, 2, Some(b"new"));
        c.apply(11, 1, None);
        assert_eq!(c.next_offset, 12);
        assert_eq!(c.images.get(&2).map(Vec::as_slice), Some(&b"new"[..]));
        assert!(!c.images.contains_key(&1));
    }

    #[test]
    fn assignments_and_client_ids_parse_and_garbage_does_not() {
        let mut b = vec![0, 1];
        b.extend(1i32.to_be_bytes());
        b.extend(2i16.to_be_bytes());
        b.extend(b"ev");
        b.extend(2i32.to_be_bytes());
        b.extend(3i32.to_be_bytes());
        b.extend(7i32.to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        assert_eq!(
            parse_assignment(&b),
            Some(vec![("ev".into(), 3), ("ev".into(), 7)])
        );
        assert_eq!(parse_assignment(&b[..9]), None);
        assert_eq!(parse_assignment(&[]), None);
        assert_eq!(instance_of("sluice-host-1-0"), Some("host-1"));
        assert_eq!(instance_of("sluice-a-12"), Some("a"));
        assert_eq!(instance_of("rdkafka"), None);
        assert_eq!(instance_of("sluice-a-x"), None);
    }
}
