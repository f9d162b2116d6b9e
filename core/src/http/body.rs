//! Request body decoders: `Content-Length` and chunked (RFC 9112 §6, §7.1), bounded by the maximum
//! message size, optionally discarding what they read.

use bytes::{Buf, Bytes, BytesMut};

use super::BodyFraming;
use crate::HttpError;

/// Most bytes of chunk extensions on one chunk line, and of trailer fields in all.
const MAX_CHUNK_METADATA: usize = 4096;

/// What [`BodyReader::read`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyProgress {
    /// The body is not complete yet: append more bytes and call again.
    NeedMore,
    /// The whole body (empty when discarding).
    Done(Bytes),
}

/// Reads one request body off the front of a buffer, across as many calls as the bytes take.
#[derive(Debug)]
pub struct BodyReader {
    state: State,
    max: usize,
    discard: bool,
    /// Body bytes collected so far (chunked only: a `Content-Length` body is split off whole).
    body: BytesMut,
    /// Decoded body bytes so far, kept or discarded.
    total: u64,
    /// Trailer bytes so far (they are read and dropped).
    trailer_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length { remaining: u64 },
    ChunkSize { value: u64, digits: u8 },
    ChunkExt { value: u64, len: usize },
    ChunkSizeLf { value: u64 },
    ChunkData { remaining: u64 },
    ChunkDataCr,
    ChunkDataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLineLf,
    TrailerEndLf,
    Done,
}

impl BodyReader {
    /// A reader for a body framed as `framing`, refusing more than `max` decoded bytes with `413`.
    /// With `discard`, bytes are consumed and dropped (the request was already answered).
    pub fn new(framing: BodyFraming, max: usize, discard: bool) -> Self {
        let state = match framing {
            BodyFraming::Length(n) => State::Length { remaining: n },
            BodyFraming::Chunked => State::ChunkSize { value: 0, digits: 0 },
        };
        BodyReader {
            state,
            max,
            discard,
            body: BytesMut::new(),
            total: 0,
            trailer_len: 0,
        }
    }

    /// Bytes still expected for a `Content-Length` body (to size the caller's buffer), else 0.
    pub fn remaining_hint(&self) -> usize {
        match self.state {
            State::Length { remaining } => usize::try_from(remaining).unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    /// Consumes body bytes from the front of `buf`. Errors are final.
    pub fn read(&mut self, buf: &mut BytesMut) -> Result<BodyProgress, HttpError> {
        loop {
            match self.state {
                State::Done => return Ok(BodyProgress::Done(self.body.split().freeze())),
                State::Length { remaining } => {
                    if remaining > self.max as u64 {
                        return Err(HttpError::PayloadTooLarge { limit: self.max });
                    }
                    let remaining = remaining as usize;
                    if self.discard {
                        let n = remaining.min(buf.len());
                        buf.advance(n);
                        self.state = State::Length {
                            remaining: (remaining - n) as u64,
                        };
                        if remaining > n {
                            return Ok(BodyProgress::NeedMore);
                        }
                        self.state = State::Done;
                    } else if buf.len() >= remaining {
                        // The one copy of the payload was into `buf`; from here it is shared.
                        self.state = State::Done;
                        return Ok(BodyProgress::Done(buf.split_to(remaining).freeze()));
                    } else {
                        return Ok(BodyProgress::NeedMore);
                    }
                }
                State::ChunkData { remaining } => {
                    if buf.is_empty() {
                        return Ok(BodyProgress::NeedMore);
                    }
                    let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(buf.len());
                    if self.discard {
                        buf.advance(n);
                    } else {
                        self.body.extend_from_slice(&buf[..n]);
                        buf.advance(n);
                    }
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::ChunkDataCr
                    } else {
                        State::ChunkData { remaining: left }
                    };
                }
                _ => {
                    let Some(&b) = buf.first() else {
                        return Ok(BodyProgress::NeedMore);
                    };
                    buf.advance(1);
                    self.step(b)?;
                }
            }
        }
    }

    /// One byte of chunk framing.
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        self.state = match (self.state, b) {
            (State::ChunkSize { value, digits }, _) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return Err(HttpError::BadChunked);
                }
                let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                State::ChunkSize {
                    value: value * 16 + d,
                    digits: digits + 1,
                }
            }
            (State::ChunkSize { value, digits }, b';' | b' ' | b'\t') if digits > 0 => {
                State::ChunkExt { value, len: 0 }
            }
            (State::ChunkSize { value, digits }, b'\r') if digits > 0 => State::ChunkSizeLf { value },
            (State::ChunkExt { value, .. }, b'\r') => State::ChunkSizeLf { value },
            (State::ChunkExt { value, len }, _) if b != b'\n' && len < MAX_CHUNK_METADATA => {
                State::ChunkExt { value, len: len + 1 }
            }
            (State::ChunkSizeLf { value }, b'\n') => {
                if value == 0 {
                    State::TrailerLineStart
                } else {
                    self.total = self.total.saturating_add(value);
                    if self.total > self.max as u64 {
                        return Err(HttpError::PayloadTooLarge { limit: self.max });
                    }
                    if !self.discard {
                        self.body.reserve(value as usize);
                    }
                    State::ChunkData { remaining: value }
                }
            }
            (State::ChunkDataCr, b'\r') => State::ChunkDataLf,
            (State::ChunkDataLf, b'\n') => State::ChunkSize { value: 0, digits: 0 },
            (State::TrailerLineStart, b'\r') => State::TrailerEndLf,
            (State::TrailerLine, b'\r') => State::TrailerLineLf,
            (State::TrailerLineStart | State::TrailerLine, _) if b != b'\n' => {
                self.count_metadata()?;
                State::TrailerLine
            }
            (State::TrailerLineLf, b'\n') => State::TrailerLineStart,
            (State::TrailerEndLf, b'\n') => State::Done,
            _ => return Err(HttpError::BadChunked),
        };
        Ok(())
    }

    fn count_metadata(&mut self) -> Result<(), HttpError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_CHUNK_METADATA {
            return Err(HttpError::BadChunked);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(framing: BodyFraming, input: &[u8]) -> Result<BodyProgress, HttpError> {
        BodyReader::new(framing, 100, false).read(&mut BytesMut::from(input))
    }

    #[test]
    fn chunked() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut buf = BytesMut::from(&body[..]);
        let mut r = BodyReader::new(BodyFraming::Chunked, 100, false);
        assert_eq!(
            r.read(&mut buf).unwrap(),
            BodyProgress::Done(Bytes::from_static(b"hello world"))
        );
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn chunked_refusals() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"0\r\n\rX",
            b"ffffffffffffffffff\r\n",
        ] {
            assert_eq!(
                decode(BodyFraming::Chunked, bad),
                Err(HttpError::BadChunked),
                "{:?}",
                bad
            );
        }
        assert_eq!(
            decode(BodyFraming::Chunked, b"65\r\n"),
            Err(HttpError::PayloadTooLarge { limit: 100 })
        );
        assert_eq!(
            decode(BodyFraming::Length(101), b""),
            Err(HttpError::PayloadTooLarge { limit: 100 })
        );
    }

    #[test]
    fn length_and_discard() {
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        let mut r = BodyReader::new(BodyFraming::Length(4), 100, false);
        assert_eq!(
            r.read(&mut buf).unwrap(),
            BodyProgress::Done(Bytes::from_static(b"abcd"))
        );
        assert_eq!(&buf[..], b"ef");
        let mut r = BodyReader::new(BodyFraming::Length(10), 100, true);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(r.read(&mut buf).unwrap(), BodyProgress::NeedMore);
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&b"ghijKL"[..]);
        assert_eq!(r.read(&mut buf).unwrap(), BodyProgress::Done(Bytes::new()));
        assert_eq!(&buf[..], b"KL");
    }

    proptest::proptest! {
        /// Any split of a chunked body into reads decodes to the same bytes.
        #[test]
        fn chunked_any_split(data in proptest::collection::vec(proptest::collection::vec(0u8..=255, 1..20), 0..6),
                             cuts in proptest::collection::vec(0usize..200, 0..8)) {
            let mut wire = Vec::new();
            for chunk in &data {
                wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut r = BodyReader::new(BodyFraming::Chunked, 1000, false);
            let mut buf = BytesMut::new();
            let mut last = 0;
            let mut out = None;
            for c in cuts.into_iter().chain([wire.len()]) {
                buf.extend_from_slice(&wire[last..c]);
                last = c;
                if let BodyProgress::Done(b) = r.read(&mut buf).unwrap() {
                    out = Some(b);
                    break;
                }
            }
            proptest::prop_assert_eq!(out.unwrap().to_vec(), data.concat());
        }
    }
}
