//! Where the changelog stood when a checkpoint's transaction committed: per changelog
//! partition, the offset after the last record this run's transactions put there, written
//! beside the checkpoint (`ckpt-N/CHANGELOG`) once that transaction has committed.
//!
//! A shard that restores its own older checkpoint and finds that the group committed further
//! (another instance owned the partition meanwhile) then reads the changelog only from there,
//! over the partition's keys as the checkpoint holds them, instead of from the start: Kafka
//! Streams' `.checkpoint` file of changelog offsets. Best effort: no file, a torn one or a
//! partition not in it means the whole changelog partition is read, as before.
//!
//! Why a position may be low but never high: a changelog record is a key's whole newest image
//! (or its tombstone), so reading from before the checkpoint's true position only puts images
//! in again that later records, or the checkpoint itself, already hold. Positions come from
//! this run's own acknowledged records; a partition that moved away and back keeps the
//! position of before (low: the other owner's records are read again).
//!
//! Tombstones are the limit: a compacted topic drops them after `delete.retention.ms`
//! (Kafka's default is 24 h), and a key whose tombstone is gone would come back from the old
//! checkpoint. So a position older than half the changelog topic's `delete.retention.ms` (as
//! the brokers describe it at start; `MAX_AGE` when they do not) is not used.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The file's name inside a checkpoint directory.
pub const FILE: &str = "CHANGELOG";

/// Half of Kafka's default `delete.retention.ms`: the bound when the topic's own is not known.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// The age up to which positions are used, given the changelog topic's
/// `delete.retention.ms` if known: half of it (a position is written after its commit, and
/// the clocks of this host and the brokers may differ: the other half is the margin).
pub fn max_age(delete_retention_ms: Option<u64>) -> Duration {
    delete_retention_ms.map_or(MAX_AGE, |ms| Duration::from_millis(ms / 2))
}

const HEADER: &str = "sluice changelog positions 1";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    /// When the transaction committed (wall clock, ms since the Unix epoch).
    pub committed_unix_ms: u64,
    /// Changelog partition -> the offset to read it from.
    pub next: BTreeMap<i32, i64>,
}

impl Positions {
    pub fn render(&self) -> String {
        let mut out = format!("{HEADER}\ncommitted_unix_ms {}\n", self.committed_unix_ms);
        for (p, next) in &self.next {
            out.push_str(&format!("{p} {next}\n"));
        }
        out.push_str("end\n");
        out
    }

    /// None unless whole (a file cut short lacks its `end` line).
    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != HEADER {
            return None;
        }
        let committed_unix_ms = lines
            .next()?
            .strip_prefix("committed_unix_ms ")?
            .parse()
            .ok()?;
        let mut next = BTreeMap::new();
        while let Some(line) = lines.next() {
            if line == "end" {
                return lines.next().is_none().then_some(Self {
                    committed_unix_ms,
                    next,
                });
            }
            let (p, n) = line.split_once(' ')?;
            let n: i64 = n.parse().ok()?;
            if n < 0 {
                return None;
            }
            next.insert(p.parse().ok()?, n);
        }
        None
    }

    /// Into checkpoint directory `dir` (a temporary file renamed over: a reader sees a whole
    /// file or none). Not synced: a file lost with the page cache only costs a longer restore.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(&tmp, dir.join(FILE))
    }

    /// The positions beside checkpoint directory `dir`, if whole and no older than
    /// `max_age` at `now_unix_ms`.
    pub fn read_usable(dir: &Path, now_unix_ms: u64, max_age: Duration) -> Option<Self> {
        let p = Self::parse(&std::fs::read_to_string(dir.join(FILE)).ok()?)?;
        let age = now_unix_ms.saturating_sub(p.committed_unix_ms);
        (u128::from(age) <= max_age.as_millis()).then_some(p)
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Positions {
        Positions {
            committed_unix_ms: 1_700_000_000_000,
            next: BTreeMap::from([(0, 17), (3, 0), (11, 123_456)]),
        }
    }

    #[test]
    fn positions_round_trip_and_a_cut_or_altered_file_is_refused() {
        let p = sample();
        let text = p.render();
        assert_eq!(Positions::parse(&text), Some(p));
        // Every cut short of the whole file is refused (the `end` line proves it whole).
        for cut in 0..text.len() - 1 {
            assert_eq!(Positions::parse(&text[..cut]), None, "cut at {cut}");
        }
        for bad in [
            text.replace(
                "sluice changelog positions 1",
                "sluice changelog positions 2",
            ),
            text.replace("11 123456", "11 -5"),
            text.replace("11 123456", "eleven 123456"),
            format!("{text}0 1\n"),
        ] {
            assert_eq!(Positions::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn positions_are_used_only_while_young_enough() {
        let dir = std::env::temp_dir().join(format!("sluice-positions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Positions::read_usable(&dir, 0, MAX_AGE), None, "no file");
        let p = sample();
        p.write(&dir).unwrap();
        let at = p.committed_unix_ms;
        assert_eq!(Positions::read_usable(&dir, at, MAX_AGE), Some(p.clone()));
        for (retention, bound) in [
            (None, MAX_AGE),
            (Some(7_200_000), Duration::from_secs(3600)),
        ] {
            let max = max_age(retention);
            assert_eq!(max, bound);
            let limit = at + max.as_millis() as u64;
            assert_eq!(Positions::read_usable(&dir, limit, max), Some(p.clone()));
            assert_eq!(
                Positions::read_usable(&dir, limit + 1, max),
                None,
                "too old"
            );
        }
        std::fs::write(dir.join(FILE), "sluice changelog positions 1\n").unwrap();
        assert_eq!(Positions::read_usable(&dir, at, MAX_AGE), None, "torn");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
