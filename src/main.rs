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
        /// Also ask the Kafka brokers, as the consumer and as the producer: credentials,
        /// certificates, input and output topics, ACLs, output topics' max.message.bytes.
        /// Writes nothing.
        #[arg(long)]
        connect: bool,
    },
    /// Print the embedded default config (every key, with what it costs).
    PrintConfig,
    /// Inspect a running sluice's keyed state (through its admin.socket).
    State {
        #[command(subcommand)]
        what: StateCommand,
    },
    /// A running sluice's view of its Kafka consumer group (through its admin.socket).
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
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
    /// Host tuning for the shard map: plan | check | apply | revert (see tuning/README.md).
    Host {
        #[command(subcommand)]
        verb: HostVerb,
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

#[derive(clap::Args, Clone)]
struct HostArgs {
    /// The service's config (its shard map and socket sizes drive the plan).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
    /// Act on a host tree under DIR instead of / (tests; a copy of /proc and /sys).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// The NIC whose queues to tune (default: the default route's).
    #[arg(long)]
    nic: Option<String>,
    /// The apply journal (default: /var/lib/sluice/host-tuning.json under the root).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Also write a systemd drop-in setting CPUAffinity/NUMAPolicy for the shard map.
    #[arg(long)]
    systemd_dropin: bool,
}

#[derive(Subcommand)]
enum HostVerb {
    /// Print exactly the writes `apply` would make (changes nothing).
    Plan(HostArgs),
    /// Each setting: current, wanted, why. Exit 0 all match, 1 a mismatch, 2 could not run.
    Check {
        #[command(flatten)]
        args: HostArgs,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Journal every original value, then write the plan.
    Apply(HostArgs),
    /// Write back every original the journal holds.
    Revert(HostArgs),
}

#[derive(Subcommand)]
enum StateCommand {
    /// Print one key's state (hot or spilled) from the shard that owns it.
    Get {
        key: u64,
        #[arg(long, default_value = "/run/sluice/admin.sock")]
        socket: PathBuf,
    },
    /// Re-deal a stopped sluice's state.dir over the shard count this config places: every key
    /// (a Kafka-fed one with its input partition and the partition's offset) moves to the
    /// shard that owns it under the new count; the old shard directories are kept aside.
    Rescale {
        /// The config the service will run with (its `shards` gives the new count).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
        /// Test hook: stop as a crash would, between moving the old shards aside and moving
        /// the new ones in.
        #[arg(long, hide = true)]
        fault_stop_mid_swap: bool,
    },
    /// Copy the config's state.dir, while sluice serves or not, into a new directory that a
    /// start can restore: each shard's newest checkpoint chain, pinned by hard links, read
    /// back, synced (not under Kafka exactly_once, whose copy is the changelog topic).
    Backup {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
        /// The new directory (on another disk, or the same).
        #[arg(long, required_unless_present = "into", conflicts_with = "into")]
        to: Option<PathBuf>,
        /// Scheduled backups: a new `sluice-backup-<UTC time>` directory in this one (which
        /// must exist), as the `sluice-backup.timer` unit runs it.
        #[arg(long)]
        into: Option<PathBuf>,
        /// With --into: once the new backup is complete, remove the oldest of the directory's
        /// backups beyond this many (other names in it are left alone).
        #[arg(long)]
        keep: Option<usize>,
    },
    /// Put a backup in place of a stopped sluice's state.dir: read back and checked against
    /// this config first, copied beside the current shards (owned like state.dir), swapped
    /// in; the shards it replaces are kept aside, the backup is left as it was.
    Restore {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
        /// The backup (`sluice state backup --to`).
        #[arg(long)]
        from: PathBuf,
    },
    /// What the config's state.dir holds, from its checkpoint manifests (read only: runs beside
    /// a serving sluice too): per shard its newest checkpoint, records, Observations, the Kafka
    /// offsets it resumes at, the disk it holds.
    Show {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// Also read back every checkpoint chain a start would try (hot records' checksums
        /// and sizes, parents, spill directories; RocksDB's files are not opened); exit 1 if
        /// one does not read back.
        #[arg(long)]
        verify: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The input partitions this instance owns now (shard, role, offsets, lag) and the others.
    Status {
        #[arg(long, default_value = "/run/sluice/admin.sock")]
        socket: PathBuf,
        /// Print the answer as one JSON object instead of a table.
        #[arg(long)]
        json: bool,
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

/// Logs go to stderr, or, when systemd connected stderr to the journal (`JOURNAL_STREAM`),
/// straight to the journal so each line keeps its level (priority) and fields.
fn init_logging(level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journald) => {
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(journald.with_syslog_identifier("sluice".to_owned()))
                    .try_init();
                return;
            }
            Err(e) => eprintln!("sluice: journald not reachable ({e}); logging to stderr"),
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
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
            eprintln!("sluice: {}", sluice::error_text::error_text(e.as_ref()));
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
        Command::CheckConfig {
            file,
            sets,
            connect,
        } => {
            return Ok(check_config(&file, &sets, connect));
        }
        Command::State {
            what: StateCommand::Get { key, socket },
        } => {
            // `state get` prints the answer without the protocol's "ok " prefix.
            return admin_command(&socket, &format!("state {key}"), |a| {
                a.strip_prefix("ok ").unwrap_or(a).to_owned()
            });
        }
        Command::State {
            what:
                StateCommand::Show {
                    config,
                    sets,
                    json,
                    verify,
                },
        } => {
            let config = load(config.as_ref(), &sets)?;
            let view =
                sluice::app::state_show::look(&config, verify).map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", view.text());
            }
            if view.verify_failed() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::State {
            what: StateCommand::Restore { config, sets, from },
        } => {
            let config = load(config.as_ref(), &sets)?;
            init_logging(&config.log.level);
            let done =
                sluice::app::state_restore::restore(&config, &from).map_err(anyhow::Error::msg)?;
            println!(
                "state.dir {} restored from {}: {} in {:.0} ms; {}",
                config.state.dir,
                from.display(),
                chains_said(&done.shards),
                done.took_ms,
                match &done.kept {
                    Some(kept) => format!(
                        "the shards it replaced are kept in {} (delete it once the restored state serves)",
                        kept.display()
                    ),
                    None => "state.dir held no shards before".to_owned(),
                }
            );
        }
        Command::State {
            what:
                StateCommand::Backup {
                    config,
                    sets,
                    to,
                    into,
                    keep,
                },
        } => {
            let config = load(config.as_ref(), &sets)?;
            init_logging(&config.log.level);
            let (done, rotated) = match (to, into) {
                (Some(_), _) if keep.is_some() => {
                    anyhow::bail!("--keep goes with --into DIR (the backups in DIR); --to makes one backup and removes none")
                }
                (Some(to), _) => (
                    sluice::app::state_backup::backup(&config, &to).map_err(anyhow::Error::msg)?,
                    None,
                ),
                (None, Some(into)) => {
                    let r = sluice::app::state_backup_rotation::backup_into(&config, &into, keep)
                        .map_err(anyhow::Error::msg)?;
                    let rest = (r.kept, r.removed, into);
                    (r.taken, Some(rest))
                }
                (None, None) => anyhow::bail!("--to DIR or --into DIR"),
            };
            println!(
                "state.dir {} backed up to {}: {}; {} MB {} in {:.0} ms{}. To restore: stop sluice, then `sluice state restore --from {}` with the service's config",
                config.state.dir,
                done.to.display(),
                chains_said(&done.shards),
                done.bytes / 1_000_000,
                if done.moved {
                    "hard-linked (state.dir's file system: it outlives pruning, not that disk)"
                } else {
                    "copied"
                },
                done.took_ms,
                match done.retries {
                    0 => String::new(),
                    n => format!(" ({n} chain(s) pruned under the linking, taken again)"),
                },
                done.to.display()
            );
            if let Some((kept, removed, into)) = rotated {
                let names = |ps: &[std::path::PathBuf]| -> String {
                    let n: Vec<String> = ps
                        .iter()
                        .map(|p| {
                            p.file_name()
                                .unwrap_or_default()
                                .to_string_lossy()
                                .into_owned()
                        })
                        .collect();
                    n.join(", ")
                };
                println!(
                    "{} holds {} backup(s): {}{}",
                    into.display(),
                    kept.len(),
                    names(&kept),
                    if removed.is_empty() {
                        String::new()
                    } else {
                        format!("; removed: {}", names(&removed))
                    }
                );
            }
        }
        Command::State {
            what:
                StateCommand::Rescale {
                    config,
                    sets,
                    fault_stop_mid_swap,
                },
        } => {
            use sluice::app::rescale;
            let config = load(config.as_ref(), &sets)?;
            init_logging(&config.log.level);
            let to = rescale::shard_count(&config)?;
            let fault = if fault_stop_mid_swap {
                rescale::Fault::StopMidSwap
            } else {
                rescale::Fault::None
            };
            let done = rescale::rescale(&config, to, fault)?;
            if done.resumed {
                println!(
                    "state.dir {}: an interrupted rescale's swap finished ({} shard(s) now; the old ones are in {}); run this again to re-deal over another count",
                    config.state.dir,
                    done.to,
                    done.kept.display()
                );
                return Ok(std::process::ExitCode::SUCCESS);
            }
            let per: Vec<String> = done
                .keys_per_shard
                .iter()
                .enumerate()
                .map(|(j, n)| match done.partitions_per_shard.get(j) {
                    Some(p) => format!("shard {j}: {n}, {p} input partition(s)"),
                    None => format!("shard {j}: {n}"),
                })
                .collect();
            println!(
                "state.dir {} re-dealt from {} to {} shard(s): {} key(s) ({}) in {:.0} ms; the old shards are kept in {} (delete it once the new count serves)",
                config.state.dir,
                done.from,
                done.to,
                done.keys,
                per.join(", "),
                done.took_ms,
                done.kept.display()
            );
            if let Some(seq) = done.progress {
                println!("exactly_once: each new shard's transactional.id committed a progress record naming its checkpoint {seq}; a start restores it");
            }
        }
        Command::Cluster {
            what: ClusterCommand::Status { socket, json },
        } => {
            return admin_command(&socket, "cluster status", |a| {
                let Some(body) = a.strip_prefix("ok ") else {
                    return a.to_owned();
                };
                if json {
                    return body.to_owned();
                }
                serde_json::from_str::<sluice::ingest::kafka::status::ClusterStatus>(body)
                    .map_or_else(|_| body.to_owned(), |s| s.table())
            });
        }
        Command::Host { verb } => return Ok(host_command(verb)),
        Command::Reload { socket, model } => {
            let command = model.map_or_else(|| "reload".to_owned(), |m| format!("reload {m}"));
            return admin_command(&socket, &command, str::to_owned);
        }
        Command::Run { config, sets } => {
            let config = load(config.as_ref(), &sets)?;
            init_logging(&config.log.level);
            install_signal_handlers()?;
            run_service(&config)?;
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

/// Each shard's checkpoint chain as a backup or a restore took it.
fn chains_said(shards: &[Option<(u64, usize)>]) -> String {
    let per: Vec<String> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| match s {
            Some((seq, chain)) => format!("shard {i}: checkpoint {seq} ({chain} in its chain)"),
            None => format!("shard {i}: no checkpoint"),
        })
        .collect();
    per.join(", ")
}

/// How long `check-config --connect` asks each Kafka client.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

fn check_config(file: &std::path::Path, sets: &[String], connect: bool) -> std::process::ExitCode {
    // Every stage runs: a refused value keeps its default so the later checks (serde,
    // validation, then this machine: model, placement, memory, directories) still report.
    let (config, mut problems) = match Config::load_lenient(Some(file), sets) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return std::process::ExitCode::from(1);
        }
    };
    let machine = sluice::preflight::check(&config);
    problems.extend(machine.problems);
    if !machine.placements.is_empty() {
        problems.extend(sluice::app::state_check::refusals(
            &config,
            machine.placements.len(),
        ));
    }
    let mut warnings = machine.warnings;
    warnings.extend(sluice::app::state_check::warnings(&config));
    let mut found = Vec::new();
    if connect {
        if config.ingest.kafka.enabled() {
            let reached = sluice::ingest::kafka::reach::reach(&config, CONNECT_PATIENCE);
            problems.extend(reached.problems);
            warnings.extend(reached.warnings);
            found = reached.found;
        } else {
            warnings.push(
                "--connect: Kafka is off (ingest.kafka.brokers is empty): no broker asked".into(),
            );
        }
    }
    for w in &warnings {
        eprintln!("{}: warning: {w}", file.display());
    }
    if problems.is_empty() {
        let cpus: Vec<usize> = machine.placements.iter().map(|p| p.cpu).collect();
        println!(
            "{}: ok ({} shard(s) on CPUs {cpus:?}; {})",
            file.display(),
            machine.placements.len(),
            machine.topology
        );
        if !found.is_empty() {
            println!(
                "  Kafka at {}, as the consumer and the producer:\n    {}",
                config.ingest.kafka.brokers,
                found.join("\n    ")
            );
        }
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!(
            "{}: invalid ({} problem(s)):\n  - {}",
            file.display(),
            problems.len(),
            problems.join("\n  - ")
        );
        std::process::ExitCode::from(1)
    }
}

/// `sluice host ...`: exit 0 done / all match, 1 a mismatch or a failed write (put back),
/// 2 could not run (bad config, host, NIC or journal: nothing changed).
fn host_command(verb: HostVerb) -> std::process::ExitCode {
    use sluice::host::{self, Root, Session};
    let code = |c: u8| std::process::ExitCode::from(c);
    let (args, json) = match &verb {
        HostVerb::Plan(a) | HostVerb::Apply(a) | HostVerb::Revert(a) => (a.clone(), false),
        HostVerb::Check { args, json } => (args.clone(), *json),
    };
    let root = Root::new(&args.root);
    let journal = args
        .journal
        .clone()
        .unwrap_or_else(|| host::default_journal(&root));
    if let HostVerb::Revert(_) = verb {
        return match host::revert(&root, &journal) {
            Ok(done) => {
                for r in &done {
                    println!("  {:<44} {}: {}", r.name, r.target, r.outcome);
                }
                let bad = done.iter().filter(|r| !r.ok).count();
                println!(
                    "{} value(s) looked at, {bad} not restored{}",
                    done.len(),
                    if bad == 0 {
                        "; journal removed"
                    } else {
                        "; journal kept"
                    }
                );
                code(u8::from(bad > 0))
            }
            Err(e) => {
                eprintln!("sluice host revert: {e}");
                code(2)
            }
        };
    }
    let config = match Config::load(args.config.as_deref(), &args.sets) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice host: {e}");
            return code(2);
        }
    };
    let session = match Session::new(&config, root, args.nic.as_deref(), args.systemd_dropin) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice host: {e}");
            return code(2);
        }
    };
    let f = &session.facts;
    let header = format!(
        "shards on CPUs {} ({} shard(s)), housekeeping CPUs {}, NIC {} (root {})",
        host::root::format_cpu_list(&f.shard_cpus),
        f.shard_cpus.len(),
        match f.housekeeping() {
            h if h.is_empty() => "none".to_owned(),
            h => host::root::format_cpu_list(&h),
        },
        f.nic.as_deref().unwrap_or("none"),
        args.root.display()
    );
    match verb {
        HostVerb::Check { .. } => {
            let findings = host::check(&session.root, &session.ops);
            let bad = findings
                .iter()
                .filter(|f| f.skipped.is_none() && !f.ok)
                .count();
            if json {
                let doc = serde_json::json!({
                    "host": header,
                    "settings": findings,
                    "mismatches": bad,
                });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                println!("sluice host check: {header}");
                for f in &findings {
                    match &f.skipped {
                        Some(why) => println!("  skip  {:<44} skipped: {why}", f.name),
                        None => println!(
                            "  {}  {:<44} current {}, wanted {} ({})",
                            if f.ok { "ok  " } else { "DIFF" },
                            f.name,
                            f.current.as_deref().unwrap_or("absent"),
                            f.wanted,
                            f.why
                        ),
                    }
                }
                println!("{bad} setting(s) differ");
            }
            code(u8::from(bad > 0))
        }
        HostVerb::Plan(_) => {
            println!("sluice host plan: {header}");
            print_writes(&host::plan(&session.root, &session.ops));
            for f in host::check(&session.root, &session.ops) {
                if let Some(why) = f.skipped {
                    println!("  skip   {:<44} skipped: {why}", f.name);
                }
            }
            code(0)
        }
        HostVerb::Apply(_) => match host::apply(&session.root, &session.ops, &journal) {
            Ok(writes) => {
                println!("sluice host apply: {header}");
                print_writes(&writes);
                if !writes.is_empty() {
                    println!(
                        "journal: {} (`sluice host revert` puts every value back)",
                        journal.display()
                    );
                }
                code(0)
            }
            Err(e) => {
                eprintln!("sluice host apply: {e}");
                code(if matches!(e, host::HostError::Apply(_)) {
                    1
                } else {
                    2
                })
            }
        },
        HostVerb::Revert(_) => code(2),
    }
}

fn print_writes(writes: &[sluice::host::Write]) {
    for w in writes {
        println!(
            "  write  {:<44} {}: {} -> {}",
            w.name,
            w.target.describe(),
            w.from.as_deref().map_or("(absent)".to_owned(), one_line),
            one_line(&w.to)
        );
    }
    println!("{} write(s)", writes.len());
}

/// Whole-file values on one line.
fn one_line(s: &str) -> String {
    if s.contains('\n') {
        format!("{:?}", s)
    } else {
        s.to_owned()
    }
}

/// `sluice run`: start, tell systemd when ready, keep its status and watchdog fed, reload on
/// SIGHUP, stop on SIGINT/SIGTERM with the report.
fn run_service(config: &Config) -> anyhow::Result<()> {
    use sluice::service::{Heartbeats, Systemd};
    for m in sluice::host::mismatches(config) {
        tracing::warn!("host: {m} (see `sluice host plan`)");
    }
    let mut systemd = Systemd::from_env();
    systemd.starting("starting: loading the model, binding sockets, restoring state");
    let running = sluice::app::start_with_progress(config, &mut |ready, shards| {
        systemd.starting(&format!(
            "starting: {ready} of {shards} shard(s) ready (restoring state, loading the model)"
        ));
    })?;
    let shards = running.placements.len();
    let counters = running.counters().to_vec();
    let sum =
        |f: fn(&sluice::metrics::ShardCounters) -> u64| counters.iter().map(|c| f(c)).sum::<u64>();
    let metrics = running
        .metrics_addr
        .map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"));
    println!(
        "sluice listening on {} ({shards} shard(s), {}); metrics {metrics}",
        running.local_addr,
        running.driver.name(),
    );
    systemd.ready(&format!(
        "ready: {shards} shard(s), {} on {}, {} key(s) restored, model v{}, metrics {metrics}",
        running.driver.name(),
        running.local_addr,
        sum(|c| c.hot_keys.get() + c.spilled_keys.get()),
        running.model_version().unwrap_or(0),
    ));
    // Look at the heartbeats twice per watchdog interval (systemd's advice), at least every
    // second without one; every shard wakes at least each shards.park_timeout_us.
    let look_every = systemd.watchdog().map_or(Duration::from_secs(1), |w| {
        (w / 2).min(Duration::from_secs(1))
    });
    let park = Duration::from_micros(config.shards.park_timeout_us);
    if look_every < park * 2 {
        tracing::warn!(
            ?look_every,
            ?park,
            "WatchdogSec/2 is shorter than two shards.park_timeout_us: an idle shard may look stuck"
        );
    }
    let status_every = Duration::from_secs(5);
    let mut heartbeats = Heartbeats::default();
    let mut next_look = std::time::Instant::now();
    let (mut next_status, mut last_events, mut last_drops) = (
        std::time::Instant::now() + status_every,
        sum(|c| c.events_received.get()),
        sum(sluice::metrics::ShardCounters::dropped_total),
    );
    let mut reported_stuck = false;
    // Until a signal, or a shard stopping the service itself (its error is returned below,
    // after the drain, for a non-zero exit and a restart by systemd).
    while !SIGNALLED.load(Ordering::SeqCst) && !running.stopping() {
        std::thread::sleep(Duration::from_millis(20));
        let now = std::time::Instant::now();
        if now >= next_look {
            next_look = now + look_every;
            let loops: Vec<u64> = counters.iter().map(|c| c.loops.get()).collect();
            let stuck = heartbeats.check(&loops, now);
            if stuck.is_empty() {
                if reported_stuck {
                    tracing::info!("every shard's loop turns again; watchdog fed");
                    reported_stuck = false;
                }
                systemd.watchdog_ping();
            } else if !reported_stuck && stuck.iter().any(|(_, d)| *d >= look_every) {
                reported_stuck = true;
                tracing::error!(?stuck, "shard loop(s) not turning: watchdog not fed");
                systemd.status(&format!(
                    "stuck: shard(s) {stuck:?} not turning their loops"
                ));
            }
        }
        if now >= next_status {
            let secs = (now + status_every - next_status).as_secs_f64().max(1e-3);
            next_status = now + status_every;
            let events = sum(|c| c.events_received.get());
            let drops = sum(sluice::metrics::ShardCounters::dropped_total);
            if !reported_stuck {
                let kafka = if config.ingest.kafka.enabled() {
                    kafka_status(
                        sum(|c| c.kafka_partitions_attached.get()),
                        &running.kafka_unconsumed(),
                    )
                } else {
                    String::new()
                };
                systemd.status(&format!(
                    "serving: {shards} shard(s), {}, model v{}, {:.0} events/s, {} key(s) hot, {} dropped in the last {:.0} s{kafka}",
                    running.driver.name(),
                    counters.iter().map(|c| c.model_version.get()).max().unwrap_or(0),
                    (events - last_events) as f64 / secs,
                    sum(|c| c.hot_keys.get()),
                    drops - last_drops,
                    secs,
                ));
            }
            (last_events, last_drops) = (events, drops);
        }
        if RELOAD.swap(false, Ordering::SeqCst) {
            // SIGHUP: re-read model.path; a bad file is refused and the old model serves on.
            match running.reload(None) {
                Ok(v) => tracing::info!(version = v, "SIGHUP: model reloaded"),
                Err(why) => {
                    tracing::error!("SIGHUP: model refused, previous version keeps serving: {why}")
                }
            }
        }
    }
    systemd.stopping("stopping: draining rings, flushing replies, last checkpoint");
    eprintln!("sluice: stopping: draining rings and flushing replies");
    let (report, failure) = running.stop_with_report();
    print!("{}", report.render());
    write_hgrm(config, &report)?;
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// The status line's Kafka part: partitions attached, and the cause of broker trouble
/// librdkafka reported within `TROUBLE_WINDOW` (a refused password, a TLS handshake, no
/// connection), so `systemctl status` says why nothing is attached, as `cluster status` does;
/// and the input partitions added since the deal that no shard consumes.
fn kafka_status(
    attached: u64,
    unconsumed: &[sluice::ingest::kafka::topic_watch::Unconsumed],
) -> String {
    use sluice::ingest::kafka::client_errors::{newest, TROUBLE_WINDOW};
    let trouble = newest(TROUBLE_WINDOW)
        .map(|(kind, said)| format!(", Kafka {}: {said}", kind.label()))
        .unwrap_or_default();
    let added: i64 = unconsumed.iter().map(|u| u.partitions).sum();
    let added = if added > 0 {
        format!(", {added} partition(s) added to input topics consumed by no shard (see the log)")
    } else {
        String::new()
    };
    format!("; Kafka: {attached} partition(s) attached{added}{trouble}")
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

#[cfg(test)]
mod tests {
    use super::kafka_status;
    use sluice::ingest::kafka::topic_watch::Unconsumed;

    #[test]
    fn the_status_lines_kafka_part_names_attached_and_unconsumed_partitions() {
        // No client of this process reported trouble: no cause part.
        assert_eq!(kafka_status(4, &[]), "; Kafka: 4 partition(s) attached");
        let added = [
            Unconsumed {
                topic: "events".into(),
                partitions: 2,
                records: Some(20),
            },
            Unconsumed {
                topic: "clicks".into(),
                partitions: 1,
                records: None,
            },
        ];
        assert_eq!(
            kafka_status(4, &added),
            "; Kafka: 4 partition(s) attached, 3 partition(s) added to input topics consumed by no shard (see the log)"
        );
    }
}
