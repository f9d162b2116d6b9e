//! Every refusal the core can make, and the one place that maps each to its HTTP status or WebSocket
//! close code (SPEC §3, §4).

use std::fmt;

use crate::targets::TargetError;
use crate::Id;

/// Why a request was refused. Each variant maps to exactly one HTTP status ([`HttpError::status`])
/// and one short sentence for the `text/plain` body ([`fmt::Display`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The request line or a header line could not be parsed.
    MalformedHead,
    /// An HTTP/1.1 request without a `Host` header, or with several.
    BadHost,
    /// A `Host` header whose value is not `host[:port]`.
    InvalidHost,
    /// The path names an id that is not canonical or out of range.
    InvalidId,
    /// Both `Content-Length` and `Transfer-Encoding` are present (a smuggling shape).
    LengthAndChunked,
    /// `Content-Length` values that differ, or one that is not a plain decimal number.
    BadContentLength,
    /// A `Transfer-Encoding` other than exactly `chunked`, or one on HTTP/1.0.
    BadTransferEncoding,
    /// The chunked body does not follow RFC 9112 §7.1.
    BadChunked,
    /// The WebSocket upgrade headers are present but wrong (which one is said).
    BadHandshake(&'static str),
    /// A body on a request that takes none (a WebSocket upgrade).
    UnexpectedBody,
    /// Credentials are required but missing or invalid.
    Unauthorized,
    /// Credentials are valid but not for this action on this id.
    Forbidden,
    /// The request's `Origin` is neither allowed nor the broker's own (SPEC §6).
    OriginNotAllowed,
    /// Nobody listens on the id a message was sent to.
    NoListener(Id),
    /// No route has this path.
    NotFound,
    /// The route exists but not with this method; `allow` lists the methods it takes.
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: &'static str,
    },
    /// The request head or body did not arrive within the request timeout.
    Timeout,
    /// The body is larger than the maximum message size.
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The request line is longer than 8 KiB.
    UriTooLong,
    /// The head is larger than 16 KiB or has more than 64 header fields.
    HeadTooLarge,
    /// `GET /{id}` without WebSocket upgrade headers.
    UpgradeRequired,
    /// An `Expect` value other than `100-continue`.
    ExpectationFailed,
    /// The listener's outbound queue is full (slow consumer).
    QueueFull(Id),
    /// The broker is at its connection limit.
    TooManyConnections,
    /// The broker is shutting down and takes no new listeners.
    ShuttingDown,
    /// The authorizer could not decide (for example, a remote service it asks failed).
    AuthUnavailable,
    /// The authorizer or router did not answer within the request timeout.
    DecisionTimeout,
    /// An HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
    /// A multi-target path that is not a list of distinct canonical ids, at most 1024.
    BadTargets(TargetError),
    /// Nobody listens on the topic a message was sent to.
    NoTopicListener(Id),
    /// A reply was asked of a listener that did not negotiate `fedbroker.v1`.
    CannotReply(Id),
    /// A request-reply that cannot be: bad `reply` value, a topic, several ids (which is said).
    BadReply(&'static str),
    /// The listener did not reply in time.
    ReplyTimeout {
        /// The id asked.
        id: Id,
        /// The time waited, in milliseconds.
        ms: u64,
    },
    /// The listener went away before replying.
    ListenerGone(Id),
    /// As many requests as `--max-pending-replies` wait for replies already.
    TooManyPendingReplies,
    /// The upgrade offers only subprotocols other than `fedbroker.v1`.
    UnsupportedSubprotocol,
    /// An envelope `reply` to a request that does not await one (any more).
    NoSuchRequest(u64),
    /// The router could not route the message (it dropped its reply unanswered: a remote engine
    /// it needs is down, for instance).
    RouteUnavailable,
    /// An envelope `watch` beyond `--max-watch` ids.
    TooManyWatched {
        /// The limit.
        limit: usize,
    },
    /// `since` is not a whole number.
    BadSince,
    /// `since` was given for an id that keeps no mailbox.
    NoMailbox(Id),
    /// `since` is beyond the last seq given on the id (its mailbox was reset).
    SinceAhead {
        /// The id.
        id: Id,
        /// The last seq given on it.
        last: u64,
    },
    /// A plain listener's `since` asks for messages that were dropped already.
    Gone {
        /// The id.
        id: Id,
        /// First seq lost.
        from: u64,
        /// Last seq lost.
        to: u64,
    },
    /// The id's mailbox is full and refuses more (or the broker's mailbox budget is spent).
    MailboxFull(Id),
    /// The mailbox store cannot take the message now (full queue, or failed).
    StoreUnavailable,
}

impl HttpError {
    /// The HTTP status code of this refusal.
    pub fn status(&self) -> u16 {
        use HttpError::*;
        match self {
            MalformedHead
            | BadHost
            | InvalidHost
            | InvalidId
            | LengthAndChunked
            | BadContentLength
            | BadTransferEncoding
            | BadChunked
            | BadHandshake(_)
            | UnexpectedBody
            | BadTargets(_)
            | BadReply(_)
            | UnsupportedSubprotocol
            | TooManyWatched { .. }
            | BadSince
            | NoMailbox(_) => 400,
            SinceAhead { .. } => 409,
            Gone { .. } => 410,
            MailboxFull(_) => 507,
            Unauthorized => 401,
            Forbidden | OriginNotAllowed => 403,
            NoListener(_) | NotFound | NoTopicListener(_) | NoSuchRequest(_) => 404,
            CannotReply(_) => 409,
            ListenerGone(_) => 502,
            ReplyTimeout { .. } => 504,
            MethodNotAllowed { .. } => 405,
            Timeout => 408,
            PayloadTooLarge { .. } => 413,
            UriTooLong => 414,
            ExpectationFailed => 417,
            UpgradeRequired => 426,
            HeadTooLarge => 431,
            QueueFull(_)
            | TooManyConnections
            | ShuttingDown
            | AuthUnavailable
            | DecisionTimeout
            | TooManyPendingReplies
            | RouteUnavailable
            | StoreUnavailable => 503,
            VersionNotSupported => 505,
        }
    }

    /// Whether the connection must be closed after this response because the rest of the
    /// request stream can no longer be framed (or must not be read).
    pub fn closes_connection(&self) -> bool {
        use HttpError::*;
        matches!(
            self,
            MalformedHead
                | BadHost
                | InvalidHost
                | LengthAndChunked
                | BadContentLength
                | BadTransferEncoding
                | BadChunked
                | Timeout
                | PayloadTooLarge { .. }
                | UriTooLong
                | HeadTooLarge
                | TooManyConnections
                | ShuttingDown
                | DecisionTimeout
                | VersionNotSupported
        )
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HttpError::*;
        match self {
            MalformedHead => f.write_str("malformed request line or header"),
            BadHost => f.write_str("an HTTP/1.1 request needs exactly one Host header"),
            InvalidHost => f.write_str("invalid Host header: expected host[:port]"),
            InvalidId => {
                f.write_str("invalid id: expected a decimal number from 1 to 2147483647 without sign or leading zero")
            }
            LengthAndChunked => f.write_str("request has both Content-Length and Transfer-Encoding"),
            BadContentLength => f.write_str("invalid or conflicting Content-Length"),
            BadTransferEncoding => f.write_str("unsupported Transfer-Encoding: only chunked is accepted, on HTTP/1.1"),
            BadChunked => f.write_str("malformed chunked body"),
            BadHandshake(what) => write!(f, "bad WebSocket handshake: {what}"),
            UnexpectedBody => f.write_str("a WebSocket upgrade request must not have a body"),
            Unauthorized => f.write_str("missing or invalid credentials"),
            Forbidden => f.write_str("credentials do not allow this action on this id"),
            OriginNotAllowed => f.write_str("requests from this origin are not allowed"),
            NoListener(id) => write!(f, "no listener on id {id}"),
            NotFound => f.write_str("no such route"),
            MethodNotAllowed { allow } => write!(f, "method not allowed here; allowed: {allow}"),
            Timeout => f.write_str("request not received in time"),
            PayloadTooLarge { limit } => write!(f, "message larger than the limit of {limit} bytes"),
            UriTooLong => f.write_str("request line longer than 8 KiB"),
            HeadTooLarge => f.write_str("request head larger than 16 KiB or with more than 64 header fields"),
            UpgradeRequired => f.write_str("listening on an id needs a WebSocket upgrade"),
            ExpectationFailed => f.write_str("only Expect: 100-continue is supported"),
            QueueFull(id) => write!(f, "the listener on id {id} is not keeping up; retry later"),
            TooManyConnections => f.write_str("the broker is at its connection limit; retry later"),
            ShuttingDown => f.write_str("the broker is shutting down; retry later"),
            AuthUnavailable => f.write_str("authorization is unavailable; retry later"),
            DecisionTimeout => f.write_str("the request could not be decided in time; retry later"),
            VersionNotSupported => f.write_str("only HTTP/1.0 and HTTP/1.1 are supported"),
            BadTargets(e) => write!(f, "{e}"),
            NoTopicListener(id) => write!(f, "no listener on topic {id}"),
            CannotReply(id) => write!(
                f,
                "the listener on id {id} cannot reply: it did not negotiate fedbroker.v1"
            ),
            BadReply(what) => f.write_str(what),
            ReplyTimeout { id, ms } => write!(f, "no reply from id {id} within {ms} ms"),
            ListenerGone(id) => write!(f, "the listener on id {id} went away before replying"),
            TooManyPendingReplies => f.write_str("too many requests are waiting for replies; retry later"),
            UnsupportedSubprotocol => {
                f.write_str("bad WebSocket handshake: unsupported subprotocol; this broker speaks fedbroker.v1")
            }
            NoSuchRequest(seq) => write!(f, "no request {seq} awaits a reply"),
            RouteUnavailable => f.write_str("the message could not be routed; retry later"),
            TooManyWatched { limit } => write!(f, "at most {limit} ids may be watched per connection"),
            BadSince => f.write_str("since must be a whole number (the last seq received, 0 for everything kept)"),
            NoMailbox(id) => write!(f, "id {id} keeps no mailbox, so since cannot be used (see --mailbox)"),
            SinceAhead { id, last } => write!(
                f,
                "since is ahead of the last message on id {id} ({last}): the mailbox was reset; listen with since=0"
            ),
            Gone { id, from, to } => write!(
                f,
                "messages {from} to {to} on id {id} are no longer kept; listen with since={to} for the rest"
            ),
            MailboxFull(id) => write!(f, "the mailbox of id {id} is full; retry later"),
            StoreUnavailable => f.write_str("the message store cannot take messages now; retry later"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Why a WebSocket connection is closed by the broker. Each variant maps to exactly one close code
/// ([`CloseReason::code`]) and a reason text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed normally; the broker echoes its code.
    Echo(u16),
    /// The broker is shutting down.
    GoingAway,
    /// A frame broke RFC 6455 §5 (unmasked, reserved bits, bad opcode, bad control frame, bad
    /// fragmentation, bad close payload).
    ProtocolError(&'static str),
    /// A raw listener sent a data frame: it may only receive.
    UnacceptableData,
    /// A text message or close reason that is not valid UTF-8.
    InvalidPayload,
    /// A message larger than the maximum message size.
    MessageTooBig,
    /// Another connection became the listener of this id.
    Replaced,
    /// The peer sent nothing, not even a pong, for two ping intervals.
    PingTimeout,
    /// The credentials the listener connected with have expired.
    TokenExpired,
    /// A topic listener (or a presence watcher) whose queue was full: closed rather than holding
    /// the others back or missing a message.
    TooSlow,
    /// An envelope listener sent a text message.
    EnvelopeText,
    /// Messages of this plain listener's mailbox id were dropped before it read them (it is
    /// behind): it may reconnect with `since` to learn which.
    MessagesLost,
}

impl CloseReason {
    /// The close code sent in the Close frame.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::Echo(c) => *c,
            CloseReason::GoingAway => 1001,
            CloseReason::ProtocolError(_) => 1002,
            CloseReason::UnacceptableData => 1003,
            CloseReason::InvalidPayload => 1007,
            CloseReason::MessageTooBig => 1009,
            CloseReason::Replaced => 4000,
            CloseReason::PingTimeout => 1001,
            CloseReason::TokenExpired => 4001,
            CloseReason::TooSlow => 1008,
            CloseReason::EnvelopeText => 1003,
            CloseReason::MessagesLost => 4002,
        }
    }

    /// The reason text sent in the Close frame (at most 123 bytes).
    pub fn reason(&self) -> &'static str {
        match self {
            CloseReason::Echo(_) => "",
            CloseReason::GoingAway => "shutting down",
            CloseReason::ProtocolError(what) => what,
            CloseReason::UnacceptableData => "listeners only receive",
            CloseReason::InvalidPayload => "invalid UTF-8",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::Replaced => "replaced",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::TokenExpired => "token expired",
            CloseReason::TooSlow => "too slow: queue full",
            CloseReason::EnvelopeText => "envelope messages are binary",
            CloseReason::MessagesLost => "messages lost: reconnect with since",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_status_and_a_sentence() {
        let id = Id::new(7).unwrap();
        let all = [
            HttpError::MalformedHead,
            HttpError::BadHost,
            HttpError::InvalidHost,
            HttpError::InvalidId,
            HttpError::LengthAndChunked,
            HttpError::BadContentLength,
            HttpError::BadTransferEncoding,
            HttpError::BadChunked,
            HttpError::BadHandshake("x"),
            HttpError::UnexpectedBody,
            HttpError::Unauthorized,
            HttpError::Forbidden,
            HttpError::OriginNotAllowed,
            HttpError::NoListener(id),
            HttpError::NotFound,
            HttpError::MethodNotAllowed { allow: "GET" },
            HttpError::Timeout,
            HttpError::PayloadTooLarge { limit: 1 },
            HttpError::UriTooLong,
            HttpError::HeadTooLarge,
            HttpError::UpgradeRequired,
            HttpError::ExpectationFailed,
            HttpError::QueueFull(id),
            HttpError::TooManyConnections,
            HttpError::ShuttingDown,
            HttpError::AuthUnavailable,
            HttpError::DecisionTimeout,
            HttpError::VersionNotSupported,
            HttpError::BadTargets(TargetError::TooMany),
            HttpError::NoTopicListener(id),
            HttpError::CannotReply(id),
            HttpError::BadReply("x"),
            HttpError::ReplyTimeout { id, ms: 5 },
            HttpError::ListenerGone(id),
            HttpError::TooManyPendingReplies,
            HttpError::UnsupportedSubprotocol,
            HttpError::NoSuchRequest(3),
            HttpError::RouteUnavailable,
            HttpError::TooManyWatched { limit: 2 },
            HttpError::BadSince,
            HttpError::NoMailbox(id),
            HttpError::SinceAhead { id, last: 3 },
            HttpError::Gone { id, from: 1, to: 2 },
            HttpError::MailboxFull(id),
            HttpError::StoreUnavailable,
        ];
        for e in all {
            assert!((400..600).contains(&e.status()));
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(HttpError::NoListener(id).to_string(), "no listener on id 7");
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        for r in [
            CloseReason::GoingAway,
            CloseReason::ProtocolError("unmasked frame"),
            CloseReason::UnacceptableData,
            CloseReason::InvalidPayload,
            CloseReason::MessageTooBig,
            CloseReason::Replaced,
            CloseReason::TokenExpired,
            CloseReason::MessagesLost,
        ] {
            assert!(r.reason().len() <= 123);
        }
        assert_eq!(CloseReason::Replaced.code(), 4000);
    }
}
