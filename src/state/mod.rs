//! Per-shard keyed state. The core is synchronous: `apply(now, event)` updates a record and
//! returns a copy for the feature stage; no I/O.

mod hot_table;
mod record;

pub use hot_table::{HotTable, StateError, Update};
pub use record::Record;
