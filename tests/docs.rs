//! The README's configuration reference must name every key sluice knows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn keys(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(sub) => keys(sub, &path, out),
            _ => out.push(path),
        }
    }
}

#[test]
fn readme_documents_every_config_key() {
    let defaults: toml::Table = sluice::config::DEFAULTS_TOML.parse().unwrap();
    let mut all = Vec::new();
    keys(&defaults, "", &mut all);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let missing: Vec<_> = all
        .iter()
        .filter(|k| !readme.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's configuration table lacks {missing:?}"
    );
    assert!(all.len() > 30);
}

#[test]
fn the_example_service_config_is_valid() {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/sluice.toml"));
    let config = sluice::config::Config::load(Some(path), &[]).unwrap_or_else(|e| panic!("{e}"));
    // As installed it runs without a broker: UDP in, durable state.
    assert!(!config.ingest.kafka.enabled());
    assert!(!config.state.dir.is_empty());
    // Its commented Kafka block, uncommented, is what an operator starts from: valid too.
    let text = std::fs::read_to_string(path).unwrap();
    let mut in_block = false;
    let kafka: Vec<&str> = text
        .lines()
        .map(|line| {
            in_block = (in_block && line.starts_with('#')) || line == "# [ingest.kafka]";
            if in_block {
                line.trim_start_matches('#').trim_start()
            } else {
                line
            }
        })
        .collect();
    let config = sluice::config::Config::from_layers(Some(&kafka.join("\n")), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(config.ingest.kafka.enabled());
    assert_eq!(
        config.egress.kafka.delivery,
        sluice::config::Delivery::ExactlyOnce
    );
}
