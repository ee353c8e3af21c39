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

/// Whether `invariant!` checks run in this build: debug builds, and optimised builds with the
/// `assertions` feature (the test run). The shipped binary has them off.
pub const INVARIANTS_CHECKED: bool = cfg!(any(debug_assertions, feature = "assertions"));

/// `debug_assert!` that the optimised test run checks too (see `INVARIANTS_CHECKED`). Off,
/// the condition is still type-checked and then compiled away.
#[macro_export]
macro_rules! invariant {
    ($($arg:tt)*) => {
        if $crate::INVARIANTS_CHECKED {
            assert!($($arg)*);
        }
    };
}

/// `debug_assert_eq!` that the optimised test run checks too.
#[macro_export]
macro_rules! invariant_eq {
    ($($arg:tt)*) => {
        if $crate::INVARIANTS_CHECKED {
            assert_eq!($($arg)*);
        }
    };
}

pub mod admin;
pub mod app;
pub mod clock;
pub mod config;
pub mod control;
pub mod egress;
pub mod error_text;
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
pub mod sim;
pub mod state;
pub mod testing;
pub mod topology;
pub mod wake;
pub mod wire;

#[cfg(test)]
mod assertion_tests {
    /// The test run checks the core's invariants (`scripts/test` builds with the
    /// `assertions` feature): without it they would go unchecked in optimised tests.
    #[test]
    fn invariants_are_checked_in_the_tests() {
        assert!(
            std::hint::black_box(crate::INVARIANTS_CHECKED),
            "invariants are off: run the tests with --features assertions (scripts/test does)"
        );
        let broken = std::panic::catch_unwind(|| invariant!(std::hint::black_box(1) == 2));
        assert!(broken.is_err(), "a broken invariant must panic");
    }
}
