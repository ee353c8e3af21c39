//! EventBatch decoding: the FlatBuffers verifier with limits from config, then checks of the
//! contract's own rules, all before any event is used, so a bad datagram is dropped whole.
//! Fields are read in place from the datagram buffer; nothing is allocated per event on the
//! success path.

use flatbuffers::{InvalidFlatbuffer, VerifierOptions};

use super::ev;
use crate::config::Wire;

/// Why a datagram was refused. `reason()` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram larger than wire.datagram_bytes_max (truncated by the kernel)")]
    Oversize,
    #[error("datagram shorter than a FlatBuffers header")]
    TooShort,
    #[error("file identifier is not \"SLEV\" (unknown schema)")]
    UnknownSchema,
    #[error("offsets or lengths point outside the datagram")]
    OutOfBounds,
    #[error("nesting deeper than wire.depth_max")]
    TooDeep,
    #[error("more tables than wire.tables_max")]
    TooManyTables,
    #[error("malformed FlatBuffer (misaligned, missing required field, or inconsistent)")]
    Malformed,
    #[error("more events than wire.batch_events_max")]
    TooManyEvents,
    #[error("an event has more features than wire.features_per_event_max")]
    TooManyFeatures,
    #[error("an event has an unknown kind")]
    UnknownKind,
    #[error("an event has a non-finite amount or feature, or a Feedback label other than 0 or 1")]
    BadValue,
}

impl DecodeError {
    pub const ALL: [DecodeError; 11] = [
        Self::Oversize,
        Self::TooShort,
        Self::UnknownSchema,
        Self::OutOfBounds,
        Self::TooDeep,
        Self::TooManyTables,
        Self::Malformed,
        Self::TooManyEvents,
        Self::TooManyFeatures,
        Self::UnknownKind,
        Self::BadValue,
    ];

    /// Metrics label (`reason="..."`).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::TooShort => "too_short",
            Self::UnknownSchema => "unknown_schema",
            Self::OutOfBounds => "out_of_bounds",
            Self::TooDeep => "too_deep",
            Self::TooManyTables => "too_many_tables",
            Self::Malformed => "malformed",
            Self::TooManyEvents => "too_many_events",
            Self::TooManyFeatures => "too_many_features",
            Self::UnknownKind => "unknown_kind",
            Self::BadValue => "bad_value",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn from_verifier(e: &InvalidFlatbuffer) -> Self {
        match e {
            InvalidFlatbuffer::RangeOutOfBounds { .. }
            | InvalidFlatbuffer::SignedOffsetOutOfBounds { .. }
            | InvalidFlatbuffer::ApparentSizeTooLarge => Self::OutOfBounds,
            InvalidFlatbuffer::DepthLimitReached => Self::TooDeep,
            InvalidFlatbuffer::TooManyTables => Self::TooManyTables,
            _ => Self::Malformed,
        }
    }
}

/// What an event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    Observation = 0,
    Feedback = 1,
}

/// One verified event, read in place.
#[derive(Clone, Copy)]
pub struct EventView<'a> {
    inner: ev::Event<'a>,
    kind: EventKind,
}

impl<'a> EventView<'a> {
    pub fn key(&self) -> u64 {
        self.inner.key()
    }
    pub fn seq(&self) -> u64 {
        self.inner.seq()
    }
    pub fn ts_ns(&self) -> u64 {
        self.inner.ts_ns()
    }
    pub fn kind(&self) -> EventKind {
        self.kind
    }
    pub fn amount(&self) -> f32 {
        self.inner.amount()
    }
    pub fn label(&self) -> f32 {
        self.inner.label()
    }
    /// Producer features, copied into `out`; returns how many (bounded by the verify step).
    pub fn copy_features(&self, out: &mut [f32]) -> usize {
        let Some(v) = self.inner.features() else {
            return 0;
        };
        let n = v.len().min(out.len());
        for (slot, f) in out.iter_mut().zip(v.iter()) {
            *slot = f;
        }
        n
    }
}

/// Verifies and reads EventBatch datagrams under the configured limits.
#[derive(Debug, Clone)]
pub struct Decoder {
    opts: VerifierOptions,
    datagram_bytes_max: usize,
    batch_events_max: usize,
    features_per_event_max: usize,
}

impl Decoder {
    pub fn new(wire: &Wire) -> Self {
        let opts = VerifierOptions {
            max_depth: wire.depth_max,
            max_tables: wire.tables_max,
            max_apparent_size: wire.datagram_bytes_max.saturating_mul(4),
            ..VerifierOptions::default()
        };
        Self {
            opts,
            datagram_bytes_max: wire.datagram_bytes_max,
            batch_events_max: wire.batch_events_max,
            features_per_event_max: wire.features_per_event_max,
        }
    }

    /// Verify `bytes` as one EventBatch and check every event, then hand back the events.
    /// Nothing is returned unless the whole datagram is acceptable.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Events<'a>, DecodeError> {
        if bytes.len() > self.datagram_bytes_max {
            return Err(DecodeError::Oversize);
        }
        if bytes.len() < 8 {
            return Err(DecodeError::TooShort);
        }
        if !ev::event_batch_buffer_has_identifier(bytes) {
            return Err(DecodeError::UnknownSchema);
        }
        let batch = ev::root_as_event_batch_with_opts(&self.opts, bytes)
            .map_err(|e| DecodeError::from_verifier(&e))?;
        let events = batch.events();
        if events.len() > self.batch_events_max {
            return Err(DecodeError::TooManyEvents);
        }
        for e in events.iter() {
            match e.kind() {
                ev::EventKind::Observation => {}
                ev::EventKind::Feedback => {
                    let l = e.label();
                    if l != 0.0 && l != 1.0 {
                        return Err(DecodeError::BadValue);
                    }
                }
                _ => return Err(DecodeError::UnknownKind),
            }
            if !e.amount().is_finite() {
                return Err(DecodeError::BadValue);
            }
            if let Some(f) = e.features() {
                if f.len() > self.features_per_event_max {
                    return Err(DecodeError::TooManyFeatures);
                }
                if f.iter().any(|x| !x.is_finite()) {
                    return Err(DecodeError::BadValue);
                }
            }
        }
        Ok(Events { events })
    }
}

/// The events of a verified batch.
#[derive(Clone, Copy)]
pub struct Events<'a> {
    events: flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<ev::Event<'a>>>,
}

impl<'a> Events<'a> {
    pub fn len(&self) -> usize {
        self.events.len()
    }
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = EventView<'a>> + 'a {
        self.events.iter().map(|inner| EventView {
            kind: if inner.kind() == ev::EventKind::Feedback {
                EventKind::Feedback
            } else {
                EventKind::Observation
            },
            inner,
        })
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
