//! Start-up check of what the configuration keeps resident against what the machine has:
//! every shard's hot table (and, with `state.dir`, its checkpoint snapshot buffer, spill
//! journal and change lists) is allocated and touched when the shard starts, so a
//! configuration that cannot fit is refused with its arithmetic instead of being killed by the
//! OOM killer half-way through start-up.

use super::checkpoint;
use super::HotTable;
use crate::config::Config;

const MIB: f64 = 1024.0 * 1024.0;

/// Whether a shard also keeps a checkpoint snapshot buffer (as `app` starts a Checkpointer).
fn checkpoints(config: &Config) -> bool {
    !config.state.dir.is_empty() && config.checkpoint.interval_ms > 0
}

/// Bytes one shard keeps resident from start.
fn per_shard_bytes(config: &Config, words: usize) -> usize {
    let table = HotTable::bytes_for(config.state.hot_capacity, words);
    let snapshots = if checkpoints(config) {
        checkpoint::buffer_bytes(config.state.hot_capacity, words)
            + checkpoint::journal_bytes(config.checkpoint.spill_journal_records, words)
            // The change lists and their spares (`KeyedState::track_changes`).
            + super::change_lists_bytes(config.state.hot_capacity)
    } else {
        0
    };
    // af_xdp: the shard's UMEM, locked and touched at start.
    let umem = if config.ingest.udp.driver == crate::config::UdpDriver::AfXdp {
        config.ingest.udp.xdp_frames * config.ingest.udp.xdp_frame_bytes
    } else {
        0
    };
    table + snapshots + umem
}

/// None when `shards` shards fit in `available` bytes, else the message that refuses them.
fn refusal(config: &Config, words: usize, shards: usize, available: u64) -> Option<String> {
    let one = per_shard_bytes(config, words) as u64;
    let need = one * shards as u64;
    (need > available).then(|| {
        format!(
            "the hot state needs {:.0} MiB resident ({shards} shard(s) x {:.0} MiB: state.hot_capacity = {} records of {} window words{}) but the machine has {:.0} MiB available: lower state.hot_capacity or shards.count",
            need as f64 / MIB,
            one as f64 / MIB,
            config.state.hot_capacity,
            words,
            if checkpoints(config) {
                ", plus the checkpoint snapshot buffer, spill journal and change lists"
            } else {
                ""
            },
            available as f64 / MIB,
        )
    })
}

/// `run` and `check-config`: Err(the refusal) when `shards` shards' resident state does not
/// fit this machine's available memory. A feature list that does not compile is left to its
/// own check; a machine without /proc/meminfo is not checked (logged).
pub fn check_machine(config: &Config, shards: usize) -> Result<(), String> {
    let Ok(plan) = config.feature_plan() else {
        return Ok(());
    };
    let words = plan.words();
    let Some(available) = available_bytes() else {
        tracing::warn!("cannot read MemAvailable from /proc/meminfo: the hot state's size is not checked against the machine");
        return Ok(());
    };
    match refusal(config, words, shards, available) {
        Some(msg) => Err(msg),
        None => {
            tracing::info!(
                resident_mib = (per_shard_bytes(config, words) * shards) >> 20,
                available_mib = available >> 20,
                "hot state fits"
            );
            Ok(())
        }
    }
}

/// MemAvailable from /proc/meminfo, in bytes; None where it cannot be read.
fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_available(&text)
}

fn parse_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sets: &[&str]) -> Config {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::from_layers(None, &sets).unwrap()
    }

    #[test]
    fn meminfo_is_parsed_and_garbage_is_not() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_available(text), Some(20_000_000 * 1024));
        assert_eq!(parse_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_available("MemAvailable: lots kB\n"), None);
    }

    #[test]
    fn the_check_counts_every_shard_and_the_snapshot_buffer() {
        let c = config(&["state.hot_capacity=1000"]);
        let words = c.feature_plan().unwrap().words();
        let one = per_shard_bytes(&c, words);
        assert_eq!(one, HotTable::bytes_for(1000, words));
        assert!(refusal(&c, words, 4, 4 * one as u64).is_none());
        let msg = refusal(&c, words, 4, 4 * one as u64 - 1).unwrap();
        assert!(
            msg.contains("4 shard(s)") && msg.contains("state.hot_capacity = 1000"),
            "{msg}"
        );

        let durable = config(&["state.hot_capacity=1000", "state.dir=/tmp/x"]);
        let with_buffer = per_shard_bytes(&durable, words);
        assert_eq!(
            with_buffer,
            one + checkpoint::buffer_bytes(1000, words)
                + checkpoint::journal_bytes(16_384, words)
                + crate::state::change_lists_bytes(1000),
            "a durable shard also keeps its snapshot buffer, spill journal and change lists"
        );
        assert!(refusal(&durable, words, 1, one as u64)
            .unwrap()
            .contains("snapshot buffer"));
    }

    #[test]
    fn the_table_reports_what_it_allocates() {
        let t = HotTable::new(1000, 40);
        assert_eq!(t.memory_bytes(), HotTable::bytes_for(1000, 40));
    }
}
