//! Topics sluice writes its own records to (progress, changelog): created compacted when
//! missing. The output topics (Scores, alerts, dead letters): looked up at start, so a missing
//! one stops the start naming it rather than every Score failing half a minute later.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;
use crate::ingest::kafka::client_errors::Counted;
use crate::ingest::kafka::KafkaError;

/// Create `topic` compacted with `partitions` partitions unless it exists; returns its
/// partition count (an existing topic's, which the caller checks) and whether it was created
/// now.
pub fn ensure_compacted<C: rdkafka::consumer::ConsumerContext>(
    config: &Config,
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: i32,
    what: &str,
) -> Result<(i32, bool), KafkaError> {
    let existing = |consumer: &BaseConsumer<C>| -> Result<Option<i32>, KafkaError> {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(KafkaError::client(format!("{what} metadata")))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32))
    };
    if let Some(n) = existing(consumer)? {
        return Ok((n, false));
    }
    let admin = admin_client(config)?;
    // -1: the cluster's default replication (KIP-464); a broker that does not know it gets 1.
    for replication in [-1, 1] {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
            .set("cleanup.policy", "compact");
        let results = futures_executor::block_on(admin.create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .map_err(KafkaError::client(format!("creating {what}")))?;
        match results.into_iter().next() {
            Some(Ok(_)) => {
                tracing::info!(topic, partitions, "created {what}");
                return Ok((partitions, true));
            }
            Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => break,
            Some(Err((_, rdkafka::types::RDKafkaErrorCode::InvalidReplicationFactor)))
                if replication == -1 => {}
            Some(Err((t, code))) => {
                return Err(KafkaError::Other(format!("creating {what} {t}: {code}")))
            }
            None => break,
        }
    }
    // Created meanwhile by another instance: its count is what counts.
    Ok((existing(consumer)?.unwrap_or(partitions), false))
}

/// `topic`'s value of config `name` as the brokers describe it (DescribeConfigs): None when
/// the topic does not list it or the value is not a whole number.
pub fn config_u64(config: &Config, topic: &str, name: &str) -> Result<Option<u64>, KafkaError> {
    let admin = admin_client(config)?;
    let results = futures_executor::block_on(admin.describe_configs(
        [&ResourceSpecifier::Topic(topic)],
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
    ))
    .map_err(KafkaError::client(format!(
        "describing topic {topic}'s config"
    )))?;
    match results.into_iter().next() {
        Some(Ok(resource)) => Ok(resource
            .get(name)
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.trim().parse().ok())),
        Some(Err(code)) => Err(KafkaError::Other(format!(
            "describing topic {topic}'s config: {code}"
        ))),
        None => Ok(None),
    }
}

/// A Kafka record batch's own header (format v2), beyond its records.
const BATCH_HEADER_BYTES: u64 = 61;

/// A topic sluice produces to, and the largest record batch its producer may send there.
struct BatchNeed {
    topic: String,
    what: &'static str,
    bytes: u64,
    /// What makes it that large, and how to make it smaller.
    why: String,
}

/// What each topic sluice produces to must accept. librdkafka fills a batch up to
/// min(`message.max.bytes`, `batch.size`) and sends a larger record alone, and the broker
/// refuses a batch over the topic's `max.message.bytes` whole, with every record in it
/// (noida-db, as Kafka: a batch of a 5 000- and a 500-byte record to a topic of 2 000, both
/// lost). A lost Score stops sluice and the restart sends the same batch again, so this is a
/// start-up check, not a surprise under load.
fn batch_needs(config: &Config) -> Result<Vec<BatchNeed>, KafkaError> {
    let q = crate::config::producer_queue::producer_queue(config).map_err(KafkaError::Other)?;
    let e = &config.egress.kafka;
    let batch = q.message_bytes_max.min(q.batch_bytes_max) as u64;
    let record = (q.value_bytes_max + crate::config::producer_queue::RECORD_FRAMING_BYTES_MAX)
        as u64
        + BATCH_HEADER_BYTES;
    let batched = batch.max(record);
    let batched_why = format!(
        "batches of up to {batch} bytes (the smaller of kafka.producer \"message.max.bytes\" = {} and \"batch.size\" = {}), and a record of wire.batch_events_max = {} Scores alone up to {record}; lower \"batch.size\" (or wire.batch_events_max)",
        q.message_bytes_max, q.batch_bytes_max, config.wire.batch_events_max
    );
    let mut needs = Vec::new();
    let mut need = |topic: &str, what, bytes, why: &String| {
        if !topic.is_empty() {
            needs.push(BatchNeed {
                topic: topic.to_owned(),
                what,
                bytes,
                why: why.clone(),
            });
        }
    };
    need(&e.scores_topic, "Score records", batched, &batched_why);
    need(&e.alerts_topic, "alert records", batched, &batched_why);
    // A skipped input record is dead-lettered whole up to message.max.bytes.
    let whole = q.message_bytes_max as u64 + BATCH_HEADER_BYTES;
    let whole_why = format!(
        "a skipped input record goes whole up to kafka.producer \"message.max.bytes\" = {}, a batch of its own with {BATCH_HEADER_BYTES} bytes of header; lower \"message.max.bytes\"",
        q.message_bytes_max
    );
    need(
        &e.dead_letter_topic,
        "dead letters",
        whole.max(batched),
        &whole_why,
    );
    if e.delivery == crate::config::Delivery::ExactlyOnce {
        need(&e.progress_topic, "progress records", batch, &batched_why);
        if e.changelog {
            let topic = e.changelog_topic(&config.ingest.kafka.group);
            need(&topic, "changelog records", batch, &batched_why);
        }
    }
    Ok(needs)
}

/// Checks every topic sluice produces to (that exists: a new one gets the broker's default)
/// against `batch_needs`, and reports all that fall short together. A broker that does not
/// describe a topic's `max.message.bytes` is logged and not checked.
pub fn check_batch_limits(config: &Config) -> Result<(), KafkaError> {
    let needs = batch_needs(config)?;
    if needs.is_empty() {
        return Ok(());
    }
    let admin = admin_client(config)?;
    let specs: Vec<ResourceSpecifier<'_>> = needs
        .iter()
        .map(|n| ResourceSpecifier::Topic(&n.topic))
        .collect();
    let described = futures_executor::block_on(admin.describe_configs(
        &specs,
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
    ));
    let results = match described {
        Ok(r) => r,
        Err(err) => {
            tracing::warn!("describing the output topics' configs: {err}; their max.message.bytes is not checked");
            return Ok(());
        }
    };
    let mut problems = Vec::new();
    for (n, result) in needs.iter().zip(results) {
        let limit = match result {
            Ok(resource) => resource
                .get("max.message.bytes")
                .and_then(|c| c.value.as_deref())
                .and_then(|v| v.trim().parse::<u64>().ok()),
            Err(code) => {
                tracing::info!(topic = %n.topic, "not described ({code}): its max.message.bytes is not checked (a topic created on first use gets the broker's default)");
                continue;
            }
        };
        match limit {
            Some(limit) if limit < n.bytes => problems.push(format!(
                "topic {:?} ({}) accepts record batches of up to {limit} bytes (max.message.bytes), but the producer may send it {} bytes: {}; or raise the topic's max.message.bytes (the broker refuses an oversize batch whole, and a record sluice loses stops it)",
                n.topic, n.what, n.bytes, n.why
            )),
            Some(_) => {}
            None => tracing::info!(topic = %n.topic, "the brokers do not describe its max.message.bytes: not checked"),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(KafkaError::Other(problems.join("\n")))
    }
}

/// The output topics that are on (not `""`), each with its config key.
pub fn output_topics(config: &Config) -> Vec<(&str, &'static str)> {
    let e = &config.egress.kafka;
    [
        (e.scores_topic.as_str(), "egress.kafka.scores_topic"),
        (e.alerts_topic.as_str(), "egress.kafka.alerts_topic"),
        (
            e.dead_letter_topic.as_str(),
            "egress.kafka.dead_letter_topic",
        ),
    ]
    .into_iter()
    .filter(|(t, _)| !t.is_empty())
    .collect()
}

/// An output topic an ACL refuses the producer: said by the start and by `check-config
/// --connect` alike.
pub fn not_authorized(key: &str, topic: &str, brokers: &str) -> String {
    format!("{key} = {topic:?} on {brokers}: the producer's principal is not authorized for it (an ACL refuses: grant it Describe and Write)")
}

/// How long start waits for an output topic the brokers create on sluice's metadata request.
const OUTPUT_TOPIC_PATIENCE: Duration = Duration::from_secs(10);

/// Each output topic (`scores_topic`, `alerts_topic`, `dead_letter_topic`) asked for as the
/// producer asks before its first record: brokers with `auto.create.topics.enable` create it
/// then (with their default partitions, as they would at the first Score), so a topic still
/// unknown after `OUTPUT_TOPIC_PATIENCE` will never be there and every record to it would fail
/// (librdkafka gives up on an unknown topic after ~30 s, and sluice stops for a lost Score,
/// again after each restart). Reported all together; a refused topic is named as such.
pub fn check_output_topics(config: &Config) -> Result<(), KafkaError> {
    use crate::ingest::kafka::TopicState;
    use rdkafka::producer::{BaseProducer, Producer};
    let outputs = output_topics(config);
    if outputs.is_empty() {
        return Ok(());
    }
    let mut cc = crate::ingest::kafka::producer_config(config, None);
    // It sends nothing: no producer id to ask the brokers for.
    cc.set("enable.idempotence", "false");
    let producer: BaseProducer<Counted> = cc
        .create_with_context(Counted("producer (output topics)"))
        .map_err(KafkaError::client("producer for the output topics"))?;
    let brokers = &config.ingest.kafka.brokers;
    let deadline = std::time::Instant::now() + OUTPUT_TOPIC_PATIENCE;
    let mut problems = Vec::new();
    for (topic, key) in outputs {
        loop {
            let md = match producer
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(10))
            {
                Ok(md) => md,
                Err(err) => {
                    // The brokers answered discovery a moment ago: not a reason to stop here
                    // (the Scores' delivery reports will tell).
                    tracing::warn!("looking {key} = {topic:?} up: {err}; not checked");
                    break;
                }
            };
            match TopicState::of(&md, topic) {
                TopicState::Partitions(_) => break,
                TopicState::NotAuthorized => {
                    problems.push(not_authorized(key, topic, brokers));
                    break;
                }
                // Being created (LEADER_NOT_AVAILABLE at first), or unknown: asked again.
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                _ => {
                    problems.push(format!("{key} = {topic:?} does not exist on {brokers}, and the brokers did not create it when asked (auto.create.topics.enable off): create it (sluice creates only its progress and changelog topics)"));
                    break;
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(KafkaError::Other(problems.join("\n")))
    }
}

/// An admin client on `ingest.kafka.brokers` with the producer's properties (TLS, SASL), for
/// topic creation and description at start.
fn admin_client(config: &Config) -> Result<AdminClient<Counted>, KafkaError> {
    crate::ingest::kafka::admin_config(config)
        .create_with_context(Counted("admin client"))
        .map_err(KafkaError::client("admin client"))
}
