//! The WebSocket codec and session: `FrameHeader::decode` on arbitrary bytes, the encode → decode
//! round trip of an arbitrary header, and a `WsSession` (role Listener or Echo) driven by an
//! operation sequence with a virtual clock.
//!
//! Session input: 2 parameter bytes, then operations.
//! - byte 0: bit 0 role (0 Listener, 1 Echo); bits 1–3 the maximum message size (index into
//!   `MAX_MESSAGE`); bits 4–7 the ping interval, `1 + n` seconds;
//! - byte 1: the close timeout, `n * 20` ms;
//! - then operations, each a tag byte (`tag % 8`) and its arguments:
//!   `0`, `1` input (`u8` length, bytes); `2` input (`u16` LE length, bytes); `3` advance the clock
//!   (`u16` LE milliseconds) and run due timeouts; `4` drain the outbox (`u8` × 16 bytes, 0 for
//!   all); `5` send a binary message (`u8` × 8 bytes); `6` close (`u8`: reason, bit 7 waits for the
//!   peer); `7` repeated input (`u8` pattern length 1–16, the pattern, `u16` LE repeats; at most
//!   64 KiB).
//!
//! Invariants: no panic; the outbox grows by at most what was fed and sent plus a small constant
//! per frame; what the session writes is a valid stream of server frames (unmasked, final, no
//! reserved bits, control frames ≤ 125 bytes, nothing after Close) and, for a listener, exactly
//! the messages it was asked to send, in order; the receive buffer keeps less than one frame
//! header while the session is live; a deadline exists exactly until the session is finished,
//! and handling it does not spin; once finished it stays finished and writes nothing more; memory
//! stays within a bound of the outbox.

#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Buf, Bytes, BytesMut};
use fedbroker_core::ws::{FrameHeader, OpCode, Role, WsSession, WsTimers, MAX_HEADER_LEN};
use fedbroker_core::{CloseReason, Outbox};
use fedbroker_fuzz::{epoch, live_bytes, tracing, CountingAlloc, Cursor};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const MAX_MESSAGE: [usize; 8] = [0, 1, 125, 126, 1000, 4096, 65_536, 1 << 20];
/// Most bytes one operation feeds.
const MAX_STEP_INPUT: usize = 64 * 1024;
/// Most operations per run.
const MAX_OPS: usize = 4096;
/// Heap an outbox may take per byte waiting in it. Each frame is one or two `Bytes` segments
/// (32 bytes each in a `VecDeque` that doubles) plus the payload's own allocation, so tiny frames
/// (an empty pong, a 1-byte echo) cost up to ~60 times their wire size: bounded, but far more
/// than the byte count suggests (reported to the core; see fuzz/README.md).
const OUTBOX_HEAP_PER_BYTE: usize = 96;
/// Whether the heap an outbox took must be released once it is drained. On since the outbox
/// gives its queue back as it drains (found with `fuzz/regressions/ws_frame/outbox-keeps-capacity`:
/// its `VecDeque` used to keep the capacity of its largest backlog); off, memory would be bounded
/// by the largest backlog of the run instead of the current one.
const DRAINED_OUTBOX_RELEASES_HEAP: bool = true;

/// A frame header as the fuzzer makes it, for the round trip.
#[derive(Arbitrary, Debug)]
struct ArbHeader {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
}

/// Decoding arbitrary bytes: consistent with encoding, and with decoding more bytes.
fn check_decode(data: &[u8]) {
    let Ok(Some((h, n))) = FrameHeader::decode(data) else {
        // "Need more" or an invalid length: a prefix says need more or the same error.
        return;
    };
    assert!((2..=MAX_HEADER_LEN).contains(&n), "header length {n}");
    assert!(n <= data.len());
    assert_eq!(
        FrameHeader::decode(&data[..n]),
        Ok(Some((h, n))),
        "decode depends on what follows"
    );
    for i in 0..n {
        assert_eq!(
            FrameHeader::decode(&data[..i]),
            Ok(None),
            "a prefix of a header decoded"
        );
    }
    let mut out = BytesMut::new();
    h.encode(&mut out);
    assert!(out.len() <= n, "the shortest encoding is longer than the decoded one");
    assert_eq!(
        FrameHeader::decode(&out),
        Ok(Some((h, out.len()))),
        "re-encoding changed the header"
    );
    if out.len() == n {
        assert_eq!(&out[..], &data[..n], "same length, different bytes");
    }
}

/// Encoding an arbitrary header, then decoding it, gives it back.
fn check_round_trip(data: &[u8]) {
    let Ok(a) = ArbHeader::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let opcode = OpCode::from_u8(a.opcode);
    assert_eq!(OpCode::from_u8(opcode.as_u8()), opcode);
    let h = FrameHeader {
        fin: a.fin,
        rsv: a.rsv & 7,
        opcode,
        mask: a.mask,
        len: a.len >> 1,
    };
    let mut out = BytesMut::new();
    h.encode(&mut out);
    assert!(out.len() <= MAX_HEADER_LEN);
    assert_eq!(
        FrameHeader::decode(&out),
        Ok(Some((h, out.len()))),
        "round trip of {h:?}"
    );
    for i in 0..out.len() {
        assert_eq!(FrameHeader::decode(&out[..i]), Ok(None));
    }
}

/// The peer's view of what the session wrote: server frames, checked as they arrive.
#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
    closed: bool,
    /// Payloads a listener was asked to send and has not yet been seen on the wire.
    expected: VecDeque<Bytes>,
}

impl Wire {
    fn take(&mut self, role: Role, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        loop {
            let (h, n) = match FrameHeader::decode(&self.bytes) {
                Ok(Some(x)) => x,
                Ok(None) => return,
                Err(()) => panic!("server wrote an invalid frame length"),
            };
            let Some(total) = usize::try_from(h.len).ok().and_then(|l| l.checked_add(n)) else {
                panic!("server frame too long: {h:?}");
            };
            if self.bytes.len() < total {
                return;
            }
            assert!(!self.closed, "server frame after its Close: {h:?}");
            assert!(h.mask.is_none(), "server frame masked");
            assert!(
                h.fin && h.rsv == 0,
                "server frame fragmented or with reserved bits: {h:?}"
            );
            let payload = &self.bytes[n..total];
            match h.opcode {
                OpCode::Ping | OpCode::Pong => assert!(h.len <= 125, "long control frame"),
                OpCode::Close => {
                    assert!(h.len <= 125 && h.len != 1, "bad Close payload length");
                    if h.len >= 2 {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        assert!((1000..=4999).contains(&code), "close code {code}");
                        assert!(std::str::from_utf8(&payload[2..]).is_ok(), "close reason not UTF-8");
                    }
                    self.closed = true;
                }
                OpCode::Binary if role == Role::Listener => {
                    let want = self.expected.pop_front().expect("listener sent an unasked message");
                    assert_eq!(&want[..], payload, "listener message changed");
                }
                OpCode::Binary => {}
                OpCode::Text if role == Role::Echo => {
                    assert!(std::str::from_utf8(payload).is_ok(), "echoed invalid UTF-8 text");
                }
                other => panic!("server wrote opcode {other:?}"),
            }
            self.bytes.drain(..total);
        }
    }
}

fn close_reason(b: u8) -> CloseReason {
    match b % 6 {
        0 => CloseReason::GoingAway,
        1 => CloseReason::ProtocolError("fuzz"),
        2 => CloseReason::UnacceptableData,
        3 => CloseReason::MessageTooBig,
        4 => CloseReason::Replaced,
        _ => CloseReason::TokenExpired,
    }
}

fn run_session(data: &[u8]) {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let role = if flags & 1 == 0 { Role::Listener } else { Role::Echo };
    let max_message = MAX_MESSAGE[usize::from(flags >> 1 & 7)];
    let timers = WsTimers {
        ping_interval: Duration::from_secs(1 + u64::from(flags >> 4)),
        close_timeout: Duration::from_millis(20 * u64::from(c.u8())),
    };
    let mut now: Instant = epoch();
    let baseline = live_bytes();

    let mut ws = WsSession::new(role, max_message, timers, now);
    let mut buf = BytesMut::new();
    let mut out = Outbox::new();
    let mut wire = Wire::default();
    // Budget for what the session may write: everything fed, every payload sent, and a little
    // per timeout, sent message and close.
    let mut budget: usize = 256;
    let mut drained = 0usize;
    let mut finished_at: Option<usize> = None;
    let mut peak_out = 0usize;

    for _ in 0..MAX_OPS {
        let Some(tag) = c.next_byte() else { break };
        let mut input: Option<Vec<u8>> = None;
        match tag % 8 {
            0 | 1 => {
                let n = usize::from(c.u8());
                input = Some(c.bytes(n).to_vec());
            }
            2 => {
                let n = usize::from(c.u16());
                input = Some(c.bytes(n).to_vec());
            }
            3 => {
                now += Duration::from_millis(u64::from(c.u16()));
                let mut turns = 0;
                while let Some(t) = ws.poll_timeout() {
                    if t > now {
                        break;
                    }
                    ws.handle_timeout(now, &mut out);
                    budget += 2;
                    turns += 1;
                    assert!(turns < 4, "handle_timeout does not move the deadline past now");
                }
            }
            4 => {
                let n = match usize::from(c.u8()) * 16 {
                    0 => out.len(),
                    n => n.min(out.len()),
                };
                let bytes = out.copy_to_bytes(n);
                if tracing() {
                    eprintln!("<< {:?}", bytes);
                }
                drained += n;
                wire.take(role, &bytes);
            }
            5 => {
                let payload = Bytes::from(vec![tag; usize::from(c.u8()) * 8]);
                let open = ws.is_open();
                let sent = ws.send_binary(payload.clone(), &mut out);
                assert_eq!(
                    sent, open,
                    "send_binary accepted by a closing session, or refused by an open one"
                );
                if sent {
                    budget += payload.len() + MAX_HEADER_LEN;
                    wire.expected.push_back(payload);
                }
            }
            6 => {
                let b = c.u8();
                ws.close(now, close_reason(b), b & 0x80 != 0, &mut out);
                budget += 2 + 125;
            }
            _ => {
                let plen = usize::from(c.u8() % 16) + 1;
                let pattern = c.bytes(plen);
                let reps = usize::from(c.u16());
                let total = (pattern.len() * reps).min(MAX_STEP_INPUT);
                input = Some(pattern.iter().copied().cycle().take(total).collect());
            }
        }
        if let Some(input) = input {
            budget += input.len();
            buf.extend_from_slice(&input);
            drop(input);
            ws.handle_input(now, &mut buf, &mut out);
            // Less than a header waits, unless the session failed: then the rest is dropped
            // (on the next call), never parsed.
            assert!(
                buf.len() < MAX_HEADER_LEN || ws.is_finished(),
                "{} bytes left in the receive buffer",
                buf.len()
            );
            // The session splits pieces off `buf`, so its capacity no longer tells how much
            // memory it holds: move what is left to a buffer of its own, for exact accounting.
            buf = BytesMut::from(&buf[..]);
        }

        // Invariants after every operation.
        let produced = drained + out.len();
        assert!(produced <= budget, "wrote {produced} bytes for a budget of {budget}");
        assert_eq!(
            ws.is_finished(),
            ws.poll_timeout().is_none(),
            "deadline and finished disagree"
        );
        if let Some(at) = finished_at {
            assert!(ws.is_finished(), "finished session came back");
            assert_eq!(produced, at, "finished session wrote more");
        } else if ws.is_finished() {
            finished_at = Some(produced);
        }
        let mine = buf.capacity()
            + wire.bytes.capacity()
            + wire.expected.iter().map(Bytes::len).sum::<usize>()
            + wire.expected.capacity() * 32;
        peak_out = peak_out.max(out.len());
        let backlog = if DRAINED_OUTBOX_RELEASES_HEAP {
            out.len()
        } else {
            peak_out
        };
        let live = live_bytes().saturating_sub(baseline);
        let bound = OUTBOX_HEAP_PER_BYTE * backlog + 4 * max_message + mine + 64 * 1024;
        assert!(live <= bound, "{live} bytes live, bound {bound}");
    }

    // The peer reads everything that is left.
    let rest = out.copy_to_bytes(out.len());
    wire.take(role, &rest);
    assert!(
        wire.bytes.len() < MAX_HEADER_LEN + 125 || !wire.closed,
        "partial frame after Close"
    );
}

fuzz_target!(|data: &[u8]| {
    check_decode(data);
    check_round_trip(data);
    run_session(data);
});
