//! Reading assigned partitions to their end, read_committed (the changelog rebuild, the input
//! replay, the progress topic): one poll loop with a cancel flag and a patience that runs
//! from the last record or partition end read, so a big read takes as long as it takes but a
//! stalled one (a transaction of another producer still open) ends with an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::BorrowedMessage;

use crate::config::Config;
use crate::ingest::kafka::client_errors::Counted;
use crate::ingest::kafka::{consumer_config, KafkaError};

/// How long a read may go without a record or a partition end.
const PATIENCE: Duration = Duration::from_secs(60);

/// What the read does after a record or a partition end.
pub enum Next {
    More,
    Done,
}

/// A consumer that reports each partition's end (`what` names it in errors and in its
/// client errors' log). `bulk`: for reads of whole topics, whose fetch responses may be large.
pub fn reader(
    config: &Config,
    what: &'static str,
    bulk: bool,
) -> Result<BaseConsumer<Counted>, KafkaError> {
    let mut cc = consumer_config(config);
    cc.set("enable.partition.eof", "true");
    if bulk {
        // The test broker (noida-db 0.2.3) ignores a fetch's size limits and answered a
        // changelog of 1M records with one 836 MB response, which librdkafka refuses past
        // receive.message.max.bytes (100 MB by default). Kafka keeps to fetch.max.bytes, so
        // this ceiling costs nothing there.
        cc.set("receive.message.max.bytes", "2147483647");
    }
    cc.create_with_context(Counted(what))
        .map_err(KafkaError::client(what))
}

/// Poll `consumer` (partitions assigned) until `on` says `Done`: each record is handed over
/// as `Some`, each partition's end as `None`. `cancel` set stops the read within one poll.
/// `what` ("reading changelog t") starts every error and warning.
pub fn read(
    consumer: &BaseConsumer<Counted>,
    what: &str,
    cancel: Option<&AtomicBool>,
    mut on: impl FnMut(Option<&BorrowedMessage<'_>>) -> Result<Next, KafkaError>,
) -> Result<(), KafkaError> {
    let mut last_progress = Instant::now();
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(KafkaError::Other(format!("{what}: cancelled (stopping)")));
        }
        if last_progress.elapsed() > PATIENCE {
            return Err(KafkaError::Other(format!(
                "{what} stalled for {} s before its end (a transaction of another producer still open?)",
                PATIENCE.as_secs()
            )));
        }
        let next = match consumer.poll(Duration::from_millis(200)) {
            None => Next::More,
            Some(Err(RdError::PartitionEOF(_))) => {
                last_progress = Instant::now();
                on(None)?
            }
            Some(Err(e)) => {
                tracing::warn!("{what}: {e}");
                Next::More
            }
            Some(Ok(m)) => {
                last_progress = Instant::now();
                on(Some(&m))?
            }
        };
        if let Next::Done = next {
            return Ok(());
        }
    }
}
