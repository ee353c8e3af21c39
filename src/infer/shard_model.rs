//! What one shard scores with, and how new versions reach it.

use super::{FeatureBatch, InferError, LinearScorer, OnlineLr, OnnxScorer, Scorer};
use crate::config::{Config, ModelKind};

/// Control thread -> shard, applied between drain cycles.
pub enum ModelUpdate {
    /// A new primary model (already loaded and warmed up) and its version.
    Primary(Box<dyn Scorer>, u32),
    /// Averaged online parameters and the version they make.
    Online(Box<[f32]>, u32),
}

/// Shard -> control thread.
pub enum ShardReport {
    /// Online parameters and how many Feedback updates went into them since the last report.
    Snapshot(Box<[f32]>, u64),
    /// A replaced model, handed back so its (slow) teardown happens off the shard.
    Retired(Box<dyn Scorer>),
}

pub struct ShardModel {
    primary: Option<Box<dyn Scorer>>,
    online: Option<OnlineLr>,
    blend: f32,
    width: usize,
    version: u32,
}

/// The row width every shard uses for this config: one input per `features.list` entry.
pub fn row_width(config: &Config) -> usize {
    config.features.list.len()
}

/// Load the configured primary model (none for `kind = "online"`), `path` overriding
/// `model.path`. Runs off the hot path: at start-up, `check-config`, and on reload.
pub fn build_primary(
    config: &Config,
    path: Option<&str>,
) -> Result<Option<Box<dyn Scorer>>, InferError> {
    Ok(build_primaries(config, path, 1)?.and_then(|mut v| v.pop()))
}

/// One primary model per shard, all built from one read of the model file, so every shard
/// of a version runs the same bytes even if the file changes meanwhile.
pub fn build_primaries(
    config: &Config,
    path: Option<&str>,
    shards: usize,
) -> Result<Option<Vec<Box<dyn Scorer>>>, InferError> {
    match config.model.kind {
        ModelKind::Online => Ok(None),
        ModelKind::Linear => Ok(Some(
            (0..shards)
                .map(|_| Box::new(LinearScorer::from_config(&config.model)) as Box<dyn Scorer>)
                .collect(),
        )),
        ModelKind::Onnx => {
            let mut spec = config.onnx_spec();
            if let Some(p) = path {
                spec.path = p.to_owned();
            }
            let bytes = super::onnx::model_bytes(&spec.path)?;
            let mut models: Vec<Box<dyn Scorer>> = Vec::with_capacity(shards);
            if let Some(native) = super::native::compile_for(config.model.engine, &spec, &bytes)? {
                if native.width() != row_width(config) {
                    return Err(InferError::Width {
                        got: native.width(),
                        want: row_width(config),
                    });
                }
                tracing::info!(model = %spec.path, engine = "native", "{}", native.describe());
                // One compiled model shared by every shard (read-only).
                models.extend((0..shards).map(|_| Box::new(native.clone()) as Box<dyn Scorer>));
                return Ok(Some(models));
            }
            for _ in 0..shards {
                let m = OnnxScorer::load(&spec, &bytes)?;
                // The row is features.list: a model trained on another row would score nonsense.
                if m.width() != row_width(config) {
                    return Err(InferError::Width {
                        got: m.width(),
                        want: row_width(config),
                    });
                }
                models.push(Box::new(m));
            }
            Ok(Some(models))
        }
    }
}

impl ShardModel {
    pub fn new(config: &Config, primary: Option<Box<dyn Scorer>>, version: u32) -> Self {
        let width = row_width(config);
        let online = config
            .model
            .online
            .enabled
            .then(|| OnlineLr::new(width, &config.model.online));
        let blend = if primary.is_none() {
            1.0
        } else {
            config.model.online.blend
        };
        Self {
            primary,
            online,
            blend,
            width,
            version,
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// What runs the primary model ("none" when only the online model scores).
    pub fn engine(&self) -> &'static str {
        self.primary.as_ref().map_or("none", |p| p.engine())
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn learns(&self) -> bool {
        self.online.is_some()
    }

    pub fn learn(&mut self, row: &[f32], label: f32) {
        if let Some(o) = &mut self.online {
            o.learn(row, label);
        }
    }

    /// Score a batch: primary, blended with the online model when configured.
    pub fn score(&mut self, batch: &FeatureBatch, out: &mut [f32]) -> Result<(), InferError> {
        let n = batch.len();
        match &mut self.primary {
            Some(p) => p.score(batch, out)?,
            None => out[..n].fill(0.0),
        }
        if let (Some(o), true) = (&self.online, self.blend > 0.0) {
            for (i, s) in out[..n].iter_mut().enumerate() {
                *s = (1.0 - self.blend) * *s + self.blend * o.predict(batch.row(i));
            }
        }
        Ok(())
    }

    /// Apply an update; returns a replaced primary for the control thread to drop.
    pub fn apply(&mut self, u: ModelUpdate) -> Option<Box<dyn Scorer>> {
        match u {
            ModelUpdate::Primary(p, version) => {
                crate::invariant_eq!(
                    p.width(),
                    self.width,
                    "control thread checks widths before sending"
                );
                self.version = version;
                self.primary.replace(p)
            }
            ModelUpdate::Online(params, version) => {
                if let Some(o) = &mut self.online {
                    o.restore(&params);
                    self.version = version;
                }
                None
            }
        }
    }

    /// Online parameters to average, if any Feedback arrived since the last call.
    pub fn snapshot(&mut self) -> Option<(Box<[f32]>, u64)> {
        let o = self.online.as_mut()?;
        let n = o.take_updates();
        (n > 0).then(|| (o.snapshot(), n))
    }
}
