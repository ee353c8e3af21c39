//! exactly_once's commits, off the shard thread. Committing a transaction waits for every
//! record in it to be acknowledged and for the coordinator's round trips (measured: up to
//! 1.26 s at 10k/s after a broker hiccup); on the shard it paused everything, UDP included. A
//! committer thread per shard does it instead, on the same producer, while the shard takes no
//! Kafka record (its Scores would join the transaction being committed) but goes on serving
//! UDP and copying snapshots. With `egress.kafka.overlap_commits` the shard has two
//! producers and takes records again into the other one's transaction (see
//! `ShardKafka::take`); commits still go one at a time, in checkpoint order.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::TopicPartitionList;

use super::changelog::{ChangelogSource, Sent};
use super::{drain, progress, ScoreProducer, UNTRACKED};
use crate::ingest::kafka::KafkaError;

/// Set once the shard is stopping: from then on a commit, and the abort of one that failed,
/// wait at most until this instant (`egress.kafka.shutdown_commit_ms` after the stop began),
/// even one that began before. Set once, read by the committer thread without a lock.
#[derive(Debug, Default)]
pub struct Hurry(std::sync::OnceLock<Instant>);

impl Hurry {
    /// From now, wait at most `budget` more.
    pub fn start(&self, budget: Duration) {
        let _ = self.0.set(Instant::now() + budget);
    }

    /// `deadline`, or the stop's if it comes first.
    fn cap(&self, deadline: Instant) -> Instant {
        self.0.get().map_or(deadline, |&h| h.min(deadline))
    }

    fn started(&self) -> bool {
        self.0.get().is_some()
    }
}

/// The longest one resumable librdkafka transactional call (commit, abort) is given before it
/// is called again (a timed-out call is retriable, and the next one resumes it): what lets a
/// stop cut short a commit that began before it.
const CALL_SLICE: Duration = Duration::from_secs(1);

/// The same for `send_offsets_to_transaction`, which is retriable but not resumable (a call
/// again sends the request anew): long enough for a slow coordinator's answer (1.26 s was the
/// slowest commit measured), so that a slice never cuts a call that would have succeeded.
const OFFSETS_CALL_SLICE: Duration = Duration::from_secs(5);

/// How long a call may take from now, within `deadline` and `most`.
fn slice_of(deadline: Instant, most: Duration) -> Duration {
    deadline.saturating_duration_since(Instant::now()).min(most)
}

fn slice(deadline: Instant) -> Duration {
    slice_of(deadline, CALL_SLICE)
}

/// What one commit needs: the shard's producers and the names it writes under.
pub struct Transactions {
    /// One, or two taking transactions in turn (`overlap_commits`).
    pub producers: Vec<Arc<ScoreProducer>>,
    pub timeout: Duration,
    /// Shared with the shard, which starts it when it stops.
    pub hurry: Arc<Hurry>,
    pub progress_topic: String,
    /// The progress record's key: the shard's first producer's id, whichever producer
    /// commits (commits go in order, so the newest record is the last commit).
    pub transactional_id: String,
    /// `egress.kafka.changelog`: each commit also carries its checkpoint's state changes.
    pub changelog: Option<ChangelogSource>,
    /// The checkpoint whose state the changelog holds, committed in this run, and whether
    /// that state is whole there (sent whole, or leading on from one that was).
    pub changelog_holds: Option<(u64, bool)>,
    /// Per changelog partition, the offset after this run's last committed record there
    /// (what `positions::Positions` records beside each committed checkpoint).
    pub changelog_positions: std::collections::BTreeMap<i32, i64>,
}

/// What a commit's transaction carried besides Scores, offsets and the progress record.
pub type Committed = Option<Sent>;

impl Transactions {
    /// Commit producer `which`'s open transaction with checkpoint `seq`'s state changes (with
    /// a changelog), the consumed `offsets` and a progress record naming the checkpoint, and
    /// open its next one. On an error the transaction is aborted; the caller must replay from
    /// the last committed checkpoint.
    pub fn commit(
        &mut self,
        seq: u64,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
        which: usize,
        (progress_sent, whole): (bool, &[u64]),
    ) -> Result<Committed, KafkaError> {
        let Some(producer) = self.producers.get(which).cloned() else {
            return Err(KafkaError::Other(format!(
                "no producer {which} to commit on"
            )));
        };
        let result = self.try_commit(&producer, seq, offsets, group, (progress_sent, whole));
        if result.is_err() {
            // Stopping, the abort gets what is left of the stop's wait (a second at least):
            // one left undone is aborted by the brokers at transaction.timeout.ms, or by the
            // restart's init_transactions, and read_committed readers wait until then.
            let now = Instant::now();
            let wait = match self.hurry.started() {
                true => (self
                    .hurry
                    .cap(now + self.timeout)
                    .saturating_duration_since(now))
                .max(CALL_SLICE),
                false => self.timeout,
            };
            if let Err(e) = producer.abort_transaction(wait) {
                let left = match self.hurry.started() {
                    true => " (sluice is stopping: the transaction is left to the brokers to abort, or to the restart)",
                    false => "",
                };
                tracing::error!("Kafka abort_transaction after a failed commit: {e}{left}");
            }
        }
        result
    }

    fn try_commit(
        &mut self,
        producer: &ScoreProducer,
        seq: u64,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
        (progress_sent, whole): (bool, &[u64]),
    ) -> Result<Committed, KafkaError> {
        let t = self.timeout;
        // librdkafka reports a coordinator that is not answering yet (a broker just back) as a
        // retriable timeout: "retry call to resume". Give it the transaction's own timeout, in
        // calls of a slice each (a timed-out call is resumed by the next), so that a stop can
        // cut it short (`Hurry`).
        let started = Instant::now();
        let hurry = self.hurry.clone();
        let deadline = move || hurry.cap(started + t);
        let retry = |r: rdkafka::error::KafkaResult<()>| match r {
            Err(rdkafka::error::KafkaError::Transaction(e))
                if e.is_retriable() && Instant::now() < deadline() =>
            {
                std::thread::sleep(Duration::from_millis(50));
                true
            }
            _ => false,
        };
        // Acknowledgements of an earlier transaction that did not commit are not positions.
        producer.context().take_changelog_ends();
        let sent = match &self.changelog {
            Some(c) => {
                let holds = self.changelog_holds.map(|(s, _)| s);
                let mut sent = c.spec.produce(
                    producer,
                    (&c.root, seq, c.words),
                    (holds, whole),
                    deadline(),
                )?;
                sent.complete = sent.whole || self.changelog_holds.is_some_and(|(_, w)| w);
                Some(sent)
            }
            None => None,
        };
        let offsets_at = Instant::now();
        if let (Some(g), true) = (group, offsets.count() > 0) {
            let call = || slice_of(deadline(), OFFSETS_CALL_SLICE);
            let mut r = producer.send_offsets_to_transaction(offsets, g, call());
            while retry(r.clone()) {
                // The same offsets and group metadata, as librdkafka asks of a retry.
                r = producer.send_offsets_to_transaction(offsets, g, call());
            }
            r.map_err(KafkaError::client("send_offsets_to_transaction"))?;
        }
        if !progress_sent {
            let p = progress::Progress {
                seq,
                changelog: sent.is_some_and(|s| s.complete),
            };
            send_progress(producer, &self.progress_topic, &self.transactional_id, p)?;
        }
        let commit_at = Instant::now();
        // Every record acknowledged first, so that commit_transaction's own flush finds
        // none in flight (see `drain`). A timeout here is the commit's timeout too.
        loop {
            if drain(producer, slice(deadline())) {
                break;
            }
            if Instant::now() >= deadline() {
                let within = match self.hurry.started() {
                    true => "egress.kafka.shutdown_commit_ms, sluice stopping".to_owned(),
                    false => format!("{t:?}"),
                };
                return Err(KafkaError::Other(format!(
                    "records of checkpoint {seq}'s transaction not acknowledged within {within}"
                )));
            }
        }
        let mut r = producer.commit_transaction(slice(deadline()));
        while retry(r.clone()) {
            r = producer.commit_transaction(slice(deadline()));
        }
        r.map_err(KafkaError::client("commit_transaction"))?;
        producer
            .begin_transaction()
            .map_err(KafkaError::client("begin_transaction"))?;
        // Where a commit's time goes (one line per commit, not per event).
        tracing::debug!(
            seq,
            changelog_us = (offsets_at - started).as_micros() as u64,
            offsets_us = (commit_at - offsets_at).as_micros() as u64,
            flush_and_end_txn_us = commit_at.elapsed().as_micros() as u64,
            "exactly_once commit steps"
        );
        if let Some(s) = sent {
            self.changelog_holds = Some((seq, s.complete));
            self.record_positions(producer, seq, s.complete);
        }
        Ok(sent)
    }

    /// After checkpoint `seq`'s transaction committed: the changelog's positions beside it,
    /// when the changelog holds its whole state (a restore from it may then read only what
    /// came after). A failed write is logged: it only makes such a restore read more.
    fn record_positions(&mut self, producer: &ScoreProducer, seq: u64, complete: bool) {
        for (p, end) in producer.context().take_changelog_ends() {
            let at = self.changelog_positions.entry(p).or_default();
            *at = (*at).max(end);
        }
        let Some(c) = &self.changelog else {
            return;
        };
        if !complete || self.changelog_positions.is_empty() {
            return;
        }
        let positions = super::positions::Positions {
            committed_unix_ms: super::positions::unix_ms_now(),
            next: self.changelog_positions.clone(),
        };
        let dir = crate::state::checkpoint::path_of(&c.root, seq);
        if let Err(e) = positions.write(&dir) {
            tracing::warn!(seq, "recording the changelog's positions beside checkpoint {}: {e} (a restore from it will read the whole changelog)", dir.display());
        }
    }
}

/// Hand the progress record `p` to `producer`, into its open transaction.
pub fn send_progress(
    producer: &ScoreProducer,
    topic: &str,
    key: &str,
    p: progress::Progress,
) -> Result<(), KafkaError> {
    let value = progress::encode(p);
    let record = BaseRecord::with_opaque_to(topic, UNTRACKED)
        .payload(&value)
        .key(key.as_bytes());
    producer
        .send(record)
        .map_err(|(e, _)| KafkaError::client("progress record")(e))
}

struct Job {
    seq: u64,
    offsets: TopicPartitionList,
    group: Option<ConsumerGroupMetadata>,
    producer: usize,
    /// Already in the transaction (sent at the flip).
    progress_sent: bool,
    /// Source tags of partitions imported whole before the flip (`ChangelogSpec::produce`).
    whole: Vec<u64>,
}

/// The shard's side of its committer thread: one commit at a time.
pub struct Committer {
    jobs: Option<mpsc::SyncSender<Job>>,
    replies: mpsc::Receiver<Result<Committed, KafkaError>>,
    /// The producer whose transaction is being committed.
    busy: Option<usize>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Start the thread; `wake` is called when a commit has ended (a parked shard wakes).
    pub fn start(
        mut tx: Transactions,
        wake: Box<dyn Fn() + Send>,
        name: String,
    ) -> Result<Self, KafkaError> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(1);
        let (reply_tx, replies) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                for job in job_rx {
                    let r = tx.commit(
                        job.seq,
                        &job.offsets,
                        job.group.as_ref(),
                        job.producer,
                        (job.progress_sent, &job.whole),
                    );
                    if reply_tx.send(r).is_err() {
                        return;
                    }
                    wake();
                }
            })
            .map_err(|e| KafkaError::Other(format!("starting the committer thread: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            replies,
            busy: None,
            thread: Some(thread),
        })
    }

    /// The producer whose commit is running, if one is.
    pub fn busy(&self) -> Option<usize> {
        self.busy
    }

    /// Start committing producer `which`'s transaction (never waits: the channel holds one
    /// job and only one is out).
    pub fn begin(
        &mut self,
        seq: u64,
        offsets: TopicPartitionList,
        group: Option<ConsumerGroupMetadata>,
        which: usize,
        (progress_sent, whole): (bool, Vec<u64>),
    ) -> Result<(), KafkaError> {
        crate::invariant!(self.busy.is_none(), "one commit at a time");
        let job = Job {
            seq,
            offsets,
            group,
            producer: which,
            progress_sent,
            whole,
        };
        match self.jobs.as_ref().map(|j| j.try_send(job)) {
            Some(Ok(())) => {
                self.busy = Some(which);
                Ok(())
            }
            _ => Err(KafkaError::Other("the committer thread is gone".into())),
        }
    }

    /// The running commit's result, once it has one.
    pub fn poll(&mut self) -> Option<Result<Committed, KafkaError>> {
        self.busy?;
        let r = match self.replies.try_recv() {
            Ok(r) => r,
            Err(mpsc::TryRecvError::Empty) => return None,
            Err(mpsc::TryRecvError::Disconnected) => {
                Err(KafkaError::Other("the committer thread is gone".into()))
            }
        };
        self.busy = None;
        Some(r)
    }

    /// Wait for the running commit's result (shutdown); Ok when none is running.
    pub fn wait(&mut self) -> Result<Committed, KafkaError> {
        if self.busy.take().is_none() {
            return Ok(None);
        }
        self.replies
            .recv()
            .unwrap_or_else(|_| Err(KafkaError::Other("the committer thread is gone".into())))
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the job channel ends the thread once a running commit returns.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
