//! The `fedbroker.v1` envelope subprotocol (docs/patterns.md §3): frames and a listener that speaks it.
//!
//! Every envelope message is one binary WebSocket message: `u16` big-endian header length `H`, `H`
//! bytes of a JSON object (the header), then the payload. [`Envelope`] encodes and strictly decodes
//! that; [`EnvelopeListener`] is a tungstenite [`Listener`] that negotiated the subprotocol and sends
//! and receives envelopes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::broker::Broker;
use crate::ws::Listener;

/// The subprotocol token, as asked for in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "fedbroker.v1";

/// The largest header the contract allows (bytes).
pub const MAX_HEADER: usize = 16384;

/// One envelope message: a JSON header object and a payload.
#[derive(Clone, PartialEq)]
pub struct Envelope {
    /// The header, a JSON object.
    pub header: Value,
    /// The payload (any bytes).
    pub payload: Vec<u8>,
}

impl Envelope {
    /// An envelope with this header and payload.
    pub fn new(header: Value, payload: impl Into<Vec<u8>>) -> Envelope {
        Envelope {
            header,
            payload: payload.into(),
        }
    }

    /// The wire bytes: `u16` BE length, header JSON, payload.
    pub fn encode(&self) -> Vec<u8> {
        Envelope::encode_raw(self.header.to_string().as_bytes(), &self.payload)
    }

    /// The wire bytes of any header bytes (valid JSON or not) and payload; panics past `u16::MAX`.
    pub fn encode_raw(header: &[u8], payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(header.len()).expect("header length fits a u16");
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(header);
        out.extend_from_slice(payload);
        out
    }

    /// Decodes one message strictly (2 ≤ H ≤ 16384, the header a UTF-8 JSON object with a string
    /// `type`): a broker frame that is not exactly that is a failure of the broker.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, String> {
        let Some((len, rest)) = bytes.split_first_chunk::<2>() else {
            return Err(format!("envelope of {} bytes has no header length", bytes.len()));
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if !(2..=MAX_HEADER).contains(&len) {
            return Err(format!("header length {len} outside 2..=16384"));
        }
        if rest.len() < len {
            return Err(format!("header length {len} but only {} bytes follow", rest.len()));
        }
        let (header, payload) = rest.split_at(len);
        let text = std::str::from_utf8(header).map_err(|e| format!("header is not UTF-8: {e}"))?;
        let header: Value = serde_json::from_str(text).map_err(|e| format!("header {text:?} is not JSON: {e}"))?;
        if !header.is_object() {
            return Err(format!("header {text} is not a JSON object"));
        }
        if !header["type"].is_string() {
            return Err(format!("header {text} has no string `type`"));
        }
        Ok(Envelope {
            header,
            payload: payload.to_vec(),
        })
    }

    /// The header's `type`.
    pub fn kind(&self) -> &str {
        self.header["type"].as_str().unwrap_or_default()
    }

    /// A header key that must be a non-negative integer.
    #[track_caller]
    pub fn uint(&self, key: &str) -> u64 {
        self.header[key]
            .as_u64()
            .unwrap_or_else(|| panic!("envelope header key {key:?} missing or not a count: {self:?}"))
    }

    /// A header key that must be a string.
    #[track_caller]
    pub fn string(&self, key: &str) -> &str {
        self.header[key]
            .as_str()
            .unwrap_or_else(|| panic!("envelope header key {key:?} missing or not a string: {self:?}"))
    }

    /// Asserts the header's `type`.
    #[track_caller]
    pub fn assert_kind(&self, kind: &str) -> &Self {
        assert_eq!(self.kind(), kind, "unexpected envelope type: {self:?}");
        self
    }

    /// Asserts an `ack` for `reference` with `status` and an empty payload.
    #[track_caller]
    pub fn assert_ack(&self, reference: &Value, status: u16) -> &Self {
        self.assert_kind("ack");
        assert_eq!(&self.header["ref"], reference, "ack with the wrong `ref`: {self:?}");
        assert_eq!(
            self.uint("status"),
            u64::from(status),
            "ack with the wrong status: {self:?}"
        );
        assert!(self.payload.is_empty(), "an ack has an empty payload: {self:?}");
        self
    }

    /// Asserts an `error` for `reference` with `status`, a non-empty `error` sentence and an empty
    /// payload; returns the sentence.
    #[track_caller]
    pub fn assert_error(&self, reference: &Value, status: u16) -> &str {
        self.assert_kind("error");
        assert_eq!(&self.header["ref"], reference, "error with the wrong `ref`: {self:?}");
        assert_eq!(
            self.uint("status"),
            u64::from(status),
            "error with the wrong status: {self:?}"
        );
        assert!(self.payload.is_empty(), "an error has an empty payload: {self:?}");
        let sentence = self.string("error");
        assert!(!sentence.trim().is_empty(), "an error names the problem: {self:?}");
        sentence
    }
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.payload[..self.payload.len().min(64)];
        write!(
            f,
            "{} + {} payload bytes {:?}",
            self.header,
            self.payload.len(),
            String::from_utf8_lossy(shown)
        )
    }
}

/// A listener that negotiated `fedbroker.v1`: receives and sends envelopes.
pub struct EnvelopeListener {
    ws: Listener,
}

impl EnvelopeListener {
    /// Wraps a listener whose `101` confirmed `fedbroker.v1` (panics otherwise).
    #[track_caller]
    pub fn new(ws: Listener) -> EnvelopeListener {
        assert_eq!(
            ws.subprotocol(),
            Some(SUBPROTOCOL),
            "the 101 must confirm `Sec-WebSocket-Protocol: fedbroker.v1`"
        );
        EnvelopeListener { ws }
    }

    /// The tungstenite listener underneath.
    pub fn inner(&mut self) -> &mut Listener {
        &mut self.ws
    }

    /// Sends one envelope.
    #[track_caller]
    pub fn send(&mut self, header: Value, payload: &[u8]) {
        self.ws.send_binary(&Envelope::new(header, payload).encode());
    }

    /// Sends one binary message as is (malformed envelopes).
    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.ws.send_binary(bytes);
    }

    /// Sends one text message (which the contract forbids).
    #[track_caller]
    pub fn send_text(&mut self, text: &str) {
        self.ws.send_text(text);
    }

    /// The next envelope from the broker, strictly decoded.
    #[track_caller]
    pub fn recv(&mut self) -> Envelope {
        let bytes = self.ws.recv();
        Envelope::decode(&bytes).unwrap_or_else(|e| panic!("malformed envelope from the broker: {e}: {bytes:?}"))
    }

    /// The next envelope, which must be of `kind`.
    #[track_caller]
    pub fn recv_kind(&mut self, kind: &str) -> Envelope {
        let envelope = self.recv();
        envelope.assert_kind(kind);
        envelope
    }

    /// The next envelope, which must be a `message` for `id` with `seq`; returns it.
    #[track_caller]
    pub fn recv_message(&mut self, id: u32, seq: u64) -> Envelope {
        let envelope = self.recv_kind("message");
        assert_eq!(
            envelope.uint("id"),
            u64::from(id),
            "message for the wrong id: {envelope:?}"
        );
        assert_eq!(envelope.uint("seq"), seq, "message with the wrong seq: {envelope:?}");
        envelope
    }

    /// Sends `header` (+ `payload`) and returns the next envelope: its answer, when nothing else is
    /// on its way to this listener.
    #[track_caller]
    pub fn call(&mut self, header: Value, payload: &[u8]) -> Envelope {
        self.send(header, payload);
        self.recv()
    }

    /// `{"type":"send","to":to,"ref":reference}` + `payload`; returns the answer.
    #[track_caller]
    pub fn send_to(&mut self, to: u32, reference: Value, payload: &[u8]) -> Envelope {
        self.call(json!({"type": "send", "to": to, "ref": reference}), payload)
    }

    /// `{"type":"reply","reply_to":seq,"status":status,"ref":reference}` (+ `content_type` when
    /// given) + `body`; returns the answer.
    #[track_caller]
    pub fn reply(
        &mut self,
        seq: u64,
        status: u16,
        content_type: Option<&str>,
        reference: Value,
        body: &[u8],
    ) -> Envelope {
        let mut header = json!({"type": "reply", "reply_to": seq, "status": status, "ref": reference});
        if let Some(content_type) = content_type {
            header["content_type"] = json!(content_type);
        }
        self.call(header, body)
    }

    /// `{"type":"watch","ids":ids,"ref":reference}`; returns the answer (the events follow it).
    #[track_caller]
    pub fn watch(&mut self, ids: &[u32], reference: Value) -> Envelope {
        self.call(json!({"type": "watch", "ids": ids, "ref": reference}), b"")
    }

    /// `{"type":"unwatch","ids":ids,"ref":reference}`; returns the answer.
    #[track_caller]
    pub fn unwatch(&mut self, ids: &[u32], reference: Value) -> Envelope {
        self.call(json!({"type": "unwatch", "ids": ids, "ref": reference}), b"")
    }

    /// The next envelope, which must be a presence event `online`/`offline` for `id`.
    #[track_caller]
    pub fn expect_presence(&mut self, kind: &str, id: u32) {
        let event = self.recv();
        assert_eq!(
            (event.kind(), event.header["id"].as_u64()),
            (kind, Some(u64::from(id))),
            "expected presence event {kind} for id {id}, got {event:?}"
        );
        assert!(
            event.payload.is_empty(),
            "a presence event has an empty payload: {event:?}"
        );
    }

    /// See [`Listener::expect_close`].
    #[track_caller]
    pub fn expect_close(&mut self) -> (u16, String) {
        self.ws.expect_close()
    }

    /// See [`Listener::stay_connected`].
    #[track_caller]
    pub fn stay_connected(&mut self, duration: Duration) {
        self.ws.stay_connected(duration)
    }

    /// See [`Listener::close`].
    #[track_caller]
    pub fn close(self) {
        self.ws.close()
    }
}

impl Broker {
    /// An envelope listener on `/{id}` (`Sec-WebSocket-Protocol: fedbroker.v1`).
    #[track_caller]
    pub fn listen_envelope(&self, id: u32) -> EnvelopeListener {
        self.listen_envelope_with(&format!("/{id}"), &[])
    }

    /// An envelope listener on `path` with extra request `headers` (`Authorization`).
    #[track_caller]
    pub fn listen_envelope_with(&self, path: &str, headers: &[(&str, &str)]) -> EnvelopeListener {
        let mut all = vec![("Sec-WebSocket-Protocol", SUBPROTOCOL)];
        all.extend_from_slice(headers);
        EnvelopeListener::new(self.listen_with(path, &all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_malformed_frames() {
        let envelope = Envelope::new(json!({"type": "message", "seq": 1}), b"body".to_vec());
        let bytes = envelope.encode();
        assert_eq!(&bytes[..2], &[0, 26]);
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
        for bad in [
            &b"\x00"[..],
            b"\x00\x01{",
            b"\x00\x09{\"type\":1",
            b"\x00\x02[]",
            b"\x00\x02{}",
            b"\x00\x0f{\"type\":\"x\"}",
        ] {
            assert!(Envelope::decode(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Envelope::decode(b"\x00\x0c{\"type\":\"x\"}").unwrap().kind(), "x");
    }
}
