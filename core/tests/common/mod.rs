//! Virtual clients for driving a `Broker`'s sessions in memory, with a virtual clock.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use fedbroker_core::ws::{apply_mask, encode_header, FrameHeader, OpCode};
use fedbroker_core::Session;

pub const UPGRADE_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// A virtual clock: starts at one real instant, moves only when told.
pub struct Clock(pub Instant);

impl Clock {
    pub fn new() -> Self {
        // Tests take one real instant as the origin of virtual time; the core never reads it.
        #[allow(clippy::disallowed_methods)]
        Clock(Instant::now())
    }
    pub fn advance(&mut self, d: Duration) -> Instant {
        self.0 += d;
        self.0
    }
}

/// Everything the session would have written to the socket so far.
pub fn drain(s: &mut Session, now: Instant) -> Vec<u8> {
    let mut wire = Vec::new();
    while s.transmit().has_remaining() {
        let out = s.transmit();
        let n = out.chunk().len();
        wire.extend_from_slice(out.chunk());
        out.advance(n);
        s.handle_writable(now);
    }
    wire
}

/// A parsed response: status, headers (names lowercased), body.
pub type Resp = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP response parsed off the front of `buf`.
pub fn take_response(buf: &mut BytesMut, head_only: bool) -> Option<Resp> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(buf).expect("broker wrote a malformed response") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let status = r.code.unwrap();
    let hs: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let len = if head_only || status < 200 || status == 204 {
        0
    } else {
        hs.iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse::<usize>().unwrap())
            .unwrap_or(0)
    };
    if buf.len() < n + len {
        return None;
    }
    buf.advance(n);
    let body = buf.split_to(len).to_vec();
    Some((status, hs, body))
}

/// All complete responses in `wire`.
pub fn responses(wire: &[u8]) -> Vec<Resp> {
    let mut buf = BytesMut::from(wire);
    let mut out = Vec::new();
    while let Some(r) = take_response(&mut buf, false) {
        out.push(r);
    }
    assert!(
        buf.is_empty(),
        "trailing bytes after responses: {:?}",
        String::from_utf8_lossy(&buf)
    );
    out
}

/// Server frames parsed off the front of `buf` (unmasked): (opcode, payload).
pub fn take_frames(buf: &mut BytesMut) -> Vec<(OpCode, Vec<u8>)> {
    let mut frames = Vec::new();
    while let Ok(Some((h, n))) = FrameHeader::decode(buf) {
        assert!(h.mask.is_none(), "server frames are unmasked");
        assert!(h.fin, "the broker sends whole messages");
        let len = h.len as usize;
        if buf.len() < n + len {
            break;
        }
        buf.advance(n);
        frames.push((h.opcode, buf.split_to(len).to_vec()));
    }
    frames
}

/// A masked client frame.
pub fn client_frame(fin: bool, opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_header(fin, 0, opcode, Some(mask), payload.len() as u64, &mut out);
    let mut p = payload.to_vec();
    apply_mask(&mut p, mask, 0);
    out.extend_from_slice(&p);
    out.to_vec()
}

pub fn post(id: u32, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /{id} HTTP/1.1\r\nHost: sim\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

pub fn listen(id: u32) -> Vec<u8> {
    format!("GET /{id} HTTP/1.1\r\nHost: sim\r\n{UPGRADE_HEADERS}\r\n").into_bytes()
}

/// Close code of a Close frame payload.
pub fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}
