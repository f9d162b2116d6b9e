//! RESP2 frames, as read on the Redis engine's subscriber connection, and the commands it sends.
//!
//! Written here rather than taken from redis-rs: redis-rs 1.8's single-server async connection
//! has no sharded pub/sub commands, and a raw `SUNSUBSCRIBE` sent through it is not recognised
//! as a subscription request (its confirmation is dropped and the replies that follow go to the
//! wrong requests: redis-rs issue 2533). The subscriber connection only ever reads the few
//! shapes below, so a bounded incremental reader is small. Publishing still goes through
//! redis-rs.

use bytes::{Buf, Bytes, BytesMut};

/// A bulk string larger than this ends the connection (the broker's messages are far smaller:
/// `--max-message-size` is 1 MiB by default).
pub(crate) const MAX_BULK: usize = 64 << 20;

/// An array longer than this ends the connection (pushes have 3 or 4 elements).
const MAX_ARRAY: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Bytes>),
    Array(Vec<Frame>),
}

/// A frame the reader refuses: the connection is dropped and made again.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub &'static str);

/// Takes one whole frame off the front of `buf`; `Ok(None)` when more bytes are needed.
pub(crate) fn take(buf: &mut BytesMut) -> Result<Option<Frame>, Malformed> {
    match parse(buf, 0, 0)? {
        Some((frame, used)) => {
            buf.advance(used);
            Ok(Some(frame))
        }
        None => Ok(None),
    }
}

/// The line starting at `at`, without its CRLF, and where the next one starts.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, Malformed> {
    let rest = &buf[at..];
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&rest[..end], at + end + 2))),
        // A header line is short; one that does not end is not RESP.
        None if rest.len() > 64 * 1024 => Err(Malformed("a line without its end")),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Result<i64, Malformed> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(Malformed("not a number"))
}

fn parse(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Frame, usize)>, Malformed> {
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some((text, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    let text_string = || String::from_utf8_lossy(text).into_owned();
    Ok(Some(match kind {
        b'+' => (Frame::Simple(text_string()), next),
        b'-' => (Frame::Error(text_string()), next),
        b':' => (Frame::Integer(number(text)?), next),
        b'$' => {
            let len = number(text)?;
            if len == -1 {
                return Ok(Some((Frame::Bulk(None), next)));
            }
            let len = usize::try_from(len).map_err(|_| Malformed("a negative length"))?;
            if len > MAX_BULK {
                return Err(Malformed("a bulk string too large"));
            }
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(Malformed("a bulk string without its end"));
            }
            (Frame::Bulk(Some(Bytes::copy_from_slice(&buf[next..end]))), end + 2)
        }
        b'*' => {
            let len = number(text)?;
            if len == -1 {
                return Ok(Some((Frame::Array(Vec::new()), next)));
            }
            let len = usize::try_from(len).map_err(|_| Malformed("a negative length"))?;
            if len > MAX_ARRAY || depth > 1 {
                return Err(Malformed("an array too large or too deep"));
            }
            let mut items = Vec::with_capacity(len);
            let mut at = next;
            for _ in 0..len {
                let Some((item, after)) = parse(buf, at, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at = after;
            }
            (Frame::Array(items), at)
        }
        _ => return Err(Malformed("not a RESP type")),
    }))
}

/// A command as RESP (an array of bulk strings).
pub(crate) fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Result<Vec<Frame>, Malformed> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = take(&mut buf)? {
            out.push(f);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    #[test]
    fn reads_what_a_subscriber_connection_gets() {
        let bytes = b"+OK\r\n*3\r\n$10\r\nssubscribe\r\n$4\r\nch.1\r\n:1\r\n*3\r\n$8\r\nsmessage\r\n$4\r\nch.1\r\n$5\r\na\r\nb\x00\r\n-WRONGPASS no\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        let frames = all(bytes).unwrap();
        let bulk = |b: &[u8]| Frame::Bulk(Some(Bytes::copy_from_slice(b)));
        assert_eq!(
            frames,
            vec![
                Frame::Simple("OK".into()),
                Frame::Array(vec![bulk(b"ssubscribe"), bulk(b"ch.1"), Frame::Integer(1)]),
                Frame::Array(vec![bulk(b"smessage"), bulk(b"ch.1"), bulk(b"a\r\nb\x00")]),
                Frame::Error("WRONGPASS no".into()),
                Frame::Array(vec![bulk(b"pong"), bulk(b"")]),
            ]
        );
    }

    #[test]
    fn waits_for_a_whole_frame_at_every_split() {
        let bytes = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$11\r\nhello world\r\n";
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            assert_eq!(take(&mut buf), Ok(None), "split at {split}");
            buf.extend_from_slice(&bytes[split..]);
            assert!(matches!(take(&mut buf), Ok(Some(Frame::Array(_)))), "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn refuses_what_is_not_resp_or_too_large() {
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b"$-5\r\n",
            b"$3\r\nabcd\r\n",
            b"*17\r\n",
            b"*1\r\n*1\r\n*1\r\n:1\r\n",
            b"$99999999999\r\n",
        ] {
            assert!(take(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let long = vec![b'+'; 70 * 1024];
        assert!(take(&mut BytesMut::from(&long[..])).is_err());
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            command(&[b"SSUBSCRIBE", b"fedbroker.id.5"]),
            b"*2\r\n$10\r\nSSUBSCRIBE\r\n$14\r\nfedbroker.id.5\r\n"
        );
        assert_eq!(all(&command(&[b"x", b""])).unwrap().len(), 1);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn frame() -> impl Strategy<Value = Frame> {
        let leaf = prop_oneof![
            "[a-zA-Z ]{0,20}".prop_map(Frame::Simple),
            "[a-zA-Z ]{0,20}".prop_map(Frame::Error),
            any::<i64>().prop_map(Frame::Integer),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|b| Frame::Bulk(b.map(Bytes::from))),
        ];
        prop_oneof![
            leaf.clone(),
            proptest::collection::vec(leaf, 0..MAX_ARRAY).prop_map(Frame::Array)
        ]
    }

    fn write(frame: &Frame, out: &mut Vec<u8>) {
        match frame {
            Frame::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Frame::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
            Frame::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Frame::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Frame::Bulk(Some(b)) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                items.iter().for_each(|i| write(i, out));
            }
        }
    }

    proptest! {
        /// Any bytes: an answer, never a panic, and nothing taken when more bytes are needed.
        #[test]
        fn any_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let before = buf.len();
            if let Ok(None) = take(&mut buf) {
                prop_assert_eq!(buf.len(), before);
            }
        }

        /// Frames written one after another come back the same, however the bytes arrive.
        #[test]
        fn frames_come_back_whole(frames in proptest::collection::vec(frame(), 1..8), chunk in 1usize..64) {
            let mut bytes = Vec::new();
            frames.iter().for_each(|f| write(f, &mut bytes));
            let (mut buf, mut got) = (BytesMut::new(), Vec::new());
            for piece in bytes.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = take(&mut buf).expect("well formed") {
                    got.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            // A null array reads as an empty one; none is written here.
            prop_assert_eq!(got, frames);
        }

        /// The engine's message framing: any bytes decode or are refused, never a panic.
        #[test]
        fn any_message_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = crate::engine::decode(Bytes::from(bytes));
        }
    }
}
