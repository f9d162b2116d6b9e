//! The WebSocket side of a connection after the upgrade.
//!
//! ```text
//!            peer Close / we answer           timer, protocol error
//!   Open ─────────────────────────────► Finished ◄───────────────── CloseSent
//!    │                                                                  ▲
//!    └── we close (replaced, shutdown, policy) ─────────────────────────┘
//!                                              (until the peer's Close or the close timeout)
//! ```
//! `Finished` means: flush what is queued, then close the TCP connection (the server closes first,
//! RFC 6455 §7.1.1).

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::frame::{apply_mask, encode_header, FrameHeader, OpCode};
use super::utf8::Utf8Validator;
use crate::transmit::Outbox;
use crate::CloseReason;

/// What the session does with data messages from the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A raw listener: it only receives; a data message from it is closed with `1003`.
    Listener,
    /// Every data message is sent back as it came (used for conformance testing of the codec).
    Echo,
    /// A `fedbroker.v1` listener: binary messages are kept for [`WsSession::take_message`], one
    /// at a time (reading pauses until it is taken); a text message is closed with `1003`.
    Envelope,
}

/// The timing settings of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsTimers {
    /// A ping goes out this often; two intervals without any byte from the peer drop it.
    pub ping_interval: Duration,
    /// How long to wait for the peer's Close after sending ours.
    pub close_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    CloseSent { deadline: Instant },
    Finished,
}

#[derive(Clone, Copy, Debug)]
enum Rx {
    /// Waiting for a frame header.
    Header,
    /// Inside a frame's payload.
    Payload {
        header: FrameHeader,
        remaining: u64,
        offset: usize,
    },
    /// After a failure: every further byte is dropped.
    Discard,
}

/// A data message being received.
#[derive(Debug)]
struct Message {
    opcode: OpCode,
    len: u64,
    data: BytesMut,
    utf8: Option<Utf8Validator>,
}

/// One WebSocket connection's protocol state: frame checks (RFC 6455 §5), message reassembly,
/// control frames, the close handshake, pings and the idle drop.
#[derive(Debug)]
pub struct WsSession {
    role: Role,
    max_message: usize,
    timers: WsTimers,
    phase: Phase,
    rx: Rx,
    message: Option<Message>,
    control: BytesMut,
    last_rx: Instant,
    next_ping: Instant,
    close_reason: Option<CloseReason>,
    /// A whole message received in the envelope role, not taken yet.
    inbox: Option<Bytes>,
}

impl WsSession {
    /// A session that starts at `now`, right after the `101` response.
    pub fn new(role: Role, max_message: usize, timers: WsTimers, now: Instant) -> Self {
        WsSession {
            role,
            max_message,
            timers,
            phase: Phase::Open,
            rx: Rx::Header,
            message: None,
            control: BytesMut::new(),
            last_rx: now,
            next_ping: now + timers.ping_interval,
            close_reason: None,
            inbox: None,
        }
    }

    /// The message received in the [`Role::Envelope`] role, if one awaits; input is read on only
    /// once it is taken.
    pub fn take_message(&mut self) -> Option<Bytes> {
        self.inbox.take()
    }

    /// Whether a received message awaits [`WsSession::take_message`].
    pub fn has_message(&self) -> bool {
        self.inbox.is_some()
    }

    /// Queues one whole frame encoded elsewhere (shared by many sessions). Returns `false` (and
    /// drops it) when the session is closing.
    pub fn send_encoded(&mut self, frame: Bytes, out: &mut Outbox) -> bool {
        if !self.is_open() {
            return false;
        }
        out.push(frame);
        true
    }

    /// Whether messages may still be sent.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether the session is over: flush, then close the connection.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Why the broker closed the session, if it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason
    }

    /// Queues one binary message. Returns `false` (and drops it) when the session is closing.
    pub fn send_binary(&mut self, payload: Bytes, out: &mut Outbox) -> bool {
        if !self.is_open() {
            return false;
        }
        send_frame(OpCode::Binary, payload, out);
        true
    }

    /// Starts the close handshake with `reason`; with `wait` the peer's Close is awaited, without
    /// it the session finishes at once (the stream can no longer be trusted).
    pub fn close(&mut self, now: Instant, reason: CloseReason, wait: bool, out: &mut Outbox) {
        if self.phase != Phase::Open {
            if !wait {
                self.phase = Phase::Finished;
                self.rx = Rx::Discard;
            }
            return;
        }
        self.close_reason = Some(reason);
        let mut payload = BytesMut::with_capacity(2 + reason.reason().len());
        payload.extend_from_slice(&reason.code().to_be_bytes());
        payload.extend_from_slice(reason.reason().as_bytes());
        send_frame(OpCode::Close, payload.freeze(), out);
        if wait {
            self.phase = Phase::CloseSent {
                deadline: now + self.timers.close_timeout,
            };
        } else {
            self.phase = Phase::Finished;
            self.rx = Rx::Discard;
        }
    }

    /// The next instant [`WsSession::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Open => Some(self.next_ping.min(self.idle_deadline())),
            Phase::CloseSent { deadline } => Some(deadline),
            Phase::Finished => None,
        }
    }

    fn idle_deadline(&self) -> Instant {
        self.last_rx + 2 * self.timers.ping_interval
    }

    /// Sends due pings, drops a silent peer, ends a close handshake that timed out.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Outbox) {
        match self.phase {
            Phase::Open => {
                if now >= self.idle_deadline() {
                    // Said with a Close frame (never a silent drop), without waiting for an answer
                    // from a peer that has stopped answering.
                    tracing::debug!("websocket peer silent for two ping intervals: dropping");
                    self.close(now, CloseReason::PingTimeout, false, out);
                    return;
                }
                if now >= self.next_ping {
                    send_frame(OpCode::Ping, Bytes::new(), out);
                    // Whole intervals from the last ping; skip missed ones rather than burst.
                    while self.next_ping <= now {
                        self.next_ping += self.timers.ping_interval;
                    }
                }
            }
            Phase::CloseSent { deadline } if now >= deadline => self.phase = Phase::Finished,
            _ => {}
        }
    }

    /// Consumes received bytes from the front of `buf`, queueing pongs, echoes and Close frames.
    pub fn handle_input(&mut self, now: Instant, buf: &mut BytesMut, out: &mut Outbox) {
        if !buf.is_empty() {
            self.last_rx = now;
        }
        loop {
            match self.rx {
                Rx::Discard => {
                    buf.clear();
                    return;
                }
                Rx::Header => {
                    if self.inbox.is_some() {
                        // One received envelope message at a time.
                        return;
                    }
                    let (header, n) = match FrameHeader::decode(buf) {
                        Ok(Some(h)) => h,
                        Ok(None) => return,
                        Err(()) => return self.fail(now, CloseReason::ProtocolError("invalid frame length"), out),
                    };
                    buf.advance(n);
                    match self.check_header(&header) {
                        Ok(()) => {}
                        Err(reason @ (CloseReason::UnacceptableData | CloseReason::EnvelopeText)) => {
                            // A policy matter, not a broken stream: skip this frame's payload
                            // and keep reading for the peer's Close.
                            tracing::debug!("listener sent a data message it may not: closing with 1003");
                            self.message = None;
                            self.close(now, reason, true, out);
                            self.rx = Rx::Payload {
                                header,
                                remaining: header.len,
                                offset: 0,
                            };
                            continue;
                        }
                        Err(reason) => return self.fail(now, reason, out),
                    }
                    if header.opcode.is_control() {
                        self.control.clear();
                    } else if header.opcode != OpCode::Continuation {
                        let utf8 =
                            (header.opcode == OpCode::Text && self.role == Role::Echo).then(Utf8Validator::default);
                        self.message = Some(Message {
                            opcode: header.opcode,
                            len: 0,
                            data: BytesMut::new(),
                            utf8,
                        });
                    }
                    self.rx = Rx::Payload {
                        header,
                        remaining: header.len,
                        offset: 0,
                    };
                }
                Rx::Payload {
                    header,
                    remaining,
                    offset,
                } => {
                    let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(buf.len());
                    if take == 0 && remaining > 0 {
                        return;
                    }
                    let mut piece = buf.split_to(take);
                    if let Some(mask) = header.mask {
                        apply_mask(&mut piece, mask, offset);
                    }
                    if let Err(reason) = self.take_payload(&header, &piece) {
                        return self.fail(now, reason, out);
                    }
                    let remaining = remaining - take as u64;
                    if remaining > 0 {
                        self.rx = Rx::Payload {
                            header,
                            remaining,
                            offset: offset + take,
                        };
                        return;
                    }
                    self.rx = Rx::Header;
                    if let Err(reason) = self.end_frame(now, &header, out) {
                        return self.fail(now, reason, out);
                    }
                    if self.phase == Phase::Finished {
                        self.rx = Rx::Discard;
                    }
                }
            }
        }
    }

    /// Every header rule of RFC 6455 §5 and SPEC §4, in the order that gives the most precise code.
    fn check_header(&mut self, h: &FrameHeader) -> Result<(), CloseReason> {
        if h.rsv != 0 {
            return Err(CloseReason::ProtocolError("reserved bits set"));
        }
        if let OpCode::Reserved(_) = h.opcode {
            return Err(CloseReason::ProtocolError("reserved opcode"));
        }
        if h.mask.is_none() {
            return Err(CloseReason::ProtocolError("client frames must be masked"));
        }
        if h.opcode.is_control() {
            if !h.fin {
                return Err(CloseReason::ProtocolError("fragmented control frame"));
            }
            if h.len > 125 {
                return Err(CloseReason::ProtocolError("control frame longer than 125 bytes"));
            }
            return Ok(());
        }
        let so_far = match (&self.message, h.opcode) {
            (None, OpCode::Continuation) => return Err(CloseReason::ProtocolError("continuation without a message")),
            (Some(_), OpCode::Text | OpCode::Binary) => {
                return Err(CloseReason::ProtocolError("new message inside a fragmented one"))
            }
            (Some(m), _) => m.len,
            (None, _) => 0,
        };
        if so_far.saturating_add(h.len) > self.max_message as u64 {
            return Err(CloseReason::MessageTooBig);
        }
        if self.role == Role::Listener && h.fin && self.phase == Phase::Open {
            return Err(CloseReason::UnacceptableData);
        }
        if self.role == Role::Envelope && h.opcode == OpCode::Text && self.phase == Phase::Open {
            return Err(CloseReason::EnvelopeText);
        }
        Ok(())
    }

    fn take_payload(&mut self, h: &FrameHeader, piece: &[u8]) -> Result<(), CloseReason> {
        if h.opcode.is_control() {
            self.control.extend_from_slice(piece);
            return Ok(());
        }
        let Some(m) = self.message.as_mut() else {
            return Ok(());
        };
        m.len += piece.len() as u64;
        if self.role == Role::Envelope && self.phase == Phase::Open {
            m.data.extend_from_slice(piece);
        }
        if self.role == Role::Echo && self.phase == Phase::Open {
            if let Some(v) = m.utf8.as_mut() {
                if !v.feed(piece) {
                    return Err(CloseReason::InvalidPayload);
                }
            }
            m.data.extend_from_slice(piece);
        }
        Ok(())
    }

    fn end_frame(&mut self, now: Instant, h: &FrameHeader, out: &mut Outbox) -> Result<(), CloseReason> {
        match h.opcode {
            OpCode::Ping if self.phase == Phase::Open => {
                send_frame(OpCode::Pong, self.control.split().freeze(), out);
            }
            OpCode::Ping => {}
            OpCode::Pong => {}
            OpCode::Close => self.peer_close(now, out)?,
            _ if h.fin => {
                let Some(m) = self.message.take() else {
                    return Ok(());
                };
                if let Some(v) = &m.utf8 {
                    if !v.is_complete() {
                        return Err(CloseReason::InvalidPayload);
                    }
                }
                if self.phase == Phase::Open {
                    match self.role {
                        Role::Echo => send_frame(m.opcode, m.data.freeze(), out),
                        Role::Envelope => self.inbox = Some(m.data.freeze()),
                        Role::Listener => {}
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The peer's Close frame: check it, answer it (echoing its code), finish.
    fn peer_close(&mut self, _now: Instant, out: &mut Outbox) -> Result<(), CloseReason> {
        let payload = self.control.split().freeze();
        let code = match payload.len() {
            0 => None,
            1 => return Err(CloseReason::ProtocolError("close frame with a 1-byte payload")),
            _ => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                if !valid_close_code(code) {
                    return Err(CloseReason::ProtocolError("invalid close code"));
                }
                if std::str::from_utf8(&payload[2..]).is_err() {
                    return Err(CloseReason::InvalidPayload);
                }
                Some(code)
            }
        };
        if self.phase == Phase::Open {
            let reply = code
                .map(|c| Bytes::copy_from_slice(&c.to_be_bytes()))
                .unwrap_or_default();
            send_frame(OpCode::Close, reply, out);
        }
        self.phase = Phase::Finished;
        Ok(())
    }

    /// Fails the connection (RFC 6455 §7.1.7): Close with `reason` unless one was sent already,
    /// then drop everything else the peer sends.
    fn fail(&mut self, now: Instant, reason: CloseReason, out: &mut Outbox) {
        tracing::debug!(code = reason.code(), reason = reason.reason(), "failing websocket");
        self.close(now, reason, false, out);
        self.rx = Rx::Discard;
    }
}

/// Close codes a peer may send (RFC 6455 §7.4; 1012–1013 registered since).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// Queues one unfragmented server frame: a header in scratch space, the payload shared.
fn send_frame(opcode: OpCode, payload: Bytes, out: &mut Outbox) {
    // A small payload is copied in behind its header: one piece to write instead of two, and
    // cheaper than keeping a reference to it.
    if payload.len() <= SMALL_FRAME {
        return out.write_with(|b| {
            encode_header(true, 0, opcode, None, payload.len() as u64, b);
            b.extend_from_slice(&payload);
        });
    }
    out.write_with(|b| encode_header(true, 0, opcode, None, payload.len() as u64, b));
    out.push(payload);
}

/// Largest payload copied into the frame's own piece of the outbox (see `send_frame`).
const SMALL_FRAME: usize = 128;
