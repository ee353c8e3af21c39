//! The live metrics endpoint: OpenMetrics text on `metrics.listen`, served by its own thread
//! through `tiny_http`, encoded by `prometheus-client`. A scrape reads every shard's counters
//! and fixed-bucket histograms as they are (single-writer atomics, relaxed loads): the shards
//! never wait for it and never see it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::catalog::{part_of, Kind, MetricDef, Part, LATENCY_BOUNDS_NS, LATENCY_BUCKETS};
use super::{names, ShardCounters, SHARD_HISTOGRAMS, SHARD_METRICS};
use crate::ingest::kafka::PartitionGauges;
use crate::shard::Control;

/// OpenMetrics 1.0 text, what `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest a scrape request may take to arrive (slow or idle clients do not hold the thread).
const REQUEST_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("metrics.listen {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("could not start the metrics thread: {0}")]
    Thread(std::io::Error),
}

/// What a scrape serves, besides the shards' own counters.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub version: &'static str,
    pub revision: &'static str,
    pub driver: String,
}

impl BuildInfo {
    pub fn of_this_build(driver: &str) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            revision: option_env!("SLUICE_GIT_REVISION").unwrap_or("unknown"),
            driver: driver.to_owned(),
        }
    }
}

/// Which parts of sluice are on. The metrics of a part that is off (`sluice_kafka_*` without
/// Kafka, `sluice_checkpoint*` without checkpoints) are left out of the exposition: they
/// could only ever be zero, and at 64 shards they were a third of every scrape.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub kafka: bool,
    pub checkpoints: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        kafka: true,
        checkpoints: true,
    };

    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            kafka: config.ingest.kafka.enabled(),
            checkpoints: !config.state.dir.is_empty() && config.checkpoint.interval_ms > 0,
        }
    }

    fn serves(&self, name: &str) -> bool {
        match part_of(name) {
            Part::Core => true,
            Part::Kafka => self.kafka,
            Part::Checkpoints => self.checkpoints,
        }
    }
}

/// Everything a scrape reads. Built once; each scrape encodes it afresh.
#[derive(Debug)]
pub struct Exposition {
    pub shards: Vec<Arc<ShardCounters>>,
    pub partitions: PartitionGauges,
    pub info: BuildInfo,
    pub started: Instant,
    pub parts: Parts,
    shard_ids: Vec<String>,
    /// Standby replicas' copies (`ingest.kafka.standby_replicas`), if any.
    pub standbys: Option<crate::ingest::kafka::standby::Standbys>,
    /// The input topics' partitions beyond those dealt (`ingest.kafka.partition_check_ms`).
    pub topics: Option<Arc<crate::ingest::kafka::topic_watch::TopicWatch>>,
}

impl Exposition {
    pub fn new(
        shards: Vec<Arc<ShardCounters>>,
        partitions: PartitionGauges,
        info: BuildInfo,
        parts: Parts,
    ) -> Self {
        let shard_ids = (0..shards.len()).map(|i| i.to_string()).collect();
        Self {
            shards,
            partitions,
            info,
            started: Instant::now(),
            parts,
            shard_ids,
            standbys: None,
            topics: None,
        }
    }

    /// With the standby replicas' copies shown too.
    pub fn with_standbys(mut self, standbys: crate::ingest::kafka::standby::Standbys) -> Self {
        self.standbys = Some(standbys);
        self
    }

    /// With the input topics' unconsumed partitions shown too.
    pub fn with_topic_watch(
        mut self,
        topics: Arc<crate::ingest::kafka::topic_watch::TopicWatch>,
    ) -> Self {
        self.topics = Some(topics);
        self
    }

    /// The whole exposition as OpenMetrics text.
    pub fn encode(self: &Arc<Self>) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut body = String::with_capacity(64 * 1024);
        prometheus_client::encoding::text::encode(&mut body, &registry)?;
        Ok(body)
    }

    fn encode_catalog(
        &self,
        def: &MetricDef,
        encoder: &mut DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let (name, metric_type) = match def.kind {
            // prometheus-client appends `_total` to a counter's samples.
            Kind::Counter => (
                def.name.strip_suffix("_total").unwrap_or(def.name),
                MetricType::Counter,
            ),
            Kind::Gauge | Kind::GaugeMax | Kind::GaugeNs => (def.name, MetricType::Gauge),
        };
        let mut family = encoder.encode_descriptor(name, def.help.trim(), None, metric_type)?;
        for (shard, counters) in self.shard_ids.iter().zip(&self.shards) {
            match def.labels {
                None => {
                    let v = (def.read)(counters, 0);
                    encode_value(
                        def.kind,
                        v,
                        family.encode_family(&[("shard", shard.as_str())])?,
                    )?;
                }
                Some(l) => {
                    for i in 0..l.count {
                        let v = (def.read)(counters, i);
                        let labels = [("shard", shard.as_str()), (l.key, (l.value)(i))];
                        encode_value(def.kind, v, family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn encode_histograms(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut buckets = [(0.0, 0u64); LATENCY_BUCKETS];
        for (name, help, pick) in SHARD_HISTOGRAMS {
            if !self.parts.serves(name) {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (shard, counters) in self.shard_ids.iter().zip(&self.shards) {
                let (counts, sum_ns) = pick(&counters.latency).snapshot();
                for (i, (b, n)) in buckets.iter_mut().zip(counts).enumerate() {
                    // The last bucket is +Inf, which prometheus-client writes for f64::MAX.
                    b.0 = LATENCY_BOUNDS_NS
                        .get(i)
                        .map_or(f64::MAX, |&ns| ns as f64 / 1e9);
                    b.1 = n;
                }
                family
                    .encode_family(&[("shard", shard.as_str())])?
                    .encode_histogram::<NoLabelSet>(
                        sum_ns as f64 / 1e9,
                        counts.iter().sum(),
                        &buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }

    fn encode_standbys(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let status = self
            .standbys
            .as_ref()
            .map(|s| s.status())
            .unwrap_or_default();
        if status.is_empty() {
            return Ok(());
        }
        let mut keys = encoder.encode_descriptor(
            names::KAFKA_STANDBY_KEYS,
            "Keys in this instance's warm copy of a partition another instance owns (standby replicas).",
            None,
            MetricType::Gauge,
        )?;
        for s in &status {
            let partition = s.partition.to_string();
            let labels = [
                ("topic", s.topic.as_str()),
                ("partition", partition.as_str()),
            ];
            keys.encode_family(&labels)?
                .encode_gauge(&i64::try_from(s.keys).unwrap_or(i64::MAX))?;
        }
        let mut lag = encoder.encode_descriptor(
            names::KAFKA_STANDBY_CHANGELOG_LAG,
            "Changelog records not yet in this instance's warm copy of the partition (absent until a fetch told the end).",
            None,
            MetricType::Gauge,
        )?;
        for s in &status {
            if let Some(l) = s.changelog_lag {
                let partition = s.partition.to_string();
                let labels = [
                    ("topic", s.topic.as_str()),
                    ("partition", partition.as_str()),
                ];
                lag.encode_family(&labels)?.encode_gauge(&l)?;
            }
        }
        Ok(())
    }

    /// Per input topic, once its partitions were dealt and the brokers asked: 0 until a topic
    /// grows, so an alert can be `> 0`.
    fn encode_topic_watch(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(watch) = self.topics.as_ref().filter(|_| self.parts.kafka) else {
            return Ok(());
        };
        let known: Vec<_> = watch
            .topics
            .iter()
            .filter(|t| t.consumed.load(Relaxed) >= 0 && t.listed.load(Relaxed) >= 0)
            .collect();
        if known.is_empty() {
            return Ok(());
        }
        let mut partitions = encoder.encode_descriptor(
            names::KAFKA_TOPIC_PARTITIONS_UNCONSUMED,
            "Partitions of an input topic that no shard consumes: added to the topic after they were dealt (see the error logged; sluice does not take them up by itself).",
            None,
            MetricType::Gauge,
        )?;
        for t in &known {
            let n = (t.listed.load(Relaxed) - t.consumed.load(Relaxed)).max(0);
            partitions
                .encode_family(&[("topic", t.topic.as_str())])?
                .encode_gauge(&n)?;
        }
        let mut records = encoder.encode_descriptor(
            names::KAFKA_TOPIC_RECORDS_UNCONSUMED,
            "Records waiting in an input topic's partitions that no shard consumes (high minus low watermark).",
            None,
            MetricType::Gauge,
        )?;
        for t in &known {
            let r = t.records_unconsumed.load(Relaxed).max(0);
            records
                .encode_family(&[("topic", t.topic.as_str())])?
                .encode_gauge(&r)?;
        }
        Ok(())
    }

    /// Process-wide, not per shard: see `ingest::kafka::client_errors`.
    fn encode_client_errors(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        use crate::ingest::kafka::client_errors::{count, ClientErrorKind};
        if !self.parts.kafka {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            names::KAFKA_CLIENT_ERRORS
                .strip_suffix("_total")
                .unwrap_or(names::KAFKA_CLIENT_ERRORS),
            "Errors librdkafka's clients reported, by kind: authentication (SASL refused), authorization (an ACL refuses), tls (handshake failed), transport (no connection), other.",
            None,
            MetricType::Counter,
        )?;
        for kind in ClientErrorKind::ALL {
            family
                .encode_family(&[("kind", kind.label())])?
                .encode_counter::<NoLabelSet, _, u64>(&count(kind), None)?;
        }
        use crate::ingest::kafka::offset_resets::{offsets_lost, resets};
        for (name, help, v) in [
            (
                names::KAFKA_OFFSET_RESETS,
                "Positions moved because the brokers no longer had them (out of range: the topic's retention deleted the records before sluice took them); each is logged as an error.",
                resets(),
            ),
            (
                names::KAFKA_OFFSETS_LOST,
                "Offsets those resets skipped: records deleted before sluice took them (and any transaction markers among them).",
                offsets_lost(),
            ),
        ] {
            encoder
                .encode_descriptor(
                    name.strip_suffix("_total").unwrap_or(name),
                    help,
                    None,
                    MetricType::Counter,
                )?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        Ok(())
    }

    fn encode_partitions(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        use crate::ingest::kafka::watermarks::{by_partition, dealt};
        let partitions = by_partition(dealt(&self.partitions));
        if partitions.is_empty() {
            return Ok(());
        }
        let mut lag = encoder.encode_descriptor(
            names::KAFKA_PARTITION_LAG,
            "Records between the owning shard's position and the partition's high watermark.",
            None,
            MetricType::Gauge,
        )?;
        for p in &partitions {
            if let Some(l) = p.lag {
                let partition = p.partition.to_string();
                let labels = [
                    ("topic", p.topic.as_str()),
                    ("partition", partition.as_str()),
                ];
                lag.encode_family(&labels)?.encode_gauge(&l)?;
            }
        }
        let mut owned = encoder.encode_descriptor(
            names::KAFKA_PARTITION_OWNED,
            "1 per partition a shard of this instance owns, with what it does with it (active, handing_over, restoring).",
            None,
            MetricType::Gauge,
        )?;
        for p in &partitions {
            if let Some(shard) = p.shard {
                let (partition, shard) = (p.partition.to_string(), shard.to_string());
                let labels = [
                    ("topic", p.topic.as_str()),
                    ("partition", partition.as_str()),
                    ("shard", shard.as_str()),
                    ("role", p.role.name()),
                ];
                owned.encode_family(&labels)?.encode_gauge(&1i64)?;
            }
        }
        let mut records = encoder.encode_descriptor(
            names::KAFKA_PARTITION_RECORDS
                .strip_suffix("_total")
                .unwrap_or(names::KAFKA_PARTITION_RECORDS),
            "Records taken from the partition (applied or skipped).",
            None,
            MetricType::Counter,
        )?;
        for p in &partitions {
            let partition = p.partition.to_string();
            let labels = [
                ("topic", p.topic.as_str()),
                ("partition", partition.as_str()),
            ];
            records
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&p.records, None)?;
        }
        Ok(())
    }
}

fn encode_value(kind: Kind, v: u64, mut m: MetricEncoder<'_>) -> std::fmt::Result {
    match kind {
        Kind::Counter => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
        Kind::Gauge | Kind::GaugeMax => m.encode_gauge(&(v as f64)),
        Kind::GaugeNs => m.encode_gauge(&(v as f64 / 1e9)),
    }
}

/// The registry's handle on the exposition (a Collector must be `'static`).
#[derive(Debug)]
struct Scrape(Arc<Exposition>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let x = &self.0;
        let model_version = x
            .shards
            .iter()
            .map(|c| c.model_version.get())
            .max()
            .unwrap_or(0)
            .to_string();
        let labels = [
            ("version", x.info.version),
            ("revision", x.info.revision),
            ("driver", x.info.driver.as_str()),
            ("model_version", model_version.as_str()),
        ];
        encoder
            .encode_descriptor(
                names::BUILD,
                "sluice's version, git revision, UDP driver and newest model version.",
                None,
                MetricType::Info,
            )?
            .encode_info(&labels)?;
        encoder
            .encode_descriptor(
                names::UPTIME,
                "Seconds since the exporter started (sluice was ready).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&x.started.elapsed().as_secs_f64())?;
        let (loaded, refused) = crate::control::reloads();
        let mut reloads = encoder.encode_descriptor(
            names::MODEL_RELOADS
                .strip_suffix("_total")
                .unwrap_or(names::MODEL_RELOADS),
            "Model reloads (SIGHUP, sluice reload) by result: loaded, or refused (the file failed a check; the previous version serves on, the reason is in the log or the reply).",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [("loaded", loaded), ("refused", refused)] {
            reloads
                .encode_family(&[("result", result)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        for def in SHARD_METRICS.iter().filter(|d| x.parts.serves(d.name)) {
            x.encode_catalog(def, &mut encoder)?;
        }
        x.encode_histograms(&mut encoder)?;
        x.encode_partitions(&mut encoder)?;
        x.encode_standbys(&mut encoder)?;
        x.encode_topic_watch(&mut encoder)?;
        x.encode_client_errors(&mut encoder)
    }
}

/// A running endpoint; stops with the service (`control`).
pub struct Endpoint {
    pub addr: SocketAddr,
    pub thread: JoinHandle<()>,
}

/// Bind `addr` and serve `/metrics` from a thread until `control` says stop. The thread, and
/// the HTTP server's own threads it starts, inherit the caller's CPU mask: `app` calls this
/// inside `topology::with_cpus(helpers)`, so a scrape never preempts a shard.
pub fn serve(
    addr: SocketAddr,
    exposition: Arc<Exposition>,
    control: Arc<Control>,
) -> Result<Endpoint, ExporterError> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("sluice-metrics".into())
        .spawn(move || {
            let server = match tiny_http::Server::http(addr) {
                Ok(s) => s,
                Err(e) => {
                    let _ = bound_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let bound = server.server_addr().to_ip();
            let _ = bound_tx.send(bound.ok_or_else(|| "not an IP address".to_owned()));
            while !control.stop_requested() {
                match server.recv_timeout(REQUEST_WAIT) {
                    Ok(Some(request)) => answer(request, &exposition),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("metrics endpoint: {e}");
                        std::thread::sleep(REQUEST_WAIT);
                    }
                }
            }
        })
        .map_err(ExporterError::Thread)?;
    let bound = bound_rx
        .recv()
        .unwrap_or_else(|_| Err("the metrics thread ended".to_owned()));
    match bound {
        Ok(bound) => Ok(Endpoint {
            addr: bound,
            thread,
        }),
        Err(reason) => {
            let _ = thread.join();
            Err(ExporterError::Bind { addr, reason })
        }
    }
}

fn answer(request: tiny_http::Request, exposition: &Arc<Exposition>) {
    use tiny_http::{Header, Method, Response};
    let header = |v: &str| Header::from_bytes("Content-Type", v).ok();
    let path = request.url().split('?').next().unwrap_or("");
    let response = match (request.method(), path) {
        (Method::Get | Method::Head, "/metrics") => match exposition.encode() {
            Ok(body) => {
                let r = Response::from_string(body);
                match header(CONTENT_TYPE) {
                    Some(h) => r.with_header(h),
                    None => r,
                }
            }
            Err(_) => Response::from_string("encoding failed\n").with_status_code(500),
        },
        (Method::Get | Method::Head, "/") => {
            Response::from_string("sluice: metrics at /metrics\n").with_status_code(200)
        }
        (Method::Get | Method::Head, _) => {
            Response::from_string("not found\n").with_status_code(404)
        }
        _ => Response::from_string("only GET and HEAD\n").with_status_code(405),
    };
    // A client that went away: nothing to do.
    let _ = request.respond(response);
}
