//! `check-config --connect`: ask the brokers what a start would ask them, as the consumer and
//! as the producer, each with its own properties (credentials may differ), and report what a
//! start would stumble on — credentials or a certificate refused, an input topic missing or
//! refused by an ACL, the consumer group refused by one, an output topic missing or not
//! writable, an output topic's `max.message.bytes` below the producer's batches — before a
//! deployment finds it. Nothing is written: no topic is created, no group joined, no
//! transaction begun (an `init_transactions` under the service's transactional id would
//! fence the running service).

use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, Producer};

use super::client::{serve_events, Discovery};
use super::{discover, producer_config, KafkaError, TopicState};
use crate::config::Config;

/// What the brokers said.
#[derive(Debug, Default)]
pub struct Reached {
    /// What a start would stop on (or lose Scores to).
    pub problems: Vec<String>,
    /// What may be fine (a missing output topic the brokers may create when sluice starts).
    pub warnings: Vec<String>,
    /// What was found, for people: one line per topic.
    pub found: Vec<String>,
}

/// Ask, each client up to `patience`.
pub fn reach(config: &Config, patience: Duration) -> Reached {
    let mut r = Reached::default();
    let k = &config.ingest.kafka;
    let input_partitions = match ask_until_refused(patience, || discover(config, Duration::ZERO)) {
        Ok(counts) => {
            for (topic, n) in k.topics.iter().zip(&counts) {
                r.found
                    .push(format!("input topic {topic:?}: {n} partition(s)"));
            }
            group_side(config, &counts, patience, &mut r);
            start_side(config, &counts, &mut r);
            Some(counts.iter().sum::<i32>())
        }
        Err(e) => {
            r.problems.push(format!("as the consumer: {e}"));
            None
        }
    };
    producer_side(config, input_partitions, patience, &mut r);
    // Needs brokers that answer: asked only when both clients got in.
    if r.problems.is_empty() {
        if let Err(e) = crate::egress::kafka::check_batch_limits(config) {
            r.problems.push(e.to_string());
        }
    }
    r
}

/// One metadata request's wait (as start-up discovery's).
const ATTEMPT: Duration = Duration::from_secs(3);

/// `ask` again while the brokers stay silent, up to `patience`; a refusal (credentials, TLS)
/// is the answer at once: asking again would only be refused again.
fn ask_until_refused<T>(
    patience: Duration,
    ask: impl Fn() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let started = Instant::now();
    loop {
        match ask() {
            Err(KafkaError::Unreachable { refused: None, .. })
                if started.elapsed() + ATTEMPT <= patience => {}
            answer => return answer,
        }
    }
}

/// The consumer group, as the consumer: its committed offsets for the input partitions
/// (`counts`, per input topic) are asked for — an OffsetFetch, which finds the group's
/// coordinator and needs Describe on the group, the first thing a start with group membership
/// or an exactly_once commit does with it — and how many partitions have one is listed (lag
/// tools read them; sluice's checkpoints hold its own positions). Nothing is joined or
/// committed.
fn group_side(config: &Config, counts: &[i32], patience: Duration, r: &mut Reached) {
    let group = &config.ingest.kafka.group;
    let total: i32 = counts.iter().sum();
    let asked = super::inputs_with_group_offsets(config, counts, patience);
    match asked {
        Ok(with) => r.found.push(format!(
            "consumer group {group:?} (ingest.kafka.group): offsets committed for {with} of {total} input partition(s)"
        )),
        Err(e @ KafkaError::GroupNotAuthorized { .. }) => r.problems.push(e.to_string()),
        Err(e) => r.problems.push(format!(
            "ingest.kafka.group = {group:?}: the group's committed offsets could not be read: {e}"
        )),
    }
}

/// Where `ingest.kafka.start`, when it is a point in time, would start each input partition
/// that nothing holds an offset for (the same ListOffsets question the start asks). A time no
/// record reaches leaves every partition at its end, as `latest` would: a warning, it may be
/// a typo'd year.
fn start_side(config: &Config, counts: &[i32], r: &mut Reached) {
    let start = config.ingest.kafka.start;
    if start.point_ms(std::time::SystemTime::now()).is_none() {
        return;
    }
    let parts: Vec<(&str, i32)> = config
        .ingest
        .kafka
        .topics
        .iter()
        .zip(counts)
        .flat_map(|(t, &n)| (0..n).map(move |p| (t.as_str(), p)))
        .collect();
    let asked = super::consumer_config(config)
        .create::<rdkafka::consumer::BaseConsumer>()
        .map_err(KafkaError::client("consumer"))
        .and_then(|c| {
            super::start_at::first_offsets(&c, start, &parts, std::time::SystemTime::now())
        });
    let offsets = match asked {
        Ok(o) => o,
        Err(e) => {
            r.problems.push(format!(
                "ingest.kafka.start = {start}: the brokers did not say where: {e}"
            ));
            return;
        }
    };
    for topic in &config.ingest.kafka.topics {
        let at: Vec<String> = parts
            .iter()
            .zip(&offsets)
            .filter(|((t, _), _)| t == topic)
            .map(|((_, p), o)| match o {
                rdkafka::Offset::Offset(n) => format!("{p} at offset {n}"),
                _ => format!("{p} at its end"),
            })
            .collect();
        r.found.push(format!(
            "input topic {topic:?} from ingest.kafka.start = {start} (where nothing holds an offset): partition {}",
            at.join(", ")
        ));
    }
    if !offsets.is_empty()
        && offsets
            .iter()
            .all(|o| !matches!(o, rdkafka::Offset::Offset(_)))
    {
        r.warnings.push(format!(
            "ingest.kafka.start = {start}: no input partition holds a record at or after it, so each starts at its end, as \"latest\" would"
        ));
    }
}

/// The producer's credentials and the topics it writes: the output topics must exist (or be
/// made by the brokers when sluice starts) and be writable; under exactly_once the progress
/// topic and the changelog, which sluice makes at start when missing, must have the layout
/// the start requires (`input_partitions`: the input topics' partitions together, when the
/// consumer's side learnt them).
fn producer_side(
    config: &Config,
    input_partitions: Option<i32>,
    patience: Duration,
    r: &mut Reached,
) {
    let e = &config.egress.kafka;
    let outputs = crate::egress::kafka::output_topics(config);
    let exactly_once = e.delivery == crate::config::Delivery::ExactlyOnce;
    if outputs.is_empty() && !exactly_once {
        return;
    }
    let mut cc = producer_config(config, None);
    // A metadata request for a missing topic would create it on a broker that auto-creates.
    cc.set("allow.auto.create.topics", "false");
    let producer: BaseProducer<Discovery> = match cc.create_with_context(Discovery::default()) {
        Ok(p) => p,
        Err(e) => {
            r.problems.push(format!("the Kafka producer: {e}"));
            return;
        }
    };
    let brokers = &config.ingest.kafka.brokers;
    let describe = |topic: &str| -> Result<TopicState, KafkaError> {
        let started = Instant::now();
        let md = ask_until_refused(patience, || {
            producer
                .client()
                .fetch_metadata(Some(topic), ATTEMPT)
                .map_err(|e| {
                    serve_events(|| producer.poll(Duration::ZERO));
                    KafkaError::Unreachable {
                        brokers: brokers.clone(),
                        waited_s: started.elapsed().as_secs(),
                        last: e.to_string(),
                        refused: producer.context().refused(),
                    }
                })
        })?;
        Ok(TopicState::of(&md, topic))
    };
    for &(topic, key) in &outputs {
        match describe(topic) {
            Ok(TopicState::Partitions(n)) => r
                .found
                .push(format!("output topic {topic:?} ({key}): {n} partition(s)")),
            Ok(TopicState::NotAuthorized) => r.problems.push(
                crate::egress::kafka::not_authorized(key, topic, brokers),
            ),
            Ok(TopicState::Missing) => r.warnings.push(format!(
                "{key} = {topic:?} does not exist on {brokers}: create it (sluice does not; a broker with auto.create.topics.enable makes it when sluice starts, with the broker's default partitions and max.message.bytes; with other brokers the start stops)"
            )),
            Err(e) => {
                r.problems.push(format!("as the producer: {e}"));
                // The other topics would only say the same.
                return;
            }
        }
    }
    if !exactly_once {
        return;
    }
    // The topics sluice makes itself (compacted) when they are missing: (name, what, the
    // partitions it is made with, whether an existing one must have exactly those). Any
    // progress topic is read whole; the changelog needs one partition per input partition
    // (as the start checks).
    let mut own = vec![(
        e.progress_topic.clone(),
        "the exactly_once progress topic (egress.kafka.progress_topic)",
        Some(1),
        false,
    )];
    if e.changelog {
        own.push((
            e.changelog_topic(&config.ingest.kafka.group),
            "the changelog topic (egress.kafka.changelog_topic)",
            input_partitions,
            true,
        ));
    }
    for (topic, what, wanted, exact) in own {
        match describe(&topic) {
            Ok(TopicState::Partitions(n)) => match wanted {
                Some(w) if exact && n as i32 != w => {
                    r.problems.push(format!(
                        "{what} {topic:?} has {n} partition(s), but the input topics have {w} together: one changelog partition per input partition is needed (a changelog of other input topics? set egress.kafka.changelog_topic)"
                    ))
                }
                _ => r.found.push(format!("{what} {topic:?}: {n} partition(s)")),
            },
            Ok(TopicState::NotAuthorized) => r.problems.push(format!(
                "{what} {topic:?}: the producer's principal is not authorized for it (an ACL refuses: grant it Describe, Read and Write, and Create while it does not exist)"
            )),
            Ok(TopicState::Missing) => {
                // A progress topic missing while state.dir says transactions committed with it:
                // the start would be refused (`committed_mark`).
                let marked = if topic == e.progress_topic {
                    crate::egress::kafka::committed_mark::marked_shards(config)
                } else {
                    Vec::new()
                };
                if marked.is_empty() {
                    r.found.push(format!(
                        "{what} {topic:?}: not there yet; sluice makes it at start (compacted{}; the producer's principal needs Create)",
                        wanted.map_or(String::new(), |w| format!(", {w} partition(s)"))
                    ));
                } else {
                    let (dirs, ids): (Vec<_>, Vec<_>) = marked.into_iter().unzip();
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    r.problems.push(crate::egress::kafka::committed_mark::lost(
                        &dirs, &ids, &topic,
                    ));
                }
            }
            Err(e) => {
                r.problems.push(format!("as the producer: {e}"));
                return;
            }
        }
    }
}
