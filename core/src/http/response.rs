//! HTTP/1.1 response writer. Every response the broker sends is built here, errors included
//! ([`Response::error`] is the one place an [`HttpError`] becomes a status, headers and body).

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;

use crate::HttpError;

/// A response head and body, encoded with [`Response::encode`].
#[derive(Clone, Debug)]
#[must_use]
pub struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    content_type: Option<&'static str>,
    body: Bytes,
    close: bool,
}

impl Response {
    /// A response with this status and no body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            content_type: None,
            body: Bytes::new(),
            close: false,
        }
    }

    /// The response to a refused request: its status, one sentence of `text/plain`, and the headers
    /// the status calls for (`Allow`, `Upgrade`, `Retry-After`, `WWW-Authenticate`).
    pub fn error(err: &HttpError) -> Self {
        let mut r = Response::new(err.status()).body("text/plain; charset=utf-8", Bytes::from(format!("{err}\n")));
        match err {
            HttpError::MethodNotAllowed { allow } => r = r.header("Allow", *allow),
            HttpError::UpgradeRequired => r = r.header("Upgrade", "websocket"),
            HttpError::BadHandshake(_) => r = r.header("Sec-WebSocket-Version", "13"),
            HttpError::UnsupportedSubprotocol => {
                r = r
                    .header("Sec-WebSocket-Version", "13")
                    .header("Sec-WebSocket-Protocol", crate::envelope::PROTOCOL)
            }
            HttpError::QueueFull(_)
            | HttpError::TooManyConnections
            | HttpError::ShuttingDown
            | HttpError::AuthUnavailable
            | HttpError::DecisionTimeout
            | HttpError::TooManyPendingReplies
            | HttpError::RouteUnavailable
            | HttpError::StoreUnavailable
            | HttpError::MailboxFull(_) => r = r.header("Retry-After", "1"),
            HttpError::Gone { to, .. } => r = r.header("Fedbroker-Seq", to.to_string()),
            HttpError::SinceAhead { last, .. } => r = r.header("Fedbroker-Seq", last.to_string()),
            HttpError::Unauthorized => r = r.header("WWW-Authenticate", "Bearer"),
            _ => {}
        }
        if err.closes_connection() {
            r = r.close();
        }
        r
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Sets the body and its content type.
    pub fn body(mut self, content_type: &'static str, body: Bytes) -> Self {
        self.content_type = Some(content_type);
        self.body = body;
        self
    }

    /// Sets the body alone (a `Content-Type` may then be given with [`Response::header`]).
    pub fn raw_body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }

    /// Marks the response as the last on its connection (`Connection: close`).
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    /// Whether the connection closes after this response.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// The whole response as static bytes when it is a bare `204 No Content` (a delivered
    /// message's answer, the common case): queued without encoding anything.
    pub fn as_static(&self) -> Option<&'static [u8]> {
        let bare = self.headers.is_empty() && self.content_type.is_none() && self.body.is_empty() && !self.close;
        (bare && self.status == 204).then_some(b"HTTP/1.1 204 No Content\r\n\r\n")
    }

    /// Writes the response; with `head_only` (a `HEAD` request) the body is left out but its
    /// length is still announced.
    pub fn encode(&self, head_only: bool, out: &mut BytesMut) {
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        out.reserve(128 + self.body.len());
        out.put_slice(b"HTTP/1.1 ");
        put_decimal(out, u64::from(self.status));
        out.put_u8(b' ');
        out.put_slice(reason.as_bytes());
        out.put_slice(b"\r\n");
        for (name, value) in &self.headers {
            put_header(out, name, value);
        }
        if let Some(ct) = self.content_type {
            put_header(out, "Content-Type", ct);
        }
        // 1xx, 204 and 101 carry no Content-Length (RFC 9110 §8.6).
        if self.status >= 200 && self.status != 204 {
            out.put_slice(b"Content-Length: ");
            put_decimal(out, self.body.len() as u64);
            out.put_slice(b"\r\n");
        }
        if self.close {
            put_header(out, "Connection", "close");
        }
        out.put_slice(b"\r\n");
        if !head_only {
            out.put_slice(&self.body);
        }
    }
}

fn put_header(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// Writes `v` in decimal without allocating.
fn put_decimal(out: &mut BytesMut, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_204_is_what_encode_writes() {
        let mut b = BytesMut::new();
        Response::new(204).encode(false, &mut b);
        assert_eq!(Response::new(204).as_static(), Some(&b[..]));
        // Anything more than a bare 204 is encoded.
        assert_eq!(Response::new(204).header("Allow", "GET").as_static(), None);
        assert_eq!(Response::new(204).close().as_static(), None);
        assert_eq!(Response::new(200).as_static(), None);
    }

    #[test]
    fn error_bodies_and_headers() {
        let mut out = BytesMut::new();
        Response::error(&HttpError::MethodNotAllowed { allow: "GET, HEAD" }).encode(false, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{text}");
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(text.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"));
        assert!(text.ends_with("allowed: GET, HEAD\n"));
    }

    #[test]
    fn no_content_has_no_length() {
        let mut out = BytesMut::new();
        Response::new(204).encode(false, &mut out);
        assert_eq!(&out[..], b"HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn head_keeps_length_drops_body() {
        let mut out = BytesMut::new();
        Response::new(200)
            .body("text/plain", Bytes::from_static(b"ok"))
            .encode(true, &mut out);
        assert!(out.ends_with(b"Content-Length: 2\r\n\r\n"));
    }
}
