//! What the store keeps (`Record`, `Kind`), what it is asked to do (`Op`), what it gives back on
//! open (`Loaded`), and the value format on disk.
//!
//! A record's key is its id (u32, big-endian) followed by its seq (u64, big-endian), so that the
//! engine's key order is (id, seq) order. Its value is:
//!
//! ```text
//! +---------+----------------+------+-----------------+
//! | version | at_ms (u64 BE) | kind | payload ...     |
//! |  1 B    |  8 B           | 1 B  |  rest of value  |
//! +---------+----------------+------+-----------------+
//! ```
//!
//! `version` is 1; `kind` is 0 (message), 1 (skip) or 2 (a message sent by an envelope
//! listener: the payload is then preceded by that listener's id, `from`, u32 BE). The encoding is
//! canonical: every value that decodes encodes back to the same bytes.

use bytes::Bytes;

use crate::StoreError;

/// The value format this crate writes; a value of any other version is refused as corrupt.
pub const VALUE_VERSION: u8 = 1;

/// Bytes before the payload in a value: version, at_ms, kind.
pub const VALUE_HEADER_LEN: usize = 1 + 8 + 1;

/// Length of a record's key: id (4 bytes) and seq (8 bytes), big-endian.
pub(crate) const KEY_LEN: usize = 12;

/// What a stored seq stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A message accepted for the id: replayed to a listener that asks for it.
    Message,
    /// A seq consumed by something the mailbox does not keep, stored so that the seq is never
    /// handed out again after a restart (a replay reports it as skipped, not as a gap).
    Skip,
}

/// One entry of an id's history, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The mailbox id (1 ..= 2^31-1 in the broker; the store takes any u32).
    pub id: u32,
    /// The record's position in the id's history: monotonic per id, never reused.
    pub seq: u64,
    /// Wall-clock time the broker accepted it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// A message, or a seq kept only so that it is not reused.
    pub kind: Kind,
    /// The id listened on by the envelope listener that sent the message, if one did (messages
    /// only; ignored for `Kind::Skip`).
    pub from: Option<u32>,
    /// The message's bytes (usually empty for `Kind::Skip`).
    pub payload: Bytes,
}

/// A change the core asks the store to make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Keep this record (replacing one with the same id and seq, if any).
    Append(Record),
    /// Delete the id's records with `seq <= through` and remember `through` for the id, so that
    /// after a restart the id's history is known to start after it even when no record is left.
    Trim {
        /// The mailbox id.
        id: u32,
        /// The highest seq deleted.
        through: u64,
    },
}

/// One id's state as found on disk by `Store::open`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The mailbox id.
    pub id: u32,
    /// The highest `through` of the id's trims (0 when never trimmed): seqs up to it are gone.
    pub trimmed_through: u64,
    /// The id's records, in seq order, all with `seq > trimmed_through`.
    pub records: Vec<Record>,
}

/// Encodes a record's value (everything but its id and seq, which are its key).
pub fn encode_value(r: &Record) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_HEADER_LEN + 4 + r.payload.len());
    v.push(VALUE_VERSION);
    v.extend_from_slice(&r.at_ms.to_be_bytes());
    match (r.kind, r.from) {
        (Kind::Message, None) => v.push(0),
        (Kind::Skip, _) => v.push(1),
        (Kind::Message, Some(from)) => {
            v.push(2);
            v.extend_from_slice(&from.to_be_bytes());
        }
    }
    v.extend_from_slice(&r.payload);
    v
}

/// Decodes a value written by [`encode_value`] for the record `(id, seq)`. Never panics: bytes
/// that are not such a value are `StoreError::Corrupt`.
pub fn decode_value(id: u32, seq: u64, bytes: &[u8]) -> Result<Record, StoreError> {
    let corrupt = |reason| StoreError::Corrupt { id, seq, reason };
    let (&version, rest) = bytes.split_first().ok_or(corrupt("the value is empty"))?;
    if version != VALUE_VERSION {
        return Err(corrupt("the value's format version is unknown"));
    }
    let (at, rest) = rest
        .split_first_chunk::<8>()
        .ok_or(corrupt("the value is shorter than its header"))?;
    let (&kind, payload) = rest
        .split_first()
        .ok_or(corrupt("the value is shorter than its header"))?;
    let (kind, from, payload) = match kind {
        0 => (Kind::Message, None, payload),
        1 => (Kind::Skip, None, payload),
        2 => {
            let (from, payload) = payload
                .split_first_chunk::<4>()
                .ok_or(corrupt("the value is shorter than its sender"))?;
            (Kind::Message, Some(u32::from_be_bytes(*from)), payload)
        }
        _ => return Err(corrupt("the record kind is unknown")),
    };
    Ok(Record {
        id,
        seq,
        at_ms: u64::from_be_bytes(*at),
        kind,
        from,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// The key of record `(id, seq)`: both big-endian, so that key order is (id, seq) order.
pub(crate) fn record_key(id: u32, seq: u64) -> [u8; KEY_LEN] {
    let mut k = [0; KEY_LEN];
    k[..4].copy_from_slice(&id.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Reads a record key back; `None` when it is not `KEY_LEN` bytes.
pub(crate) fn parse_record_key(k: &[u8]) -> Option<(u32, u64)> {
    let (id, seq) = k.split_first_chunk::<4>()?;
    let seq: &[u8; 8] = seq.try_into().ok()?;
    Some((u32::from_be_bytes(*id), u64::from_be_bytes(*seq)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_id_then_seq() {
        let mut keys = [
            record_key(2, 1),
            record_key(1, 256),
            record_key(1, 2),
            record_key(256, 0),
        ];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_record_key(k).unwrap()).collect();
        assert_eq!(parsed, vec![(1, 2), (1, 256), (2, 1), (256, 0)]);
        assert_eq!(parse_record_key(&[0; 11]), None);
        assert_eq!(parse_record_key(&[0; 13]), None);
    }

    #[test]
    fn value_layout_is_as_documented() {
        let r = Record {
            id: 7,
            seq: 9,
            at_ms: 0x0102,
            kind: Kind::Skip,
            from: None,
            payload: Bytes::from_static(b"x"),
        };
        assert_eq!(encode_value(&r), [1, 0, 0, 0, 0, 0, 0, 1, 2, 1, b'x']);
        assert_eq!(decode_value(7, 9, &encode_value(&r)), Ok(r));
        let sent = Record {
            kind: Kind::Message,
            from: Some(0x0A0B),
            ..decode_value(7, 9, &[1, 0, 0, 0, 0, 0, 0, 1, 2, 0, b'x']).unwrap()
        };
        assert_eq!(
            encode_value(&sent),
            [1, 0, 0, 0, 0, 0, 0, 1, 2, 2, 0, 0, 0x0A, 0x0B, b'x']
        );
        assert_eq!(decode_value(7, 9, &encode_value(&sent)), Ok(sent));
    }

    #[test]
    fn short_or_unknown_values_are_corrupt() {
        for bad in [
            &[][..],
            &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 3],
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 7],
        ] {
            assert!(
                matches!(decode_value(1, 1, bad), Err(StoreError::Corrupt { id: 1, seq: 1, .. })),
                "{bad:?}"
            );
        }
    }
}
