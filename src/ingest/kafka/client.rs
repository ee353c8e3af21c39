//! librdkafka clients as sluice configures them: the pass-through `[kafka.*]` properties, the
//! ones sluice owns, and start-up discovery of the input topics.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::client_errors::{self, ClientErrorKind};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("Kafka {what}: {source}{}", refusal_advice(.source))]
    Client {
        what: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "Kafka topic {topic:?} does not exist on {brokers} (create it, or fix ingest.kafka.topics)"
    )]
    MissingTopic { topic: String, brokers: String },
    #[error(
        "Kafka consumer group {group:?}: {} (librdkafka: {said})",
        client_errors::GROUP_REFUSED
    )]
    GroupNotAuthorized { group: String, said: String },
    /// A broker answers "topic authorization failed" whether the topic exists or not.
    #[error("Kafka topic {topic:?} on {brokers}: sluice's principal is not authorized for it (an ACL refuses: grant it Describe and Read on the input topics)")]
    TopicNotAuthorized { topic: String, brokers: String },
    #[error("{}", no_answer(.brokers, *.waited_s, .last, .refused.as_ref()))]
    Unreachable {
        brokers: String,
        waited_s: u64,
        /// The metadata request's own error.
        last: String,
        /// What librdkafka said meanwhile, when it says more: a refusal (SASL, TLS).
        refused: Option<Refusal>,
    },
    #[error("Kafka: {0}")]
    Other(String),
}

/// After a refusal's words (credentials, TLS, an ACL) or a fencing's, what to check; nothing
/// after other errors (librdkafka's words say enough).
fn refusal_advice(source: &rdkafka::error::KafkaError) -> String {
    match ClientErrorKind::of(source) {
        ClientErrorKind::Authentication
        | ClientErrorKind::Authorization
        | ClientErrorKind::Tls
        | ClientErrorKind::Fenced => {
            format!(" ({})", client_errors::advice_for(source))
        }
        ClientErrorKind::Transport | ClientErrorKind::Other => String::new(),
    }
}

/// A topic as the brokers describe it in a metadata answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicState {
    Partitions(usize),
    /// Unknown to the brokers, being created, or without partitions yet.
    Missing,
    /// An ACL refuses it (brokers answer so whether it exists or not).
    NotAuthorized,
}

impl TopicState {
    /// `topic` as `md` (a metadata answer asked for it) describes it.
    pub fn of(md: &rdkafka::metadata::Metadata, topic: &str) -> Self {
        use rdkafka::types::RDKafkaErrorCode as C;
        let t = md.topics().iter().find(|t| t.name() == topic);
        match (t.and_then(|t| t.error()).map(C::from), t) {
            (None, Some(t)) if !t.partitions().is_empty() => Self::Partitions(t.partitions().len()),
            (Some(C::TopicAuthorizationFailed), _) => Self::NotAuthorized,
            _ => Self::Missing,
        }
    }
}

/// The rest of `Unreachable`'s message: a refusal says what to check; silence asks whether
/// the brokers run where the config says.
fn no_answer(brokers: &str, waited_s: u64, last: &str, refused: Option<&Refusal>) -> String {
    match refused {
        Some(r) => format!(
            "Kafka at {brokers}: {} (librdkafka, for {waited_s} s: {})",
            r.kind.advice(),
            r.said
        ),
        None => format!("Kafka brokers {brokers} did not answer within {waited_s} s ({last}); is the broker running and is ingest.kafka.brokers right?"),
    }
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
    // A position the brokers no longer have (retention deleted it before sluice took it):
    // go on from the oldest record left, losing only what is gone, not skip to the end
    // (librdkafka's default) past every record still there (`offset_resets`). sluice always
    // assigns an explicit offset, so this decides nothing else.
    if !config.kafka.consumer.contains_key("auto.offset.reset") {
        c.set("auto.offset.reset", "earliest");
    }
    c
}

/// The admin client's (topics created and described at start): the producer's pass-through
/// properties (an admin client is a producer-type client), so it reaches a secured cluster as
/// the producer does (TLS, SASL).
pub fn admin_config(config: &Config) -> ClientConfig {
    base(config, &config.kafka.producer)
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

/// What librdkafka says while a `clients_check` client is made: its warnings and errors.
#[derive(Default)]
struct Probe {
    said: std::sync::Mutex<Vec<String>>,
}

impl rdkafka::ClientContext for Probe {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(
            level,
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
        ) {
            if let Ok(mut said) = self.said.lock() {
                // The thread tag says nothing here: every line is from the app thread.
                let message = message.trim_start_matches("[thrd:app]: ");
                said.push(format!("{fac}: {message}"));
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Probe {}

impl rdkafka::producer::ProducerContext for Probe {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

impl Probe {
    fn take(&self) -> Vec<String> {
        self.said
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

/// What librdkafka makes of the whole config only when a client is made, not property by
/// property (`config::validate_kafka`): a SASL mechanism this build has no provider for,
/// conflicting idempotence or transaction settings, an unreadable TLS file; and what it warns
/// about (a producer property in `[kafka.consumer]`, which it ignores). For check-config: the
/// consumer and the producer are made as sluice makes them (transactional under
/// exactly_once) but with no broker to connect to, and dropped. Returns (refusals, warnings),
/// each naming its client.
pub fn clients_check(config: &Config) -> (Vec<String>, Vec<String>) {
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();
    let transactional =
        (config.egress.kafka.delivery == crate::config::Delivery::ExactlyOnce).then_some("check");
    // Properties refused alone are reported by the config's validation; left out here, so
    // each problem is listed once.
    let mut config = config.clone();
    for props in [&mut config.kafka.consumer, &mut config.kafka.producer] {
        props.retain(|k, v| crate::config::validate_kafka::librdkafka_refuses(k, v).is_none());
    }
    let config = &config;
    // The crate sets librdkafka's log level from the `log` crate's, which may be off here.
    let mut consumer = consumer_config(config);
    consumer
        .set("bootstrap.servers", "")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    let mut producer = producer_config(config, transactional);
    producer
        .set("bootstrap.servers", "")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    // Each client is dropped as soon as it is made (inside `map`).
    let consumer = consumer
        .create_with_context::<_, BaseConsumer<Probe>>(Probe::default())
        .map(|c| {
            // Its warnings wait in its queue (the crate routes logs there).
            let _ = c.poll(Duration::ZERO);
            c.context().take()
        });
    let producer = producer
        .create_with_context::<_, rdkafka::producer::BaseProducer<Probe>>(Probe::default())
        .map(|p| {
            p.poll(Duration::ZERO);
            rdkafka::producer::Producer::context(&p).take()
        });
    for (role, made) in [("consumer", consumer), ("producer", producer)] {
        match made {
            Ok(said) => warnings.extend(
                said.into_iter()
                    .map(|w| format!("the Kafka {role}: librdkafka: {w}")),
            ),
            Err(e) => refusals.push(format!(
                "the Kafka {role} cannot be made from [kafka.{role}] and sluice's settings: {}",
                e.to_string().trim_end()
            )),
        }
    }
    (refusals, warnings)
}

/// The discovery consumer's context. librdkafka's global errors say why a metadata request
/// went unanswered — the brokers refused sluice's credentials, the TLS handshake failed —
/// where the request's own error says only "transport failure": the newest such refusal is
/// kept for the caller's message. Each is counted (`client_errors`); not logged here, as
/// the caller reports once per attempt (logged too they were a dozen lines every 3 s while
/// the brokers stay away).
#[derive(Default)]
pub(super) struct Discovery {
    refused: std::sync::Mutex<Option<Refusal>>,
}

/// Why the brokers did not answer, as librdkafka said it: (kind, its words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: ClientErrorKind,
    pub said: String,
}

impl rdkafka::ClientContext for Discovery {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let (kind, _) = client_errors::note(&error, reason);
        tracing::debug!("Kafka discovery: {error}: {reason}");
        if matches!(kind, ClientErrorKind::Authentication | ClientErrorKind::Tls) {
            if let Ok(mut refused) = self.refused.lock() {
                *refused = Some(Refusal {
                    kind,
                    said: reason.to_owned(),
                });
            }
        }
    }
}

impl rdkafka::producer::ProducerContext for Discovery {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

impl Discovery {
    pub(super) fn refused(&self) -> Option<Refusal> {
        self.refused.lock().ok()?.clone()
    }
}

impl rdkafka::consumer::ConsumerContext for Discovery {}

/// Serve what a client's queue holds (its errors reach its context so). A poll serves one
/// event (a log line, an error) and says None for a log line as for an empty queue: a fixed
/// number of polls, more than one attempt queues (a few lines per broker per retry), each µs
/// when the queue is empty.
pub(super) fn serve_events(mut poll: impl FnMut()) {
    for _ in 0..256 {
        poll();
    }
}

/// The group's committed offsets for `tpl`, asked as `consumer` (assigned nothing: its queue
/// is served here) up to `timeout`. A group an ACL refuses is named within about a second:
/// the call itself only waits for a coordinator it is never given and times out, while
/// librdkafka reports the refusal once on the consumer's queue (its context hears it there
/// too), so the call is made in slices of `GROUP_ASK_SLICE` and the queue looked at between.
pub fn group_committed_offsets<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    group: &str,
    tpl: rdkafka::TopicPartitionList,
    timeout: Duration,
) -> Result<rdkafka::TopicPartitionList, KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(GROUP_ASK_SLICE);
        let e = match consumer.committed_offsets(tpl.clone(), slice) {
            Ok(committed) => return Ok(committed),
            Err(e) => e,
        };
        let mut refused = None;
        serve_events(|| {
            if let Some(Err(err)) = consumer.poll(Duration::ZERO) {
                if err.rdkafka_error_code()
                    == Some(rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed)
                {
                    refused = Some(err.to_string());
                }
            }
        });
        if let Some(said) = refused {
            return Err(KafkaError::GroupNotAuthorized {
                group: group.to_owned(),
                said,
            });
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::client("reading the group's committed offsets")(
                e,
            ));
        }
    }
}

/// One slice of `group_committed_offsets`' wait.
const GROUP_ASK_SLICE: Duration = Duration::from_secs(1);

/// Under exactly_once each transaction commits the consumed offsets to the consumer group,
/// so a group an ACL refuses would fail the first commit (and every restart's): asked at
/// start instead (the group's committed offsets for the input partitions, `counts` per input
/// topic; milliseconds on a cluster that answers), so the start stops naming it. Any other
/// failure to read them is only logged: the commits will say more.
pub fn check_group(config: &Config, counts: &[i32]) -> Result<(), KafkaError> {
    match inputs_with_group_offsets(config, counts, Duration::from_secs(10)) {
        Ok(_) => Ok(()),
        Err(e @ KafkaError::GroupNotAuthorized { .. }) => Err(e),
        Err(e) => {
            tracing::warn!("Kafka consumer group {:?}: its committed offsets could not be read at start ({e}); going on", config.ingest.kafka.group);
            Ok(())
        }
    }
}

/// How many of the input partitions (`counts` per input topic) have an offset committed to
/// the consumer group, asked as the consumer up to `timeout` (nothing joined or committed).
pub fn inputs_with_group_offsets(
    config: &Config,
    counts: &[i32],
    timeout: Duration,
) -> Result<usize, KafkaError> {
    let k = &config.ingest.kafka;
    let consumer: BaseConsumer<Discovery> = consumer_config(config)
        .create_with_context(Discovery::default())
        .map_err(KafkaError::client("consumer for the group's offsets"))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (topic, &n) in k.topics.iter().zip(counts) {
        for p in 0..n {
            tpl.add_partition(topic, p);
        }
    }
    // The list is dropped before the consumer (DEPENDENCIES.md: a hang otherwise).
    let committed = group_committed_offsets(&consumer, &k.group, tpl, timeout)?;
    Ok(committed
        .elements()
        .iter()
        .filter(|e| matches!(e.offset(), rdkafka::Offset::Offset(_)))
        .count())
}

/// How long start-up asks unreachable brokers before it serves UDP without them (and goes
/// on asking from a thread of its own; see `app/kafka_part.rs`).
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(3);

/// Partition counts of `ingest.kafka.topics`, in order. Retries while the brokers do not
/// answer (logging each attempt), up to `patience` (at least one attempt of 3 s); a missing
/// topic is an error at once.
pub fn discover(config: &Config, patience: Duration) -> Result<Vec<i32>, KafkaError> {
    let k = &config.ingest.kafka;
    let consumer: BaseConsumer<Discovery> = consumer_config(config)
        .create_with_context(Discovery::default())
        .map_err(KafkaError::client("consumer for discovery"))?;
    let started = Instant::now();
    let mut counts = Vec::with_capacity(k.topics.len());
    for topic in &k.topics {
        let mut attempt = 0u32;
        let n = loop {
            attempt += 1;
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(3)) {
                Ok(md) => match TopicState::of(&md, topic) {
                    TopicState::Partitions(n) => break n as i32,
                    TopicState::NotAuthorized => {
                        return Err(KafkaError::TopicNotAuthorized {
                            topic: topic.clone(),
                            brokers: k.brokers.clone(),
                        })
                    }
                    TopicState::Missing => {
                        return Err(KafkaError::MissingTopic {
                            topic: topic.clone(),
                            brokers: k.brokers.clone(),
                        })
                    }
                },
                Err(e) => {
                    // The errors librdkafka queued meanwhile (the refusal, if any) reach the
                    // context when the client is polled; no record is assigned to it.
                    serve_events(|| {
                        let _ = consumer.poll(Duration::ZERO);
                    });
                    let unreachable = KafkaError::Unreachable {
                        brokers: k.brokers.clone(),
                        waited_s: started.elapsed().as_secs(),
                        last: e.to_string(),
                        refused: consumer.context().refused(),
                    };
                    if started.elapsed() >= patience {
                        return Err(unreachable);
                    }
                    tracing::warn!(attempt, "{unreachable}; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        counts.push(n);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_returned_by_a_call_says_what_to_grant_other_errors_only_librdkafkas_words() {
        use rdkafka::error::KafkaError as RdError;
        use rdkafka::types::RDKafkaErrorCode as C;
        let txn = KafkaError::client("init_transactions")(RdError::Global(
            C::TransactionalIdAuthorizationFailed,
        ))
        .to_string();
        assert!(
            txn.starts_with("Kafka init_transactions: ")
                && txn.contains("grant it Describe and Write on the transactional ids"),
            "{txn}"
        );
        let group = KafkaError::client("send_offsets_to_transaction")(RdError::Global(
            C::GroupAuthorizationFailed,
        ))
        .to_string();
        assert!(group.contains("Describe and Read on the group"), "{group}");
        let down = KafkaError::client("commit_transaction")(RdError::Global(C::AllBrokersDown))
            .to_string();
        assert!(!down.contains("ACL") && !down.contains("grant"), "{down}");
    }

    fn check(sets: &[&str]) -> (Vec<String>, Vec<String>) {
        let mut all = vec![
            "ingest.kafka.brokers=127.0.0.1:9".to_owned(),
            "ingest.kafka.topics=[\"events\"]".to_owned(),
        ];
        all.extend(sets.iter().map(|s| s.to_string()));
        // Lenient: a property refused alone is the validation's problem, not this check's.
        let (config, _) = Config::load_lenient(None, &all).expect("config parses");
        clients_check(&config)
    }

    #[test]
    fn the_defaults_make_both_clients_without_a_word_from_librdkafka() {
        assert_eq!(check(&[]), (vec![], vec![]));
        let (refused, warned) = check(&[
            "egress.kafka.delivery=exactly_once",
            "state.dir=/tmp/sluice-clients-check",
        ]);
        assert!(
            refused.is_empty() && warned.is_empty(),
            "{refused:?} {warned:?}"
        );
    }

    #[test]
    fn what_librdkafka_refuses_only_for_the_whole_config_is_a_problem_per_client() {
        let (refused, warned) = check(&[
            "kafka.consumer.security.protocol=sasl_ssl",
            "kafka.consumer.sasl.mechanisms=GSSAPI",
            "kafka.producer.acks=1",
        ]);
        assert!(warned.is_empty(), "{warned:?}");
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0].starts_with("the Kafka consumer cannot be made")
                && refused[0].contains("GSSAPI"),
            "{refused:?}"
        );
        assert!(
            refused[1].starts_with("the Kafka producer cannot be made")
                && refused[1].contains("acks"),
            "{refused:?}"
        );
        // A CA file that is not there: librdkafka reads it only when a client is made.
        let (refused, _) = check(&[
            "kafka.producer.security.protocol=ssl",
            "kafka.producer.ssl.ca.location=/nonexistent/ca.pem",
        ]);
        assert!(
            refused.len() == 1
                && refused[0].starts_with("the Kafka producer cannot be made")
                && refused[0].contains("ssl.ca.location failed"),
            "{refused:?}"
        );
    }

    #[test]
    fn a_property_of_the_other_client_is_a_warning_and_one_refused_alone_is_left_out() {
        let (refused, warned) = check(&[
            "kafka.consumer.linger.ms=3",
            "kafka.producer.no.such.prop=1",
        ]);
        // no.such.prop is the validation's problem; the producer is made without it.
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0]
                .starts_with("the Kafka consumer: librdkafka: CONFWARN: Configuration property")
                && warned[0].contains("is a producer property and will be ignored"),
            "{warned:?}"
        );
    }
}
