//! What a start with this config would refuse in `state.dir`, found without starting, for
//! `sluice check-config` (run before a restart): a rescale's swap cut short, and checkpoints
//! written for another shard count, feature list or lateness — the usual way there being a
//! config changed without `sluice state rescale`. Reads only: no lock taken, nothing moved.
//! Kafka partition counts need the brokers and stay the start's (and `--connect`'s) to check:
//! the checkpoints' own `kafka=` part is taken as what the topics still have.

use std::path::Path;

use crate::config::Config;
use crate::state::checkpoint;

/// The refusals a start over `shards` shards would meet, each a sentence (empty: none).
pub fn refusals(config: &Config, shards: usize) -> Vec<String> {
    let dir = &config.state.dir;
    if dir.is_empty() || !Path::new(dir).is_dir() {
        return Vec::new();
    }
    if let Some(why) = super::rescale::interrupted(dir) {
        return vec![why];
    }
    let base = config.state_layout(shards);
    let mut out = Vec::new();
    for id in 0..shards {
        let root = super::shard_dir(config, id).join("checkpoints");
        let found = match checkpoint::newest_layout(&root) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                out.push(format!("state.dir: shard {id}'s checkpoints: {e}"));
                continue;
            }
        };
        let want = wanted(&base, &found, shards, config.ingest.kafka.enabled());
        if found != want {
            out.push(format!(
                "state.dir, shard {id}: {}",
                checkpoint::layout_refusal(&root, &found, &want)
            ));
            // Every shard's says the same for a changed setting: one is enough.
            break;
        }
    }
    out
}

/// The layout a start would want, as far as the config alone tells: its own part, and the
/// checkpoint's Kafka part (dealt over `shards` shards) when Kafka is on.
fn wanted(base: &str, found: &str, shards: usize, kafka: bool) -> String {
    let Some(at) = found.find(";kafka=").filter(|_| kafka) else {
        return base.to_owned();
    };
    let parts: Vec<String> = found[at + 1..]
        .split(';')
        .map(|p| match p.strip_prefix("over=") {
            Some(_) => format!("over={shards}"),
            None => p.to_owned(),
        })
        .collect();
    format!("{base};{}", parts.join(";"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wanted_layout_keeps_the_checkpoints_kafka_part_dealt_over_the_new_count() {
        let found = "shards=2;features=a;kafka=events:4/2;over=2";
        assert_eq!(
            wanted("shards=3;features=a", found, 3, true),
            "shards=3;features=a;kafka=events:4/2;over=3"
        );
        assert_eq!(
            wanted(
                "shards=2;features=a",
                "shards=2;features=a;kafka=e:4;group",
                2,
                true
            ),
            "shards=2;features=a;kafka=e:4;group"
        );
        // Kafka off now: the start wants none, and refuses a Kafka-fed checkpoint.
        assert_eq!(
            wanted("shards=2;features=a", found, 2, false),
            "shards=2;features=a"
        );
        assert_eq!(
            wanted("shards=2;features=a", "shards=2;features=a", 2, true),
            "shards=2;features=a"
        );
    }
}
