//! Incremental UTF-8 validation for text messages that arrive in pieces, failing as soon as the
//! bytes so far cannot start valid UTF-8.

/// Validates a byte stream fed in pieces.
#[derive(Clone, Debug, Default)]
pub struct Utf8Validator {
    /// An incomplete sequence carried over from the previous piece (at most 3 bytes).
    pending: [u8; 4],
    pending_len: usize,
    /// Sticky: once invalid, always invalid.
    invalid: bool,
}

impl Utf8Validator {
    /// Feeds the next piece; `false` once the stream is invalid.
    pub fn feed(&mut self, data: &[u8]) -> bool {
        if !self.invalid && !self.feed_inner(data) {
            self.invalid = true;
        }
        !self.invalid
    }

    fn feed_inner(&mut self, mut data: &[u8]) -> bool {
        // Complete a sequence left over from the previous piece, byte by byte.
        while self.pending_len > 0 {
            let Some((&b, rest)) = data.split_first() else {
                return true;
            };
            self.pending[self.pending_len] = b;
            self.pending_len += 1;
            data = rest;
            match std::str::from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return false,
                Err(_) if self.pending_len == 4 => return false,
                Err(_) => {}
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                true
            }
        }
    }

    /// Whether the stream ends on a character boundary (call at the end of the message).
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0 && !self.invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn agrees_with_std_on_any_split(data in proptest::collection::vec(any::<u8>(), 0..32), cuts in proptest::collection::vec(0usize..32, 0..6),
                                        text in "\\PC{0,12}") {
            for data in [data, text.into_bytes()] {
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
                cuts.sort_unstable();
                let mut v = Utf8Validator::default();
                let mut ok = true;
                let mut last = 0;
                for c in cuts.into_iter().chain([data.len()]) {
                    ok &= v.feed(&data[last..c]);
                    last = c;
                }
                let valid = std::str::from_utf8(&data).is_ok();
                prop_assert_eq!(ok && v.is_complete(), valid);
            }
        }
    }
}
