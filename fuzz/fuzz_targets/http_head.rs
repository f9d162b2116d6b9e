//! `HeadReader` and `BodyReader` on a stream of pipelined requests, fed in arbitrary pieces.
//!
//! Input: 4 parameter bytes, then the request stream.
//! - byte 0: bits 0–2 give the largest piece (1 << n bytes); with byte 1, the seed of the splits;
//! - byte 1: also which bodies are read in discard mode (bit `i % 8` for request `i`);
//! - byte 2: 0 for the default head limits (SPEC §3), else small limits derived from it;
//! - byte 3: the largest body, `byte * 8 + 1`.
//!
//! Invariants: no panic; a read never grows the buffer; a head is returned only once its blank
//! line was fed, and "need more" only while it was not (and the buffer is within the limits); a
//! body is exactly its framing says; and the outcomes do not depend on how the stream was split
//! (the same bytes are parsed whole and compared).

#![no_main]

use bytes::{Bytes, BytesMut};
use fedbroker_core::http::{BodyFraming, BodyProgress, BodyReader, HeadReader, Limits, RequestHead};
use fedbroker_core::HttpError;
use fedbroker_fuzz::{Cursor, XorShift};
use libfuzzer_sys::fuzz_target;

#[derive(Debug)]
struct Params {
    limits: Limits,
    max_body: usize,
    discard_mask: u8,
    piece_max: u32,
    seed: u32,
}

/// What the readers made of the stream, in order.
#[derive(Debug, PartialEq)]
enum Outcome {
    Head(RequestHead),
    Body(Bytes),
    Error(HttpError),
}

/// How a run ended when it did not end with an error: the bytes left over and whether a body
/// was being read.
#[derive(Debug, PartialEq)]
struct Pending {
    leftover: Vec<u8>,
    in_body: bool,
}

fn params(c: &mut Cursor<'_>) -> Params {
    let (b0, b1, b2, b3) = (c.u8(), c.u8(), c.u8(), c.u8());
    let limits = if b2 == 0 {
        Limits::default()
    } else {
        let b = usize::from(b2);
        Limits {
            max_request_line: 4 + b % 97,
            max_head: 8 + b * 2,
            max_headers: 1 + b % 9,
        }
    };
    Params {
        limits,
        max_body: usize::from(b3) * 8 + 1,
        discard_mask: b1,
        piece_max: 1 << (b0 & 7),
        seed: u32::from(b0 >> 3) << 8 | u32::from(b1),
    }
}

/// Whether `b` contains the end of a head: a blank line, CRLF or bare LF.
fn has_blank_line(b: &[u8]) -> bool {
    b.windows(2).any(|w| w == b"\n\n") || b.windows(3).any(|w| w == b"\n\r\n")
}

/// Parses `stream` fed in pieces of `piece()` bytes, checking the per-call invariants.
fn run(p: &Params, stream: &[u8], mut piece: impl FnMut() -> usize) -> (Vec<Outcome>, Option<Pending>) {
    let mut heads = HeadReader::new(p.limits);
    let mut buf = BytesMut::new();
    let mut body: Option<(BodyReader, BodyFraming, bool)> = None;
    let mut outcomes = Vec::new();
    let mut fed = 0;
    let mut requests = 0usize;
    while fed < stream.len() {
        let n = piece().clamp(1, stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let before = buf.len();
            // Offset in `stream` of the first byte of `buf`.
            let start = fed - before;
            if let Some((reader, framing, discard)) = &mut body {
                let result = reader.read(&mut buf);
                assert!(buf.len() <= before, "body read grew the buffer");
                match result {
                    Ok(BodyProgress::NeedMore) => {
                        match *framing {
                            BodyFraming::Length(n) if !*discard => {
                                assert!((buf.len() as u64) < n, "need more with the body in the buffer")
                            }
                            _ => assert!(buf.is_empty(), "need more with bytes left unread"),
                        }
                        break;
                    }
                    Ok(BodyProgress::Done(b)) => {
                        assert!(b.len() <= p.max_body, "body over the limit");
                        if *discard {
                            assert!(b.is_empty(), "discarded body returned bytes");
                        } else if let BodyFraming::Length(n) = *framing {
                            assert_eq!(b.len() as u64, n, "Content-Length body of the wrong size");
                            assert_eq!(&b[..], &stream[start..start + b.len()], "body bytes differ");
                        }
                        outcomes.push(Outcome::Body(b));
                        body = None;
                    }
                    Err(e) => {
                        assert!(
                            matches!(e, HttpError::BadChunked | HttpError::PayloadTooLarge { .. }),
                            "unexpected body error {e:?}"
                        );
                        outcomes.push(Outcome::Error(e));
                        return (outcomes, None);
                    }
                }
                continue;
            }
            let result = heads.read(&mut buf);
            assert!(buf.len() <= before, "head read grew the buffer");
            let consumed = &stream[start..start + (before - buf.len())];
            match result {
                Ok(None) => {
                    assert!(
                        consumed.iter().all(|&b| b == b'\r' || b == b'\n'),
                        "need more, yet consumed request bytes"
                    );
                    assert!(!has_blank_line(&buf), "need more with a blank line in the buffer");
                    let bound = p.limits.max_head.max(p.limits.max_request_line + 1);
                    assert!(buf.len() <= bound, "need more with {} bytes buffered", buf.len());
                    break;
                }
                Ok(Some(head)) => {
                    let skipped = consumed.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
                    let head_bytes = &consumed[skipped..];
                    assert!(
                        head_bytes.ends_with(b"\n\n") || head_bytes.ends_with(b"\n\r\n"),
                        "head returned before its blank line"
                    );
                    assert!(
                        !has_blank_line(&head_bytes[..head_bytes.len() - 1]),
                        "head read past its first blank line"
                    );
                    assert!(head_bytes.len() <= p.limits.max_head, "head over max_head");
                    assert!(head.headers().len() <= p.limits.max_headers, "too many headers");
                    let framing = head.framing();
                    outcomes.push(Outcome::Head(head.clone()));
                    if framing.has_body() {
                        let discard = p.discard_mask >> (requests % 8) & 1 == 1;
                        body = Some((BodyReader::new(framing, p.max_body, discard), framing, discard));
                    }
                    requests += 1;
                }
                Err(e) => {
                    assert!((400..600).contains(&e.status()), "head error {e:?} is not a 4xx/5xx");
                    outcomes.push(Outcome::Error(e));
                    return (outcomes, None);
                }
            }
        }
    }
    let pending = Pending {
        leftover: buf.to_vec(),
        in_body: body.is_some(),
    };
    (outcomes, Some(pending))
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let p = params(&mut c);
    let stream = c.rest();

    let mut rng = XorShift::new(p.seed);
    let split = run(&p, stream, || (rng.next_u32() % p.piece_max) as usize + 1);
    let whole = run(&p, stream, || usize::MAX);
    assert_eq!(split, whole, "the outcome depends on how the input was split");
});
