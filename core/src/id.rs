//! Node ids (SPEC §2).

use std::fmt;
use std::num::NonZeroU32;

/// The id of a node on a broker: a decimal integer in `1..=2^31-1`.
///
/// Only the canonical form parses: digits only, no sign, no leading zero, no whitespace.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Id(NonZeroU32);

impl Id {
    /// The largest valid id, 2^31-1.
    pub const MAX: u32 = 0x7fff_ffff;

    /// Parses the canonical decimal form; `None` for anything else.
    pub fn parse(s: &[u8]) -> Option<Id> {
        // At most 10 digits, first one not '0'.
        if s.is_empty() || s.len() > 10 || s[0] == b'0' {
            return None;
        }
        let mut v: u64 = 0;
        for &c in s {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u64::from(c - b'0');
        }
        if v > u64::from(Self::MAX) {
            return None;
        }
        // v >= 1 since the first digit is not '0'.
        NonZeroU32::new(v as u32).map(Id)
    }

    /// Builds an id from a number, `None` when out of range.
    pub fn new(v: u32) -> Option<Id> {
        if v > Self::MAX {
            return None;
        }
        NonZeroU32::new(v).map(Id)
    }

    /// The numeric value.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_only() {
        assert_eq!(Id::parse(b"1").map(Id::get), Some(1));
        assert_eq!(Id::parse(b"42").map(Id::get), Some(42));
        assert_eq!(Id::parse(b"2147483647").map(Id::get), Some(2147483647));
        for bad in [
            &b""[..],
            b"0",
            b"2147483648",
            b"9999999999",
            b"99999999999",
            b"042",
            b"+4",
            b"-4",
            b"4a",
            b" 4",
            b"4 ",
            b"abc",
            b"%34",
        ] {
            assert_eq!(Id::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #[test]
        fn display_round_trips(v in 1u32..=Id::MAX) {
            let id = Id::new(v).unwrap();
            proptest::prop_assert_eq!(Id::parse(id.to_string().as_bytes()), Some(id));
        }
    }
}
