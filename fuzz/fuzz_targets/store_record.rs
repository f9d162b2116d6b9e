//! `fedbroker_store::decode_value`, the reader of a stored record's value, on arbitrary bytes
//! (what a damaged or foreign store could hold).
//!
//! Input: the record's key, `u32` BE id and `u64` BE seq (zero-padded when the input is
//! shorter than 12 bytes), then the value.
//!
//! Invariants: decoding never panics; an error is `Corrupt` and names the record it was given;
//! a decoded record has that id and seq, and encodes back to exactly the input's value (the
//! format is canonical), which decodes to the same record again.

#![no_main]

use fedbroker_store::{decode_value, encode_value, StoreError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value) = data.split_at(data.len().min(12));
    let mut k = [0u8; 12];
    k[..key.len()].copy_from_slice(key);
    let id = u32::from_be_bytes(k[..4].try_into().unwrap());
    let seq = u64::from_be_bytes(k[4..].try_into().unwrap());
    match decode_value(id, seq, value) {
        Ok(r) => {
            assert_eq!((r.id, r.seq), (id, seq));
            let again = encode_value(&r);
            assert_eq!(again, value, "the value format is not canonical");
            assert_eq!(decode_value(id, seq, &again), Ok(r));
        }
        Err(StoreError::Corrupt { id: i, seq: s, reason }) => {
            assert_eq!((i, s), (id, seq));
            assert!(!reason.is_empty());
        }
        Err(e) => panic!("decode answered {e:?}, not Corrupt"),
    }
});
