use proptest::prelude::*;

use super::*;

const SEC: u64 = 1_000_000_000;

fn plan(list: &[&str], lateness_ns: u64) -> FeaturePlan {
    let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    FeaturePlan::compile(&list, lateness_ns).unwrap()
}

fn obs(ts_ns: u64, amount: f32) -> Obs<'static> {
    Obs {
        ts_ns,
        amount,
        features: &[],
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn identical_aggregates_share_storage() {
    let p = plan(
        &[
            "sum(amount, sliding 60s by 10s)",
            "count(sliding 60s by 10s)",
            "mean(amount, sliding 60s by 10s)",
            "ewma(amount, 0.1)",
            "ratio(amount, ewma(amount, 0.1))",
        ],
        0,
    );
    // One ring of 6 + 1 buckets of (tag, count, sum), one EWMA of 2 words.
    assert_eq!(p.words(), 7 * 3 + 2);
    assert_eq!(p.width(), 5);
    let with_max = plan(
        &[
            "sum(amount, sliding 60s by 10s)",
            "max(amount, sliding 60s by 10s)",
        ],
        0,
    );
    assert_eq!(with_max.words(), 7 * 4);
}

#[test]
fn compile_lists_every_bad_entry() {
    let list: Vec<String> = ["amount", "nope", "sum(amount)", "count(lifetime)"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let errs = FeaturePlan::compile(&list, 0).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains("features.list[1]"));
    assert!(errs[1].contains("features.list[2]"));
    let errs = FeaturePlan::compile(&[], 0).unwrap_err();
    assert!(errs[0].contains("empty"));
    // Lateness far beyond the step needs more buckets than a record may hold.
    let errs = FeaturePlan::compile(&["count(sliding 1s by 10ms)".into()], 3600 * SEC).unwrap_err();
    assert!(errs[0].contains("buckets"), "{errs:?}");
}

#[test]
fn the_default_fraud_row_matches_the_hand_computed_one() {
    let p = plan(
        &[
            "amount",
            "log1p(count(lifetime))",
            "mean(amount, lifetime)",
            "ewma(amount, 0.5)",
            "ratio(amount, ewma(amount, 0.5))",
            "since_last",
            "feature[1]",
        ],
        0,
    );
    let mut w = vec![0u64; p.words()];
    p.update(&mut w, &obs(10 * SEC, 2.0));
    let o = Obs {
        ts_ns: 12_500_000_000,
        amount: 4.0,
        features: &[7.0, 8.0],
    };
    p.update(&mut w, &o);
    let mut row = [0f32; 7];
    p.build_row(&w, 10 * SEC, &o, &mut row);
    assert_eq!(row[0], 4.0);
    assert!((row[1] - 3f32.ln()).abs() < 1e-6);
    assert_eq!(row[2], 3.0);
    assert_eq!(row[3], 3.0);
    assert!((row[4] - 4.0 / 3.0).abs() < 1e-6);
    assert!((row[5] - 2.5).abs() < 1e-6);
    assert_eq!(row[6], 8.0);
}

#[test]
fn tumbling_windows_reset_at_their_boundary() {
    let p = plan(&["count(tumbling 10s)", "sum(amount, tumbling 10s)"], 0);
    let mut w = vec![0u64; p.words()];
    let mut row = [0f32; 2];
    for (ts, amount, want) in [
        (1, 1.0, [1.0, 1.0]),
        (9, 2.0, [2.0, 3.0]),
        (10, 5.0, [1.0, 5.0]),
        (19, 1.0, [2.0, 6.0]),
        (45, 1.0, [1.0, 1.0]),
    ] {
        let o = obs(ts * SEC, amount);
        p.update(&mut w, &o);
        p.build_row(&w, 0, &o, &mut row);
        assert_eq!(row, want, "at {ts}s");
    }
}

#[test]
fn sessions_split_on_the_gap() {
    let p = plan(&["count(session 5s)", "max(amount, session 5s)"], 0);
    let mut w = vec![0u64; p.words()];
    let mut row = [0f32; 2];
    for (ts, amount, want) in [
        (0, 3.0, [1.0, 3.0]),
        (4, 1.0, [2.0, 3.0]),
        (9, 2.0, [3.0, 3.0]),
        (15, 1.0, [1.0, 1.0]),
    ] {
        let o = obs(ts * SEC, amount);
        p.update(&mut w, &o);
        p.build_row(&w, 0, &o, &mut row);
        assert_eq!(row, want, "at {ts}s");
    }
}

#[test]
fn a_late_event_that_bridges_two_sessions_merges_them() {
    let list = [
        "count(session 5s)",
        "sum(amount, session 5s)",
        "min(amount, session 5s)",
    ];
    // 10 s of lateness: slots for ceil(10 / 5) + 1 = 3 sessions of 2 + 3 words.
    let p = plan(&list, 10 * SEC);
    assert_eq!(p.words(), 3 * 5);
    let mut w = vec![0u64; p.words()];
    let mut row = [0f32; 3];
    for (ts, amount, want) in [
        (0, 3.0, [1.0, 3.0, 3.0]),
        (2, 1.0, [2.0, 4.0, 1.0]),
        // More than 5 s after 2: a second session.
        (10, 4.0, [1.0, 4.0, 4.0]),
        (12, 2.0, [2.0, 6.0, 2.0]),
        // Within 5 s of both 2 and 10: one session of all five.
        (6, 0.5, [5.0, 10.5, 0.5]),
        (13, 1.0, [6.0, 11.5, 0.5]),
    ] {
        let o = obs(ts * SEC, amount);
        p.update(&mut w, &o);
        p.build_row(&w, 0, &o, &mut row);
        assert_eq!(row, want, "at {ts}s");
    }
    // Without a lateness the layout is one session, as before merging existed.
    assert_eq!(plan(&list, 0).words(), 5);
    assert!(!plan(&list, 0).keeps_several_sessions());
    assert!(p.keeps_several_sessions());
}

#[test]
fn a_late_event_lands_in_its_own_earlier_session() {
    let p = plan(&["count(session 5s)", "max(amount, session 5s)"], 30 * SEC);
    let mut w = vec![0u64; p.words()];
    let mut row = [0f32; 2];
    for (ts, amount, want) in [
        (0, 1.0, [1.0, 1.0]),
        (10, 2.0, [1.0, 2.0]),
        (20, 3.0, [1.0, 3.0]),
        // Late, into the first session; the newest is left as it was.
        (3, 7.0, [2.0, 7.0]),
        (21, 1.0, [2.0, 3.0]),
        // Late and alone: a session of its own between the first two.
        (0, 0.0, [3.0, 7.0]),
    ] {
        let o = obs(ts * SEC, amount);
        p.update(&mut w, &o);
        p.build_row(&w, 0, &o, &mut row);
        assert_eq!(row, want, "at {ts}s");
    }
}

#[test]
fn too_many_sessions_kept_is_a_config_error() {
    let list = vec!["count(session 1s)".to_string()];
    let errs = FeaturePlan::compile(&list, 3_600 * SEC).unwrap_err();
    assert!(errs[0].contains("sessions kept"), "{errs:?}");
}

/// Brute force: the aggregate of every applied event whose bucket epoch is within the
/// window ending at `at`'s epoch.
fn brute(events: &[(u64, f32)], at: u64, step: u64, span: u64) -> (f64, f64, f64, f64) {
    let newest = at / step;
    let oldest = newest.saturating_sub(span - 1);
    let inside: Vec<f64> = events
        .iter()
        .filter(|(ts, _)| (oldest..=newest).contains(&(ts / step)))
        .map(|&(_, a)| f64::from(a))
        .collect();
    let sum: f64 = inside.iter().sum();
    let min = inside.iter().copied().fold(f64::INFINITY, f64::min);
    let max = inside.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (inside.len() as f64, sum, min, max)
}

proptest! {
    /// Sliding and tumbling windows equal a brute-force recount at every event, for streams
    /// that arrive out of order by up to the allowed lateness.
    #[test]
    fn windows_match_brute_force_under_disorder(
        steps in proptest::collection::vec((0u64..4_000, 0u64..3_000, 0.5f32..500.0), 1..300),
        lateness_ms in 0u64..3_000,
    ) {
        let lateness = lateness_ms * 1_000_000;
        let p = plan(&[
            "count(sliding 5s by 500ms)",
            "sum(amount, sliding 5s by 500ms)",
            "min(amount, sliding 5s by 500ms)",
            "max(amount, sliding 5s by 500ms)",
            "mean(amount, tumbling 2s)",
            "count(tumbling 2s)",
        ], lateness);
        let mut w = vec![0u64; p.words()];
        let mut row = [0f32; 6];
        let mut clock = 1_000 * SEC;
        let mut max_seen = 0u64;
        let mut applied: Vec<(u64, f32)> = Vec::new();
        for (advance_ms, back_ms, amount) in steps {
            clock += advance_ms * 1_000_000;
            // Out of order, but never before the watermark (max seen - lateness).
            let ts = (clock - (back_ms * 1_000_000).min(lateness)).max(max_seen.saturating_sub(lateness));
            max_seen = max_seen.max(ts);
            let o = obs(ts, amount);
            p.update(&mut w, &o);
            applied.push((ts, amount));
            p.build_row(&w, 0, &o, &mut row);
            let (n, sum, min, max) = brute(&applied, ts, 500_000_000, 10);
            prop_assert_eq!(f64::from(row[0]), n);
            prop_assert!(close(f64::from(row[1]), sum), "sum {} vs {}", row[1], sum);
            prop_assert_eq!(f64::from(row[2]), min);
            prop_assert_eq!(f64::from(row[3]), max);
            let (tn, tsum, _, _) = brute(&applied, ts, 2 * SEC, 1);
            prop_assert_eq!(f64::from(row[5]), tn);
            prop_assert!(close(f64::from(row[4]), tsum / tn), "mean {} vs {}", row[4], tsum / tn);
        }
    }

    /// Sessions equal a brute-force split on gaps of every event applied so far (sorted by
    /// time: two events are in one session when no gap of more than `gap` separates them),
    /// for streams out of order by up to the allowed lateness, so late events that bridge
    /// sessions merge them.
    #[test]
    fn sessions_match_brute_force_under_disorder(
        steps in proptest::collection::vec((0u64..9_000, 0u64..20_000, 0.5f32..500.0), 1..250),
        // A fifth of the cases without a lateness (one session kept).
        lateness_ms in (0u64..25_000).prop_map(|l| l.saturating_sub(5_000)),
        gap_ms in 500u64..6_000,
    ) {
        let lateness = lateness_ms * 1_000_000;
        let gap = gap_ms * 1_000_000;
        let d = format!("session {gap_ms}ms");
        let list = [
            format!("count({d})"),
            format!("sum(amount, {d})"),
            format!("min(amount, {d})"),
            format!("max(amount, {d})"),
        ];
        let list: Vec<&str> = list.iter().map(String::as_str).collect();
        let p = plan(&list, lateness);
        let mut w = vec![0u64; p.words()];
        let mut row = [0f32; 4];
        let mut clock = 1_000 * SEC;
        let mut max_seen = 0u64;
        let mut applied: Vec<(u64, f32)> = Vec::new();
        for (advance_ms, back_ms, amount) in steps {
            clock += advance_ms * 1_000_000;
            let ts = (clock - (back_ms * 1_000_000).min(lateness)).max(max_seen.saturating_sub(lateness));
            max_seen = max_seen.max(ts);
            let o = obs(ts, amount);
            p.update(&mut w, &o);
            applied.push((ts, amount));
            p.build_row(&w, 0, &o, &mut row);
            let mut sorted = applied.clone();
            sorted.sort_by_key(|e| e.0);
            // The run of events around `ts` with no gap wider than `gap`.
            let at = sorted.partition_point(|e| e.0 < ts);
            let mut lo = at;
            while lo > 0 && sorted[lo].0 <= sorted[lo - 1].0 + gap {
                lo -= 1;
            }
            let mut hi = at;
            while hi + 1 < sorted.len() && sorted[hi + 1].0 <= sorted[hi].0 + gap {
                hi += 1;
            }
            let own: Vec<f64> = sorted[lo..=hi].iter().map(|e| f64::from(e.1)).collect();
            prop_assert_eq!(f64::from(row[0]), own.len() as f64, "count at {}", ts);
            prop_assert!(close(f64::from(row[1]), own.iter().sum()), "sum {} at {}", row[1], ts);
            prop_assert_eq!(f64::from(row[2]), own.iter().copied().fold(f64::INFINITY, f64::min));
            prop_assert_eq!(f64::from(row[3]), own.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        }
    }

    /// Sessions over in-order streams equal a brute-force split on gaps; EWMA equals its
    /// recurrence.
    #[test]
    fn sessions_and_ewma_match_brute_force(
        steps in proptest::collection::vec((0u64..12_000, 0.5f32..500.0), 1..200),
    ) {
        let p = plan(&["sum(amount, session 5s)", "count(session 5s)", "ewma(amount, 0.3)"], 0);
        let mut w = vec![0u64; p.words()];
        let mut row = [0f32; 3];
        let mut ts = SEC;
        let mut session: Vec<f64> = Vec::new();
        let mut last = 0u64;
        let mut ewma: Option<f64> = None;
        for (advance_ms, amount) in steps {
            ts += advance_ms * 1_000_000;
            if !session.is_empty() && ts > last + 5 * SEC {
                session.clear();
            }
            session.push(f64::from(amount));
            last = ts;
            let a = f64::from(amount);
            ewma = Some(ewma.map_or(a, |e| 0.3 * a + 0.7 * e));
            let o = obs(ts, amount);
            p.update(&mut w, &o);
            p.build_row(&w, 0, &o, &mut row);
            prop_assert!(close(f64::from(row[0]), session.iter().sum()));
            prop_assert_eq!(f64::from(row[1]), session.len() as f64);
            prop_assert!(close(f64::from(row[2]), ewma.unwrap_or(0.0)));
        }
    }
}
