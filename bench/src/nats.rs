//! The NATS text protocol spoken directly over nats-server's WebSocket listener.
//!
//! Why not `async-nats`: core NATS publish has no per-message acknowledgement, and the fair job
//! is "a window of W PUBs, then PING, acknowledged by the PONG"; `async-nats`'s `flush()` does not
//! wait for the PONG, and it speaks WebSocket only through its own stack. The protocol is text
//! lines (`CONNECT`, `SUB`, `PUB`, `PING`/`PONG`, `MSG`), a few dozen lines here.

use std::net::{Ipv4Addr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::net::Ws;

const CONNECT: &str = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"lang\":\"rust\",\"version\":\"0\",\"name\":\"fedbroker-bench\"}\r\n";

/// The subject of listener `j`.
pub fn subject(j: u32) -> String {
    format!("bench.{j}")
}

/// The subject every fan-out listener subscribes to.
pub const FANOUT_SUBJECT: &str = "bench.fanout";

/// The subject the request-reply responder serves.
pub const RPC_SUBJECT: &str = "bench.rpc";

/// What one protocol line or message was.
pub enum Event<'a> {
    /// A `MSG`: its payload and its reply subject, when it has one.
    Msg(&'a [u8], Option<&'a [u8]>),
    Pong,
}

/// Reassembles the server's byte stream from WebSocket messages.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    pos: usize,
    /// Server PINGs seen and not yet answered.
    pub pings: usize,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

impl Reader {
    /// Adds `data` and calls `f` for each `MSG` payload and `PONG`.
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Event<'_>) -> Result<(), String>) -> Result<(), String> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
        let b = &self.buf[..];
        let mut pos = 0;
        while let Some(eol) = find_crlf(&b[pos..]) {
            let line = &b[pos..pos + eol];
            if line.starts_with(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let bad = || format!("NATS: bad MSG line {:?}", String::from_utf8_lossy(line));
                let mut parts: [&[u8]; 5] = [&[]; 5];
                let mut n = 0;
                for w in line.split(|&c| c == b' ').filter(|w| !w.is_empty()) {
                    if n == 5 {
                        return Err(bad());
                    }
                    parts[n] = w;
                    n += 1;
                }
                if n < 4 {
                    return Err(bad());
                }
                let size: usize = std::str::from_utf8(parts[n - 1])
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(bad)?;
                let reply = (n == 5).then_some(parts[3]);
                let start = pos + eol + 2;
                if b.len() < start + size + 2 {
                    break;
                }
                f(Event::Msg(&b[start..start + size], reply))?;
                pos = start + size + 2;
                continue;
            }
            if line == b"PING" {
                self.pings += 1;
            } else if line == b"PONG" {
                f(Event::Pong)?;
            } else if line.starts_with(b"-ERR") {
                return Err(format!("NATS server error: {}", String::from_utf8_lossy(line)));
            } else if !(line.starts_with(b"INFO") || line == b"+OK" || line.is_empty()) {
                return Err(format!("NATS: unexpected line {:?}", String::from_utf8_lossy(line)));
            }
            pos += eol + 2;
        }
        self.pos = pos;
        Ok(())
    }

    /// Answers the server's PINGs.
    pub async fn answer_pings(&mut self, ws: &mut Ws) -> Result<(), String> {
        if self.pings > 0 {
            let msg = "PONG\r\n".repeat(self.pings);
            self.pings = 0;
            ws.send(Message::Binary(Bytes::from(msg)))
                .await
                .map_err(|e| format!("NATS PONG: {e}"))?;
        }
        Ok(())
    }
}

/// The next data message's bytes (nats-server may use text or binary frames).
pub async fn next_data(ws: &mut Ws) -> Result<Bytes, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b),
            Some(Ok(Message::Text(t))) => return Ok(Bytes::from(t.as_str().as_bytes().to_vec())),
            Some(Ok(Message::Close(c))) => return Err(format!("NATS server closed the WebSocket: {c:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("NATS WebSocket: {e}")),
            None => return Err("NATS server closed the connection".into()),
        }
    }
}

/// Reads until a PONG arrives, passing any MSG to `on_msg`.
pub async fn wait_pong(
    ws: &mut Ws,
    r: &mut Reader,
    mut on_msg: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    loop {
        let data = next_data(ws).await?;
        let mut pong = false;
        r.feed(&data, |e| {
            match e {
                Event::Pong => pong = true,
                Event::Msg(m, _) => on_msg(m)?,
            }
            Ok(())
        })?;
        r.answer_pings(ws).await?;
        if pong {
            return Ok(());
        }
    }
}

/// Connects, sends CONNECT (+ `extra` protocol lines, e.g. a SUB) and a PING, and waits for the
/// PONG, so the server has processed both.
pub async fn connect(
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
    extra: &str,
    small: bool,
) -> Result<(Ws, Reader), String> {
    let mut ws = crate::net::ws_connect(addr, src, "/", None, small).await?;
    let hello = format!("{CONNECT}{extra}PING\r\n");
    ws.send(Message::Binary(Bytes::from(hello)))
        .await
        .map_err(|e| format!("NATS CONNECT: {e}"))?;
    let mut r = Reader::default();
    wait_pong(&mut ws, &mut r, |_| {
        Err("NATS: MSG before subscription was confirmed".into())
    })
    .await?;
    Ok((ws, r))
}

/// Connects and subscribes to `subject`.
pub async fn subscribe(
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
    subject: &str,
    small: bool,
) -> Result<(Ws, Reader), String> {
    connect(addr, src, &format!("SUB {subject} 1\r\n"), small).await
}

/// Appends `PUB subject reply len\r\n<payload>\r\n` (a request: the responder answers on `reply`).
pub fn request(out: &mut Vec<u8>, subject: &str, reply: &str, len: usize, payload: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(format!("PUB {subject} {reply} {len}\r\n").as_bytes());
    payload(out);
    out.extend_from_slice(b"\r\n");
}

/// Appends `PUB subject len\r\n<payload>\r\n`.
pub fn publish(out: &mut Vec<u8>, subject: &str, len: usize, payload: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(format!("PUB {subject} {len}\r\n").as_bytes());
    payload(out);
    out.extend_from_slice(b"\r\n");
}
