//! Where a shard's batched cold reads are made (`state.cold_reader`). On the shard thread
//! (`shard`) a batch's read stalls every event behind it, hot or not, for as long as RocksDB
//! takes to find its keys (half of the shard's time at 90% cold keys, see bench/README.md).
//! On a reader thread (`thread`) the shard hands the batch over and goes on: hot keys are
//! served while the read is out, events on cold keys keep waiting (`cold_wait`), and the
//! batch comes back to be moved in on the shard, which alone writes the hot table and the
//! store. Up to `OUT_MAX` batches are out, landed in order, so the reader reads one while
//! the shard lands another; the jobs' buffers go back and forth, nothing is allocated per
//! batch.
//!
//! Why the read may run beside the shard: the store is only written by the shard's moves
//! (victims out, returning keys in, and a key read on its own when a landing left it cold),
//! and while a job is out none of its keys is hot (every event on them waits), none can
//! become hot but by the job's own landing, and no other read out holds it
//! (`cold_wait::ColdWait::plan_read`), so nothing the shard writes meanwhile touches the keys
//! being read.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::state::cold::ColdStore;
use crate::state::{ColdJob, KeyedState};
use crate::wake::Waker;

/// Spins before a blocking wait for the reader starts yielding the CPU.
const WAIT_SPINS: u32 = 256;

/// How long an idle reader thread looks for the next batch before it sleeps.
const READER_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Batches out at once: the reader reads the next while the shard lands the one before.
pub const OUT_MAX: usize = 2;

pub struct ColdReader {
    /// Jobs the shard holds, free to fill. Boxed: they travel through the reader thread's
    /// rings, which then move a pointer, not the job.
    #[allow(clippy::vec_box)]
    free: Vec<Box<ColdJob>>,
    /// Jobs handed over and not landed, oldest first (at most `OUT_MAX`; a deque of fixed
    /// capacity, never grown).
    out: VecDeque<Out>,
    way: Way,
}

/// One job out: the shard holds it (a shard or deferred reader's, or one back from the
/// thread) or the reader thread does (`job` None).
struct Out {
    job: Option<Box<ColdJob>>,
    read: bool,
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
        match table.cold_store() {
            Some(store) if table.cold_batch_max() > 0 => {
                Self::thread_over(table, store, shard, wakers, idle)
            }
            _ => Ok(Self::on_shard(table)),
        }
    }

    /// A reader thread over `store` (`thread`'s, given the store: tests read through a
    /// store of their own).
    pub(crate) fn thread_over(
        table: &KeyedState,
        store: Arc<dyn ColdStore>,
        shard: usize,
        wakers: Arc<Vec<Waker>>,
        idle: bool,
    ) -> std::io::Result<Self> {
        // At most OUT_MAX jobs are out: rings of that many, read in order.
        let (to_reader, mut jobs) = rtrb::RingBuffer::<Box<ColdJob>>::new(OUT_MAX);
        let (mut done, from_reader) = rtrb::RingBuffer::<Box<ColdJob>>::new(OUT_MAX);
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
        let out_max = if matches!(way, Way::Shard) {
            1
        } else {
            OUT_MAX
        };
        Self {
            free: (0..out_max).map(|_| Box::new(table.cold_job())).collect(),
            out: VecDeque::with_capacity(out_max),
            way,
        }
    }

    /// Whether reads are made off the shard thread (the shard then goes on while one is out).
    pub fn is_async(&self) -> bool {
        !matches!(self.way, Way::Shard)
    }

    /// A job is out (handed over, not landed).
    pub fn is_out(&self) -> bool {
        !self.out.is_empty()
    }

    /// The job to fill, when one more may go out.
    pub fn job_to_fill(&mut self) -> Option<&mut ColdJob> {
        self.free.last_mut().map(|j| &mut **j)
    }

    /// Hand the filled job over. A shard reader reads it now.
    pub fn hand_over(&mut self, table: &KeyedState) {
        crate::invariant!(
            !self.free.is_empty(),
            "a cold read handed over with no free job"
        );
        let Some(mut job) = self.free.pop() else {
            return;
        };
        match &mut self.way {
            Way::Shard => {
                table.read_cold_here(&mut job);
                self.out.push_back(Out {
                    job: Some(job),
                    read: true,
                });
            }
            Way::Deferred(_) => self.out.push_back(Out {
                job: Some(job),
                read: false,
            }),
            Way::Thread(t) => {
                match t.to_reader.push(job) {
                    Ok(()) => self.out.push_back(Out {
                        job: None,
                        read: false,
                    }),
                    // Room is certain (the ring holds OUT_MAX, and no more are out); if not,
                    // the read is made here.
                    Err(rtrb::PushError::Full(mut job)) => {
                        table.read_cold_here(&mut job);
                        self.out.push_back(Out {
                            job: Some(job),
                            read: true,
                        });
                    }
                }
                if let Some(th) = &t.thread {
                    th.thread().unpark();
                }
            }
        }
    }

    /// Deferred reads: make the oldest unread read out now (the simulation's reader turn).
    pub fn read_deferred(&mut self) {
        if let Way::Deferred(store) = &self.way {
            if let Some(o) = self.out.iter_mut().find(|o| !o.read) {
                if let Some(job) = o.job.as_deref_mut() {
                    job.read(&**store);
                }
                o.read = true;
            }
        }
    }

    /// The oldest job out has come back read (it is then the shard's to land: `take_back`).
    pub fn is_back(&mut self) -> bool {
        let Some(front) = self.out.front_mut() else {
            return false;
        };
        if let Way::Thread(t) = &mut self.way {
            if front.job.is_none() {
                // The reader answers in order: what comes back is the oldest.
                if let Ok(job) = t.from_reader.pop() {
                    front.job = Some(job);
                    front.read = true;
                }
            }
        }
        front.read
    }

    /// Whether the oldest read is back without taking it (the park check).
    pub fn has_news(&self) -> bool {
        match (&self.way, self.out.front()) {
            (_, None) => false,
            (Way::Thread(t), Some(o)) => o.read || !t.from_reader.is_empty(),
            (_, Some(o)) => o.read,
        }
    }

    /// Block until the oldest job out is back (a full wait list, or the shard settling
    /// before a drain): spins a little, then sleeps until the reader wakes it, leaving the
    /// CPU to the reader (which may share it: `state.cold_reader = idle`).
    pub fn wait(&mut self) {
        if self.out.front().is_some_and(|o| !o.read) {
            self.read_deferred();
        }
        let mut spins = 0u32;
        while self.is_out() && !self.is_back() {
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

    /// The oldest job, back read, for the owner to land; hand it back with `give_back`.
    pub fn take_back(&mut self) -> Option<Box<ColdJob>> {
        if !self.out.front().is_some_and(|o| o.read) {
            return None;
        }
        self.out.pop_front().and_then(|o| o.job)
    }

    /// A landed job, free again.
    pub fn give_back(&mut self, job: Box<ColdJob>) {
        self.free.push(job);
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
            Err(_) => {
                // The next batch usually follows within a cycle: look for it a little while
                // before sleeping (a wake-up costs tens of µs on a VM). Then sleep until the
                // shard's unpark after a hand-over (a futex call per batch, never per event)
                // or the stop.
                let idle_since = Instant::now();
                while jobs.is_empty()
                    && !stop.load(Ordering::Relaxed)
                    && idle_since.elapsed() < READER_SPIN
                {
                    std::hint::spin_loop();
                }
                if jobs.is_empty() {
                    std::thread::park();
                }
            }
        }
    }
}
