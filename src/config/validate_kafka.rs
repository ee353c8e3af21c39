//! Kafka settings: topic names, pass-through properties sluice owns, and the rules that tie
//! exactly-once delivery to checkpoints.

use super::{Config, Delivery};
use crate::limits;

/// Properties sluice sets itself; setting them in `[kafka.*]` would break what it relies on.
const OWNED_PROPERTIES: [(&str, &str); 8] = [
    ("bootstrap.servers", "set ingest.kafka.brokers"),
    ("group.id", "set ingest.kafka.group"),
    (
        "enable.auto.commit",
        "offsets are committed after each checkpoint",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed after each checkpoint",
    ),
    ("isolation.level", "sluice reads read_committed"),
    (
        "transactional.id",
        "set egress.kafka.transactional_id_prefix",
    ),
    (
        "enable.idempotence",
        "sluice's producer is always idempotent",
    ),
    (
        "transaction.timeout.ms",
        "set egress.kafka.transaction_timeout_ms",
    ),
];

/// Kafka's rule for topic names: 1-249 characters of [a-zA-Z0-9._-].
pub fn topic_name_ok(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub(super) fn validate(c: &Config, p: &mut Vec<String>) {
    let k = &c.ingest.kafka;
    let e = &c.egress.kafka;
    let on = k.enabled();
    if on {
        if k.topics.is_empty() {
            p.push("ingest.kafka.topics is empty: name at least one topic to consume".into());
        }
        let mut seen = std::collections::HashSet::new();
        for t in &k.topics {
            if !topic_name_ok(t) {
                p.push(format!("ingest.kafka.topics: {t:?} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"));
            }
            if !seen.insert(t) {
                p.push(format!("ingest.kafka.topics lists {t:?} twice"));
            }
        }
        if k.group.trim().is_empty() {
            p.push("ingest.kafka.group is empty: offsets are committed to a group".into());
        }
        for broker in k.brokers.split(',') {
            let b = broker.trim();
            let port_ok = b
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                p.push(format!(
                    "ingest.kafka.brokers: {b:?} is not host:port (e.g. \"127.0.0.1:9092\")"
                ));
            }
        }
    }
    if !(1..=limits::KAFKA_RECORDS_PER_CYCLE_MAX).contains(&k.records_per_cycle_max) {
        p.push(format!(
            "ingest.kafka.records_per_cycle_max = {}: must be between 1 and {}",
            k.records_per_cycle_max,
            limits::KAFKA_RECORDS_PER_CYCLE_MAX
        ));
    }
    if !(1..=limits::KAFKA_RESTORE_KEYS_PER_CYCLE_MAX).contains(&k.restore_keys_per_cycle) {
        p.push(format!(
            "ingest.kafka.restore_keys_per_cycle = {}: must be between 1 and {}",
            k.restore_keys_per_cycle,
            limits::KAFKA_RESTORE_KEYS_PER_CYCLE_MAX
        ));
    }
    if !(1..=limits::KAFKA_IN_FLIGHT_MAX).contains(&k.in_flight_records_max) {
        p.push(format!(
            "ingest.kafka.in_flight_records_max = {}: must be between 1 and {}",
            k.in_flight_records_max,
            limits::KAFKA_IN_FLIGHT_MAX
        ));
    }
    if !(1..=limits::KAFKA_IN_FLIGHT_BYTES_MAX).contains(&k.in_flight_bytes_max) {
        p.push(format!(
            "ingest.kafka.in_flight_bytes_max = {}: must be between 1 and {}",
            k.in_flight_bytes_max,
            limits::KAFKA_IN_FLIGHT_BYTES_MAX
        ));
    }
    if on {
        super::producer_queue::validate(c, p);
    }
    if !e.dead_letter_topic.is_empty()
        && [&e.scores_topic, &e.alerts_topic].contains(&&e.dead_letter_topic)
    {
        p.push(format!(
            "egress.kafka.dead_letter_topic = {:?} is also a Score topic: a reader could not tell raw input from Scores",
            e.dead_letter_topic
        ));
    }
    let reasons = crate::egress::kafka::dead_letter::EVENT_REASONS.map(|r| r.label());
    for name in &e.dead_letter_events {
        if !reasons.contains(&name.as_str()) {
            p.push(format!(
                "egress.kafka.dead_letter_events: {name:?} is not a reason an event can be dead-lettered for (one of {})",
                reasons.join(", ")
            ));
        }
    }
    for (key, topic) in [
        ("egress.kafka.scores_topic", &e.scores_topic),
        ("egress.kafka.alerts_topic", &e.alerts_topic),
        ("egress.kafka.dead_letter_topic", &e.dead_letter_topic),
    ] {
        if topic.is_empty() {
            continue;
        }
        if !topic_name_ok(topic) {
            p.push(format!("{key} = {topic:?} is not a Kafka topic name"));
        }
        if !on {
            p.push(format!(
                "{key} is set but ingest.kafka.brokers is empty: sluice writes to Kafka only for Kafka-borne events"
            ));
        }
        if k.topics.contains(topic) {
            p.push(format!(
                "{key} = {topic:?} is also an input topic: sluice would read back what it writes there"
            ));
        }
    }
    if k.membership == crate::config::Membership::Group {
        if !(e.delivery == Delivery::ExactlyOnce && e.changelog) {
            p.push("ingest.kafka.membership = \"group\" needs egress.kafka.delivery = \"exactly_once\" and egress.kafka.changelog = true: a partition's state moves between instances through the changelog".into());
        }
        let id = k.instance_id.trim();
        if id.is_empty() || !topic_name_ok(id) {
            p.push(format!("ingest.kafka.instance_id = {:?}: ingest.kafka.membership = \"group\" needs a name for this instance, unique in the group and stable across restarts (letters, digits, '.', '_', '-')", k.instance_id));
        }
    } else {
        if k.static_membership {
            p.push(
                "ingest.kafka.static_membership = true needs ingest.kafka.membership = \"group\""
                    .into(),
            );
        }
        if k.standby_replicas > 0 {
            p.push(
                "ingest.kafka.standby_replicas needs ingest.kafka.membership = \"group\"".into(),
            );
        }
    }
    if k.standby_replicas > limits::KAFKA_STANDBY_REPLICAS_MAX {
        p.push(format!(
            "ingest.kafka.standby_replicas = {}: at most {}",
            k.standby_replicas,
            limits::KAFKA_STANDBY_REPLICAS_MAX
        ));
    }
    if !(1..=limits::KAFKA_STANDBY_KEYS_MAX).contains(&k.standby_keys_max) {
        p.push(format!(
            "ingest.kafka.standby_keys_max = {}: must be between 1 and {}",
            k.standby_keys_max,
            limits::KAFKA_STANDBY_KEYS_MAX
        ));
    }
    if k.partition_check_ms != 0
        && !(limits::KAFKA_PARTITION_CHECK_MS_MIN..=limits::KAFKA_PARTITION_CHECK_MS_MAX)
            .contains(&k.partition_check_ms)
    {
        p.push(format!(
            "ingest.kafka.partition_check_ms = {}: 0 (never) or between {} and {} (24 h)",
            k.partition_check_ms,
            limits::KAFKA_PARTITION_CHECK_MS_MIN,
            limits::KAFKA_PARTITION_CHECK_MS_MAX
        ));
    }
    if k.handed_over_keep_ms > limits::KAFKA_HANDED_OVER_KEEP_MS_MAX {
        p.push(format!(
            "ingest.kafka.handed_over_keep_ms = {}: at most {} (24 h)",
            k.handed_over_keep_ms,
            limits::KAFKA_HANDED_OVER_KEEP_MS_MAX
        ));
    }
    if e.changelog && e.delivery != Delivery::ExactlyOnce {
        p.push("egress.kafka.changelog = true needs egress.kafka.delivery = \"exactly_once\": the changelog is written in each checkpoint's transaction".into());
    }
    if e.delivery == Delivery::ExactlyOnce {
        if !on {
            p.push("egress.kafka.delivery = \"exactly_once\" needs ingest.kafka.brokers".into());
        }
        if c.state.dir.is_empty() {
            p.push("egress.kafka.delivery = \"exactly_once\" needs state.dir: the transaction commits a checkpoint".into());
        }
        if c.checkpoint.interval_ms == 0 {
            p.push("egress.kafka.delivery = \"exactly_once\" needs checkpoint.interval_ms > 0: Scores are committed with each checkpoint".into());
        }
        if c.checkpoint.keep < 2 {
            p.push(format!("checkpoint.keep = {} with egress.kafka.delivery = \"exactly_once\": must be at least 2, so the checkpoint the last committed transaction names survives until the next one commits", c.checkpoint.keep));
        }
        if !topic_name_ok(&e.progress_topic) {
            p.push(format!(
                "egress.kafka.progress_topic = {:?} is not a Kafka topic name",
                e.progress_topic
            ));
        }
        if e.transactional_id_prefix.trim().is_empty() {
            p.push("egress.kafka.transactional_id_prefix is empty".into());
        }
        if e.changelog {
            let topic = e.changelog_topic(&k.group);
            if !topic_name_ok(&topic) {
                p.push(format!("egress.kafka.changelog topic {topic:?} is not a Kafka topic name (set egress.kafka.changelog_topic)"));
            }
            if k.topics.contains(&topic) || topic == e.progress_topic {
                p.push(format!(
                    "egress.kafka.changelog topic {topic:?} is also an input or the progress topic"
                ));
            }
        }
        let interval = c.checkpoint.interval_ms;
        let floor = interval.saturating_mul(2).max(1_000);
        if e.transaction_timeout_ms < floor
            || e.transaction_timeout_ms > limits::KAFKA_TRANSACTION_TIMEOUT_MS_MAX
        {
            p.push(format!(
                "egress.kafka.transaction_timeout_ms = {}: must be between {floor} (2 x checkpoint.interval_ms = {interval}, at least 1000) and {} (Kafka's default transaction.max.timeout.ms); a transaction stays open for one checkpoint interval",
                e.transaction_timeout_ms,
                limits::KAFKA_TRANSACTION_TIMEOUT_MS_MAX
            ));
        }
        // Above the transaction timeout it changes nothing (a commit waits at most that).
        if e.shutdown_commit_ms == 0 {
            p.push("egress.kafka.shutdown_commit_ms = 0: must be at least 1; it bounds the last commit's wait once sluice is stopping".into());
        }
    }
    for (table, props) in [
        ("kafka.consumer", &c.kafka.consumer),
        ("kafka.producer", &c.kafka.producer),
    ] {
        for (key, why) in OWNED_PROPERTIES {
            if props.contains_key(key) {
                p.push(format!("{table}.\"{key}\" is set by sluice: {why}"));
            }
        }
        librdkafka_refusals(table, props, p);
    }
}

/// Each pass-through property as librdkafka itself takes it: an unknown name (a typo), a value
/// not of the property's type or out of its range, or one this build cannot do. librdkafka
/// stops at the first refusal when the client is made, at start; here each is tried alone, so
/// every one is listed, by `check-config` too. (A property of the other client's kind is not
/// refused: librdkafka only warns that it ignores it, which check-config reports.)
fn librdkafka_refusals(
    table: &str,
    props: &std::collections::BTreeMap<String, String>,
    p: &mut Vec<String>,
) {
    for (key, value) in props {
        if let Some(why) = librdkafka_refuses(key, value) {
            p.push(format!(
                "{table}.\"{key}\" = {value:?}: librdkafka refuses it: {why}"
            ));
        }
    }
}

/// librdkafka's reason for refusing `key` = `value` on its own, if it does.
pub fn librdkafka_refuses(key: &str, value: &str) -> Option<String> {
    let mut one = rdkafka::ClientConfig::new();
    one.set(key, value);
    match one.create_native_config() {
        Ok(_) => None,
        Err(rdkafka::error::KafkaError::ClientConfig(_, desc, _, _)) => {
            Some(desc.trim_end().to_owned())
        }
        Err(other) => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(topic_name_ok("events.v1_a-b"));
        for bad in ["", ".", "..", "a b", "a/b", &"x".repeat(250)] {
            assert!(!topic_name_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn exactly_once_without_checkpoints_lists_every_missing_piece() {
        let err = Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=127.0.0.1:9092".into(),
                "egress.kafka.delivery=exactly_once".into(),
                "checkpoint.keep=1".into(),
                "egress.kafka.transaction_timeout_ms=100".into(),
                "egress.kafka.shutdown_commit_ms=0".into(),
                "egress.kafka.scores_topic=sluice-events".into(),
                "kafka.producer.transactional.id=mine".into(),
                "kafka.producer.queue.buffering.max.messages=1000".into(),
            ],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "needs state.dir",
            "checkpoint.keep = 1",
            "transaction_timeout_ms = 100",
            "shutdown_commit_ms = 0: must be at least 1",
            "also an input topic",
            "kafka.producer.\"transactional.id\" is set by sluice",
            "\"queue.buffering.max.messages\" = 1000: must be at least",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn a_dead_letter_topic_is_a_topic_of_its_own() {
        let err = Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=127.0.0.1:9092".into(),
                "ingest.kafka.topics=[\"events\"]".into(),
                "egress.kafka.scores_topic=scores".into(),
                "egress.kafka.dead_letter_topic=scores".into(),
            ],
        )
        .unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.contains("is also a Score topic")),
            "{:?}",
            err.problems
        );
        for (topic, needle) in [
            ("events", "also an input topic"),
            ("a b", "not a Kafka topic name"),
        ] {
            let err = Config::from_layers(
                None,
                &[
                    "ingest.kafka.brokers=127.0.0.1:9092".into(),
                    "ingest.kafka.topics=[\"events\"]".into(),
                    format!("egress.kafka.dead_letter_topic={topic}"),
                ],
            )
            .unwrap_err();
            let all = err.problems.join("\n");
            assert!(
                all.contains("egress.kafka.dead_letter_topic") && all.contains(needle),
                "{all}"
            );
        }
        let ok = Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=127.0.0.1:9092".into(),
                "ingest.kafka.topics=[\"events\"]".into(),
                "egress.kafka.dead_letter_topic=events-dead".into(),
            ],
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    #[test]
    fn dead_letter_events_name_known_reasons_and_the_producer_queue_holds_their_records() {
        let base = [
            "ingest.kafka.brokers=127.0.0.1:9092",
            "ingest.kafka.topics=[\"events\"]",
            "egress.kafka.dead_letter_topic=events-dead",
            "ingest.kafka.in_flight_records_max=100000",
            "ingest.kafka.records_per_cycle_max=64",
        ];
        let problems = |more: &[&str]| {
            let sets: Vec<String> = base.iter().chain(more).map(|s| s.to_string()).collect();
            Config::from_layers(None, &sets)
                .err()
                .map_or(String::new(), |e| e.problems.join("\n"))
        };
        let all = problems(&["egress.kafka.dead_letter_events=[\"late\", \"duplicate\", \"lat\"]"]);
        for needle in [
            "\"duplicate\" is not a reason",
            "\"lat\" is not a reason",
            "state_error",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("\"late\""), "{all}");
        // 100 000 in flight + 3 x 64 + 2 progress records: a queue of 100 150 is short with
        // refused events sent, enough without them (2 x 64 + 2).
        let queue = "kafka.producer.queue.buffering.max.messages=100150";
        let all = problems(&[queue]);
        assert!(
            all.contains("in_flight_records_max + 194 = 100194"),
            "{all}"
        );
        assert_eq!(problems(&[queue, "egress.kafka.dead_letter_events=[]"]), "");
    }

    #[test]
    fn the_producer_queue_holds_what_a_shard_hands_over_after_it_stops_taking_records() {
        let problems = |more: &[&str]| {
            let sets: Vec<String> = [
                "ingest.kafka.brokers=127.0.0.1:9092",
                "ingest.kafka.topics=[\"events\"]",
                "ingest.kafka.in_flight_records_max=100000",
                "ingest.kafka.records_per_cycle_max=64",
                "wire.batch_events_max=256",
            ]
            .iter()
            .chain(more)
            .map(|s| s.to_string())
            .collect();
            Config::from_layers(None, &sets)
                .err()
                .map_or(String::new(), |e| e.problems.join("\n"))
        };
        // The defaults hold every combination: cold reads off the shard, dead letters of
        // whole records and of events.
        assert_eq!(problems(&[]), "");
        let dead = "egress.kafka.dead_letter_topic=events-dead";
        assert_eq!(problems(&["state.cold_reader=thread", dead]), "");
        // With cold reads off the shard thread the records of 4 cycles may still be answered
        // and 3 x 256 events wait for reads: 2 x (4 x 64 + 768) + 2 records past the bound.
        let queue = "kafka.producer.queue.buffering.max.messages=100150";
        assert_eq!(problems(&[queue]), "");
        let all = problems(&[queue, "state.cold_reader=thread"]);
        assert!(
            all.contains("in_flight_records_max + 2050 = 102050"),
            "{all}"
        );
        assert!(all.contains("waiting for a read"), "{all}");
        // Bytes: 256 MiB in flight + 130 records of up to 24 640 bytes (256 Scores) + 512
        // for progress records; a queue of 256 MiB is short by their tail.
        let all = problems(&["kafka.producer.queue.buffering.max.kbytes=262144"]);
        assert!(
            all.contains("in_flight_bytes_max + 3203712 bytes = 265273 KiB"),
            "{all}"
        );
        let fits = "ingest.kafka.in_flight_bytes_max=264000000";
        assert_eq!(
            problems(&["kafka.producer.queue.buffering.max.kbytes=262144", fits]),
            ""
        );
        // Each record taken may go whole to the dead-letter topic, up to message.max.bytes.
        let all = problems(&[
            "kafka.producer.queue.buffering.max.kbytes=262144",
            fits,
            dead,
        ]);
        assert!(
            all.contains("queue.buffering.max.kbytes\" = 262144 KiB"),
            "{all}"
        );
        // A record of 256 Scores must pass message.max.bytes.
        let all = problems(&["kafka.producer.message.max.bytes=20000"]);
        assert!(
            all.contains(
                "\"message.max.bytes\" = 20000: a Score record of wire.batch_events_max = 256"
            ),
            "{all}"
        );
        assert_eq!(
            problems(&[
                "kafka.producer.message.max.bytes=20000",
                "wire.batch_events_max=64"
            ]),
            ""
        );
        let all = problems(&[
            "kafka.producer.message.max.bytes=many",
            "ingest.kafka.in_flight_bytes_max=0",
        ]);
        for needle in [
            "\"message.max.bytes\" = \"many\" is not a whole number",
            "in_flight_bytes_max = 0: must be between 1",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // batch.size is read too (the start-up check of the output topics' limits uses it).
        let batch = problems(&["kafka.producer.batch.size=lots"]);
        assert!(
            batch.contains("\"batch.size\" = \"lots\" is not a whole number"),
            "{batch}"
        );
    }

    #[test]
    fn a_changelog_needs_exactly_once_and_a_topic_of_its_own() {
        let problems = |sets: &[&str]| {
            let mut all: Vec<String> = vec!["ingest.kafka.brokers=127.0.0.1:9092".into()];
            all.extend(sets.iter().map(|s| (*s).to_owned()));
            Config::from_layers(None, &all)
                .err()
                .map(|e| e.problems.join("\n"))
                .unwrap_or_default()
        };
        let alo = problems(&["egress.kafka.changelog=true"]);
        assert!(
            alo.contains("changelog = true needs egress.kafka.delivery"),
            "{alo}"
        );
        let eos = [
            "egress.kafka.delivery=exactly_once",
            "state.dir=/tmp/x",
            "egress.kafka.changelog=true",
        ];
        let clash = problems(&[
            eos[0],
            eos[1],
            eos[2],
            "egress.kafka.changelog_topic=sluice-events",
        ]);
        assert!(
            clash.contains("is also an input or the progress topic"),
            "{clash}"
        );
        let bad = problems(&[eos[0], eos[1], eos[2], "egress.kafka.changelog_topic=a b"]);
        assert!(bad.contains("is not a Kafka topic name"), "{bad}");
        // The default name (<group>-state) is fine.
        assert_eq!(problems(&eos), "");
    }

    #[test]
    fn group_membership_needs_exactly_once_a_changelog_and_a_name() {
        let err = Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=127.0.0.1:9092".into(),
                "ingest.kafka.membership=group".into(),
            ],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "membership = \"group\" needs egress.kafka.delivery = \"exactly_once\" and egress.kafka.changelog = true",
            "ingest.kafka.instance_id = \"\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=127.0.0.1:9092".into(),
                "ingest.kafka.membership=group".into(),
                "ingest.kafka.instance_id=host-1".into(),
                "egress.kafka.delivery=exactly_once".into(),
                "egress.kafka.changelog=true".into(),
                "state.dir=/tmp/x".into(),
                "ingest.kafka.static_membership=true".into(),
            ],
        )
        .is_ok());
    }

    #[test]
    fn static_membership_and_standbys_need_group_membership() {
        let err = Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=127.0.0.1:9092".into(),
                "ingest.kafka.static_membership=true".into(),
            ],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains(
                "ingest.kafka.static_membership = true needs ingest.kafka.membership = \"group\""
            ),
            "{all}"
        );
        let err = Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=127.0.0.1:9092".into(),
                "ingest.kafka.standby_replicas=9".into(),
                "ingest.kafka.standby_keys_max=0".into(),
                "ingest.kafka.handed_over_keep_ms=86400001".into(),
                "ingest.kafka.partition_check_ms=999".into(),
            ],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "ingest.kafka.standby_replicas needs ingest.kafka.membership = \"group\"",
            "ingest.kafka.standby_replicas = 9: at most 8",
            "ingest.kafka.standby_keys_max = 0",
            "ingest.kafka.handed_over_keep_ms = 86400001: at most 86400000",
            "ingest.kafka.partition_check_ms = 999: 0 (never) or between 1000 and 86400000",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // 0 (never) and the bounds themselves pass.
        for ms in ["0", "1000", "86400000"] {
            Config::from_layers(
                None,
                &[
                    "ingest.kafka.brokers=127.0.0.1:9092".into(),
                    format!("ingest.kafka.partition_check_ms={ms}"),
                ],
            )
            .unwrap();
        }
    }

    #[test]
    fn every_property_librdkafka_refuses_is_listed_with_its_reason() {
        let problems = |sets: &[&str]| -> Vec<String> {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::from_layers(None, &sets)
                .err()
                .map_or(Vec::new(), |e| e.problems)
        };
        let all = problems(&[
            "kafka.consumer.no.such.prop=1",
            "kafka.consumer.fetch.wait.max.ms=soon",
            "kafka.producer.linger.ms=-5",
            "kafka.producer.enable.ssl.certificate.verification=maybe",
        ]);
        let refused: Vec<&String> = all
            .iter()
            .filter(|m| m.contains("librdkafka refuses"))
            .collect();
        assert_eq!(refused.len(), 4, "{all:#?}");
        // One line each (librdkafka ends some reasons with a newline).
        assert!(refused.iter().all(|m| !m.contains('\n')), "{refused:#?}");
        for (key, why) in [
            (
                "kafka.consumer.\"no.such.prop\" = \"1\"",
                "No such configuration property",
            ),
            (
                "kafka.consumer.\"fetch.wait.max.ms\" = \"soon\"",
                "fetch.wait.max.ms",
            ),
            (
                "kafka.producer.\"linger.ms\" = \"-5\"",
                "-5 is outside allowed range",
            ),
            (
                "kafka.producer.\"enable.ssl.certificate.verification\" = \"maybe\"",
                "true or false",
            ),
        ] {
            assert!(
                refused
                    .iter()
                    .any(|m| m.starts_with(key) && m.contains(why)),
                "{key} ... {why} not in {all:#?}"
            );
        }
        // The defaults and values librdkafka takes are not refused.
        assert!(problems(&[
            "kafka.producer.linger.ms=5",
            "kafka.consumer.security.protocol=sasl_ssl",
            "kafka.producer.compression.type=zstd"
        ])
        .iter()
        .all(|m| !m.contains("librdkafka refuses")));
    }

    #[test]
    fn passthrough_properties_take_any_key_and_flatten_dotted_sets() {
        let file = "[kafka.consumer]\n\"socket.nagle.disable\" = true\n\"fetch.min.bytes\" = 1\n";
        let c = Config::from_layers(Some(file), &["kafka.consumer.fetch.wait.max.ms=5".into()])
            .unwrap();
        assert_eq!(c.kafka.consumer["fetch.wait.max.ms"], "5");
        assert_eq!(c.kafka.consumer["socket.nagle.disable"], "true");
        assert_eq!(c.kafka.consumer["fetch.min.bytes"], "1");
        // The defaults stay beside what the file adds.
        assert_eq!(c.kafka.consumer["fetch.error.backoff.ms"], "10");
        let err = Config::from_layers(None, &["kafka.producer.x=[1]".into()]).unwrap_err();
        assert!(
            err.problems[0].contains("kafka.producer.x must be a string"),
            "{err}"
        );
    }

    #[test]
    fn bad_brokers_and_topics_are_named() {
        let err = Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=localhost".into(),
                "ingest.kafka.topics=[\"ok\", \"no way\"]".into(),
            ],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("\"localhost\" is not host:port"), "{all}");
        assert!(
            all.contains("\"no way\" is not a Kafka topic name"),
            "{all}"
        );
    }
}
