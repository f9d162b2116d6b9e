//! Incremental request-head reader on `httparse` (RFC 9112 §2–§6), with the limits and refusals of
//! SPEC §3.

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Version};

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
///
/// It keeps the head's bytes as received (shared with the connection's input buffer, not copied)
/// and the position of each field in them: reading a request builds no map and allocates at most
/// one small vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    raw: Bytes,
    method: Method,
    /// `None`: an absolute-form target without a path, which means `/`.
    path: Option<Span>,
    query: Option<Span>,
    version: Version,
    fields: Vec<Field>,
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
    upgrade_websocket: bool,
    connection_upgrade: bool,
}

/// A byte range of [`RequestHead::raw`]; a head is at most a few KiB, far below `u32::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The span of `part`, a subslice of `whole`.
    fn of(whole: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
        debug_assert!(start + part.len() <= whole.len());
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    fn get(self, raw: &[u8]) -> &[u8] {
        raw.get(self.start as usize..self.end as usize).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    name: Span,
    value: Span,
}

impl RequestHead {
    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }
    /// The path of the request target (origin-form; an absolute-form target is reduced to it).
    pub fn path(&self) -> &str {
        match self.path {
            Some(span) => self.text(span),
            None => "/",
        }
    }
    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.query.map(|span| self.text(span))
    }
    /// HTTP/1.0 or HTTP/1.1.
    pub fn version(&self) -> Version {
        self.version
    }
    /// The head's bytes as received, from the request line through the blank line.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
    /// All header fields in the order received: name as sent (any case), value without the
    /// surrounding whitespace. Values are bytes: HTTP allows any octet but controls in them.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter().map(|f| (self.text(f.name), f.value.get(&self.raw)))
    }
    /// The values of every field named `name` (compared without regard to case), in order.
    pub fn header_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.fields
            .iter()
            .filter(move |f| f.name.get(&self.raw).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| f.value.get(&self.raw))
    }
    /// The value of the first field named `name`, if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_all(name).next()
    }
    /// The value of the first field named `name` as text: `None` when there is none, or when it
    /// holds bytes other than visible ASCII, space and tab (as `http::HeaderValue::to_str`).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(visible_ascii)
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
    pub fn single_header(&self, name: &str) -> Result<Option<&[u8]>, Repeated> {
        let mut it = self.header_all(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(Repeated);
        }
        Ok(first)
    }

    /// Text the parser has already checked to be ASCII (method, target, names).
    fn text(&self, span: Span) -> &str {
        std::str::from_utf8(span.get(&self.raw)).unwrap_or_default()
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
    /// Whether httparse has already been tried on this head while it was incomplete.
    tried: bool,
}

impl HeadReader {
    /// A reader with the given limits.
    pub fn new(limits: Limits) -> Self {
        HeadReader {
            limits,
            scanned: 0,
            tried: false,
        }
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
        // Most heads arrive whole, so httparse alone finds the end, in its one pass. Tried once
        // per head only: a head trickling in is searched for its end incrementally below, so
        // it costs linear time however it is split.
        if !self.tried {
            self.tried = true;
            if let Ok(Some((head, head_len))) = parse(buf, line, self.limits.max_headers) {
                return self.take(buf, head, head_len).map(Some);
            }
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
        match parse(&buf[..head_len], line, self.limits.max_headers)? {
            Some((head, _)) => self.take(buf, head, head_len).map(Some),
            None => Err(HttpError::MalformedHead),
        }
    }

    /// Takes the parsed head's `head_len` bytes off `buf`, within the head size limit.
    fn take(&mut self, buf: &mut BytesMut, mut head: RequestHead, head_len: usize) -> Result<RequestHead, HttpError> {
        if head_len > self.limits.max_head {
            return Err(HttpError::HeadTooLarge);
        }
        // The spans were taken relative to the buffer's start, which is where `raw` starts.
        head.raw = buf.split_to(head_len).freeze();
        self.scanned = 0;
        self.tried = false;
        Ok(head)
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

/// `v` as text if it is visible ASCII, space and tab only.
fn visible_ascii(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses the head at the start of `bytes` and applies the framing rules of RFC 9112 §6: the
/// head and its length, or `None` if it is not complete. The head's `raw` is left empty for the
/// caller to fill with the head's bytes, which every span refers to.
fn parse(bytes: &[u8], line: &[u8], max_headers: usize) -> Result<Option<(RequestHead, usize)>, HttpError> {
    // On the stack: no allocation per request. The limit can only be lowered below this.
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage[..max_headers.min(MAX_HEADERS)]);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(line)),
        Err(_) => return Err(HttpError::MalformedHead),
    };
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HttpError::VersionNotSupported),
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| HttpError::MalformedHead)?;
    let (path, query) = split_target(bytes, req.path.unwrap_or(""), &method)?;
    // httparse has checked names (tokens) and values (no controls but tab), as `http` would.
    // One pass records every field and sorts out the few the broker itself acts on.
    let mut fields = Vec::with_capacity(req.headers.len());
    let mut known = Known::default();
    for h in req.headers.iter() {
        fields.push(Field {
            name: Span::of(bytes, h.name.as_bytes()),
            value: Span::of(bytes, h.value),
        });
        known.add(h.name.as_bytes(), h.value);
    }

    match known.hosts {
        [Some(_), Some(_)] => return Err(HttpError::BadHost),
        [None, _] if version == Version::HTTP_11 => return Err(HttpError::BadHost),
        [Some(h), None] if !valid_host(h) => return Err(HttpError::InvalidHost),
        _ => {}
    }
    let framing = known.framing(version)?;
    if known.expect_other {
        return Err(HttpError::ExpectationFailed);
    }
    let keep_alive = match version {
        Version::HTTP_10 => known.connection_keep_alive && !known.connection_close,
        _ => !known.connection_close,
    };
    // RFC 9110 §10.1.1: a 100-continue expectation from an HTTP/1.0 client is ignored.
    let expect_continue = known.expect_continue && version == Version::HTTP_11;
    let (upgrade_websocket, connection_upgrade) = (known.upgrade_websocket, known.connection_upgrade);

    let head = RequestHead {
        raw: Bytes::new(),
        method,
        path,
        query,
        version,
        fields,
        framing,
        keep_alive,
        expect_continue,
        upgrade_websocket,
        connection_upgrade,
    };
    Ok(Some((head, head_len)))
}

/// `Host` = uri-host [ ":" port ] (RFC 9112 §3.2, RFC 3986 §3.2.2); empty is allowed.
fn valid_host(h: &[u8]) -> bool {
    let (host, port) = if h.first() == Some(&b'[') {
        // IP-literal: [ IPv6 / IPvFuture ] — hex digits, ':', '.', and the IPvFuture characters.
        let Some(end) = h.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &h[1..end];
        if inner.is_empty() || !inner.iter().all(|&b| b == b':' || (b != b'%' && reg_name_char(b))) {
            return false;
        }
        (&h[..0], &h[end + 1..])
    } else {
        match h.iter().rposition(|&b| b == b':') {
            Some(i) => (&h[..i], &h[i..]),
            None => (h, &h[h.len()..]),
        }
    };
    let reg_name = host.iter().all(|&b| reg_name_char(b));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    reg_name && port_ok
}

/// unreserved / pct-encoded ('%') / sub-delims (RFC 3986 §3.2.2).
fn reg_name_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&'
        | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
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

/// Splits the request target (a subslice of `bytes`) into path and query; reduces absolute-form
/// to origin-form (a `None` path then means `/`).
fn split_target(bytes: &[u8], target: &str, method: &Method) -> Result<(Option<Span>, Option<Span>), HttpError> {
    let span = |s: &str| Some(Span::of(bytes, s.as_bytes()));
    let rest = if target.starts_with('/') {
        target
    } else if target == "*" && method == Method::OPTIONS {
        return Ok((span(target), None));
    } else if let Some(after) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        // RFC 9112 §3.2.2: a server must accept the absolute form; the authority is not routed on.
        match after.find(['/', '?']) {
            Some(i) if after.as_bytes()[i] == b'/' => &after[i..],
            Some(i) => return Ok((None, span(&after[i + 1..]))),
            None => return Ok((None, None)),
        }
    } else {
        return Err(HttpError::MalformedHead);
    };
    if rest.contains('#') {
        return Err(HttpError::MalformedHead);
    }
    Ok(match rest.split_once('?') {
        Some((p, q)) => (span(p), span(q)),
        None => (span(rest), None),
    })
}

/// Comma-separated tokens of a value, trimmed, empty ones dropped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// What the fields the broker acts on say, gathered in one pass over the head.
#[derive(Default)]
struct Known<'a> {
    /// The first two `Host` values (a second one is an error).
    hosts: [Option<&'a [u8]>; 2],
    connection_close: bool,
    connection_keep_alive: bool,
    connection_upgrade: bool,
    upgrade_websocket: bool,
    expect_continue: bool,
    /// An `Expect` other than `100-continue` (417).
    expect_other: bool,
    /// `Transfer-Encoding` present, and its codings over all its fields: how many, and whether the
    /// first is `chunked`.
    transfer_encoding: bool,
    codings: usize,
    chunked_first: bool,
    /// `Content-Length` present; its value if every value agrees; `bad` if one is not a number
    /// or they disagree.
    content_length: bool,
    length: Option<u64>,
    length_bad: bool,
}

impl<'a> Known<'a> {
    fn add(&mut self, name: &[u8], value: &'a [u8]) {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        // Lengths first: most fields are none of these, and are passed over at one comparison.
        match name.len() {
            4 if is("host") => {
                let free = if self.hosts[0].is_none() { 0 } else { 1 };
                self.hosts[free] = Some(value);
            }
            6 if is("expect") => {
                if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    self.expect_continue = true;
                } else {
                    self.expect_other = true;
                }
            }
            7 if is("upgrade") => {
                self.upgrade_websocket |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"websocket"));
            }
            10 if is("connection") => {
                for t in tokens(value) {
                    self.connection_close |= t.eq_ignore_ascii_case(b"close");
                    self.connection_keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                    self.connection_upgrade |= t.eq_ignore_ascii_case(b"upgrade");
                }
            }
            14 if is("content-length") => {
                self.content_length = true;
                for part in value.split(|&b| b == b',') {
                    let part = part.trim_ascii();
                    if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                        self.length_bad = true;
                        continue;
                    }
                    // Saturate: a length beyond u64 is simply too large (413), not malformed.
                    let n = part
                        .iter()
                        .fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')));
                    match self.length {
                        Some(prev) if prev != n => self.length_bad = true,
                        _ => self.length = Some(n),
                    }
                }
            }
            17 if is("transfer-encoding") => {
                self.transfer_encoding = true;
                for t in tokens(value) {
                    if self.codings == 0 {
                        self.chunked_first = t.eq_ignore_ascii_case(b"chunked");
                    }
                    self.codings += 1;
                }
            }
            _ => {}
        }
    }

    /// Body framing per RFC 9112 §6.3, refusing every ambiguous shape.
    fn framing(&self, version: Version) -> Result<BodyFraming, HttpError> {
        if self.transfer_encoding && self.content_length {
            return Err(HttpError::LengthAndChunked);
        }
        if self.transfer_encoding {
            // Exactly one coding in all the fields together, and it is chunked.
            return match version == Version::HTTP_11 && self.codings == 1 && self.chunked_first {
                true => Ok(BodyFraming::Chunked),
                false => Err(HttpError::BadTransferEncoding),
            };
        }
        if self.length_bad {
            return Err(HttpError::BadContentLength);
        }
        Ok(BodyFraming::Length(self.length.unwrap_or(0)))
    }
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
    fn header_access() {
        let raw: &[u8] =
            b"GET http://h:1?q=1 HTTP/1.1\r\nHost: h\r\nX-A:  one \r\nx-a: two\r\nOrigin: caf\xc3\xa9\r\n\r\nrest";
        let mut buf = BytesMut::from(raw);
        let h = HeadReader::new(Limits::default()).read(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..], b"rest");
        assert_eq!(h.raw(), &raw[..raw.len() - 4]);
        assert_eq!((h.path(), h.query()), ("/", Some("q=1")));
        let all: Vec<(&str, &[u8])> = h.headers().collect();
        assert_eq!(
            all,
            [
                ("Host", &b"h"[..]),
                ("X-A", b"one"),
                ("x-a", b"two"),
                ("Origin", b"caf\xc3\xa9")
            ]
        );
        assert_eq!(h.header_all("x-A").collect::<Vec<_>>(), [&b"one"[..], b"two"]);
        assert_eq!(h.single_header("x-a"), Err(Repeated));
        assert_eq!(h.single_header("host"), Ok(Some(&b"h"[..])));
        assert_eq!(h.single_header("missing"), Ok(None));
        assert_eq!(h.header_str("HOST"), Some("h"));
        // Not visible ASCII: no text, as http::HeaderValue::to_str.
        assert_eq!(h.header_str("origin"), None);
        // A token list still counts when another member of it is not ASCII.
        let h = read(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: \xff, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive());
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
