//! What the cluster needs of an engine, whichever it is (NATS, Redis): publish to a subject,
//! subscribe to one, a private inbox for answers, and the mailboxes (append, read). The routing
//! (claims, requests and their answers, topics, presence, mailbox windows) is written once over
//! this trait, in `lib.rs`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// One message on the engine: a few headers, the payload, and where to answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Msg {
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
    /// The inbox the receiver answers on ([`Engine::inbox`]).
    pub reply: Option<String>,
}

impl Msg {
    pub fn new(payload: impl Into<Bytes>) -> Msg {
        Msg {
            payload: payload.into(),
            ..Msg::default()
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn number(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.parse().ok())
    }

    pub fn with(mut self, name: &str, value: impl ToString) -> Msg {
        self.headers.push((name.to_owned(), value.to_string()));
        self
    }
}

/// Why the engine did not carry a message.
#[derive(Debug)]
pub(crate) enum EngineError {
    /// Nobody is subscribed to the subject.
    NoResponders,
    /// Larger than the engine takes (its own limit, in bytes).
    TooLarge(usize),
    /// The id's mailbox is full and its policy refuses (`507`).
    Full,
    /// Not connected, timed out, or refused: the message may be retried later.
    Unavailable(String),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::NoResponders => f.write_str("no responders"),
            EngineError::TooLarge(limit) => write!(f, "larger than the engine's limit of {limit} bytes"),
            EngineError::Full => f.write_str("the mailbox is full"),
            EngineError::Unavailable(why) => f.write_str(why),
        }
    }
}

/// The bounds of the mailboxes an engine keeps (the brokers' `--mailbox-*` flags).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MailboxLimits {
    /// Records kept per id; the oldest go first.
    pub max_messages: usize,
    /// Refuse a message rather than drop the oldest (`--mailbox-full refuse`).
    pub refuse: bool,
    /// How long a record is kept, in milliseconds.
    pub ttl_ms: u64,
}

/// What an id's mailbox holds after a seq, as read from the engine.
#[derive(Debug, Default)]
pub(crate) struct MailboxRead {
    /// The numbering the seqs belong to: it changes when the engine starts numbering the id
    /// again (it lost its data); empty when not known yet.
    pub epoch: String,
    /// The last seq given on the id.
    pub last: u64,
    /// Everything up to this seq that is not in `records` is gone (trimmed, expired, or older
    /// than a window keeps).
    pub trimmed_through: u64,
    /// The records after the seq read after, in seq order (`Fedbroker-At`, `Fedbroker-From`;
    /// `Fedbroker-Reply-Ms` marks a request's seq, whose payload is not kept).
    pub records: Vec<(u64, Msg)>,
}

/// The messages of one subscription; dropping it unsubscribes.
pub(crate) type Subscription = Pin<Box<dyn Stream<Item = Msg> + Send>>;

/// Done once the engine has a subscription in place (or gave up waiting for it), so that what
/// is announced about it is not read elsewhere before messages can reach it.
pub(crate) type InPlace = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The answers arriving on one inbox: `Err(NoResponders)` when the engine tells that nobody took
/// the message sent with it. Dropping it frees the inbox.
pub(crate) type Answers = Pin<Box<dyn Stream<Item = Result<Msg, EngineError>> + Send>>;

/// An engine, connected (or connecting again) in the background. Clones share the connection.
pub(crate) trait Engine: Clone + Send + Sync + 'static {
    /// Whether it is connected now: messages for other brokers are refused (`503`) when not,
    /// rather than held until it is.
    fn connected(&self) -> bool;

    /// Publishes `msg` on `subject` (or to an inbox named by a `reply`). `NoResponders` when the
    /// engine knows that nobody took it (Redis counts receivers; NATS tells on the inbox).
    fn publish(&self, subject: String, msg: Msg) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Subscribes to `subject`; kept across reconnections. The second half is done once the
    /// subscription is in place: at once where the engine keeps a connection's order (NATS: a
    /// publication after the subscription on the same connection cannot overtake it), after
    /// the server confirmed it otherwise (Redis: subscriptions and publications go on two
    /// connections).
    fn subscribe(&self, subject: String) -> impl Future<Output = Result<(Subscription, InPlace), EngineError>> + Send;

    /// A private inbox: its name, to put in a message's `reply`, and its answers.
    fn inbox(&self) -> impl Future<Output = Result<(String, Answers), EngineError>> + Send;

    /// Appends `msg` to `id`'s mailbox as its next seq, and publishes it (with that seq in
    /// `Fedbroker-Seq`) on `subject`, in one step: brokers holding a listener on the id take
    /// the records in seq order. With `keep_payload` false (a request's), only the headers are
    /// kept. Returns the seq and how many took the publication.
    fn mailbox_append(
        &self,
        id: fedbroker_core::Id,
        subject: String,
        msg: Msg,
        keep_payload: bool,
        limits: MailboxLimits,
        now_ms: u64,
    ) -> impl Future<Output = Result<(u64, u64), EngineError>> + Send;

    /// The records of `id`'s mailbox after seq `after`: the newest, as many as a window keeps
    /// (`max_messages`, `max_bytes` of payloads plus [`fedbroker_core::mailbox::ENTRY_OVERHEAD`]
    /// each); what is older counts as gone.
    fn mailbox_read(
        &self,
        id: fedbroker_core::Id,
        after: u64,
        max_bytes: usize,
        max_messages: usize,
    ) -> impl Future<Output = Result<MailboxRead, EngineError>> + Send;

    /// Sends `msg` on `subject` and waits for the first answer.
    fn request(
        &self,
        subject: String,
        mut msg: Msg,
        timeout: Duration,
    ) -> impl Future<Output = Result<Msg, EngineError>> + Send {
        let engine = self.clone();
        async move {
            let (name, mut answers) = engine.inbox().await?;
            msg.reply = Some(name);
            engine.publish(subject, msg).await?;
            match tokio::time::timeout(timeout, answers.next()).await {
                Ok(Some(answer)) => answer,
                Ok(None) => Err(EngineError::Unavailable("the connection to the engine was lost".into())),
                Err(_) => Err(EngineError::Unavailable("no answer in time".into())),
            }
        }
    }
}

/// A message as bytes, for an engine that carries bytes only (Redis): `u16 BE length | headers
/// | payload`, the headers as `name: value` lines (the first one `reply`'s, when there is one).
pub(crate) fn encode(msg: &Msg) -> Option<Vec<u8>> {
    let head = encode_head(msg);
    let len = u16::try_from(head.len()).ok()?;
    let mut out = Vec::with_capacity(2 + head.len() + msg.payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&msg.payload);
    Some(out)
}

/// The header lines of [`encode`] (an engine that adds one of its own, as Redis's mailbox
/// script adds the seq, frames them itself).
pub(crate) fn encode_head(msg: &Msg) -> String {
    let mut head = String::new();
    if let Some(reply) = &msg.reply {
        head.push_str("Fedbroker-Reply-To: ");
        head.push_str(reply);
        head.push('\n');
    }
    for (name, value) in &msg.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push('\n');
    }
    head
}

/// The inverse of [`encode`]; `None` for bytes it did not make.
pub(crate) fn decode(bytes: Bytes) -> Option<Msg> {
    let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
    let head = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    let mut msg = Msg::new(bytes.slice(2 + len..));
    for line in head.lines() {
        let (name, value) = line.split_once(": ")?;
        if name == "Fedbroker-Reply-To" {
            msg.reply = Some(value.to_owned());
        } else {
            msg.headers.push((name.to_owned(), value.to_owned()));
        }
    }
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_bytes() {
        let mut msg = Msg::new(&b"\x00\x01payload: not a header\n"[..])
            .with("Fedbroker-Status", 204)
            .with("Content-Type", "text/plain; charset=utf-8");
        msg.reply = Some("fedbroker.inbox.abc#17".into());
        let back = decode(Bytes::from(encode(&msg).expect("small"))).expect("decodes");
        assert_eq!(back.payload, msg.payload);
        assert_eq!(back.reply, msg.reply);
        assert_eq!(back.headers, msg.headers);
        assert_eq!(back.number("fedbroker-status"), Some(204));
        let empty = decode(Bytes::from(encode(&Msg::default()).expect("small"))).expect("decodes");
        assert!(empty.payload.is_empty() && empty.headers.is_empty() && empty.reply.is_none());
    }

    #[test]
    fn foreign_bytes_are_refused() {
        for bad in [&b""[..], b"\x00", b"\x00\x09short", b"\x00\x03abc", b"\x00\x02\xff\xfe"] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_none(), "{bad:?}");
        }
    }
}
