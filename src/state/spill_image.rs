//! How a record is stored in the spill store: packed. A record's image is its 80-byte head
//! and every window word (400 bytes with the default features), but a spilled key is mostly
//! an idle one, whose window buckets are mostly zero. Stored as it is, each move in or out
//! puts 400 bytes through RocksDB's memtable, its flushes and every compaction after; packed,
//! a zero word costs one bit.
//!
//! Packed value: a tag byte, the head's counters as LEB128 varints (the key is the store's
//! key, the slot flags are never stored), its three times as the newest one and two
//! distances back from it, a bitmap of the non-zero words, then those words (8 bytes LE
//! each). A value exactly one full image long is a full image (`Record::read_image`): what
//! stores written before this format hold, and what a restored spill journal puts back; a
//! packed value that would come out that long gets one pad byte, so the two never meet.

use super::record::{image_bytes, Record, OCCUPIED};

const PACKED: u8 = 0xA5;

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7F).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Longest a packed value of `words` words can be (a buffer sized for it never grows).
pub fn packed_max(words: usize) -> usize {
    // Tag, eight varints of at most 10 bytes, the bitmap, every word, the pad byte.
    1 + 8 * 10 + words.div_ceil(8) + 8 * words + 1
}

/// Append `rec` and its `words` packed.
pub fn pack(rec: &Record, words: &[u64], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(PACKED);
    for v in [
        rec.observations,
        rec.feedbacks,
        rec.positives,
        rec.seq_end,
        rec.source,
        rec.last_event_ns,
        rec.last_event_ns.wrapping_sub(rec.first_event_ns),
        rec.last_event_ns.wrapping_sub(rec.prev_event_ns),
    ] {
        put_varint(v, out);
    }
    let map_at = out.len();
    out.resize(map_at + words.len().div_ceil(8), 0);
    for (i, &w) in words.iter().enumerate() {
        if w != 0 {
            out[map_at + i / 8] |= 1 << (i % 8);
        }
    }
    for &w in words.iter().filter(|&&w| w != 0) {
        out.extend_from_slice(&w.to_le_bytes());
    }
    if out.len() - start == image_bytes(words.len()) {
        out.push(0);
    }
}

/// The record stored for `key` (its words into `words`), packed or a full image; None if the
/// value is neither.
pub fn unpack(key: u64, b: &[u8], words: &mut [u64]) -> Option<Record> {
    if b.len() == image_bytes(words.len()) {
        return Record::read_image(b, words);
    }
    let (&tag, mut rest) = b.split_first()?;
    if tag != PACKED {
        return None;
    }
    let mut head = [0u64; 8];
    for h in &mut head {
        *h = varint(&mut rest)?;
    }
    let map_len = words.len().div_ceil(8);
    if rest.len() < map_len {
        return None;
    }
    let (map, mut tail) = rest.split_at(map_len);
    for (i, w) in words.iter_mut().enumerate() {
        *w = if map[i / 8] & (1 << (i % 8)) != 0 {
            let (bytes, more) = tail.split_first_chunk::<8>()?;
            tail = more;
            u64::from_le_bytes(*bytes)
        } else {
            0
        };
    }
    // Nothing may follow but the pad byte.
    if !(tail.is_empty() || tail == [0]) {
        return None;
    }
    Some(Record {
        key,
        observations: head[0],
        feedbacks: head[1],
        positives: head[2],
        seq_end: head[3],
        source: head[4],
        last_event_ns: head[5],
        first_event_ns: head[5].wrapping_sub(head[6]),
        prev_event_ns: head[5].wrapping_sub(head[7]),
        flags: OCCUPIED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(h: [u64; 9]) -> Record {
        Record {
            key: h[0],
            observations: h[1],
            feedbacks: h[2],
            positives: h[3],
            seq_end: h[4],
            source: h[5],
            last_event_ns: h[6],
            first_event_ns: h[7],
            prev_event_ns: h[8],
            flags: OCCUPIED,
        }
    }

    proptest! {
        /// Any record, any words (mostly zero or not) comes back as it went in, and a full
        /// image is read as one.
        #[test]
        fn packed_and_full_images_round_trip(
            h in prop::array::uniform9(any::<u64>()),
            words in prop::collection::vec(
                prop_oneof![3 => Just(0u64), 1 => any::<u64>()],
                0..70,
            ),
        ) {
            let rec = record(h);
            let mut packed = Vec::new();
            pack(&rec, &words, &mut packed);
            prop_assert_ne!(packed.len(), image_bytes(words.len()));
            prop_assert!(packed.len() <= packed_max(words.len()));
            let mut back = vec![7u64; words.len()];
            prop_assert_eq!(unpack(rec.key, &packed, &mut back), Some(rec));
            prop_assert_eq!(&back, &words);

            let mut full = Vec::new();
            rec.append_image(&words, &mut full);
            let mut back = vec![7u64; words.len()];
            prop_assert_eq!(unpack(rec.key, &full, &mut back), Some(rec));
            prop_assert_eq!(&back, &words);

            // Cut short or with trailing bytes: refused, never misread.
            for cut in 0..packed.len() {
                if cut != image_bytes(words.len()) {
                    prop_assert_eq!(unpack(rec.key, &packed[..cut], &mut back), None);
                }
            }
            let mut long = packed.clone();
            long.extend_from_slice(&[1, 2]);
            if long.len() != image_bytes(words.len()) {
                prop_assert_eq!(unpack(rec.key, &long, &mut back), None);
            }
        }
    }

    #[test]
    fn an_idle_key_packs_small() {
        let t = 1_700_000_000_000_000_000u64;
        let rec = Record {
            key: 42,
            observations: 3,
            seq_end: 3,
            last_event_ns: t,
            first_event_ns: t - 2_000_000_000,
            prev_event_ns: t - 1_000_000_000,
            flags: OCCUPIED,
            ..Record::default()
        };
        let mut words = vec![0u64; 40];
        words[3] = 2.5f64.to_bits();
        words[17] = 3;
        let mut packed = Vec::new();
        pack(&rec, &words, &mut packed);
        // 400 bytes as a full image.
        assert!(packed.len() <= 48, "{} bytes", packed.len());
    }
}
