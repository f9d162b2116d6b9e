//! `parse_targets`, the id list of a multi-target send (`POST /7,8,9`, docs/patterns.md §1),
//! against a reference model written here.
//!
//! Input: 1 mode byte, then the rest.
//! - mode bit 0 clear: the rest is the list, as it stands in the path;
//! - mode bit 0 set: a list is built: `u16` LE element count (at most 2047), then one byte per
//!   element (0 past the end): `0` the next fresh id (`1`, `2`, … by position, so that a short
//!   input reaches the 1024 limit), `1..=0x3f` a repeat of the element that many places back,
//!   `0x40..=0x5f` one of the awkward spellings of `AWKWARD`, and anything else raw bytes
//!   (`b & 7` of them, which may hold commas); elements are joined with `,`.
//!
//! The model: the list splits on `,`; every element must be a canonical id (ASCII digits only,
//! no leading zero or sign, 1..=2^31-1); at most `MAX_TARGETS` elements; no id twice. Errors in
//! this order: the first element (among the first `MAX_TARGETS`) that is not an id, naming its
//! first 24 bytes; then too many elements; then the first element, in request order, that
//! repeats an earlier one. Invariants: the same list or the same error as the model; and an
//! accepted list is exactly its ids written back with `,` (the canonical form is unique).

#![no_main]

use std::collections::HashSet;

use fedbroker_core::{parse_targets, Id, TargetError, MAX_TARGETS};
use fedbroker_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;

/// Spellings that are, or nearly are, ids.
const AWKWARD: [&[u8]; 32] = [
    b"",
    b"0",
    b"00",
    b"01",
    b"+1",
    b"-1",
    b" 1",
    b"1 ",
    b"1\t",
    b"2147483647",
    b"2147483648",
    b"4294967295",
    b"4294967297",
    b"9999999999",
    b"99999999999",
    b"02147483647",
    b"1e3",
    b"0x10",
    b"%31",
    b"1.0",
    b"\xd9\xa1",
    b"\xef\xbc\x91",
    b"1;x",
    b"1/2",
    b"7",
    b"1024",
    b"1025",
    b"18446744073709551617",
    b"abcdefghijklmnopqrstuvwxyz0123456789",
    b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0\xef\xee\xed\xec\xeb\xea\xe9\xe8\xe7",
    b"2",
    b"3",
];

/// The model's errors, comparable with the core's.
#[derive(Debug, PartialEq, Eq)]
enum ModelError {
    Invalid(String),
    TooMany,
    Duplicate(u32),
}

fn canonical(e: &[u8]) -> Option<u32> {
    if e.is_empty() || e.len() > 10 || e[0] == b'0' || !e.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = e.iter().fold(0u64, |v, &d| v * 10 + u64::from(d - b'0'));
    (v <= 0x7fff_ffff).then_some(v as u32)
}

fn model(list: &[u8]) -> Result<Vec<u32>, ModelError> {
    let elements: Vec<&[u8]> = list.split(|&b| b == b',').collect();
    let mut ids = Vec::new();
    for e in elements.iter().take(MAX_TARGETS) {
        match canonical(e) {
            Some(v) => ids.push(v),
            None => {
                let cut = &e[..e.len().min(24)];
                return Err(ModelError::Invalid(String::from_utf8_lossy(cut).into_owned()));
            }
        }
    }
    if elements.len() > MAX_TARGETS {
        return Err(ModelError::TooMany);
    }
    let mut seen = HashSet::new();
    for &v in &ids {
        if !seen.insert(v) {
            return Err(ModelError::Duplicate(v));
        }
    }
    Ok(ids)
}

fn build(c: &mut Cursor<'_>) -> Vec<u8> {
    let count = usize::from(c.u16() & 0x7ff);
    let mut elements: Vec<Vec<u8>> = Vec::with_capacity(count);
    for i in 0..count {
        let b = c.u8();
        let e = match b {
            0 => (i + 1).to_string().into_bytes(),
            1..=0x3f => match i.checked_sub(usize::from(b)) {
                Some(j) => elements[j].clone(),
                None => (i + 1).to_string().into_bytes(),
            },
            0x40..=0x5f => AWKWARD[usize::from(b - 0x40)].to_vec(),
            _ => c.bytes(usize::from(b & 7)).to_vec(),
        };
        elements.push(e);
    }
    elements.join(&b","[..])
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let built;
    let list: &[u8] = if mode & 1 == 0 {
        c.rest()
    } else {
        built = build(&mut c);
        &built
    };
    let got = parse_targets(list);
    let expected = model(list);
    let shown = || String::from_utf8_lossy(&list[..list.len().min(200)]).into_owned();
    match (&got, &expected) {
        (Ok(ids), Ok(model_ids)) => {
            let values: Vec<u32> = ids.iter().map(|id| id.get()).collect();
            assert_eq!(&values, model_ids, "ids of {:?}", shown());
            assert!(ids.len() <= MAX_TARGETS);
            let written: Vec<String> = ids.iter().map(Id::to_string).collect();
            assert_eq!(written.join(",").as_bytes(), list, "an accepted list is not canonical");
        }
        (Err(e), Err(m)) => {
            let same = match (e, m) {
                (TargetError::InvalidId(s), ModelError::Invalid(t)) => s == t,
                (TargetError::TooMany, ModelError::TooMany) => true,
                (TargetError::Duplicate(id), ModelError::Duplicate(v)) => id.get() == *v,
                _ => false,
            };
            assert!(same, "{:?}: core says {e:?}, the model {m:?}", shown());
            let text = e.to_string();
            assert!(text.contains("target list"), "{text}");
        }
        _ => panic!("{:?}: core says {got:?}, the model {expected:?}", shown()),
    }
});
