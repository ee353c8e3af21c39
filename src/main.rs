//! The `sluice` command: run the service, check a config, or run the loopback demo.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sluice::config::{Config, DEFAULTS_TOML};
use sluice::loadgen::{self, LoadSpec};
use sluice::metrics::report::percentile_table;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Low-latency ingest and scoring for streaming ML"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service until SIGINT/SIGTERM, then drain and print the latency report.
    Run {
        /// TOML config file; omitted keys keep their embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override one key, e.g. --set shards.count=2 (repeatable; applied after --config).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Check a config file; lists every problem and exits non-zero if there is any.
    CheckConfig {
        file: PathBuf,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Print the embedded default config (every key, with what it costs).
    PrintConfig,
    /// Inspect a running sluice's keyed state (through its admin.socket).
    State {
        #[command(subcommand)]
        what: StateCommand,
    },
    /// Ask a running sluice (through its admin.socket) to load a model as the next version.
    Reload {
        /// The running service's admin socket (its `admin.socket`).
        #[arg(long, default_value = "/run/sluice/admin.sock")]
        socket: PathBuf,
        /// Model file (or builtin:NAME); default: the service's model.path, re-read.
        #[arg(long)]
        model: Option<String>,
    },
    /// Start sluice on loopback and drive it with the built-in open-loop load generator.
    Demo {
        /// Events per second.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// Events per datagram.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Distinct keys.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Through Kafka instead of UDP: start a local broker (or use --brokers), produce one
        /// event a record, score, and read the Scores topic back.
        #[arg(long)]
        kafka: bool,
        /// With --kafka: exactly_once delivery (transactions committed with checkpoints).
        #[arg(long, requires = "kafka")]
        exactly_once: bool,
        /// With --kafka: use these brokers instead of starting a local one.
        #[arg(long, requires = "kafka")]
        brokers: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
    },
}

#[derive(Subcommand)]
enum StateCommand {
    /// Print one key's state (hot or spilled) from the shard that owns it.
    Get {
        key: u64,
        #[arg(long, default_value = "/run/sluice/admin.sock")]
        socket: PathBuf,
    },
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only atomic stores: async-signal-safe.
    if sig == libc::SIGHUP {
        RELOAD.store(true, Ordering::SeqCst);
    } else {
        SIGNALLED.store(true, Ordering::SeqCst);
    }
}

fn install_signal_handlers() -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("installing {sig} handler"))?;
    }
    Ok(())
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load(config: Option<&PathBuf>, sets: &[String]) -> anyhow::Result<Config> {
    Config::load(config.map(PathBuf::as_path), sets).map_err(|e| anyhow::anyhow!("{e}"))
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::PrintConfig => {
            print!("{DEFAULTS_TOML}");
        }
        Command::CheckConfig { file, sets } => {
            return Ok(check_config(&file, &sets));
        }
        Command::State {
            what: StateCommand::Get { key, socket },
        } => {
            // `state get` prints the answer without the protocol's "ok " prefix.
            return admin_command(&socket, &format!("state {key}"), |a| {
                a.strip_prefix("ok ").unwrap_or(a).to_owned()
            });
        }
        Command::Reload { socket, model } => {
            let command = model.map_or_else(|| "reload".to_owned(), |m| format!("reload {m}"));
            return admin_command(&socket, &command, str::to_owned);
        }
        Command::Run { config, sets } => {
            let config = load(config.as_ref(), &sets)?;
            init_logging(&config.log.level);
            install_signal_handlers()?;
            let running = sluice::app::start(&config)?;
            println!(
                "sluice listening on {} ({} shard(s), {})",
                running.local_addr,
                running.placements.len(),
                running.driver.name()
            );
            while !SIGNALLED.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if RELOAD.swap(false, Ordering::SeqCst) {
                    // SIGHUP: re-read model.path; a bad file is refused and the old model serves on.
                    match running.reload(None) {
                        Ok(v) => tracing::info!(version = v, "SIGHUP: model reloaded"),
                        Err(why) => tracing::error!(
                            "SIGHUP: model refused, previous version keeps serving: {why}"
                        ),
                    }
                }
            }
            eprintln!("sluice: stopping: draining rings and flushing replies");
            let report = running.stop()?;
            print!("{}", report.render());
            write_hgrm(&config, &report)?;
        }
        Command::Demo {
            rate,
            batch,
            keys,
            seconds,
            kafka,
            exactly_once,
            brokers,
            config,
            sets,
        } => {
            if kafka {
                let demo = KafkaDemo {
                    rate,
                    keys,
                    seconds,
                    exactly_once,
                    brokers,
                };
                demo_kafka(&demo, config.as_ref(), &sets)?;
            } else {
                demo(rate, batch, keys, seconds, config.as_ref(), &sets)?;
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Send one admin command to a running sluice, print its answer, exit 0 on "ok".
fn admin_command(
    socket: &std::path::Path,
    command: &str,
    shown: impl Fn(&str) -> String,
) -> anyhow::Result<std::process::ExitCode> {
    let answer = sluice::admin::request(socket, command).with_context(|| {
        format!(
            "talking to {} (is sluice running with admin.socket set?)",
            socket.display()
        )
    })?;
    println!("{}", shown(&answer));
    Ok(if answer.starts_with("ok") {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

fn check_config(file: &std::path::Path, sets: &[String]) -> std::process::ExitCode {
    let config = match Config::load(Some(file), sets) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return std::process::ExitCode::from(1);
        }
    };
    // Placement and the model depend on this machine: check them too, as `run` would.
    let topo = sluice::topology::discover();
    let mut problems = Vec::new();
    if let Err(e) = sluice::infer::build_primary(&config, None) {
        problems.push(e.to_string());
    }
    let placements = sluice::topology::plan(&config.shards, &topo).unwrap_or_else(|placement| {
        problems.extend(placement);
        Vec::new()
    });
    if !placements.is_empty() {
        if let Err(e) = sluice::state::resident::check_machine(&config, placements.len()) {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        let cpus: Vec<usize> = placements.iter().map(|p| p.cpu).collect();
        println!(
            "{}: ok ({} shard(s) on CPUs {cpus:?}; {})",
            file.display(),
            placements.len(),
            topo.summary()
        );
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!(
            "{}: invalid on this machine ({} problem(s)):\n  - {}",
            file.display(),
            problems.len(),
            problems.join("\n  - ")
        );
        std::process::ExitCode::from(1)
    }
}

fn write_hgrm(config: &Config, report: &sluice::metrics::Report) -> anyhow::Result<()> {
    if !config.metrics.hgrm_dir.is_empty() {
        let dir = PathBuf::from(&config.metrics.hgrm_dir);
        report
            .write_hgrm_files(&dir)
            .with_context(|| format!("writing .hgrm files to {}", dir.display()))?;
        println!(
            "latency histograms written to {}/{{receive_to_emit,in_shard}}.hgrm",
            dir.display()
        );
    }
    Ok(())
}

fn demo(
    rate: u64,
    batch: usize,
    keys: u64,
    seconds: u64,
    file: Option<&PathBuf>,
    user_sets: &[String],
) -> anyhow::Result<()> {
    // Loopback on an ephemeral port; leave one core to the load generator when there are few.
    let cores = sluice::topology::discover().cores;
    let mut sets = vec![
        "ingest.udp.listen=127.0.0.1:0".to_owned(),
        format!("shards.count={}", cores.saturating_sub(1).max(1)),
    ];
    sets.extend_from_slice(user_sets);
    let config = load(file, &sets)?;
    init_logging(&config.log.level);
    install_signal_handlers()?;
    let running = sluice::app::start(&config)?;
    let spec = LoadSpec {
        target: running.local_addr,
        rate,
        batch,
        keys,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_secs(1).min(Duration::from_secs(seconds) / 5),
        ..LoadSpec::default()
    };
    println!(
        "sluice demo: {} shard(s) on CPUs {:?}, udp driver {}; sending {rate} events/s in datagrams of {batch} over {keys} keys for {seconds} s to {}",
        running.placements.len(),
        running.placements.iter().map(|p| p.cpu).collect::<Vec<_>>(),
        running.driver.name(),
        running.local_addr
    );
    let load = loadgen::run(&spec);
    let report = running.stop()?;
    let load = load?;
    println!("\n== service (measured inside sluice) ==");
    print!("{}", report.render());
    println!("\n== client (open loop, from scheduled send time to reply) ==");
    println!(
        "  sent {} events in {} datagrams over {:.2} s = {:.0} events/s (max send lag {:?})",
        load.sent_events,
        load.sent_datagrams,
        load.elapsed.as_secs_f64(),
        load.achieved_rate(),
        load.max_send_lag
    );
    println!(
        "  replies: {} of {} expected; lost {}, duplicates {}, wrong counts {}, unexpected {}, send errors {}",
        load.replies, load.expected_replies, load.lost, load.duplicates, load.count_errors, load.unexpected, load.send_errors
    );
    print!(
        "{}",
        percentile_table(&[("round trip", Some(&load.latency))])
    );
    write_hgrm(&config, &report)?;
    if load.lost + load.duplicates + load.count_errors > 0 {
        println!("  NOTE: losses or count errors above; see sluice_socket_drops_total and the drop counters");
    }
    Ok(())
}

struct KafkaDemo {
    rate: u64,
    keys: u64,
    seconds: u64,
    exactly_once: bool,
    brokers: Option<String>,
}

/// `sluice demo --kafka`: a local broker, a 4-partition events topic, sluice consuming it, and
/// an open-loop producer + read_committed reader measuring produce -> Score visible.
fn demo_kafka(d: &KafkaDemo, file: Option<&PathBuf>, user_sets: &[String]) -> anyhow::Result<()> {
    use sluice::loadgen::broker::{create_topic, LocalBroker};
    use sluice::loadgen::kafka::{self as kload, KafkaLoadSpec};
    let (events, scores) = ("sluice-demo-events", "sluice-demo-scores");
    let local = match &d.brokers {
        Some(_) => None,
        None => Some(LocalBroker::start("demo")?),
    };
    let brokers = d
        .brokers
        .clone()
        .or_else(|| local.as_ref().map(|b| b.addr.clone()))
        .unwrap_or_default();
    create_topic(&brokers, events, 4)?;
    create_topic(&brokers, scores, 4)?;
    let cores = sluice::topology::discover().cores;
    let state_dir = std::env::temp_dir().join(format!("sluice-demo-kafka-{}", std::process::id()));
    let mut sets = vec![
        "ingest.udp.listen=127.0.0.1:0".to_owned(),
        format!("shards.count={}", cores.saturating_sub(1).max(1)),
        format!("ingest.kafka.brokers={brokers}"),
        format!("ingest.kafka.topics=[\"{events}\"]"),
        "ingest.kafka.start=latest".to_owned(),
        format!("egress.kafka.scores_topic={scores}"),
    ];
    if d.exactly_once {
        let _ = std::fs::remove_dir_all(&state_dir);
        sets.extend([
            "egress.kafka.delivery=exactly_once".to_owned(),
            format!("state.dir={}", state_dir.display()),
            format!(
                "state.hot_capacity={}",
                (d.keys * 2).next_power_of_two().max(1024)
            ),
            format!(
                "egress.kafka.transactional_id_prefix=sluice-demo-{}",
                std::process::id()
            ),
        ]);
    }
    sets.extend_from_slice(user_sets);
    let config = load(file, &sets)?;
    init_logging(&config.log.level);
    install_signal_handlers()?;
    let running = sluice::app::start(&config)?;
    println!(
        "sluice demo --kafka: {} shard(s), brokers {brokers}{}, delivery {:?}; producing {} events/s over {} keys for {} s to {events}, reading {scores}",
        running.placements.len(),
        if local.is_some() { " (local noida-db)" } else { "" },
        config.egress.kafka.delivery,
        d.rate,
        d.keys,
        d.seconds
    );
    let spec = KafkaLoadSpec {
        brokers: brokers.clone(),
        events_topic: events.to_owned(),
        scores_topic: scores.to_owned(),
        rate: d.rate,
        keys: d.keys,
        duration: Duration::from_secs(d.seconds),
        warmup: Duration::from_secs(1).min(Duration::from_secs(d.seconds) / 5),
        drain: Duration::from_secs(5),
        fetch_wait_ms: 1,
    };
    let load = kload::run(&spec);
    let report = running.stop()?;
    let load = load?;
    println!("\n== service (measured inside sluice) ==");
    print!("{}", report.render());
    println!(
        "\n== client (open loop, from scheduled produce time to Score read, read_committed) =="
    );
    println!(
        "  produced {} events in {:.2} s (max produce lag {:?}); Scores {} of {}: lost {}, duplicates {}, wrong counts {}, unexpected {}",
        load.sent,
        load.elapsed.as_secs_f64(),
        load.max_send_lag,
        load.scores,
        load.sent,
        load.lost,
        load.duplicates,
        load.count_errors,
        load.unexpected
    );
    print!(
        "{}",
        percentile_table(&[("produce->Score", Some(&load.latency))])
    );
    if d.exactly_once {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    Ok(())
}
