//! `sluice-bench blast`: receive capacity of each UDP driver on the veth pair, with a sender
//! that costs little per packet. The generator's UDP sockets (and its reading of every reply)
//! saturate the sending vCPU before any driver does; this sender writes prebuilt Ethernet
//! frames (valid EventBatches, checksums done) to an AF_PACKET socket on the sending side with
//! `sendmmsg`, paced to --rate datagrams/s for --seconds, and ignores the replies (a socket
//! there absorbs them unread, so no ICMP comes back). Per driver and rate: datagrams sent,
//! received by sluice, lost (the difference, and where the service saw it), and the shard
//! thread's and the whole machine's CPU per datagram. Capacity: the highest rate with no loss.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::machine::CpuSample;
use sluice::config::Config;
use sluice::ingest::xdp::frame;
use sluice::testing::veth::{self, RawSender, VethPair, RAW_BATCH};
use sluice::wire::{EventBatchEncoder, EventIn};

pub struct BlastBench<'a> {
    pub drivers: &'a [String],
    pub rates: &'a [u64],
    pub batch: usize,
    /// Producer features on each event (a larger datagram for the same events).
    pub features: usize,
    pub seconds: f64,
    pub repeat: usize,
    pub out: &'a Path,
    pub sets: &'a [String],
}

#[derive(Serialize)]
struct BlastRun {
    driver: String,
    rate: u64,
    batch: usize,
    features: usize,
    /// Ethernet frame bytes of the datagrams sent (mean over the frames cycled through).
    frame_bytes: usize,
    /// Datagrams the sender got out, and per second of its own elapsed time.
    sent: u64,
    sent_per_s: f64,
    received: u64,
    lost: u64,
    /// Where the service saw loss: the kernel at the socket (SO_RXQ_OVFL), the AF_XDP socket
    /// (fill ring empty / RX ring full), frames refused by the parser.
    socket_drops: u64,
    xdp_kernel_dropped: u64,
    xdp_frames_dropped: u64,
    shard_cpu_us_per_datagram: Option<f64>,
    machine_cpu_us_per_datagram: Option<f64>,
}

#[derive(Serialize)]
struct BlastResults {
    machine: super::machine::Machine,
    command: String,
    sluice_config: Vec<String>,
    runs: Vec<BlastRun>,
    /// Per driver: the highest rate with nothing lost in every repeat.
    capacity: Vec<(String, Option<u64>)>,
}

/// Frames to cycle through: distinct keys so the shard does its usual state work.
fn frames(batch: usize, features: usize, target: SocketAddr, src: SocketAddr) -> Vec<Vec<u8>> {
    let mut enc = EventBatchEncoder::new();
    let values: Vec<f32> = (0..features).map(|f| f as f32 + 0.5).collect();
    (0..1024u64)
        .map(|i| {
            let payload = enc
                .encode((0..batch as u64).map(|j| EventIn {
                    key: (i * batch as u64 + j) % 100_000,
                    seq: i * batch as u64 + j,
                    amount: 10.0,
                    features: &values,
                    ..EventIn::default()
                }))
                .to_vec();
            frame::encode((veth::TX_MAC, veth::RX_MAC), &[], src, target, &payload)
        })
        .collect()
}

/// Send `frames` round-robin out of the sending interface at `rate` a second for `seconds`;
/// returns (sent, elapsed).
fn send(frames: &[Vec<u8>], rate: u64, seconds: f64) -> anyhow::Result<(u64, Duration)> {
    let sender = RawSender::new().map_err(|e| anyhow::anyhow!(e))?;
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let total = (rate as f64 * seconds) as u64;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    let mut batch: Vec<&[u8]> = Vec::with_capacity(RAW_BATCH);
    while sent < total {
        // Pace by batch: the batch due now goes out, then wait for the next one's time.
        let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        batch.clear();
        let n = RAW_BATCH.min((total - sent) as usize);
        batch.extend((0..n).map(|i| refs[(next + i) % refs.len()]));
        let went = sender.send(&batch).context("sendmmsg")?;
        next += went;
        sent += went as u64;
    }
    Ok((sent, start.elapsed()))
}

fn one(
    pair: &VethPair,
    config: &Config,
    driver: &str,
    rate: u64,
    b: &BlastBench,
    cpu: usize,
) -> anyhow::Result<BlastRun> {
    let running = pair
        .in_rx(|| sluice::app::start(config))
        .map_err(|e| anyhow::anyhow!(e))??;
    let target = running.local_addr;
    let src = SocketAddr::new(veth::TX_IP.into(), 40_000);
    let frames = frames(b.batch, b.features, target, src);
    let frame_bytes = frames.iter().map(Vec::len).sum::<usize>() / frames.len().max(1);
    let cpu0 = CpuSample::now();
    let result = pair
        .in_tx(|| {
            // Replies land here unread (a full buffer drops them): no ICMP goes back.
            let sink = std::net::UdpSocket::bind(src)?;
            sluice::topology::pin_current(cpu)?;
            let r = send(&frames, rate, b.seconds);
            drop(sink);
            r
        })
        .map_err(|e| anyhow::anyhow!(e))?;
    // Let the shard take what is still queued.
    std::thread::sleep(Duration::from_millis(500));
    let cpu1 = CpuSample::now();
    let c = running.counters();
    let sum = |f: &dyn Fn(&sluice::metrics::ShardCounters) -> u64| c.iter().map(|c| f(c)).sum();
    let received: u64 = sum(&|c| c.datagrams_received.get());
    let socket_drops = sum(&|c| c.socket_drops.get());
    let xdp_kernel_dropped = sum(&|c| c.xdp_kernel_dropped.get());
    let xdp_frames_dropped = sum(&|c| c.xdp_frames_dropped.iter().map(|d| d.get()).sum());
    running.stop()?;
    let (sent, took) = result?;
    let (shard_cpu, machine_cpu) = cpu0.per_datagram(&cpu1, sent);
    let run = BlastRun {
        driver: driver.to_owned(),
        rate,
        batch: b.batch,
        features: b.features,
        frame_bytes,
        sent,
        sent_per_s: sent as f64 / took.as_secs_f64(),
        received,
        lost: sent.saturating_sub(received),
        socket_drops,
        xdp_kernel_dropped,
        xdp_frames_dropped,
        shard_cpu_us_per_datagram: shard_cpu,
        machine_cpu_us_per_datagram: machine_cpu,
    };
    eprintln!(
        "  {driver:<9} @ {rate:>7}/s, {} B frames: sent {} ({:.0}/s), received {}, lost {} (socket {}, xdp {}), CPU/datagram shard {:.2} us, machine {:.2} us",
        run.frame_bytes,
        run.sent,
        run.sent_per_s,
        run.received,
        run.lost,
        run.socket_drops,
        run.xdp_kernel_dropped,
        run.shard_cpu_us_per_datagram.unwrap_or(f64::NAN),
        run.machine_cpu_us_per_datagram.unwrap_or(f64::NAN)
    );
    Ok(run)
}

pub fn run(b: &BlastBench) -> anyhow::Result<()> {
    let pair = VethPair::new().map_err(|e| anyhow::anyhow!("veth pair: {e}"))?;
    let (service_cpus, generator_cpus) = super::machine::split_cpus(1)?;
    let sender_cpu = generator_cpus.first().copied().unwrap_or(0);
    let mut runs = Vec::new();
    let mut configs = Vec::new();
    for _ in 0..b.repeat.max(1) {
        for &rate in b.rates {
            for driver in b.drivers {
                let mut sets = vec![
                    format!("ingest.udp.listen={}:7600", veth::RX_IP),
                    format!("ingest.udp.interface={}", veth::RX_IF),
                    format!("ingest.udp.driver={driver}"),
                    format!("shards.cores={service_cpus:?}"),
                    format!("shards.helper_cores={service_cpus:?}"),
                    "log.level=warn".to_owned(),
                ];
                sets.extend(b.sets.iter().cloned());
                let config =
                    Config::from_layers(None, &sets).map_err(|e| anyhow::anyhow!("{e}"))?;
                runs.push(one(&pair, &config, driver, rate, b, sender_cpu)?);
                configs = sets;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    let capacity = b
        .drivers
        .iter()
        .map(|d| {
            let max = b
                .rates
                .iter()
                .copied()
                .filter(|&r| {
                    runs.iter()
                        .filter(|x| &x.driver == d && x.rate == r)
                        .all(|x| x.lost == 0)
                })
                .max();
            (d.clone(), max)
        })
        .collect::<Vec<_>>();
    for (d, c) in &capacity {
        println!("  {d:<9} capacity (no datagram lost, every repeat): {c:?} datagrams/s");
    }
    std::fs::create_dir_all(b.out).with_context(|| format!("creating {}", b.out.display()))?;
    let results = BlastResults {
        machine: super::machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        sluice_config: configs,
        runs,
        capacity,
    };
    std::fs::write(
        b.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!("  wrote {}", b.out.join("results.json").display());
    Ok(())
}
