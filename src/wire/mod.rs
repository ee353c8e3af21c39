//! The wire contract (schemas/*.fbs, ../shared/WIRE.md): verified, zero-copy reading of
//! EventBatch datagrams and reusable-buffer writing of ScoreBatch replies.
// Reached by the network: no index that could panic (hardening issue; tests may index).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

mod decode;
mod encode;

pub use decode::{DecodeError, Decoder, EventKind, EventView, Events};
pub use encode::{
    event_batch_bytes_max, read_scores, score_batch_bytes_max, scores_per_datagram,
    EventBatchEncoder, EventIn, ScoreBatchEncoder, ScoreOut, SCORE_BATCH_OVERHEAD_BYTES,
    SCORE_ENCODED_BYTES_MAX,
};

/// flatc output, committed; `tests/schema_drift.rs` regenerates it and fails on any difference.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn, missing_docs, non_snake_case, mismatched_lifetime_syntaxes)]
#[rustfmt::skip]
pub mod event_generated {
    include!("generated/event_generated.rs");
}

#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn, missing_docs, non_snake_case, mismatched_lifetime_syntaxes)]
#[rustfmt::skip]
pub mod score_generated {
    include!("generated/score_generated.rs");
}

pub use event_generated::sluice::wire as ev;
pub use score_generated::sluice::wire as sc;
