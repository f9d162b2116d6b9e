//! Frame header codec (RFC 6455 §5.2) and masking (§5.3).

use bytes::{BufMut, BytesMut};

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// A frame opcode (RFC 6455 §5.2, §11.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// `0x0`: continues a fragmented message.
    Continuation,
    /// `0x1`: first frame of a text message.
    Text,
    /// `0x2`: first frame of a binary message.
    Binary,
    /// `0x8`: close.
    Close,
    /// `0x9`: ping.
    Ping,
    /// `0xA`: pong.
    Pong,
    /// Any reserved value (`0x3`–`0x7`, `0xB`–`0xF`).
    Reserved(u8),
}

impl OpCode {
    /// The opcode of a 4-bit value.
    pub fn from_u8(v: u8) -> OpCode {
        match v & 0x0f {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => OpCode::Reserved(other),
        }
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
            OpCode::Reserved(v) => v & 0x0f,
        }
    }

    /// Whether this is a control opcode (close, ping, pong, or reserved `0xB`–`0xF`).
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// A decoded frame header. Decoding checks only what is needed to find the payload; the rules of
/// §5 (masking, reserved bits, control frame limits) are the session's to enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// The three reserved bits, as `RSV1 << 2 | RSV2 << 1 | RSV3`.
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the mask bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
}

impl FrameHeader {
    /// Decodes a header from the front of `buf`: `Ok(None)` when more bytes are needed, else the
    /// header and its length in bytes. `Err` only for a 64-bit length with its top bit set.
    #[allow(clippy::result_unit_err)]
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ()> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                if len >> 63 != 0 {
                    return Err(());
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            let Some(m) = buf.get(at..at + 4) else {
                return Ok(None);
            };
            at += 4;
            Some([m[0], m[1], m[2], m[3]])
        } else {
            None
        };
        let header = FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x07,
            opcode: OpCode::from_u8(b0),
            mask,
            len,
        };
        Ok(Some((header, at)))
    }

    /// Encodes this header (a server frame has no mask; a client frame must have one).
    pub fn encode(&self, out: &mut BytesMut) {
        encode_header(self.fin, self.rsv, self.opcode, self.mask, self.len, out)
    }
}

/// Writes a frame header with the shortest length encoding.
pub fn encode_header(fin: bool, rsv: u8, opcode: OpCode, mask: Option<[u8; 4]>, len: u64, out: &mut BytesMut) {
    out.reserve(MAX_HEADER_LEN);
    out.put_u8((u8::from(fin) << 7) | ((rsv & 0x07) << 4) | opcode.as_u8());
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.put_u8(m | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.put_u8(m | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(m | 127);
        out.put_u64(len);
    }
    if let Some(mask) = mask {
        out.put_slice(&mask);
    }
}

/// XORs `data` with `mask`, where `data` starts `offset` bytes into the payload.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = [0u8; 4];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(offset + i) % 4];
    }
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_input_needs_more() {
        assert_eq!(FrameHeader::decode(&[]), Ok(None));
        assert_eq!(FrameHeader::decode(&[0x82]), Ok(None));
        assert_eq!(FrameHeader::decode(&[0x82, 0xfe, 0]), Ok(None));
        assert_eq!(FrameHeader::decode(&[0x82, 0x85, 1, 2, 3]), Ok(None));
        assert_eq!(FrameHeader::decode(&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0]), Err(()));
    }

    proptest! {
        #[test]
        fn header_round_trips(fin: bool, rsv in 0u8..8, op in 0u8..16, mask: Option<[u8; 4]>, len in prop_oneof![0u64..126, 126u64..65536, 65536u64..(1 << 40)]) {
            let h = FrameHeader { fin, rsv, opcode: OpCode::from_u8(op), mask, len };
            let mut out = BytesMut::new();
            h.encode(&mut out);
            prop_assert_eq!(FrameHeader::decode(&out), Ok(Some((h, out.len()))));
            // Every proper prefix needs more.
            for i in 0..out.len() {
                prop_assert_eq!(FrameHeader::decode(&out[..i]), Ok(None));
            }
        }

        #[test]
        fn mask_at_any_offset(data in proptest::collection::vec(any::<u8>(), 0..64), mask: [u8; 4], split in 0usize..64) {
            let split = split.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, mask, 0);
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            prop_assert_eq!(&whole, &parts);
            for (i, (x, y)) in data.iter().zip(&whole).enumerate() {
                prop_assert_eq!(x ^ mask[i % 4], *y);
            }
        }
    }
}
