//! Where a shard's batched cold reads are made (`state.cold_reader`). On the shard thread
//! (`shard`) a batch's read stalls every event behind it, hot or not, for as long as RocksDB
//! takes to find its keys (half of the shard's time at 90% cold keys, see bench/README.md).
//! On a reader thread (`thread`) the shard hands the batch over and goes on: hot keys are
//! served while the read is out, events on cold keys keep waiting (`cold_wait`), and the
//! batch comes back to be moved in on the shard, which alone writes the hot table and the
//! store. One batch is out at a time; the job's buffers go back and forth, nothing is
//! allocated per batch.
//!
//! Why the read may run beside the shard: the store is only written by the shard's moves
//! (victims out, returning keys in), and while a job is out none of its keys is hot (every
//! event on them waits) and none can become hot but by the job's own finish, so nothing the
//! shard writes meanwhile touches the keys being read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::state::cold::ColdStore;
use crate::state::{ColdJob, KeyedState};
use crate::wake::Waker;

/// Spins before a blocking wait for the reader starts yielding the CPU.
const WAIT_SPINS: u32 = 256;

pub struct ColdReader {
    /// The job while the shard holds it: always, but while it is out at the reader thread.
    job: Option<Box<ColdJob>>,
    /// A job was handed to the reader and not finished yet.
    out: bool,
    /// The job out has been read (shard and deferred reads).
    read: bool,
    way: Way,
}

enum Way {
    /// On the shard thread, at the hand-over.
    Shard,
    /// When the owner says (`read_deferred`, `wait`): the simulation's and the tests' reader,
    /// which choose when a read lands against the events around it.
    Deferred(Arc<dyn ColdStore>),
    Thread(Box<ReaderThread>),
}

struct ReaderThread {
    /// The shard's wakers and its index: the reader wakes the shard through them, and the
    /// shard sleeps on its own while it waits for a read.
    wakers: Arc<Vec<Waker>>,
    shard: usize,
    to_reader: rtrb::Producer<Box<ColdJob>>,
    from_reader: rtrb::Consumer<Box<ColdJob>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ReaderThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            // The reader only returns; a panic there is already reported by its hook.
            let _ = t.join();
        }
    }
}

impl ColdReader {
    /// Reads made on the shard thread, for batches of `table`'s size.
    pub fn on_shard(table: &KeyedState) -> Self {
        Self::with(table, Way::Shard)
    }

    /// Reads made when the owner says so (see `Way::Deferred`); on the shard thread when
    /// `table` has no spill store.
    pub fn deferred(table: &KeyedState) -> Self {
        let way = match table.cold_store() {
            Some(store) => Way::Deferred(store),
            None => Way::Shard,
        };
        Self::with(table, way)
    }

    /// Reads made on a thread of their own, which wakes the shard (`wakers[shard]`) when a
    /// read is back. The thread starts with the caller's CPU mask (`topology::with_cpus`);
    /// `idle`: it runs under SCHED_IDLE (on the shard's CPU: reads take only the time the
    /// shard leaves). On the shard thread when `table` has no spill store or batching is off.
    pub fn thread(
        table: &KeyedState,
        shard: usize,
        wakers: Arc<Vec<Waker>>,
        idle: bool,
    ) -> std::io::Result<Self> {
        let store = match table.cold_store() {
            Some(store) if table.cold_batch_max() > 0 => store,
            _ => return Ok(Self::on_shard(table)),
        };
        // One job is out at a time: rings of one.
        let (to_reader, mut jobs) = rtrb::RingBuffer::<Box<ColdJob>>::new(1);
        let (mut done, from_reader) = rtrb::RingBuffer::<Box<ColdJob>>::new(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let waker = Arc::clone(&wakers);
        // The thread's priority is settled before the shard starts: start-up, not the hot path.
        let (ready, started) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("sluice-cold-{shard}"))
            .spawn(move || {
                let _ = ready.send(if idle {
                    crate::topology::make_current_idle()
                } else {
                    Ok(())
                });
                reader_loop(&mut jobs, &mut done, &*store, &stopping, waker.get(shard));
            })?;
        if let Ok(Err(e)) = started.recv() {
            tracing::warn!(
                shard,
                "cold-read thread runs at normal priority: SCHED_IDLE refused: {e}"
            );
        }
        Ok(Self::with(
            table,
            Way::Thread(Box::new(ReaderThread {
                wakers,
                shard,
                to_reader,
                from_reader,
                stop,
                thread: Some(thread),
            })),
        ))
    }

    fn with(table: &KeyedState, way: Way) -> Self {
        Self {
            job: Some(Box::new(table.cold_job())),
            out: false,
            read: false,
            way,
        }
    }

    /// Whether reads are made off the shard thread (the shard then goes on while one is out).
    pub fn is_async(&self) -> bool {
        !matches!(self.way, Way::Shard)
    }

    /// A job is out (handed over, not finished).
    pub fn is_out(&self) -> bool {
        self.out
    }

    /// The job to fill, when none is out.
    pub fn job_to_fill(&mut self) -> Option<&mut ColdJob> {
        if self.out {
            return None;
        }
        self.job.as_deref_mut()
    }

    /// Hand the filled job over. A shard reader reads it now.
    pub fn hand_over(&mut self, table: &KeyedState) {
        crate::invariant!(!self.out, "a second cold read handed over");
        self.out = true;
        self.read = false;
        match &mut self.way {
            Way::Shard => {
                if let Some(job) = self.job.as_deref_mut() {
                    table.read_cold_here(job);
                }
                self.read = true;
            }
            Way::Deferred(_) => {}
            Way::Thread(t) => {
                if let Some(job) = self.job.take() {
                    // Room is certain: the ring holds one job and this is the only one.
                    if let Err(rtrb::PushError::Full(job)) = t.to_reader.push(job) {
                        self.job = Some(job);
                        self.read = true;
                        if let Some(j) = self.job.as_deref_mut() {
                            table.read_cold_here(j);
                        }
                        return;
                    }
                }
                if let Some(th) = &t.thread {
                    th.thread().unpark();
                }
            }
        }
    }

    /// Deferred reads: make the read out now (the simulation's reader turn).
    pub fn read_deferred(&mut self) {
        if let (Way::Deferred(store), true, false) = (&self.way, self.out, self.read) {
            if let Some(job) = self.job.as_deref_mut() {
                job.read(&**store);
            }
            self.read = true;
        }
    }

    /// The job out has come back read (it is then the shard's to finish: `finished_job`).
    pub fn is_back(&mut self) -> bool {
        if !self.out {
            return false;
        }
        if let Way::Thread(t) = &mut self.way {
            if self.job.is_none() {
                if let Ok(job) = t.from_reader.pop() {
                    self.job = Some(job);
                    self.read = true;
                }
            }
        }
        self.read
    }

    /// Whether a read is back without taking it (the park check: no wait for a ready job).
    pub fn has_news(&self) -> bool {
        match &self.way {
            Way::Thread(t) => self.out && !t.from_reader.is_empty(),
            _ => self.out && self.read,
        }
    }

    /// Block until the job out is back (a full wait list, or the shard settling before a
    /// drain): spins a little, then sleeps until the reader wakes it, leaving the CPU to
    /// the reader (which may share it: `state.cold_reader = idle`).
    pub fn wait(&mut self) {
        self.read_deferred();
        let mut spins = 0u32;
        while self.out && !self.is_back() {
            if spins < WAIT_SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else if let Way::Thread(t) = &self.way {
                if let Some(w) = t.wakers.get(t.shard) {
                    w.park();
                    if t.from_reader.is_empty() {
                        // A bound on the sleep in case a wake-up is lost: the loop checks again.
                        w.sleep(std::time::Duration::from_millis(1));
                    }
                    w.unpark();
                }
            }
        }
    }

    /// The job that came back, for the owner to finish; then it is no longer out.
    pub fn finished_job(&mut self) -> Option<&mut ColdJob> {
        if !(self.out && self.read) {
            return None;
        }
        self.out = false;
        self.read = false;
        self.job.as_deref_mut()
    }
}

/// The reader thread: each job handed over is read and handed back, the shard woken if it
/// sleeps; with none, it sleeps until the next hand-over or the stop.
fn reader_loop(
    jobs: &mut rtrb::Consumer<Box<ColdJob>>,
    done: &mut rtrb::Producer<Box<ColdJob>>,
    store: &dyn ColdStore,
    stop: &AtomicBool,
    shard: Option<&Waker>,
) {
    loop {
        match jobs.pop() {
            Ok(mut job) => {
                job.read(store);
                // The ring holds the one job out, which is this one: room is certain.
                let _ = done.push(job);
                if let Some(w) = shard {
                    w.wake_if_parked();
                }
            }
            Err(_) if stop.load(Ordering::SeqCst) => return,
            // Woken by the shard's unpark after each hand-over (a futex call per batch, never
            // per event) and at the stop.
            Err(_) => std::thread::park(),
        }
    }
}
