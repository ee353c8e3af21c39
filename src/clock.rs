//! Clocks at the edge. The core takes `now` as an argument; these read it. Kernel receive
//! timestamps are CLOCK_REALTIME, so latency is measured on that clock (vDSO, no syscall).

use std::time::{SystemTime, UNIX_EPOCH};

/// ns since the Unix epoch.
#[inline]
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
