//! A small, strict HTTP/1.1 client over a TCP socket, plain or TLS: the suite's oracle for §3.
//!
//! It writes whatever bytes a test wants and reads responses one at a time from a buffered stream, so
//! keep-alive and pipelining are observable. Every read is bounded by the connection's read timeout.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::tls;

/// Default bound on every connect, read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response head the client accepts.
const MAX_HEAD: usize = 64 * 1024;

/// Why no (complete) response could be read.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing arrived within the read timeout.
    Timeout,
    /// The peer closed the connection cleanly; `partial` bytes of an unfinished message were read.
    Eof {
        /// Bytes of the unfinished message that had arrived.
        partial: usize,
    },
    /// The peer reset the connection.
    Reset,
    /// Any other socket error.
    Io(io::Error),
    /// The bytes received are not a valid HTTP/1.1 response.
    Malformed(String),
}

impl ReadError {
    /// True if the connection ended (cleanly or by reset) with no unfinished message.
    pub fn is_closed(&self) -> bool {
        matches!(self, ReadError::Eof { partial: 0 } | ReadError::Reset)
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadError::Timeout,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                ReadError::Reset
            }
            _ => ReadError::Io(e),
        }
    }
}

/// One parsed response.
#[derive(Clone)]
pub struct Response {
    /// `HTTP/1.1` (or `HTTP/1.0`).
    pub version: String,
    /// The status code.
    pub status: u16,
    /// The reason phrase (may be empty).
    pub reason: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The decoded body (de-chunked if it was chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the first header field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of the header fields named `name`.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a header `name` lists `token` (comma-separated, case-insensitive), as in `Connection: close`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status code.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status in response:\n{self:?}");
        self
    }

    /// Asserts an error response per §3: this status, `text/plain; charset=utf-8`, a non-empty body.
    #[track_caller]
    pub fn assert_error(&self, status: u16) -> &Self {
        self.assert_status(status);
        let content_type = self.header("content-type").unwrap_or("");
        assert_eq!(
            normalize_media_type(content_type),
            "text/plain;charset=utf-8",
            "error response without `text/plain; charset=utf-8`:\n{self:?}"
        );
        assert!(!self.body.is_empty(), "error response with an empty body:\n{self:?}");
        self
    }

    /// Asserts an error response (see [`Response::assert_error`]) whose sentence is exactly
    /// `sentence` (the trailing newline of protocol.md §4 aside).
    #[track_caller]
    pub fn assert_sentence(&self, status: u16, sentence: &str) -> &Self {
        self.assert_error(status);
        assert_eq!(
            self.text().trim_end_matches(['\r', '\n']),
            sentence,
            "wrong error sentence:\n{self:?}"
        );
        self
    }

    /// Asserts `application/json` and returns the body parsed.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let content_type = self.header("content-type").unwrap_or("");
        assert!(
            normalize_media_type(content_type).starts_with("application/json"),
            "not served as application/json:\n{self:?}"
        );
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}):\n{self:?}"))
    }

    /// Asserts a `Content-Type` equal to `expected` as a media type (case and the whitespace
    /// around `;` aside).
    #[track_caller]
    pub fn assert_content_type(&self, expected: &str) -> &Self {
        let content_type = self.expect_header("content-type");
        assert_eq!(
            normalize_media_type(content_type),
            normalize_media_type(expected),
            "wrong Content-Type:\n{self:?}"
        );
        self
    }

    /// Asserts that a header is present and returns its value.
    #[track_caller]
    pub fn expect_header(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("response lacks a `{name}` header:\n{self:?}"))
    }
}

/// Lower-cases a media type and drops the optional whitespace around `;`, for comparisons.
pub(crate) fn normalize_media_type(value: &str) -> String {
    value
        .split(';')
        .map(|part| part.trim().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(";")
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {} {}", self.version, self.status, self.reason)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {value}")?;
        }
        let shown = &self.body[..self.body.len().min(512)];
        write!(f, "\n{}", String::from_utf8_lossy(shown).escape_debug())?;
        if self.body.len() > shown.len() {
            write!(f, "… ({} bytes)", self.body.len())?;
        }
        Ok(())
    }
}

/// A byte stream a [`Conn`] or a [`crate::Listener`] runs over: a `TcpStream`, or TLS over one.
pub trait Stream: Read + Write + Send {}

impl<T: Read + Write + Send> Stream for T {}

/// One client connection: a byte stream (plain or TLS) plus the bytes read but not yet consumed.
pub struct Conn {
    io: Box<dyn Stream>,
    /// The socket under `io`, for timeouts and shutdown.
    socket: TcpStream,
    buf: Vec<u8>,
    host: String,
    tls: Option<tls::TlsInfo>,
}

impl Conn {
    /// Connects to `addr` with [`IO_TIMEOUT`] on connect, reads and writes.
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
    }

    /// As [`Conn::connect`], returning the error.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let socket = stream.try_clone()?;
        Ok(Conn {
            io: Box::new(stream),
            socket,
            buf: Vec::new(),
            host: addr.to_string(),
            tls: None,
        })
    }

    /// Connects to `addr` over TLS with `config` (handshake completed); panics on failure.
    pub fn connect_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Conn {
        Conn::try_connect_tls(addr, config).unwrap_or_else(|e| panic!("cannot connect over TLS to {addr}: {e}"))
    }

    /// As [`Conn::connect_tls`], returning the error (a refused handshake included).
    pub fn try_connect_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> io::Result<Conn> {
        let (stream, socket, info) = tls::connect_tls(addr, config)?;
        Ok(Conn {
            io: Box::new(stream),
            socket,
            buf: Vec::new(),
            host: addr.to_string(),
            tls: Some(info),
        })
    }

    /// The TLS version negotiated, `None` on a plain connection.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.as_ref().map(|info| info.version)
    }

    /// What the TLS handshake negotiated, `None` on a plain connection.
    pub fn tls_info(&self) -> Option<&tls::TlsInfo> {
        self.tls.as_ref()
    }

    /// The `Host` value requests built by this connection carry (`127.0.0.1:port`, `[::1]:port`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The underlying socket (for timeouts or shutdown; with TLS, writing to it bypasses TLS).
    pub fn stream(&self) -> &TcpStream {
        &self.socket
    }

    /// Changes the bound on each read.
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.socket.set_read_timeout(Some(timeout)).expect("set_read_timeout");
    }

    /// Writes all of `bytes`; panics on error.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes) {
            panic!("write of {} bytes failed: {e}", bytes.len());
        }
    }

    /// Writes all of `bytes`.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes)?;
        self.io.flush()
    }

    /// Builds `METHOD path HTTP/1.1` with `Host` (this connection's address), the given `headers`,
    /// and `Content-Length` when there is a body or the method is POST, unless `headers` already
    /// frame the body themselves (`Content-Length` or `Transfer-Encoding`).
    pub fn build(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let framed = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding"));
        if !framed && (!body.is_empty() || method == "POST") {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends one request (see [`Conn::build`]) and reads its response (even if the write failed
    /// part-way because the server answered early and closed).
    #[track_caller]
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let request = self.build(method, path, headers, body);
        let written = self.try_send(&request);
        match (self.try_read_response(method == "HEAD"), written) {
            (Ok(response), _) => response,
            // The server may answer early (413, 503) and close before taking the whole body.
            (Err(read), Err(write)) => {
                panic!("{method} {path}: write failed ({write}), then no response: {read:?}")
            }
            (Err(read), Ok(())) => {
                panic!("{method} {path}: no response from {}: {read:?}", self.host)
            }
        }
    }

    /// Writes `POST path` with `body` and returns at once, without reading the response (a request
    /// that waits for a reply): read it later with [`Conn::read_response`].
    #[track_caller]
    pub fn start_post(&mut self, path: &str, body: &[u8]) {
        let request = self.build("POST", path, &[], body);
        self.send(&request);
    }

    /// `GET path`.
    #[track_caller]
    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// `HEAD path`.
    #[track_caller]
    pub fn head(&mut self, path: &str) -> Response {
        self.request("HEAD", path, &[], b"")
    }

    /// `POST path` with `body`.
    #[track_caller]
    pub fn post(&mut self, path: &str, body: &[u8]) -> Response {
        self.request("POST", path, &[], body)
    }

    /// `POST path` with `body`, returning what went wrong instead of panicking (a broker killed
    /// mid-run): the write's error, or the read's.
    pub fn try_post(&mut self, path: &str, body: &[u8]) -> Result<Response, String> {
        let request = self.build("POST", path, &[], body);
        self.try_send(&request).map_err(|e| e.to_string())?;
        self.try_read_response(false).map_err(|e| format!("{e:?}"))
    }

    /// `GET path` on the statistics route, checked (200, JSON) and parsed.
    #[track_caller]
    pub fn stats(&mut self, path: &str) -> serde_json::Value {
        let response = self.get(path);
        response.assert_status(200);
        let content_type = response.header("content-type").unwrap_or("");
        assert!(
            normalize_media_type(content_type).starts_with("application/json"),
            "statistics not served as application/json:\n{response:?}"
        );
        serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("statistics are not JSON ({e}):\n{response:?}"))
    }

    /// Reads the next response to a non-HEAD request; panics if there is none.
    #[track_caller]
    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .unwrap_or_else(|e| panic!("no response from {}: {e:?}", self.host))
    }

    /// Reads the next response to a HEAD request (never a body); panics if there is none.
    #[track_caller]
    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true)
            .unwrap_or_else(|e| panic!("no response to HEAD from {}: {e:?}", self.host))
    }

    /// Reads the next response; `to_head` says it answers a HEAD request. An interim (1xx) response
    /// is returned like any other: read again for the final one.
    pub fn try_read_response(&mut self, to_head: bool) -> Result<Response, ReadError> {
        let head = self.take_head()?;
        let mut response = parse_head(&head).map_err(ReadError::Malformed)?;
        let bodiless = to_head || response.status < 200 || response.status == 204 || response.status == 304;
        if bodiless {
            return Ok(response);
        }
        let chunked = response.has_token("transfer-encoding", "chunked");
        let lengths: Vec<&str> = response.headers_named("content-length").collect();
        if chunked && !lengths.is_empty() {
            return Err(ReadError::Malformed("both Transfer-Encoding and Content-Length".into()));
        }
        response.body = if chunked {
            self.take_chunked()?
        } else if let Some(length) = lengths.first() {
            if lengths.len() > 1 {
                return Err(ReadError::Malformed(format!("several Content-Length: {lengths:?}")));
            }
            let length: usize = length
                .parse()
                .map_err(|_| ReadError::Malformed(format!("bad Content-Length {length:?}")))?;
            self.take(length)?
        } else {
            // No framing: the body runs to the end of the connection.
            self.take_to_eof()?
        };
        Ok(response)
    }

    /// Reads exactly `n` bytes (after any buffered ones).
    pub fn take(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Asserts that the peer closes the connection (FIN or reset) within the read timeout, sending
    /// nothing more first.
    #[track_caller]
    pub fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        match self.fill() {
            Err(e) if e.is_closed() => {}
            Ok(()) => panic!(
                "expected the connection to be closed, got bytes: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Err(e) => panic!("expected the connection to be closed: {e:?}"),
        }
    }

    /// After `response` (to a request on this connection), checks that the server sent nothing beyond
    /// it: either it closes the connection, if it said `Connection: close`, or a following
    /// `GET /healthz` on the same connection is answered cleanly.
    #[track_caller]
    pub fn expect_message_boundary(&mut self, response: &Response) {
        if response.has_token("connection", "close") {
            self.expect_closed();
        } else {
            let next = self.get("/healthz");
            assert_eq!(
                (next.status, next.body.as_slice()),
                (200, &b"ok"[..]),
                "after {response:?}\ngot {next:?}"
            );
        }
    }

    /// Whether anything (bytes, or the end of the connection) arrives within `wait`; never blocks longer.
    pub fn has_data(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.set_read_timeout(wait.max(Duration::from_millis(1)));
        let result = self.fill();
        self.set_read_timeout(IO_TIMEOUT);
        !matches!(result, Err(ReadError::Timeout))
    }

    /// Reads until the connection ends or a read times out; returns every byte received (buffered
    /// ones included) and how reading stopped (an `Eof`'s `partial` counts the bytes returned).
    pub fn read_until_closed(&mut self) -> (Vec<u8>, ReadError) {
        loop {
            if let Err(e) = self.fill() {
                return (std::mem::take(&mut self.buf), e);
            }
        }
    }

    /// One `read` into the buffer; EOF and errors become [`ReadError`]s.
    fn fill(&mut self) -> Result<(), ReadError> {
        let mut chunk = [0u8; 64 * 1024];
        match self.io.read(&mut chunk) {
            Ok(0) => Err(ReadError::Eof {
                partial: self.buf.len(),
            }),
            // rustls: the peer closed TCP without `close_notify`; for these tests, a close like any other.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ReadError::Eof {
                partial: self.buf.len(),
            }),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads up to and including the blank line that ends a head.
    fn take_head(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                return Ok(self.buf.drain(..end + 4).collect());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Malformed(format!("response head over {MAX_HEAD} bytes")));
            }
            self.fill()?;
        }
    }

    /// Reads one CRLF-terminated line, without the CRLF.
    fn take_line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..end + 2).collect();
                line.truncate(end);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Malformed("line too long in chunked body".into()));
            }
            self.fill()?;
        }
    }

    /// Decodes a chunked body (extensions ignored, trailers read and dropped).
    fn take_chunked(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.take_line()?;
            let line = String::from_utf8_lossy(&line).into_owned();
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| ReadError::Malformed(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                while !self.take_line()?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.take(size)?);
            if !self.take_line()?.is_empty() {
                return Err(ReadError::Malformed("chunk data not followed by CRLF".into()));
            }
        }
    }

    /// Reads until the peer closes.
    fn take_to_eof(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            match self.fill() {
                Ok(()) => {}
                Err(ReadError::Eof { .. }) => return Ok(std::mem::take(&mut self.buf)),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Parses a status line and header fields (strictly: a test oracle should not guess).
fn parse_head(head: &[u8]) -> Result<Response, String> {
    let text = std::str::from_utf8(head).map_err(|_| format!("response head is not UTF-8: {head:?}"))?;
    let mut lines = text
        .strip_suffix("\r\n\r\n")
        .ok_or("head without CRLFCRLF")?
        .split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("bad status line {status_line:?}"));
    }
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad status code in {status_line:?}"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without colon: {line:?}"))?;
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(format!("bad header name in {line:?}"));
        }
        headers.push((name.to_string(), value.trim_matches([' ', '\t']).to_string()));
    }
    Ok(Response {
        version: version.to_string(),
        status: code.parse().expect("three digits"),
        reason: reason.to_string(),
        headers,
        body: Vec::new(),
    })
}

/// Position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connection to a one-shot local server that writes `canned` and then closes.
    fn canned(canned: &'static [u8]) -> Conn {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut socket, _) = server.accept().unwrap();
            socket.write_all(canned).unwrap();
        });
        Conn::connect(addr)
    }

    #[test]
    fn reads_pipelined_responses_of_every_framing() {
        let mut conn = canned(
            b"HTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 204 No Content\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
              HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n\
              HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: v\r\n\r\n\
              HTTP/1.0 200 OK\r\n\r\nto the end",
        );
        assert_eq!(conn.read_response().status, 100);
        assert_eq!(conn.read_response().status, 204);
        assert_eq!(conn.read_response().body, b"ok");
        let head = conn.read_head_response();
        assert_eq!((head.status, head.body.len()), (200, 0));
        let chunked = conn.read_response();
        assert_eq!((chunked.status, chunked.body.as_slice()), (404, &b"abc0123456789"[..]));
        assert_eq!(conn.read_response().body, b"to the end");
        conn.expect_closed();
    }

    #[test]
    fn refuses_malformed_heads() {
        for head in [
            &b"HTTP/1.1 20 OK\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
        ] {
            assert!(parse_head(head).is_err(), "{:?}", String::from_utf8_lossy(head));
        }
        let response = parse_head(b"HTTP/1.1 503 Busy\r\nRetry-After:  1 \r\n\r\n").unwrap();
        assert_eq!((response.status, response.header("retry-after")), (503, Some("1")));
    }

    #[test]
    fn media_types_compare_loosely() {
        assert_eq!(
            normalize_media_type("Text/Plain ; Charset=UTF-8"),
            "text/plain;charset=utf-8"
        );
    }
}
