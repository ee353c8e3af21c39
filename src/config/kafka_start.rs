//! `ingest.kafka.start`: where a partition starts when nothing sluice keeps (a checkpoint, a
//! group commit) holds an offset for it. Beside Kafka's `earliest` and `latest`, a point in
//! time, as Flink's `OffsetsInitializer.timestamp` and Kafka 4's
//! `auto.offset.reset=by_duration` offer: a state rebuilt from the last day of a topic that
//! keeps a week, or a first run that should not score a month of backlog nor miss the last
//! hour. Each partition then starts at its first record whose timestamp is at or after that
//! time (the brokers' ListOffsets answer), or at its end when it has none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A parsed `ingest.kafka.start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum KafkaStart {
    /// The partition's first record still held.
    Earliest,
    /// The partition's end: only records produced from now on.
    Latest,
    /// The first record at or after this time (a UTC time, `2026-12-01T00:00:00Z`).
    At(SystemTime),
    /// The first record at or after this long before the partition is taken up
    /// (`"24h ago"`).
    Ago(Duration),
}

impl KafkaStart {
    /// The record timestamp (ms since the epoch) a partition taken up at `now` starts from;
    /// None for `earliest` and `latest`.
    pub fn point_ms(self, now: SystemTime) -> Option<i64> {
        let at = match self {
            Self::Earliest | Self::Latest => return None,
            Self::At(t) => t,
            Self::Ago(d) => now.checked_sub(d).unwrap_or(UNIX_EPOCH),
        };
        let ms = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Some(i64::try_from(ms).unwrap_or(i64::MAX))
    }
}

impl TryFrom<String> for KafkaStart {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let t = text.trim();
        match t {
            "earliest" => return Ok(Self::Earliest),
            "latest" => return Ok(Self::Latest),
            _ => {}
        }
        if let Some(back) = t.strip_suffix(" ago") {
            return match humantime::parse_duration(back.trim()) {
                Ok(d) if !d.is_zero() => Ok(Self::Ago(d)),
                Ok(_) => Err(format!(
                    "{text:?}: a duration of zero is \"latest\"; say that"
                )),
                Err(e) => Err(format!(
                    "{text:?}: not a duration ({e}); e.g. \"24h ago\", \"7days ago\", \"90m ago\""
                )),
            };
        }
        match humantime::parse_rfc3339(t) {
            Ok(at) => Ok(Self::At(at)),
            Err(e) => Err(format!(
                "{text:?}: expected \"earliest\", \"latest\", a UTC time such as \"2026-12-01T00:00:00Z\" ({e}), or a duration back such as \"24h ago\""
            )),
        }
    }
}

impl std::fmt::Display for KafkaStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Earliest => f.write_str("earliest"),
            Self::Latest => f.write_str("latest"),
            Self::At(t) => write!(f, "{}", humantime::format_rfc3339_millis(*t)),
            Self::Ago(d) => write!(f, "{} ago", humantime::format_duration(*d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<KafkaStart, String> {
        KafkaStart::try_from(s.to_owned())
    }

    #[test]
    fn each_form_parses_and_says_where_a_partition_starts() {
        assert_eq!(parse("earliest"), Ok(KafkaStart::Earliest));
        assert_eq!(parse("latest"), Ok(KafkaStart::Latest));
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse("latest").unwrap().point_ms(now), None);
        let at = parse("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(at.point_ms(now), Some(1_796_083_200_000));
        assert_eq!(at.to_string(), "2026-12-01T00:00:00.000Z");
        let ago = parse("24h ago").unwrap();
        assert_eq!(ago, KafkaStart::Ago(Duration::from_secs(86_400)));
        assert_eq!(ago.point_ms(now), Some((1_800_000_000 - 86_400) * 1000));
        assert_eq!(ago.to_string(), "1day ago");
        assert_eq!(
            parse("1h 30m ago").unwrap(),
            KafkaStart::Ago(Duration::from_secs(5400))
        );
        // Further back than the epoch: the epoch (every record).
        assert_eq!(
            parse("100years ago")
                .unwrap()
                .point_ms(UNIX_EPOCH + Duration::from_secs(10)),
            Some(0)
        );
    }

    #[test]
    fn anything_else_is_refused_naming_the_forms() {
        for bad in [
            "",
            "beginning",
            "24h",
            "soon ago",
            "0s ago",
            "2026-13-01T00:00:00Z",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert!(parse("yesterday").unwrap_err().contains("\"24h ago\""));
    }
}
