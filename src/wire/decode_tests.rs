use proptest::prelude::*;

use super::*;
use crate::config::Wire;
use crate::testing::events_len_offset;
use crate::wire::{EventBatchEncoder, EventIn};

fn wire() -> Wire {
    Wire {
        datagram_bytes_max: 4096,
        batch_events_max: 16,
        features_per_event_max: 4,
        depth_max: 8,
        tables_max: 17,
    }
}

fn batch(n: usize, features: &[f32]) -> Vec<u8> {
    let mut enc = EventBatchEncoder::new();
    enc.encode((0..n as u64).map(|i| EventIn {
        key: i,
        seq: 100 + i,
        amount: 1.5,
        features,
        ..EventIn::default()
    }))
    .to_vec()
}

#[test]
fn a_valid_batch_reads_back_in_place() {
    let d = Decoder::new(&wire());
    let bytes = batch(3, &[1.0, 2.0]);
    let events = d.decode(&bytes).unwrap();
    assert_eq!(events.len(), 3);
    let v: Vec<_> = events
        .iter()
        .map(|e| (e.key(), e.seq(), e.amount(), e.kind()))
        .collect();
    assert_eq!(v[2], (2, 102, 1.5, EventKind::Observation));
    let mut f = [0.0; 4];
    assert_eq!(events.iter().next().unwrap().copy_features(&mut f), 2);
    assert_eq!(f[..2], [1.0, 2.0]);
}

#[test]
fn each_kind_of_bad_datagram_gets_its_reason() {
    let d = Decoder::new(&wire());
    let good = batch(2, &[]);

    let mut wrong_id = good.clone();
    wrong_id[4..8].copy_from_slice(b"XXXX");
    assert_eq!(d.decode(&wrong_id).err(), Some(DecodeError::UnknownSchema));

    assert_eq!(d.decode(&good[..5]).err(), Some(DecodeError::TooShort));
    assert_eq!(
        d.decode(&good[..good.len() / 2])
            .err()
            .map(|e| e == DecodeError::OutOfBounds || e == DecodeError::Malformed),
        Some(true)
    );

    let mut lying = good.clone();
    let at = events_len_offset(&lying).unwrap();
    assert_eq!(
        u32::from_le_bytes(lying[at..at + 4].try_into().unwrap()),
        2,
        "found the events length"
    );
    lying[at..at + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    assert_eq!(d.decode(&lying).err(), Some(DecodeError::OutOfBounds));

    let big = vec![0u8; 4097];
    assert_eq!(d.decode(&big).err(), Some(DecodeError::Oversize));

    // With tables_max at its floor (events + 1) the verifier stops a long batch first;
    // with room to spare, the event count check does.
    assert_eq!(
        d.decode(&batch(17, &[])).err(),
        Some(DecodeError::TooManyTables)
    );
    let roomy = Decoder::new(&Wire {
        tables_max: 100,
        ..wire()
    });
    assert_eq!(
        roomy.decode(&batch(17, &[])).err(),
        Some(DecodeError::TooManyEvents)
    );
    assert_eq!(
        d.decode(&batch(1, &[0.0; 5])).err(),
        Some(DecodeError::TooManyFeatures)
    );
    assert_eq!(
        d.decode(&batch(1, &[f32::NAN])).err(),
        Some(DecodeError::BadValue)
    );
}

#[test]
fn nesting_and_table_limits_are_enforced() {
    // The verifier counts table depth: EventBatch > Event is 2 (config validation refuses
    // depth_max < 2); a limit below that must refuse every batch.
    let shallow = Decoder::new(&Wire {
        depth_max: 1,
        ..wire()
    });
    assert_eq!(
        shallow.decode(&batch(1, &[1.0])).err(),
        Some(DecodeError::TooDeep)
    );
    let few_tables = Decoder::new(&Wire {
        tables_max: 3,
        ..wire()
    });
    assert_eq!(
        few_tables.decode(&batch(5, &[])).err(),
        Some(DecodeError::TooManyTables)
    );
}

#[test]
fn bad_kinds_and_labels_are_refused() {
    let d = Decoder::new(&wire());
    let mut enc = EventBatchEncoder::new();
    let fb = |label| EventIn {
        feedback: true,
        label,
        ..EventIn::default()
    };
    assert!(d.decode(enc.encode([fb(1.0), fb(0.0)].into_iter())).is_ok());
    assert_eq!(
        d.decode(enc.encode([fb(0.5)].into_iter())).err(),
        Some(DecodeError::BadValue)
    );
    // An unknown kind (a newer producer's enum value) is refused, not guessed at.
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let e = ev::Event::create(
        &mut fbb,
        &ev::EventArgs {
            key: 1,
            kind: ev::EventKind(7),
            ..ev::EventArgs::default()
        },
    );
    let events = fbb.create_vector(&[e]);
    let root = ev::EventBatch::create(
        &mut fbb,
        &ev::EventBatchArgs {
            events: Some(events),
        },
    );
    ev::finish_event_batch_buffer(&mut fbb, root);
    assert_eq!(
        d.decode(fbb.finished_data()).err(),
        Some(DecodeError::UnknownKind)
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let d = Decoder::new(&wire());
        if let Ok(events) = d.decode(&bytes) {
            for e in events.iter() {
                let mut f = [0.0; 16];
                let _ = (e.key(), e.seq(), e.amount(), e.copy_features(&mut f));
            }
        }
    }

    #[test]
    fn mutated_valid_batches_never_panic_and_what_passes_is_readable(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let d = Decoder::new(&wire());
        let mut bytes = batch(4, &[1.0, 2.0]);
        for (i, v) in flips {
            let at = i.index(bytes.len());
            bytes[at] = v;
        }
        if let Ok(events) = d.decode(&bytes) {
            prop_assert!(events.len() <= 16);
            for e in events.iter() {
                let mut f = [0.0; 16];
                prop_assert!(e.copy_features(&mut f) <= 4);
                prop_assert!(e.amount().is_finite());
            }
        }
    }
}
