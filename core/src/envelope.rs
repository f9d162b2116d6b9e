//! The `fedbroker.v1` envelope (docs/patterns.md §3): every message, either way, is one binary
//! WebSocket message `u16 big-endian header length | JSON header | payload`.
//!
//! [`decode`] reads what a listener sends into a [`ClientMessage`]; the `encode_*` functions
//! write what the broker sends, as whole WebSocket frames, so a frame shared by many listeners
//! (a topic) is encoded once.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

use crate::ws::{encode_header, OpCode};
use crate::Id;

/// The subprotocol name negotiated with `Sec-WebSocket-Protocol`.
pub const PROTOCOL: &str = "fedbroker.v1";

/// Largest header, in bytes (a larger one is answered with an `error`).
pub const MAX_HEADER: usize = 16 * 1024;

/// Payloads up to this size are copied into the frame's own buffer (one piece to write); larger
/// ones are shared.
const SMALL_PAYLOAD: usize = 128;

/// What an envelope listener asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    /// Send the payload to `to`, as a `POST` from this listener would.
    Send {
        /// The target id (a plain id or a topic).
        to: Id,
        /// Copied into the answer.
        reference: Value,
    },
    /// Answer the request numbered `reply_to` with `status` and the payload.
    Reply {
        /// The `seq` of the request answered.
        reply_to: u64,
        /// The HTTP status the waiting `POST` gets (200–599).
        status: u16,
        /// Its `Content-Type`, if given (a visible-ASCII header value).
        content_type: Option<String>,
        /// Copied into the answer.
        reference: Value,
    },
    /// Follow these ids' presence.
    Watch {
        /// The ids, without repeats, in the order given.
        ids: Vec<Id>,
        /// Copied into the answer.
        reference: Value,
    },
    /// Stop following these ids.
    Unwatch {
        /// The ids.
        ids: Vec<Id>,
        /// Copied into the answer.
        reference: Value,
    },
}

impl ClientMessage {
    /// The `ref` to copy into the answer.
    pub fn reference(&self) -> &Value {
        match self {
            ClientMessage::Send { reference, .. }
            | ClientMessage::Reply { reference, .. }
            | ClientMessage::Watch { reference, .. }
            | ClientMessage::Unwatch { reference, .. } => reference,
        }
    }
}

/// Why a listener's message was refused: answered with an `error` of status `400`, the
/// connection stays open.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvelopeError {
    /// What is wrong, one sentence.
    pub message: String,
    /// The message's `ref`, when its header could be read that far (`null` otherwise).
    pub reference: Value,
}

fn refuse<T>(message: impl Into<String>, reference: &Value) -> Result<T, EnvelopeError> {
    Err(EnvelopeError {
        message: message.into(),
        reference: reference.clone(),
    })
}

/// Splits an envelope message into its header and payload and reads the header.
pub fn decode(message: &[u8]) -> Result<(ClientMessage, &[u8]), EnvelopeError> {
    let null = Value::Null;
    if message.len() < 2 {
        return refuse("envelope shorter than its 2-byte header length", &null);
    }
    let len = usize::from(u16::from_be_bytes([message[0], message[1]]));
    if len < 2 {
        return refuse("envelope header length must be at least 2", &null);
    }
    if len > MAX_HEADER {
        return refuse(format!("envelope header longer than {MAX_HEADER} bytes"), &null);
    }
    let Some(header) = message.get(2..2 + len) else {
        return refuse("envelope header length runs past the end of the message", &null);
    };
    let payload = &message[2 + len..];
    let map: Map<String, Value> = match serde_json::from_slice(header) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return refuse("envelope header must be a JSON object", &null),
        Err(e) => return refuse(format!("envelope header is not valid JSON: {e}"), &null),
    };
    let reference = map.get("ref").cloned().unwrap_or(Value::Null);
    let kind = match map.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return refuse("\"type\" must be a string", &reference),
        None => return refuse("envelope header needs a \"type\"", &reference),
    };
    let msg = match kind {
        "send" => ClientMessage::Send {
            to: id_field(&map, "to", &reference)?,
            reference,
        },
        "reply" => {
            let reply_to = match map.get("reply_to").and_then(Value::as_u64) {
                Some(seq) if seq >= 1 => seq,
                _ => {
                    return refuse(
                        "\"reply_to\" must be the seq of a request (a whole number from 1)",
                        &reference,
                    )
                }
            };
            let status = match map.get("status").and_then(Value::as_u64) {
                Some(s @ 200..=599) => s as u16,
                _ => return refuse("\"status\" must be an HTTP status from 200 to 599", &reference),
            };
            if matches!(status, 204 | 205 | 304) && !payload.is_empty() {
                return refuse(
                    format!("a reply with status {status} must have an empty payload"),
                    &reference,
                );
            }
            let content_type = match map.get("content_type") {
                None | Some(Value::Null) => None,
                Some(Value::String(ct)) if is_header_value(ct) => Some(ct.clone()),
                Some(_) => {
                    return refuse(
                        "\"content_type\" must be a string of visible ASCII, at most 256 bytes",
                        &reference,
                    )
                }
            };
            ClientMessage::Reply {
                reply_to,
                status,
                content_type,
                reference,
            }
        }
        "watch" | "unwatch" => {
            let Some(Value::Array(items)) = map.get("ids") else {
                return refuse("\"ids\" must be an array of ids", &reference);
            };
            let mut ids = Vec::with_capacity(items.len().min(1024));
            for item in items {
                let id = item
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .and_then(Id::new)
                    .ok_or_else(|| EnvelopeError {
                        message: format!("{item} in \"ids\" is not an id (1 to 2147483647)"),
                        reference: reference.clone(),
                    })?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            if kind == "watch" {
                ClientMessage::Watch { ids, reference }
            } else {
                ClientMessage::Unwatch { ids, reference }
            }
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            return refuse(
                format!("unknown message type {shown:?}: expected send, reply, watch or unwatch"),
                &reference,
            );
        }
    };
    Ok((msg, payload))
}

fn id_field(map: &Map<String, Value>, key: &str, reference: &Value) -> Result<Id, EnvelopeError> {
    map.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .and_then(Id::new)
        .ok_or_else(|| EnvelopeError {
            message: format!("\"{key}\" must be an id (1 to 2147483647)"),
            reference: reference.clone(),
        })
}

fn is_header_value(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
}

// ---- broker → listener ---------------------------------------------------------------------

/// The header of a message for a listener: `{"type":"message","seq":…,"id":…,"from":…}`.
pub fn message_header(seq: u64, id: Id, from: Option<Id>) -> String {
    let mut h = String::with_capacity(64);
    let _ = write!(h, r#"{{"type":"message","seq":{seq},"id":{id}"#);
    if let Some(from) = from {
        let _ = write!(h, r#","from":{from}"#);
    }
    h.push('}');
    h
}

/// The header of a request awaiting a reply: `{"type":"request","seq":…,"id":…,"timeout_ms":…}`.
pub fn request_header(seq: u64, id: Id, timeout_ms: u64) -> String {
    format!(r#"{{"type":"request","seq":{seq},"id":{id},"timeout_ms":{timeout_ms}}}"#)
}

/// The answer to a listener's message that succeeded.
pub fn ack_header(reference: &Value, status: u16, recipients: Option<u32>) -> String {
    let mut h = format!(r#"{{"type":"ack","ref":{reference},"status":{status}"#);
    if let Some(n) = recipients {
        let _ = write!(h, r#","recipients":{n}"#);
    }
    h.push('}');
    h
}

/// The answer to a listener's message that failed.
pub fn error_header(reference: &Value, status: u16, error: &str) -> String {
    format!(
        r#"{{"type":"error","ref":{reference},"status":{status},"error":{}}}"#,
        Value::from(error)
    )
}

/// A presence event: `{"type":"online","id":…}` or `{"type":"offline","id":…}`.
pub fn presence_header(id: Id, online: bool) -> String {
    let kind = if online { "online" } else { "offline" };
    format!(r#"{{"type":"{kind}","id":{id}}}"#)
}

/// The header of a gap: messages `from..=to` of the listened id were dropped before they were
/// read: `{"type":"gap","id":…,"from":…,"to":…}`.
pub fn gap_header(id: Id, from: u64, to: u64) -> String {
    format!(r#"{{"type":"gap","id":{id},"from":{from},"to":{to}}}"#)
}

/// Writes one binary frame holding `header` and `payload` into `out`; returns the payload when
/// it is large enough to be sent as its own (shared) piece after `out`.
pub fn encode_frame(header: &str, payload: Bytes, out: &mut BytesMut) -> Option<Bytes> {
    let h = header.as_bytes();
    debug_assert!(h.len() <= usize::from(u16::MAX));
    let len = 2 + h.len() + payload.len();
    encode_header(true, 0, OpCode::Binary, None, len as u64, out);
    out.put_u16(h.len() as u16);
    out.extend_from_slice(h);
    if payload.len() <= SMALL_PAYLOAD {
        out.extend_from_slice(&payload);
        None
    } else {
        Some(payload)
    }
}

/// One whole binary frame (header and payload in one buffer), for sharing among listeners.
pub fn frame_bytes(header: Option<&str>, payload: &[u8]) -> Bytes {
    let extra = header.map_or(0, |h| 2 + h.len());
    let mut out = BytesMut::with_capacity(crate::ws::MAX_HEADER_LEN + extra + payload.len());
    encode_header(true, 0, OpCode::Binary, None, (extra + payload.len()) as u64, &mut out);
    if let Some(h) = header {
        out.put_u16(h.len() as u16);
        out.extend_from_slice(h.as_bytes());
    }
    out.extend_from_slice(payload);
    out.freeze()
}

/// Builds an envelope message as a listener would send it (header length, header, payload): for
/// clients, tests and fuzzing.
pub fn encode_message(header: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + header.len() + payload.len());
    v.extend_from_slice(&(header.len() as u16).to_be_bytes());
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(payload);
    v
}

/// What a `Sec-WebSocket-Protocol` offer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// No subprotocol offered: a plain listener.
    Plain,
    /// [`PROTOCOL`] is among the offers.
    Envelope,
    /// Only other subprotocols are offered (`400`).
    Unsupported,
}

/// Reads a `Sec-WebSocket-Protocol` offer: comma-separated lists, possibly over several header
/// lines.
pub fn negotiate<'a>(offers: impl Iterator<Item = &'a [u8]>) -> Offer {
    let mut offered = false;
    for line in offers {
        for token in line.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            offered = true;
            if token == PROTOCOL.as_bytes() {
                return Offer::Envelope;
            }
        }
    }
    if offered {
        Offer::Unsupported
    } else {
        Offer::Plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u32) -> Id {
        Id::new(v).unwrap()
    }

    #[test]
    fn decodes_each_type() {
        let m = encode_message(r#"{"type":"send","to":7,"ref":"a"}"#, b"hi");
        let (msg, payload) = decode(&m).unwrap();
        assert_eq!(
            msg,
            ClientMessage::Send {
                to: id(7),
                reference: Value::from("a")
            }
        );
        assert_eq!(payload, b"hi");
        let m = encode_message(
            r#"{"type":"reply","reply_to":3,"status":201,"content_type":"text/plain"}"#,
            b"x",
        );
        assert!(matches!(
            decode(&m).unwrap().0,
            ClientMessage::Reply {
                reply_to: 3,
                status: 201,
                ..
            }
        ));
        let m = encode_message(r#"{"type":"watch","ids":[1,2,1],"ref":5}"#, b"");
        assert_eq!(
            decode(&m).unwrap().0,
            ClientMessage::Watch {
                ids: vec![id(1), id(2)],
                reference: Value::from(5)
            }
        );
    }

    #[test]
    fn refusals_say_why_and_keep_the_ref() {
        let bad = |h: &str, p: &[u8]| decode(&encode_message(h, p)).unwrap_err();
        assert_eq!(bad(r#"{"type":"send","ref":9}"#, b"").reference, Value::from(9));
        assert!(bad(r#"{"type":"send","to":0}"#, b"").message.contains("\"to\""));
        assert!(bad(r#"{"type":"nope"}"#, b"").message.contains("unknown message type"));
        assert!(bad(r#"[1]"#, b"").message.contains("JSON object"));
        assert!(bad(r#"{"type":"reply","reply_to":1,"status":204}"#, b"x")
            .message
            .contains("empty payload"));
        assert!(bad(
            r#"{"type":"reply","reply_to":1,"status":200,"content_type":"a\r\nb: c"}"#,
            b""
        )
        .message
        .contains("content_type"));
        assert!(decode(b"\x00").is_err());
        assert!(decode(b"\x00\x09{}").is_err());
        assert!(decode(b"\x00\x01{").is_err());
    }

    #[test]
    fn headers_are_json() {
        for h in [
            message_header(1, id(2), Some(id(3))),
            request_header(1, id(2), 500),
            ack_header(&Value::from("r\"x"), 204, Some(4)),
            error_header(&Value::Null, 404, "no listener on id 2 \"quoted\""),
            presence_header(id(9), false),
        ] {
            let v: Value = serde_json::from_str(&h).unwrap();
            assert!(v.get("type").is_some(), "{h}");
        }
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate([].into_iter()), Offer::Plain);
        assert_eq!(negotiate([&b"mqtt, fedbroker.v1"[..]].into_iter()), Offer::Envelope);
        assert_eq!(negotiate([&b"fedbroker.v2"[..]].into_iter()), Offer::Unsupported);
        assert_eq!(negotiate([&b" , "[..]].into_iter()), Offer::Plain);
    }
}
