//! librdkafka clients as sluice configures them: the pass-through `[kafka.*]` properties, the
//! ones sluice owns, and start-up discovery of the input topics.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("Kafka {what}: {source}")]
    Client {
        what: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "Kafka topic {topic:?} does not exist on {brokers} (create it, or fix ingest.kafka.topics)"
    )]
    MissingTopic { topic: String, brokers: String },
    #[error("Kafka brokers {brokers} did not answer within {waited_s} s ({last}); is the broker running and is ingest.kafka.brokers right?")]
    Unreachable {
        brokers: String,
        waited_s: u64,
        last: String,
    },
    #[error("Kafka: {0}")]
    Other(String),
}

impl KafkaError {
    pub fn client(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let what = what.into();
        move |source| KafkaError::Client { what, source }
    }
}

fn base(config: &Config, props: &std::collections::BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in props {
        c.set(k, v);
    }
    c.set("bootstrap.servers", config.ingest.kafka.brokers.trim());
    c
}

/// A consumer of the input topics (offsets are sluice's: no auto commit, no auto store).
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut c = base(config, &config.kafka.consumer);
    c.set("group.id", &config.ingest.kafka.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Scores of an aborted upstream transaction must not be consumed as events.
        .set("isolation.level", "read_committed");
    c
}

/// An idempotent producer; with `transactional_id`, a transactional one.
pub fn producer_config(config: &Config, transactional_id: Option<&str>) -> ClientConfig {
    let mut c = base(config, &config.kafka.producer);
    c.set("enable.idempotence", "true");
    if let Some(id) = transactional_id {
        c.set("transactional.id", id).set(
            "transaction.timeout.ms",
            config.egress.kafka.transaction_timeout_ms.to_string(),
        );
    }
    c
}

/// The discovery consumer's context: librdkafka's global errors (all brokers down, ...) are
/// what the metadata request fails with, which the caller reports once per attempt; logged
/// here too they were a dozen lines every 3 s while the brokers stay away.
struct Discovery;

impl rdkafka::ClientContext for Discovery {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!("Kafka discovery: {error}: {reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for Discovery {}

/// The context of readers that read a topic to its end (`enable.partition.eof`: progress,
/// changelog): librdkafka also reports each partition's end as a global error, which the
/// default context logged at ERROR level, once per partition at every start.
pub struct ToTheEnd;

impl rdkafka::ClientContext for ToTheEnd {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::KafkaError as E;
        use rdkafka::types::RDKafkaErrorCode as C;
        if matches!(error, E::PartitionEOF(_) | E::Global(C::PartitionEOF)) {
            tracing::debug!("Kafka reader: {error}: {reason}");
        } else {
            tracing::warn!("Kafka reader: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ToTheEnd {}

/// How long start-up asks unreachable brokers before it serves UDP without them (and goes
/// on asking from a thread of its own; see `app/kafka_part.rs`).
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(3);

/// Partition counts of `ingest.kafka.topics`, in order. Retries while the brokers do not
/// answer (logging each attempt), up to `patience` (at least one attempt of 3 s); a missing
/// topic is an error at once.
pub fn discover(config: &Config, patience: Duration) -> Result<Vec<i32>, KafkaError> {
    let k = &config.ingest.kafka;
    let consumer: BaseConsumer<Discovery> = consumer_config(config)
        .create_with_context(Discovery)
        .map_err(KafkaError::client("consumer for discovery"))?;
    let started = Instant::now();
    let mut counts = Vec::with_capacity(k.topics.len());
    for topic in &k.topics {
        let mut attempt = 0u32;
        let n = loop {
            attempt += 1;
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(3)) {
                Ok(md) => {
                    let t = md.topics().iter().find(|t| t.name() == topic);
                    match t {
                        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                            break t.partitions().len() as i32
                        }
                        _ => {
                            return Err(KafkaError::MissingTopic {
                                topic: topic.clone(),
                                brokers: k.brokers.clone(),
                            })
                        }
                    }
                }
                Err(e) => {
                    if started.elapsed() >= patience {
                        return Err(KafkaError::Unreachable {
                            brokers: k.brokers.clone(),
                            waited_s: started.elapsed().as_secs(),
                            last: e.to_string(),
                        });
                    }
                    tracing::warn!(brokers = %k.brokers, attempt, "Kafka brokers not answering yet ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        counts.push(n);
    }
    Ok(counts)
}
