//! The NATS engine: subjects and inboxes are NATS's own; "no responders" comes from the server.
//! The mailboxes are a JetStream stream, one subject per id (`fedbroker.mailbox.{id}`): a
//! record's seq is the previous record's plus one, appended only if no other broker appended
//! meanwhile (`Nats-Expected-Last-Subject-Sequence`), so every broker numbers one sequence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamErrorKind, PublishErrorKind as AppendErrorKind};
use async_nats::jetstream::stream::{Config as StreamConfig, DirectGetErrorKind, DiscardPolicy, StorageType};
use async_nats::jetstream::ErrorCode;
use async_nats::{HeaderMap, PublishErrorKind, Request, RequestErrorKind, StatusCode};
use fedbroker_core::Id;
use futures_util::StreamExt;

use crate::engine::{Answers, Engine, EngineError, InPlace, MailboxLimits, MailboxRead, Msg, Subscription};
use crate::{lock, ClusterError};

/// The JetStream stream that keeps the mailboxes.
const STREAM: &str = "FEDBROKER_MAILBOX";

/// How many times an append is tried again when another broker appended to the same id first.
const APPEND_TRIES: usize = 32;

/// Ids whose last record this broker remembers (beyond, it forgets them all and reads again).
const REMEMBERED: usize = 65_536;

/// Locks that put this broker's appends to one id in line.
const APPEND_SHARDS: usize = 64;

/// How long the listener's broker may take to say it took a mailbox record.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);

fn mailbox_subject(id: Id) -> String {
    format!("fedbroker.mailbox.{id}")
}

#[derive(Clone)]
pub(crate) struct Nats {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    /// The mailboxes' stream once found or made, with its epoch (when it was made: a stream
    /// made again numbers from 1) and its records per subject; forgotten when it is gone.
    stream: Arc<Mutex<Option<Found>>>,
    /// Each id's last record, as this broker last saw it: (its seq, its stream sequence).
    last: Arc<Mutex<HashMap<Id, (u64, u64)>>>,
    /// This broker's appends to one id go one at a time (by the id's shard), so that they do
    /// not race each other; only other brokers' appends make one try again.
    appending: Arc<[tokio::sync::Mutex<()>]>,
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

/// A stored record's seq, and its stream sequence.
fn seq_of(m: &async_nats::jetstream::message::StreamMessage) -> Option<u64> {
    m.headers.get("Fedbroker-Seq")?.as_str().parse().ok()
}

/// The mailboxes' stream, its epoch, and the records it keeps per subject.
#[derive(Clone)]
struct Found {
    stream: async_nats::jetstream::stream::Stream,
    epoch: String,
    per_subject: usize,
}

impl Nats {
    /// The mailboxes' stream: found, or made with `limits` (JetStream must be enabled,
    /// `nats-server -js`); `None` when it does not exist and `limits` is not given.
    async fn stream(&self, limits: Option<MailboxLimits>) -> Result<Option<Found>, EngineError> {
        if let Some(found) = lock(&self.stream).clone() {
            return Ok(Some(found));
        }
        let stream = match limits {
            None => match self.jetstream.get_stream(STREAM).await {
                Ok(s) => s,
                Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND) => {
                    return Ok(None)
                }
                Err(e) => return Err(unavailable(format!("JetStream: {e}"))),
            },
            Some(limits) => {
                let config = StreamConfig {
                    name: STREAM.to_owned(),
                    subjects: vec!["fedbroker.mailbox.>".to_owned()],
                    // The newest records of each id; the TTL applies where they are read (a
                    // subject that expired whole would lose its numbering).
                    max_messages_per_subject: i64::try_from(limits.max_messages.max(1)).unwrap_or(i64::MAX),
                    discard: DiscardPolicy::Old,
                    storage: StorageType::File,
                    allow_direct: true,
                    ..StreamConfig::default()
                };
                self.jetstream
                    .get_or_create_stream(config)
                    .await
                    .map_err(|e| unavailable(format!("JetStream (is it enabled? nats-server -js): {e}")))?
            }
        };
        let info = stream.cached_info();
        if !info.config.allow_direct {
            return Err(unavailable(format!(
                "JetStream: the stream {STREAM} was made without allow_direct; the brokers read it with direct gets"
            )));
        }
        let found = Found {
            epoch: info.created.unix_timestamp_nanos().to_string(),
            per_subject: usize::try_from(info.config.max_messages_per_subject)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(usize::MAX),
            stream,
        };
        *lock(&self.stream) = Some(found.clone());
        Ok(Some(found))
    }

    /// The stream is gone (deleted, or the server lost its store), or answers no more: found
    /// (or made) again next time, and every id's last record read again.
    fn forget_stream(&self) {
        *lock(&self.stream) = None;
        lock(&self.last).clear();
    }

    /// A direct get's error: `None` for "no such record"; otherwise the stream is read again
    /// next time.
    fn get_error(&self, e: async_nats::jetstream::stream::DirectGetError) -> Option<EngineError> {
        if matches!(e.kind(), DirectGetErrorKind::NotFound) {
            return None;
        }
        self.forget_stream();
        Some(unavailable(format!("JetStream: {e}")))
    }

    /// `id`'s last record: (its seq, its stream sequence); (0, 0) when it has none.
    async fn last_record(&self, found: &Found, id: Id) -> Result<(u64, u64), EngineError> {
        match found.stream.direct_get_last_for_subject(mailbox_subject(id)).await {
            Ok(m) => Ok((seq_of(&m).unwrap_or(0), m.sequence)),
            Err(e) => match self.get_error(e) {
                None => Ok((0, 0)),
                Some(e) => Err(e),
            },
        }
    }

    /// Under `refuse`: whether `id`'s mailbox has room after `last`, once its records older than
    /// the TTL are deleted (never its last one, which keeps the numbering: the per-subject limit
    /// pushes it out when the next is appended).
    async fn has_room(
        &self,
        found: &Found,
        id: Id,
        (last, last_at): (u64, u64),
        limits: MailboxLimits,
        now_ms: u64,
    ) -> Result<bool, EngineError> {
        for _ in 0..=limits.max_messages {
            let first = match found.stream.direct_get_first_for_subject(mailbox_subject(id)).await {
                Ok(m) => m,
                Err(e) => match self.get_error(e) {
                    None => return Ok(true),
                    Some(e) => return Err(e),
                },
            };
            let count = last.saturating_sub(seq_of(&first).unwrap_or(last)) + 1;
            if count < limits.max_messages as u64 {
                return Ok(true);
            }
            let at: u64 = first
                .headers
                .get("Fedbroker-At")
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(0);
            if at.saturating_add(limits.ttl_ms) > now_ms {
                return Ok(false);
            }
            if first.sequence == last_at {
                return Ok(true);
            }
            found.stream.delete_message(first.sequence).await.map_err(unavailable)?;
        }
        Ok(false)
    }
}

impl Nats {
    /// Starts connecting to `url` (`nats://[USER:PASSWORD@]HOST:PORT`), in the background and
    /// again whenever the connection is lost; `connected` is told each time it is (re)made or
    /// lost.
    pub async fn connect(url: &str, connected: Arc<dyn Fn(bool) + Send + Sync>) -> Result<Nats, ClusterError> {
        // What is known of the mailboxes' stream is found again after every reconnection: the
        // server may have come back without its store (the stream made again, a new epoch).
        let stream: Arc<Mutex<Option<Found>>> = Arc::default();
        let last: Arc<Mutex<HashMap<Id, (u64, u64)>>> = Arc::default();
        let (known_stream, known_last) = (stream.clone(), last.clone());
        let options = async_nats::ConnectOptions::new()
            .name("fedbroker")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Connected) {
                    *lock(&known_stream) = None;
                    lock(&known_last).clear();
                }
                match event {
                    async_nats::Event::Connected => connected(true),
                    async_nats::Event::Disconnected => connected(false),
                    _ => {}
                }
                async move { tracing::info!("cluster engine: {event}") }
            });
        // Credentials go to the client apart from the address, so that no log line (the
        // client's own debug lines print the address it dials) ever shows them.
        let (address, credentials) = crate::split_credentials(url);
        let options = match credentials {
            Some((user, pass)) => options.user_and_password(user, pass),
            None => options,
        };
        let client = options
            .connect(address.as_str())
            .await
            .map_err(|e| ClusterError(format!("{address}: {e}")))?;
        let jetstream = async_nats::jetstream::new(client.clone());
        Ok(Nats {
            client,
            jetstream,
            stream,
            last,
            appending: (0..APPEND_SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
        })
    }
}

fn headers(msg: &Msg) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &msg.headers {
        headers.insert(name.as_str(), value.as_str());
    }
    headers
}

fn from_nats(m: async_nats::Message) -> Msg {
    Msg {
        headers: m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.as_str().to_owned())))
            .collect(),
        payload: m.payload,
        reply: m.reply.map(|r| r.to_string()),
    }
}

impl Engine for Nats {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn publish(&self, subject: String, msg: Msg) -> Result<(), EngineError> {
        let headers = headers(&msg);
        let sent = match msg.reply {
            Some(reply) => {
                self.client
                    .publish_with_reply_and_headers(subject, reply, headers, msg.payload)
                    .await
            }
            None => self.client.publish_with_headers(subject, headers, msg.payload).await,
        };
        sent.map_err(|e| match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => {
                EngineError::TooLarge(self.client.try_server_info().map_or(0, |i| i.max_payload))
            }
            _ => EngineError::Unavailable(e.to_string()),
        })
    }

    async fn mailbox_append(
        &self,
        id: Id,
        subject: String,
        msg: Msg,
        keep_payload: bool,
        limits: MailboxLimits,
        now_ms: u64,
    ) -> Result<(u64, u64), EngineError> {
        if !self.connected() {
            return Err(unavailable("not connected to the engine"));
        }
        let payload = if keep_payload {
            msg.payload.clone()
        } else {
            Default::default()
        };
        // This broker's appends to the id, and their notices, one at a time: in seq order.
        let _turn = self.appending[id.get() as usize % APPEND_SHARDS].lock().await;
        let mut appended = None;
        for _ in 0..APPEND_TRIES {
            let Some(found) = self.stream(Some(limits)).await? else {
                return Err(unavailable("JetStream: no mailbox stream"));
            };
            let known = lock(&self.last).get(&id).copied();
            let (last, at) = match known {
                Some(l) => l,
                None => self.last_record(&found, id).await?,
            };
            if limits.refuse && !self.has_room(&found, id, (last, at), limits, now_ms).await? {
                return Err(EngineError::Full);
            }
            let seq = last + 1;
            let mut h = headers(&msg);
            h.insert("Fedbroker-Seq", seq.to_string().as_str());
            // Appended only if no other broker appended to the id since `at`.
            h.insert("Nats-Expected-Last-Subject-Sequence", at.to_string().as_str());
            let ack = match self
                .jetstream
                .publish_with_headers(mailbox_subject(id), h, payload.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) => {
                    let mut remembered = lock(&self.last);
                    if remembered.len() >= REMEMBERED {
                        remembered.clear();
                    }
                    remembered.insert(id, (seq, ack.sequence));
                    appended = Some((seq, found.epoch));
                    break;
                }
                Err(e) if e.kind() == AppendErrorKind::WrongLastSequence => {
                    lock(&self.last).remove(&id);
                }
                Err(e) if e.kind() == AppendErrorKind::StreamNotFound => self.forget_stream(),
                Err(e) if e.kind() == AppendErrorKind::MaxPayloadExceeded => {
                    return Err(EngineError::TooLarge(
                        self.client.try_server_info().map_or(0, |i| i.max_payload),
                    ))
                }
                Err(e) => {
                    lock(&self.last).remove(&id);
                    return Err(unavailable(format!("JetStream: {e}")));
                }
            }
        }
        let Some((seq, epoch)) = appended else {
            return Err(unavailable("the mailbox is busy: other brokers kept appending first"));
        };
        // Kept: now to the broker holding its listener, if any. A request's answers come on its
        // inbox ("no responders" too); a message's broker answers once it took it.
        let notice = msg.with("Fedbroker-Seq", seq).with("Fedbroker-Epoch", epoch);
        if notice.reply.is_some() {
            return match self.publish(subject, notice).await {
                Ok(()) => Ok((seq, 1)),
                Err(_) => Ok((seq, 0)),
            };
        }
        match self.request(subject, notice, NOTICE_TIMEOUT).await {
            // Taken into a listener's window (its broker answers 204 with the seq).
            Ok(answer) if answer.number("Fedbroker-Status") == Some(204) => Ok((seq, 1)),
            // Kept either way: a listener connecting (or its broker catching up) reads it.
            _ => Ok((seq, 0)),
        }
    }

    async fn mailbox_read(
        &self,
        id: Id,
        after: u64,
        max_bytes: usize,
        max_messages: usize,
    ) -> Result<MailboxRead, EngineError> {
        if !self.connected() {
            return Err(unavailable("not connected to the engine"));
        }
        let Some(found) = self.stream(None).await? else {
            return Ok(MailboxRead::default());
        };
        let subject = mailbox_subject(id);
        let (last, last_at) = self.last_record(&found, id).await?;
        let mut read = MailboxRead {
            epoch: found.epoch.clone(),
            last,
            trimmed_through: last,
            records: Vec::new(),
        };
        if last_at == 0 {
            return Ok(read);
        }
        let first = match found.stream.direct_get_first_for_subject(subject.clone()).await {
            Ok(m) => m,
            Err(e) => match self.get_error(e) {
                None => return Ok(read),
                Some(e) => return Err(e),
            },
        };
        read.trimmed_through = seq_of(&first).unwrap_or(1).saturating_sub(1);
        // From the last record this broker knows of at or before `after`, when it still is in
        // the stream; from the first otherwise.
        let mut from = first.sequence;
        if let Some((seq, at)) = lock(&self.last).get(&id).copied() {
            if seq <= after && at >= first.sequence {
                from = at + 1;
            }
        }
        // The subject holds at most `per_subject` records; every step moves on. Only the newest
        // that a window keeps are held (`max_messages`, `max_bytes`): what is older counts as
        // gone, and is let go as the read goes on, so a read never holds more than that.
        let mut kept = std::collections::VecDeque::new();
        let mut bytes = 0usize;
        for _ in 0..found.per_subject.saturating_add(1).min(1 << 20) {
            if from > last_at {
                break;
            }
            let m = match found
                .stream
                .direct_get_next_for_subject(subject.clone(), Some(from))
                .await
            {
                Ok(m) => m,
                Err(e) => match self.get_error(e) {
                    None => break,
                    Some(e) => return Err(e),
                },
            };
            from = m.sequence + 1;
            let Some(seq) = seq_of(&m) else { continue };
            if seq > after && seq <= last {
                let mut record = Msg::new(m.payload.clone());
                for (name, values) in m.headers.iter() {
                    for v in values {
                        record.headers.push((name.to_string(), v.as_str().to_owned()));
                    }
                }
                bytes = bytes.saturating_add(record.payload.len() + fedbroker_core::mailbox::ENTRY_OVERHEAD);
                kept.push_back((seq, record));
                while bytes > max_bytes || kept.len() > max_messages {
                    let Some((old, r)) = kept.pop_front() else { break };
                    bytes -= r.payload.len() + fedbroker_core::mailbox::ENTRY_OVERHEAD;
                    read.trimmed_through = read.trimmed_through.max(old);
                }
            }
        }
        lock(&self.last).insert(id, (last, last_at));
        read.records = kept.into();
        Ok(read)
    }

    async fn subscribe(&self, subject: String) -> Result<(Subscription, InPlace), EngineError> {
        let sub = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        // In place for anything published after it on this connection.
        Ok((Box::pin(sub.map(from_nats)), Box::pin(std::future::ready(()))))
    }

    async fn inbox(&self) -> Result<(String, Answers), EngineError> {
        let name = self.client.new_inbox();
        let sub = self
            .client
            .subscribe(name.clone())
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let answers = sub.map(|m| match m.status {
            Some(StatusCode::NO_RESPONDERS) => Err(EngineError::NoResponders),
            _ => Ok(from_nats(m)),
        });
        Ok((name, Box::pin(answers)))
    }

    /// The client's own requests: one subscription for all of them, rather than one each.
    async fn request(&self, subject: String, msg: Msg, timeout: Duration) -> Result<Msg, EngineError> {
        let req = Request::new()
            .payload(msg.payload.clone())
            .headers(headers(&msg))
            .timeout(Some(timeout));
        match self.client.send_request(subject, req).await {
            Ok(m) => Ok(from_nats(m)),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => EngineError::NoResponders,
                // nats-server's max_payload (1 MiB by default).
                RequestErrorKind::MaxPayloadExceeded => {
                    EngineError::TooLarge(self.client.try_server_info().map_or(0, |i| i.max_payload))
                }
                _ => EngineError::Unavailable(e.to_string()),
            }),
        }
    }
}
