//! The apply journal: every original value, written (and synced) before the write that
//! replaces it, so a crash mid-apply still leaves a journal revert can use. It lives in a
//! persistent directory, so revert works after a reboot for what persists.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{HostError, Root, Write};

const FORMAT: &str = "sluice-host-journal-1";

#[derive(Debug, Serialize, Deserialize)]
struct Doc {
    format: String,
    created_unix_s: u64,
    /// /proc/sys/kernel/random/boot_id at apply: revert says when a reboot came between.
    boot_id: String,
    writes: Vec<Write>,
}

pub struct Journal {
    path: PathBuf,
    doc: Doc,
    pub writes: Vec<Write>,
}

impl Journal {
    pub fn start(path: &Path, root: &Root) -> Result<Self, HostError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| HostError::Journal(format!("{}: {e}", dir.display())))?;
        }
        let doc = Doc {
            format: FORMAT.into(),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            boot_id: root
                .read("/proc/sys/kernel/random/boot_id")
                .unwrap_or_default(),
            writes: Vec::new(),
        };
        let j = Self {
            path: path.to_owned(),
            doc,
            writes: Vec::new(),
        };
        j.save()?;
        Ok(j)
    }

    /// Add a write before it is made (synced to disk).
    pub fn record(&mut self, w: &Write) -> Result<(), HostError> {
        self.doc.writes.push(w.clone());
        self.save()
    }

    fn save(&self) -> Result<(), HostError> {
        let err = |e: std::io::Error| HostError::Journal(format!("{}: {e}", self.path.display()));
        let text = serde_json::to_string_pretty(&self.doc)
            .map_err(|e| HostError::Journal(e.to_string()))?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    /// Drop a journal whose writes were all undone (or that has none).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    pub fn load(path: &Path) -> Result<Self, HostError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            HostError::Journal(format!(
                "no journal at {} ({e}): nothing to revert (give --journal if apply used another)",
                path.display()
            ))
        })?;
        let doc: Doc = serde_json::from_str(&text).map_err(|e| {
            HostError::Journal(format!(
                "{} is not a sluice host journal ({e}): nothing reverted",
                path.display()
            ))
        })?;
        if doc.format != FORMAT {
            return Err(HostError::Journal(format!(
                "{}: format {:?}, expected {FORMAT:?}: nothing reverted",
                path.display(),
                doc.format
            )));
        }
        let writes = doc.writes.clone();
        Ok(Self {
            path: path.to_owned(),
            doc,
            writes,
        })
    }

    /// Whether the host rebooted since apply.
    pub fn rebooted(&self, root: &Root) -> bool {
        let now = root
            .read("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default();
        !self.doc.boot_id.is_empty() && now != self.doc.boot_id
    }

    /// Everything reverted: the journal goes.
    pub fn finish(self) -> Result<(), HostError> {
        std::fs::remove_file(&self.path)
            .map_err(|e| HostError::Journal(format!("{}: {e}", self.path.display())))
    }
}
