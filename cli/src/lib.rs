//! The command line and configuration shared by every fedbroker binary (SPEC §8), defined once:
//! flags, the `--config` TOML file, validation with one-line errors and exit code 2, logging to
//! stderr, binding the listeners and printing their `listening on` lines.
//!
//! It also holds what every adapter needs besides the core: the authorization mode and TLS
//! settings loaded from their files, and [`Transport`], which puts TLS (rustls) between a socket
//! and a [`fedbroker_core::Session`] the same way in every runtime.
//!
//! A binary's `main` is one call to [`main_with`], giving the runtime's name and a function that
//! serves the already-bound listeners until shutdown.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use std::sync::Arc;

mod security;
mod store;
mod transport;

pub use fedbroker_core::ws::Role;
use fedbroker_core::{Authorizer, Broker, Config, CorsPolicy};
use serde::Deserialize;
pub use transport::Transport;

/// The flags of SPEC §8. Every value is optional here so that the config file can fill what the
/// command line leaves out; defaults apply last.
#[derive(Parser, Debug, Default)]
#[command(
    version,
    about = "fedbroker: a federated message broker (POST /{id} to send, WebSocket GET /{id} to listen)",
    long_about = "fedbroker: a federated message broker.\n\n\
        A sender POSTs any bytes to /{id} (1 to 2147483647) and gets 204 once they are queued for the \
        live listener on that id; a listener holds a WebSocket on GET /{id} and receives each message \
        as one binary message. GET / (JSON) and GET /metrics (Prometheus) are statistics, GET /healthz \
        answers ok. One `listening on URL` line per address goes to stdout; logs go to stderr. \
        SIGINT/SIGTERM shut down gracefully (listeners closed with 1001). Reference: docs/protocol.md.",
    after_long_help = "EXIT CODES\n    \
        0   shut down on SIGINT/SIGTERM; --help, --version\n    \
        1   runtime error, such as an address already in use\n    \
        2   bad flags or configuration (one line on stderr names the problem)\n\n\
        EXAMPLES\n    \
        fedbroker-tokio                                   # open mode on 127.0.0.1:8080\n    \
        fedbroker-tokio --listen 0.0.0.0:8443 --tls-cert tls.crt --tls-key tls.key \\\n        \
        --auth-tokens tokens.toml\n    \
        fedbroker-tokio --config /etc/fedbroker/fedbroker.toml"
)]
pub struct Flags {
    /// Address to listen on (repeatable); IPv6 as [::1]:8080. Port 0 picks a free port. [default: 127.0.0.1:8080]
    #[arg(
        long,
        value_name = "ADDR",
        long_help = "Address to listen on, IP:PORT; repeatable (one socket each). IPv6 as [::1]:8080, every \
            address as 0.0.0.0:8080 or [::]:8080. Port 0 picks a free port; the `listening on URL` line on \
            stdout tells which. Host names are not accepted. An address that is not loopback needs an \
            authentication mode or --allow-anonymous.\n\
            Default: 127.0.0.1:8080. Config key: listen (a string or an array).\n\
            Example: --listen 127.0.0.1:8080 --listen [::1]:8080"
    )]
    pub listen: Vec<String>,
    /// TOML file with the same settings (keys are the flag names with _ for -); flags win.
    #[arg(
        long,
        value_name = "FILE",
        long_help = "Read the settings from this TOML file; keys are the flag names with _ for - \
            (queue_limit = 4). A flag on the command line wins over the file; --listen and \
            --cors-allow-origin replace the file's whole list. Unknown keys and wrong types stop the broker \
            (exit 2). Paths are relative to the working directory.\n\
            Default: none. Example: --config /etc/fedbroker/fedbroker.toml"
    )]
    pub config: Option<PathBuf>,
    /// Path prefix of every route, e.g. /mq. [default: /]
    #[arg(
        long,
        value_name = "P",
        long_help = "Path prefix of every route, for a broker behind a reverse proxy that forwards a sub-path: \
            with /mq, messages go to POST /mq/42, listeners to GET /mq/42, statistics to GET /mq/, \
            /mq/metrics and /mq/healthz. Any other path answers 404. Must not contain ?, #, whitespace \
            or control characters.\n\
            Default: / (none). Config key: base_path. Example: --base-path /mq"
    )]
    pub base_path: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(
        long,
        value_name = "PEM",
        long_help = "Certificate chain in PEM (the server's certificate first), for TLS (rustls; TLS 1.2 and 1.3) \
            on every listener: URLs become https:// and wss://. Give --tls-key with it. Read at start; a \
            certificate that does not fit the key stops the broker (exit 2).\n\
            Default: none (plain HTTP). Config key: tls_cert. Example: --tls-cert /etc/fedbroker/tls.crt"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(
        long,
        value_name = "PEM",
        long_help = "Private key in PEM (PKCS#8, PKCS#1 or SEC1) for --tls-cert.\n\
            Default: none. Config key: tls_key. Example: --tls-key /etc/fedbroker/tls.key"
    )]
    pub tls_key: Option<PathBuf>,
    /// Allow the open mode (no authentication) on non-loopback addresses.
    #[arg(
        long,
        long_help = "Allow the open mode (no authentication: anyone who can connect may send, listen and read \
            the statistics) on addresses that are not loopback. Without it, a non-loopback --listen \
            (0.0.0.0 and [::] included) in open mode stops the broker at start (exit 2): secure by default. \
            No effect with an authentication mode.\n\
            Default: off. Config key: allow_anonymous = true. Example: --listen 0.0.0.0:8080 --allow-anonymous"
    )]
    pub allow_anonymous: bool,
    /// Static tokens file (TOML).
    #[arg(
        long,
        value_name = "FILE",
        group = "auth",
        long_help = "Tokens-file mode: a TOML file of static tokens, each with the ids it may send to and listen \
            on ([[token]] token = \"s3cr3t\" (or token_sha256 = \"<64 hex>\"), listen = [42], \
            send = [\"1-1000\", 5000], presence = [...]; ids, FROM-TO ranges or \"*\"). Clients send \
            Authorization: Bearer TOKEN, or ?token=TOKEN on a browser's WebSocket. One of the three \
            authentication modes at most.\n\
            Default: none (open mode). Config key: auth_tokens. Example: --auth-tokens /etc/fedbroker/tokens.toml\n\
            Statuses: 401 (missing or unknown token, with WWW-Authenticate: Bearer), 403 (not for this id)."
    )]
    pub auth_tokens: Option<PathBuf>,
    /// JWT HMAC secret file (HS256/384/512).
    #[arg(
        long,
        value_name = "FILE",
        group = "auth",
        long_help = "JWT mode with an HMAC secret (HS256, HS384, HS512): the file's bytes, at least 32 (one \
            trailing newline dropped). Tokens carry the claims listen, send (and presence) in the form of \
            the tokens file; exp and nbf are enforced exactly; alg none is refused. A listener whose token \
            expires is closed with 4001.\n\
            Default: none. Config key: auth_jwt_secret. Example: --auth-jwt-secret /etc/fedbroker/jwt.secret\n\
            Statuses: 401 (missing, bad signature, expired, wrong aud/iss), 403 (claims do not cover the id)."
    )]
    pub auth_jwt_secret: Option<PathBuf>,
    /// JWT public key file, SPKI PEM (RS256/ES256/EdDSA).
    #[arg(
        long,
        value_name = "FILE",
        group = "auth",
        long_help = "JWT mode with a public key in SPKI PEM: RS256, ES256 or EdDSA, the algorithm taken from the \
            key (algorithm confusion refused). Claims as for --auth-jwt-secret.\n\
            Default: none. Config key: auth_jwt_public_key. Example: --auth-jwt-public-key /etc/fedbroker/issuer.pem\n\
            Statuses: 401, 403 as for --auth-jwt-secret."
    )]
    pub auth_jwt_public_key: Option<PathBuf>,
    /// Required JWT audience.
    #[arg(
        long,
        value_name = "A",
        long_help = "JWTs must have aud equal to A (or a list containing it); JWT modes only.\n\
            Default: aud not checked. Config key: auth_jwt_audience. Example: --auth-jwt-audience fedbroker\n\
            Status: 401 when it does not match."
    )]
    pub auth_jwt_audience: Option<String>,
    /// Required JWT issuer.
    #[arg(
        long,
        value_name = "I",
        long_help = "JWTs must have iss equal to I; JWT modes only.\n\
            Default: iss not checked. Config key: auth_jwt_issuer. Example: --auth-jwt-issuer https://auth.example\n\
            Status: 401 when it does not match."
    )]
    pub auth_jwt_issuer: Option<String>,
    /// Leeway for JWT exp/nbf, in seconds. [default: 0]
    #[arg(
        long,
        value_name = "SECS",
        long_help = "Seconds of tolerance on exp and nbf, for clocks that drift; JWT modes only.\n\
            Default: 0 (exact). Config key: auth_jwt_leeway. Example: --auth-jwt-leeway 30"
    )]
    pub auth_jwt_leeway: Option<u64>,
    /// Origin allowed to use the broker from a browser (repeatable, or *).
    #[arg(
        long,
        value_name = "O",
        long_help = "An origin allowed to use the broker from a browser page, scheme://host[:port], or * for \
            every origin; repeatable. Requests whose Origin is neither listed nor the broker's own get 403 \
            without CORS headers (the WebSocket upgrade included: no cross-site WebSocket hijacking); \
            requests without Origin (non-browser clients) are unaffected. Behind a reverse proxy, list the \
            public origin.\n\
            Default: none (only the broker's own origin). Config key: cors_allow_origin. \
            Example: --cors-allow-origin https://app.example\n\
            Statuses: 204 for an allowed preflight OPTIONS, 403 for an origin not allowed."
    )]
    pub cors_allow_origin: Vec<String>,
    /// Token required to read / and /metrics.
    #[arg(
        long,
        value_name = "T",
        long_help = "Token required (Authorization: Bearer T, or ?token=T) to read GET / and GET /metrics; \
            /healthz stays open for load balancers. Must not be empty.\n\
            Default: none (statistics open). Config key: stats_token. Example: --stats-token \"$(openssl rand -hex 32)\"\n\
            Status: 401 without it."
    )]
    pub stats_token: Option<String>,
    /// Largest message in bytes. [default: 1048576]
    #[arg(
        long,
        value_name = "BYTES",
        long_help = "Largest POST body and largest WebSocket message from a client, in bytes; 0 to 1073741824. \
            A message is held in memory whole, so memory per listener is about --queue-limit times this.\n\
            Default: 1048576 (1 MiB). Config key: max_message_size. Example: --max-message-size 65536\n\
            Statuses: 413 for a larger POST (answered without reading it), close 1009 for a larger message."
    )]
    pub max_message_size: Option<u64>,
    /// Messages queued per listener before POST answers 503. [default: 1024]
    #[arg(
        long,
        value_name = "N",
        long_help = "Messages queued per listener (a slow consumer) before a POST to it answers 503 with \
            Retry-After: 1; at least 1. Topic listeners whose queue is full are closed with 1008 instead.\n\
            Default: 1024. Config key: queue_limit. Example: --queue-limit 64\n\
            Status: 503."
    )]
    pub queue_limit: Option<u64>,
    /// Open connections (listeners included) before new ones get 503. [default: 10000]
    #[arg(
        long,
        value_name = "N",
        long_help = "Open connections, WebSocket listeners included, before a new one is answered 503 \
            (Retry-After: 1) and closed; at least 1. The open-files limit is raised to match where it can.\n\
            Default: 10000. Config key: max_connections. Example: --max-connections 50000\n\
            Status: 503."
    )]
    pub max_connections: Option<u64>,
    /// Seconds between pings to listeners; two silent intervals drop one. [default: 30]
    #[arg(
        long,
        value_name = "SECS",
        long_help = "Seconds between the broker's pings to each listener; a listener from which nothing (not \
            even a pong) arrived for two intervals is closed with 1001 ping timeout. 1 to 86400. Keep it \
            below the idle timeout of proxies in front (nginx proxy_read_timeout, 60 s by default).\n\
            Default: 30. Config key: ping_interval. Example: --ping-interval 20"
    )]
    pub ping_interval: Option<u64>,
    /// Seconds for a request to arrive (408), and for an idle keep-alive connection. [default: 10]
    #[arg(
        long,
        value_name = "SECS",
        long_help = "Seconds for a request's head and body to arrive, and for an idle keep-alive connection to \
            send its next request; 1 to 86400.\n\
            Default: 10. Config key: request_timeout. Example: --request-timeout 30\n\
            Status: 408 when a request is not received in time."
    )]
    pub request_timeout: Option<u64>,
    /// Log level: error, warn, info, debug or trace. [default: info]
    #[arg(
        long,
        value_name = "LEVEL",
        long_help = "How much to log to stderr: error, warn, info, debug (refused requests and WebSocket failures \
            with their status) or trace. Tokens, request lines, headers and client addresses are never logged.\n\
            Default: info. Config key: log_level. Example: --log-level debug"
    )]
    pub log_level: Option<String>,
    /// Ids that are topics: any number of listeners, every message to all (repeatable; an id,
    /// a FROM-TO range or *).
    #[arg(
        long,
        value_name = "RANGE",
        long_help = "Ids that are topics (an id, a FROM-TO range or *; repeatable): any number of listeners, no \
            replacement, and each POST is queued to all of them (204 with Fedbroker-Recipients: N). See \
            docs/patterns.md.\n\
            Default: none. Config key: topics. Example: --topics 1000000-1999999\n\
            Statuses: 404 when a topic has no listener; a listener whose queue is full is closed with 1008."
    )]
    pub topics: Vec<String>,
    /// Requests (POST ...?reply=MS) that may wait for a reply at once; more get 503. [default: 10000]
    #[arg(
        long,
        value_name = "N",
        long_help = "Requests (POST /ID?reply=MS) that may wait for an envelope listener's reply at once, \
            broker-wide; at least 1.\n\
            Default: 10000. Config key: max_pending_replies. Example: --max-pending-replies 1000\n\
            Status: 503 with Retry-After: 1 beyond it."
    )]
    pub max_pending_replies: Option<u64>,
    /// Longest wait of a request for its reply, in milliseconds; larger ?reply= values are capped. [default: 30000]
    #[arg(
        long,
        value_name = "MS",
        long_help = "The longest a request waits for its reply, in milliseconds (1 to 3600000); larger ?reply= \
            values are cut to it.\n\
            Default: 30000. Config key: max_reply_timeout. Example: --max-reply-timeout 5000\n\
            Status: 504 when no reply came in time."
    )]
    pub max_reply_timeout: Option<u64>,
    /// Ids one envelope listener may watch the presence of. [default: 1024]
    #[arg(
        long,
        value_name = "N",
        long_help = "Ids one envelope listener may watch the presence of (docs/patterns.md); at least 1.\n\
            Default: 1024. Config key: max_watch. Example: --max-watch 100\n\
            Beyond it the watch is answered with error 400."
    )]
    pub max_watch: Option<u64>,
    /// Ids that keep a mailbox (repeatable; an id, a FROM-TO range or *): their messages are
    /// numbered, kept for replay with GET /{id}?since=SEQ, and a POST with nobody listening
    /// answers 202 instead of 404.
    #[arg(
        long,
        value_name = "RANGE",
        long_help = "Ids that keep a mailbox (docs/mailbox.md): an id, a FROM-TO range or *; repeatable. Their \
            messages get a seq (1, 2, ... per id, never reused), are kept within the --mailbox-* bounds, \
            and are replayed to a listener that asks with GET /ID?since=SEQ. A POST with nobody \
            listening answers 202 (kept) instead of 404. May not overlap --topics.\n\
            Default: none. Config key: mailbox. Example: --mailbox 1-100000\n\
            Statuses: 202 kept, 507 mailbox full (--mailbox-full refuse), 410/409 for a since that \
            cannot be served."
    )]
    pub mailbox: Vec<String>,
    /// Messages kept per mailbox. [default: 1000]
    #[arg(
        long,
        value_name = "N",
        long_help = "Messages kept per mailbox id; at least 1. A full mailbox acts as --mailbox-full says.\n\
            Default: 1000. Config key: mailbox_messages. Example: --mailbox-messages 10000"
    )]
    pub mailbox_messages: Option<u64>,
    /// Bytes kept per mailbox (payloads plus 64 per message). [default: 16777216]
    #[arg(
        long,
        value_name = "BYTES",
        long_help = "Bytes kept per mailbox id, counting each payload plus 64 per message; at least \
            --max-message-size + 64, so that every message fits.\n\
            Default: 16777216 (16 MiB). Config key: mailbox_bytes. Example: --mailbox-bytes 1048576"
    )]
    pub mailbox_bytes: Option<u64>,
    /// Bytes kept over all mailboxes of the broker; beyond, POST answers 507. [default: 268435456]
    #[arg(
        long,
        value_name = "BYTES",
        long_help = "Bytes kept over all mailboxes of the broker (payloads plus 64 per message): the bound \
            on their memory; at least --mailbox-bytes.\n\
            Default: 268435456 (256 MiB). Config key: mailbox_total_bytes. Example: \
            --mailbox-total-bytes 1073741824\n\
            Status: 507 with Retry-After: 1 for a message that does not fit."
    )]
    pub mailbox_total_bytes: Option<u64>,
    /// How long a message is kept: a number with s, m, h or d (90s, 15m, 12h, 7d). [default: 1d]
    #[arg(
        long,
        value_name = "DURATION",
        long_help = "How long a mailbox message is kept: a whole number with s, m, h or d, or plain seconds; \
            1 s to 3650 d. Older messages are dropped, and a replay from before them is told of the gap.\n\
            Default: 1d. Config key: mailbox_ttl. Example: --mailbox-ttl 12h"
    )]
    pub mailbox_ttl: Option<String>,
    /// A full mailbox drops its oldest message (drop-oldest) or refuses the new one (refuse). [default: drop-oldest]
    #[arg(
        long,
        value_name = "POLICY",
        long_help = "What a full mailbox does with a new message. drop-oldest: drop the oldest kept message \
            (counted in mailbox_dropped; a listener that had not read it is told of the gap). refuse: \
            drop only messages a listener already received, and otherwise refuse the new one.\n\
            Default: drop-oldest. Config key: mailbox_full. Example: --mailbox-full refuse\n\
            Status: 507 with Retry-After: 1 when refused."
    )]
    pub mailbox_full: Option<String>,
    /// Directory of the durable mailbox store: kept messages survive a restart or a crash.
    #[arg(
        long,
        value_name = "PATH",
        long_help = "Keep mailboxes durable in this directory (created if missing; one broker per directory): \
            messages survive a restart or a crash, and seqs go on after it. Needs --mailbox. See \
            docs/mailbox.md and docs/store.md.\n\
            Default: none (mailboxes in memory only). Config key: store. Example: --store \
            /var/lib/fedbroker\n\
            Status: 503 with Retry-After: 1 while the store cannot take a message."
    )]
    pub store: Option<PathBuf>,
    /// When 204/202 is answered for a stored message: after an fsync (always) or after the write (batch). [default: always]
    #[arg(
        long,
        value_name = "POLICY",
        long_help = "When a 204/202 is answered for a message to a stored mailbox. always: after it is written \
            and fsynced (messages arriving together share one fsync); survives a crash and a power loss. \
            batch: after it is written, with an fsync within about 100 ms; survives a crash of the \
            broker, may lose the last ~100 ms on a power loss.\n\
            Default: always. Config key: store_sync. Example: --store-sync batch"
    )]
    pub store_sync: Option<String>,
    /// Share the id space with other brokers through this engine (nats:// or redis://HOST:PORT).
    #[arg(
        long,
        value_name = "URL",
        long_help = "Share one id space with the other brokers connected to the same engine (docs/cluster.md): \
            a POST to any of them reaches the listener on whichever broker it is connected to, and a \
            listener taking an id on one broker replaces the one on another (4000). \
            nats://[USER:PASSWORD@]HOST:PORT (NATS) or redis://[USER:PASSWORD@]HOST:PORT[/DB] (Redis 7 \
            or later, sharded pub/sub); the engine is reconnected to by itself when it goes away.\n\
            Default: none (this broker alone). Config key: cluster. Example: --cluster \
            nats://127.0.0.1:4222 (or: --cluster redis://127.0.0.1:6379)\n\
            Statuses: 503 with Retry-After: 1 for ids listened on no broker reachable now; 404 when \
            no broker has a listener."
    )]
    pub cluster: Option<String>,
}

/// The `--config` file: the same settings, keys spelled with `_`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<OneOrMany>,
    base_path: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    allow_anonymous: Option<bool>,
    auth_tokens: Option<PathBuf>,
    auth_jwt_secret: Option<PathBuf>,
    auth_jwt_public_key: Option<PathBuf>,
    auth_jwt_audience: Option<String>,
    auth_jwt_issuer: Option<String>,
    auth_jwt_leeway: Option<u64>,
    cors_allow_origin: Option<OneOrMany>,
    stats_token: Option<String>,
    max_message_size: Option<u64>,
    queue_limit: Option<u64>,
    max_connections: Option<u64>,
    ping_interval: Option<u64>,
    request_timeout: Option<u64>,
    log_level: Option<String>,
    topics: Option<OneOrMany>,
    max_pending_replies: Option<u64>,
    max_reply_timeout: Option<u64>,
    max_watch: Option<u64>,
    mailbox: Option<OneOrMany>,
    mailbox_messages: Option<u64>,
    mailbox_bytes: Option<u64>,
    mailbox_total_bytes: Option<u64>,
    mailbox_ttl: Option<String>,
    mailbox_full: Option<String>,
    store: Option<PathBuf>,
    store_sync: Option<String>,
    cluster: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Everything a binary needs to run, checked.
pub struct Settings {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// The core's settings.
    pub core: Config,
    /// Log filter level.
    pub log_level: tracing::Level,
    /// Who decides requests (open, tokens file or JWT).
    pub authorizer: Box<dyn Authorizer>,
    /// TLS settings, when every listener speaks TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The durable mailbox store, when `--store` is given.
    pub store: Option<StoreSettings>,
    /// The engine shared with other brokers (`--cluster`), when given.
    pub cluster: Option<String>,
}

/// Where and how mailboxes are stored (`--store`, `--store-sync`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// The store's directory.
    pub path: PathBuf,
    /// Whether an answer waits for the fsync.
    pub sync_always: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("core", &self.core)
            .field("log_level", &self.log_level)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Largest `--max-message-size` accepted (a message is held in memory whole).
const MAX_MESSAGE_LIMIT: u64 = 1 << 30;

/// A problem with the flags or the configuration: one line, exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

impl Settings {
    /// Resolves parsed flags: reads the config file (if any), merges (flags win), applies
    /// defaults and checks every value.
    pub fn resolve(flags: Flags) -> Result<Settings, ConfigError> {
        let mut file = match &flags.config {
            Some(path) => read_config(path)?,
            None => FileConfig::default(),
        };
        let flags_mailbox = MailboxFlags {
            mailbox: flags.mailbox.clone(),
            messages: flags.mailbox_messages,
            bytes: flags.mailbox_bytes,
            total_bytes: flags.mailbox_total_bytes,
            ttl: flags.mailbox_ttl.clone(),
            full: flags.mailbox_full.clone(),
            store: flags.store.clone(),
            store_sync: flags.store_sync.clone(),
        };
        let file_mailbox = MailboxFlags {
            mailbox: file.mailbox.take().map(OneOrMany::into_vec).unwrap_or_default(),
            messages: file.mailbox_messages,
            bytes: file.mailbox_bytes,
            total_bytes: file.mailbox_total_bytes,
            ttl: file.mailbox_ttl.take(),
            full: file.mailbox_full.take(),
            store: file.store.take(),
            store_sync: file.store_sync.take(),
        };
        let listen_raw = if !flags.listen.is_empty() {
            flags.listen
        } else {
            file.listen
                .map(OneOrMany::into_vec)
                .unwrap_or_else(|| vec!["127.0.0.1:8080".to_owned()])
        };
        if listen_raw.is_empty() {
            return err("--listen: at least one address is needed");
        }
        let mut listen = Vec::new();
        for raw in &listen_raw {
            let addr: SocketAddr = raw.parse().or_else(|_| {
                err(format!(
                    "--listen {raw:?}: expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
                ))
            })?;
            listen.push(addr);
        }

        let security = security::Security::resolve(security::Choices {
            tls_cert: flags.tls_cert.or(file.tls_cert),
            tls_key: flags.tls_key.or(file.tls_key),
            auth_tokens: flags.auth_tokens.or(file.auth_tokens),
            auth_jwt_secret: flags.auth_jwt_secret.or(file.auth_jwt_secret),
            auth_jwt_public_key: flags.auth_jwt_public_key.or(file.auth_jwt_public_key),
            auth_jwt_audience: flags.auth_jwt_audience.or(file.auth_jwt_audience),
            auth_jwt_issuer: flags.auth_jwt_issuer.or(file.auth_jwt_issuer),
            auth_jwt_leeway: flags.auth_jwt_leeway.or(file.auth_jwt_leeway),
        })?;

        let allow_anonymous = flags.allow_anonymous || file.allow_anonymous.unwrap_or(false);
        if security.open {
            if let Some(addr) = listen.iter().find(|a| !a.ip().is_loopback()) {
                if !allow_anonymous {
                    return err(format!(
                        "--listen {addr}: refusing to run without authentication on a non-loopback address \
                         (anyone who can reach it could send and listen); configure --auth-tokens or \
                         --auth-jwt-secret/--auth-jwt-public-key, or pass --allow-anonymous to accept that"
                    ));
                }
            }
        }

        let mut core = Config::default();
        if let Some(p) = flags.base_path.or(file.base_path) {
            core.base_path = Config::normalize_base_path(&p)
                .ok_or_else(|| ConfigError(format!("--base-path {p:?}: must be a path such as /mq")))?;
        }
        let max_message = pick(
            flags.max_message_size,
            file.max_message_size,
            core.max_message_size as u64,
        );
        if max_message > MAX_MESSAGE_LIMIT {
            return err(format!(
                "--max-message-size {max_message}: at most {MAX_MESSAGE_LIMIT} bytes"
            ));
        }
        core.max_message_size = max_message as usize;
        core.queue_limit = positive(
            "--queue-limit",
            pick(flags.queue_limit, file.queue_limit, core.queue_limit as u64),
        )?;
        core.max_connections = positive(
            "--max-connections",
            pick(flags.max_connections, file.max_connections, core.max_connections as u64),
        )?;
        core.ping_interval = seconds("--ping-interval", pick(flags.ping_interval, file.ping_interval, 30))?;
        core.request_timeout = seconds(
            "--request-timeout",
            pick(flags.request_timeout, file.request_timeout, 10),
        )?;
        let topics = if !flags.topics.is_empty() {
            flags.topics
        } else {
            file.topics.map(OneOrMany::into_vec).unwrap_or_default()
        };
        for t in &topics {
            core.topics
                .add_item(t)
                .map_err(|e| ConfigError(format!("--topics {t:?}: {e}")))?;
        }
        core.max_pending_replies = positive(
            "--max-pending-replies",
            pick(
                flags.max_pending_replies,
                file.max_pending_replies,
                core.max_pending_replies as u64,
            ),
        )?;
        let max_reply = pick(flags.max_reply_timeout, file.max_reply_timeout, 30_000);
        if max_reply == 0 || max_reply > 3_600_000 {
            return err(format!(
                "--max-reply-timeout {max_reply}: must be a number of milliseconds from 1 to 3600000"
            ));
        }
        core.max_reply_timeout = Duration::from_millis(max_reply);
        core.max_watch = positive(
            "--max-watch",
            pick(flags.max_watch, file.max_watch, core.max_watch as u64),
        )?;
        // The close handshake and the linger after a last response never outlast a ping interval.
        core.close_timeout = core.close_timeout.min(core.ping_interval);
        core.linger = core.linger.min(core.request_timeout);

        let level = flags.log_level.or(file.log_level).unwrap_or_else(|| "info".to_owned());
        let log_level = level.parse::<tracing::Level>().or_else(|_| {
            err(format!(
                "--log-level {level:?}: expected error, warn, info, debug or trace"
            ))
        })?;

        let origins = if !flags.cors_allow_origin.is_empty() {
            flags.cors_allow_origin
        } else {
            file.cors_allow_origin.map(OneOrMany::into_vec).unwrap_or_default()
        };
        core.cors = CorsPolicy::new(&origins).map_err(|e| ConfigError(format!("--cors-allow-origin {e}")))?;
        if security.open {
            // No credentials stand between a DNS-rebinding page and an open broker.
            core.cors = core.cors.own_origin_loopback_only();
        }
        core.stats_token = flags.stats_token.or(file.stats_token);
        if core.stats_token.as_deref() == Some("") {
            return err("--stats-token: must not be empty");
        }
        core.secure = security.tls.is_some();

        let store = mailbox_settings(&mut core, &flags_mailbox, file_mailbox)?;
        let cluster = flags.cluster.or(file.cluster);
        if let Some(url) = &cluster {
            // The message names the scheme and host, never the credentials.
            if let Err(e) = fedbroker_cluster::check_url(url) {
                return err(format!("--cluster: {e}"));
            }
            if store.is_some() {
                return err(
                    "--store: with --cluster, the mailboxes are kept in the engine, shared by every broker; drop --store (and make the engine durable: docs/cluster.md)"
                        .to_owned(),
                );
            }
        }

        Ok(Settings {
            listen,
            core,
            log_level,
            authorizer: security.authorizer,
            tls: security.tls,
            store,
            cluster,
        })
    }
}

/// The mailbox settings as given on the command line or in the config file.
#[derive(Default)]
struct MailboxFlags {
    mailbox: Vec<String>,
    messages: Option<u64>,
    bytes: Option<u64>,
    total_bytes: Option<u64>,
    ttl: Option<String>,
    full: Option<String>,
    store: Option<PathBuf>,
    store_sync: Option<String>,
}

/// Checks and applies the mailbox settings (flags win over the file).
fn mailbox_settings(
    core: &mut Config,
    flags: &MailboxFlags,
    file: MailboxFlags,
) -> Result<Option<StoreSettings>, ConfigError> {
    use fedbroker_core::{FullPolicy, MailboxConfig};
    let ranges = if !flags.mailbox.is_empty() {
        flags.mailbox.clone()
    } else {
        file.mailbox
    };
    let ttl = flags.ttl.clone().or(file.ttl);
    let full = flags.full.clone().or(file.full);
    let store = flags.store.clone().or(file.store);
    let sync = flags.store_sync.clone().or(file.store_sync);
    let mut cfg = MailboxConfig::default();
    if ranges.is_empty() {
        let given = [
            ("--mailbox-messages", flags.messages.or(file.messages).is_some()),
            ("--mailbox-bytes", flags.bytes.or(file.bytes).is_some()),
            (
                "--mailbox-total-bytes",
                flags.total_bytes.or(file.total_bytes).is_some(),
            ),
            ("--mailbox-ttl", ttl.is_some()),
            ("--mailbox-full", full.is_some()),
            ("--store", store.is_some()),
            ("--store-sync", sync.is_some()),
        ];
        if let Some((name, _)) = given.iter().find(|(_, g)| *g) {
            return err(format!("{name}: no id keeps a mailbox; add --mailbox RANGE"));
        }
        return Ok(None);
    }
    for r in &ranges {
        cfg.ids
            .add_item(r)
            .map_err(|e| ConfigError(format!("--mailbox {r:?}: {e}")))?;
    }
    if let Some(id) = cfg.ids.overlap(&core.topics) {
        return err(format!(
            "--mailbox: id {id} is also a topic (--topics); a mailbox id takes one listener"
        ));
    }
    cfg.max_messages = positive(
        "--mailbox-messages",
        pick(flags.messages, file.messages, cfg.max_messages as u64),
    )?;
    cfg.max_bytes = positive("--mailbox-bytes", pick(flags.bytes, file.bytes, cfg.max_bytes as u64))?;
    let least = core.max_message_size + fedbroker_core::mailbox::ENTRY_OVERHEAD;
    if cfg.max_bytes < least {
        return err(format!(
            "--mailbox-bytes {}: must be at least --max-message-size + 64 ({least}), so that every message fits",
            cfg.max_bytes
        ));
    }
    cfg.max_total_bytes = positive(
        "--mailbox-total-bytes",
        pick(flags.total_bytes, file.total_bytes, cfg.max_total_bytes as u64),
    )?;
    if cfg.max_total_bytes < cfg.max_bytes {
        return err(format!(
            "--mailbox-total-bytes {}: must be at least --mailbox-bytes ({})",
            cfg.max_total_bytes, cfg.max_bytes
        ));
    }
    if let Some(t) = &ttl {
        cfg.ttl = parse_duration(t).ok_or_else(|| {
            ConfigError(format!(
                "--mailbox-ttl {t:?}: expected a number with s, m, h or d, e.g. 90s, 15m, 12h, 7d (at most 3650d)"
            ))
        })?;
    }
    cfg.full = match full.as_deref() {
        None | Some("drop-oldest") => FullPolicy::DropOldest,
        Some("refuse") => FullPolicy::Refuse,
        Some(other) => return err(format!("--mailbox-full {other:?}: expected drop-oldest or refuse")),
    };
    core.mailbox = Some(cfg);
    let sync_always = match sync.as_deref() {
        None | Some("always") => true,
        Some("batch") => false,
        Some(other) => return err(format!("--store-sync {other:?}: expected always or batch")),
    };
    match store {
        Some(path) => Ok(Some(StoreSettings { path, sync_always })),
        None if sync.is_some() => err("--store-sync: needs --store PATH"),
        None => Ok(None),
    }
}

/// `90s`, `15m`, `12h`, `7d`, or plain seconds; from 1 s to 3650 days. (Four suffixes: a
/// duration crate would add little.)
fn parse_duration(t: &str) -> Option<Duration> {
    let t = t.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = n.checked_mul(match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    })?;
    (1..=3650 * 86_400).contains(&secs).then(|| Duration::from_secs(secs))
}

fn pick(flag: Option<u64>, file: Option<u64>, default: u64) -> u64 {
    flag.or(file).unwrap_or(default)
}

fn positive(name: &str, v: u64) -> Result<usize, ConfigError> {
    match usize::try_from(v) {
        Ok(n) if n >= 1 => Ok(n),
        _ => err(format!("{name} {v}: must be a whole number from 1 up")),
    }
}

fn seconds(name: &str, v: u64) -> Result<Duration, ConfigError> {
    if (1..=86_400).contains(&v) {
        Ok(Duration::from_secs(v))
    } else {
        err(format!("{name} {v}: must be whole seconds from 1 to 86400"))
    }
}

fn read_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("--config {}: cannot read: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans several lines (with a source excerpt); keep its first sentence.
        let msg = e.message().lines().next().unwrap_or("invalid TOML").to_owned();
        // Name the key and line the problem is at, when toml gives a position.
        let (key, at) = e
            .span()
            .map(|s| {
                let start = s.start.min(text.len());
                let line_no = text[..start].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("");
                let key = line
                    .split_once('=')
                    .map(|(k, _)| format!("{}: ", k.trim()))
                    .unwrap_or_default();
                (key, format!(" (line {line_no})"))
            })
            .unwrap_or_default();
        ConfigError(format!("--config {}: {key}{msg}{at}", path.display()))
    })
}

/// Parses the command line: `Err` carries the exit code already decided (help, version, error).
pub fn parse_args(args: impl IntoIterator<Item = OsString>, binary: &str) -> Result<Settings, ExitCode> {
    let cmd = <Flags as clap::CommandFactory>::command()
        .name(binary.to_owned())
        .bin_name(binary.to_owned());
    let matches = match cmd.try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return Err(ExitCode::SUCCESS);
            }
            // clap explains over several lines; its first line names the problem.
            let text = e.to_string();
            eprintln!(
                "{binary}: {}",
                text.lines()
                    .next()
                    .unwrap_or("invalid arguments")
                    .trim_start_matches("error: ")
            );
            return Err(ExitCode::from(2));
        }
    };
    let flags = match <Flags as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "{binary}: {}",
                e.to_string().lines().next().unwrap_or("invalid arguments")
            );
            return Err(ExitCode::from(2));
        }
    };
    Settings::resolve(flags).map_err(|e| {
        eprintln!("{binary}: {e}");
        ExitCode::from(2)
    })
}

/// Sends logs to stderr at `level`.
pub fn init_logging(level: tracing::Level) {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        // Colours only for a person at a terminal: never escape codes in files or the journal.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Raises the soft limit on open files to the hard limit: every connection is a file, and the
/// usual soft default (1024) would cap the broker far below `--max-connections`.
fn raise_open_files_limit(max_connections: usize) {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        if lim.rlim_cur < max_connections as libc::rlim_t + 64 {
            tracing::warn!(
                open_files = lim.rlim_cur,
                max_connections,
                "the open-files limit is below --max-connections: raise it (ulimit -n, LimitNOFILE=)"
            );
        }
    }
}

/// Binds every listen address, then prints `listening on http://ADDR` per listener to stdout.
/// Sockets are left blocking: adapters set them as their runtime needs.
pub fn bind_all(addrs: &[SocketAddr], tls: bool) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let l = bind(addr).map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        listeners.push(l);
    }
    let mut out = std::io::stdout().lock();
    for l in &listeners {
        let scheme = if tls { "https" } else { "http" };
        writeln!(out, "listening on {scheme}://{}", l.local_addr()?)?;
    }
    out.flush()?;
    Ok(listeners)
}

/// The system's wall clock, since the Unix epoch (adapters pass it to
/// [`Broker::set_wall_clock`] now and then).
pub fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A session for a connection accepted now, the broker's wall clock refreshed on the way (so JWT
/// `exp`/`nbf` follow a stepped system clock).
pub fn accept(broker: &Arc<Broker>) -> fedbroker_core::Session {
    let now = std::time::Instant::now();
    broker.set_wall_clock(now, wall_clock());
    broker.accept(now)
}

/// What an adapter serves: the bound listeners, the TLS settings (if every listener speaks TLS),
/// and the signal that starts the graceful shutdown.
pub struct Server {
    /// Bound listening sockets (blocking; adapters set them as their runtime needs).
    pub listeners: Vec<TcpListener>,
    /// TLS settings; build each connection's [`Transport`] with them.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// SIGINT/SIGTERM.
    pub signal: ShutdownSignal,
}

/// Binds like `TcpListener::bind`, but with a listen backlog of 1024 instead of std's fixed 128, so
/// bursts of connections wait in the kernel rather than being refused (`net.core.somaxconn` caps it).
fn bind(addr: &SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(*addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&(*addr).into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The router a broker binary runs with: this broker alone, or a cluster.
enum AnyRouter {
    Local(fedbroker_core::LocalRouter),
    Cluster(fedbroker_cluster::ClusterRouter),
}

impl fedbroker_core::Router for AnyRouter {
    fn route(&self, request: fedbroker_core::RouteRequest, reply: fedbroker_core::RouteReply) {
        match self {
            AnyRouter::Local(r) => r.route(request, reply),
            AnyRouter::Cluster(r) => r.route(request, reply),
        }
    }

    fn prepare_listen(&self, id: fedbroker_core::Id, since: Option<u64>, reply: fedbroker_core::ListenReply) {
        match self {
            AnyRouter::Local(r) => r.prepare_listen(id, since, reply),
            AnyRouter::Cluster(r) => r.prepare_listen(id, since, reply),
        }
    }

    fn gauges(&self) -> fedbroker_core::RouterGauges {
        match self {
            AnyRouter::Local(r) => r.gauges(),
            AnyRouter::Cluster(r) => r.gauges(),
        }
    }
}

/// SIGINT and SIGTERM, caught from before the `listening on` lines are printed, so a signal that
/// arrives while the runtime starts still shuts the broker down gracefully.
pub struct ShutdownSignal(signal_hook::iterator::Signals);

impl ShutdownSignal {
    /// Starts catching SIGINT and SIGTERM.
    pub fn register() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map(Self)
    }

    /// Blocks until SIGINT or SIGTERM arrives (or has arrived). Async adapters run it on their
    /// runtime's blocking pool. SIGHUP (a closed terminal, a reload request) is logged and ignored:
    /// there is nothing to reload, and dying of it would drop every listener.
    pub fn wait(mut self) {
        for signal in self.0.forever() {
            if signal == signal_hook::consts::SIGHUP {
                tracing::info!("SIGHUP ignored: fedbroker has nothing to reload; restart it to change settings");
                continue;
            }
            return;
        }
    }
}

/// The whole `main` of a broker binary: parse flags (exit 2 on a bad one), log to stderr, bind,
/// print the `listening on` lines, then `serve` a [`Broker`] until shutdown (exit 0) or a fatal
/// error (exit 1). `role` is [`Role::Listener`] for the broker; [`Role::Echo`] makes every
/// WebSocket an echo endpoint, for the conformance examples.
pub fn main_with(
    runtime: &'static str,
    role: Role,
    serve: impl FnOnce(Arc<Broker>, Server) -> std::io::Result<()>,
) -> ExitCode {
    let binary = format!("fedbroker-{runtime}");
    let settings = match parse_args(std::env::args_os(), &binary) {
        Ok(s) => s,
        Err(code) => return code,
    };
    init_logging(settings.log_level);
    raise_open_files_limit(settings.core.max_connections);
    let signal = match ShutdownSignal::register() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{binary}: cannot catch SIGINT/SIGTERM: {e}");
            return ExitCode::from(1);
        }
    };
    // The store is opened (and loaded) before the listeners are bound: `listening on` means
    // ready, and a store in use by another broker stops this one before it prints anything.
    let (persist, loaded, store) = match &settings.store {
        None => (None, Vec::new(), None),
        Some(s) => match store::Durable::open(&s.path, s.sync_always) {
            Ok((durable, loaded)) => {
                let handle = durable.handle();
                let persist: Arc<dyn fedbroker_core::Persist> = Arc::new(durable);
                (Some(persist), loaded, Some(handle))
            }
            Err(e) => {
                eprintln!("{binary}: --store {}: {e}", s.path.display());
                return ExitCode::from(2);
            }
        },
    };
    let listeners = match bind_all(&settings.listen, settings.tls.is_some()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(runtime, version = fedbroker_core::VERSION, "broker started");
    let mut core = settings.core;
    core.websocket_role = role;
    let now = std::time::Instant::now();
    let since_epoch = wall_clock();
    let mut cluster_error = None;
    let cluster = settings.cluster.clone();
    let make_router = |registry: fedbroker_core::Registry| match &cluster {
        None => AnyRouter::Local(fedbroker_core::LocalRouter::new(registry)),
        Some(url) => match fedbroker_cluster::ClusterRouter::start(url, registry.clone()) {
            Ok(r) => AnyRouter::Cluster(r),
            Err(e) => {
                cluster_error = Some(e);
                AnyRouter::Local(fedbroker_core::LocalRouter::new(registry))
            }
        },
    };
    let broker = Broker::with_store(
        core,
        runtime,
        settings.authorizer,
        make_router,
        persist,
        now,
        since_epoch,
    );
    if let Some(e) = cluster_error {
        eprintln!("{binary}: --cluster: {e}");
        return ExitCode::from(1);
    }
    if store.is_some() {
        store::restore(broker.registry(), loaded, broker.wall_ms(now));
    }
    let served = serve(
        broker,
        Server {
            listeners,
            tls: settings.tls,
            signal,
        },
    );
    if let Some(store) = store {
        // Everything answered is durable already under `always`; under `batch`, this is the
        // fsync that a clean shutdown owes.
        if let Err(e) = store.flush() {
            tracing::error!("the mailbox store could not be flushed at shutdown: {e}");
        }
    }
    match served {
        Ok(()) => {
            tracing::info!("broker stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{binary}: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let flags = Flags::try_parse_from(std::iter::once("fedbroker").chain(args.iter().copied()))
            .map_err(|e| ConfigError(e.to_string()))?;
        Settings::resolve(flags)
    }

    #[test]
    fn defaults() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.listen, vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]);
        assert_eq!(s.core, {
            let mut c = Config::default();
            c.close_timeout = c.close_timeout.min(c.ping_interval);
            // The open mode counts only loopback Host names as the broker's own origin.
            c.cors = c.cors.own_origin_loopback_only();
            c
        });
    }

    #[test]
    fn refusals_name_the_flag() {
        for (args, needle) in [
            (&["--listen", "nope"][..], "--listen \"nope\""),
            (&["--listen", "0.0.0.0:1"], "--allow-anonymous"),
            (&["--queue-limit", "0"], "--queue-limit"),
            (&["--ping-interval", "0"], "--ping-interval"),
            (&["--log-level", "loud"], "--log-level"),
            (&["--base-path", "/a?b"], "--base-path"),
            (&["--stats-token", ""], "--stats-token"),
            (&["--auth-jwt-leeway", "5"], "--auth-jwt-leeway"),
            (&["--cors-allow-origin", "example.com"], "--cors-allow-origin"),
            (
                &["--auth-tokens", "/nonexistent/tokens.toml"],
                "/nonexistent/tokens.toml",
            ),
            (
                &["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"],
                "/nonexistent/c.pem",
            ),
            (&["--max-message-size", "99999999999"], "--max-message-size"),
        ] {
            let e = parse(args).unwrap_err().0;
            assert!(e.contains(needle), "{args:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert!(parse(&["--listen", "0.0.0.0:1", "--allow-anonymous"]).is_ok());
        assert!(parse(&["--listen", "[::1]:0"]).is_ok());
    }

    #[test]
    fn config_file_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("fedbroker-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "listen = [\"127.0.0.1:0\"]\nqueue_limit = 4\nbase_path = \"/mq/\"\nping_interval = 5\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = parse(&["--config", p, "--ping-interval", "7"]).unwrap();
        assert_eq!(s.core.queue_limit, 4);
        assert_eq!(s.core.base_path, "/mq");
        assert_eq!(s.core.ping_interval, Duration::from_secs(7));
        std::fs::write(&path, "queue_limt = 4\n").unwrap();
        let e = parse(&["--config", p]).unwrap_err().0;
        assert!(e.contains("queue_limt") && e.contains(p), "{e}");
        std::fs::write(&path, "queue_limit = \n").unwrap();
        assert!(parse(&["--config", p]).unwrap_err().0.contains(p));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
