//! `cluster status`: which input partitions this instance owns right now, per shard, with
//! their position and lag, read from the shards' gauges (no broker round trip, nothing asked
//! of a shard). Answered on the admin socket as one JSON line; `sluice cluster status`
//! prints it as a table.

use serde::{Deserialize, Serialize};

use super::standby::{StandbyStatus, Standbys};
use super::watermarks::{by_partition, dealt, PartitionGauges};
use crate::config::{Config, Delivery, Membership};

/// What `cluster status` needs: the config's part of the answer and the live gauges.
#[derive(Clone)]
pub struct ClusterInfo {
    pub instance_id: String,
    pub group: String,
    pub membership: &'static str,
    pub static_membership: bool,
    pub shards: usize,
    pub changelog_topic: Option<String>,
    pub gauges: PartitionGauges,
    pub standbys: Standbys,
    pub standby_replicas: usize,
    /// The input topics' partition counts against those dealt (`topic_watch`).
    pub topics: Option<std::sync::Arc<super::topic_watch::TopicWatch>>,
}

impl ClusterInfo {
    /// None when Kafka is off.
    pub fn new(config: &Config, gauges: PartitionGauges, standbys: Standbys) -> Option<Self> {
        let k = &config.ingest.kafka;
        if !k.enabled() {
            return None;
        }
        let e = &config.egress.kafka;
        Some(Self {
            instance_id: k.instance_id.clone(),
            group: k.group.clone(),
            membership: match k.membership {
                Membership::Deal => "deal",
                Membership::Group => "group",
            },
            static_membership: k.static_membership,
            shards: config.shards.count,
            changelog_topic: (e.delivery == Delivery::ExactlyOnce && e.changelog)
                .then(|| e.changelog_topic(&k.group)),
            gauges,
            standbys,
            standby_replicas: k.standby_replicas,
            topics: None,
        })
    }

    /// With the input topics' partitions no shard consumes (added since they were dealt).
    pub fn with_topic_watch(
        mut self,
        topics: std::sync::Arc<super::topic_watch::TopicWatch>,
    ) -> Self {
        self.topics = Some(topics);
        self
    }

    pub fn status(&self) -> ClusterStatus {
        let all = by_partition(dealt(&self.gauges));
        let (owned, elsewhere): (Vec<_>, Vec<_>) = all.into_iter().partition(|v| v.shard.is_some());
        ClusterStatus {
            instance_id: self.instance_id.clone(),
            group: self.group.clone(),
            membership: self.membership.to_owned(),
            static_membership: self.static_membership,
            shards: self.shards,
            changelog_topic: self.changelog_topic.clone(),
            // Until the brokers answered, no partition is known (not even as someone else's).
            attached: !dealt(&self.gauges).is_empty(),
            owned: owned
                .into_iter()
                .map(|v| OwnedStatus {
                    topic: v.topic,
                    partition: v.partition,
                    shard: v.shard.unwrap_or(0),
                    role: v.role.name().to_owned(),
                    next_offset: v.next_offset,
                    high_watermark: v.high_watermark,
                    lag: v.lag,
                    records: v.records,
                })
                .collect(),
            elsewhere: elsewhere
                .into_iter()
                .map(|v| format!("{}:{}", v.topic, v.partition))
                .collect(),
            standby_replicas: self.standby_replicas,
            standby: self.standbys.status(),
            trouble: super::client_errors::newest(super::client_errors::TROUBLE_WINDOW)
                .map(|(kind, said)| format!("{}: {said}", kind.label())),
            unconsumed: self
                .topics
                .as_ref()
                .map(|t| t.unconsumed())
                .unwrap_or_default()
                .into_iter()
                .map(|u| {
                    let waiting = u.records.map_or("unknown".to_owned(), |r| r.to_string());
                    format!(
                        "{}: {} partition(s), {waiting} record(s) waiting",
                        u.topic, u.partitions
                    )
                })
                .collect(),
        }
    }
}

/// The answer, as JSON (the admin protocol's one line) and for the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub instance_id: String,
    pub group: String,
    pub membership: String,
    pub static_membership: bool,
    pub shards: usize,
    pub changelog_topic: Option<String>,
    /// Whether the brokers have answered and the partitions are known.
    pub attached: bool,
    /// The partitions a shard of this instance owns, in partition-table order.
    pub owned: Vec<OwnedStatus>,
    /// The input partitions no shard here owns (`topic:partition`): another instance's.
    pub elsewhere: Vec<String>,
    pub standby_replicas: usize,
    /// The partitions this instance keeps a warm copy of (`ingest.kafka.standby_replicas`).
    pub standby: Vec<StandbyStatus>,
    /// The cause among librdkafka's client errors of the last 30 s ("authentication: ...",
    /// "tls: ...", "transport: ..."; see `client_errors::newest`), if any.
    #[serde(default)]
    pub trouble: Option<String>,
    /// Input topics' partitions added since they were dealt, which no shard consumes
    /// ("topic: N partition(s), R record(s) waiting"; `topic_watch`).
    #[serde(default)]
    pub unconsumed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedStatus {
    pub topic: String,
    pub partition: i32,
    pub shard: usize,
    /// active | handing_over | restoring
    pub role: String,
    /// -1 until known (a partition taken up from `ingest.kafka.start` before its first record).
    pub next_offset: i64,
    /// -1 until a fetch response told.
    pub high_watermark: i64,
    pub lag: Option<i64>,
    pub records: u64,
}

impl ClusterStatus {
    /// For people: a header line, one line per owned partition, the others' list.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let membership = match (self.membership.as_str(), self.static_membership) {
            ("group", true) => "group (static)".to_owned(),
            (m, _) => m.to_owned(),
        };
        let instance = if self.instance_id.is_empty() {
            "-"
        } else {
            &self.instance_id
        };
        let _ = writeln!(
            s,
            "instance {instance}  group {}  membership {membership}  shards {}  changelog {}",
            self.group,
            self.shards,
            self.changelog_topic.as_deref().unwrap_or("off")
        );
        if let Some(t) = &self.trouble {
            let _ = writeln!(s, "broker trouble in the last 30 s: {t}");
        }
        if !self.attached {
            let _ = writeln!(s, "brokers not reached yet: no partition known");
            return s;
        }
        let _ = writeln!(
            s,
            "{:<24} {:>9} {:>5} {:<12} {:>12} {:>12} {:>10} {:>12}",
            "topic", "partition", "shard", "role", "next offset", "high", "lag", "records"
        );
        let known = |v: i64| {
            if v < 0 {
                "-".to_owned()
            } else {
                v.to_string()
            }
        };
        for p in &self.owned {
            let _ = writeln!(
                s,
                "{:<24} {:>9} {:>5} {:<12} {:>12} {:>12} {:>10} {:>12}",
                p.topic,
                p.partition,
                p.shard,
                p.role,
                known(p.next_offset),
                known(p.high_watermark),
                p.lag.map_or("-".to_owned(), |l| l.to_string()),
                p.records
            );
        }
        if self.owned.is_empty() {
            let _ = writeln!(s, "(no partition owned)");
        }
        if !self.elsewhere.is_empty() {
            let _ = writeln!(s, "owned elsewhere: {}", self.elsewhere.join(", "));
        }
        for u in &self.unconsumed {
            let _ = writeln!(
                s,
                "consumed by no shard (added to the topic since it was dealt; see the error logged): {u}"
            );
        }
        if self.standby_replicas == 0 {
            let _ = writeln!(s, "standby replicas: off");
        } else if self.standby.is_empty() {
            let _ = writeln!(s, "standby for: nothing (yet)");
        } else {
            let _ = writeln!(
                s,
                "standby for:\n{:<24} {:>9} {:<16} {:>10} {:>16} {:>14}",
                "topic", "partition", "owner", "keys", "changelog next", "changelog lag"
            );
            for p in &self.standby {
                let _ = writeln!(
                    s,
                    "{:<24} {:>9} {:<16} {:>10} {:>16} {:>14}",
                    p.topic,
                    p.partition,
                    p.owner,
                    p.keys,
                    p.changelog_next_offset,
                    p.changelog_lag.map_or("-".to_owned(), |l| l.to_string())
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;
    use crate::ingest::kafka::{PartitionGauge, Role};

    #[test]
    fn status_lists_owned_partitions_and_the_others_and_reads_back_from_json() {
        let config = Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=127.0.0.1:9".into(),
                "ingest.kafka.topics=[\"ev\"]".into(),
            ],
        )
        .unwrap();
        let gauges = PartitionGauges::default();
        let info = ClusterInfo::new(&config, gauges.clone(), Standbys::default()).unwrap();
        assert!(!info.status().attached);
        assert!(info.status().table().contains("brokers not reached yet"));
        let g: Vec<Arc<PartitionGauge>> = (0..3)
            .map(|p| Arc::new(PartitionGauge::new("ev", p, 0, Role::None)))
            .collect();
        g[1].set_role(Role::Active);
        g[1].next_offset.store(7, Ordering::Relaxed);
        g[1].high_watermark.store(9, Ordering::Relaxed);
        let _ = gauges.set(g);
        let status = info.status();
        assert!(status.attached);
        assert_eq!(status.owned.len(), 1);
        let p = &status.owned[0];
        assert_eq!(
            (p.partition, p.role.as_str(), p.lag),
            (1, "active", Some(2))
        );
        assert_eq!(status.elsewhere, vec!["ev:0".to_owned(), "ev:2".to_owned()]);
        let json = serde_json::to_string(&status).unwrap();
        assert!(!json.contains('\n'));
        let back: ClusterStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
        let table = status.table();
        assert!(table.contains("owned elsewhere: ev:0, ev:2"), "{table}");
        assert!(status.unconsumed.is_empty(), "{table}");
        assert!(!table.contains("consumed by no shard"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("ev ") && l.contains("active")),
            "{table}"
        );
    }

    #[test]
    fn partitions_added_since_the_deal_are_listed_as_consumed_by_no_shard() {
        use super::super::topic_watch::TopicWatch;
        let config = Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=127.0.0.1:9".into(),
                "ingest.kafka.topics=[\"ev\"]".into(),
            ],
        )
        .unwrap();
        let watch = TopicWatch::new(&config);
        let gauges = PartitionGauges::default();
        let _ = gauges.set(vec![Arc::new(PartitionGauge::new(
            "ev",
            0,
            0,
            Role::Active,
        ))]);
        let info = ClusterInfo::new(&config, gauges, Standbys::default())
            .unwrap()
            .with_topic_watch(watch.clone());
        assert!(info.status().unconsumed.is_empty());
        watch.topics[0].consumed.store(1, Ordering::Relaxed);
        watch.topics[0].listed.store(3, Ordering::Relaxed);
        watch.topics[0]
            .records_unconsumed
            .store(12, Ordering::Relaxed);
        let status = info.status();
        assert_eq!(
            status.unconsumed,
            vec!["ev: 2 partition(s), 12 record(s) waiting".to_owned()]
        );
        assert!(
            status
                .table()
                .contains("consumed by no shard (added to the topic since it was dealt; see the error logged): ev: 2 partition(s)"),
            "{}",
            status.table()
        );
        // An older sluice's answer (no such field) still reads.
        let json = serde_json::to_string(&status).unwrap();
        let old = json.replace(
            r#","unconsumed":["ev: 2 partition(s), 12 record(s) waiting"]"#,
            "",
        );
        assert_ne!(old, json);
        let back: ClusterStatus = serde_json::from_str(&old).unwrap();
        assert!(back.unconsumed.is_empty());
    }

    #[test]
    fn kafka_off_has_no_status() {
        let config = Config::from_layers(None, &[]).unwrap();
        assert!(
            ClusterInfo::new(&config, PartitionGauges::default(), Standbys::default()).is_none()
        );
    }
}
