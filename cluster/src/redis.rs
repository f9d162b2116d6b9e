//! The Redis engine (Redis ≥ 7): sharded pub/sub. A subject is a shard channel (`SSUBSCRIBE`,
//! `SPUBLISH`), so that under Redis Cluster each id's channel lives on the shard that owns its
//! slot and a message costs only that shard; `SPUBLISH`'s receiver count tells "no responders".
//!
//! Redis carries bytes only: a message is framed by [`crate::engine::encode`]. Inboxes are one
//! shard channel per broker (`fedbroker.inbox.{node}`); an inbox's name is that channel and a
//! number (`fedbroker.inbox.{node}#17`), and answers carry the number back.
//!
//! Two connections: redis-rs's connection manager publishes (it reconnects when a command finds
//! its connection lost), and a subscriber connection of this module's own (see `resp.rs` for
//! why) takes `SSUBSCRIBE`/`SUNSUBSCRIBE` in order and reads the messages. When the subscriber
//! connection is lost, it connects again and subscribes again to every channel it had, by
//! itself; the engine counts as connected while it is up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo};
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OnceCell};

use crate::engine::{
    decode, encode, encode_head, Answers, Engine, EngineError, InPlace, MailboxLimits, MailboxRead, Msg, Subscription,
};
use crate::resp::{self, Frame};
use crate::{lock, ClusterError};

/// Messages waiting for one subscription's reader, at most (as async-nats's default); beyond,
/// they are dropped (their senders get no answer, so `503`, never a false `204`).
const PER_SUBSCRIPTION: usize = 65_536;

/// How long a write to the subscriber connection may take before it is taken as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Subscription changes waiting for the subscriber connection, at most.
const CHANGES: usize = 65_536;

/// The header that carries an inbox's number back to its broker.
const INBOX_NUMBER: &str = "Fedbroker-Inbox";

/// How often the subscriber connection is checked with a `PING`; silent for three of these,
/// it is taken as lost.
const PING: Duration = Duration::from_secs(5);

/// A subscription change for the subscriber connection.
type Change = (String, bool, Option<oneshot::Sender<()>>);

/// How long a new subscription's announcement waits for Redis to confirm it, at most.
const CONFIRM_WAIT: Duration = Duration::from_secs(2);

/// The channels wanted, and whether the subscriber connection takes changes now.
#[derive(Default)]
struct Channels {
    /// Each channel's reader, with the number of the subscription it belongs to.
    map: HashMap<String, (u64, mpsc::Sender<Msg>)>,
    /// While false (not connected), changes are not queued: the next connection subscribes to
    /// the whole map. Read and written under the same lock as `map`, so no change falls between.
    accepting: bool,
}

/// Appends to an id's mailbox and publishes the record, atomically (one script): the seq is
/// the next of the id's counter, the record an entry of the id's stream whose entry id is
/// `SEQ-1` (trimmed to the newest `max` entries, expiring with the TTL when the id is idle),
/// and the publication goes out in seq order with every other one of the id. Under `refuse`, a
/// full stream refuses (`-1`) unless its oldest entries are past the TTL. A counter lost while
/// its stream is not (an operator's `DEL`) starts again after the stream's newest entry; lost
/// with it (a Redis restarted without its data), the numbering starts again under a new epoch,
/// which every record carries (`Fedbroker-Epoch`), so that brokers holding the old numbering
/// notice.
///
/// KEYS: stream, counter, epoch. ARGV: header lines, payload, max, refuse (1/0), now (ms), TTL
/// (ms), channel, keep the payload (1/0), a new epoch.
const APPEND: &str = r"
local stream, counter, epochkey = KEYS[1], KEYS[2], KEYS[3]
local max, now, ttl = tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6])
if ARGV[4] == '1' then
  while redis.call('XLEN', stream) >= max do
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    if tonumber(first[2][2]) + ttl > now then
      return {-1, 0}
    end
    redis.call('XDEL', stream, first[1])
  end
end
local epoch = redis.call('GET', epochkey)
if redis.call('EXISTS', counter) == 0 then
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if top then
    redis.call('SET', counter, string.match(top[1], '^(%d+)'))
  else
    epoch = false
  end
end
if not epoch then
  epoch = ARGV[9]
  redis.call('SET', epochkey, epoch)
end
local seq = string.format('%d', redis.call('INCR', counter))
local head = ARGV[1] .. 'Fedbroker-Seq: ' .. seq .. '\nFedbroker-Epoch: ' .. epoch .. '\n'
local frame = struct.pack('>H', #head) .. head .. ARGV[2]
local kept = frame
if ARGV[8] == '0' then
  kept = struct.pack('>H', #head) .. head
end
redis.call('XADD', stream, 'MAXLEN', max, seq .. '-1', 'a', ARGV[5], 'f', kept)
redis.call('PEXPIRE', stream, ttl)
local receivers = redis.call('SPUBLISH', ARGV[7], frame)
return {seq, receivers}
";

/// A page of an id's mailbox, newest first, with the id's last seq (the counter's, or the
/// newest entry's if the counter was lost), the seq below its oldest entry, and its epoch (empty
/// before its first record), read together.
///
/// KEYS: stream, counter, epoch. ARGV: after, before (`+`: the newest), count.
const PAGE_SCRIPT: &str = r"
local stream, counter, epochkey = KEYS[1], KEYS[2], KEYS[3]
local last = tonumber(redis.call('GET', counter) or '0')
local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
if top then
  last = math.max(last, tonumber(string.match(top[1], '^(%d+)')))
end
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
local trimmed = last
if first then
  trimmed = tonumber(string.match(first[1], '^(%d+)')) - 1
end
local lo = math.max(tonumber(ARGV[1]), trimmed) + 1
local hi = '+'
if ARGV[2] ~= '+' then
  hi = ARGV[2] .. '-1'
end
local entries = redis.call('XREVRANGE', stream, hi, string.format('%d-0', lo), 'COUNT', ARGV[3])
return {string.format('%d', last), string.format('%d', trimmed), entries, redis.call('GET', epochkey) or ''}
";

/// A new epoch for an id whose numbering starts (again): unique across brokers and restarts.
fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Records of a mailbox read per script call.
const PAGE: usize = 64;

/// An id's mailbox stream and seq counter (one hash tag: the same slot, under Redis Cluster).
fn mailbox_keys(id: fedbroker_core::Id) -> (String, String, String) {
    (
        format!("fedbroker.mailbox.{{{id}}}"),
        format!("fedbroker.mailbox.{{{id}}}.seq"),
        format!("fedbroker.mailbox.{{{id}}}.epoch"),
    )
}

fn int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(n) => Some(*n),
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// One stream entry (`[id, [a, AT, f, FRAME]]`) as a seq and its record.
fn entry(v: &redis::Value) -> Option<(u64, Msg)> {
    let redis::Value::Array(parts) = v else { return None };
    let (redis::Value::BulkString(id), redis::Value::Array(fields)) = (parts.first()?, parts.get(1)?) else {
        return None;
    };
    let seq = std::str::from_utf8(id).ok()?.split('-').next()?.parse().ok()?;
    let mut frame = None;
    let mut at = None;
    for pair in fields.chunks(2) {
        match (pair.first()?, pair.get(1)?) {
            (redis::Value::BulkString(k), redis::Value::BulkString(v)) if k == b"f" => frame = Some(v.clone()),
            (redis::Value::BulkString(k), v) if k == b"a" => at = int(v),
            _ => {}
        }
    }
    let mut msg = decode(bytes::Bytes::from(frame?))?;
    if msg.header("Fedbroker-At").is_none() {
        msg = msg.with("Fedbroker-At", at.unwrap_or(0));
    }
    Some((seq, msg))
}

#[derive(Clone)]
pub(crate) struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    /// Made on first use, then kept: it reconnects by itself.
    publisher: OnceCell<ConnectionManager>,
    host: String,
    port: u16,
    credentials: Option<(Option<String>, String)>,
    connected: AtomicBool,
    notify: Arc<dyn Fn(bool) + Send + Sync>,
    /// This broker's inbox channel.
    inbox_channel: String,
    channels: Mutex<Channels>,
    /// Set when an unsubscription could not be queued: the subscriber connection is made
    /// again, with the channels of the map only.
    resync: AtomicBool,
    inboxes: Mutex<HashMap<u64, mpsc::Sender<Result<Msg, EngineError>>>>,
    next_number: AtomicU64,
    /// `SSUBSCRIBE` (true) or `SUNSUBSCRIBE` (false) for the subscriber connection, in order,
    /// with who waits for the server's confirmation.
    changes: mpsc::Sender<Change>,
}

impl Redis {
    /// Checks `url` as [`Redis::connect`] reads it, without connecting; the error never holds the
    /// credentials.
    pub fn check(url: &str) -> Result<(), ClusterError> {
        match url.into_connection_info() {
            Ok(info) if matches!(info.addr(), ConnectionAddr::Tcp(..)) => Ok(()),
            Ok(_) => Err(ClusterError("only redis://HOST:PORT is supported".into())),
            Err(_) => Err(ClusterError(
                "not a Redis address; expected redis://[USER:PASSWORD@]HOST:PORT[/DB]".into(),
            )),
        }
    }

    /// Starts connecting to `url` (`redis://[USER:PASSWORD@]HOST:PORT[/DB]`) in the background;
    /// `notify` is told each time the connection is made or lost.
    pub fn connect(url: &str, node: &str, notify: Arc<dyn Fn(bool) + Send + Sync>) -> Result<Redis, ClusterError> {
        let info = url
            .into_connection_info()
            .map_err(|e| ClusterError(format!("not a Redis address: {e}")))?;
        let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            return Err(ClusterError("only redis://HOST:PORT is supported".into()));
        };
        let settings = info.redis_settings();
        // `redis://:PASSWORD@…` (requirepass) has no user: AUTH with the password alone.
        let user = settings.username().filter(|u| !u.is_empty()).map(str::to_owned);
        let credentials = settings.password().map(|p| (user, p.to_owned()));
        let client = redis::Client::open(info).map_err(|e| ClusterError(format!("not a Redis address: {e}")))?;
        let (changes, changed) = mpsc::channel(CHANGES);
        let redis = Redis {
            inner: Arc::new(Inner {
                client,
                publisher: OnceCell::new(),
                host,
                port,
                credentials,
                connected: AtomicBool::new(false),
                notify,
                inbox_channel: format!("fedbroker.inbox.{node}"),
                channels: Mutex::new(Channels::default()),
                resync: AtomicBool::new(false),
                inboxes: Mutex::new(HashMap::new()),
                next_number: AtomicU64::new(1),
                changes,
            }),
        };
        let subscriber = redis.clone();
        tokio::spawn(async move { subscriber.subscriber(changed).await });
        Ok(redis)
    }

    /// Up to [`PAGE`] records of `id`'s mailbox with seqs in `after+1..=before`, newest first,
    /// with the id's last seq and the seq below its oldest entry.
    async fn mailbox_page(
        &self,
        id: fedbroker_core::Id,
        after: u64,
        before: u64,
    ) -> Result<(u64, u64, Vec<(u64, Msg)>, String), EngineError> {
        if !self.connected() {
            return Err(EngineError::Unavailable("not connected to the engine".into()));
        }
        let (stream, counter, epoch) = mailbox_keys(id);
        let mut manager = self.publisher().await?;
        let before = if before == u64::MAX {
            "+".to_owned()
        } else {
            before.to_string()
        };
        let answer: redis::Value = redis::cmd("EVAL")
            .arg(PAGE_SCRIPT)
            .arg(3)
            .arg(stream)
            .arg(counter)
            .arg(epoch)
            .arg(after)
            .arg(before)
            .arg(PAGE)
            .query_async(&mut manager)
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let bad = || EngineError::Unavailable("unexpected answer from the mailbox script".into());
        let redis::Value::Array(parts) = answer else {
            return Err(bad());
        };
        let (Some(last), Some(trimmed), Some(redis::Value::Array(entries))) =
            (parts.first().and_then(int), parts.get(1).and_then(int), parts.get(2))
        else {
            return Err(bad());
        };
        let records = entries.iter().map(entry).collect::<Option<Vec<_>>>().ok_or_else(bad)?;
        let epoch = match parts.get(3) {
            Some(redis::Value::BulkString(e)) => String::from_utf8_lossy(e).into_owned(),
            _ => String::new(),
        };
        Ok((last.max(0) as u64, trimmed.max(0) as u64, records, epoch))
    }

    async fn publisher(&self) -> Result<ConnectionManager, EngineError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            // Failures come back at once: the sender is answered 503 rather than held.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        self.inner
            .publisher
            .get_or_try_init(|| self.inner.client.get_connection_manager_with_config(config))
            .await
            .cloned()
            .map_err(|e| EngineError::Unavailable(e.to_string()))
    }

    /// Whether the publisher answers a `PING`, trying three times (its connection manager
    /// connects again after a failed command).
    async fn publisher_ready(&self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..3 {
            match self.publisher().await {
                Ok(mut manager) => match redis::cmd("PING").query_async::<()>(&mut manager).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("the publishing connection does not answer: {last}"))
    }

    /// The subscriber connection, made again whenever it is lost, for as long as the broker
    /// runs.
    async fn subscriber(&self, mut changed: mpsc::Receiver<Change>) {
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let session = self.subscribe_session(&mut changed).await;
            lock(&self.inner.channels).accepting = false;
            // Ok: the engine is gone (its queue closed), and with it the broker's cluster.
            let Err(why) = session else { return };
            if self.inner.connected.swap(false, Ordering::SeqCst) {
                tracing::warn!("cluster engine: connection to Redis lost: {why}");
                (self.inner.notify)(false);
                delay = Duration::from_millis(100);
                warned = false;
            } else if !warned {
                tracing::warn!("cluster engine: cannot reach Redis, retrying: {why}");
                warned = true;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// One subscriber connection: authenticates, subscribes to every channel wanted, then
    /// reads messages and takes subscription changes until it fails.
    async fn subscribe_session(&self, changed: &mut mpsc::Receiver<Change>) -> Result<(), String> {
        let connect = TcpStream::connect((self.inner.host.as_str(), self.inner.port));
        let mut socket = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .map_err(|_| "timed out connecting".to_owned())?
            .map_err(|e| e.to_string())?;
        let _ = socket.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        if let Some((user, password)) = &self.inner.credentials {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = user {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            write(&mut socket, &resp::command(&args)).await?;
            match read_frame(&mut socket, &mut buf).await? {
                Frame::Simple(_) => {}
                Frame::Error(e) => return Err(format!("authentication refused: {e}")),
                _ => return Err("unexpected answer to AUTH".into()),
            }
        }
        // The changes queued so far are all in the map: subscribe to what it holds now, and
        // take the changes made from now on from the queue.
        let mut wanted: Vec<String> = {
            let mut channels = lock(&self.inner.channels);
            while changed.try_recv().is_ok() {}
            channels.accepting = true;
            self.inner.resync.store(false, Ordering::SeqCst);
            channels.map.keys().cloned().collect()
        };
        wanted.push(self.inner.inbox_channel.clone());
        for channel in &wanted {
            write(&mut socket, &resp::command(&[b"SSUBSCRIBE", channel.as_bytes()])).await?;
        }
        // Connected once the inbox's subscription is confirmed (it was sent last).
        loop {
            match read_frame(&mut socket, &mut buf).await? {
                Frame::Array(items) if is_confirmation(&items, b"ssubscribe", &self.inner.inbox_channel) => break,
                Frame::Error(e) => return Err(format!("refused: {e}")),
                Frame::Array(items) => self.dispatch(items),
                _ => {}
            }
        }
        // The publisher too, before saying so: after Redis restarted, its first command finds
        // the old connection dead (and reconnects), and the announcements made on connecting
        // must not be that command.
        self.publisher_ready().await?;
        self.inner.connected.store(true, Ordering::SeqCst);
        tracing::info!("cluster engine: connected to Redis");
        (self.inner.notify)(true);
        let (mut reader, mut writer) = socket.into_split();
        let mut ping = tokio::time::interval(PING);
        let mut silent = 0u32;
        // The replies awaited, in the order the commands went (Redis answers in that order), each
        // with who waits for it; pushed messages are not replies.
        let mut expected: VecDeque<Option<oneshot::Sender<()>>> = VecDeque::new();
        loop {
            tokio::select! {
                read = reader.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => return Err("closed by the server".into()),
                        Ok(_) => silent = 0,
                        Err(e) => return Err(e.to_string()),
                    }
                    while let Some(frame) = resp::take(&mut buf).map_err(|e| e.0.to_owned())? {
                        match frame {
                            Frame::Array(items) if is_message(&items) => self.dispatch(items),
                            reply => {
                                if let Frame::Error(e) = reply {
                                    tracing::warn!("cluster engine: Redis refused a subscription: {e}");
                                }
                                if let Some(Some(waiting)) = expected.pop_front() {
                                    let _ = waiting.send(());
                                }
                            }
                        }
                    }
                }
                change = changed.recv() => {
                    let Some((channel, subscribe, waiting)) = change else { return Ok(()) };
                    let verb: &[u8] = if subscribe { b"SSUBSCRIBE" } else { b"SUNSUBSCRIBE" };
                    tracing::debug!(%channel, subscribe, "cluster engine: subscription change");
                    write(&mut writer, &resp::command(&[verb, channel.as_bytes()])).await?;
                    expected.push_back(waiting);
                }
                _ = ping.tick() => {
                    silent += 1;
                    if silent > 3 {
                        return Err("no answer to PING".into());
                    }
                    write(&mut writer, &resp::command(&[b"PING"])).await?;
                    expected.push_back(None);
                }
            }
            if expected.len() > CHANGES {
                return Err("Redis stopped answering subscriptions".into());
            }
            if self.inner.resync.load(Ordering::SeqCst) {
                return Err("an unsubscription was not queued: subscribing again from the start".into());
            }
        }
    }

    /// A message pushed on the subscriber connection, to its subscription or inbox.
    fn dispatch(&self, items: Vec<Frame>) {
        let [Frame::Bulk(Some(kind)), Frame::Bulk(Some(channel)), Frame::Bulk(Some(payload))] = &items[..] else {
            return;
        };
        if kind.as_ref() != b"smessage" {
            return;
        }
        let Some(mut msg) = decode(payload.clone()) else {
            tracing::debug!("cluster engine: a message not from a broker was ignored");
            return;
        };
        if channel.as_ref() == self.inner.inbox_channel.as_bytes() {
            let Some(number) = msg.number(INBOX_NUMBER) else { return };
            msg.headers.retain(|(n, _)| n != INBOX_NUMBER);
            if let Some(tx) = lock(&self.inner.inboxes).get(&number) {
                let _ = tx.try_send(Ok(msg));
            }
            return;
        }
        let channel = String::from_utf8_lossy(channel);
        if let Some((_, tx)) = lock(&self.inner.channels).map.get(channel.as_ref()) {
            if tx.try_send(msg).is_err() {
                tracing::warn!(%channel, "cluster engine: a message was dropped (its reader is behind)");
            }
        }
    }
}

/// Writes all of `bytes`, or fails after [`WRITE_TIMEOUT`] (a server that stopped reading).
async fn write(w: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(bytes)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("a write to Redis timed out".into()),
    }
}

/// A message pushed on a shard channel (`smessage`), not a reply.
fn is_message(items: &[Frame]) -> bool {
    matches!(items.first(), Some(Frame::Bulk(Some(kind))) if kind.as_ref() == b"smessage")
}

fn is_confirmation(items: &[Frame], kind: &[u8], channel: &str) -> bool {
    matches!(items, [Frame::Bulk(Some(k)), Frame::Bulk(Some(c)), Frame::Integer(_)]
        if k.as_ref() == kind && c.as_ref() == channel.as_bytes())
}

/// Reads one whole frame (while connecting).
async fn read_frame(socket: &mut TcpStream, buf: &mut BytesMut) -> Result<Frame, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(frame) = resp::take(buf).map_err(|e| e.0.to_owned())? {
            return Ok(frame);
        }
        match tokio::time::timeout_at(deadline, socket.read_buf(buf)).await {
            Err(_) => return Err("no answer in time".into()),
            Ok(Ok(0)) => return Err("closed by the server".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

impl Engine for Redis {
    fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }

    async fn publish(&self, subject: String, mut msg: Msg) -> Result<(), EngineError> {
        // An inbox: its broker's channel, and the number that tells which.
        let channel = match subject.split_once('#') {
            Some((channel, number)) => {
                msg.headers.push((INBOX_NUMBER.to_owned(), number.to_owned()));
                channel.to_owned()
            }
            None => subject,
        };
        let bytes = encode(&msg).ok_or_else(|| EngineError::Unavailable("headers too long".into()))?;
        // Larger than the subscriber connections read: refused here (413) rather than sent to
        // make the receiving broker's connection start over.
        if bytes.len() > resp::MAX_BULK {
            return Err(EngineError::TooLarge(
                resp::MAX_BULK - (bytes.len() - msg.payload.len()),
            ));
        }
        if !self.connected() {
            return Err(EngineError::Unavailable("not connected to the engine".into()));
        }
        let mut manager = self.publisher().await?;
        let receivers: i64 = redis::cmd("SPUBLISH")
            .arg(&channel)
            .arg(bytes)
            .query_async(&mut manager)
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        if receivers == 0 {
            tracing::debug!(%channel, "cluster engine: no receivers");
            return Err(EngineError::NoResponders);
        }
        Ok(())
    }

    async fn mailbox_append(
        &self,
        id: fedbroker_core::Id,
        subject: String,
        msg: Msg,
        keep_payload: bool,
        limits: MailboxLimits,
        now_ms: u64,
    ) -> Result<(u64, u64), EngineError> {
        let head = encode_head(&msg);
        // The seq's line is added by the script: room for it within the u16 length.
        if head.len() > usize::from(u16::MAX) - 64 {
            return Err(EngineError::Unavailable("headers too long".into()));
        }
        let framed = 2 + head.len() + 64 + msg.payload.len();
        if framed > resp::MAX_BULK {
            return Err(EngineError::TooLarge(resp::MAX_BULK - (framed - msg.payload.len())));
        }
        if !self.connected() {
            return Err(EngineError::Unavailable("not connected to the engine".into()));
        }
        let (stream, counter, epoch) = mailbox_keys(id);
        // Ten years at most: PEXPIRE takes a signed 64-bit count of ms, and no TTL needs more.
        let ttl = limits.ttl_ms.clamp(1, 10 * 365 * 24 * 3600 * 1000);
        let mut manager = self.publisher().await?;
        let answer: Vec<i64> = redis::cmd("EVAL")
            .arg(APPEND)
            .arg(3)
            .arg(stream)
            .arg(counter)
            .arg(epoch)
            .arg(head)
            .arg(msg.payload.as_ref())
            .arg(limits.max_messages.max(1))
            .arg(if limits.refuse { "1" } else { "0" })
            .arg(now_ms)
            .arg(ttl)
            .arg(subject)
            .arg(if keep_payload { "1" } else { "0" })
            .arg(new_epoch())
            .query_async(&mut manager)
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        match answer[..] {
            [-1, _] => Err(EngineError::Full),
            [seq, receivers] if seq > 0 => Ok((seq as u64, receivers.max(0) as u64)),
            _ => Err(EngineError::Unavailable(
                "unexpected answer from the mailbox script".into(),
            )),
        }
    }

    async fn mailbox_read(
        &self,
        id: fedbroker_core::Id,
        after: u64,
        max_bytes: usize,
        max_messages: usize,
    ) -> Result<MailboxRead, EngineError> {
        let mut read = MailboxRead::default();
        let mut before = u64::MAX;
        let mut bytes = 0usize;
        // Newest first, a page at a time; bounded: every page but the last is full, and a
        // window keeps at most `max_messages`.
        for n in 0..max_messages / PAGE + 2 {
            let (last, trimmed, page, epoch) = self.mailbox_page(id, after, before).await?;
            if n == 0 {
                read.last = last;
                read.epoch = epoch;
            }
            // Appends may trim the stream between two pages: the highest mark holds.
            read.trimmed_through = read.trimmed_through.max(trimmed);
            let full = page.len() == PAGE;
            for (seq, m) in page {
                bytes = bytes.saturating_add(m.payload.len() + fedbroker_core::mailbox::ENTRY_OVERHEAD);
                before = seq.saturating_sub(1);
                read.records.push((seq, m));
            }
            if bytes > max_bytes || read.records.len() >= max_messages {
                // A window keeps no more: what is older counts as gone.
                read.trimmed_through = read.trimmed_through.max(before);
                break;
            }
            if !full || before <= after {
                break;
            }
        }
        read.records.reverse();
        let trimmed = read.trimmed_through;
        read.records.retain(|(seq, _)| *seq > trimmed);
        Ok(read)
    }

    async fn subscribe(&self, subject: String) -> Result<(Subscription, InPlace), EngineError> {
        let (tx, rx) = mpsc::channel(PER_SUBSCRIPTION);
        let number = self.inner.next_number.fetch_add(1, Ordering::Relaxed);
        let accepting = {
            let mut channels = lock(&self.inner.channels);
            channels.map.insert(subject.clone(), (number, tx));
            channels.accepting
        };
        let unsubscribe = Unsubscribe {
            engine: self.clone(),
            channel: subject.clone(),
            number,
        };
        // Not connected: the next connection subscribes to the whole map (and nothing is
        // announced meanwhile).
        let in_place: InPlace = if accepting {
            let (confirmed, in_place) = oneshot::channel();
            self.inner
                .changes
                .send((subject, true, Some(confirmed)))
                .await
                .map_err(|_| EngineError::Unavailable("the engine's subscriber stopped".into()))?;
            Box::pin(async move {
                let _ = tokio::time::timeout(CONFIRM_WAIT, in_place).await;
            })
        } else {
            Box::pin(std::future::ready(()))
        };
        let stream = futures_util::stream::unfold((rx, unsubscribe), |(mut rx, guard)| async move {
            rx.recv().await.map(|m| (m, (rx, guard)))
        });
        Ok((Box::pin(stream), in_place))
    }

    async fn inbox(&self) -> Result<(String, Answers), EngineError> {
        let number = self.inner.next_number.fetch_add(1, Ordering::Relaxed);
        // Two answers at most (queued, then the reply).
        let (tx, rx) = mpsc::channel(4);
        lock(&self.inner.inboxes).insert(number, tx);
        let guard = FreeInbox {
            engine: self.clone(),
            number,
        };
        let stream = futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|m| (m, (rx, guard)))
        });
        Ok((format!("{}#{number}", self.inner.inbox_channel), Box::pin(stream)))
    }
}

/// Unsubscribes when a subscription is dropped.
struct Unsubscribe {
    engine: Redis,
    channel: String,
    number: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let inner = &self.engine.inner;
        let mut channels = lock(&inner.channels);
        // A newer subscription to the same channel is left alone.
        if channels.map.get(&self.channel).is_none_or(|(n, _)| *n != self.number) {
            return;
        }
        channels.map.remove(&self.channel);
        // In order after the SSUBSCRIBE. A full queue would leave the subscription in place
        // (its messages taken and dropped, so their senders answered 503 after a wait): the
        // connection is made again instead, with the map's channels only.
        if channels.accepting
            && inner
                .changes
                .try_send((std::mem::take(&mut self.channel), false, None))
                .is_err()
        {
            tracing::warn!("cluster engine: unsubscription queue full; subscribing again from the start");
            inner.resync.store(true, Ordering::SeqCst);
        }
    }
}

/// Frees an inbox's number when its answers are dropped.
struct FreeInbox {
    engine: Redis,
    number: u64,
}

impl Drop for FreeInbox {
    fn drop(&mut self) {
        lock(&self.engine.inner.inboxes).remove(&self.number);
    }
}
