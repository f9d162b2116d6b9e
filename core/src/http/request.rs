//! Incremental request-head reader on `httparse` (RFC 9112 §2–§6), with the limits and refusals of
//! SPEC §3.

use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};

use crate::HttpError;

/// Size limits of the request head (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line, without its line ending (`414` above).
    pub max_request_line: usize,
    /// Largest head, request line and headers included (`431` above).
    pub max_head: usize,
    /// Most header fields (`431` above); at most [`MAX_HEADERS`].
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_head: 16 * 1024,
            max_headers: 64,
        }
    }
}

/// Most header fields any request may have (SPEC §3: `431` above 64).
pub const MAX_HEADERS: usize = 64;

/// How the body of a request is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// `Content-Length: n`, or no body at all (`Length(0)`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl BodyFraming {
    /// Whether a body follows the head.
    pub fn has_body(self) -> bool {
        self != BodyFraming::Length(0)
    }
}

/// A parsed and checked request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    method: Method,
    path: String,
    query: Option<String>,
    version: Version,
    headers: HeaderMap,
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
    upgrade_websocket: bool,
    connection_upgrade: bool,
}

impl RequestHead {
    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }
    /// The path of the request target (origin-form; an absolute-form target is reduced to it).
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    /// HTTP/1.0 or HTTP/1.1.
    pub fn version(&self) -> Version {
        self.version
    }
    /// All header fields as received.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    /// How the body is delimited.
    pub fn framing(&self) -> BodyFraming {
        self.framing
    }
    /// Whether the connection may carry another request after this one.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }
    /// Whether the client waits for `100 Continue` before sending the body.
    pub fn expect_continue(&self) -> bool {
        self.expect_continue
    }
    /// Whether `Upgrade` names `websocket`.
    pub fn upgrade_websocket(&self) -> bool {
        self.upgrade_websocket
    }
    /// Whether `Connection` names `upgrade`.
    pub fn connection_upgrade(&self) -> bool {
        self.connection_upgrade
    }
    /// The value of a header that must appear at most once; `Err(Repeated)` when it appears more.
    pub fn single_header(&self, name: &str) -> Result<Option<&HeaderValue>, Repeated> {
        let mut it = self.headers.get_all(name).iter();
        let first = it.next();
        if it.next().is_some() {
            return Err(Repeated);
        }
        Ok(first)
    }
}

/// A header that may appear once appeared more often.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repeated;

/// Reads request heads from a buffer that the caller appends received bytes to.
///
/// "Need more bytes" is `Ok(None)`, not an error. The reader re-parses only once the end of the
/// head is in the buffer, so a head trickled in byte by byte costs linear time.
#[derive(Debug, Default)]
pub struct HeadReader {
    limits: Limits,
    /// Bytes of the buffer already searched for the end of the head.
    scanned: usize,
}

impl HeadReader {
    /// A reader with the given limits.
    pub fn new(limits: Limits) -> Self {
        HeadReader { limits, scanned: 0 }
    }

    /// Whether a request has begun in `buf` (bytes other than the empty lines allowed before it).
    pub fn started(&self, buf: &[u8]) -> bool {
        buf.iter().any(|&b| b != b'\r' && b != b'\n')
    }

    /// Takes one complete head off the front of `buf`, if there is one.
    pub fn read(&mut self, buf: &mut BytesMut) -> Result<Option<RequestHead>, HttpError> {
        // RFC 9112 §2.2: ignore empty lines before the request line.
        let skip = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
        if skip > 0 {
            buf.advance(skip);
            self.scanned = self.scanned.saturating_sub(skip);
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let line_end = buf
            .iter()
            .take(self.limits.max_request_line + 2)
            .position(|&b| b == b'\n');
        let line_len = match line_end {
            Some(p) => p,
            None if buf.len() > self.limits.max_request_line + 1 => return Err(HttpError::UriTooLong),
            None => return Ok(None),
        };
        let line = trim_cr(&buf[..line_len]);
        if line.len() > self.limits.max_request_line {
            return Err(HttpError::UriTooLong);
        }
        let Some(head_len) = self.find_head_end(buf) else {
            if buf.len() > self.limits.max_head {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        };
        if head_len > self.limits.max_head {
            return Err(HttpError::HeadTooLarge);
        }
        let head = parse(&buf[..head_len], line, self.limits.max_headers)?;
        buf.advance(head_len);
        self.scanned = 0;
        Ok(Some(head))
    }

    /// Length of the head (through its blank line) if the blank line is in `buf`.
    fn find_head_end(&mut self, buf: &[u8]) -> Option<usize> {
        // One forward pass over line ends, stopping at the first blank line (CRLF or bare LF,
        // as httparse accepts both); never past it, so a body or the next pipelined request
        // behind the head costs nothing.
        let mut i = self.scanned.saturating_sub(2);
        while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
            let nl = i + p;
            match buf.get(nl + 1) {
                Some(b'\n') => return Some(nl + 2),
                Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
                // The blank line may still be arriving: look again from this line end.
                None => {
                    self.scanned = nl;
                    return None;
                }
                Some(b'\r') if nl + 2 == buf.len() => {
                    self.scanned = nl;
                    return None;
                }
                _ => i = nl + 1,
            }
        }
        self.scanned = buf.len();
        None
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses a complete head and applies the framing rules of RFC 9112 §6.
fn parse(bytes: &[u8], line: &[u8], max_headers: usize) -> Result<RequestHead, HttpError> {
    // On the stack: no allocation per request. The limit can only be lowered below this.
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage[..max_headers.min(MAX_HEADERS)]);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::MalformedHead),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(line)),
        Err(_) => return Err(HttpError::MalformedHead),
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HttpError::VersionNotSupported),
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| HttpError::MalformedHead)?;
    let (path, query) = split_target(req.path.unwrap_or(""), &method)?;

    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HttpError::MalformedHead)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HttpError::MalformedHead)?;
        headers.append(name, value);
    }

    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HttpError::BadHost),
        (None, _) if version == Version::HTTP_11 => return Err(HttpError::BadHost),
        (Some(h), None) if !valid_host(h.as_bytes()) => return Err(HttpError::InvalidHost),
        _ => {}
    }

    let framing = framing(&headers, version)?;
    let conn = tokens(&headers, http::header::CONNECTION);
    let has = |t: &str| conn.iter().any(|c| c.eq_ignore_ascii_case(t));
    let keep_alive = match version {
        Version::HTTP_10 => has("keep-alive") && !has("close"),
        _ => !has("close"),
    };
    let connection_upgrade = has("upgrade");
    let upgrade_websocket = tokens(&headers, http::header::UPGRADE)
        .iter()
        .any(|t| t.eq_ignore_ascii_case("websocket"));

    let mut expect_continue = false;
    for v in headers.get_all(http::header::EXPECT) {
        let v = v.to_str().map_err(|_| HttpError::ExpectationFailed)?.trim();
        if v.eq_ignore_ascii_case("100-continue") {
            // RFC 9110 §10.1.1: a 100-continue expectation from an HTTP/1.0 client is ignored.
            expect_continue = version == Version::HTTP_11;
        } else {
            return Err(HttpError::ExpectationFailed);
        }
    }

    Ok(RequestHead {
        method,
        path,
        query,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
        upgrade_websocket,
        connection_upgrade,
    })
}

/// `Host` = uri-host [ ":" port ] (RFC 9112 §3.2, RFC 3986 §3.2.2); empty is allowed.
fn valid_host(h: &[u8]) -> bool {
    let (host, port) = if h.first() == Some(&b'[') {
        // IP-literal: [ IPv6 / IPvFuture ] — hex digits, ':', '.', and the IPvFuture characters.
        let Some(end) = h.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &h[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b":.-_~!$&'()*+,;=".contains(&b))
        {
            return false;
        }
        (&h[..0], &h[end + 1..])
    } else {
        match h.iter().rposition(|&b| b == b':') {
            Some(i) => (&h[..i], &h[i..]),
            None => (h, &h[h.len()..]),
        }
    };
    let reg_name = host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    reg_name && port_ok
}

/// `HTTP/2.0` and the like are well-formed but unsupported (505); anything else is malformed (400).
fn version_error(line: &[u8]) -> HttpError {
    let last = line.rsplit(|&b| b == b' ').next().unwrap_or(b"");
    match last {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            HttpError::VersionNotSupported
        }
        [b'H', b'T', b'T', b'P', b'/', major] if major.is_ascii_digit() => HttpError::VersionNotSupported,
        _ => HttpError::MalformedHead,
    }
}

/// Splits the request target into path and query; reduces absolute-form to origin-form.
fn split_target(target: &str, method: &Method) -> Result<(String, Option<String>), HttpError> {
    let rest = if target.starts_with('/') {
        target
    } else if target == "*" && method == Method::OPTIONS {
        return Ok(("*".to_owned(), None));
    } else if let Some(after) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        // RFC 9112 §3.2.2: a server must accept the absolute form; the authority is not routed on.
        match after.find(['/', '?']) {
            Some(i) if after.as_bytes()[i] == b'/' => &after[i..],
            Some(i) => return Ok(("/".to_owned(), Some(after[i + 1..].to_owned()))),
            None => "/",
        }
    } else {
        return Err(HttpError::MalformedHead);
    };
    if rest.contains('#') {
        return Err(HttpError::MalformedHead);
    }
    Ok(match rest.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (rest.to_owned(), None),
    })
}

/// Comma-separated tokens of every field with this name, trimmed, empty ones dropped.
fn tokens(headers: &HeaderMap, name: HeaderName) -> Vec<&str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Body framing per RFC 9112 §6.3, refusing every ambiguous shape.
fn framing(headers: &HeaderMap, version: Version) -> Result<BodyFraming, HttpError> {
    let has_te = headers.contains_key(http::header::TRANSFER_ENCODING);
    let has_cl = headers.contains_key(http::header::CONTENT_LENGTH);
    if has_te && has_cl {
        return Err(HttpError::LengthAndChunked);
    }
    if has_te {
        if version != Version::HTTP_11 {
            return Err(HttpError::BadTransferEncoding);
        }
        // Raw values, so that a non-UTF-8 value is refused rather than skipped.
        let mut codings = Vec::new();
        for v in headers.get_all(http::header::TRANSFER_ENCODING) {
            let v = v.to_str().map_err(|_| HttpError::BadTransferEncoding)?;
            codings.extend(v.split(',').map(str::trim).filter(|t| !t.is_empty()));
        }
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case("chunked") => Ok(BodyFraming::Chunked),
            _ => Err(HttpError::BadTransferEncoding),
        };
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::BadContentLength);
            }
            // Saturate: a length beyond u64 is simply too large (413), not malformed.
            let n = part
                .iter()
                .fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')));
            match length {
                Some(prev) if prev != n => return Err(HttpError::BadContentLength),
                _ => length = Some(n),
            }
        }
    }
    Ok(BodyFraming::Length(length.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> Result<Option<RequestHead>, HttpError> {
        HeadReader::new(Limits::default()).read(&mut BytesMut::from(input))
    }

    #[test]
    fn simple_post() {
        let h = read(b"POST /42?a=b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(h.method(), Method::POST);
        assert_eq!(h.path(), "/42");
        assert_eq!(h.query(), Some("a=b"));
        assert_eq!(h.framing(), BodyFraming::Length(5));
        assert!(h.keep_alive());
    }

    #[test]
    fn partial_is_not_an_error() {
        assert!(read(b"POST /42 HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert!(read(b"PO").unwrap().is_none());
        assert!(read(b"\r\n\r\n").unwrap().is_none());
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: host:port\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
            (b"GET / FOO\r\nHost: a\r\n\r\n", 400),
            (b"\x00\x01garbage\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n folded\r\n\r\n", 400),
            (
                b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n", 400),
            (b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400),
            (b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
            (
                b"POST /1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                400,
            ),
            (
                b"POST /1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"POST /1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
                400,
            ),
            (b"POST /1 HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST /1 HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
            (b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ];
        for (input, status) in cases {
            let got = read(input).err().map(|e| e.status());
            assert_eq!(got, Some(*status), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn accepted_shapes() {
        let h = read(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length: 3, 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing(), BodyFraming::Length(3));
        let h = read(b"POST /1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing(), BodyFraming::Chunked);
        let h = read(b"GET /1 HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive());
        let h = read(b"GET /1 HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive());
        let h = read(b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive());
        let h = read(b"\r\nGET http://h:1/7?x HTTP/1.1\nHost: a\n\n").unwrap().unwrap();
        assert_eq!((h.path(), h.query()), ("/7", Some("x")));
        for host in ["127.0.0.1:8080", "[::1]:80", "example.com", "a-b.c_d~e", "", "[v1.x]"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(read(raw.as_bytes()).unwrap().is_some(), "{host}");
        }
        let h = read(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.path(), "*");
        let h = read(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing(), BodyFraming::Length(u64::MAX));
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(8200));
        assert_eq!(read(long.as_bytes()).unwrap_err().status(), 414);
        // Unterminated long line: 414 as soon as it is known to be too long.
        assert_eq!(read("a".repeat(9000).as_bytes()).unwrap_err().status(), 414);
        let mut big = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..30 {
            big.push_str(&format!("X-{i}: {}\r\n", "v".repeat(420)));
        }
        big.push_str("\r\n");
        assert!(big.len() > 12 * 1024 && big.len() < 16 * 1024);
        assert!(read(big.as_bytes()).unwrap().is_some());
        let mut huge = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..40 {
            huge.push_str(&format!("X-{i}: {}\r\n", "v".repeat(420)));
        }
        assert_eq!(read(huge.as_bytes()).unwrap_err().status(), 431);
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..64 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(read(many.as_bytes()).unwrap_err().status(), 431);
    }
}
