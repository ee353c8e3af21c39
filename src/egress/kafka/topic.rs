//! Topics sluice writes its own records to (progress, changelog): created compacted when
//! missing.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;
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

/// An admin client on `ingest.kafka.brokers` (topic creation and description, at start).
fn admin_client(config: &Config) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    let mut ac = rdkafka::ClientConfig::new();
    ac.set("bootstrap.servers", config.ingest.kafka.brokers.trim());
    ac.create().map_err(KafkaError::client("admin client"))
}
