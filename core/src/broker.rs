//! The shared broker state and the [`Session`] that joins a [`Connection`] to it.
//!
//! [`Connection`] is pure protocol and owns nothing shared; [`Session`] answers its events from
//! the [`Broker`] (authorizer, registry, counters) so that every adapter runs the same small loop.
//! Embedders who route or authorize elsewhere (a cluster engine, a remote service) drive a
//! [`Connection`] directly and answer its events themselves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::io::IoSlice;

use bytes::{Buf, Bytes};

use crate::auth::{
    decision_channel_reusing, token_matches, Action, AllowAll, AuthTime, Authorizer, Decision, PendingDecision,
};
use crate::conn::{Connection, Event, Listening, StatsFormat};
use crate::mailbox::Persist;
use crate::registry::{Delivered, Item, ListenerHandle, Pop, Registry};
use crate::reply::{reply_channel, PendingReply, ReplyOutcome, ReplySender};
use crate::router::{listen_channel, route_channel, LocalRouter, PendingListen, PendingRoute, RouteRequest, Router};
use crate::stats::{Gauges, Snapshot, Stats};
use crate::transmit::Outbox;
use crate::ws::Role;
use crate::{Config, HttpError, Id};

/// Bytes read per [`Session::read_from`] call.
pub const READ_CHUNK: usize = 16 * 1024;

/// Everything the connections of one broker share. Create one per process with
/// [`Broker::new`], then [`Broker::accept`] a [`Session`] per connection.
pub struct Broker {
    config: Arc<Config>,
    registry: Registry,
    stats: Stats,
    authorizer: Box<dyn Authorizer>,
    router: Box<dyn Router>,
    started: Instant,
    /// Wall-clock time at `started`, in nanoseconds since the Unix epoch: JWT `exp`/`nbf` are
    /// checked against it plus `now - started`. Adapters may move it ([`Broker::set_wall_clock`])
    /// when the system clock is stepped.
    wall_at_start: AtomicU64,
    runtime: &'static str,
    /// `POST …?reply=` requests waiting now (at most `max_pending_replies`).
    pending_replies: AtomicUsize,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("runtime", &self.runtime)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// An open broker (everything allowed) started at `now`, when the wall clock read
    /// `since_epoch` since the Unix epoch; `runtime` names the adapter in the statistics
    /// (`tokio`, `smol`, `std`).
    pub fn new(config: Config, runtime: &'static str, now: Instant, since_epoch: Duration) -> Arc<Broker> {
        Self::with_authorizer(config, runtime, AllowAll, now, since_epoch)
    }

    /// A broker whose requests are decided by `authorizer`.
    pub fn with_authorizer(
        config: Config,
        runtime: &'static str,
        authorizer: impl Authorizer,
        now: Instant,
        since_epoch: Duration,
    ) -> Arc<Broker> {
        Self::with_router(config, runtime, authorizer, LocalRouter::new, now, since_epoch)
    }

    /// A broker whose requests are decided by `authorizer` and whose messages are routed by the
    /// router `make_router` builds over the broker's own [`Registry`] (wrap a [`LocalRouter`] of
    /// it to deliver locally as well).
    pub fn with_router<R: Router>(
        config: Config,
        runtime: &'static str,
        authorizer: impl Authorizer,
        make_router: impl FnOnce(Registry) -> R,
        now: Instant,
        since_epoch: Duration,
    ) -> Arc<Broker> {
        Self::with_store(config, runtime, authorizer, make_router, None, now, since_epoch)
    }

    /// As [`Broker::with_router`], keeping the mailboxes of `config.mailbox` durable through
    /// `persist` (restore what it holds with [`Registry::restore`] before serving).
    pub fn with_store<R: Router>(
        config: Config,
        runtime: &'static str,
        authorizer: impl Authorizer,
        make_router: impl FnOnce(Registry) -> R,
        persist: Option<Arc<dyn Persist>>,
        now: Instant,
        since_epoch: Duration,
    ) -> Arc<Broker> {
        let registry = Registry::with_mailboxes(
            config.queue_limit,
            config.topics.clone(),
            config.mailbox.clone(),
            persist,
        );
        let router = Box::new(make_router(registry.clone()));
        Arc::new(Broker {
            config: Arc::new(config),
            registry,
            stats: Stats::default(),
            authorizer: Box::new(authorizer),
            router,
            started: now,
            wall_at_start: AtomicU64::new(nanos(since_epoch)),
            runtime,
            pending_replies: AtomicUsize::new(0),
        })
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The listeners by id.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The wall-clock time at `now`, since the Unix epoch.
    pub fn wall_clock(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.wall_at_start.load(Ordering::Relaxed)) + now.saturating_duration_since(self.started)
    }

    /// Tells the broker that the wall clock reads `since_epoch` at `now` (adapters call this now
    /// and then, so that a stepped system clock is followed).
    pub fn set_wall_clock(&self, now: Instant, since_epoch: Duration) {
        let at_start = since_epoch.saturating_sub(now.saturating_duration_since(self.started));
        self.wall_at_start.store(nanos(at_start), Ordering::Relaxed);
    }

    /// Wall-clock milliseconds since the Unix epoch at `now`.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        u64::try_from(self.wall_clock(now).as_millis()).unwrap_or(u64::MAX)
    }

    /// The statistics at `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let [kept, kept_bytes, dropped, refused, store_errors] = self.registry.mailbox_figures();
        let cluster = self.router.gauges();
        let gauges = Gauges {
            cluster: u64::from(cluster.clustered),
            cluster_connected: u64::from(cluster.connected),
            cluster_subscriptions: cluster.subscriptions as u64,
            mailbox_messages: kept,
            mailbox_bytes: kept_bytes,
            mailbox_dropped: dropped,
            mailbox_refused: refused,
            store_errors,
            listeners: self.registry.listeners(),
            topic_listeners: self.registry.topic_listeners(),
            slow_listeners_closed: self.registry.slow_listeners_closed(),
            pending_replies: self.pending_replies.load(Ordering::Relaxed),
            presence_watches: self.registry.presence_watches(),
        };
        self.stats
            .snapshot(self.runtime, now.saturating_duration_since(self.started), gauges)
    }

    /// A session for a connection accepted at `now`. Over `max_connections`, the session answers
    /// `503` at once and closes.
    pub fn accept(self: &Arc<Self>, now: Instant) -> Session {
        let open = self.stats.connection_opened();
        let mut conn = Connection::new(self.config.clone(), now);
        if open > self.config.max_connections as u64 {
            conn.refuse_all(now, HttpError::TooManyConnections);
        }
        Session {
            broker: self.clone(),
            conn,
            listener: None,
            pending: None,
            spare: None,
            awaiting: None,
            replies: BTreeMap::new(),
            routes: Vec::new(),
            routes_many: false,
            spare_route: None,
            preparing: None,
        }
    }
}

/// One connection of a [`Broker`]: a [`Connection`] whose events are answered by the broker.
///
/// Drive it with the loop shown in the crate docs: feed input, timeouts, shutdown and wake-ups
/// in; write [`Session::transmit`] out; sleep until [`Session::poll_timeout`] or
/// [`Session::poll_wake`].
#[derive(Debug)]
pub struct Session {
    broker: Arc<Broker>,
    conn: Connection,
    listener: Option<ListenerHandle>,
    pending: Option<PendingDecision>,
    /// A decided channel, to reuse for the next request.
    spare: Option<PendingDecision>,
    /// This connection's `POST …?reply=`, waiting for its answer.
    awaiting: Option<PendingReply>,
    /// Requests this envelope listener has received and may answer, by seq.
    replies: BTreeMap<u64, ReplySender>,
    /// The router's answers awaited for the message being sent (one per target), with those
    /// given so far.
    routes: Vec<(PendingRoute, Option<Result<Delivered, HttpError>>)>,
    /// Whether `routes` answers a multi-target send.
    routes_many: bool,
    /// A finished routing channel, to reuse.
    spare_route: Option<PendingRoute>,
    /// A listener waiting for the router to prepare its mailbox id (id, envelope, since).
    preparing: Option<(PendingListen, Id, bool, Option<u64>)>,
}

impl Session {
    /// Answers `err` at once and closes, whatever the peer sends (an adapter out of room for
    /// this connection, for instance).
    pub fn refuse_all(&mut self, now: Instant, err: HttpError) {
        self.conn.refuse_all(now, err);
    }

    /// Bytes received from the peer.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.conn.handle_input(now, data);
        self.drive(now);
    }

    /// The peer closed its sending side, or reading failed.
    pub fn handle_eof(&mut self, now: Instant) {
        self.conn.handle_eof(now);
        self.drive(now);
    }

    /// Some of [`Session::transmit`] was written.
    pub fn handle_writable(&mut self, now: Instant) {
        self.conn.handle_writable(now);
        self.drive(now);
    }

    /// The deadline of [`Session::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        self.drive(now);
    }

    /// [`Session::poll_wake`] was ready: a message or a decision arrived.
    pub fn handle_wake(&mut self, now: Instant) {
        self.drive(now);
    }

    /// The broker is shutting down.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.conn.handle_shutdown(now);
        self.drive(now);
    }

    /// Bytes to write (a [`bytes::Buf`]); `advance` it by what was written, then call
    /// [`Session::handle_writable`].
    pub fn transmit(&mut self) -> &mut Outbox {
        self.conn.transmit()
    }

    /// When [`Session::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// Whether to read from the socket now.
    pub fn wants_read(&self) -> bool {
        self.conn.wants_read()
    }

    /// Whether to shut down the socket's sending side now (everything is sent).
    pub fn should_shutdown_write(&self) -> bool {
        self.conn.should_shutdown_write()
    }

    /// Whether the connection is over: drop the socket.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Ready when a queued message or an authorizer's late answer awaits
    /// [`Session::handle_wake`]; otherwise `cx`'s waker is woken when one does.
    pub fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut ready = false;
        if let Some(p) = &self.pending {
            ready |= p.poll_ready(cx).is_ready();
        }
        if let Some(l) = &self.listener {
            if self.conn.wants_messages() {
                ready |= l.poll_ready(cx).is_ready();
            }
        }
        if let Some(p) = &self.awaiting {
            ready |= p.poll_ready(cx).is_ready();
        }
        for (p, _) in &self.routes {
            ready |= p.poll_ready(cx).is_ready();
        }
        if let Some((p, ..)) = &self.preparing {
            ready |= p.poll_ready(cx).is_ready();
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Reads once with `read` into a stack buffer and feeds the outcome in: the bytes, the end of
    /// the stream (`Ok(0)` or an error), or nothing (`WouldBlock`). For adapters: `read` is the
    /// socket's (non-blocking or blocking) read; the buffer is never held between reads, so an
    /// idle connection costs no read buffer.
    pub fn read_from(&mut self, now: Instant, read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>) {
        let mut buf = [0u8; READ_CHUNK];
        match read(&mut buf) {
            Ok(0) => self.handle_eof(now),
            Ok(n) => self.handle_input(now, &buf[..n.min(READ_CHUNK)]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.handle_eof(now),
        }
    }

    /// Writes [`Session::transmit`] with `write` (the socket's vectored write) until everything
    /// is written or it would block, telling the session after each write. `Err` means the
    /// connection is broken: drop it.
    pub fn write_to(
        &mut self,
        now: Instant,
        mut write: impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
    ) -> std::io::Result<()> {
        while self.transmit().has_remaining() {
            let written = {
                let out = self.transmit();
                let mut iov = [IoSlice::new(&[]); 64];
                let n = out.chunks_vectored(&mut iov);
                write(&iov[..n])
            };
            match written {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    let k = k.min(self.transmit().remaining());
                    self.transmit().advance(k);
                    // Room again: the session may queue more (pipelined responses, messages).
                    self.handle_writable(now);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Answers the connection's events from the broker until it needs nothing more.
    fn drive(&mut self, now: Instant) {
        loop {
            if let Some(decision) = self.pending.as_ref().and_then(PendingDecision::try_take) {
                self.spare = self.pending.take();
                self.conn.handle_decision(now, decision);
            }
            self.poll_routes(now);
            self.poll_prepared(now);
            self.poll_reply(now);
            self.take_messages(now);
            let Some(event) = self.conn.poll_event() else {
                return;
            };
            self.answer(now, event);
        }
    }

    /// The router's answers, once all are in.
    fn poll_routes(&mut self, now: Instant) {
        if self.routes.is_empty() {
            return;
        }
        for (p, answer) in &mut self.routes {
            if answer.is_none() {
                *answer = p.try_take();
            }
        }
        if self.routes.iter().any(|(_, a)| a.is_none()) {
            return;
        }
        let mut routes = std::mem::take(&mut self.routes);
        let results: Vec<_> = routes.iter_mut().filter_map(|(_, a)| a.take()).collect();
        for r in &results {
            if r.is_err() {
                self.broker.stats.rejected();
            }
        }
        if self.routes_many {
            self.conn.handle_delivered_many(now, results);
        } else {
            self.spare_route = routes.pop().map(|(p, _)| p);
            let result = results.into_iter().next().unwrap_or(Err(HttpError::RouteUnavailable));
            if result.is_err() {
                self.end_wait();
            }
            self.conn.handle_delivered(now, result);
        }
    }

    /// The router's answer for a listener's mailbox id: register it.
    fn poll_prepared(&mut self, now: Instant) {
        let Some((p, ..)) = &mut self.preparing else {
            return;
        };
        let Some(prepared) = p.try_take() else {
            return;
        };
        let Some((_, id, envelope, since)) = self.preparing.take() else {
            return;
        };
        if !self.conn.awaiting_listen() {
            // Refused or timed out meanwhile: registering now would replace a listener for a
            // connection that is going away.
            return;
        }
        let broker = self.broker.clone();
        let result = prepared.and_then(|sync| {
            broker
                .registry
                .listen_synced(id, envelope, since, broker.wall_ms(now), sync)
        });
        self.listened(now, result);
    }

    fn listened(&mut self, now: Instant, result: Result<(ListenerHandle, Option<u64>), HttpError>) {
        let role = self.broker.config.websocket_role;
        let result = result.map(|(handle, last_seq)| {
            self.listener = Some(handle);
            Listening { role, last_seq }
        });
        self.conn.handle_listening(now, result);
    }

    /// Hands one message to the router.
    fn route(&mut self, request: RouteRequest, spare: Option<PendingRoute>) {
        let (tx, rx) = route_channel(spare);
        self.broker.router.route(request, tx);
        self.routes.push((rx, None));
    }

    /// The answer to this connection's `POST …?reply=`, or the end of its wait.
    fn poll_reply(&mut self, now: Instant) {
        let Some(p) = &self.awaiting else {
            return;
        };
        if !self.routes.is_empty() {
            // Still being routed: the connection waits for that answer first.
            return;
        }
        if !self.conn.awaiting_reply() {
            // Answered 504 (or the client left) before the listener replied.
            self.broker.stats.reply_timed_out();
            self.end_wait();
            return;
        }
        if let Some(outcome) = p.try_take() {
            match &outcome {
                ReplyOutcome::Replied(_) => self.broker.stats.replied(),
                ReplyOutcome::Gone => self.broker.stats.reply_failed(),
            }
            self.end_wait();
            self.conn.handle_reply(now, outcome);
        }
    }

    fn end_wait(&mut self) {
        if self.awaiting.take().is_some() {
            self.broker.pending_replies.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Moves what the listener's queue holds into the connection, as far as it has room.
    fn take_messages(&mut self, now: Instant) {
        let stats = &self.broker.stats;
        let Some(listener) = &self.listener else {
            return;
        };
        while self.conn.wants_messages() {
            match listener.pop() {
                Pop::Item(Item::Request {
                    seq,
                    id,
                    timeout_ms,
                    payload,
                    reply,
                }) => {
                    let len = payload.len();
                    if self.conn.handle_request(seq, id, timeout_ms, payload) {
                        stats.delivered(len);
                        if self.replies.len() >= 64 && self.replies.len().is_power_of_two() {
                            // Forget requests nobody waits for any more (timed out), so the
                            // table stays within twice the live ones.
                            self.replies.retain(|_, r| r.is_waiting());
                        }
                        self.replies.insert(seq, reply);
                    }
                }
                Pop::Item(item) => {
                    let len = match &item {
                        Item::Message { payload, .. } => Some(payload.len()),
                        Item::Frames(f) => Some(f.payload_len),
                        _ => None,
                    };
                    if self.conn.handle_item(item) {
                        if let Some(len) = len {
                            stats.delivered(len);
                        }
                    }
                }
                Pop::Empty => break,
                Pop::Replaced => {
                    self.conn.handle_replaced(now);
                    break;
                }
                Pop::Overflowed => {
                    self.conn.handle_overflow(now);
                    break;
                }
                Pop::Lost => {
                    self.conn.handle_lost(now);
                    break;
                }
                Pop::Gap { from, to } => self.conn.handle_gap(now, from, to),
            }
        }
        if !self.conn.is_listening() {
            // Closing: stop taking messages for this id at once; requests not answered yet
            // are told their listener went away.
            self.listener = None;
            self.replies.clear();
        }
    }

    /// Answers one event of the connection.
    fn answer(&mut self, now: Instant, event: Event) {
        let broker_arc = self.broker.clone();
        let broker = &*broker_arc;
        match event {
            Event::Authorize(request) => {
                let (reply, pending) = decision_channel_reusing(self.spare.take());
                match (&broker.config.stats_token, request.action) {
                    (Some(expected), Action::ReadStats) => {
                        let ok = token_matches(request.token.as_deref(), expected);
                        reply.decide(if ok {
                            Decision::Allow { until: None }
                        } else {
                            Decision::Unauthenticated
                        });
                    }
                    _ => {
                        let time = AuthTime {
                            now,
                            since_epoch: broker.wall_clock(now),
                        };
                        broker.authorizer.authorize(&request, time, reply);
                    }
                }
                self.pending = Some(pending);
            }
            Event::Deliver {
                id,
                payload,
                from,
                reply_ms,
            } => {
                broker.stats.received(payload.len());
                // A new message: answers still awaited for an earlier one (abandoned after a
                // timeout) are dropped.
                self.routes.clear();
                self.routes_many = false;
                let reply = match reply_ms {
                    None => None,
                    Some(ms) => {
                        let limit = broker.config.max_pending_replies;
                        if broker.pending_replies.fetch_add(1, Ordering::Relaxed) >= limit {
                            broker.pending_replies.fetch_sub(1, Ordering::Relaxed);
                            broker.stats.rejected();
                            return self.conn.handle_delivered(now, Err(HttpError::TooManyPendingReplies));
                        }
                        let (tx, rx) = reply_channel();
                        self.awaiting = Some(rx);
                        Some((tx, ms))
                    }
                };
                let spare = self.spare_route.take();
                self.route(
                    RouteRequest {
                        id,
                        payload,
                        from,
                        reply,
                        at_ms: broker.wall_ms(now),
                    },
                    spare,
                );
            }
            Event::DeliverMany { ids, payload } => {
                self.routes.clear();
                self.routes_many = true;
                let at_ms = broker.wall_ms(now);
                for id in ids {
                    broker.stats.received(payload.len());
                    let request = RouteRequest {
                        id,
                        payload: payload.clone(),
                        from: None,
                        reply: None,
                        at_ms,
                    };
                    self.route(request, None);
                }
            }
            Event::Listen { id, envelope, since } => {
                let role = broker.config.websocket_role;
                if role != Role::Listener {
                    return self.conn.handle_listening(now, Ok(Listening { role, last_seq: None }));
                }
                if broker.registry.has_mailbox(id) {
                    // The router may read the mailbox elsewhere first; registered once it answers.
                    let (tx, rx) = listen_channel();
                    self.preparing = Some((rx, id, envelope, since));
                    broker.router.prepare_listen(id, since, tx);
                    return;
                }
                let result = broker.registry.listen_since(id, envelope, since, broker.wall_ms(now));
                self.listened(now, result);
            }
            Event::Reply { reply_to, reply } => {
                let handed = self.replies.remove(&reply_to).is_some_and(|tx| tx.send(reply));
                let result = if handed {
                    Ok(())
                } else {
                    Err(HttpError::NoSuchRequest(reply_to))
                };
                self.conn.handle_replied(now, result);
            }
            Event::Watch { ids } => {
                let limit = broker.config.max_watch;
                let result = match &mut self.listener {
                    Some(l) if l.watching() + l.new_watches(&ids) > limit => Err(HttpError::TooManyWatched { limit }),
                    Some(l) => {
                        for id in ids {
                            l.watch(id);
                        }
                        Ok(())
                    }
                    None => Err(HttpError::ShuttingDown),
                };
                self.conn.handle_watched(now, result);
            }
            Event::Unwatch { ids } => {
                if let Some(l) = &mut self.listener {
                    for id in ids {
                        l.unwatch(id);
                    }
                }
                self.conn.handle_watched(now, Ok(()));
            }
            Event::Stats { format } => {
                let snap = broker.snapshot(now);
                let (ct, body) = match format {
                    StatsFormat::Json => ("application/json", snap.to_json()),
                    StatsFormat::Prometheus => ("text/plain; version=0.0.4; charset=utf-8", snap.to_prometheus()),
                };
                self.conn.handle_stats(now, ct, Bytes::from(body));
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end_wait();
        self.broker.stats.connection_closed();
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
