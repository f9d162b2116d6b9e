//! The self-checking message body every scenario sends.
//!
//! Layout (little-endian): `sender: u32 | seq: u64 | sent_ns: u64 | fill…`, where `sent_ns` is
//! the send time in nanoseconds since the run's [`epoch`] and every fill byte is a function of
//! `(sender, seq, index)`, so the listener can check every byte of every message it receives.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes of header in front of the fill.
pub const HEADER: usize = 20;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process-wide time origin of payload timestamps (senders and listeners share the process).
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

fn fill_key(sender: u32, seq: u64) -> u8 {
    (seq as u8).wrapping_mul(31) ^ (sender as u8).wrapping_mul(7) ^ ((seq >> 8) as u8)
}

/// Appends one payload of `len` bytes (`len >= HEADER`) to `out`, stamped with the current time.
pub fn encode(out: &mut Vec<u8>, len: usize, sender: u32, seq: u64) {
    debug_assert!(len >= HEADER);
    let start = out.len();
    out.extend_from_slice(&sender.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&now_ns().to_le_bytes());
    let k = fill_key(sender, seq);
    out.extend((HEADER..len).map(|i| k.wrapping_add(i as u8)));
    debug_assert_eq!(out.len() - start, len);
}

/// What a listener learns from one received payload.
#[derive(Debug, Clone, Copy)]
pub struct Decoded {
    pub sender: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Checks a received payload: its length and every fill byte.
pub fn decode(p: &[u8], expected_len: usize) -> Result<Decoded, String> {
    if p.len() != expected_len {
        return Err(format!("corrupt message: {} bytes, expected {expected_len}", p.len()));
    }
    if p.len() < HEADER {
        return Err(format!("corrupt message: {} bytes, shorter than the header", p.len()));
    }
    let sender = u32::from_le_bytes(p[0..4].try_into().unwrap());
    let seq = u64::from_le_bytes(p[4..12].try_into().unwrap());
    let sent_ns = u64::from_le_bytes(p[12..20].try_into().unwrap());
    let k = fill_key(sender, seq);
    let bad = p[HEADER..]
        .iter()
        .enumerate()
        .fold(0u8, |acc, (i, &b)| acc | (b ^ k.wrapping_add((i + HEADER) as u8)));
    if bad != 0 {
        let at = p[HEADER..]
            .iter()
            .enumerate()
            .position(|(i, &b)| b != k.wrapping_add((i + HEADER) as u8))
            .unwrap_or(0)
            + HEADER;
        return Err(format!(
            "corrupt message: sender {sender} seq {seq}: byte {at} differs from what was sent"
        ));
    }
    Ok(Decoded { sender, seq, sent_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let mut v = Vec::new();
        encode(&mut v, 64, 3, 77);
        let d = decode(&v, 64).unwrap();
        assert_eq!((d.sender, d.seq), (3, 77));
        v[40] ^= 1;
        assert!(decode(&v, 64).unwrap_err().contains("byte 40"));
        assert!(decode(&v[..63], 64).is_err());
    }
}
