//! The control thread: everything about models that must stay off the shards' hot path.
//! - Reloads (SIGHUP, `sluice reload`, `Running::reload`): read the file, build one ONNX
//!   session per shard, check it and warm it up, give it the next version, hand it to each
//!   shard through its update ring; a model that fails any check is refused and the running
//!   one keeps serving.
//! - Online learning: every `model.online.average_interval_ms`, average the shards' online
//!   weights (weighted by the Feedback each saw) into a new version and send it back.
//! - Dropping replaced models (ORT session teardown is slow) here instead of on a shard.
// Reached by admin requests: no index that could panic (hardening issue; tests may index).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtrb::{Consumer, Producer};

use crate::config::Config;
use crate::infer::{build_primaries, online, ModelUpdate, ShardReport};
use crate::shard::{Control, StateQuery};
use crate::wake::Waker;

/// Model reloads since start, whatever asked (SIGHUP, `sluice reload`, `Running::reload`):
/// loaded, then refused. Process-wide, for `sluice_model_reloads_total`: a refused SIGHUP
/// reload (`systemctl reload`) otherwise shows only in the journal.
static RELOADS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// (loaded, refused) model reloads since start.
pub fn reloads() -> (u64, u64) {
    let [loaded, refused] = &RELOADS;
    (
        loaded.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    )
}

/// A request to the control thread; the answer is the new model version or why not.
pub enum Request {
    Reload {
        path: Option<String>,
        reply: mpsc::Sender<Result<u32, String>>,
    },
    Version {
        reply: mpsc::Sender<u32>,
    },
    /// A key's state, formatted for people, from the shard that owns it.
    StateGet {
        key: u64,
        reply: mpsc::Sender<Result<String, String>>,
    },
}

/// The control thread's ends of one shard's rings.
pub struct ShardLink {
    pub updates: Producer<ModelUpdate>,
    pub reports: Consumer<ShardReport>,
    pub queries: Producer<StateQuery>,
}

pub struct ControlLoop {
    pub config: Config,
    pub links: Vec<ShardLink>,
    pub wakers: Arc<Vec<Waker>>,
    pub requests: mpsc::Receiver<Request>,
    pub version: u32,
    pub width: usize,
    /// The compiled feature list, to show a key's features.
    pub plan: crate::features::FeaturePlan,
}

impl ControlLoop {
    pub fn run(mut self, control: &Control) {
        let interval = Duration::from_millis(self.config.model.online.average_interval_ms);
        let mut next_average = Instant::now() + interval;
        let mut snapshots: Vec<Option<(Box<[f32]>, u64)>> =
            (0..self.links.len()).map(|_| None).collect();
        while !control.stop_requested() {
            match self.requests.recv_timeout(Duration::from_millis(5)) {
                Ok(Request::Reload { path, reply }) => {
                    let _ = reply.send(self.reload(path.as_deref()));
                }
                Ok(Request::Version { reply }) => {
                    let _ = reply.send(self.version);
                }
                Ok(Request::StateGet { key, reply }) => {
                    let _ = reply.send(self.state_get(key));
                }
                Err(_) => {}
            }
            for (link, snapshot) in self.links.iter_mut().zip(snapshots.iter_mut()) {
                while let Ok(report) = link.reports.pop() {
                    match report {
                        // A newer snapshot holds all of the shard's learning; keep the count of
                        // every update since the last round so its weight stays right.
                        ShardReport::Snapshot(params, n) => {
                            let before = snapshot.take().map_or(0, |(_, m)| m);
                            *snapshot = Some((params, before + n));
                        }
                        ShardReport::Retired(model) => drop(model),
                    }
                }
            }
            if Instant::now() >= next_average {
                // From now, not from the missed deadline: a slow reload must not make rounds
                // bunch up afterwards.
                next_average = Instant::now() + interval;
                let round: Vec<(Box<[f32]>, u64)> =
                    snapshots.iter_mut().filter_map(Option::take).collect();
                if let Some(avg) = online::average(&round) {
                    // The version names what produces the scores: averaged weights the scores
                    // do not use (a primary model with blend 0) leave it as it is.
                    if self.online_scores() {
                        self.version += 1;
                    }
                    let v = self.version;
                    let updates = (0..self.links.len())
                        .map(|_| ModelUpdate::Online(avg.clone(), v))
                        .collect();
                    self.broadcast(updates);
                    tracing::debug!(version = v, shards = round.len(), "online model averaged");
                }
            }
        }
        // Shards may hand back models while they drain; they are dropped with the rings.
    }

    /// Whether the online model's weights change the scores.
    fn online_scores(&self) -> bool {
        self.config.model.kind == crate::config::ModelKind::Online
            || self.config.model.online.blend > 0.0
    }

    fn state_get(&mut self, key: u64) -> Result<String, String> {
        let shard = crate::route::owner(key, self.links.len());
        let (Some(link), Some(waker)) = (self.links.get_mut(shard), self.wakers.get(shard)) else {
            return Err(format!("no shard {shard}"));
        };
        let (tx, rx) = mpsc::channel();
        link.queries
            .push(StateQuery { key, reply: tx })
            .map_err(|_| format!("shard {shard} is busy with queries"))?;
        waker.wake();
        let answer = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| format!("shard {shard} did not answer"))??;
        let Some(st) = answer else {
            return Ok(format!("key {key}: no state (owner shard {shard})"));
        };
        let r = &st.record;
        let now = crate::clock::realtime_ns();
        let mut out = format!(
            "key {key} (shard {shard}, {}): observations={} feedbacks={} positives={} first_event_ns={} last_event_ns={} seq_end={}",
            st.location, r.observations, r.feedbacks, r.positives, r.first_event_ns, r.last_event_ns, r.seq_end
        );
        // Features as of now (processing time) or the key's newest event (event time).
        let at = match self.config.time.mode {
            crate::config::TimeMode::Processing => now,
            crate::config::TimeMode::Event => r.last_event_ns,
        };
        for (name, v) in self.plan.values_at(&st.words, r.last_event_ns, at) {
            match v {
                Some(v) => out.push_str(&format!(" | {name} = {v:.6}")),
                None => out.push_str(&format!(" | {name} = (per event)")),
            }
        }
        Ok(out)
    }

    fn reload(&mut self, path: Option<&str>) -> Result<u32, String> {
        let result = self.load_next(path);
        let [loaded, refused] = &RELOADS;
        match result {
            Ok(_) => loaded.fetch_add(1, Ordering::Relaxed),
            Err(_) => refused.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn load_next(&mut self, path: Option<&str>) -> Result<u32, String> {
        let started = Instant::now();
        let shown = path.unwrap_or(&self.config.model.path).to_owned();
        let models = match build_primaries(&self.config, path, self.links.len()) {
            Ok(Some(models)) => models,
            Ok(None) => {
                return Err("model.kind = \"online\" has no model file to reload".to_owned())
            }
            Err(e) => return Err(e.to_string()),
        };
        if let Some(m) = models.iter().find(|m| m.width() != self.width) {
            return Err(format!(
                "{shown}: model takes {} features but sluice is running with rows of {}; restart to change the feature row",
                m.width(),
                self.width
            ));
        }
        self.version += 1;
        let v = self.version;
        let engine = models.first().map_or("none", |m| m.engine());
        self.broadcast(
            models
                .into_iter()
                .map(|m| ModelUpdate::Primary(m, v))
                .collect(),
        );
        tracing::info!(version = v, model = %shown, engine, took_ms = started.elapsed().as_millis() as u64, "model reloaded on every shard");
        Ok(v)
    }

    /// Send update i to shard i, waking it; waits (bounded) for room in a full ring.
    fn broadcast(&mut self, updates: Vec<ModelUpdate>) {
        crate::invariant_eq!(updates.len(), self.links.len());
        let shards = self.links.iter_mut().zip(self.wakers.iter()).enumerate();
        for ((i, (link, waker)), mut update) in shards.zip(updates) {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match link.updates.push(update) {
                    Ok(()) => break,
                    Err(rtrb::PushError::Full(u)) if Instant::now() < deadline => {
                        update = u;
                        waker.wake();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => {
                        tracing::error!(
                            shard = i,
                            "shard took no model update for 5 s; it keeps its current model"
                        );
                        break;
                    }
                }
            }
            waker.wake();
        }
    }
}
