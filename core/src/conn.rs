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

use crate::auth::{bearer_token, Action, AuthRequest, Decision};
use crate::cors::OriginCheck;
use crate::http::{BodyFraming, BodyProgress, BodyReader, HeadReader, RequestHead, Response};
use crate::route::{classify, Route};
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
    /// Route `payload` to the listener of `id`: answer with [`Connection::handle_delivered`].
    Deliver {
        /// The target id.
        id: Id,
        /// The message, exactly as received.
        payload: Bytes,
    },
    /// Make this connection the listener of `id`: answer with [`Connection::handle_listening`],
    /// then feed it messages with [`Connection::handle_message`].
    Listen {
        /// The id to listen on.
        id: Id,
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
            .header("Access-Control-Expose-Headers", "Retry-After, WWW-Authenticate")
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
}

#[derive(Debug)]
enum Wait {
    Authorize {
        handshake: Option<Handshake>,
    },
    Deliver,
    Listen {
        handshake: Handshake,
        until: Option<Instant>,
    },
    Stats,
}

#[derive(Debug)]
enum State {
    Head,
    Waiting(Request, Wait),
    /// Reading a body; `None` request means the body is being discarded after a response.
    Body(Option<Request>, BodyReader, Instant),
    WebSocket(Box<WsSession>, Option<Instant>),
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
            State::Waiting(req, _) => {
                if now >= req.started + timeout {
                    self.fail(now, HttpError::DecisionTimeout);
                }
            }
            State::WebSocket(ws, until) => {
                if until.is_some_and(|u| now >= u) {
                    *until = None;
                    ws.close(now, CloseReason::TokenExpired, true, &mut self.out);
                }
                ws.handle_timeout(now, &mut self.out);
                if ws.is_finished() {
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
            State::WebSocket(ws, _) => ws.close(now, CloseReason::GoingAway, true, &mut self.out),
            _ => {}
        }
        self.advance(now);
    }

    /// The answer to [`Event::Authorize`].
    pub fn handle_decision(&mut self, now: Instant, decision: Decision) {
        let State::Waiting(_, Wait::Authorize { .. }) = self.state else {
            return;
        };
        let State::Waiting(req, Wait::Authorize { handshake }) = std::mem::replace(&mut self.state, State::Head) else {
            return;
        };
        match decision {
            Decision::Allow { until } => self.proceed(now, req, handshake, until),
            Decision::Unauthenticated => self.refuse_request(now, req, HttpError::Unauthorized),
            Decision::Forbidden => self.refuse_request(now, req, HttpError::Forbidden),
            Decision::Unavailable => self.refuse_request(now, req, HttpError::AuthUnavailable),
        }
        self.advance(now);
    }

    /// The answer to [`Event::Deliver`]: `Ok` when the message was queued for a listener.
    pub fn handle_delivered(&mut self, now: Instant, result: Result<(), HttpError>) {
        let State::Waiting(_, Wait::Deliver) = self.state else {
            return;
        };
        let State::Waiting(req, _) = std::mem::replace(&mut self.state, State::Head) else {
            return;
        };
        match result {
            Ok(()) => self.respond(now, req, Response::new(204)),
            Err(e) => self.refuse_request(now, req, e),
        }
        self.advance(now);
    }

    /// The answer to [`Event::Listen`]: `Ok` with the role to take once registered.
    pub fn handle_listening(&mut self, now: Instant, result: Result<Role, HttpError>) {
        let State::Waiting(_, Wait::Listen { .. }) = self.state else {
            return;
        };
        let State::Waiting(req, Wait::Listen { handshake, until }) = std::mem::replace(&mut self.state, State::Head)
        else {
            return;
        };
        match result {
            Ok(role) => {
                let resp = handshake.accept();
                self.out.write_with(|b| resp.encode(false, b));
                let timers = WsTimers {
                    ping_interval: self.config.ping_interval,
                    close_timeout: self.config.close_timeout,
                };
                let mut ws = Box::new(WsSession::new(role, self.config.max_message_size, timers, now));
                if self.shutting_down {
                    ws.close(now, CloseReason::GoingAway, true, &mut self.out);
                }
                self.request_start = None;
                self.state = State::WebSocket(ws, until);
            }
            Err(e) => self.refuse_request(now, req, e),
        }
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

    /// A message for this listener, to send as one binary frame. Call only while
    /// [`Connection::wants_messages`]; returns `false` if the message could not be sent.
    pub fn handle_message(&mut self, payload: Bytes) -> bool {
        match &mut self.state {
            State::WebSocket(ws, _) => ws.send_binary(payload, &mut self.out),
            _ => false,
        }
    }

    /// Another connection became the listener of this id: close with `4000`.
    pub fn handle_replaced(&mut self, now: Instant) {
        if let State::WebSocket(ws, _) = &mut self.state {
            ws.close(now, CloseReason::Replaced, true, &mut self.out);
            if ws.is_finished() {
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
            State::Waiting(req, _) => Some(req.started + timeout),
            State::WebSocket(ws, until) => match (ws.poll_timeout(), until) {
                (Some(a), Some(b)) => Some(a.min(*b)),
                (a, b) => a.or(*b),
            },
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
            State::Waiting(..) => false,
            State::WebSocket(ws, _) => !ws.is_finished() && !self.out.is_full(),
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
        matches!(&self.state, State::WebSocket(ws, _) if ws.is_open())
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
                            let Some(Route::Send(id)) = req.route else {
                                return self.fail(now, HttpError::MalformedHead);
                            };
                            self.events.push_back(Event::Deliver { id, payload: body });
                            self.state = State::Waiting(req, Wait::Deliver);
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
                State::Waiting(..) => return,
                State::WebSocket(ws, _) => {
                    if !self.inbuf.is_empty() {
                        ws.handle_input(now, &mut self.inbuf, &mut self.out);
                    }
                    if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
                        // A listener mostly waits: it keeps no input buffer while idle.
                        self.inbuf = BytesMut::new();
                    }
                    if ws.is_finished() || self.eof {
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
            Route::Send(id) => {
                let max = self.config.max_message_size;
                match framing {
                    BodyFraming::Length(n) if n > max as u64 => {
                        self.refuse_request(now, req, HttpError::PayloadTooLarge { limit: max })
                    }
                    _ => self.authorize(req, &head, Action::Send, Some(id), None),
                }
            }
            Route::Listen(id) => {
                if req.head_only {
                    return self.refuse_request(now, req, HttpError::UpgradeRequired);
                }
                if self.shutting_down {
                    // It would be closed with 1001 right after its 101: say so plainly instead.
                    return self.refuse_request(now, req, HttpError::ShuttingDown);
                }
                match check_upgrade(&head) {
                    Ok(hs) => self.authorize(req, &head, Action::Listen, Some(id), Some(hs)),
                    Err(e) => self.refuse_request(now, req, e),
                }
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
        self.events.push_back(Event::Authorize(AuthRequest {
            action,
            id,
            token: bearer_token(head.header_str("authorization"), head.query()),
            query: head.query().map(str::to_owned),
            origin,
        }));
        self.state = State::Waiting(req, Wait::Authorize { handshake });
    }

    /// Continues an allowed request.
    fn proceed(&mut self, now: Instant, mut req: Request, handshake: Option<Handshake>, until: Option<Instant>) {
        match req.route {
            Some(Route::Send(id)) => {
                if req.body_read {
                    self.events.push_back(Event::Deliver {
                        id,
                        payload: Bytes::new(),
                    });
                    self.state = State::Waiting(req, Wait::Deliver);
                    return;
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
                    self.events.push_back(Event::Listen { id });
                    self.state = State::Waiting(req, Wait::Listen { handshake, until });
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
