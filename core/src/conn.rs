//! The per-connection state machine: HTTP/1.1 requests, then (for a listener) WebSocket.
//!
//! ```text
//!          ┌──────────────── response (keep-alive) ◄───────────────┐
//!          ▼                                                       │
//!   ──► Head ──head──► Waiting(Authorize) ──allow──► Body ──► Waiting(Deliver) ──► respond
//!          │                 │      └──allow──► Waiting(Listen) ──ok──► WebSocket
//!          │                 └────deny / error ──► respond                  │
//!          └── fatal error, EOF, idle, shutdown ──► Closing ──EOF/linger──► Closed
//!                                                      ▲                     │
//!                                                      └──── finished ───────┘
//! ```
//!
//! Inputs are `handle_*` calls with the current time; outputs are the bytes in
//! [`Connection::transmit`], the [`Event`]s of [`Connection::poll_event`] and the deadline of
//! [`Connection::poll_timeout`]. Decisions that need shared state (authorization, routing,
//! registration, statistics) leave as events and come back as `handle_*` calls, now or later.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::Method;
use serde_json::Value;

use crate::auth::{bearer_token, Action, AuthRequest, Decision};
use crate::cors::OriginCheck;
use crate::envelope::{self, ClientMessage};
use crate::http::{BodyFraming, BodyProgress, BodyReader, HeadReader, RequestHead, Response};
use crate::registry::{Delivered, Item};
use crate::reply::{ReplyMsg, ReplyOutcome};
use crate::route::{classify, Route};
use crate::targets::parse_targets;
use crate::transmit::Outbox;
use crate::ws::{check_upgrade, Handshake, Role, WsSession, WsTimers};
use crate::{CloseReason, Config, HttpError, Id};

/// Above this many unsent bytes the connection stops taking work (parsing pipelined requests,
/// pulling listener messages) until the adapter has written some.
pub const HIGH_WATER: usize = 64 * 1024;

/// What the connection needs from outside. Each is answered with the matching `handle_*` call;
/// at most one is outstanding at a time.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Event {
    /// Decide this request: answer with [`Connection::handle_decision`].
    Authorize(AuthRequest),
    /// Route `payload` to the listener(s) of `id`: answer with [`Connection::handle_delivered`].
    /// With `reply_ms`, the message is a request: once it is queued
    /// ([`Delivered::AwaitingReply`]), the answer comes with [`Connection::handle_reply`].
    Deliver {
        /// The target id.
        id: Id,
        /// The message, exactly as received.
        payload: Bytes,
        /// The listened id of the envelope listener sending it, if it is one.
        from: Option<Id>,
        /// How long the sender waits for a reply, in milliseconds, if it asked for one.
        reply_ms: Option<u64>,
    },
    /// Route `payload` to each of `ids` (one shared buffer): answer with
    /// [`Connection::handle_delivered_many`], one result per id in this order.
    DeliverMany {
        /// The target ids, distinct, in request order.
        ids: Vec<Id>,
        /// The message, exactly as received.
        payload: Bytes,
    },
    /// Make this connection a listener of `id`: answer with [`Connection::handle_listening`],
    /// then feed it what its queue holds with [`Connection::handle_item`] and
    /// [`Connection::handle_request`].
    Listen {
        /// The id to listen on.
        id: Id,
        /// Whether it negotiated the `fedbroker.v1` envelope.
        envelope: bool,
        /// `?since=SEQ`: replay the id's mailbox after this seq.
        since: Option<u64>,
    },
    /// This envelope listener answers the request numbered `reply_to`: hand `reply` to the
    /// waiting sender and answer with [`Connection::handle_replied`].
    Reply {
        /// The request's seq.
        reply_to: u64,
        /// The answer.
        reply: ReplyMsg,
    },
    /// This envelope listener follows these ids' presence (each authorized already): register
    /// the watches and answer with [`Connection::handle_watched`]; the current state and the
    /// changes then come through its queue as [`Item::Presence`].
    Watch {
        /// The ids, without repeats.
        ids: Vec<Id>,
    },
    /// This envelope listener stops following these ids: answer with
    /// [`Connection::handle_watched`].
    Unwatch {
        /// The ids.
        ids: Vec<Id>,
    },
    /// Statistics are asked for: answer with [`Connection::handle_stats`].
    Stats {
        /// Which rendering.
        format: StatsFormat,
    },
}

/// Which statistics rendering a request wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsFormat {
    /// `GET /`: JSON.
    Json,
    /// `GET /metrics`: Prometheus text.
    Prometheus,
}

/// Adds the headers an allowed cross-origin caller needs to read the response (SPEC §6).
fn with_cors(resp: Response, origin: Option<&str>) -> Response {
    match origin {
        Some(origin) => resp
            .header("Access-Control-Allow-Origin", origin)
            .header(
                "Access-Control-Expose-Headers",
                "Retry-After, WWW-Authenticate, Fedbroker-Recipients, Fedbroker-Seq",
            )
            .header("Vary", "Origin"),
        None => resp,
    }
}

/// The request being served.
#[derive(Debug)]
struct Request {
    route: Option<Route>,
    head_only: bool,
    keep_alive: bool,
    expect_continue: bool,
    framing: BodyFraming,
    started: Instant,
    /// Whether the body (if any) has been read off the stream.
    body_read: bool,
    /// An HTTP/1.0 request: keep-alive must be confirmed in the response.
    http10: bool,
    /// The allowed cross-origin `Origin` its responses must name (SPEC §6).
    cors: Option<String>,
    /// The ids of a multi-target send, in request order.
    targets: Vec<Id>,
    /// `?reply=MS`, capped: the request waits this long for the listener's answer.
    reply_ms: Option<u64>,
    /// A listen request that negotiated `fedbroker.v1`.
    envelope: bool,
    /// `?since=SEQ` of a listen request.
    since: Option<u64>,
}

#[derive(Debug)]
enum Wait {
    Authorize {
        handshake: Option<Handshake>,
        /// For a multi-target send: the request to ask again for the next target, and its index.
        next: Option<(Box<AuthRequest>, usize)>,
        /// For a listener: its credentials, kept for what it sends through the envelope.
        creds: Option<Box<AuthRequest>>,
    },
    Deliver,
    DeliverMany,
    Reply {
        id: Id,
        ms: u64,
        deadline: Instant,
    },
    Listen {
        handshake: Handshake,
        until: Option<Instant>,
        creds: Option<Box<AuthRequest>>,
    },
    Stats,
}

/// A listener after its upgrade.
#[derive(Debug)]
struct Ws {
    session: WsSession,
    /// When its credentials expire (`4001`).
    until: Option<Instant>,
    id: Id,
    envelope: bool,
    /// The upgrade's credentials: envelope sends and watches are authorized with them.
    creds: Option<Box<AuthRequest>>,
    /// The envelope message being handled (one at a time).
    op: Option<Op>,
}

/// An envelope message from the listener, waiting for a decision or an answer.
#[derive(Debug)]
struct Op {
    msg: ClientMessage,
    payload: Bytes,
    /// Index of the next id to authorize (`watch` authorizes each id), or `None` once the
    /// request for the work itself is out.
    authorizing: Option<usize>,
    started: Instant,
}

#[derive(Debug)]
enum State {
    Head,
    Waiting(Request, Wait),
    /// Reading a body; `None` request means the body is being discarded after a response.
    Body(Option<Request>, BodyReader, Instant),
    WebSocket(Box<Ws>),
    Closing {
        until: Instant,
    },
    Closed,
}

/// One client connection's protocol state, from its first byte to its close.
#[derive(Debug)]
pub struct Connection {
    config: Arc<Config>,
    state: State,
    inbuf: BytesMut,
    heads: HeadReader,
    out: Outbox,
    events: VecDeque<Event>,
    eof: bool,
    shutting_down: bool,
    /// When an idle connection closes during shutdown: a request that was already on its way
    /// when shutdown began is still served until then.
    shutdown_close_at: Option<Instant>,
    served: u64,
    idle_since: Instant,
    request_start: Option<Instant>,
}

impl Connection {
    /// A connection accepted at `now`.
    pub fn new(config: Arc<Config>, now: Instant) -> Self {
        let heads = HeadReader::new(config.limits);
        Connection {
            config,
            state: State::Head,
            inbuf: BytesMut::new(),
            heads,
            out: Outbox::new(),
            events: VecDeque::new(),
            eof: false,
            shutting_down: false,
            shutdown_close_at: None,
            served: 0,
            idle_since: now,
            request_start: None,
        }
    }

    /// Answers with `err` at once and closes, whatever the peer sends: for connections over the
    /// limit. What the peer sends meanwhile is read and dropped (the linger), so it reads the
    /// response rather than a reset.
    pub fn refuse_all(&mut self, now: Instant, err: HttpError) {
        self.fail(now, err);
    }

    // ---- inputs ------------------------------------------------------------------------------

    /// Bytes received from the peer. Call only while [`Connection::wants_read`]; input beyond a
    /// hard limit (a head, a message and two reads) closes the connection with `413`.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        let hard_limit = self.config.limits.max_head + self.config.max_message_size + 2 * crate::READ_CHUNK;
        if self.inbuf.len() + data.len() > hard_limit && !matches!(self.state, State::Closing { .. } | State::Closed) {
            self.inbuf.clear();
            return self.fail(
                now,
                HttpError::PayloadTooLarge {
                    limit: self.config.max_message_size,
                },
            );
        }
        match self.state {
            State::Closed | State::Closing { .. } => return,
            State::Head if self.request_start.is_none() => {
                self.inbuf.extend_from_slice(data);
                if self.heads.started(&self.inbuf) {
                    self.request_start = Some(now);
                }
            }
            _ => self.inbuf.extend_from_slice(data),
        }
        self.advance(now);
    }

    /// The peer closed its sending side (or the connection broke).
    pub fn handle_eof(&mut self, now: Instant) {
        self.eof = true;
        self.advance(now);
    }

    /// The adapter wrote some of [`Connection::transmit`]; work paused for room may resume.
    pub fn handle_writable(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The deadline of [`Connection::poll_timeout`] has passed (calling early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.request_timeout;
        match &mut self.state {
            State::Head => {
                match self.request_start {
                    Some(start) if now >= start + timeout => self.fail(now, HttpError::Timeout),
                    None if self.shutdown_close_at.is_some_and(|t| now >= t) => self.close(now),
                    // A new connection that never sends a request is told so; an idle
                    // keep-alive connection is closed quietly (RFC 9112 §9.5).
                    None if now >= self.idle_since + timeout => {
                        if self.served == 0 {
                            self.fail(now, HttpError::Timeout)
                        } else {
                            self.close(now)
                        }
                    }
                    _ => {}
                }
            }
            State::Body(req, _, started) => {
                if now >= *started + timeout {
                    if req.is_some() {
                        self.fail(now, HttpError::Timeout);
                    } else {
                        // Discarding the body of a request already answered: no second response.
                        self.close(now);
                    }
                }
            }
            State::Waiting(_, Wait::Reply { id, ms, deadline }) => {
                if now >= *deadline {
                    let err = HttpError::ReplyTimeout { id: *id, ms: *ms };
                    let State::Waiting(req, _) = std::mem::replace(&mut self.state, State::Head) else {
                        return;
                    };
                    self.refuse_request(now, req, err);
                }
            }
            State::Waiting(req, _) => {
                if now >= req.started + timeout {
                    self.fail(now, HttpError::DecisionTimeout);
                }
            }
            State::WebSocket(ws) => {
                if ws.until.is_some_and(|u| now >= u) {
                    ws.until = None;
                    ws.session.close(now, CloseReason::TokenExpired, true, &mut self.out);
                }
                if ws.op.as_ref().is_some_and(|op| now >= op.started + timeout) {
                    // An authorizer or router that never answered: say so, take the next message.
                    let op = ws.op.take();
                    if let Some(op) = op {
                        answer_error(ws, op.msg.reference(), &HttpError::DecisionTimeout, &mut self.out);
                    }
                    self.events.clear();
                }
                ws.session.handle_timeout(now, &mut self.out);
                if ws.session.is_finished() {
                    self.close(now);
                }
            }
            State::Closing { until } => {
                if now >= *until {
                    self.state = State::Closed;
                }
            }
            State::Closed => {}
        }
        self.advance(now);
    }

    /// The broker is shutting down: finish the request in progress, close listeners with `1001`,
    /// answer a request already on its way (for up to the linger time) and take no more.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        match &mut self.state {
            State::Head if self.request_start.is_none() => self.shutdown_close_at = Some(now + self.config.linger),
            State::WebSocket(ws) => ws.session.close(now, CloseReason::GoingAway, true, &mut self.out),
            _ => {}
        }
        self.advance(now);
    }

    /// The answer to [`Event::Authorize`].
    pub fn handle_decision(&mut self, now: Instant, decision: Decision) {
        if matches!(self.state, State::WebSocket(_)) {
            self.ws_decision(now, decision);
            return self.advance(now);
        }
        let State::Waiting(_, Wait::Authorize { .. }) = self.state else {
            return;
        };
        let State::Waiting(req, Wait::Authorize { handshake, next, creds }) =
            std::mem::replace(&mut self.state, State::Head)
        else {
            return;
        };
        match decision {
            Decision::Allow { until } => match next {
                // A multi-target send: every id must be allowed before anything is sent.
                Some((mut auth, i)) if i < req.targets.len() => {
                    auth.id = Some(req.targets[i]);
                    self.events.push_back(Event::Authorize((*auth).clone()));
                    self.state = State::Waiting(
                        req,
                        Wait::Authorize {
                            handshake,
                            next: Some((auth, i + 1)),
                            creds,
                        },
                    );
                }
                _ => self.proceed(now, req, handshake, until, creds),
            },
            Decision::Unauthenticated => self.refuse_request(now, req, HttpError::Unauthorized),
            Decision::Forbidden => self.refuse_request(now, req, HttpError::Forbidden),
            Decision::Unavailable => self.refuse_request(now, req, HttpError::AuthUnavailable),
        }
        self.advance(now);
    }

    /// The answer to [`Event::Deliver`]: how the message was queued, or why it was not.
    pub fn handle_delivered(&mut self, now: Instant, result: Result<Delivered, HttpError>) {
        if let State::WebSocket(ws) = &mut self.state {
            let Some(op) = ws
                .op
                .take_if(|op| op.authorizing.is_none() && matches!(op.msg, ClientMessage::Send { .. }))
            else {
                return;
            };
            match result {
                Ok(Delivered::Topic { recipients }) => {
                    answer_ack(ws, op.msg.reference(), 204, Some(recipients), &mut self.out)
                }
                Ok(Delivered::Mailbox { live: false, .. }) => {
                    answer_ack(ws, op.msg.reference(), 202, None, &mut self.out)
                }
                Ok(_) => answer_ack(ws, op.msg.reference(), 204, None, &mut self.out),
                Err(e) => answer_error(ws, op.msg.reference(), &e, &mut self.out),
            }
            return self.advance(now);
        }
        let State::Waiting(_, Wait::Deliver) = self.state else {
            return;
        };
        let State::Waiting(req, _) = std::mem::replace(&mut self.state, State::Head) else {
            return;
        };
        match result {
            Ok(Delivered::Listener) => self.respond(now, req, Response::new(204)),
            Ok(Delivered::Mailbox { seq, live }) => {
                let status = if live { 204 } else { 202 };
                let resp = Response::new(status).header("Fedbroker-Seq", seq.to_string());
                self.respond(now, req, resp)
            }
            Ok(Delivered::Topic { recipients }) => {
                let resp = Response::new(204).header("Fedbroker-Recipients", recipients.to_string());
                self.respond(now, req, resp)
            }
            Ok(Delivered::AwaitingReply) => match (req.route, req.reply_ms) {
                (Some(Route::Send(id)), Some(ms)) => {
                    let deadline = now + std::time::Duration::from_millis(ms);
                    self.state = State::Waiting(req, Wait::Reply { id, ms, deadline });
                }
                _ => self.fail(now, HttpError::MalformedHead),
            },
            Err(e) => self.refuse_request(now, req, e),
        }
        self.advance(now);
    }

    /// The answer to [`Event::DeliverMany`]: one result per id, in the event's order.
    pub fn handle_delivered_many(&mut self, now: Instant, results: Vec<Result<Delivered, HttpError>>) {
        let State::Waiting(_, Wait::DeliverMany) = self.state else {
            return;
        };
        let State::Waiting(req, _) = std::mem::replace(&mut self.state, State::Head) else {
            return;
        };
        let all_live = results
            .iter()
            .all(|r| r.is_ok() && !matches!(r, Ok(Delivered::Mailbox { live: false, .. })));
        if results.len() == req.targets.len() && all_live {
            self.respond(now, req, Response::new(204));
        } else {
            let body = multi_status_report(&req.targets, &results);
            self.respond(now, req, Response::new(207).body("application/json", Bytes::from(body)));
        }
        self.advance(now);
    }

    /// How a request sent with `?reply=` ended (after [`Delivered::AwaitingReply`]). Ignored when
    /// the connection no longer waits (it timed out first).
    pub fn handle_reply(&mut self, now: Instant, outcome: ReplyOutcome) {
        let State::Waiting(_, Wait::Reply { id, .. }) = self.state else {
            return;
        };
        let State::Waiting(req, _) = std::mem::replace(&mut self.state, State::Head) else {
            return;
        };
        match outcome {
            ReplyOutcome::Replied(reply) => {
                let resp = Response::new(reply.status).raw_body(reply.body);
                // 204, 205 and 304 carry no content, so no type either.
                let resp = if matches!(reply.status, 204 | 205 | 304) {
                    resp
                } else {
                    let ct = reply
                        .content_type
                        .unwrap_or_else(|| "application/octet-stream".to_owned());
                    resp.header("Content-Type", ct)
                };
                self.respond(now, req, resp);
            }
            ReplyOutcome::Gone => self.refuse_request(now, req, HttpError::ListenerGone(id)),
        }
        self.advance(now);
    }

    /// Whether this connection waits for [`Connection::handle_listening`] (an upgrade not refused
    /// or timed out meanwhile).
    pub fn awaiting_listen(&self) -> bool {
        matches!(self.state, State::Waiting(_, Wait::Listen { .. }))
    }

    /// Whether this connection is a `POST …?reply=` waiting for its answer.
    pub fn awaiting_reply(&self) -> bool {
        matches!(self.state, State::Waiting(_, Wait::Reply { .. }))
    }

    /// The answer to [`Event::Reply`]: `Ok` when the reply was handed over.
    pub fn handle_replied(&mut self, now: Instant, result: Result<(), HttpError>) {
        self.finish_op(now, |m| matches!(m, ClientMessage::Reply { .. }), result, 200);
    }

    /// The answer to [`Event::Watch`] and [`Event::Unwatch`].
    pub fn handle_watched(&mut self, now: Instant, result: Result<(), HttpError>) {
        self.finish_op(
            now,
            |m| matches!(m, ClientMessage::Watch { .. } | ClientMessage::Unwatch { .. }),
            result,
            200,
        );
    }

    fn finish_op(
        &mut self,
        now: Instant,
        kind: impl Fn(&ClientMessage) -> bool,
        result: Result<(), HttpError>,
        status: u16,
    ) {
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        let Some(op) = ws.op.take_if(|op| op.authorizing.is_none() && kind(&op.msg)) else {
            return;
        };
        match result {
            Ok(()) => answer_ack(ws, op.msg.reference(), status, None, &mut self.out),
            Err(e) => answer_error(ws, op.msg.reference(), &e, &mut self.out),
        }
        self.advance(now);
    }

    /// The answer to [`Event::Listen`]: `Ok` with the role to take once registered (a
    /// [`Role`], or a [`Listening`] that also says the mailbox's last seq).
    pub fn handle_listening<L: Into<Listening>>(&mut self, now: Instant, result: Result<L, HttpError>) {
        let result = result.map(Into::into);
        let State::Waiting(_, Wait::Listen { .. }) = self.state else {
            return;
        };
        let State::Waiting(
            req,
            Wait::Listen {
                handshake,
                until,
                creds,
            },
        ) = std::mem::replace(&mut self.state, State::Head)
        else {
            return;
        };
        let (Ok(Listening { role, last_seq }), Some(Route::Listen(id))) = (&result, req.route) else {
            let err = result.err().unwrap_or(HttpError::MalformedHead);
            self.refuse_request(now, req, err);
            return self.advance(now);
        };
        let envelope = req.envelope && *role == Role::Listener;
        let role = if envelope { Role::Envelope } else { *role };
        let mut resp = handshake.accept(req.envelope.then_some(envelope::PROTOCOL));
        if let Some(seq) = last_seq {
            resp = resp.header("Fedbroker-Seq", seq.to_string());
        }
        self.out.write_with(|b| resp.encode(false, b));
        let timers = WsTimers {
            ping_interval: self.config.ping_interval,
            close_timeout: self.config.close_timeout,
        };
        let mut session = WsSession::new(role, self.config.max_message_size, timers, now);
        if self.shutting_down {
            session.close(now, CloseReason::GoingAway, true, &mut self.out);
        }
        self.request_start = None;
        self.state = State::WebSocket(Box::new(Ws {
            session,
            until,
            id,
            envelope,
            creds,
            op: None,
        }));
        self.advance(now);
    }

    /// The answer to [`Event::Stats`]: the rendered body and its content type.
    pub fn handle_stats(&mut self, now: Instant, content_type: &'static str, body: Bytes) {
        let State::Waiting(_, Wait::Stats) = self.state else {
            return;
        };
        let State::Waiting(req, _) = std::mem::replace(&mut self.state, State::Head) else {
            return;
        };
        self.respond(now, req, Response::new(200).body(content_type, body));
        self.advance(now);
    }

    /// An item of this listener's queue (a message, a topic's shared frames, a presence event),
    /// to send as one binary message. Call only while [`Connection::wants_messages`]; returns
    /// `false` if it could not be sent. Requests go to [`Connection::handle_request`].
    pub fn handle_item(&mut self, item: Item) -> bool {
        let State::WebSocket(ws) = &mut self.state else {
            return false;
        };
        if !ws.session.is_open() {
            return false;
        }
        match item {
            Item::Message { seq, id, from, payload } => {
                if ws.envelope {
                    let header = envelope::message_header(seq, id, from);
                    send_envelope(&header, payload, &mut self.out);
                    true
                } else {
                    ws.session.send_binary(payload, &mut self.out)
                }
            }
            Item::Frames(frames) => match (&frames.envelope, ws.envelope) {
                (Some(frame), true) => ws.session.send_encoded(frame.clone(), &mut self.out),
                (None, true) => {
                    // Not expected (the frame is made when the topic has envelope listeners), but
                    // never send an envelope listener a bare payload.
                    false
                }
                (_, false) => ws.session.send_encoded(frames.plain.clone(), &mut self.out),
            },
            Item::Presence { id, online } => {
                if ws.envelope {
                    send_envelope(&envelope::presence_header(id, online), Bytes::new(), &mut self.out);
                }
                ws.envelope
            }
            Item::Request { .. } => false,
        }
    }

    /// A request awaiting a reply, for this envelope listener. Returns `false` if it could not be
    /// sent (then nobody can answer it: drop its reply sender).
    pub fn handle_request(&mut self, seq: u64, id: Id, timeout_ms: u64, payload: Bytes) -> bool {
        let State::WebSocket(ws) = &mut self.state else {
            return false;
        };
        if !ws.session.is_open() || !ws.envelope {
            return false;
        }
        send_envelope(&envelope::request_header(seq, id, timeout_ms), payload, &mut self.out);
        true
    }

    /// Messages `from..=to` of this listener's mailbox id were dropped before it read them: an
    /// envelope listener is told with a `gap` event; a plain one is closed with `4002`.
    pub fn handle_gap(&mut self, now: Instant, from: u64, to: u64) {
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        if ws.envelope {
            if ws.session.is_open() {
                send_envelope(&envelope::gap_header(ws.id, from, to), Bytes::new(), &mut self.out);
            }
        } else {
            self.close_listener(now, CloseReason::MessagesLost);
        }
    }

    /// Another connection became the listener of this id: close with `4000`.
    pub fn handle_replaced(&mut self, now: Instant) {
        self.close_listener(now, CloseReason::Replaced);
    }

    /// This listener's queue overflowed where that closes it (a topic, presence): close with
    /// `1008`.
    pub fn handle_overflow(&mut self, now: Instant) {
        self.close_listener(now, CloseReason::TooSlow);
    }

    /// The mailbox this listener read was lost where it was kept (see
    /// [`Pop::Lost`](crate::Pop::Lost)): closed with `4002`, to reconnect.
    pub fn handle_lost(&mut self, now: Instant) {
        self.close_listener(now, CloseReason::MessagesLost);
    }

    fn close_listener(&mut self, now: Instant, reason: CloseReason) {
        if let State::WebSocket(ws) = &mut self.state {
            ws.session.close(now, reason, true, &mut self.out);
            if ws.session.is_finished() {
                self.close(now);
            }
        }
    }

    // ---- outputs -----------------------------------------------------------------------------

    /// Bytes to write to the peer, as a [`bytes::Buf`]. Write from it and `advance` it by what
    /// was written, then call [`Connection::handle_writable`].
    pub fn transmit(&mut self) -> &mut Outbox {
        &mut self.out
    }

    /// The next thing the connection needs from outside. Drain after every `handle_*` call.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timeout = self.config.request_timeout;
        match &self.state {
            State::Head => match (self.request_start, self.shutdown_close_at) {
                (None, Some(at)) => Some(at.min(self.idle_since + timeout)),
                (start, _) => Some(start.unwrap_or(self.idle_since) + timeout),
            },
            State::Body(_, _, started) => Some(*started + timeout),
            State::Waiting(_, Wait::Reply { deadline, .. }) => Some(*deadline),
            State::Waiting(req, _) => Some(req.started + timeout),
            State::WebSocket(ws) => [
                ws.session.poll_timeout(),
                ws.until,
                ws.op.as_ref().map(|op| op.started + timeout),
            ]
            .into_iter()
            .flatten()
            .min(),
            State::Closing { until } => Some(*until),
            State::Closed => None,
        }
    }

    /// Whether the adapter should read from the socket now. `false` applies backpressure: the
    /// connection has enough buffered to work on.
    pub fn wants_read(&self) -> bool {
        if self.eof {
            return false;
        }
        match &self.state {
            State::Head => self.inbuf.len() <= self.config.limits.max_head && !self.out.is_full(),
            State::Body(_, reader, _) => self.inbuf.len() < reader.remaining_hint().max(self.config.limits.max_head),
            // A request waiting for its reply may wait long: read on (what comes is kept for
            // the next request, up to a head) so that the client leaving is noticed and its
            // place among the pending replies freed.
            State::Waiting(_, Wait::Reply { .. }) => self.inbuf.len() < self.config.limits.max_head,
            State::Waiting(..) => false,
            State::WebSocket(ws) => {
                !ws.session.is_finished() && !self.out.is_full() && !ws.session.has_message() && ws.op.is_none()
            }
            State::Closing { .. } => true,
            State::Closed => false,
        }
    }

    /// Whether this connection is a live listener with room for more messages.
    pub fn wants_messages(&self) -> bool {
        self.is_listening() && !self.out.is_full()
    }

    /// Whether this connection is a listener that has not begun closing.
    pub fn is_listening(&self) -> bool {
        matches!(&self.state, State::WebSocket(ws) if ws.session.is_open())
    }

    /// Whether everything is sent and the adapter should shut down the sending side of the
    /// socket (then keep reading until [`Connection::is_closed`]).
    pub fn should_shutdown_write(&self) -> bool {
        matches!(self.state, State::Closing { .. } | State::Closed) && self.out.is_empty()
    }

    /// Whether the connection is over: the adapter drops the socket.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    // ---- internals ---------------------------------------------------------------------------

    /// Runs the state machine as far as the buffered input and the room in the outbox allow.
    fn advance(&mut self, now: Instant) {
        loop {
            match &mut self.state {
                State::Head => {
                    if self.out.is_full() {
                        return;
                    }
                    match self.heads.read(&mut self.inbuf) {
                        Ok(Some(head)) => {
                            let started = *self.request_start.get_or_insert(now);
                            self.begin(now, head, started);
                        }
                        Ok(None) => {
                            if self.eof {
                                self.close(now);
                            }
                            if self.request_start.is_none() && self.heads.started(&self.inbuf) {
                                self.request_start = Some(now);
                            }
                            if matches!(self.state, State::Head) {
                                return;
                            }
                        }
                        Err(e) => self.fail(now, e),
                    }
                }
                State::Body(req, reader, _) => match reader.read(&mut self.inbuf) {
                    Ok(BodyProgress::NeedMore) => {
                        if self.eof {
                            self.close(now);
                        } else {
                            return;
                        }
                    }
                    Ok(BodyProgress::Done(body)) => match req.take() {
                        None => self.next_request(now),
                        Some(mut req) => {
                            req.body_read = true;
                            self.deliver(now, req, body);
                        }
                    },
                    // A body being discarded belongs to a request already answered: a second
                    // response would desynchronise the client, so the connection just closes.
                    Err(e) if req.is_none() => {
                        tracing::debug!("closing connection: discarded body was bad: {e}");
                        self.close(now);
                    }
                    Err(e) => self.fail(now, e),
                },
                State::Waiting(_, Wait::Reply { .. }) if self.eof => {
                    // The client closed its side while waiting: it gave the request up.
                    self.close(now);
                    return;
                }
                State::Waiting(..) => return,
                State::WebSocket(ws) => {
                    if !self.inbuf.is_empty() && ws.op.is_none() {
                        ws.session.handle_input(now, &mut self.inbuf, &mut self.out);
                    }
                    if ws.op.is_none() && !self.out.is_full() {
                        if let Some(message) = ws.session.take_message() {
                            self.start_op(now, message);
                            // The message may have been answered at once: read on.
                            continue;
                        }
                    }
                    let State::WebSocket(ws) = &mut self.state else {
                        continue;
                    };
                    if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
                        // A listener mostly waits: it keeps no input buffer while idle.
                        self.inbuf = BytesMut::new();
                    }
                    if ws.session.is_finished() || (self.eof && ws.op.is_none() && !ws.session.has_message()) {
                        self.close(now);
                    }
                    return;
                }
                State::Closing { .. } => {
                    self.inbuf.clear();
                    if self.eof && self.out.is_empty() {
                        self.state = State::Closed;
                    }
                    return;
                }
                State::Closed => {
                    self.inbuf.clear();
                    return;
                }
            }
        }
    }

    /// Starts serving a request whose head has arrived.
    fn begin(&mut self, now: Instant, head: RequestHead, started: Instant) {
        let framing = head.framing();
        let mut req = Request {
            route: None,
            head_only: head.method() == Method::HEAD,
            keep_alive: head.keep_alive(),
            expect_continue: head.expect_continue(),
            framing,
            started,
            body_read: !framing.has_body(),
            http10: head.version() == http::Version::HTTP_10,
            cors: None,
            targets: Vec::new(),
            reply_ms: None,
            envelope: false,
            since: None,
        };
        match self.config.cors.check(&head, self.config.secure) {
            OriginCheck::Absent | OriginCheck::SameOrigin => {}
            OriginCheck::Allowed(origin) => req.cors = Some(origin),
            OriginCheck::Refused => return self.refuse_request(now, req, HttpError::OriginNotAllowed),
        }
        // A browser's preflight must succeed for the browser to send the request at all; whether
        // the path is a valid id is then answered to the request itself, readably.
        if req.cors.is_some()
            && head.method() == Method::OPTIONS
            && head.header("access-control-request-method").is_some()
        {
            let resp = Response::new(204)
                .header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
                .header("Access-Control-Allow-Headers", "authorization, content-type")
                .header("Access-Control-Max-Age", "600");
            return self.respond(now, req, resp);
        }
        let route = match classify(head.method(), head.path(), &self.config.base_path) {
            Ok(route) => route,
            Err(e) => return self.refuse_request(now, req, e),
        };
        req.route = Some(route);
        match route {
            Route::Health => {
                let resp = Response::new(200).body("text/plain; charset=utf-8", Bytes::from_static(b"ok"));
                self.respond(now, req, resp)
            }
            Route::Options { allow } => self.respond(now, req, Response::new(204).header("Allow", allow)),
            Route::Stats | Route::Metrics => self.authorize(req, &head, Action::ReadStats, None, None),
            Route::Send(_) | Route::SendMany => {
                let max = self.config.max_message_size;
                if let BodyFraming::Length(n) = framing {
                    if n > max as u64 {
                        return self.refuse_request(now, req, HttpError::PayloadTooLarge { limit: max });
                    }
                }
                match reply_param(head.query(), self.config.max_reply_timeout) {
                    Ok(ms) => req.reply_ms = ms,
                    Err(e) => return self.refuse_request(now, req, e),
                }
                let first = match route {
                    Route::Send(id) => {
                        if req.reply_ms.is_some() && self.config.topics.contains(id) {
                            return self.refuse_request(
                                now,
                                req,
                                HttpError::BadReply("request-reply needs a plain id, not a topic"),
                            );
                        }
                        id
                    }
                    _ => {
                        let list = head.path().rsplit('/').next().unwrap_or("");
                        match parse_targets(list.as_bytes()) {
                            Ok(ids) => req.targets = ids,
                            Err(e) => return self.refuse_request(now, req, HttpError::BadTargets(e)),
                        }
                        if req.reply_ms.is_some() {
                            return self.refuse_request(
                                now,
                                req,
                                HttpError::BadReply("request-reply needs a single id, not a list"),
                            );
                        }
                        req.targets[0]
                    }
                };
                self.authorize(req, &head, Action::Send, Some(first), None)
            }
            Route::Listen(id) => {
                if req.head_only {
                    return self.refuse_request(now, req, HttpError::UpgradeRequired);
                }
                if self.shutting_down {
                    // It would be closed with 1001 right after its 101: say so plainly instead.
                    return self.refuse_request(now, req, HttpError::ShuttingDown);
                }
                let hs = match check_upgrade(&head) {
                    Ok(hs) => hs,
                    Err(e) => return self.refuse_request(now, req, e),
                };
                match since_param(head.query()) {
                    Ok(since) => req.since = since,
                    Err(e) => return self.refuse_request(now, req, e),
                }
                if self.config.websocket_role == Role::Listener {
                    match envelope::negotiate(head.header_all("sec-websocket-protocol")) {
                        envelope::Offer::Plain => {}
                        envelope::Offer::Envelope => req.envelope = true,
                        envelope::Offer::Unsupported => {
                            return self.refuse_request(now, req, HttpError::UnsupportedSubprotocol)
                        }
                    }
                }
                self.authorize(req, &head, Action::Listen, Some(id), Some(hs))
            }
        }
    }

    fn authorize(
        &mut self,
        req: Request,
        head: &RequestHead,
        action: Action,
        id: Option<Id>,
        handshake: Option<Handshake>,
    ) {
        let origin = head.header_str("origin").map(str::to_owned);
        let auth = AuthRequest {
            action,
            id,
            token: bearer_token(head.header_str("authorization"), head.query()),
            query: head.query().map(str::to_owned),
            origin,
        };
        let next = (req.targets.len() > 1).then(|| (Box::new(auth.clone()), 1));
        // An envelope listener sends and watches with the credentials of its upgrade.
        let creds = req.envelope.then(|| Box::new(auth.clone()));
        self.events.push_back(Event::Authorize(auth));
        self.state = State::Waiting(req, Wait::Authorize { handshake, next, creds });
    }

    /// Continues an allowed request.
    fn proceed(
        &mut self,
        now: Instant,
        mut req: Request,
        handshake: Option<Handshake>,
        until: Option<Instant>,
        creds: Option<Box<AuthRequest>>,
    ) {
        match req.route {
            Some(Route::Send(_) | Route::SendMany) => {
                if req.body_read {
                    return self.deliver(now, req, Bytes::new());
                }
                if req.expect_continue {
                    self.out.push(Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
                    req.expect_continue = false;
                }
                let reader = BodyReader::new(req.framing, self.config.max_message_size, false);
                // Room for the whole body up front, so it is copied once, into place.
                self.inbuf
                    .reserve(reader.remaining_hint().saturating_sub(self.inbuf.len()));
                let started = req.started;
                self.state = State::Body(Some(req), reader, started);
            }
            Some(Route::Listen(id)) => match handshake {
                Some(handshake) => {
                    self.events.push_back(Event::Listen {
                        id,
                        envelope: req.envelope,
                        since: req.since,
                    });
                    self.state = State::Waiting(
                        req,
                        Wait::Listen {
                            handshake,
                            until,
                            creds,
                        },
                    );
                }
                None => self.fail(now, HttpError::MalformedHead),
            },
            Some(Route::Stats) | Some(Route::Metrics) => {
                let format = if req.route == Some(Route::Stats) {
                    StatsFormat::Json
                } else {
                    StatsFormat::Prometheus
                };
                self.events.push_back(Event::Stats { format });
                self.state = State::Waiting(req, Wait::Stats);
            }
            _ => self.fail(now, HttpError::MalformedHead),
        }
    }

    /// A send whose body is read: route it.
    fn deliver(&mut self, now: Instant, req: Request, payload: Bytes) {
        match req.route {
            Some(Route::Send(id)) => {
                self.events.push_back(Event::Deliver {
                    id,
                    payload,
                    from: None,
                    reply_ms: req.reply_ms,
                });
                self.state = State::Waiting(req, Wait::Deliver);
            }
            Some(Route::SendMany) => {
                self.events.push_back(Event::DeliverMany {
                    ids: req.targets.clone(),
                    payload,
                });
                self.state = State::Waiting(req, Wait::DeliverMany);
            }
            _ => self.fail(now, HttpError::MalformedHead),
        }
    }

    /// Starts handling an envelope message from the listener.
    fn start_op(&mut self, now: Instant, message: Bytes) {
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        let (msg, payload) = match envelope::decode(&message) {
            Ok((msg, payload)) => {
                let payload = message.slice_ref(payload);
                (msg, payload)
            }
            Err(e) => {
                let header = envelope::error_header(&e.reference, 400, &e.message);
                return send_envelope(&header, Bytes::new(), &mut self.out);
            }
        };
        let first_auth = match &msg {
            ClientMessage::Send { to, .. } => Some((Action::Send, *to)),
            ClientMessage::Watch { ids, .. } => {
                if ids.len() > self.config.max_watch {
                    let err = HttpError::TooManyWatched {
                        limit: self.config.max_watch,
                    };
                    return answer_error(ws, msg.reference(), &err, &mut self.out);
                }
                ids.first().map(|id| (Action::Presence, *id))
            }
            ClientMessage::Reply { .. } | ClientMessage::Unwatch { .. } => None,
        };
        let mut op = Op {
            msg,
            payload,
            authorizing: None,
            started: now,
        };
        match first_auth {
            Some((action, id)) => {
                let mut auth = ws.creds.as_deref().cloned().unwrap_or(AuthRequest {
                    action,
                    id: None,
                    token: None,
                    query: None,
                    origin: None,
                });
                auth.action = action;
                auth.id = Some(id);
                op.authorizing = Some(1);
                self.events.push_back(Event::Authorize(auth));
                ws.op = Some(op);
            }
            None => {
                let event = work_event(ws.id, &op);
                ws.op = Some(op);
                self.events.push_back(event);
            }
        }
    }

    /// A decision for the envelope message in progress.
    fn ws_decision(&mut self, _now: Instant, decision: Decision) {
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        let Some(next) = ws.op.as_ref().and_then(|op| op.authorizing) else {
            return;
        };
        let refusal = match decision {
            Decision::Allow { .. } => None,
            Decision::Unauthenticated => Some(HttpError::Unauthorized),
            Decision::Forbidden => Some(HttpError::Forbidden),
            Decision::Unavailable => Some(HttpError::AuthUnavailable),
        };
        if let Some(err) = refusal {
            if let Some(op) = ws.op.take() {
                answer_error(ws, op.msg.reference(), &err, &mut self.out);
            }
            return;
        }
        let Some(op) = ws.op.as_mut() else {
            return;
        };
        // A watch authorizes every id in turn.
        if let ClientMessage::Watch { ids, .. } = &op.msg {
            if let Some(&id) = ids.get(next) {
                op.authorizing = Some(next + 1);
                let mut auth = ws.creds.as_deref().cloned().unwrap_or(AuthRequest {
                    action: Action::Presence,
                    id: None,
                    token: None,
                    query: None,
                    origin: None,
                });
                auth.action = Action::Presence;
                auth.id = Some(id);
                self.events.push_back(Event::Authorize(auth));
                return;
            }
        }
        op.authorizing = None;
        let event = work_event(ws.id, op);
        self.events.push_back(event);
    }

    fn refuse_request(&mut self, now: Instant, req: Request, err: HttpError) {
        tracing::debug!(status = err.status(), "refused: {err}");
        self.respond(now, req, Response::error(&err));
    }

    /// Queues the response to `req` and moves on: to the next request, to discarding an unread
    /// body, or to closing.
    fn respond(&mut self, now: Instant, req: Request, resp: Response) {
        let unread_body = !req.body_read;
        let mut closing = !req.keep_alive || resp.closes() || self.shutting_down;
        // A client waiting for 100 Continue may or may not send its body now: the stream can no
        // longer be framed. A body too large to skip is not read either.
        if unread_body
            && (req.expect_continue
                || matches!(req.framing, BodyFraming::Length(n) if n > self.config.max_message_size as u64))
        {
            closing = true;
        }
        let resp = with_cors(resp, req.cors.as_deref());
        let resp = if closing && !resp.closes() {
            resp.close()
        } else if !closing && req.http10 {
            // HTTP/1.0 closes unless the response confirms keep-alive (RFC 9112 §9.3).
            resp.header("Connection", "keep-alive")
        } else {
            resp
        };
        match resp.as_static() {
            Some(bytes) => self.out.push(Bytes::from_static(bytes)),
            None => self.out.write_with(|b| resp.encode(req.head_only, b)),
        }
        self.served += 1;
        if closing {
            self.close(now);
        } else if unread_body {
            let reader = BodyReader::new(req.framing, self.config.max_message_size, true);
            self.state = State::Body(None, reader, req.started);
        } else {
            self.next_request(now);
        }
    }

    fn next_request(&mut self, now: Instant) {
        self.request_start = None;
        self.idle_since = now;
        self.state = State::Head;
        if self.shutting_down {
            self.close(now);
        }
    }

    /// Answers a broken request with `err` and closes.
    fn fail(&mut self, now: Instant, err: HttpError) {
        tracing::debug!(status = err.status(), "closing connection: {err}");
        // The request in progress, if any, may come from an allowed origin.
        let cors = match &self.state {
            State::Waiting(req, _) | State::Body(Some(req), _, _) => req.cors.clone(),
            _ => None,
        };
        let resp = with_cors(Response::error(&err), cors.as_deref());
        let resp = if resp.closes() { resp } else { resp.close() };
        self.out.write_with(|b| resp.encode(false, b));
        self.close(now);
    }

    /// Stops taking requests: flush, then close after the peer's EOF or the linger time.
    fn close(&mut self, now: Instant) {
        if !matches!(self.state, State::Closing { .. } | State::Closed) {
            self.state = State::Closing {
                until: now + self.config.linger,
            };
            self.events.clear();
        }
    }
}

/// The event that does an envelope message's work once it is authorized.
fn work_event(me: Id, op: &Op) -> Event {
    match &op.msg {
        ClientMessage::Send { to, .. } => Event::Deliver {
            id: *to,
            payload: op.payload.clone(),
            from: Some(me),
            reply_ms: None,
        },
        ClientMessage::Reply {
            reply_to,
            status,
            content_type,
            ..
        } => Event::Reply {
            reply_to: *reply_to,
            reply: ReplyMsg {
                status: *status,
                content_type: content_type.clone(),
                body: op.payload.clone(),
            },
        },
        ClientMessage::Watch { ids, .. } => Event::Watch { ids: ids.clone() },
        ClientMessage::Unwatch { ids, .. } => Event::Unwatch { ids: ids.clone() },
    }
}

/// Queues one envelope message to the listener.
fn send_envelope(header: &str, payload: Bytes, out: &mut Outbox) {
    let mut rest = None;
    out.write_with(|b| rest = envelope::encode_frame(header, payload, b));
    if let Some(payload) = rest {
        out.push(payload);
    }
}

fn answer_ack(ws: &mut Ws, reference: &Value, status: u16, recipients: Option<u32>, out: &mut Outbox) {
    if ws.session.is_open() {
        send_envelope(&envelope::ack_header(reference, status, recipients), Bytes::new(), out);
    }
}

fn answer_error(ws: &mut Ws, reference: &Value, err: &HttpError, out: &mut Outbox) {
    if ws.session.is_open() {
        let header = envelope::error_header(reference, err.status(), &err.to_string());
        send_envelope(&header, Bytes::new(), out);
    }
}

/// The `207` body of a multi-target send: one entry per id, in request order.
fn multi_status_report(ids: &[Id], results: &[Result<Delivered, HttpError>]) -> String {
    use std::fmt::Write as _;
    let mut body = String::with_capacity(32 + ids.len() * 40);
    body.push_str(r#"{"results":["#);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        match results.get(i) {
            Some(Ok(Delivered::Topic { recipients })) => {
                let _ = write!(body, r#"{{"id":{id},"status":204,"recipients":{recipients}}}"#);
            }
            Some(Ok(Delivered::Mailbox { seq, live })) => {
                let status = if *live { 204 } else { 202 };
                let _ = write!(body, r#"{{"id":{id},"status":{status},"seq":{seq}}}"#);
            }
            Some(Ok(_)) => {
                let _ = write!(body, r#"{{"id":{id},"status":204}}"#);
            }
            Some(Err(e)) => {
                let _ = write!(
                    body,
                    r#"{{"id":{id},"status":{},"error":{}}}"#,
                    e.status(),
                    Value::from(e.to_string())
                );
            }
            None => {
                let _ = write!(body, r#"{{"id":{id},"status":500,"error":"not routed"}}"#);
            }
        }
    }
    body.push_str("]}");
    body
}

/// Reads `since=SEQ` from a listen request's query string.
fn since_param(query: Option<&str>) -> Result<Option<u64>, HttpError> {
    let Some(query) = query else {
        return Ok(None);
    };
    match query_value(query, "since") {
        None => Ok(None),
        Some(v) if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) => Err(HttpError::BadSince),
        Some(v) => v.parse().map(Some).map_err(|_| HttpError::BadSince),
    }
}

/// The value of `name` in a query string: `Some("")` for a bare `name` or `name=`, `None`
/// without it.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some(""),
        _ => None,
    })
}

/// What [`Connection::handle_listening`] is told when the listener is registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening {
    /// The role the connection takes.
    pub role: Role,
    /// On a mailbox id, the last seq given so far (sent as `Fedbroker-Seq` in the `101`).
    pub last_seq: Option<u64>,
}

impl From<Role> for Listening {
    fn from(role: Role) -> Self {
        Listening { role, last_seq: None }
    }
}

/// Reads `reply=MS` from a query string: `Ok(None)` without it, the value capped at `max`.
fn reply_param(query: Option<&str>, max: std::time::Duration) -> Result<Option<u64>, HttpError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let Some(value) = query_value(query, "reply") else {
        return Ok(None);
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadReply(REPLY_VALUE));
    }
    // Digits beyond u64 are simply a very long wait: capped below.
    let ms = value.parse::<u64>().unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(HttpError::BadReply(REPLY_VALUE));
    }
    let cap = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    Ok(Some(ms.min(cap)))
}

const REPLY_VALUE: &str = "reply must be a whole number of milliseconds from 1";
