//! Property tests of the value format: encode/decode round trips, and decoding any bytes
//! never panics and, when it succeeds, re-encodes to the same bytes (the format is canonical).

use bytes::Bytes;
use fedbroker_store::{decode_value, encode_value, Kind, Record, StoreError, VALUE_HEADER_LEN};
use proptest::prelude::*;

fn record() -> impl Strategy<Value = Record> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        any::<Option<u32>>(),
        proptest::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(id, seq, at_ms, skip, from, payload)| Record {
            id,
            seq,
            at_ms,
            kind: if skip { Kind::Skip } else { Kind::Message },
            // A skip has no sender.
            from: if skip { None } else { from },
            payload: Bytes::from(payload),
        })
}

proptest! {
    #[test]
    fn decode_of_encode_is_identity(r in record()) {
        let bytes = encode_value(&r);
        prop_assert_eq!(bytes.len(), VALUE_HEADER_LEN + r.payload.len() + if r.from.is_some() { 4 } else { 0 });
        prop_assert_eq!(decode_value(r.id, r.seq, &bytes), Ok(r));
    }

    #[test]
    fn decode_of_any_bytes_never_panics(id in any::<u32>(), seq in any::<u64>(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        match decode_value(id, seq, &bytes) {
            Ok(r) => {
                prop_assert_eq!((r.id, r.seq), (id, seq));
                prop_assert_eq!(encode_value(&r), bytes);
            }
            Err(e) => {
                let right_record = matches!(e, StoreError::Corrupt { id: i, seq: s, .. } if i == id && s == seq);
                prop_assert!(right_record, "{:?}", e);
            }
        }
    }

    #[test]
    fn a_valid_header_decodes_with_any_payload(at_ms in any::<u64>(), kind in 0u8..2, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = vec![1];
        bytes.extend_from_slice(&at_ms.to_be_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(&payload);
        let r = decode_value(3, 4, &bytes).unwrap();
        prop_assert_eq!(r.at_ms, at_ms);
        prop_assert_eq!(&r.payload[..], &payload[..]);
    }
}
