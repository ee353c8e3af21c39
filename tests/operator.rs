//! The operator's side: the live metrics endpoint scraped by a real HTTP client and parsed by
//! Prometheus's own parser, and its bad inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{start, Client};

struct Scrape {
    content_type: String,
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// urllib fetches, prometheus_client's OpenMetrics parser parses (tests/scrape.py).
    fn of(addr: SocketAddr) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scrape.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(format!("http://{addr}/metrics"))
            .output()
            .expect("python3 runs (scripts/install-deps installs prometheus_client)");
        assert!(
            out.status.success(),
            "the scrape did not parse: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let samples = v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s[1]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                (
                    s[0].as_str().unwrap().to_owned(),
                    labels,
                    s[2].as_f64().unwrap(),
                )
            })
            .collect();
        let types = v["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_owned()))
            .collect();
        Self {
            content_type: v["content_type"].as_str().unwrap().to_owned(),
            types,
            samples,
        }
    }

    /// Sum of the samples called `name` whose labels include every pair of `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn count(&self, name: &str) -> usize {
        self.samples.iter().filter(|(n, _, _)| n == name).count()
    }
}

/// Scrape until `done` holds (the shards count a moment after the replies leave).
fn scrape_until(addr: SocketAddr, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = Scrape::of(addr);
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn live_metrics_rise_with_traffic_and_equal_the_shutdown_report() {
    let running = start("io_uring", &[]);
    let addr = running.metrics_addr.expect("metrics.listen is on");
    let mut client = Client::new(running.local_addr, 2);
    let mut sent = 0u64;
    let mut send = |client: &mut Client, n: u64| {
        for i in 0..n {
            // One event a datagram; a key per socket so each batch belongs to its sender.
            client.send(&[(sent + i, false)]);
        }
        sent += n;
    };

    send(&mut client, 200);
    let mut scores = client.collect(200);
    client.check(&scores);
    let first = scrape_until(addr, |s| s.sum("sluice_scores_emitted_total", &[]) >= 200.0);
    assert!(
        first
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        first.content_type
    );
    assert_eq!(first.sum("sluice_scores_emitted_total", &[]), 200.0);
    assert_eq!(first.sum("sluice_events_received_total", &[]), 200.0);
    assert_eq!(
        first.types.get("sluice_scores_emitted").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        first
            .types
            .get("sluice_receive_to_emit_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    // Labelled by shard; each shard's series present.
    for shard in ["0", "1"] {
        assert_eq!(
            first
                .samples
                .iter()
                .filter(|(n, l, _)| n == "sluice_scores_emitted_total"
                    && l.get("shard").map(String::as_str) == Some(shard))
                .count(),
            1
        );
    }
    assert_eq!(first.count("sluice_build_info"), 1);

    // Malformed datagrams: counted by reason, live.
    client.send_raw(0, b"not a flatbuffer at all, just bytes");
    client.send_raw(1, &[0u8; 3]);
    let second = scrape_until(addr, |s| {
        s.sum("sluice_datagrams_dropped_total", &[]) >= 2.0
    });
    assert_eq!(second.sum("sluice_datagrams_dropped_total", &[]), 2.0);
    assert!(
        second.sum("sluice_datagrams_dropped_total", &[("reason", "too_short")]) >= 1.0,
        "a 3-byte datagram is too short"
    );

    // Model reloads, counted by result: a file that fails a check is refused (the running
    // model serves on), a good one loads.
    let bad = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bad_shape.onnx");
    assert!(running.reload(Some(bad)).is_err());
    assert!(running.reload(Some("/nonexistent/model.onnx")).is_err());
    assert_eq!(running.reload(Some("builtin:fraud_gbdt")), Ok(2));
    let reloads = scrape_until(addr, |s| s.sum("sluice_model_reloads_total", &[]) >= 3.0);
    assert_eq!(
        reloads
            .types
            .get("sluice_model_reloads")
            .map(String::as_str),
        Some("counter")
    );
    for (result, n) in [("refused", 2.0), ("loaded", 1.0)] {
        assert_eq!(
            reloads.sum("sluice_model_reloads_total", &[("result", result)]),
            n,
            "{result}"
        );
    }

    send(&mut client, 300);
    scores.extend(client.collect(300));
    client.check(&scores);
    let last = scrape_until(addr, |s| {
        s.sum("sluice_scores_emitted_total", &[]) >= 500.0
            && s.sum("sluice_receive_to_emit_seconds_count", &[]) >= 500.0
    });
    assert_eq!(last.sum("sluice_scores_emitted_total", &[]), 500.0);
    // Histograms: +Inf bucket = count, buckets never fall, and one sample an event.
    let count = last.sum("sluice_receive_to_emit_seconds_count", &[]);
    assert_eq!(count, 500.0);
    assert_eq!(
        last.sum("sluice_receive_to_emit_seconds_bucket", &[("le", "+Inf")]),
        count
    );
    for shard in ["0", "1"] {
        let buckets: Vec<f64> = last
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == "sluice_receive_to_emit_seconds_bucket"
                    && l.get("shard").map(String::as_str) == Some(shard)
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(buckets.len(), 23, "22 fixed bounds and +Inf");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    }
    assert!(last.sum("sluice_shard_loops_total", &[]) > first.sum("sluice_shard_loops_total", &[]));

    let report = running.stop().unwrap();
    assert_eq!(
        report.scores_emitted as f64,
        last.sum("sluice_scores_emitted_total", &[])
    );
    assert_eq!(
        report.events_received as f64,
        last.sum("sluice_events_received_total", &[])
    );
    assert_eq!(
        report.observations_applied as f64,
        last.sum("sluice_observations_applied_total", &[])
    );
    assert_eq!(
        report.datagrams_dropped_total() as f64,
        last.sum("sluice_datagrams_dropped_total", &[])
    );
    assert_eq!(
        report.receive_to_emit.as_ref().map_or(0, |h| h.len()) as f64,
        count
    );
}

/// Send raw bytes, return what came back (the status line, or "" if the server closed).
fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().next().unwrap_or("").to_owned()
}

#[test]
fn bad_scrapes_get_errors_and_a_taken_port_leaves_serving_on() {
    let running = start("recvmmsg", &[]);
    let addr = running.metrics_addr.expect("metrics.listen is on");
    let garbage = raw_request(addr, b"\x16\x03\x01 this is not http\r\n\r\n");
    assert!(
        garbage.is_empty()
            || garbage.starts_with("HTTP/1.1 4")
            || garbage.starts_with("HTTP/1.0 4"),
        "{garbage:?}"
    );
    let post = raw_request(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(post.contains(" 405"), "{post:?}");
    let missing = raw_request(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(missing.contains(" 404"), "{missing:?}");
    // Still serving after all that.
    assert!(Scrape::of(addr).count("sluice_scores_emitted_total") == 2);

    // A second instance asked for the same metrics port: it starts without live metrics
    // (logged) and scores as usual.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let second = start("recvmmsg", &[&format!("metrics.listen={port}")]);
    assert_eq!(second.metrics_addr, None);
    let mut client = Client::new(second.local_addr, 2);
    client.send(&[(0, false)]);
    client.send(&[(1, false)]);
    let got = client.collect(2);
    client.check(&got);
    assert_eq!(got.len(), 2);
    second.stop().unwrap();
    // An address this host does not have (TEST-NET-1): the same.
    let third = start("recvmmsg", &["metrics.listen=192.0.2.1:9600"]);
    assert_eq!(third.metrics_addr, None);
    let mut client = Client::new(third.local_addr, 1);
    client.send(&[(5, false)]);
    let got = client.collect(1);
    client.check(&got);
    third.stop().unwrap();
    running.stop().unwrap();
}

#[test]
fn the_admin_socket_is_private_and_refused_in_a_directory_anyone_can_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("sluice-admin-mode-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("admin.sock");
    let set = format!("admin.socket={}", socket.display());
    let running = start("recvmmsg", &[&set]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");
    running.stop().unwrap();

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = sluice::app::start(&common::config("recvmmsg", &[&set]));
    let err = refused
        .err()
        .expect("start refuses a world-writable socket directory");
    assert!(err.to_string().contains("writable by every user"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// promtool from `scripts/install-deps` (`SLUICE_PROMTOOL` overrides), or None (a failure
/// under CI=true, where it must be installed).
fn promtool() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("SLUICE_PROMTOOL") {
        return Some(p.into());
    }
    let mut dirs = vec![std::path::PathBuf::from("/usr/local/lib/sluice")];
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(std::path::Path::new(&home).join(".local/lib/sluice"));
    }
    let found = dirs
        .into_iter()
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is required under CI=true: run scripts/install-deps"
        );
        eprintln!("SKIPPED (promtool's part): no promtool (scripts/install-deps installs it)");
    }
    found
}

/// `promtool ARGS` in `dir`, which must succeed saying so.
fn promtool_succeeds(promtool: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let (ok, said) = common::succeeded_saying(&out);
    assert!(ok && said.contains("SUCCESS"), "promtool {args:?}: {said}");
    said
}

/// The shipped alert rules load in Prometheus's own checker, and their unit tests (each
/// alert fed the series that must fire it and ones that must not) pass. Which metrics they
/// name is checked against a live sluice in tests/kafka.rs.
#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus");
    promtool_succeeds(&promtool, &dir, &["check", "rules", "sluice-alerts.yml"]);
    promtool_succeeds(
        &promtool,
        &dir,
        &["test", "rules", "sluice-alerts.test.yml"],
    );
}

/// The Grafana dashboard (docs/grafana/sluice-dashboard.json) is well formed and every query
/// in it parses as PromQL: promtool checks them as recording rules, with Grafana's variables
/// given values. Which metrics they name is checked against a live sluice in tests/kafka.rs.
#[test]
fn the_dashboard_is_well_formed_and_its_queries_parse_in_promtool() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana/sluice-dashboard.json"
    );
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids unique: {p}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24, "inside Grafana's 24 columns: {p}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{p}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            let e = t["expr"].as_str().unwrap();
            assert!(
                e.contains("$instance"),
                "every query follows the instance picker: {e}"
            );
            exprs.push(
                e.replace("$__rate_interval", "1m")
                    .replace("$instance", ".*"),
            );
        }
    }
    assert!(exprs.len() > 20, "{exprs:?}");
    let Some(promtool) = promtool() else {
        return;
    };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(e).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = std::env::temp_dir();
    let name = format!("sluice-dashboard-{}.yml", std::process::id());
    std::fs::write(dir.join(&name), rules).unwrap();
    let said = promtool_succeeds(&promtool, &dir, &["check", "rules", &name]);
    let _ = std::fs::remove_file(dir.join(&name));
    let all = format!("SUCCESS: {} rules found", exprs.len());
    assert!(said.contains(&all), "{said}");
}
