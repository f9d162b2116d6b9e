//! fedbroker's side of the job: pipelined keep-alive `POST /{id}` senders, each message
//! acknowledged by its `204`, and WebSocket listeners that receive each body as one binary message.
//!
//! The HTTP client is written out here (requests are one fixed head plus the body; responses are
//! parsed with `httparse`) so that a window of W requests goes out in one write, like a real
//! pipelining client, and the generator spends as little CPU as it can.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// `Retry-After` in seconds, when present.
    pub retry_after: Option<u64>,
    /// `Fedbroker-Recipients` (a topic's `204`), when present.
    pub recipients: Option<u32>,
    /// `Fedbroker-Seq` (a mailbox id's `202`/`204`), when present.
    pub seq: Option<u64>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text, trimmed (error sentences).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// A keep-alive HTTP/1.1 connection that POSTs fixed-size bodies to one id.
pub struct HttpSender {
    sock: TcpStream,
    /// `Host` value for [`HttpSender::push_to`].
    host: String,
    head: Vec<u8>,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    rpos: usize,
}

impl HttpSender {
    pub async fn connect(addr: SocketAddr, id: u32, body_len: usize) -> Result<Self, String> {
        Self::connect_path(addr, &format!("/{id}"), body_len).await
    }

    /// The same for any request target, e.g. `/42?reply=5000`.
    pub async fn connect_path(addr: SocketAddr, path: &str, body_len: usize) -> Result<Self, String> {
        let sock = crate::net::connect_tcp(addr, None).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {body_len}\r\n\r\n"
        )
        .into_bytes();
        Ok(HttpSender {
            sock,
            host: addr.to_string(),
            head,
            wbuf: Vec::new(),
            rbuf: Vec::with_capacity(8192),
            rpos: 0,
        })
    }

    /// A keep-alive connection whose requests each name their own id ([`HttpSender::push_to`]).
    pub async fn connect_any(addr: SocketAddr) -> Result<Self, String> {
        Ok(HttpSender {
            sock: crate::net::connect_tcp(addr, None).await?,
            host: addr.to_string(),
            head: Vec::new(),
            wbuf: Vec::new(),
            rbuf: Vec::with_capacity(8192),
            rpos: 0,
        })
    }

    /// Queues one `POST /{id}` of `len` bytes; `body` appends exactly `len` bytes.
    pub fn push_to(&mut self, id: u32, len: usize, body: impl FnOnce(&mut Vec<u8>)) {
        use std::io::Write as _;
        let _ = write!(
            self.wbuf,
            "POST /{id} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n",
            self.host
        );
        body(&mut self.wbuf);
    }

    /// Queues one request; `body` appends the body to the buffer it is given.
    pub fn push(&mut self, body: impl FnOnce(&mut Vec<u8>)) {
        self.wbuf.extend_from_slice(&self.head);
        body(&mut self.wbuf);
    }

    /// Writes every queued request.
    pub async fn flush(&mut self) -> Result<(), String> {
        if !self.wbuf.is_empty() {
            self.sock
                .write_all(&self.wbuf)
                .await
                .map_err(|e| format!("POST write: {e}"))?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads at least one more response; returns every complete one.
    pub async fn read(&mut self, out: &mut Vec<Response>) -> Result<(), String> {
        loop {
            self.parse(out)?;
            if !out.is_empty() {
                return Ok(());
            }
            if self.rpos > 0 {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            self.rbuf.reserve(8192);
            let n = self
                .sock
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| format!("response read: {e}"))?;
            if n == 0 {
                return Err("broker closed the sender connection".into());
            }
        }
    }

    fn parse(&mut self, out: &mut Vec<Response>) -> Result<(), String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 24];
            let mut r = httparse::Response::new(&mut headers);
            let n = match r.parse(&self.rbuf[self.rpos..]) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(()),
                Err(e) => return Err(format!("malformed HTTP response: {e}")),
            };
            let status = r.code.unwrap_or(0);
            let mut len = 0usize;
            let mut retry_after = None;
            let mut recipients = None;
            let mut seq = None;
            for h in r.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or("bad Content-Length in response")?;
                } else if h.name.eq_ignore_ascii_case("retry-after") {
                    retry_after = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
                } else if h.name.eq_ignore_ascii_case("fedbroker-recipients") {
                    recipients = Some(header_num(h.value).ok_or("bad Fedbroker-Recipients in response")?);
                } else if h.name.eq_ignore_ascii_case("fedbroker-seq") {
                    seq = Some(header_num(h.value).ok_or("bad Fedbroker-Seq in response")?);
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err("response with Transfer-Encoding: the bench reads Content-Length bodies only".into());
                }
            }
            let end = self.rpos + n + len;
            if self.rbuf.len() < end {
                return Ok(());
            }
            let body = self.rbuf[self.rpos + n..end].to_vec();
            self.rpos = end;
            out.push(Response {
                status,
                retry_after,
                recipients,
                seq,
                body,
            });
        }
    }
}

/// A header value as a number.
fn header_num<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    std::str::from_utf8(v).ok().and_then(|v| v.trim().parse().ok())
}

/// A request without a body on a fresh connection (`Connection: close`): status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut sock = crate::net::connect_tcp(addr, None).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut buf = Vec::new();
    sock.read_to_end(&mut buf)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => Ok((r.code.unwrap_or(0), buf[n..].to_vec())),
        _ => Err(format!("GET {path}: malformed response")),
    }
}

/// Polls the broker's statistics (`GET /`) until `key` is at least `n` (a listener counts once
/// its upgrade is registered, so the first message cannot race it).
pub async fn wait_stat(addr: SocketAddr, key: &str, n: u64) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = get(addr, "/").await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("GET / answered {status}, not JSON: {e}"))?;
        let have = v.get(key).and_then(serde_json::Value::as_u64);
        match have {
            None => return Err(format!("the statistics (GET /) have no key \"{key}\"")),
            Some(h) if h >= n => return Ok(()),
            Some(h) if std::time::Instant::now() > deadline => {
                return Err(format!("statistics: {key} is {h} after 30 s, expected {n}"))
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// A WebSocket listener on `GET /{id}`.
pub async fn listen(
    addr: SocketAddr,
    src: Option<std::net::Ipv4Addr>,
    id: u32,
    small: bool,
) -> Result<crate::net::Ws, String> {
    crate::net::ws_connect(addr, src, &format!("/{id}"), None, small).await
}

/// An envelope listener (`Sec-WebSocket-Protocol: fedbroker.v1`) on `GET /{id}`; fails unless the
/// broker confirms the subprotocol.
pub async fn listen_envelope(addr: SocketAddr, id: u32) -> Result<crate::net::Ws, String> {
    crate::net::ws_connect(addr, None, &format!("/{id}"), Some(ENVELOPE), false).await
}

/// The envelope subprotocol's name.
pub const ENVELOPE: &str = "fedbroker.v1";

/// Appends one envelope message: `u16 BE header length | JSON header | payload`.
pub fn envelope(out: &mut Vec<u8>, header: &str, payload: &[u8]) {
    out.extend_from_slice(&(header.len() as u16).to_be_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
}

/// Splits an envelope message into its parsed header and its payload.
pub fn parse_envelope(m: &[u8]) -> Result<(serde_json::Value, &[u8]), String> {
    if m.len() < 2 {
        return Err(format!(
            "envelope message of {} bytes, shorter than its length field",
            m.len()
        ));
    }
    let h = u16::from_be_bytes([m[0], m[1]]) as usize;
    if m.len() < 2 + h {
        return Err(format!(
            "envelope header length {h} beyond the message's {} bytes",
            m.len()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&m[2..2 + h]).map_err(|e| {
        format!(
            "envelope header is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&m[2..2 + h])
        )
    })?;
    if !v.is_object() {
        return Err(format!("envelope header is not a JSON object: {v}"));
    }
    Ok((v, &m[2 + h..]))
}
