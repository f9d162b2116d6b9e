//! # fedbroker-core
//!
//! The sans-IO protocol core of fedbroker, a federated message broker: a sender `POST`s bytes to
//! `/{id}` on a broker, and the node listening on that id over a WebSocket (`GET /{id}`) receives
//! them as one binary message.
//!
//! Nothing here reads a socket, a clock or the environment, or spawns: the caller passes bytes
//! and `now` in and takes bytes, events and deadlines out, so any runtime (tokio, smol, plain
//! threads, an embedder's own) drives the same logic the same way. `clippy.toml` bans clock reads
//! and other side effects in this crate.
//!
//! ## Layers
//!
//! - [`http`] and [`ws`]: the HTTP/1.1 request reader and response writer, and the WebSocket
//!   handshake, frame codec and session (RFC 9112, RFC 6455).
//! - [`Connection`]: one connection's whole protocol state machine. Decisions that need shared
//!   state leave it as [`Event`]s (authorize, deliver, listen, statistics) and come back as
//!   `handle_*` calls, now or later, so authorization and routing may complete asynchronously
//!   elsewhere (a remote authorizer, a cluster engine).
//! - [`Broker`] and [`Session`]: the state shared by all connections of a broker (the
//!   [`Registry`] of listeners with their bounded queues, the counters, the [`Authorizer`]) and
//!   a [`Connection`] whose events it answers. Adapters use these.
//!
//! ## The drive loop
//!
//! Every adapter runs this loop per connection, in its runtime's idiom:
//!
//! 1. `handle_input(now, bytes)` with what the socket gave (`handle_eof` at its end) — only
//!    while `wants_read()`;
//! 2. write from `transmit()` (a [`bytes::Buf`]: vectored writes, then `advance`), then call
//!    `handle_writable(now)`; when `should_shutdown_write()`, shut the socket's sending side;
//! 3. stop once `is_closed()`;
//! 4. wait for whichever comes first: the socket readable (if `wants_read()`), writable (if
//!    `transmit()` has bytes), `poll_wake(cx)` ready (a message for a listener, an authorizer's
//!    answer; then `handle_wake(now)`), the deadline `poll_timeout()` (then `handle_timeout(now)`),
//!    or shutdown (`handle_shutdown(now)`).
//!
//! Here the loop runs in memory for a listener and a sender, standing in for two sockets:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Buf;
//! use fedbroker_core::{Broker, Config, Session};
//!
//! /// Steps 1–3 for one batch of input; returns what would be written to the socket.
//! fn turn(s: &mut Session, now: Instant, input: &[u8]) -> Vec<u8> {
//!     if s.wants_read() && !input.is_empty() {
//!         s.handle_input(now, input);
//!     }
//!     let mut wire = Vec::new();
//!     while s.transmit().has_remaining() {
//!         // A real adapter writes `chunks_vectored` to the socket and advances by what it took.
//!         let out = s.transmit();
//!         let n = out.chunk().len();
//!         wire.extend_from_slice(out.chunk());
//!         out.advance(n);
//!         s.handle_writable(now);
//!     }
//!     wire
//! }
//!
//! let mut now = Instant::now(); // the adapter reads the clock, never the core
//! let broker = Broker::new(Config::default(), "example", now, Duration::from_secs(1_800_000_000));
//!
//! // A listener upgrades on id 42.
//! let mut listener = broker.accept(now);
//! let out = turn(&mut listener, now, b"GET /42 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
//!     Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
//! assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
//!
//! // A sender posts to it and gets 204.
//! let mut sender = broker.accept(now);
//! let out = turn(&mut sender, now, b"POST /42 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
//! assert!(out.starts_with(b"HTTP/1.1 204 No Content\r\n"));
//!
//! // The listener's poll_wake would now be ready: one binary frame, payload exactly the body.
//! listener.handle_wake(now);
//! assert_eq!(turn(&mut listener, now, b""), b"\x82\x05hello");
//!
//! // Time passes only when the adapter says so: at the deadline, the broker pings.
//! now = listener.poll_timeout().unwrap();
//! listener.handle_timeout(now);
//! assert_eq!(turn(&mut listener, now, b""), b"\x89\x00");
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
mod broker;
mod config;
mod conn;
mod cors;
pub mod envelope;
mod error;
pub mod http;
mod id;
pub mod mailbox;
mod registry;
mod reply;
mod route;
mod router;
mod stats;
mod targets;
mod transmit;
pub mod ws;

pub use auth::{Action, AllowAll, AuthReply, AuthRequest, AuthTime, Authorizer, Decision};
pub use broker::{Broker, Session, READ_CHUNK};
pub use config::Config;
pub use conn::{Connection, Event, Listening, StatsFormat, HIGH_WATER};
pub use cors::{CorsPolicy, OriginCheck};
pub use error::{CloseReason, HttpError};
pub use id::Id;
pub use mailbox::{FullPolicy, MailboxConfig, Persist, Persisted, StoreOp};
pub use registry::{Delivered, DeliveryError, Item, ListenerHandle, MirrorItem, Mirrored, Pop, Registry, SharedFrames};
pub use reply::{reply_channel, PendingReply, ReplyMsg, ReplyOutcome, ReplySender};
pub use route::{classify, Route, ALLOW_ID, ALLOW_INFO, ALLOW_MANY};
pub use router::{
    listen_channel, route_channel, ListenReply, LocalRouter, MailboxSync, PendingListen, PendingRoute, RouteReply,
    RouteRequest, Router, RouterGauges,
};
pub use stats::{Gauges, Snapshot, Stats};
pub use targets::{parse_targets, TargetError, MAX_TARGETS};
pub use transmit::Outbox;

/// The version of this crate, as the broker binaries report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
