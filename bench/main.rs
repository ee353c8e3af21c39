//! sluice-bench: the end-to-end latency harness. An open-loop generator drives sluice and, in
//! the same run, a minimal responder for the same protocol (the floor), so every figure comes
//! with the floor it should be judged against. See bench/README.md.

mod blast;
mod changelog;
mod cold;
mod floor;
mod kafka;
mod machine;
mod overload;
mod report;
mod scaleout;
mod scrape;
mod state;
mod sweep;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

use report::Run;
use sluice::config::Config;
use sluice::loadgen::{self, LoadSpec};
use sluice::testing::veth::{self, VethPair};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    about = "Open-loop, coordinated-omission-correct latency benchmark of sluice against the protocol floor"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand)]
enum Command {
    /// sluice and the floor, one after the other, same load (the default).
    Run,
    /// The floor alone.
    Floor,
    /// sluice alone.
    Sluice,
    /// Durable state, no sockets: fill one shard's state with --keys keys, checkpoint it and
    /// restore it (bytes per key, checkpoint pause and commit time, restore time).
    Checkpoint {
        /// Hot-table capacity (default: every key hot; fewer spill to RocksDB).
        #[arg(long)]
        hot: Option<usize>,
        /// Checkpoints to take: the first full, the rest incremental.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Events on random existing keys before each incremental checkpoint (10 000 = what
        /// 50k events/s bring in one default 200 ms interval).
        #[arg(long, default_value_t = 10_000)]
        churn: u64,
        /// Leave the state directory (OUT/state) in place, restorable by `sluice run`.
        #[arg(long)]
        keep: bool,
    },
    /// More keys than memory, no sockets: a state kept by `checkpoint --keep` (--state)
    /// restored into one shard core, then --events single-event datagrams on --keys keys
    /// (uniform or --zipf) fed in cycles of --cycle datagrams, for each --cold-wait setting in
    /// turn (alternated --repeat times): the shard's time per event, its capacity.
    Cold {
        /// The kept state directory (OUT/state of `checkpoint --keep`).
        #[arg(long)]
        state: PathBuf,
        /// Its hot capacity (as it was filled).
        #[arg(long)]
        hot: usize,
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        /// Datagrams per cycle (what one receive pass takes).
        #[arg(long, default_value_t = 16)]
        cycle: usize,
        #[arg(long, value_delimiter = ',', default_value = "0,256")]
        cold_wait: Vec<usize>,
        /// Wait after the restore until RocksDB has no flush or compaction running or due
        /// (the steady state, not the restored store's compaction debt).
        #[arg(long)]
        quiet_store: bool,
        /// Pin the shard to this CPU.
        #[arg(long)]
        shard_cpu: Option<usize>,
        /// Start a cold-read thread (state.cold_reader = thread) on this CPU.
        #[arg(long)]
        reader_cpu: Option<usize>,
    },
    /// Through Kafka (a local noida-db broker): record append -> Score visible to a
    /// read_committed reader, for sluice and for a plain relay (the broker's floor) in the
    /// same run; sluice's own share beside it. Uses --rate, --keys, --seconds, --warmup,
    /// --shards, --repeat, --out, --set.
    Kafka {
        /// at_least_once or exactly_once.
        #[arg(long, default_value = "at_least_once")]
        delivery: String,
        /// Instead of a paced load: produce this many records first, then time one shard
        /// draining them (its sustained rate), with and without producing Scores.
        #[arg(long)]
        backlog: Option<u64>,
        /// The broker, the load producer and the reader run on these CPUs only (with
        /// `--set shards.cores=[1] --set shards.helper_cores=[0]` and `--load-cpus 0` the shard
        /// has a CPU to itself; default: anywhere).
        #[arg(long, value_delimiter = ',')]
        load_cpus: Vec<usize>,
    },
    /// The changelog topic (exactly_once, `egress.kafka.changelog`), through a local broker:
    /// --keys keys built, then --updates events on them (changelog records and bytes per
    /// event), then a wiped state.dir rebuilt from the changelog (keys/s). Uses --keys,
    /// --shards, --out, --set.
    Changelog {
        #[arg(long, default_value_t = 200_000)]
        updates: u64,
    },
    /// Several instances in one consumer group (group membership, exactly_once, changelog),
    /// through a local broker: for each --instances count, --records records on --keys keys
    /// drained by that many instances once the group split the 12 partitions (records/s),
    /// then one stopped cleanly (handover time, keys rebuilt). Uses --keys, --out, --set.
    Scaleout {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        instances: Vec<usize>,
    },
    /// --rate for --seconds (above capacity), then --then-rate for --then-seconds: drops by
    /// reason, the admitted events' latency, memory, and the time to answer the lighter
    /// load in full again. Uses --batch, --keys, --shards, --repeat, --out, --set.
    Overload {
        #[arg(long, default_value_t = 80_000)]
        then_rate: u64,
        #[arg(long, default_value_t = 10.0)]
        then_seconds: f64,
    },
    /// Receive capacity of each UDP driver on the veth pair (root): prebuilt frames sent
    /// from an AF_PACKET socket at each --rates rate for --seconds, no reply read; datagrams
    /// lost, CPU per datagram. Uses --batch, --seconds, --repeat, --out, --set.
    Blast {
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "af_xdp,io_uring,recvmmsg"
        )]
        drivers: Vec<String>,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "100000,200000,300000,400000"
        )]
        rates: Vec<u64>,
        /// Producer features on each event (0-16): larger datagrams for the same events.
        #[arg(long, default_value_t = 0)]
        features: usize,
    },
    /// The live metrics endpoint: time per scrape (HTTP over loopback, encode included) at
    /// each --scrape-shards count with every metric filled; with --ab N, N pairs of sluice
    /// runs under --rate load scraped every 100 ms and not, alternating (p99.9 of each).
    Scrape {
        #[arg(long, value_delimiter = ',', default_value = "2,64")]
        scrape_shards: Vec<usize>,
        #[arg(long, default_value_t = 200)]
        scrapes: usize,
        #[arg(long, default_value_t = 0)]
        ab: usize,
    },
}

#[derive(clap::Args, Clone, Serialize)]
struct Args {
    /// Events per second.
    #[arg(long, default_value_t = 50_000, global = true)]
    rate: u64,
    /// Events per datagram.
    #[arg(long, default_value_t = 1, global = true)]
    batch: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000, global = true)]
    keys: u64,
    /// Zipf exponent for key popularity (default: uniform).
    #[arg(long, global = true)]
    zipf: Option<f64>,
    /// Seconds of measured load per run (after warm-up).
    #[arg(long, default_value_t = 10.0, global = true)]
    seconds: f64,
    /// Warm-up seconds (sent and checked, not timed).
    #[arg(long, default_value_t = 1.0, global = true)]
    warmup: f64,
    /// Generator sender threads.
    #[arg(long, default_value_t = 1, global = true)]
    senders: usize,
    /// Generator sockets (source ports).
    #[arg(long, default_value_t = 4, global = true)]
    sockets: usize,
    /// sluice shards (pinned to CPUs 0..shards); the generator is pinned to the other CPUs.
    #[arg(long, default_value_t = 1, global = true)]
    shards: usize,
    /// Raise the rate (x1.25 a step) until p99 passes --sweep-p99-us or replies fall under 99%,
    /// then bisect the last step (--sweep-refine).
    #[arg(long, global = true)]
    sweep: bool,
    #[arg(long, default_value_t = 1000.0, global = true)]
    sweep_p99_us: f64,
    /// Most sweep steps per target.
    #[arg(long, default_value_t = 30, global = true)]
    sweep_steps_max: usize,
    /// After the x1.25 steps, bisect this many times between the last rate that held and the
    /// first that did not (3 narrows the 25% bracket to ~3%).
    #[arg(long, default_value_t = 3, global = true)]
    sweep_refine: usize,
    /// Runs per sweep rate; the rate holds if any of them does. Noise on a shared machine only
    /// ever adds latency (a stalled vCPU, a neighbour's burst), so the best of a few runs is
    /// the estimate of what the target can do; every run is still reported.
    #[arg(long, default_value_t = 1, global = true)]
    sweep_tries: usize,
    /// The floor busy-polls a non-blocking socket instead of blocking in recv: a floor that,
    /// like sluice's spinning shards, never waits for the kernel to wake it.
    #[arg(long, global = true)]
    floor_spin: bool,
    /// Seconds to let the machine settle before each run. A sluice run frees its hot table
    /// (~0.5 GiB a shard by default) when it stops; on the dev VM, which reports free memory
    /// to its host (virtio-balloon free page reporting), the following seconds stalled the
    /// next run's generator by 30-45 ms (seen with 3 s of settling, gone with 10 s), and that
    /// landed on whatever ran next: the floor, in an alternating run.
    #[arg(long, default_value_t = 10.0, global = true)]
    settle: f64,
    /// Measure sluice and the floor this many times each, alternating (sluice, floor, sluice,
    /// ...), and report the median of the per-pair ratios: one run on a shared machine is noise.
    #[arg(long, default_value_t = 1, global = true)]
    repeat: usize,
    /// Output directory for results.json, *.hgrm and latency.svg.
    #[arg(long, default_value = "bench/results/latest", global = true)]
    out: PathBuf,
    /// sluice (or the floor) in one network namespace and the generator in another, joined by
    /// a single-queue veth pair (root): the setup the AF_XDP driver is measured on. sluice
    /// listens on 169.254.7.1 (interface xr); add --set ingest.udp.driver=af_xdp to use it.
    #[arg(long, global = true)]
    veth: bool,
    /// sluice config overrides (section.key=value), after the harness's own.
    #[arg(long = "set", global = true)]
    sets: Vec<String>,
}

#[derive(Serialize)]
struct Results {
    machine: machine::Machine,
    command: String,
    /// Every harness option in effect, defaults included (the command shows only those given).
    options: Args,
    sluice_config: Vec<String>,
    runs: Vec<Run>,
    /// sluice / floor for p50 .. max at the same rate: the median over the repeated pairs.
    ratios: Vec<(f64, f64)>,
    sweep: Option<Sweep>,
}

#[derive(Serialize)]
struct Sweep {
    p99_bound_us: f64,
    sluice_max_events_per_s: Option<u64>,
    floor_max_events_per_s: Option<u64>,
    /// The lowest rate that missed the bound, per target: the true maximum lies between it
    /// and the max above (None if no tried rate missed).
    sluice_first_miss_events_per_s: Option<u64>,
    floor_first_miss_events_per_s: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if cfg!(debug_assertions) {
        // The checked build `scripts/test` makes writes the same binary path: figures from it
        // are not the release build's (found in bench results of an earlier session).
        eprintln!(
            "sluice-bench: WARNING: this binary has debug assertions on (the checked build \
             scripts/test leaves in the target dir?): rebuild with `cargo build --release` \
             before measuring; results record it as machine.profile = \"debug\""
        );
    }
    let a = cli.args;
    let (do_sluice, do_floor) = match cli.command.unwrap_or(Command::Run) {
        Command::Run => (true, true),
        Command::Floor => (false, true),
        Command::Sluice => (true, false),
        Command::Checkpoint {
            hot,
            rounds,
            churn,
            keep,
        } => {
            return state::run(a.keys, hot, rounds, churn, keep, &a.out, &a.sets);
        }
        Command::Cold {
            state,
            hot,
            events,
            cycle,
            cold_wait,
            quiet_store,
            shard_cpu,
            reader_cpu,
        } => {
            return cold::run(&cold::ColdBench {
                quiet_store,
                shard_cpu,
                reader_cpu,
                state_dir: &state,
                hot,
                keys: a.keys,
                zipf: a.zipf,
                events,
                cycle,
                waits: &cold_wait,
                repeat: a.repeat,
                out: &a.out,
                sets: &a.sets,
            });
        }
        Command::Scrape {
            scrape_shards,
            scrapes,
            ab,
        } => {
            return scrape::run(&scrape::ScrapeBench {
                shard_counts: &scrape_shards,
                scrapes,
                ab_pairs: ab,
                rate: a.rate,
                keys: a.keys,
                seconds: a.seconds,
                shards: a.shards,
                settle: a.settle,
                out: &a.out,
                sets: &a.sets,
            });
        }
        Command::Overload {
            then_rate,
            then_seconds,
        } => {
            return overload::run(&overload::OverloadBench {
                rate: a.rate,
                seconds: a.seconds,
                then_rate,
                then_seconds,
                batch: a.batch,
                keys: a.keys,
                shards: a.shards,
                repeat: a.repeat,
                out: &a.out,
                sets: &a.sets,
            });
        }
        Command::Scaleout { records, instances } => {
            return scaleout::run(&scaleout::ScaleOutBench {
                records,
                keys: a.keys,
                instances: &instances,
                out: &a.out,
                sets: &a.sets,
            });
        }
        Command::Changelog { updates } => {
            return changelog::run(&changelog::ChangelogBench {
                keys: a.keys,
                updates,
                shards: a.shards,
                out: &a.out,
                sets: &a.sets,
            });
        }
        Command::Blast {
            drivers,
            rates,
            features,
        } => {
            return blast::run(&blast::BlastBench {
                drivers: &drivers,
                rates: &rates,
                batch: a.batch,
                features,
                seconds: a.seconds,
                repeat: a.repeat,
                out: &a.out,
                sets: &a.sets,
            });
        }
        Command::Kafka {
            delivery,
            backlog,
            load_cpus,
        } => {
            if let Some(n) = backlog {
                return kafka::backlog(n, a.keys, &a.out, &a.sets);
            }
            return kafka::run(&kafka::KafkaBench {
                delivery: &delivery,
                rate: a.rate,
                keys: a.keys,
                seconds: a.seconds,
                warmup: a.warmup,
                shards: a.shards,
                repeat: a.repeat,
                out: &a.out,
                sets: &a.sets,
                load_cpus: &load_cpus,
            });
        }
    };
    let (service_cpus, generator_cpus) = machine::split_cpus(a.shards)?;
    let veth = if a.veth {
        Some(VethPair::new().map_err(|e| anyhow::anyhow!("--veth: {e}"))?)
    } else {
        None
    };
    let service_ip: std::net::IpAddr = if a.veth {
        veth::RX_IP.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    let mut sets = vec![
        format!("ingest.udp.listen={service_ip}:0"),
        format!("ingest.udp.interface={}", veth::RX_IF),
        format!("shards.cores={service_cpus:?}"),
        // The generator's CPUs stand for the clients' machines: sluice's helper threads stay
        // on the service's (measured on the 2-vCPU VM, helpers beside the generator took the
        // state.dir p99 from 7-10 ms to 13-21 ms, the generator reading replies late).
        format!("shards.helper_cores={service_cpus:?}"),
        "log.level=warn".to_owned(),
    ];
    sets.extend(a.sets.iter().cloned());
    let config = Config::from_layers(None, &sets).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    remove_old_histograms(&a.out)?;
    eprintln!(
        "sluice-bench: service on CPUs {service_cpus:?}, generator on {}",
        if generator_cpus.is_empty() {
            "any CPU (none left to pin)".to_owned()
        } else {
            format!("{generator_cpus:?}")
        }
    );

    let spec_at = |rate: u64| LoadSpec {
        rate,
        batch: a.batch,
        keys: a.keys,
        zipf: a.zipf,
        duration: Duration::from_secs_f64(a.seconds + a.warmup),
        warmup: Duration::from_secs_f64(a.warmup),
        sockets: a.sockets,
        senders: a.senders,
        cpus: generator_cpus.clone(),
        drain: Duration::from_secs(1),
        bind: a.veth.then_some(veth::TX_IP.into()),
        ..LoadSpec::default()
    };
    let place = Place {
        veth: veth.as_ref(),
        service_ip,
    };
    let mut runs = Vec::new();
    let mut sweep = None;
    if a.sweep {
        let mut s = Sweep {
            p99_bound_us: a.sweep_p99_us,
            sluice_max_events_per_s: None,
            floor_max_events_per_s: None,
            sluice_first_miss_events_per_s: None,
            floor_first_miss_events_per_s: None,
        };
        if do_sluice {
            (s.sluice_max_events_per_s, s.sluice_first_miss_events_per_s) = sweep::find_max(
                &sweep::Bounds::from(&a),
                |rate| run_sluice(&config, &spec_at(rate), &a, &place),
                &mut runs,
            )?;
        }
        if do_floor {
            (s.floor_max_events_per_s, s.floor_first_miss_events_per_s) = sweep::find_max(
                &sweep::Bounds::from(&a),
                |rate| run_floor(&config, &spec_at(rate), &a, service_cpus[0], &place),
                &mut runs,
            )?;
        }
        sweep = Some(s);
    } else {
        for _ in 0..a.repeat.max(1) {
            if do_sluice {
                runs.push(run_sluice(&config, &spec_at(a.rate), &a, &place)?);
            }
            if do_floor {
                runs.push(run_floor(
                    &config,
                    &spec_at(a.rate),
                    &a,
                    service_cpus[0],
                    &place,
                )?);
            }
        }
    }

    let first = |t: &str| runs.iter().find(|r| r.target == t);
    let ratios = median_ratios(&runs);
    let refs: Vec<&Run> = runs.iter().collect();
    print!("{}", report::table(&refs));
    for (p, r) in &ratios {
        println!(
            "  sluice / floor at p{p}: {r:.2}{}",
            if a.repeat > 1 {
                " (median over pairs)"
            } else {
                ""
            }
        );
    }
    if let Some(s) = &sweep {
        println!(
            "  max sustainable (p99 <= {} us, >= 99% replies): sluice {:?} events/s (missed at {:?}), floor {:?} events/s (missed at {:?})",
            s.p99_bound_us,
            s.sluice_max_events_per_s,
            s.sluice_first_miss_events_per_s,
            s.floor_max_events_per_s,
            s.floor_first_miss_events_per_s
        );
        if let (Some(x), Some(f)) = (s.sluice_max_events_per_s, s.floor_max_events_per_s) {
            println!(
                "  sluice / floor max sustainable: {:.2}",
                x as f64 / f as f64
            );
        }
    }
    for (i, r) in runs.iter().enumerate() {
        // The run index keeps repeated runs of one target and rate apart.
        let name = format!("{}-{}-b{}-run{i}.hgrm", r.target, r.rate, r.batch);
        sluice::metrics::write_hgrm(&r.histogram, &a.out.join(&name), 1000.0)?;
    }
    // The plot shows the first run of each target (the sweep's full set would be unreadable).
    let plotted: Vec<&Run> = ["sluice", "floor"]
        .iter()
        .filter_map(|t| first(t))
        .collect();
    report::plot(
        &plotted,
        &format!(
            "sluice vs protocol floor, {} events/s, B={}",
            a.rate, a.batch
        ),
        &a.out.join("latency.svg"),
    )?;
    let results = Results {
        machine: machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        options: a.clone(),
        sluice_config: sets,
        runs,
        ratios,
        sweep,
    };
    std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!(
        "  wrote {}/{{results.json,latency.svg,*.hgrm}}",
        a.out.display()
    );
    Ok(())
}

/// For each percentile, the median over (sluice, floor) pairs at the same rate of their ratio.
fn median_ratios(runs: &[Run]) -> Vec<(f64, f64)> {
    let sluice: Vec<&Run> = runs.iter().filter(|r| r.target == "sluice").collect();
    let floor: Vec<&Run> = runs.iter().filter(|r| r.target == "floor").collect();
    report::PERCENTILES
        .iter()
        .filter_map(|&p| {
            let mut r: Vec<f64> = sluice
                .iter()
                .zip(floor.iter())
                .filter(|(s, f)| s.rate == f.rate && s.batch == f.batch)
                .map(|(s, f)| s.p(p) / f.p(p))
                .collect();
            r.sort_by(f64::total_cmp);
            (!r.is_empty()).then(|| (p, r[r.len() / 2]))
        })
        .collect()
}

/// A directory reused for another run must not mix its `.hgrm` files with the new ones.
fn remove_old_histograms(out: &std::path::Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "hgrm") {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn settle(a: &Args) {
    if a.settle > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(a.settle));
    }
}

/// Where the service and the generator run: one network namespace, or (--veth) two.
struct Place<'a> {
    veth: Option<&'a VethPair>,
    service_ip: std::net::IpAddr,
}

impl Place<'_> {
    /// `f` where the service runs (its threads are born in that namespace).
    fn service<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        match self.veth {
            Some(v) => v.in_rx(f).map_err(|e| anyhow::anyhow!(e)),
            None => Ok(f()),
        }
    }

    fn generator<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        match self.veth {
            Some(v) => v.in_tx(f).map_err(|e| anyhow::anyhow!(e)),
            None => Ok(f()),
        }
    }
}

fn run_sluice(config: &Config, spec: &LoadSpec, a: &Args, place: &Place) -> anyhow::Result<Run> {
    settle(a);
    let running = place.service(|| sluice::app::start(config))??;
    let spec = LoadSpec {
        target: running.local_addr,
        ..spec.clone()
    };
    let cpu0 = machine::CpuSample::now();
    let load = place.generator(|| loadgen::run(&spec))?;
    let cpu1 = machine::CpuSample::now();
    let report = running.stop()?;
    let load = load?;
    let datagrams = load.sent_datagrams;
    let mut run = Run::from_load(
        "sluice", spec.rate, spec.batch, spec.keys, spec.zipf, a.shards, load,
    );
    (
        run.shard_cpu_us_per_datagram,
        run.machine_cpu_us_per_datagram,
    ) = cpu0.per_datagram(&cpu1, datagrams);
    run.internal_us = report.receive_to_emit.as_ref().map(report::percentiles_us);
    if let Some(cold) = report
        .receive_to_emit_cold_key
        .as_ref()
        .filter(|h| !h.is_empty())
    {
        run.internal_cold_key_us = Some(report::percentiles_us(cold));
        run.internal_hot_key_us = report
            .receive_to_emit_hot_key
            .as_ref()
            .map(report::percentiles_us);
    }
    run.socket_drops = Some(report.socket_drops);
    eprintln!(
        "  sluice @ {}/s: p99 {:.1} us, lost {} ({} driver; CPU per datagram: shards {:.2} us, machine {:.2} us)",
        spec.rate,
        run.p(99.0),
        run.lost,
        report.driver,
        run.shard_cpu_us_per_datagram.unwrap_or(f64::NAN),
        run.machine_cpu_us_per_datagram.unwrap_or(f64::NAN)
    );
    Ok(run)
}

fn run_floor(
    config: &Config,
    spec: &LoadSpec,
    a: &Args,
    cpu: usize,
    place: &Place,
) -> anyhow::Result<Run> {
    settle(a);
    let floor = place.service(|| {
        floor::Floor::start(
            Some(cpu),
            config.wire.clone(),
            config.ingest.udp.socket_rcvbuf_bytes,
            a.floor_spin,
            place.service_ip,
        )
    })??;
    let spec = LoadSpec {
        target: floor.addr,
        check_counts: false,
        ..spec.clone()
    };
    let load = place.generator(|| loadgen::run(&spec))?;
    floor.stop()?;
    let run = Run::from_load(
        "floor", spec.rate, spec.batch, spec.keys, spec.zipf, a.shards, load?,
    );
    eprintln!(
        "  floor  @ {}/s: p99 {:.1} us, lost {}",
        spec.rate,
        run.p(99.0),
        run.lost
    );
    Ok(run)
}
