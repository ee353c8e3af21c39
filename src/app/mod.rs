//! Assembling a running sluice: plan shards on CPUs, choose the receive driver, bind the
//! sockets, build the ring mesh, start one pinned thread per shard (each allocates its state,
//! buffers and model at startup, then reports ready), and stop them cleanly.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Delivery;
use crate::config::{ColdReaderPlace, Config};
use crate::control::{ControlLoop, Request, ShardLink};
use crate::egress::kafka::{changelog, rebuild};
use crate::egress::Egress;
use crate::infer::{build_primaries, ModelUpdate, ShardModel, ShardReport};
use crate::ingest::kafka::topic_watch::{TopicWatch, Watcher};
use crate::ingest::kafka::{KafkaError, PartitionGauges};
use crate::ingest::udp::{bind_reuseport, Driver, MmsgReceiver, UdpReceiver, UringReceiver};
use crate::ingest::xdp::XdpReceiver;
use crate::ingest::IngestError;
use crate::metrics::{Report, ShardCounters, ShardLatency};
use crate::route::Mesh;
use crate::shard::{ColdReader, Control, ModelLink, Shard, ShardCore, SpillSweeper, StateQuery};
use crate::state::checkpoint::{
    self, CheckpointSpec, Checkpointer, PartitionOffset, RestoreTarget,
};
use crate::state::{resident, KeyedState, Spill};
use crate::topology::{self, Placement};
use crate::wake::Waker;

mod kafka_part;
pub mod one_instance;
pub mod rescale;
mod rescale_kafka;
pub mod state_backup;
pub mod state_backup_rotation;
pub mod state_check;
pub mod state_restore;
pub mod state_show;
mod xdp_part;
use kafka_part::KafkaPart;
pub use xdp_part::XdpStartError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{}", .0.join("\n  "))]
    Placement(Vec<String>),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("shard {shard} failed to start: {source}")]
    ShardStart {
        shard: usize,
        source: ShardStartError,
    },
    #[error("could not start a thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Memory(String),
    #[error("{0}")]
    StateDir(String),
    /// Another process holds the state directory, the UDP port or the admin socket.
    #[error("{0}")]
    InUse(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("ingest.udp.driver = af_xdp: {0}")]
    Xdp(#[from] XdpStartError),
    #[error("admin socket {path}: {source}")]
    Admin {
        path: String,
        source: std::io::Error,
    },
}

/// A started service. Drop without `stop` and the threads are told to stop but not joined.
pub struct Running {
    pub local_addr: SocketAddr,
    /// Where `/metrics` is served (None: `metrics.listen` off, or it could not bind).
    pub metrics_addr: Option<SocketAddr>,
    pub driver: Driver,
    pub placements: Vec<Placement>,
    control: Arc<Control>,
    counters: Vec<Arc<ShardCounters>>,
    threads: Vec<JoinHandle<(Option<ShardLatency>, Option<IngestError>)>>,
    requests: mpsc::Sender<Request>,
    helpers: Vec<JoinHandle<()>>,
    /// Where helper threads run (`shards.helper_cores`; empty: not pinned).
    helper_cpus: Vec<usize>,
    /// Every consumed Kafka partition's position and watermark (none without Kafka, or
    /// before the brokers first answered).
    kafka_partitions: PartitionGauges,
    /// The input topics' partition counts against those consumed (`ingest.kafka.partition_check_ms`).
    kafka_topics: Arc<TopicWatch>,
    /// Standby replicas' warm copies (live metrics show them).
    standbys: crate::ingest::kafka::standby::Standbys,
    /// af_xdp: the attached XDP program (detached when this drops, or when the process ends
    /// in any way: its link is a file descriptor).
    _xdp: Option<xdp_part::SharedProgram>,
    /// `state.dir` held for this process (let go when this drops or the process ends).
    _state_lock: Option<one_instance::StateDirLock>,
}

impl Running {
    /// Live counters, one per shard.
    pub fn counters(&self) -> &[Arc<ShardCounters>] {
        &self.counters
    }

    /// The Kafka input partitions as this instance sees them now (`cluster status`'s view).
    pub fn kafka_partitions(&self) -> Vec<crate::ingest::kafka::PartitionView> {
        use crate::ingest::kafka::watermarks::{by_partition, dealt};
        by_partition(dealt(&self.kafka_partitions))
    }

    /// The input topics' partitions added since they were dealt, which no shard consumes.
    pub fn kafka_unconsumed(&self) -> Vec<crate::ingest::kafka::topic_watch::Unconsumed> {
        self.kafka_topics.unconsumed()
    }

    /// Load a model (`path`, or `model.path` again) on every shard as the next version.
    /// Returns the version now serving, or why the model was refused (the old one stays).
    pub fn reload(&self, path: Option<&str>) -> Result<u32, String> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .send(Request::Reload {
                path: path.map(str::to_owned),
                reply: tx,
            })
            .map_err(|_| "the control thread has stopped".to_owned())?;
        rx.recv_timeout(Duration::from_secs(120))
            .map_err(|_| "the control thread did not answer".to_owned())?
    }

    /// A key's state, from the shard that owns it, as `sluice state get` prints it.
    pub fn state_get(&self, key: u64) -> Result<String, String> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .send(Request::StateGet { key, reply: tx })
            .map_err(|_| "the control thread has stopped".to_owned())?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the control thread did not answer".to_owned())?
    }

    /// The newest model version handed to the shards.
    pub fn model_version(&self) -> Option<u32> {
        let (tx, rx) = mpsc::channel();
        self.requests.send(Request::Version { reply: tx }).ok()?;
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    /// Stop receiving, drain, flush, join; the merged report.
    pub fn stop(self) -> Result<Report, IngestError> {
        match self.stop_with_report() {
            (report, None) => Ok(report),
            (_, Some(e)) => Err(e),
        }
    }

    /// Whether the service is stopping on its own: a shard met an error it cannot serve past
    /// (a receive error, a failed commit, an undelivered Score) and asked every shard to stop.
    pub fn stopping(&self) -> bool {
        self.control.stop_requested()
    }

    /// Stop, drain and join every shard; the report, and the first shard's error if any (the
    /// report is whole either way: an operator wants the counters of a failed run most).
    pub fn stop_with_report(mut self) -> (Report, Option<IngestError>) {
        self.control.request_stop();
        let mut latency = Vec::new();
        let mut failure = None;
        for (shard, t) in self.threads.drain(..).enumerate() {
            match t.join() {
                Ok((l, err)) => {
                    latency.extend(l);
                    failure = failure.or(err);
                }
                // Not a clean stop: the exit status says so (it said success before).
                Err(_) => {
                    let e = IngestError::ShardPanicked(shard);
                    tracing::error!("{e}");
                    failure = failure.or(Some(e));
                }
            }
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
        // A Kafka failure may come of an output topic deleted under sluice: if the brokers
        // say so, the message names it (asked once, off every shard: they have stopped).
        if let Some(IngestError::Kafka(why)) = &failure {
            let changed = self.kafka_topics.outputs_changed_now();
            if !changed.is_empty() {
                failure = Some(IngestError::Kafka(format!(
                    "{why}\n  and the brokers say: {}",
                    changed.join("\n  and: ")
                )));
            }
        }
        let refs: Vec<&ShardCounters> = self.counters.iter().map(|c| c.as_ref()).collect();
        let mut report = Report::merge(self.driver.name(), &refs, latency);
        use crate::ingest::kafka::watermarks::{by_partition, dealt};
        // A group member lists what it owns at the end and what it took records of.
        report.kafka_partitions = by_partition(dealt(&self.kafka_partitions))
            .into_iter()
            .filter(|v| v.shard.is_some() || v.records > 0)
            .map(|v| crate::metrics::report::PartitionLine {
                topic: v.topic,
                partition: v.partition,
                records: v.records,
                next_offset: v.next_offset,
                lag: v.lag,
            })
            .collect();
        report.kafka_unconsumed = self.kafka_topics.unconsumed();
        report.kafka_offset_resets = crate::ingest::kafka::offset_resets::resets();
        report.kafka_offsets_lost = crate::ingest::kafka::offset_resets::offsets_lost();
        (report, failure)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.control.request_stop();
    }
}

/// Start every shard and return once all are receiving.
pub fn start(config: &Config) -> Result<Running, AppError> {
    start_with_progress(config, &mut |_, _| {})
}

/// How long start-up waits for a shard to report (restore, model, socket) after the last one
/// did, or since a rebuild from the changelog last moved on (it reports the bytes it has read:
/// a big one takes minutes, and stops itself after 60 s without a record); a shard that takes
/// longer fails start-up.
const SHARD_START_WAIT: Duration = Duration::from_secs(60);

/// `start`, calling `progress(shards_ready, shards)` about once a second while the shards
/// restore their state (systemd's start-up timeout is extended from there).
pub fn start_with_progress(
    config: &Config,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Running, AppError> {
    crate::preflight::check_state_dir(&config.state.dir).map_err(AppError::StateDir)?;
    // Before anything is restored or bound: a second sluice on the same state, port or admin
    // socket is refused here, with what holds them, instead of quietly sharing them.
    let state_lock =
        one_instance::StateDirLock::take(&config.state.dir).map_err(AppError::InUse)?;
    if let Some(why) = rescale::interrupted(&config.state.dir) {
        return Err(AppError::StateDir(why));
    }
    if !config.admin.socket.is_empty() {
        crate::admin::refuse_if_served(std::path::Path::new(&config.admin.socket))
            .map_err(AppError::InUse)?;
    }
    let topo = topology::discover();
    tracing::info!("topology: {}", topo.summary());
    let placements = topology::plan(&config.shards, &topo).map_err(AppError::Placement)?;
    let shards = placements.len();
    resident::check_machine(config, shards).map_err(AppError::Memory)?;
    // Helper threads (and librdkafka's, RocksDB's) start on these, off the pinned shards' CPUs.
    let shard_cpus: Vec<usize> = placements.iter().map(|p| p.cpu).collect();
    let helpers =
        topology::plan_helpers(&config.shards, &topo, &shard_cpus).map_err(AppError::Placement)?;
    tracing::info!(?helpers, "helper threads' CPUs (empty: not pinned)");

    let (driver, why) = Driver::resolve(config.ingest.udp.driver)?;
    tracing::info!(driver = driver.name(), "udp ingest: {why}");

    let listen = config
        .listen_addr()
        .map_err(|e| AppError::Placement(e.problems))?;
    if let Some(why) = one_instance::udp_port_taken(listen) {
        return Err(AppError::InUse(why));
    }
    let mut sockets = Vec::with_capacity(shards);
    let mut local_addr = listen;
    for i in 0..shards {
        // The first bind fixes the port (it may be 0 = ephemeral); the others join it.
        let (sock, granted) = bind_reuseport(local_addr, config.ingest.udp.socket_rcvbuf_bytes)?;
        if i == 0 {
            local_addr = sock.local_addr().map_err(|source| IngestError::Socket {
                addr: listen,
                what: "local_addr",
                source,
            })?;
            if granted < config.ingest.udp.socket_rcvbuf_bytes {
                tracing::warn!(
                    asked = config.ingest.udp.socket_rcvbuf_bytes,
                    granted,
                    "socket receive buffer capped by net.core.rmem_max (see tuning/)"
                );
            }
        }
        sockets.push(sock);
    }
    // af_xdp: the program goes on once the port is known (the first bind may pick it).
    let (xdp, seats) = if driver == Driver::AfXdp {
        let (program, seats) = xdp_part::attach(config, shards, local_addr)?;
        (Some(program), seats.into_iter().map(Some).collect())
    } else {
        (None, (0..shards).map(|_| None).collect::<Vec<_>>())
    };
    let mut seats = seats.into_iter();

    // Models load now, in this thread: a missing runtime or a bad model file stops start-up
    // with its reason before any socket is served.
    let primaries =
        build_primaries(config, None, shards).map_err(|e| AppError::Model(e.to_string()))?;
    let models: Vec<ShardModel> = match primaries {
        Some(p) => p
            .into_iter()
            .map(|m| ShardModel::new(config, Some(m), 1))
            .collect(),
        None => (0..shards)
            .map(|_| ShardModel::new(config, None, 1))
            .collect(),
    };
    let width = models.first().map_or(0, ShardModel::width);
    let engine = models.first().map_or("none", ShardModel::engine);
    tracing::info!(kind = ?config.model.kind, path = %config.model.path, engine, width, online = config.model.online.enabled, "model loaded (version 1)");
    let mut links = Vec::with_capacity(shards);
    let mut shard_links = Vec::with_capacity(shards);
    let snapshot_interval_ns = config.model.online.average_interval_ms * 1_000_000;
    for _ in 0..shards {
        let (updates_tx, updates_rx) = rtrb::RingBuffer::<ModelUpdate>::new(8);
        let (reports_tx, reports_rx) = rtrb::RingBuffer::<ShardReport>::new(64);
        let (queries_tx, queries_rx) = rtrb::RingBuffer::<StateQuery>::new(16);
        links.push(ShardLink {
            updates: updates_tx,
            reports: reports_rx,
            queries: queries_tx,
        });
        shard_links.push(ModelLink {
            updates: updates_rx,
            reports: reports_tx,
            queries: queries_rx,
            snapshot_interval_ns,
            next_snapshot_ns: 0,
        });
    }

    let wakers: Arc<Vec<Waker>> = Arc::new(
        (0..shards)
            .map(|_| Waker::new())
            .collect::<Result<_, _>>()?,
    );
    let control = Arc::new(Control::new(shards));
    let counters: Vec<Arc<ShardCounters>> = (0..shards)
        .map(|_| Arc::new(ShardCounters::default()))
        .collect();
    let mesh = Mesh::build(shards, config.route.ring_capacity);
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), ShardStartError>)>();

    let kafka_partitions = PartitionGauges::default();
    let standbys = crate::ingest::kafka::standby::Standbys::default();
    let (kafka, kafka_connect) = topology::with_cpus(&helpers, || {
        kafka_part::deal(
            config,
            shards,
            &counters,
            &control,
            (&kafka_partitions, &standbys),
        )
    })?;
    let seeds: Vec<ShardSeed> = sockets
        .into_iter()
        .zip(mesh)
        .zip(placements.iter().copied())
        .zip(models)
        .zip(shard_links)
        .zip(kafka)
        .map(
            |(((((sock, rings), placement), model), model_link), kafka)| ShardSeed {
                sock,
                rings,
                placement,
                model,
                model_link,
                kafka,
                helpers: helpers.clone(),
                xdp: seats.next().flatten(),
            },
        )
        .collect();
    let mut threads = Vec::with_capacity(shards);
    for (id, seed) in seeds.into_iter().enumerate() {
        let config = config.clone();
        let control = control.clone();
        let counters = counters[id].clone();
        let wakers = wakers.clone();
        let ready = ready_tx.clone();
        let spawn = std::thread::Builder::new()
            .name(format!("sluice-shard-{id}"))
            .spawn(move || {
                let built = build_shard(id, shards, seed, &config, driver, counters, wakers);
                match built {
                    Ok(shard) => {
                        if let Some(cp) = &shard.checkpoints {
                            control.set_checkpoint_fault(id, cp.fault_switch());
                        }
                        let _ = ready.send((id, Ok(())));
                        drop(ready);
                        // A start refused for another shard (its checkpoint's layout, say)
                        // must not have taken records or committed a transaction on this one:
                        // a new shard of a wrong shard count did (its first checkpoint and an
                        // exactly_once commit, measured), which later runs cannot undo.
                        if !control.wait_until_all_built() {
                            control.never_started(id);
                            return (None, None);
                        }
                        let _stop_on_panic = crate::shard::PanicStop {
                            control: &control,
                            shard: id,
                        };
                        let (latency, failure) = shard.run(&control);
                        (Some(latency), failure)
                    }
                    Err(e) => {
                        control.never_started(id);
                        let _ = ready.send((id, Err(e)));
                        control.request_stop();
                        (None, None)
                    }
                }
            });
        threads.push(spawn.map_err(AppError::Thread)?);
    }
    drop(ready_tx);
    let _give_up = GiveUpUnlessBuilt(control.clone());

    let (requests, requests_rx) = mpsc::channel();
    let control_loop = ControlLoop {
        config: config.clone(),
        links,
        wakers: wakers.clone(),
        requests: requests_rx,
        version: 1,
        width,
        plan: config
            .feature_plan()
            .map_err(|e| AppError::Model(e.to_string()))?,
    };
    let ctl = control.clone();
    let control_thread = topology::with_cpus(&helpers, || {
        std::thread::Builder::new()
            .name("sluice-control".into())
            .spawn(move || control_loop.run(&ctl))
    });
    let mut threads_helping = vec![control_thread.map_err(AppError::Thread)?];
    threads_helping.extend(kafka_connect);
    let kafka_topics = TopicWatch::new(config);
    if config.ingest.kafka.enabled() && config.ingest.kafka.partition_check_ms > 0 {
        let watcher = Watcher {
            config: config.clone(),
            watch: kafka_topics.clone(),
            gauges: kafka_partitions.clone(),
        };
        let ctl = control.clone();
        let watch = topology::with_cpus(&helpers, || {
            std::thread::Builder::new()
                .name("sluice-topic-watch".into())
                .spawn(move || watcher.run(&|| ctl.stop_requested()))
        });
        threads_helping.push(watch.map_err(AppError::Thread)?);
    }
    if !config.admin.socket.is_empty() {
        let path = std::path::Path::new(&config.admin.socket);
        let admin = topology::with_cpus(&helpers, || {
            crate::admin::serve(
                path,
                requests.clone(),
                control.clone(),
                config.admin.faults,
                crate::ingest::kafka::status::ClusterInfo::new(
                    config,
                    kafka_partitions.clone(),
                    standbys.clone(),
                )
                .map(|c| c.with_topic_watch(kafka_topics.clone())),
            )
        })
        .map_err(|source| AppError::Admin {
            path: config.admin.socket.clone(),
            source,
        })?;
        threads_helping.push(admin);
    }

    let mut running = Running {
        local_addr,
        metrics_addr: None,
        driver,
        placements,
        control,
        counters,
        threads,
        requests,
        helpers: threads_helping,
        helper_cpus: helpers,
        kafka_partitions,
        kafka_topics,
        standbys,
        _xdp: xdp,
        _state_lock: state_lock,
    };
    let mut failures = Vec::new();
    let (mut answered, mut ready) = (0, 0);
    let mut last_answer = std::time::Instant::now();
    let rebuilt_bytes = |c: &[Arc<ShardCounters>]| -> u64 {
        c.iter().map(|c| c.changelog_restored_bytes.get()).sum()
    };
    let mut rebuilding = rebuilt_bytes(&running.counters);
    while answered < shards {
        let now_rebuilt = rebuilt_bytes(&running.counters);
        if now_rebuilt != rebuilding {
            rebuilding = now_rebuilt;
            last_answer = std::time::Instant::now();
        }
        match ready_rx.recv_timeout(Duration::from_secs(1)) {
            Ok((_, Ok(()))) => {
                answered += 1;
                ready += 1;
                last_answer = std::time::Instant::now();
            }
            Ok((shard, Err(source))) => {
                answered += 1;
                last_answer = std::time::Instant::now();
                failures.push(AppError::ShardStart { shard, source });
            }
            Err(mpsc::RecvTimeoutError::Timeout) if last_answer.elapsed() < SHARD_START_WAIT => {
                progress(ready, shards)
            }
            Err(_) => {
                failures.push(AppError::ShardStart {
                    shard: usize::MAX,
                    source: ShardStartError::NoAnswer(
                        shards - answered,
                        SHARD_START_WAIT.as_secs(),
                    ),
                });
                break;
            }
        }
    }
    if let Some(first) = failures.into_iter().next() {
        running.control.request_stop();
        // Join what started so sockets close before the caller retries.
        let _ = std::mem::take(&mut running.threads)
            .into_iter()
            .map(JoinHandle::join)
            .count();
        return Err(first);
    }
    running.control.set_all_built();
    running.metrics_addr = start_exporter(config, &mut running);
    tracing::info!(addr = %running.local_addr, shards, driver = driver.name(), "sluice is receiving");
    Ok(running)
}

/// Asks for the stop when `start` returns before its shards may serve (an error after they
/// were spawned): the built ones wait for that word in `Control::wait_until_all_built`.
struct GiveUpUnlessBuilt(Arc<Control>);

impl Drop for GiveUpUnlessBuilt {
    fn drop(&mut self) {
        if !self.0.is_all_built() {
            self.0.request_stop();
        }
    }
}

/// The live metrics endpoint. A failure to bind it is logged, not fatal: scoring matters
/// more than its metrics, and the shutdown report still has them.
fn start_exporter(config: &Config, running: &mut Running) -> Option<SocketAddr> {
    use crate::metrics::exporter::{self, BuildInfo, Exposition, Parts};
    let addr = match Config::optional_addr("metrics.listen", &config.metrics.listen) {
        Ok(Some(a)) => a,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!("{e}; live metrics are off");
            return None;
        }
    };
    let exposition = Arc::new(
        Exposition::new(
            running.counters.clone(),
            running.kafka_partitions.clone(),
            BuildInfo::of_this_build(running.driver.name()),
            Parts::of(config),
        )
        .with_standbys(running.standbys.clone())
        .with_topic_watch(running.kafka_topics.clone()),
    );
    let served = topology::with_cpus(&running.helper_cpus, || {
        exporter::serve(addr, exposition, running.control.clone())
    });
    match served {
        Ok(endpoint) => {
            tracing::info!(addr = %endpoint.addr, "metrics at http://{}/metrics", endpoint.addr);
            running.helpers.push(endpoint.thread);
            Some(endpoint.addr)
        }
        Err(e) => {
            tracing::error!("{e}; live metrics are off (serving goes on)");
            None
        }
    }
}

/// Why one shard could not start (built on its own thread, reported to `start`).
#[derive(Debug, thiserror::Error)]
pub enum ShardStartError {
    #[error("pinning to its CPU: {0}")]
    Pin(#[from] topology::PinError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("restoring its state: {0}")]
    Restore(#[from] checkpoint::CheckpointError),
    #[error("latency histograms (metrics.latency_max_ns): {0}")]
    Histograms(#[from] hdrhistogram::CreationError),
    #[error("{0} shard(s) gave no answer within {1} s")]
    NoAnswer(usize, u64),
    #[error("starting its cold-read thread (state.cold_reader = \"thread\"): {0}")]
    ColdReader(std::io::Error),
    #[error("starting its spill sweep thread (state.spill_sweep_keys_per_s): {0}")]
    SpillSweeper(std::io::Error),
    #[error(transparent)]
    Xdp(#[from] XdpStartError),
}

/// Everything one shard is built from, made on the main thread and moved to the shard's.
struct ShardSeed {
    sock: std::net::UdpSocket,
    rings: (crate::route::Outbound, crate::route::Inbound),
    placement: Placement,
    model: ShardModel,
    model_link: ModelLink,
    kafka: KafkaPart,
    /// The CPUs its helper threads start on (`topology::helper_cpus`).
    helpers: Vec<usize>,
    /// af_xdp: what it opens its AF_XDP socket with (on its own thread, once pinned).
    xdp: Option<xdp_part::XdpSeat>,
}

fn build_shard(
    id: usize,
    shards: usize,
    seed: ShardSeed,
    config: &Config,
    driver: Driver,
    counters: Arc<ShardCounters>,
    wakers: Arc<Vec<Waker>>,
) -> Result<Shard, ShardStartError> {
    let ShardSeed {
        sock,
        rings,
        placement,
        model,
        model_link,
        kafka,
        helpers,
        xdp,
    } = seed;
    if config.shards.pin {
        topology::pin_current(placement.cpu)?;
    }
    // Every Observation of a cycle may become a Score before the flush: bound by what a cycle
    // can take in (received batches + drained events), so egress never grows.
    let cycle_scores_max = config.ingest.udp.batch_datagrams_max * config.wire.batch_events_max
        + config.route.drain_events_max;
    let egress = Egress::new(&sock, config, cycle_scores_max)?;
    let udp = &config.ingest.udp;
    let rx = match driver {
        Driver::IoUring => UdpReceiver::IoUring(Box::new(UringReceiver::new(
            sock,
            udp.uring_buffers,
            config.wire.datagram_bytes_max,
        )?)),
        Driver::Recvmmsg => UdpReceiver::Recvmmsg(Box::new(MmsgReceiver::new(
            sock,
            udp.batch_datagrams_max,
            config.wire.datagram_bytes_max,
        ))),
        Driver::AfXdp => {
            let xsk = xdp
                .ok_or_else(|| IngestError::Xdp("the shard has no AF_XDP socket".into()))?
                .open()?;
            // The UDP socket beside it: what the program leaves to the kernel arrives there.
            let kernel = MmsgReceiver::new(
                sock,
                udp.batch_datagrams_max,
                config.wire.datagram_bytes_max,
            );
            UdpReceiver::AfXdp(Box::new(XdpReceiver::new(
                xsk,
                kernel,
                config.wire.datagram_bytes_max,
                udp.xdp_check_udp_checksum,
            )))
        }
    };
    let (target, layout) = match &kafka {
        KafkaPart::Dealt(k) => (k.target, KafkaLayout::Dealt(k.as_ref())),
        KafkaPart::Later(_) => (RestoreTarget::Newest, KafkaLayout::Later),
        KafkaPart::Off => (RestoreTarget::Newest, KafkaLayout::Off),
    };
    let mut restored = restore_shard(id, shards, config, target, layout, (&helpers, &counters))?;
    if let Some((rebuilt, ns)) = restored.rebuilt {
        counters.changelog_restored_keys.set(rebuilt.keys);
        counters.changelog_restored_bytes.set(rebuilt.bytes);
        counters.changelog_input_replays.add(rebuilt.input_replays);
        counters
            .changelog_replayed_records
            .add(rebuilt.replayed_records);
        counters.changelog_restore_ns.set(ns);
    }
    let (kafka, attach, checkpoints) = match kafka {
        KafkaPart::Dealt(seed) => {
            let cp = start_checkpoints(
                id,
                config,
                &full_layout(config, shards, Some(&seed.layout)),
                true,
                (restored.seq, restored.next_seq),
                &mut restored.state,
                &helpers,
            )?;
            let k = topology::with_cpus(&helpers, || {
                let words = restored.state.plan().words();
                // Restored to exactly the named checkpoint (from disk or the changelog), or
                // the start failed. Partitions replayed from their input are not in the
                // changelog as it stands: the first send is whole (and marked), which heals it.
                let replayed = restored.rebuilt.is_some_and(|(r, _)| r.input_replays > 0);
                let holds = seed.changelog_holds().filter(|_| !replayed);
                kafka_part::shard_kafka(
                    id,
                    config,
                    *seed,
                    (&restored.offsets, words, holds),
                    &wakers,
                    &helpers,
                )
            })?;
            counters
                .kafka_partitions_attached
                .set(k.source.owned().len() as u64);
            (Some(k), None, cp)
        }
        KafkaPart::Later(rx) => {
            let attach = kafka_part::attach_later(
                (id, shards),
                config.clone(),
                rx,
                &restored,
                wakers.clone(),
                helpers.clone(),
            );
            (None, Some(attach), None)
        }
        KafkaPart::Off => {
            let cp = start_checkpoints(
                id,
                config,
                &full_layout(config, shards, None),
                false,
                (restored.seq, restored.next_seq),
                &mut restored.state,
                &helpers,
            )?;
            (None, None, cp)
        }
    };
    let reader = match config.state.cold_reader {
        ColdReaderPlace::Shard => None,
        place => {
            let idle = place == ColdReaderPlace::Idle;
            let cpus = if idle {
                vec![placement.cpu]
            } else {
                helpers.clone()
            };
            let state = &restored.state;
            Some(
                topology::with_cpus(&cpus, || {
                    ColdReader::thread(state, id, Arc::clone(&wakers), idle)
                })
                .map_err(ShardStartError::ColdReader)?,
            )
        }
    };
    // Spilled keys idle past the TTL deleted without an event (`state::spill_sweep`).
    let sweeper = match restored.state.cold_store() {
        Some(store) if restored.state.spilled_sweep_max() > 0 => {
            let state = &restored.state;
            Some(
                topology::with_cpus(&helpers, || {
                    SpillSweeper::start(
                        store,
                        state.plan().words(),
                        config.state.ttl_ms.saturating_mul(1_000_000),
                        config.state.spill_sweep_keys_per_s,
                        state.spilled_sweep_max(),
                        id,
                    )
                })
                .map_err(ShardStartError::SpillSweeper)?,
            )
        }
        _ => None,
    };
    let mut core = ShardCore::new(
        id,
        shards,
        config,
        rings,
        model,
        restored.state,
        restored.max_event_ns,
        counters.clone(),
    );
    if let Some(r) = reader {
        core.use_cold_reader(r);
    }
    if let Some(s) = sweeper {
        core.use_spill_sweeper(s);
    }
    let latency = ShardLatency::new(config.metrics.latency_max_ns, counters.clone())?;
    core.publish_state_counters();
    tracing::info!(
        shard = id,
        cpu = placement.cpu,
        numa_node = placement
            .numa_node
            .map_or("unknown".to_owned(), |n| n.to_string()),
        pinned = config.shards.pin,
        hot_state_mib = core.state_memory_bytes() >> 20,
        "shard ready"
    );
    Ok(Shard {
        core,
        checkpoints,
        model_link,
        rx,
        kafka,
        attach,
        egress,
        counters,
        latency,
        wakers,
        recv_batch: udp.batch_datagrams_max,
        drain_max: config.route.drain_events_max,
        idle_spins: config.shards.idle_spins,
        park_timeout: Duration::from_micros(config.shards.park_timeout_us),
        stall_threshold_ns: config.metrics.stall_threshold_us * 1_000,
        flips_seen: 0,
    })
}

/// A shard's state as restored, and what its checkpoints and Kafka part go on from.
pub(crate) struct Restored {
    state: KeyedState,
    max_event_ns: u64,
    /// The restored checkpoint's Kafka offsets.
    pub offsets: Vec<PartitionOffset>,
    /// The restored checkpoint (None: started empty).
    pub seq: Option<u64>,
    pub next_seq: u64,
    /// The Kafka part of the restored checkpoint's layout, when it was taken from the
    /// checkpoint because the brokers did not answer (`KafkaLayout::Later`).
    pub kafka_layout: Option<String>,
    /// Rebuilt from the changelog (the checkpoint was not on disk), and how long it took.
    pub rebuilt: Option<(rebuild::Rebuilt, u64)>,
}

/// What a shard knows of the Kafka part of its state layout when it restores.
enum KafkaLayout<'a> {
    Off,
    /// Dealt: the partitions its state belongs to (and, with a changelog, where to rebuild
    /// it from when the checkpoint the last transaction names is not on disk).
    Dealt(&'a kafka_part::KafkaSeed),
    /// Not dealt yet (brokers unreachable at start): whatever the newest checkpoint says,
    /// checked when the partitions are dealt (`kafka_part::attach_later`).
    Later,
}

/// The state layout (shard count, feature list) with the Kafka part appended.
pub(crate) fn full_layout(config: &Config, shards: usize, kafka: Option<&str>) -> String {
    let base = config.state_layout(shards);
    match kafka {
        Some(extra) => format!("{base};{extra}"),
        None => base,
    }
}

pub(crate) fn shard_dir(config: &Config, id: usize) -> std::path::PathBuf {
    std::path::Path::new(&config.state.dir).join(format!("shard-{id}"))
}

/// A shard's state: in memory only without `state.dir`; else on its spill store, restored
/// from its newest good checkpoint (`target`: exactly_once names one).
fn restore_shard(
    id: usize,
    shards: usize,
    config: &Config,
    target: RestoreTarget,
    kafka: KafkaLayout<'_>,
    (helpers, counters): (&[usize], &ShardCounters),
) -> Result<Restored, ShardStartError> {
    let plan = config.feature_plan()?;
    if config.state.dir.is_empty() {
        return Ok(Restored {
            state: KeyedState::with_plan(config, plan, None),
            max_event_ns: 0,
            offsets: Vec::new(),
            seq: None,
            next_seq: 1,
            kafka_layout: None,
            rebuilt: None,
        });
    }
    let started = std::time::Instant::now();
    let base = shard_dir(config, id);
    let root = base.join("checkpoints");
    let (layout, kafka_layout) = match kafka {
        KafkaLayout::Off => (full_layout(config, shards, None), None),
        KafkaLayout::Dealt(seed) => (full_layout(config, shards, Some(&seed.layout)), None),
        KafkaLayout::Later => {
            let own = config.state_layout(shards);
            let newest = checkpoint::newest_layout(&root)?;
            let extra = newest
                .as_deref()
                .and_then(|l| l.strip_prefix(own.as_str())?.strip_prefix(';'))
                .map(str::to_owned);
            // Another base layout is refused by the restore, as at any start.
            (full_layout(config, shards, extra.as_deref()), extra)
        }
    };
    let words = plan.words();
    // RocksDB starts its shared background threads at the first open: off the shards' CPUs.
    let open = |dir: &std::path::Path, len: Option<u64>| {
        topology::with_cpus(helpers, || {
            Spill::open(dir, config.state.spill_cache_bytes, words, len)
        })
    };
    // exactly_once with a changelog: the checkpoint the last transaction names is not on
    // this disk (a wiped state.dir, a new host): rebuild it from the changelog instead.
    let missing = |want: u64| !checkpoint::path_of(&root, want).exists();
    let group = config.ingest.kafka.membership == crate::config::Membership::Group;
    let rebuild = match (target, &kafka) {
        (RestoreTarget::Exactly(want), KafkaLayout::Dealt(seed))
            if seed.changelog.is_some() && missing(want) =>
        {
            Some((want, *seed))
        }
        _ => None,
    };
    if let (Some((want, _)), true) = (rebuild, group) {
        // Group membership: each partition is rebuilt as it is assigned; start empty.
        let (spill, _) = checkpoint::restore_to(
            &root,
            &layout,
            &base.join("spill"),
            words,
            open,
            RestoreTarget::Elsewhere(want),
        )?;
        tracing::info!(shard = id, checkpoint = want, "the checkpoint the last committed Kafka transaction names is not on this disk: starting empty, each assigned partition is rebuilt from the changelog");
        return Ok(Restored {
            state: KeyedState::with_plan(config, plan, Some(spill)),
            max_event_ns: 0,
            offsets: Vec::new(),
            seq: None,
            next_seq: want + 1,
            kafka_layout,
            rebuilt: None,
        });
    }
    let target = rebuild.map_or(target, |(want, _)| RestoreTarget::Elsewhere(want));
    let (spill, point) =
        checkpoint::restore_to(&root, &layout, &base.join("spill"), words, open, target)?;
    let mut state = KeyedState::with_plan(config, plan, Some(spill));
    if let Some((want, seed)) = rebuild {
        return rebuild_from_changelog(id, config, seed, (want, state), (started, counters));
    }
    let Some(p) = point else {
        tracing::info!(shard = id, dir = %base.display(), "no checkpoint to restore: starting with empty state");
        return Ok(Restored {
            state,
            max_event_ns: 0,
            offsets: Vec::new(),
            seq: None,
            next_seq: 1,
            kafka_layout,
            rebuilt: None,
        });
    };
    let n = checkpoint::load_records(&mut state, &p)?;
    tracing::info!(
        shard = id,
        checkpoint = %p.path.display(),
        hot_records = n,
        spilled_records = p.manifest.spilled,
        observations_applied = p.manifest.observations_applied,
        restore_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
        "state restored"
    );
    Ok(Restored {
        state,
        max_event_ns: p.manifest.max_event_ns,
        offsets: p.manifest.kafka_offsets.clone(),
        seq: Some(p.manifest.seq),
        next_seq: p.manifest.seq + 1,
        kafka_layout,
        rebuilt: None,
    })
}

/// exactly_once, checkpoint `want` named but not on disk: the state from the changelog (as
/// of the last committed transaction, which completed `want`), the input resuming at the
/// offsets the group committed in that transaction.
fn rebuild_from_changelog(
    id: usize,
    config: &Config,
    seed: &kafka_part::KafkaSeed,
    (want, mut state): (u64, KeyedState),
    (started, counters): (std::time::Instant, &ShardCounters),
) -> Result<Restored, ShardStartError> {
    let Some(spec) = &seed.changelog else {
        return Err(KafkaError::Other("no changelog to rebuild from".into()).into());
    };
    tracing::warn!(shard = id, checkpoint = want, topic = %spec.topic, "the checkpoint the last committed Kafka transaction names is not on this disk: rebuilding the state from the changelog");
    let owned = seed.owned_names(config);
    let offsets = changelog::committed_offsets(config, &owned)?;
    // Where the changelog cannot rebuild a partition, its input can (from its first record to
    // the offset committed with the state); a changelog the last committed transaction does
    // not vouch for is not read at all.
    let inputs = seed
        .owned
        .iter()
        .filter_map(|p| {
            let topic = config.ingest.kafka.topics.get(usize::from(p.topic))?;
            Some((p.source_tag(), (topic.clone(), p.partition)))
        })
        .collect();
    let mut fallback = rebuild::Fallback::new(spec, &inputs, &offsets);
    fallback.all = !seed.changelog_complete;
    // Bytes read so far, live: start-up watches it move (and the gauge ends at the total).
    let rebuilt = rebuild::restore(config, spec, &mut state, &fallback, &|bytes| {
        counters.changelog_restored_bytes.set(bytes)
    })?;
    let ns = started.elapsed().as_nanos() as u64;
    tracing::info!(
        shard = id,
        keys = rebuilt.keys,
        records_read = rebuilt.read,
        bytes_read = rebuilt.bytes,
        read_ms = format!("{:.1}", rebuilt.read_ns as f64 / 1e6),
        partitions = spec.partitions.len(),
        restore_ms = format!("{:.1}", ns as f64 / 1e6),
        "state rebuilt from the changelog"
    );
    Ok(Restored {
        state,
        max_event_ns: rebuilt.max_event_ns,
        offsets,
        seq: Some(want),
        next_seq: want + 1,
        kafka_layout: None,
        rebuilt: Some((rebuilt, ns)),
    })
}

/// The shard's checkpointer (with `state.dir` and `checkpoint.interval_ms` > 0), its first
/// checkpoint numbered `next_seq` and written for `layout` (`has_partitions`: with a Kafka
/// part); its writer thread on `helpers`. `restored`: the checkpoint `state` holds, unchanged
/// since (changes are tracked from here on), or None.
fn start_checkpoints(
    id: usize,
    config: &Config,
    layout: &str,
    has_partitions: bool,
    (restored, next_seq): (Option<u64>, u64),
    state: &mut KeyedState,
    helpers: &[usize],
) -> Result<Option<Checkpointer>, ShardStartError> {
    if config.state.dir.is_empty() || config.checkpoint.interval_ms == 0 {
        return Ok(None);
    }
    state.track_changes();
    let words = state.plan().words();
    let buffer = checkpoint::buffer_bytes(config.state.hot_capacity, words);
    let cp = topology::with_cpus(helpers, || {
        Checkpointer::start(CheckpointSpec {
            root: shard_dir(config, id).join("checkpoints"),
            shard: id,
            layout: layout.to_owned(),
            interval_ns: config.checkpoint.interval_ms * 1_000_000,
            keep: config.checkpoint.keep,
            full_every: config.checkpoint.full_every,
            buffer_bytes: buffer,
            slice_records: config.checkpoint.copy_slice_records,
            slice_ns: config.checkpoint.copy_slice_us * 1_000,
            journal_records: config.checkpoint.spill_journal_records,
            words,
            next_seq,
            restored,
            // A shard with Kafka partitions under at_least_once commits a checkpoint only once
            // the Scores produced before it are acknowledged (see shard::kafka).
            gated: has_partitions && config.egress.kafka.delivery == Delivery::AtLeastOnce,
        })
    });
    let mut cp = cp?;
    // The buffers are touched before the shard reports ready: touched while it serves,
    // they competed with the first seconds of traffic (events lost to socket drops).
    cp.wait_ready();
    Ok(Some(cp))
}
