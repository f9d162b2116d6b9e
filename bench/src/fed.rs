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
    pub body: String,
}

/// A keep-alive HTTP/1.1 connection that POSTs fixed-size bodies to one id.
pub struct HttpSender {
    sock: TcpStream,
    head: Vec<u8>,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    rpos: usize,
}

impl HttpSender {
    pub async fn connect(addr: SocketAddr, id: u32, body_len: usize) -> Result<Self, String> {
        let sock = crate::net::connect_tcp(addr, None).await?;
        let head = format!(
            "POST /{id} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {body_len}\r\n\r\n"
        )
        .into_bytes();
        Ok(HttpSender {
            sock,
            head,
            wbuf: Vec::new(),
            rbuf: Vec::with_capacity(8192),
            rpos: 0,
        })
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
            for h in r.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or("bad Content-Length in response")?;
                } else if h.name.eq_ignore_ascii_case("retry-after") {
                    retry_after = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
                }
            }
            let end = self.rpos + n + len;
            if self.rbuf.len() < end {
                return Ok(());
            }
            let body = String::from_utf8_lossy(&self.rbuf[self.rpos + n..end]).into_owned();
            self.rpos = end;
            out.push(Response {
                status,
                retry_after,
                body,
            });
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
