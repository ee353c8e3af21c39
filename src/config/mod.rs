//! Typed configuration: embedded defaults, a file overlay, `--set key=value` overrides, and
//! validation that reports every problem at once.
//!
//! The embedded `defaults.toml` names every key, so an unknown key or a value of the wrong type
//! is found by comparing against it before serde sees the document; then `validate` checks
//! ranges and cross-field rules. Each setting's cost is documented in `defaults.toml`.
// Reached by config files and --set: no index that could panic (hardening issue; tests may index).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

mod kafka_start;
mod overlay;
pub mod producer_queue;
mod validate;
pub mod validate_kafka;
mod validate_xdp;

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use kafka_start::KafkaStart;
pub use overlay::DEFAULTS_TOML;

/// Everything that went wrong while loading a config; `Display` lists one problem a line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  - {}", .problems.len(), if .problems.len() == 1 { "" } else { "s" }, .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: String) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub ingest: Ingest,
    pub wire: Wire,
    pub shards: Shards,
    pub route: Route,
    pub state: State,
    pub features: Features,
    pub time: Time,
    pub checkpoint: Checkpoint,
    pub model: Model,
    pub infer: Infer,
    pub egress: Egress,
    pub kafka: KafkaProperties,
    pub metrics: Metrics,
    pub admin: Admin,
    pub log: Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Onnx,
    Linear,
    Online,
}

/// What runs an ONNX model (`model.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelEngine {
    /// The native engine when the graph compiles, ONNX Runtime otherwise.
    Auto,
    Ort,
    Native,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OnlineModel {
    pub enabled: bool,
    pub learning_rate: f32,
    pub l2: f32,
    pub adagrad: bool,
    pub blend: f32,
    pub average_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Admin {
    pub socket: String,
    pub faults: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Ingest {
    pub udp: Udp,
    pub kafka: IngestKafka,
}

/// How an instance's shards come to own Kafka partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// This instance takes every partition, dealt over its shards at start.
    Deal,
    /// Each shard is a member of the consumer group: Kafka decides which instance owns which
    /// partition, and a partition's state follows it through the changelog.
    Group,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IngestKafka {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group: String,
    pub membership: Membership,
    /// `membership = group`: this instance's name in the group.
    pub instance_id: String,
    /// `membership = group`: join as static members (`group.instance.id`).
    pub static_membership: bool,
    /// `membership = group`: other instances keeping a warm copy of each partition.
    pub standby_replicas: usize,
    /// Keys over every warm copy this instance keeps.
    pub standby_keys_max: usize,
    /// `membership = group`: how long a handed-over partition's keys are kept in memory in
    /// case it comes back (0 = not kept).
    pub handed_over_keep_ms: u64,
    pub start: KafkaStart,
    /// How often the input topics' partition counts are asked for (0 = never).
    pub partition_check_ms: u64,
    pub records_per_cycle_max: usize,
    pub restore_keys_per_cycle: usize,
    pub in_flight_records_max: usize,
    pub in_flight_bytes_max: usize,
}

impl IngestKafka {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }
}

/// librdkafka properties passed through (`[kafka.consumer]`, `[kafka.producer]`).
#[derive(Debug, Clone, Deserialize)]
pub struct KafkaProperties {
    pub consumer: std::collections::BTreeMap<String, String>,
    pub producer: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EgressKafka {
    pub scores_topic: String,
    pub alerts_topic: String,
    /// Input records that are not a valid EventBatch go here as they came (key, value,
    /// timestamp), with headers naming where they came from and why; "" = skipped only.
    pub dead_letter_topic: String,
    /// Events refused inside a valid record for these reasons (drop-reason labels) also go
    /// there, gathered per input record (`egress::kafka::dead_letter`).
    pub dead_letter_events: Vec<String>,
    pub delivery: Delivery,
    pub progress_topic: String,
    pub transactional_id_prefix: String,
    pub transaction_timeout_ms: u64,
    /// exactly_once: the longest the last commit (and an abort) waits once stopping.
    pub shutdown_commit_ms: u64,
    /// exactly_once: a second transactional producer per shard takes the Scores after a
    /// checkpoint's flip while the first commits, so Kafka intake does not stand still for
    /// the commit (only until the first's Score records are acknowledged, for their order).
    pub overlap_commits: bool,
    /// exactly_once: each transaction also carries the checkpoint's state changes to the
    /// changelog topic, from which a shard whose checkpoint is missing restores.
    pub changelog: bool,
    /// "" = `<ingest.kafka.group>-state`.
    pub changelog_topic: String,
}

impl EgressKafka {
    /// The changelog topic's name (`changelog_topic`, or `<group>-state`).
    pub fn changelog_topic(&self, group: &str) -> String {
        if self.changelog_topic.is_empty() {
            format!("{group}-state")
        } else {
            self.changelog_topic.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UdpDriver {
    Auto,
    IoUring,
    Recvmmsg,
    AfXdp,
}

/// `ingest.udp.xdp_mode`: how the XDP program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpAttach {
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Udp {
    pub listen: String,
    pub driver: UdpDriver,
    pub socket_rcvbuf_bytes: usize,
    pub uring_buffers: usize,
    pub batch_datagrams_max: usize,
    pub shed_after_ms: u64,
    pub interface: String,
    pub queues: Vec<u32>,
    pub xdp_mode: XdpAttach,
    pub xdp_frames: usize,
    pub xdp_frame_bytes: usize,
    pub xdp_zero_copy: bool,
    pub xdp_check_udp_checksum: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Wire {
    pub datagram_bytes_max: usize,
    pub batch_events_max: usize,
    pub features_per_event_max: usize,
    pub depth_max: usize,
    pub tables_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Shards {
    pub count: usize,
    pub cores: Vec<usize>,
    pub pin: bool,
    pub idle_spins: u32,
    pub park_timeout_us: u64,
    pub helper_cores: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RingFullPolicy {
    Drop,
    Backpressure,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Route {
    pub ring_capacity: usize,
    pub full: RingFullPolicy,
    pub drain_events_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct State {
    pub hot_capacity: usize,
    pub dir: String,
    pub spill_cache_bytes: usize,
    pub ttl_ms: u64,
    pub ttl_sweep_slots: usize,
    pub dedup: bool,
    pub cold_wait_max: usize,
    pub cold_reader: ColdReaderPlace,
    pub spill_sweep_keys_per_s: u64,
    pub spill_sweep_keys_per_cycle: usize,
}

/// Where a shard's batched cold reads are made (`state.cold_reader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColdReaderPlace {
    /// A reader thread on `shards.helper_cores`.
    Thread,
    /// A reader thread on the shard's own CPU under SCHED_IDLE.
    Idle,
    /// The shard thread itself.
    Shard,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Features {
    pub list: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeMode {
    Event,
    Processing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    Apply,
    Drop,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Time {
    pub mode: TimeMode,
    pub allowed_lateness_ms: u64,
    pub late: LatePolicy,
}

impl Time {
    /// The lateness windows must absorb (none in processing time, where events arrive in
    /// receive order but for cross-shard hand-off, which the ring's spare bucket covers).
    pub fn lateness_ns(&self) -> u64 {
        match self.mode {
            TimeMode::Event => self.allowed_lateness_ms.saturating_mul(1_000_000),
            TimeMode::Processing => 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Checkpoint {
    pub interval_ms: u64,
    pub keep: usize,
    pub full_every: usize,
    pub copy_slice_records: usize,
    pub copy_slice_us: u64,
    pub spill_journal_records: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Model {
    pub kind: ModelKind,
    pub engine: ModelEngine,
    pub path: String,
    pub runtime_path: String,
    pub input: String,
    pub output: String,
    pub probability_column: usize,
    pub load_timeout_ms: u64,
    pub alert_threshold: f32,
    pub linear: LinearModel,
    pub online: OnlineModel,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LinearModel {
    pub weights: Vec<f32>,
    pub bias: f32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Infer {
    pub batch_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Egress {
    pub scores_to: String,
    pub alerts_to: String,
    pub datagram_bytes_max: usize,
    pub batch_datagrams_max: usize,
    pub kafka: EgressKafka,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metrics {
    pub hgrm_dir: String,
    pub latency_max_ns: u64,
    pub listen: String,
    pub stall_threshold_us: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Log {
    pub level: String,
}

impl Config {
    /// The embedded defaults alone.
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_layers(None, &[])
    }

    /// Defaults, then `file` (if any), then each `section.key=value` in `sets`.
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::one(format!("cannot read config file {}: {e}", path.display()))
            })?),
            None => None,
        };
        Self::from_layers(text.as_deref(), sets)
    }

    /// Defaults, then the TOML document `file_text`, then `sets`; validated.
    pub fn from_layers(file_text: Option<&str>, sets: &[String]) -> Result<Self, ConfigError> {
        let (config, problems) = Self::from_layers_lenient(file_text, sets)?;
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Like `load`, but a refused value keeps its default and loading goes on, so a caller
    /// (`check-config`) can run the machine checks too and report every problem in one run.
    /// Err only when there is nothing to check (an unreadable file).
    pub fn load_lenient(
        file: Option<&Path>,
        sets: &[String],
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let text = match file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::one(format!("cannot read config file {}: {e}", path.display()))
            })?),
            None => None,
        };
        Self::from_layers_lenient(text.as_deref(), sets)
    }

    fn from_layers_lenient(
        file_text: Option<&str>,
        sets: &[String],
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let (mut merged, defaults, mut problems) = overlay::merge(file_text, sets)?;
        let config = deserialize_all(&mut merged, &defaults, &mut problems)?;
        if let Err(e) = validate::validate(&config) {
            problems.extend(e.problems);
        }
        Ok((config, problems))
    }

    /// The compiled `features.list` (already checked by `validate`).
    pub fn feature_plan(&self) -> Result<crate::features::FeaturePlan, ConfigError> {
        crate::features::FeaturePlan::compile(&self.features.list, self.time.lateness_ns())
            .map_err(|problems| ConfigError { problems })
    }

    /// What a checkpoint's records depend on: restoring one needs the same shard count (keys
    /// are placed by it) and the same feature list and lateness (they lay out the words).
    /// Session windows kept for late events to merge (a lateness and a session feature) are
    /// named too: checkpoints of the earlier one-session layout, same list and lateness, laid
    /// their words out differently.
    pub fn state_layout(&self, shards: usize) -> String {
        let features: Vec<&str> = self.features.list.iter().map(|f| f.trim()).collect();
        let merging = self
            .feature_plan()
            .is_ok_and(|p| p.keeps_several_sessions());
        format!(
            "shards={shards};lateness_ns={};features={}{}",
            self.time.lateness_ns(),
            features.join("|"),
            if merging { ";sessions=merging" } else { "" }
        )
    }

    pub fn onnx_spec(&self) -> crate::infer::OnnxSpec {
        crate::infer::OnnxSpec {
            path: self.model.path.clone(),
            runtime_path: self.model.runtime_path.clone(),
            input: self.model.input.clone(),
            output: self.model.output.clone(),
            probability_column: self.model.probability_column,
            load_timeout: std::time::Duration::from_millis(self.model.load_timeout_ms),
        }
    }

    /// The listen address, already checked by `validate`.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("ingest.udp.listen", &self.ingest.udp.listen)
    }

    /// An optional destination ("" = none).
    pub fn optional_addr(key: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
        if value.is_empty() {
            return Ok(None);
        }
        parse_addr(key, value).map(Some)
    }
}

/// Deserialise, and for each value serde refuses (an unknown enum variant, say) record the
/// problem under its key, put the default back and try again: every such problem is reported
/// in one pass, each naming its key. Bounded by the number of keys.
fn deserialize_all(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    problems: &mut Vec<String>,
) -> Result<Config, ConfigError> {
    const ATTEMPTS_MAX: usize = 256;
    for _ in 0..ATTEMPTS_MAX {
        let doc = toml::Value::Table(merged.clone());
        let err = match serde_path_to_error::deserialize::<_, Config>(doc) {
            Ok(config) => return Ok(config),
            Err(e) => e,
        };
        let key = err.path().to_string();
        let segments: Vec<&str> = key.split('.').collect();
        let found = lookup(merged, &segments).map(|v| v.to_string());
        let default = lookup(defaults, &segments).cloned();
        problems.push(match &found {
            Some(v) => format!("{key} = {v}: {}", err.inner().message()),
            None => format!("{key}: {}", err.inner().message()),
        });
        let restored = match default {
            Some(d) if found.is_some() => replace(merged, &segments, d),
            _ => false,
        };
        if !restored {
            // Nothing to put back: no further stage can run on this document.
            return Err(ConfigError {
                problems: std::mem::take(problems),
            });
        }
    }
    problems.push(format!(
        "config: more than {ATTEMPTS_MAX} refused values; fix the ones above first"
    ));
    Err(ConfigError {
        problems: std::mem::take(problems),
    })
}

fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(*p)?.as_table()?;
    }
    t.get(*last)
}

fn replace(table: &mut toml::Table, path: &[&str], value: toml::Value) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut t = table;
    for p in parents {
        match t.get_mut(*p).and_then(toml::Value::as_table_mut) {
            Some(next) => t = next,
            None => return false,
        }
    }
    t.insert((*last).to_owned(), value).is_some()
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::one(format!(
            "{key} = {value:?}: not an ip:port address (e.g. \"127.0.0.1:7600\")"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_match_the_documented_keys() {
        let c = Config::defaults().unwrap();
        assert_eq!(c.ingest.udp.listen, "127.0.0.1:7600");
        assert_eq!(c.ingest.udp.driver, UdpDriver::Auto);
        assert_eq!(c.shards.count, 0);
        assert!(c.state.hot_capacity > 0);
        assert_eq!(c.route.full, RingFullPolicy::Drop);
    }

    #[test]
    fn file_then_sets_override_in_order() {
        let file = "[shards]\ncount = 3\n[ingest.udp]\ndriver = \"recvmmsg\"\n";
        let c = Config::from_layers(
            Some(file),
            &["shards.count=2".into(), "route.full=backpressure".into()],
        )
        .unwrap();
        assert_eq!(c.shards.count, 2);
        assert_eq!(c.ingest.udp.driver, UdpDriver::Recvmmsg);
        assert_eq!(c.route.full, RingFullPolicy::Backpressure);
        // Integers are accepted where a number is expected.
        let c = Config::from_layers(None, &["model.alert_threshold=1".into()]).unwrap();
        assert_eq!(c.model.alert_threshold, 1.0);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let file = r#"
            [shards]
            count = "many"
            colour = 3
            [state]
            hot_capacity = 0
            [features]
            list = ["amount", "median(amount, lifetime)"]
            [ingest.udp]
            listen = "not an address"
            uring_buffers = 1000
            [nonsense]
            x = 1
        "#;
        let err = Config::from_layers(Some(file), &["wire.depth_max=0".into(), "bad".into()])
            .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "shards.count must be a non-negative integer",
            "unknown key shards.colour",
            "unknown key nonsense",
            "--set \"bad\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // Type and key errors stop before range checks; fix them and the range checks all show.
        let file = "[state]\nhot_capacity = 0\n[features]\nlist = [\"amount\", \"median(amount, lifetime)\"]\n[ingest.udp]\nlisten = \"nope\"\nuring_buffers = 1000\n";
        let err = Config::from_layers(Some(file), &["wire.depth_max=0".into()]).unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "state.hot_capacity = 0",
            "features.list[1]",
            "ingest.udp.listen",
            "uring_buffers = 1000: must be a power of two",
            "wire.depth_max = 0",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(err.problems.len() >= 5, "{all}");
        assert!(err.to_string().starts_with("invalid configuration ("));
    }

    #[test]
    fn a_kafka_start_that_is_no_form_is_refused_naming_its_key_and_the_forms() {
        let err =
            Config::from_layers(None, &["ingest.kafka.start=\"yesterday\"".into()]).unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("ingest.kafka.start") && all.contains("\"24h ago\""),
            "{all}"
        );
        // Unquoted, as TOML's own datetime, in a file or a --set.
        let file = "[ingest.kafka]\nstart = 2026-12-01T00:00:00Z\n";
        let ok = Config::from_layers(Some(file), &[]).unwrap();
        assert_eq!(
            ok.ingest.kafka.start.to_string(),
            "2026-12-01T00:00:00.000Z"
        );
        let ok =
            Config::from_layers(None, &["ingest.kafka.start=2026-12-01T00:00:00Z".into()]).unwrap();
        assert_eq!(
            ok.ingest.kafka.start.to_string(),
            "2026-12-01T00:00:00.000Z"
        );
        let err = Config::from_layers(None, &["ingest.kafka.start=2026-12-01T00:00:00".into()])
            .unwrap_err();
        assert!(err.problems.join("\n").contains("UTC time"), "{err}");
        let ok = Config::from_layers(None, &["ingest.kafka.start=\"90m ago\"".into()]).unwrap();
        assert_eq!(
            ok.ingest.kafka.start,
            KafkaStart::Ago(std::time::Duration::from_secs(5400))
        );
    }

    #[test]
    fn the_state_layout_names_sessions_kept_for_late_events() {
        let with = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::from_layers(None, &sets).unwrap().state_layout(2)
        };
        let session = "features.list=[\"count(session 5s)\"]";
        // One session kept (no lateness), or no session: the layout earlier versions wrote.
        assert!(!with(&[session, "time.allowed_lateness_ms=0"]).contains("sessions"));
        assert!(!with(&["time.allowed_lateness_ms=2000"]).contains("sessions"));
        let merging = with(&[session, "time.allowed_lateness_ms=2000"]);
        assert!(merging.ends_with(";sessions=merging"), "{merging}");
    }

    #[test]
    fn wrong_element_types_in_arrays_are_refused() {
        let err = Config::from_layers(
            None,
            &[
                "shards.cores=[1, \"two\"]".into(),
                "model.linear.weights=[true]".into(),
            ],
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{:?}", err.problems);
    }

    #[test]
    fn af_xdp_settings_are_checked_only_when_it_is_chosen_and_all_at_once() {
        let bad = [
            "ingest.udp.xdp_frames=1000".to_owned(),
            "ingest.udp.xdp_frame_bytes=1500".to_owned(),
            "shards.count=2".to_owned(),
            "ingest.udp.queues=[3, 3, 300]".to_owned(),
        ];
        assert!(
            Config::from_layers(None, &bad).is_ok(),
            "not af_xdp: not checked"
        );
        let mut with = bad.to_vec();
        with.push("ingest.udp.driver=af_xdp".to_owned());
        let err = Config::from_layers(None, &with).unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "needs ingest.udp.interface",
            "xdp_frames = 1000",
            "xdp_frame_bytes = 1500",
            "lists 3 queue(s) for 2 shard(s)",
            "queue 300 is beyond",
            "queue 3 twice",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let good = Config::from_layers(
            None,
            &[
                "ingest.udp.driver=af_xdp".into(),
                "ingest.udp.interface=eth0".into(),
                "ingest.udp.xdp_mode=generic".into(),
            ],
        )
        .unwrap();
        assert_eq!(good.ingest.udp.xdp_mode, XdpAttach::Generic);
    }
}
