//! The `fedbroker.v1` codec (docs/patterns.md §3): `envelope::decode` on arbitrary bytes, and
//! `envelope::negotiate` on arbitrary `Sec-WebSocket-Protocol` lines, each against a small
//! reference model written here.
//!
//! Input: 1 mode byte, then the rest.
//! - mode bit 0 clear: the rest is one envelope message, decoded as a listener's message;
//! - mode bit 0 set: the rest is split on `\n` into header lines and offered to `negotiate`;
//! - mode bit 1 (decode only): the round-trip header writes `"ref"` even when it is `null`.
//!
//! Invariants of `decode`: never panics; `Ok` only for a header length from 2 to
//! `MAX_HEADER` that fits the input and a header that is one JSON object; the payload is then
//! exactly the bytes after the header (a suffix of the input, not a copy); the message agrees
//! with a model that reads the JSON header by the table of patterns.md (`send` needs `to`,
//! `reply` a `reply_to` from 1 and a `status` 200–599, no payload with 204/205/304, a
//! visible-ASCII `content_type`; `watch`/`unwatch` an array of ids, repeats dropped in order);
//! a refusal keeps the header's `ref` when the header is an object; and a decoded message,
//! written again with `encode_message` and an equivalent JSON header built from its fields,
//! decodes to the same message and payload (round trip; see `REF_NUMBERS_EXACT`).
//!
//! Invariants of `negotiate`: `Envelope` exactly when a comma-separated token, trimmed of ASCII
//! whitespace, is `fedbroker.v1`; otherwise `Unsupported` when any non-empty token was offered,
//! `Plain` when none was.

#![no_main]

use fedbroker_core::envelope::{self, ClientMessage, Offer, MAX_HEADER, PROTOCOL};
use fedbroker_core::Id;
use fedbroker_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

/// Whether a `ref` must come back exactly as sent, numbers included. Off for now (see
/// fuzz/README.md, open findings): serde_json without its `float_roundtrip` feature reads some
/// decimal numbers one unit in the last place off (`2.428e34` becomes `2.4279999999999998e34`),
/// so the broker echoes such a `ref` changed and the round trip may move it by one more unit.
/// Turn it on once the core reads (or keeps) `ref` exactly; the kept reproducer
/// `regressions/envelope/ref-float-off-by-one-ulp` checks it.
const REF_NUMBERS_EXACT: bool = true;

/// A canonical id as the model reads it from JSON: a non-negative integer in 1..=2^31-1.
fn model_id(v: &Value) -> Option<Id> {
    let n = v.as_u64()?;
    if (1..=0x7fff_ffff).contains(&n) {
        Id::new(n as u32)
    } else {
        None
    }
}

/// What a listener's message means, read from its JSON header by patterns.md §3; `None` when
/// it must be refused.
fn model_decode(map: &Map<String, Value>, payload: &[u8]) -> Option<ClientMessage> {
    let reference = map.get("ref").cloned().unwrap_or(Value::Null);
    match map.get("type")?.as_str()? {
        "send" => Some(ClientMessage::Send {
            to: model_id(map.get("to")?)?,
            reference,
        }),
        "reply" => {
            let reply_to = map.get("reply_to")?.as_u64().filter(|&s| s >= 1)?;
            let status = map.get("status")?.as_u64().filter(|s| (200..=599).contains(s))? as u16;
            // No body goes with these statuses (RFC 9110 §15.3.5, §15.3.6, §15.4.5).
            if matches!(status, 204 | 205 | 304) && !payload.is_empty() {
                return None;
            }
            let content_type = match map.get("content_type") {
                None | Some(Value::Null) => None,
                Some(Value::String(s))
                    if !s.is_empty()
                        && s.len() <= 256
                        && s.bytes().all(|b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b)) =>
                {
                    Some(s.clone())
                }
                Some(_) => return None,
            };
            Some(ClientMessage::Reply {
                reply_to,
                status,
                content_type,
                reference,
            })
        }
        kind @ ("watch" | "unwatch") => {
            let mut ids: Vec<Id> = Vec::new();
            for v in map.get("ids")?.as_array()? {
                let id = model_id(v)?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Some(if kind == "watch" {
                ClientMessage::Watch { ids, reference }
            } else {
                ClientMessage::Unwatch { ids, reference }
            })
        }
        _ => None,
    }
}

/// An equivalent header for a decoded message, built from its fields (key order, spacing and
/// number spelling may all differ from the original).
fn canonical_header(msg: &ClientMessage, always_ref: bool) -> String {
    let ids = |ids: &[Id]| Value::from(ids.iter().map(|id| id.get()).collect::<Vec<_>>());
    let mut v = match msg {
        ClientMessage::Send { to, .. } => json!({"type": "send", "to": to.get()}),
        ClientMessage::Reply {
            reply_to,
            status,
            content_type,
            ..
        } => {
            let mut v = json!({"type": "reply", "reply_to": reply_to, "status": status});
            if let Some(ct) = content_type {
                v["content_type"] = Value::from(ct.as_str());
            }
            v
        }
        ClientMessage::Watch { ids: list, .. } => json!({"type": "watch", "ids": ids(list)}),
        ClientMessage::Unwatch { ids: list, .. } => json!({"type": "unwatch", "ids": ids(list)}),
    };
    let reference = msg.reference();
    if always_ref || !reference.is_null() {
        v["ref"] = reference.clone();
    }
    v.to_string()
}

fn check_decode(message: &[u8], always_ref: bool) {
    let result = envelope::decode(message);
    // The framing, by the model: u16 BE length H, 2 ≤ H ≤ MAX_HEADER, H bytes of header.
    let framed = (message.len() >= 2)
        .then(|| usize::from(u16::from_be_bytes([message[0], message[1]])))
        .filter(|h| (2..=MAX_HEADER).contains(h) && 2 + h <= message.len());
    let object = framed.and_then(|h| match serde_json::from_slice::<Value>(&message[2..2 + h]) {
        Ok(Value::Object(map)) => Some((h, map)),
        _ => None,
    });
    match (&result, &object) {
        (Ok((msg, payload)), Some((h, map))) => {
            // The payload is the input's tail, in place.
            let tail = &message[2 + h..];
            assert_eq!(payload.len(), tail.len(), "payload length != input - 2 - header length");
            assert_eq!(payload.as_ptr(), tail.as_ptr(), "payload is not the input's suffix");
            let expected = model_decode(map, payload);
            assert_eq!(expected.as_ref(), Some(msg), "decode disagrees with the model");
            round_trip(msg, payload, always_ref);
        }
        (Ok((msg, _)), None) => panic!("decoded {msg:?} from an ill-framed message or a header that is no object"),
        (Err(e), Some((h, map))) => {
            let payload = &message[2 + h..];
            let expected = model_decode(map, payload);
            assert!(
                expected.is_none(),
                "refused ({}) what the model reads as {expected:?}",
                e.message
            );
            let reference = map.get("ref").cloned().unwrap_or(Value::Null);
            assert_eq!(e.reference, reference, "a refusal lost the header's ref");
            assert!(!e.message.is_empty(), "a refusal without a reason");
        }
        (Err(e), None) => {
            assert_eq!(e.reference, Value::Null, "a ref from a header that is no object");
            assert!(!e.message.is_empty(), "a refusal without a reason");
        }
    }
}

fn round_trip(msg: &ClientMessage, payload: &[u8], always_ref: bool) {
    let header = canonical_header(msg, always_ref);
    if header.len() > MAX_HEADER {
        // Spelled longer than the original (`1E9` is written `1000000000.0`): too long to send.
        return;
    }
    let again = envelope::encode_message(&header, payload);
    assert_eq!(again.len(), 2 + header.len() + payload.len(), "encode_message's length");
    match envelope::decode(&again) {
        Ok((msg2, payload2)) => {
            assert!(
                same_message(&msg2, msg),
                "round trip through {header} changed the message:\n{msg:?}\n{msg2:?}"
            );
            assert_eq!(payload2, payload, "round trip changed the payload");
        }
        Err(e) => panic!("round trip through {header} refused: {}", e.message),
    }
}

/// Whether two decoded messages are the same; `ref` numbers may differ by one unit in the last
/// place while `REF_NUMBERS_EXACT` is off.
fn same_message(a: &ClientMessage, b: &ClientMessage) -> bool {
    if REF_NUMBERS_EXACT {
        return a == b;
    }
    let without_ref = |m: &ClientMessage| {
        let mut m = m.clone();
        match &mut m {
            ClientMessage::Send { reference, .. }
            | ClientMessage::Reply { reference, .. }
            | ClientMessage::Watch { reference, .. }
            | ClientMessage::Unwatch { reference, .. } => *reference = Value::Null,
        }
        m
    };
    without_ref(a) == without_ref(b) && close_json(a.reference(), b.reference())
}

fn close_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x != y => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x.is_sign_negative() == y.is_sign_negative() => {
                x.to_bits().abs_diff(y.to_bits()) <= 1
            }
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close_json(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close_json(v, w)))
        }
        _ => a == b,
    }
}

/// `negotiate` by the model: tokens split on `,`, trimmed of ASCII whitespace.
fn model_negotiate(lines: &[&[u8]]) -> Offer {
    let mut offered = false;
    for line in lines {
        for token in line.split(|&b| b == b',') {
            let start = token.iter().position(|b| !b.is_ascii_whitespace());
            let Some(start) = start else { continue };
            let end = token.iter().rposition(|b| !b.is_ascii_whitespace()).unwrap_or(start) + 1;
            let token = &token[start..end];
            if token == PROTOCOL.as_bytes() {
                return Offer::Envelope;
            }
            offered = true;
        }
    }
    if offered {
        Offer::Unsupported
    } else {
        Offer::Plain
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let rest = c.rest();
    if mode & 1 == 0 {
        check_decode(rest, mode & 2 != 0);
    } else {
        let lines: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
        let got = envelope::negotiate(lines.iter().copied());
        assert_eq!(got, model_negotiate(&lines), "negotiate of {lines:?}");
        // The offer does not depend on how the tokens are spread over lines.
        let joined = lines.join(&b","[..]);
        assert_eq!(
            envelope::negotiate(std::iter::once(&joined[..])),
            got,
            "one line vs many"
        );
    }
});
