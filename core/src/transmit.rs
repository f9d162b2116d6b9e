//! Outgoing bytes of one connection: a queue of shared byte segments that an adapter writes with
//! vectored I/O. Payloads are never copied into it, only referenced.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Bytes waiting to be written to a socket, as a [`Buf`]: write its chunks, then `advance` by what
/// the socket took.
#[derive(Debug, Default)]
pub struct Outbox {
    segments: VecDeque<Bytes>,
    len: usize,
    /// Scratch space for small writes (frame headers, responses); frozen pieces of it share one
    /// allocation until it fills up.
    arena: BytesMut,
}

/// Most pieces queued before the outbox counts as full.
const MAX_SEGMENTS: usize = 1024;

/// Scratch block size for headers and small responses (a larger piece grows its block).
const ARENA_BLOCK: usize = 1024;

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the connection should stop taking work until some is written: `HIGH_WATER` bytes,
    /// or as many pieces (many tiny frames cost more in bookkeeping than in bytes).
    pub fn is_full(&self) -> bool {
        self.len >= crate::HIGH_WATER || self.segments.len() >= MAX_SEGMENTS
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a shared segment (no copy).
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.segments.push_back(bytes);
        }
    }

    /// Queues bytes written by `f` into scratch space (for small, freshly encoded pieces).
    pub fn write_with(&mut self, f: impl FnOnce(&mut BytesMut)) {
        if self.arena.capacity() - self.arena.len() < 256 {
            self.arena = BytesMut::with_capacity(ARENA_BLOCK);
        }
        f(&mut self.arena);
        let piece = self.arena.split().freeze();
        self.push(piece);
    }

    /// Moves everything queued here to the back of `other` (no copy).
    pub fn move_into(&mut self, other: &mut Outbox) {
        other.len += self.len;
        other.segments.append(&mut self.segments);
        self.len = 0;
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.segments.clear();
        self.len = 0;
    }
}

impl Buf for Outbox {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.segments.front().map(|b| &b[..]).unwrap_or(&[])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, seg) in dst.iter_mut().zip(&self.segments) {
            *slot = IoSlice::new(seg);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of the outbox");
        self.len -= cnt;
        if self.len == 0 {
            // Everything is written: an idle connection keeps no scratch block and no queue (a
            // burst of tiny frames may have grown it far).
            self.segments = VecDeque::new();
            self.arena = BytesMut::new();
            return;
        }
        while cnt > 0 {
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            if cnt >= front.len() {
                cnt -= front.len();
                self.segments.pop_front();
            } else {
                front.advance(cnt);
                cnt = 0;
            }
        }
        // Give back the room of a burst of many pieces as it drains (amortised: only once the
        // queue uses less than a quarter of it).
        let (used, room) = (self.segments.len(), self.segments.capacity());
        if room > 256 && used < room / 4 {
            self.segments.shrink_to(used * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buf_over_segments() {
        let mut o = Outbox::new();
        o.write_with(|b| b.extend_from_slice(b"head"));
        o.push(Bytes::from_static(b"payload"));
        o.push(Bytes::new());
        assert_eq!(o.len(), 11);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(o.chunks_vectored(&mut slices), 2);
        o.advance(6);
        assert_eq!(o.chunk(), b"yload");
        let mut other = Outbox::new();
        o.move_into(&mut other);
        assert!(o.is_empty());
        assert_eq!(other.copy_to_bytes(5), Bytes::from_static(b"yload"));
    }
}
