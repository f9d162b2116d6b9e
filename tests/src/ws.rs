//! WebSocket clients: a tungstenite [`Listener`] that behaves, and [`RawWs`] frames that may not.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::{Message, WebSocket};

use crate::http::{Conn, ReadError, Stream, IO_TIMEOUT};
use crate::tls;

/// The RFC 6455 §1.3 sample key, so the expected accept value is a constant.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` for [`WS_KEY`].
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The headers of a valid WebSocket upgrade request (besides `Host`).
pub const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", WS_KEY),
    ("Sec-WebSocket-Version", "13"),
];

/// WebSocket opcodes (RFC 6455 §5.2).
pub mod opcode {
    /// Continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// A well-behaved listener (tungstenite): answers pings, honours the close handshake. Over plain
/// TCP (`ws://`) or TLS (`wss://`).
pub struct Listener {
    ws: WebSocket<Box<dyn Stream>>,
    /// The socket under `ws`, for timeouts.
    socket: TcpStream,
    /// The `Sec-WebSocket-Protocol` of the `101`, if it had one.
    subprotocol: Option<String>,
    /// The `Fedbroker-Seq` of the `101` (a mailbox id's last seq), if it had one.
    seq: Option<u64>,
}

impl Listener {
    /// Upgrades `GET path` on `addr`; panics unless the broker answers `101`.
    #[track_caller]
    pub fn connect(addr: SocketAddr, path: &str) -> Listener {
        Listener::try_connect(addr, path).unwrap_or_else(|e| panic!("listen on {addr}{path} failed: {e}"))
    }

    /// As [`Listener::connect`], returning the handshake error as text.
    pub fn try_connect(addr: SocketAddr, path: &str) -> Result<Listener, String> {
        Listener::try_connect_with(addr, path, &[], None)
    }

    /// Upgrades `GET path` on `addr` with extra request `headers` (`Authorization`, `Origin`), over
    /// TLS when `tls` is given; returns the handshake error as text (with the status for a refusal).
    pub fn try_connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Listener, String> {
        let (stream, socket, scheme): (Box<dyn Stream>, TcpStream, &str) = match tls {
            None => {
                let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
                stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
                stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                let socket = stream.try_clone().map_err(|e| e.to_string())?;
                (Box::new(stream), socket, "ws")
            }
            Some(config) => {
                let (stream, socket, _version) =
                    tls::connect_tls(addr, config).map_err(|e| format!("TLS handshake: {e}"))?;
                (Box::new(stream), socket, "wss")
            }
        };
        let url = format!("{scheme}://{addr}{path}");
        let mut request = url.as_str().into_client_request().map_err(|e| e.to_string())?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
            request.headers_mut().append(name, value);
        }
        let (ws, response) = tungstenite::client::client(request, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response)) => format!(
                "refused with {} ({})",
                response.status(),
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
            ),
            e => e.to_string(),
        })?;
        let subprotocol = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let seq = response.headers().get("fedbroker-seq").map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .parse()
                .expect("Fedbroker-Seq is a number")
        });
        Ok(Listener {
            ws,
            socket,
            subprotocol,
            seq,
        })
    }

    /// The `Fedbroker-Seq` header of the `101` (on a mailbox id: the last seq given so far).
    pub fn seq_header(&self) -> Option<u64> {
        self.seq
    }

    /// The subprotocol the `101` confirmed (`Sec-WebSocket-Protocol`), `None` when it named none.
    /// tungstenite already failed the handshake if it names one that was not asked for.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// Sends one binary message (for the `fedbroker.v1` envelope; a plain listener gets `1003`).
    #[track_caller]
    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .unwrap_or_else(|e| panic!("send of a {}-byte binary message failed: {e}", bytes.len()));
    }

    /// Sends one text message.
    #[track_caller]
    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .unwrap_or_else(|e| panic!("send of a text message failed: {e}"));
    }

    /// As [`Listener::expect_close`], but binary messages queued before the close frame are read and
    /// counted instead of failing (a slow listener closed with messages still in its socket).
    /// Returns the close code, the reason and how many messages came first.
    #[track_caller]
    pub fn expect_close_after_messages(&mut self) -> (u16, String, usize) {
        let mut messages = 0;
        loop {
            match self.ws.read() {
                Ok(Message::Binary(_)) => messages += 1,
                Ok(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.as_str().to_owned(), messages)
                }
                Ok(Message::Close(None)) => return (1005, String::new(), messages),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(message) => panic!("expected messages then a close frame, got {message:?}"),
                Err(e) => panic!("expected a close frame (after {messages} messages): {e}"),
            }
        }
    }

    /// Changes the bound on each read (e.g. to wait longer for a close the broker times).
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.socket.set_read_timeout(Some(timeout)).expect("set_read_timeout");
    }

    /// The next message, which must be binary (§4); pings and pongs are skipped (pings get answered).
    #[track_caller]
    pub fn recv(&mut self) -> Vec<u8> {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(payload)) => return payload.to_vec(),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Text(text)) => {
                    panic!("listener got a text message, want binary: {text:?}")
                }
                Ok(Message::Close(frame)) => {
                    panic!("listener closed while waiting for a message: {frame:?}")
                }
                Err(e) => panic!("listener got no message: {e}"),
            }
        }
    }

    /// Waits for the server's close frame, returns its code and reason (1005 when it has none), and
    /// checks that the server then closes the TCP connection.
    #[track_caller]
    pub fn expect_close(&mut self) -> (u16, String) {
        let (code, reason) = loop {
            match self.ws.read() {
                Ok(Message::Close(Some(frame))) => break (u16::from(frame.code), frame.reason.as_str().to_owned()),
                Ok(Message::Close(None)) => break (1005, String::new()),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(message) => panic!("expected a close frame, got {message:?}"),
                Err(e) => panic!("expected a close frame: {e}"),
            }
        };
        // tungstenite answers the close; the server must then end the TCP connection.
        loop {
            match self.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
                Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    break
                }
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {
                    panic!("server sent close {code} but did not close the TCP connection")
                }
                Err(tungstenite::Error::Io(_)) => break, // reset after the close handshake: closed too.
                Err(e) => panic!("after close {code}: {e}"),
            }
        }
        (code, reason)
    }

    /// Reads for `duration`, answering pings, and panics if the connection ends or a message arrives.
    #[track_caller]
    pub fn stay_connected(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        self.socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set_read_timeout");
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(message) => panic!("unexpected message while idling: {message:?}"),
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {}
                Err(e) => panic!("listener dropped while it was answering pings: {e}"),
            }
        }
        self.socket
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("set_read_timeout");
    }

    /// Performs the client-initiated close handshake: the server must echo the close and end TCP.
    #[track_caller]
    pub fn close(mut self) {
        self.ws.close(None).expect("send close");
        loop {
            match self.ws.read() {
                Ok(Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(message) => panic!("message after close: {message:?}"),
                Err(tungstenite::Error::ConnectionClosed) => return,
                Err(e) => panic!("close handshake failed: {e}"),
            }
        }
    }
}

/// True for the errors a read timeout produces.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// One WebSocket frame as written or read on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// RSV1..3 as the low three bits (`0b100` = RSV1).
    pub rsv: u8,
    /// Opcode (see [`opcode`]).
    pub opcode: u8,
    /// Masking key; client frames must have one (RFC 6455 §5.3), server frames must not.
    pub mask: Option<[u8; 4]>,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A final, masked frame: what a correct client sends.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            fin: true,
            rsv: 0,
            opcode,
            mask: Some([0x37, 0xfa, 0x21, 0x3d]),
            payload: payload.into(),
        }
    }

    /// A close frame with `code` and `reason`.
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        Frame::new(opcode::CLOSE, payload)
    }

    /// Without a masking key (a protocol error from a client).
    pub fn unmasked(mut self) -> Frame {
        self.mask = None;
        self
    }

    /// With reserved bits set (`0b100` = RSV1, `0b010` = RSV2, `0b001` = RSV3).
    pub fn with_rsv(mut self, bits: u8) -> Frame {
        self.rsv = bits & 0b111;
        self
    }

    /// With the FIN bit as given (false: more fragments follow).
    pub fn with_fin(mut self, fin: bool) -> Frame {
        self.fin = fin;
        self
    }

    /// The wire bytes; any length is encoded as given, even where the protocol forbids it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | (self.rsv << 4) | (self.opcode & 0x0f)];
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&len.to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        match self.mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }

    /// The status code of a close frame (`None` if it has no payload).
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The reason of a close frame.
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }
}

/// A WebSocket connection driven frame by frame, for input no library would send.
pub struct RawWs {
    conn: Conn,
}

impl RawWs {
    /// Upgrades `GET path` on `addr` with [`UPGRADE_HEADERS`]; panics unless the answer is a valid `101`.
    #[track_caller]
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        RawWs::upgrade(Conn::connect(addr), path)
    }

    /// Upgrades `GET path` on an open connection (plain or TLS) with [`UPGRADE_HEADERS`]; panics
    /// unless the answer is a valid `101`.
    #[track_caller]
    pub fn upgrade(mut conn: Conn, path: &str) -> RawWs {
        let response = conn.request("GET", path, &UPGRADE_HEADERS, b"");
        response.assert_status(101);
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some(WS_ACCEPT),
            "bad accept:\n{response:?}"
        );
        RawWs { conn }
    }

    /// Wraps a connection whose upgrade the caller already checked.
    pub fn from_upgraded(conn: Conn) -> RawWs {
        RawWs { conn }
    }

    /// The underlying connection.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Writes one frame; panics on error.
    #[track_caller]
    pub fn send(&mut self, frame: &Frame) {
        self.conn.send(&frame.encode());
    }

    /// Reads one server frame (which must be unmasked).
    pub fn read_frame(&mut self) -> Result<Frame, ReadError> {
        let head = self.conn.take(2)?;
        if head[1] & 0x80 != 0 {
            return Err(ReadError::Malformed("server frame is masked (RFC 6455 §5.1)".into()));
        }
        let len = match head[1] & 0x7f {
            126 => u16::from_be_bytes(self.conn.take(2)?.try_into().expect("2 bytes")) as u64,
            127 => u64::from_be_bytes(self.conn.take(8)?.try_into().expect("8 bytes")),
            len => u64::from(len),
        };
        if len > 64 << 20 {
            return Err(ReadError::Malformed(format!("server frame of {len} bytes")));
        }
        Ok(Frame {
            fin: head[0] & 0x80 != 0,
            rsv: (head[0] >> 4) & 0b111,
            opcode: head[0] & 0x0f,
            mask: None,
            payload: self.conn.take(len as usize)?,
        })
    }

    /// The next frame that is not a ping or pong; panics if none arrives.
    #[track_caller]
    pub fn next_frame(&mut self) -> Frame {
        loop {
            match self.read_frame() {
                Ok(frame) if frame.opcode == opcode::PING || frame.opcode == opcode::PONG => {}
                Ok(frame) => return frame,
                Err(e) => panic!("no frame from the server: {e:?}"),
            }
        }
    }

    /// Expects a close frame with `code` (pings and pongs skipped), answers it, and checks that the
    /// server then closes the TCP connection. Returns the close reason.
    #[track_caller]
    pub fn expect_close(&mut self, code: u16) -> String {
        let frame = self.next_frame();
        assert_eq!(
            frame.opcode,
            opcode::CLOSE,
            "expected close {code}, got frame {frame:?}"
        );
        assert_eq!(
            frame.close_code(),
            Some(code),
            "wrong close code; reason {:?}",
            frame.close_reason()
        );
        // The server may already have closed TCP after failing the connection: ignore write errors.
        let _ = self.conn.try_send(&Frame::close(code, "").encode());
        self.conn.expect_closed();
        frame.close_reason()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_length_form_and_masks() {
        let short = Frame::new(opcode::PING, vec![7; 125]).encode();
        assert_eq!((short[0], short[1], short.len()), (0x89, 0x80 | 125, 2 + 4 + 125));
        let medium = Frame::new(opcode::BINARY, vec![7; 126]).unmasked().encode();
        assert_eq!(&medium[..4], &[0x82, 126, 0, 126]);
        let long = Frame::new(opcode::BINARY, vec![7; 65536])
            .with_fin(false)
            .with_rsv(0b100)
            .encode();
        assert_eq!(&long[..10], &[0x42, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let masked = Frame::new(opcode::TEXT, "Hello").encode();
        let unmasked: Vec<u8> = masked[6..].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        assert_eq!(unmasked, b"Hello");
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let frame = Frame::close(4000, "replaced");
        assert_eq!(
            (frame.close_code(), frame.close_reason().as_str()),
            (Some(4000), "replaced")
        );
        assert_eq!(Frame::new(opcode::CLOSE, Vec::new()).close_code(), None);
    }

    #[test]
    fn accept_constant_matches_the_key() {
        assert_eq!(tungstenite::handshake::derive_accept_key(WS_KEY.as_bytes()), WS_ACCEPT);
    }
}
