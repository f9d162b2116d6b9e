//! The settings the core acts on. Adapters fill it from flags and files; the core reads nothing.

use std::time::Duration;

use crate::auth::IdSet;
use crate::cors::CorsPolicy;
use crate::http::Limits;
use crate::ws::Role;

/// Broker settings (SPEC §8). Start from [`Config::default`] and change what differs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Path prefix of every route, without a trailing slash (`""` for none, `"/mq"`).
    pub base_path: String,
    /// Largest message body, and largest WebSocket message from a client (`413`, `1009`).
    pub max_message_size: usize,
    /// Messages queued per listener before `POST` answers `503`.
    pub queue_limit: usize,
    /// Connections (listeners included) before new ones get `503`.
    pub max_connections: usize,
    /// Interval between pings to a listener; two without any reply drop it.
    pub ping_interval: Duration,
    /// Time for a request's head and body to arrive (`408`), and for an idle keep-alive
    /// connection to send its next request.
    pub request_timeout: Duration,
    /// Time to wait for a peer's WebSocket Close after sending ours.
    pub close_timeout: Duration,
    /// Time to keep reading (and dropping) input after the last response before closing, so the
    /// peer reads that response instead of a reset.
    pub linger: Duration,
    /// Request head limits.
    pub limits: Limits,
    /// Whether connections are TLS (the broker's own origin is then `https://` + `Host`).
    pub secure: bool,
    /// Origins allowed to use the broker from a browser (SPEC §6).
    pub cors: CorsPolicy,
    /// Token required to read the statistics (`--stats-token`); compared in constant time.
    pub stats_token: Option<String>,
    /// What a WebSocket connection is: a listener on its id (the broker), or an echo endpoint
    /// that sends every message back (to test the codec against a conformance suite).
    pub websocket_role: Role,
    /// Ids that are topics: any number of listeners, each message to all (`--topics`).
    pub topics: IdSet,
    /// Requests that may wait for a reply at once, broker-wide (`--max-pending-replies`).
    pub max_pending_replies: usize,
    /// The longest a `POST …?reply=MS` waits; larger values are capped (`--max-reply-timeout`).
    pub max_reply_timeout: Duration,
    /// Ids one envelope listener may follow the presence of (`--max-watch`).
    pub max_watch: usize,
    /// Mailboxes: which ids keep their messages for replay, and within which bounds
    /// (`--mailbox`, `--mailbox-*`); `None`: no id has one.
    pub mailbox: Option<crate::MailboxConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_path: String::new(),
            max_message_size: 1024 * 1024,
            queue_limit: 1024,
            max_connections: 10_000,
            ping_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            linger: Duration::from_secs(2),
            limits: Limits::default(),
            secure: false,
            cors: CorsPolicy::default(),
            stats_token: None,
            websocket_role: Role::Listener,
            topics: IdSet::default(),
            max_pending_replies: 10_000,
            max_reply_timeout: Duration::from_secs(30),
            max_watch: 1024,
            mailbox: None,
        }
    }
}

impl Config {
    /// Normalises a `--base-path` value: `"/"`, `""` → `""`; `"mq/"` → `"/mq"`. `None` when it
    /// holds characters that cannot appear in a path segment as sent (`?`, `#`, whitespace).
    pub fn normalize_base_path(p: &str) -> Option<String> {
        if p.bytes()
            .any(|b| b == b'?' || b == b'#' || b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return None;
        }
        let trimmed = p.trim_matches('/');
        if trimmed.is_empty() {
            Some(String::new())
        } else {
            Some(format!("/{trimmed}"))
        }
    }
}
