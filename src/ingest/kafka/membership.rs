//! Group membership (`ingest.kafka.membership = group`): each shard's consumer is a member of
//! the consumer group (cooperative-sticky, static membership), and Kafka decides which
//! instance owns which partition.
//!
//! librdkafka calls the rebalance callback from inside `poll`, on the shard thread, and waits
//! for the application's `incremental_assign` / `incremental_unassign` before the rebalance
//! goes on (its WAIT_ASSIGN_CALL / WAIT_UNASSIGN_CALL states; the call need not come from the
//! callback). The callback here only records what changed: the shard then finishes a revoked
//! partition (its offsets, state changes and Scores committed in a transaction) and rebuilds
//! an assigned one from the changelog, between two cycles, and only then makes the call. A
//! revocation completed before the commit would let the new owner start from an older offset
//! and fence this shard's next commit (KIP-447).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

/// A rebalance as the shard sees it: (topic, partition) lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assign(Vec<(String, i32)>),
    Revoke(Vec<(String, i32)>),
    /// librdkafka reported a rebalance error (the assignment is then unknown).
    Failed(String),
}

/// The shard consumer's context (both memberships; with `deal`'s assigned partitions it never
/// sees a rebalance).
#[derive(Default)]
pub struct ShardContext {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Set before the consumer is dropped: its close revokes whatever it holds, and no shard
    /// is left to do the call, so the callback does it.
    closing: AtomicBool,
    /// Positions librdkafka moved since the shard last asked (`offset_resets`), and whether
    /// there are any (one relaxed load a cycle instead of the lock).
    resets: Mutex<Vec<super::offset_resets::Reset>>,
    reset_pending: AtomicBool,
}

impl ShardContext {
    /// The rebalances recorded since the last call, oldest first.
    pub fn take(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// The positions librdkafka reset since the last call (none without taking the lock when
    /// there were none).
    pub fn take_resets(&self) -> Vec<super::offset_resets::Reset> {
        if !self.reset_pending.swap(false, Ordering::Relaxed) {
            return Vec::new();
        }
        std::mem::take(&mut *self.resets.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ClientContext for ShardContext {
    /// Also handed back by `poll`, where the shard counts nothing more: counted and logged
    /// here, with its reason (the poll's copy has only the code).
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::client_errors::record("consumer", &error, reason);
    }

    /// librdkafka's lines, as the crate's default context logs them, but for one: an
    /// asynchronous commit to the group (after each at_least_once checkpoint, for lag tools)
    /// has no result callback in rdkafka 0.39 (it sets no `offset_commit_cb`, and a manual
    /// commit gets no reply queue), so librdkafka only logs its failure as COMMITFAIL. One an
    /// ACL refused is counted and logged as a client error with what to grant, so a group the
    /// principal may describe but not read is named, not a bare warning; the Scores go on (the
    /// checkpoint holds the offsets).
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        use rdkafka::types::RDKafkaErrorCode as C;
        if fac == "OFFSET" {
            if let Some(reset) = super::offset_resets::Reset::parse(message) {
                tracing::error!("{}", reset.said());
                self.resets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(reset);
                self.reset_pending.store(true, Ordering::Relaxed);
                return;
            }
        }
        if fac == "COMMITFAIL" {
            // librdkafka's words for the codes (rd_kafka_err2str), in its per-partition list.
            let refused = [
                ("Group authorization failed", C::GroupAuthorizationFailed),
                ("Topic authorization failed", C::TopicAuthorizationFailed),
            ]
            .into_iter()
            .find(|(words, _)| message.contains(words));
            if let Some((_, code)) = refused {
                super::client_errors::record(
                    "consumer group commit (for lag tools)",
                    &rdkafka::error::KafkaError::ConsumerCommit(code),
                    message,
                );
                return;
            }
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
    }
}

impl ConsumerContext for ShardContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        let revoke = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
        if self.closing.load(Ordering::SeqCst) {
            // Closing: the shard has committed its last checkpoint already.
            let r = if assign {
                base_consumer.incremental_assign(tpl)
            } else {
                base_consumer.incremental_unassign(tpl)
            };
            if let Err(e) = r {
                tracing::warn!("Kafka rebalance while closing: {e}");
            }
            return;
        }
        let list: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let event = if assign {
            RebalanceEvent::Assign(list)
        } else if revoke {
            RebalanceEvent::Revoke(list)
        } else {
            let code: rdkafka::types::RDKafkaErrorCode = err.into();
            RebalanceEvent::Failed(code.to_string())
        };
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }
}
