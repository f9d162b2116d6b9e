//! The shared broker state and the [`Session`] that joins a [`Connection`] to it.
//!
//! [`Connection`] is pure protocol and owns nothing shared; [`Session`] answers its events from
//! the [`Broker`] (authorizer, registry, counters) so that every adapter runs the same small loop.
//! Embedders who route or authorize elsewhere (a cluster engine, a remote service) drive a
//! [`Connection`] directly and answer its events themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::io::IoSlice;

use bytes::{Buf, Bytes};

use crate::auth::{
    decision_channel_reusing, token_matches, Action, AllowAll, AuthTime, Authorizer, Decision, PendingDecision,
};
use crate::conn::{Connection, Event, StatsFormat};
use crate::registry::{ListenerHandle, Pop, Registry};
use crate::stats::{Snapshot, Stats};
use crate::transmit::Outbox;
use crate::ws::Role;
use crate::{Config, HttpError};

/// Bytes read per [`Session::read_from`] call.
pub const READ_CHUNK: usize = 16 * 1024;

/// Everything the connections of one broker share. Create one per process with
/// [`Broker::new`], then [`Broker::accept`] a [`Session`] per connection.
pub struct Broker {
    config: Arc<Config>,
    registry: Registry,
    stats: Stats,
    authorizer: Box<dyn Authorizer>,
    started: Instant,
    /// Wall-clock time at `started`, in nanoseconds since the Unix epoch: JWT `exp`/`nbf` are
    /// checked against it plus `now - started`. Adapters may move it ([`Broker::set_wall_clock`])
    /// when the system clock is stepped.
    wall_at_start: AtomicU64,
    runtime: &'static str,
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
        let registry = Registry::new(config.queue_limit);
        Arc::new(Broker {
            config: Arc::new(config),
            registry,
            stats: Stats::default(),
            authorizer: Box::new(authorizer),
            started: now,
            wall_at_start: AtomicU64::new(nanos(since_epoch)),
            runtime,
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

    /// The statistics at `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        self.stats.snapshot(
            self.runtime,
            now.saturating_duration_since(self.started),
            self.registry.listeners(),
        )
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
        let broker = &*self.broker;
        loop {
            if let Some(decision) = self.pending.as_ref().and_then(PendingDecision::try_take) {
                self.spare = self.pending.take();
                self.conn.handle_decision(now, decision);
            }
            if let Some(listener) = &self.listener {
                while self.conn.wants_messages() {
                    match listener.pop() {
                        Pop::Message(m) => {
                            let len = m.len();
                            if self.conn.handle_message(m) {
                                broker.stats.delivered(len);
                            }
                        }
                        Pop::Empty => break,
                        Pop::Replaced => {
                            self.conn.handle_replaced(now);
                            break;
                        }
                    }
                }
                if !self.conn.is_listening() {
                    // Closing: stop taking messages for this id at once.
                    self.listener = None;
                }
            }
            let Some(event) = self.conn.poll_event() else {
                return;
            };
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
                Event::Deliver { id, payload } => {
                    broker.stats.received(payload.len());
                    let result = broker.registry.deliver(id, payload).map_err(|e| {
                        broker.stats.rejected();
                        e.to_http(id)
                    });
                    self.conn.handle_delivered(now, result);
                }
                Event::Listen { id } => {
                    let role = broker.config.websocket_role;
                    if role == Role::Listener {
                        self.listener = Some(broker.registry.listen(id));
                    }
                    self.conn.handle_listening(now, Ok(role));
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
}

impl Drop for Session {
    fn drop(&mut self) {
        self.broker.stats.connection_closed();
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
