//! Helpers for tests and fuzzing that craft bad input on purpose, and the veth pair the AF_XDP
//! tests and benchmark run on. Not used by the service.

pub mod veth;

/// Byte offset of the `events` vector's length in a valid EventBatch buffer, found the way a
/// reader walks it (root offset -> table -> vtable -> field -> vector), so a test can make the
/// length lie. None if `bytes` is not laid out like an EventBatch.
pub fn events_len_offset(b: &[u8]) -> Option<usize> {
    let u32_at = |p: usize| Some(u32::from_le_bytes(b.get(p..p + 4)?.try_into().ok()?) as usize);
    let root = u32_at(0)?;
    let soffset = i32::from_le_bytes(b.get(root..root + 4)?.try_into().ok()?);
    let vtable = usize::try_from(root as i64 - i64::from(soffset)).ok()?;
    let field = usize::from(u16::from_le_bytes(
        b.get(vtable + 4..vtable + 6)?.try_into().ok()?,
    ));
    Some(root + field + u32_at(root + field)?)
}
