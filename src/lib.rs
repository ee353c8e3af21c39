//! sluice: a low-latency ingest appliance for streaming ML.
//!
//! The path of one event, one module each, top-down:
//!
//! ```text
//!  socket ──> ingest ──> wire ──> route ──> state ──> features ──> infer ──> egress ──> socket
//!  (udp:     (io_uring  (verify,  (key ->   (hot      (record ->   (micro-   (ScoreBatch,
//!   SO_REUSE  multishot  zero-     owner,    table,    row)         batched   sendmmsg)
//!   PORT)     | recvmmsg) copy)    SPSC      per                    scorer)
//!                                  rings)    shard)
//!                                   metrics: counters per reason + HDR histograms per shard
//! ```
//!
//! `shard` runs that path on one pinned core (`Shard::tick`); `app` wires shards, rings and
//! sockets together; `config` and `limits` bound every size up front. The core stages
//! (`wire`, `route`, `state`, `features`, `infer`, `shard::ShardCore`) are synchronous and do
//! no I/O; `ingest` and `egress` are the edges.

pub mod admin;
pub mod app;
pub mod clock;
pub mod config;
pub mod control;
pub mod egress;
pub mod features;
pub mod host;
pub mod infer;
pub mod ingest;
pub mod limits;
pub mod loadgen;
pub mod metrics;
pub mod preflight;
pub mod route;
pub mod service;
pub mod shard;
pub mod state;
pub mod testing;
pub mod topology;
pub mod wake;
pub mod wire;
