//! The one HTTP/1.1 exchange `send` makes: `POST /{id}` with `Content-Length` and
//! `Connection: close`, then one response read with httparse.
//!
//! Written by hand rather than taken from an HTTP client crate: it is one request per connection,
//! on the connection [`crate::net`] already opened over the endpoint the SRV order chose, with
//! the workspace's rustls setup; a client crate would bring a second HTTP stack, its own TLS and
//! resolver configuration, to do less than these few lines.

use std::io::{self, Read, Write};

use crate::net::Stream;
use crate::outcome::{Failure, Kind};

/// Largest response head read (the broker's are a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body read (error sentences are one line; a `?reply=` answer may be larger).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A response: status, headers, body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as one line of text, for messages.
    pub fn sentence(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// What goes in the request besides the body.
pub struct Request<'a> {
    /// `Host` header value.
    pub host: &'a str,
    /// Request target, `/base/ID?query`.
    pub target: &'a str,
    /// Bearer token.
    pub token: Option<&'a str>,
    /// `Content-Type` of the body.
    pub content_type: &'a str,
}

/// The request head (body not included).
pub fn head(req: &Request<'_>, body_len: usize) -> Vec<u8> {
    let mut h = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: fedbroker/{}\r\nContent-Type: {}\r\nContent-Length: {body_len}\r\nConnection: close\r\n",
        req.target,
        req.host,
        env!("CARGO_PKG_VERSION"),
        req.content_type
    );
    if let Some(token) = req.token {
        h.push_str("Authorization: Bearer ");
        h.push_str(token);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Sends the POST on `stream` and reads the response.
///
/// When writing fails (a broker answers a refusal such as `413` or `503` before reading the body,
/// then closes), the response it sent is still read and returned.
pub fn post(stream: &mut Stream, req: &Request<'_>, body: &[u8]) -> Result<Response, Failure> {
    let written = stream
        .write_all(&head(req, body.len()))
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush());
    match read_response(stream) {
        Ok(r) => Ok(r),
        Err(e) => {
            let why = match written {
                Err(w) => format!("sending failed ({w}), and no response: {e}"),
                Ok(()) => format!("no response: {e}"),
            };
            Err(Failure::new(
                if e.kind() == io::ErrorKind::InvalidData {
                    Kind::Local
                } else {
                    Kind::Unreachable
                },
                format!("{} {}: {why}", req.host, req.target),
            ))
        }
    }
}

/// Reads one final response (skipping `1xx`).
pub fn read_response(stream: &mut impl Read) -> io::Result<Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed.code.unwrap_or(0);
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).trim().to_owned()))
                    .collect();
                buf.drain(..len);
                if (100..200).contains(&status) {
                    continue;
                }
                let mut response = Response {
                    status,
                    headers,
                    body: Vec::new(),
                };
                response.body = read_body(stream, buf, response.header("content-length"))?;
                return Ok(response);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad HTTP response: {e}"),
                ))
            }
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before a complete response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The body: `Content-Length` bytes, or (without it) up to the end of the connection.
fn read_body(stream: &mut impl Read, mut body: Vec<u8>, length: Option<&str>) -> io::Result<Vec<u8>> {
    match length {
        Some(len) => {
            let len: usize = len
                .parse()
                .ok()
                .filter(|&l| l <= MAX_BODY)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad or too large Content-Length"))?;
            if body.len() < len {
                let missing = len - body.len();
                stream.take(missing as u64).read_to_end(&mut body)?;
            }
            if body.len() < len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "response body cut short"));
            }
            body.truncate(len);
        }
        None => {
            stream
                .take((MAX_BODY - body.len().min(MAX_BODY)) as u64)
                .read_to_end(&mut body)?;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_length_token_and_close() {
        let req = Request {
            host: "b.example:8443",
            target: "/mq/42",
            token: Some("t0k"),
            content_type: "application/octet-stream",
        };
        let h = String::from_utf8(head(&req, 5)).unwrap();
        assert!(h.starts_with("POST /mq/42 HTTP/1.1\r\nHost: b.example:8443\r\n"), "{h}");
        for line in [
            "Content-Length: 5\r\n",
            "Connection: close\r\n",
            "Authorization: Bearer t0k\r\n",
        ] {
            assert!(h.contains(line), "{line:?} in {h}");
        }
        assert!(h.ends_with("\r\n\r\n"));
    }

    /// Hands out its input a few bytes per read, as a socket may.
    struct Chunked<'a> {
        chunks: std::slice::Chunks<'a, u8>,
        current: &'a [u8],
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.current.is_empty() {
                match self.chunks.next() {
                    Some(c) => self.current = c,
                    None => return Ok(0),
                }
            }
            self.current.read(buf)
        }
    }

    #[test]
    fn reads_a_response_in_any_split_after_a_100() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 6\r\n\r\nbusy.\nEXTRA";
        for step in [1, 3, 7, raw.len()] {
            let mut reader = Chunked {
                chunks: raw.chunks(step),
                current: &[],
            };
            let r = read_response(&mut reader).unwrap();
            assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
            assert_eq!(r.body, b"busy.\n");
        }
    }

    #[test]
    fn cut_short_and_garbage_are_errors() {
        let mut short = &b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nno"[..];
        assert_eq!(
            read_response(&mut short).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut garbage = &b"SSH-2.0-OpenSSH\r\n\r\n"[..];
        assert_eq!(
            read_response(&mut garbage).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut eof = &b"HTTP/1.1 204 No"[..];
        assert_eq!(
            read_response(&mut eof).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
