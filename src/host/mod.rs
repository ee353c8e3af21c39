//! `sluice host plan | check | apply | revert`: tune the host under sluice's shards from one
//! list of operations (`ops::build`), driven by the same config and shard map the service
//! uses. `plan` prints exactly the writes `apply` would make; `check` compares each setting
//! with what it should be; `apply` journals every original value before writing it (and
//! refuses to run over a journal not yet reverted); `revert` writes the originals back. An
//! operation that cannot run here is `skipped: <reason>` and the others go on. I/O edge: only
//! the CLI and the start-up check in `main.rs` call it.

mod ethtool;
mod journal;
mod ops;
pub mod root;

use serde::Serialize;

pub use journal::Journal;
pub use ops::{facts, Facts};
pub use root::Root;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The host or the config does not allow a plan (nothing was changed).
    #[error("{0}")]
    Host(String),
    #[error("{0}")]
    Journal(String),
    /// A write failed; what was already written has been put back.
    #[error("{0}")]
    Apply(String),
}

/// Where an operation acts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    /// A one-value file under the root (sysctl, sysfs): read without, written with, its newline.
    File(String),
    /// A file kept whole, byte for byte (a config file; absent = None).
    WholeFile(String),
    /// A kernel "[selected] other" file (THP): the selected word is its value.
    ChoiceFile(String),
    /// `ethtool -N NIC rx-flow-hash udp4`.
    Ethtool { nic: String },
    /// Nothing to write: a check only.
    Inspect,
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::File(p) | Target::WholeFile(p) | Target::ChoiceFile(p) => p.clone(),
            Target::Ethtool { nic } => format!("ethtool -N {nic} rx-flow-hash udp4"),
            Target::Inspect => "(check only)".into(),
        }
    }
}

/// What a setting should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Exact(String),
    AtLeast(u64),
    /// A PM QoS resume latency bound in µs: this or stricter (1..=it, or `n/a`: polling only)
    /// is kept, never loosened; `0` in these files means no bound.
    LatencyAtMost(u32),
    /// One word of a "[selected]" list (THP).
    Choice(String),
    /// A CPU list file ("0-3,8").
    CpuList(Vec<usize>),
    /// A hex CPU mask file ("f").
    CpuMask(Vec<usize>),
    /// `KEY="value"` in a shell-style file (kept whole: the original is the whole file).
    EnvLine {
        key: String,
        value: String,
    },
    /// The whole file.
    Content(String),
    Inspect {
        current: String,
        wanted: String,
        ok: bool,
    },
}

impl Want {
    fn describe(&self) -> String {
        match self {
            Want::Exact(v) | Want::Choice(v) => v.clone(),
            Want::AtLeast(n) => format!(">= {n}"),
            Want::LatencyAtMost(n) => format!("1..={n} or n/a"),
            Want::CpuList(c) => root::format_cpu_list(c),
            Want::CpuMask(c) => root::format_cpu_mask(c),
            Want::EnvLine { key, value } => format!("{key}=\"{value}\""),
            Want::Content(_) => "(file as planned)".into(),
            Want::Inspect { wanted, .. } => wanted.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Op {
    pub name: String,
    pub target: Target,
    pub want: Want,
    pub why: String,
    /// Why this operation cannot run on this host (the others go on).
    pub skip: Option<String>,
}

/// One setting as `check` found it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub name: String,
    pub target: String,
    /// The value as read (None: absent, or skipped).
    pub current: Option<String>,
    pub wanted: String,
    pub ok: bool,
    pub skipped: Option<String>,
    pub why: String,
    /// What apply would write (None: nothing).
    #[serde(skip)]
    pub write: Option<String>,
    /// The value journaled as the original (the whole file for file-content operations).
    #[serde(skip)]
    raw: Option<String>,
}

/// A write apply makes: also what plan prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Write {
    pub name: String,
    pub target: Target,
    pub from: Option<String>,
    pub to: String,
}

/// The raw value an operation reads (what revert writes back), None if the file is absent.
fn read_raw(root: &Root, target: &Target) -> Result<Option<String>, String> {
    match target {
        Target::File(path) | Target::ChoiceFile(path) => {
            let text = root.read(path).map_err(|e| format!("{path}: {e}"))?;
            Ok(Some(match target {
                // The selected word is what is written back ("always [madvise] never").
                Target::ChoiceFile(_) => selected(&text).unwrap_or(text),
                _ => text,
            }))
        }
        Target::WholeFile(path) => match std::fs::read_to_string(root.path(path)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{path}: {e}")),
        },
        Target::Ethtool { nic } => ethtool::read_udp4_hash(nic).map(Some),
        Target::Inspect => Ok(None),
    }
}

fn selected(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')?;
    Some(text[start + 1..start + end].to_owned())
}

fn env_value(content: &str, key: &str) -> Option<String> {
    content.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn with_env_line(content: Option<&str>, key: &str, value: &str) -> String {
    let line = format!("{key}=\"{value}\"");
    let mut out: Vec<String> = Vec::new();
    let mut replaced = false;
    for l in content.unwrap_or("").lines() {
        if l.trim()
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == key)
        {
            out.push(line.clone());
            replaced = true;
        } else {
            out.push(l.to_owned());
        }
    }
    if !replaced {
        out.push(line);
    }
    out.join("\n") + "\n"
}

/// Whether `raw` satisfies the operation, and what apply would write if it does not.
fn judge(op: &Op, raw: Option<&str>) -> (bool, Option<String>) {
    let want_write = |ok: bool, v: String| (ok, (!ok).then_some(v));
    match &op.want {
        Want::Exact(v) | Want::Choice(v) => want_write(raw == Some(v.as_str()), v.clone()),
        Want::AtLeast(n) => {
            let ok = raw
                .and_then(|r| r.trim().parse::<u64>().ok())
                .is_some_and(|c| c >= *n);
            want_write(ok, n.to_string())
        }
        Want::LatencyAtMost(n) => {
            let ok = raw.map(str::trim).is_some_and(|r| {
                r == "n/a" || r.parse::<u32>().is_ok_and(|c| (1..=*n).contains(&c))
            });
            want_write(ok, n.to_string())
        }
        Want::CpuList(c) => {
            let ok = raw.and_then(root::parse_cpu_list).as_deref() == Some(c.as_slice());
            want_write(ok, root::format_cpu_list(c))
        }
        Want::CpuMask(c) => {
            let ok = raw.and_then(root::parse_cpu_mask).as_deref() == Some(c.as_slice());
            want_write(ok, root::format_cpu_mask(c))
        }
        Want::EnvLine { key, value } => {
            let ok = raw.and_then(|r| env_value(r, key)).as_deref() == Some(value.as_str());
            want_write(ok, with_env_line(raw, key, value))
        }
        Want::Content(c) => want_write(raw == Some(c.as_str()), c.clone()),
        Want::Inspect { ok, .. } => (*ok, None),
    }
}

/// Every operation as the host has it now.
pub fn check(root: &Root, ops: &[Op]) -> Vec<Finding> {
    ops.iter()
        .map(|op| {
            let base = Finding {
                name: op.name.clone(),
                target: op.target.describe(),
                current: None,
                wanted: op.want.describe(),
                ok: true,
                skipped: op.skip.clone(),
                why: op.why.clone(),
                write: None,
                raw: None,
            };
            if op.skip.is_some() {
                return base;
            }
            if let Want::Inspect { current, ok, .. } = &op.want {
                return Finding {
                    current: Some(current.clone()),
                    ok: *ok,
                    ..base
                };
            }
            match read_raw(root, &op.target) {
                Ok(raw) => {
                    let (ok, write) = judge(op, raw.as_deref());
                    let current = match (&op.want, &raw) {
                        (Want::EnvLine { key, .. }, Some(r)) => env_value(r, key),
                        (Want::Content(_), Some(_)) => Some("(present)".into()),
                        _ => raw.clone(),
                    };
                    Finding {
                        current,
                        ok,
                        write,
                        raw,
                        ..base
                    }
                }
                Err(reason) => Finding {
                    skipped: Some(reason),
                    ..base
                },
            }
        })
        .collect()
}

/// What apply would write, in order: exactly the writes `apply` makes.
pub fn plan(root: &Root, ops: &[Op]) -> Vec<Write> {
    check(root, ops)
        .into_iter()
        .zip(ops)
        .filter_map(|(f, op)| {
            f.write.map(|to| Write {
                name: op.name.clone(),
                target: op.target.clone(),
                from: f.raw,
                to,
            })
        })
        .collect()
}

fn write_target(root: &Root, target: &Target, value: Option<&str>) -> Result<(), String> {
    match (target, value) {
        (Target::File(path) | Target::ChoiceFile(path), Some(v)) => root
            .write(path, &format!("{v}\n"))
            .map_err(|e| format!("{path}: {e}")),
        (Target::WholeFile(path), Some(v)) => {
            root.write(path, v).map_err(|e| format!("{path}: {e}"))
        }
        (Target::File(path) | Target::WholeFile(path) | Target::ChoiceFile(path), None) => {
            root.remove(path).map_err(|e| format!("{path}: {e}"))
        }
        (Target::Ethtool { nic }, Some(v)) => ethtool::write_udp4_hash(nic, v),
        (Target::Ethtool { .. }, None) | (Target::Inspect, _) => Ok(()),
    }
}

/// Write the plan, journaling each original first. A write that fails puts back what was
/// written before it and removes the journal: nothing is left half-applied.
pub fn apply(
    root: &Root,
    ops: &[Op],
    journal_path: &std::path::Path,
) -> Result<Vec<Write>, HostError> {
    if journal_path.exists() {
        return Err(HostError::Journal(format!(
            "{} holds an apply not yet reverted: run `sluice host revert` first (apply never runs twice over one journal)",
            journal_path.display()
        )));
    }
    let writes = plan(root, ops);
    let mut journal = Journal::start(journal_path, root)?;
    for (i, w) in writes.iter().enumerate() {
        journal.record(w)?;
        if let Err(e) = write_target(root, &w.target, Some(&w.to)) {
            let undone = undo(root, &writes[..i]);
            journal.discard();
            return Err(HostError::Apply(format!(
                "{}: {e}; the {i} write(s) before it were put back{undone}",
                w.name
            )));
        }
    }
    if writes.is_empty() {
        journal.discard();
    }
    Ok(writes)
}

fn undo(root: &Root, done: &[Write]) -> String {
    let failed: Vec<String> = done
        .iter()
        .rev()
        .filter_map(|w| {
            write_target(root, &w.target, w.from.as_deref())
                .err()
                .map(|e| format!("{}: {e}", w.name))
        })
        .collect();
    if failed.is_empty() {
        String::new()
    } else {
        format!(" (except: {})", failed.join("; "))
    }
}

/// What revert did with one journaled write.
#[derive(Debug, Clone, Serialize)]
pub struct Reverted {
    pub name: String,
    pub target: String,
    pub outcome: String,
    pub ok: bool,
}

/// Put back every original the journal holds, newest first. A value that is no longer what
/// apply wrote is not touched: either it is the original already (a reboot undid /proc and
/// /sys settings) or someone changed it since (reported, not overwritten).
pub fn revert(root: &Root, journal_path: &std::path::Path) -> Result<Vec<Reverted>, HostError> {
    let journal = Journal::load(journal_path)?;
    let rebooted = journal.rebooted(root);
    let mut out = Vec::new();
    for w in journal.writes.iter().rev() {
        let now = read_raw(root, &w.target);
        let (outcome, ok) = match now {
            Ok(now) if now.as_deref() == Some(w.to.as_str()) => {
                match write_target(root, &w.target, w.from.as_deref()) {
                    Ok(()) => (
                        format!("restored {}", w.from.as_deref().unwrap_or("(removed)")),
                        true,
                    ),
                    Err(e) => (format!("could not restore: {e}"), false),
                }
            }
            Ok(now) if now == w.from => (
                if rebooted {
                    "already as before: the reboot since apply reset it".to_owned()
                } else {
                    "already as before".to_owned()
                },
                true,
            ),
            Ok(now) => (
                format!(
                    "changed since apply (now {}): left as is",
                    now.as_deref().unwrap_or("absent")
                ),
                false,
            ),
            Err(e) if w.from.is_none() => (format!("already gone ({e})"), true),
            Err(e) => (format!("cannot read: {e}"), false),
        };
        out.push(Reverted {
            name: w.name.clone(),
            target: w.target.describe(),
            outcome,
            ok,
        });
    }
    if out.iter().all(|r| r.ok) {
        journal.finish()?;
    }
    Ok(out)
}

/// Everything the CLI needs for one run.
pub struct Session {
    pub root: Root,
    pub facts: Facts,
    pub ops: Vec<Op>,
}

impl Session {
    pub fn new(
        config: &Config,
        root: Root,
        nic: Option<&str>,
        systemd_dropin: bool,
    ) -> Result<Self, HostError> {
        let facts = ops::facts(config, &root, nic)?;
        let ops = ops::build(config, &root, &facts, systemd_dropin);
        Ok(Self { root, facts, ops })
    }
}

/// The journal's default place: persistent, beside the service's state.
pub fn default_journal(root: &Root) -> std::path::PathBuf {
    root.path("/var/lib/sluice/host-tuning.json")
}

/// At `sluice run` start: each setting that differs from what the shard map wants, for the
/// log (the service does not refuse to start over them).
pub fn mismatches(config: &Config) -> Vec<String> {
    match Session::new(config, Root::new("/"), None, false) {
        Ok(s) => check(&s.root, &s.ops)
            .into_iter()
            .filter(|f| f.skipped.is_none() && !f.ok)
            .map(|f| {
                format!(
                    "{} is {}, wanted {} ({})",
                    f.name,
                    f.current.as_deref().unwrap_or("absent"),
                    f.wanted,
                    f.why
                )
            })
            .collect(),
        Err(e) => vec![format!("host check could not run: {e}")],
    }
}
