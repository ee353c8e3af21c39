//! Finding and loading libonnxruntime once per process. `scripts/install-deps` puts the
//! hash-checked library from the onnxruntime 1.31.1 wheel where this search looks, so neither
//! users nor the unit file need ORT_DYLIB_PATH.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::InferError;

pub const ORT_LIBRARY: &str = "libonnxruntime.so.1.31.1";

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

/// Where the library is looked for, in order: `model.runtime_path`, `$ORT_DYLIB_PATH`, beside
/// the executable (and `../lib/sluice`), `/usr/local/lib/sluice`, `~/.local/lib/sluice`.
pub fn candidates(configured: &str) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if !configured.is_empty() {
        c.push(PathBuf::from(configured));
        return c;
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        c.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        c.push(dir.join(ORT_LIBRARY));
        c.push(dir.join("../lib/sluice").join(ORT_LIBRARY));
    }
    c.push(PathBuf::from("/usr/local/lib/sluice").join(ORT_LIBRARY));
    if let Some(home) = std::env::var_os("HOME") {
        c.push(
            PathBuf::from(home)
                .join(".local/lib/sluice")
                .join(ORT_LIBRARY),
        );
    }
    c
}

/// The process's ONNX Runtime environment, loading the library on first use. The first
/// call's `configured` path wins (there is one runtime per process).
pub fn environment(configured: &str) -> Result<ort::environment::Environment, InferError> {
    let got = ENVIRONMENT.get_or_init(|| {
        let tried = candidates(configured);
        let Some(path) = tried.iter().find(|p| p.is_file()) else {
            return Err(format!(
                "{ORT_LIBRARY} not found (looked in: {}); run scripts/install-deps or set model.runtime_path",
                tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ));
        };
        let env = ort::init_from(path)
            .map_err(|e| format!("loading {}: {e}", path.display()))?
            .with_name("sluice")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok((env, path.clone()))
    });
    got.as_ref()
        .map(|(env, _)| env.clone())
        .map_err(|e| InferError::Runtime(e.clone()))
}
