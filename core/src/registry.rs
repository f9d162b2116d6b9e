//! Who listens on which id, each listener's bounded queue (SPEC §4), topics with many listeners,
//! and who follows whose presence (docs/patterns.md §2, §5).
//!
//! The registry is shared by every connection of a broker. It is sharded so that senders to
//! different ids never wait on one lock. A message is queued while its id's shard is locked, so
//! the `seq` numbers of an id follow the order of its queue; a listener's queue lock is taken
//! inside the shard lock and never the other way round. Wake-ups use [`std::task::Waker`] and
//! are made after every lock is released, so any runtime (or a plain thread, through a waker that
//! unparks it) can wait on a queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::auth::IdSet;
use crate::envelope;
use crate::mailbox::{
    Budget, History, MailboxConfig, Mirror, Persist, Persisted, Read, Refusal, Refused, Restored, StartError, StoreOp,
};
use crate::reply::ReplySender;
use crate::router::{MailboxSync, RouteReply};
use crate::{HttpError, Id};

/// Number of registry shards (a power of two).
const SHARDS: usize = 64;

/// Why a message could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryError {
    /// Nobody listens on the id.
    NoListener,
    /// Nobody listens on the topic.
    NoTopicListener,
    /// The listener's queue is at its limit (on a topic: every listener's was).
    QueueFull,
    /// A reply was asked of a listener that did not negotiate the envelope.
    CannotReply,
    /// A reply was asked of a topic.
    ReplyToTopic,
    /// The id's mailbox is full and refuses (or the broker's mailbox budget is spent).
    MailboxFull,
    /// The mailbox store cannot take the message now.
    StoreUnavailable,
}

impl DeliveryError {
    /// The refusal this becomes for the sender of a message to `id`.
    pub fn to_http(self, id: Id) -> HttpError {
        match self {
            DeliveryError::NoListener => HttpError::NoListener(id),
            DeliveryError::NoTopicListener => HttpError::NoTopicListener(id),
            DeliveryError::QueueFull => HttpError::QueueFull(id),
            DeliveryError::CannotReply => HttpError::CannotReply(id),
            DeliveryError::ReplyToTopic => HttpError::BadReply("request-reply needs a plain id, not a topic"),
            DeliveryError::MailboxFull => HttpError::MailboxFull(id),
            DeliveryError::StoreUnavailable => HttpError::StoreUnavailable,
        }
    }
}

/// How a message was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Into the queue of the id's listener.
    Listener,
    /// Into the queues of this many topic listeners.
    Topic {
        /// Listeners that took it.
        recipients: u32,
    },
    /// Into the listener's queue as a request; the answer comes through the reply channel.
    AwaitingReply,
    /// Into the id's mailbox (durable, when it has a store), as `seq`; `live` when a listener
    /// was connected to read it (`204`), else kept for a later one (`202`).
    Mailbox {
        /// The message's seq.
        seq: u64,
        /// Whether a listener was connected.
        live: bool,
    },
}

/// A record of a mailbox kept elsewhere, for [`Registry::mirror`].
#[derive(Debug)]
pub enum MirrorItem {
    /// A message, kept.
    Message(Bytes),
    /// A seq taken by something not kept (a request, for another broker's listener).
    Taken,
    /// A request for this broker's envelope listener: queued in seq order, not kept.
    Request {
        /// The body.
        payload: Bytes,
        /// Where the answer goes.
        reply: ReplySender,
        /// How long the sender waits, in milliseconds.
        timeout_ms: u64,
    },
}

/// What [`Registry::mirror`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Mirrored {
    /// Kept in the window (the listener is told), or the request queued or refused.
    Done(Result<Delivered, HttpError>),
    /// Had it already.
    Behind,
    /// Seqs after `last` are missing here: read them from the mailbox first.
    Ahead {
        /// The window's last seq.
        last: u64,
    },
    /// The id has no window here (nobody listens on it on this broker).
    NoWindow,
}

/// What a listener's queue holds.
#[derive(Debug)]
pub enum Item {
    /// A message for a plain id.
    Message {
        /// Its number among the id's messages.
        seq: u64,
        /// The id it was sent to.
        id: Id,
        /// The listened id of the envelope listener that sent it.
        from: Option<Id>,
        /// The body.
        payload: Bytes,
    },
    /// A message awaiting a reply (only queued for envelope listeners).
    Request {
        /// Its number among the id's messages: the reply's `reply_to`.
        seq: u64,
        /// The id it was sent to.
        id: Id,
        /// How long the sender waits, in milliseconds.
        timeout_ms: u64,
        /// The body.
        payload: Bytes,
        /// Where the answer goes.
        reply: ReplySender,
    },
    /// A topic message, its frames encoded once for every listener.
    Frames(Arc<SharedFrames>),
    /// Presence: `id` started (`online`) or stopped being listened on.
    Presence {
        /// The id followed.
        id: Id,
        /// Whether it is listened on now.
        online: bool,
    },
}

/// A topic message as whole WebSocket frames, shared by all its listeners.
#[derive(Debug)]
pub struct SharedFrames {
    /// The frame for plain listeners: the payload alone.
    pub plain: Bytes,
    /// The frame for envelope listeners, when the topic has any.
    pub envelope: Option<Bytes>,
    /// The payload's length, for the statistics.
    pub payload_len: usize,
}

/// The listeners of one broker, by id. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
enum Slot {
    #[default]
    Empty,
    Single(Arc<Mailbox>),
    Topic(Vec<Arc<Mailbox>>),
}

#[derive(Debug, Default)]
struct Entry {
    slot: Slot,
    /// The last `seq` given on this id; restarts when the id has no listener.
    seq: u64,
    watchers: Vec<Arc<Mailbox>>,
    /// The id's mailbox, when it has one.
    history: Option<History>,
    /// Another broker sharing the id space has a listener on it (as a cluster told us).
    remote: bool,
    /// Listeners registered on this id so far (kept while the entry lives).
    generation: u64,
}

impl Entry {
    fn is_unused(&self) -> bool {
        matches!(self.slot, Slot::Empty)
            && !self.remote
            && self.watchers.is_empty()
            && self.history.as_ref().is_none_or(|h| h.is_empty())
    }

    /// Whether watchers see the id online: listened on here or on another broker.
    fn present(&self) -> bool {
        self.online() || self.remote
    }

    fn online(&self) -> bool {
        !matches!(self.slot, Slot::Empty)
    }
}

type Shard = Mutex<HashMap<Id, Entry>>;

#[derive(Debug)]
struct Inner {
    shards: Box<[Shard]>,
    /// Ids with at least one listener.
    listeners: AtomicUsize,
    topic_listeners: AtomicUsize,
    slow_closed: AtomicUsize,
    watches: AtomicUsize,
    queue_limit: usize,
    topics: IdSet,
    mailboxes: Option<Mailboxes>,
    observer: ObserverCell,
}

#[derive(Default)]
struct ObserverCell(std::sync::OnceLock<Observer>);

impl std::fmt::Debug for ObserverCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Some(observer)"
        } else {
            "None"
        })
    }
}

/// The mailbox side of a registry.
struct Mailboxes {
    config: MailboxConfig,
    budget: Budget,
    persist: Option<Arc<dyn Persist>>,
    /// Above every seq of a forgotten mailbox (one whose messages are all gone): a mailbox made
    /// again numbers from here, so no seq is reused.
    floor: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    store_errors: AtomicU64,
    /// The mailboxes are kept elsewhere (a cluster's engine): each id's here is a window onto
    /// it while the id has a listener on this broker ([`Registry::mirror_mailboxes`]).
    windows: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Mailboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailboxes")
            .field("config", &self.config)
            .field("durable", &self.persist.is_some())
            .finish_non_exhaustive()
    }
}

impl Mailboxes {
    fn new_history(&self) -> History {
        History::new(self.floor.load(Ordering::Relaxed))
    }
}

/// Told the id whose listened state may have changed (see [`Registry::on_listened_change`]).
type Observer = Arc<dyn Fn(Id) + Send + Sync>;

/// Wake-ups and observer calls collected while locks are held, made once they are released.
#[derive(Default)]
struct Wakers(Vec<Waker>, Vec<(Observer, Id)>);

impl Wakers {
    fn add(&mut self, w: Option<Waker>) {
        if let Some(w) = w {
            self.0.push(w);
        }
    }
}

impl Drop for Wakers {
    fn drop(&mut self) {
        for w in self.0.drain(..) {
            w.wake();
        }
        for (observer, id) in self.1.drain(..) {
            observer(id);
        }
    }
}

impl Registry {
    /// An empty registry whose listeners queue at most `queue_limit` items each, and whose ids in
    /// `topics` take any number of listeners.
    pub fn new(queue_limit: usize, topics: IdSet) -> Self {
        Self::with_mailboxes(queue_limit, topics, None, None)
    }

    /// As [`Registry::new`], with mailboxes for the ids of `mailboxes`, kept durable by
    /// `persist` when given.
    pub fn with_mailboxes(
        queue_limit: usize,
        topics: IdSet,
        mailboxes: Option<MailboxConfig>,
        persist: Option<Arc<dyn Persist>>,
    ) -> Self {
        let mailboxes = mailboxes.map(|config| Mailboxes {
            config,
            budget: Budget::default(),
            persist,
            floor: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            windows: std::sync::atomic::AtomicBool::new(false),
        });
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Registry {
            inner: Arc::new(Inner {
                shards,
                listeners: AtomicUsize::new(0),
                topic_listeners: AtomicUsize::new(0),
                slow_closed: AtomicUsize::new(0),
                watches: AtomicUsize::new(0),
                queue_limit: queue_limit.max(1),
                topics,
                mailboxes,
                observer: ObserverCell::default(),
            }),
        }
    }

    fn shard(&self, id: Id) -> MutexGuard<'_, HashMap<Id, Entry>> {
        // Fibonacci hashing spreads consecutive ids over the shards.
        let h = (u64::from(id.get()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize;
        lock(&self.inner.shards[h % SHARDS])
    }

    /// Whether `id` is a topic.
    pub fn is_topic(&self, id: Id) -> bool {
        self.inner.topics.contains(id)
    }

    /// Makes the caller a listener of `id` (an envelope listener when `envelope`). On a plain id,
    /// a previous listener is told it was replaced (it still receives what was queued for it
    /// before, then closes); a topic takes any number. On a mailbox id, it reads what arrives
    /// from now on.
    pub fn listen(&self, id: Id, envelope: bool) -> ListenerHandle {
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        let entry = shard.entry(id).or_default();
        let cursor = match self.has_mailbox(id) {
            true => self.mailbox_of(entry).map(|h| h.visible_through() + 1),
            false => None,
        };
        self.register(entry, id, envelope, cursor, &mut wakers)
    }

    /// As [`Registry::listen`], on a mailbox id from `since` (every message after that seq;
    /// `None`: from now on), at wall-clock `now_ms` (for the TTL). Also returns the last seq
    /// given on a mailbox id. Refused when `since` is given for an id without a mailbox, is
    /// ahead of the last seq, or (`plain` listeners, who cannot be told in-band) when messages
    /// after it were dropped already.
    pub fn listen_since(
        &self,
        id: Id,
        envelope: bool,
        since: Option<u64>,
        now_ms: u64,
    ) -> Result<(ListenerHandle, Option<u64>), HttpError> {
        self.listen_synced(id, envelope, since, now_ms, None)
    }

    /// As [`Registry::listen_since`], first bringing `id`'s window up to `sync` (what the mailbox
    /// kept elsewhere holds, read by the router), under the same lock. `503` when the window
    /// changed under the read (it was given back meanwhile): the listener may retry; and, with
    /// the mailboxes kept elsewhere ([`Registry::mirror_mailboxes`]), without a `sync`.
    pub fn listen_synced(
        &self,
        id: Id,
        envelope: bool,
        since: Option<u64>,
        now_ms: u64,
        sync: Option<MailboxSync>,
    ) -> Result<(ListenerHandle, Option<u64>), HttpError> {
        if sync.is_none() && self.windows() && self.has_mailbox(id) {
            // The mailbox is elsewhere and was not read (a router that does not forward
            // `Router::prepare_listen`): a window cannot be made up here.
            return Err(HttpError::RouteUnavailable);
        }
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        if let (Some(sync), Some(m), true) = (sync, &self.inner.mailboxes, self.has_mailbox(id)) {
            let entry = shard.entry(id).or_default();
            if !merge(entry, m, sync, now_ms) {
                if entry.is_unused() {
                    self.forget(&mut shard, id);
                }
                return Err(HttpError::RouteUnavailable);
            }
        }
        let floor = self.inner.mailboxes.as_ref().map(|m| m.floor.load(Ordering::Relaxed));
        let is_mailbox = self.has_mailbox(id);
        if since.is_some() && !is_mailbox {
            return Err(HttpError::NoMailbox(id));
        }
        let entry = shard.entry(id).or_default();
        let mut last = None;
        let mut cursor = None;
        if let (true, Some(m)) = (is_mailbox, &self.inner.mailboxes) {
            let h = entry.history.get_or_insert_with(|| History::new(floor.unwrap_or(0)));
            let expired = h.expire(&m.config, &m.budget, now_ms);
            self.after_drop(id, expired.dropped, expired.trim_through);
            let c = match h.start(since) {
                Ok(c) => c,
                Err(StartError::Ahead { last }) => {
                    self.refused_listener(&mut shard, id);
                    return Err(HttpError::SinceAhead { id, last });
                }
            };
            if let (false, Some((from, to))) = (envelope, h.gap_at(c)) {
                self.refused_listener(&mut shard, id);
                return Err(HttpError::Gone { id, from, to });
            }
            // With since, the last seq given; without, the last one before this listener's first
            // (messages still being written to the store come to it: they are after it).
            last = Some(if since.is_some() { h.last_seq() } else { c - 1 });
            cursor = Some(c);
        }
        Ok((self.register(entry, id, envelope, cursor, &mut wakers), last))
    }

    /// Makes this broker's mailboxes windows onto mailboxes kept elsewhere (a cluster's engine,
    /// which numbers their messages): an id's window is filled by [`Registry::listen_synced`] and
    /// [`Registry::mirror`] while the id has a listener here, and given back when it has none.
    pub fn mirror_mailboxes(&self) {
        if let Some(m) = &self.inner.mailboxes {
            m.windows.store(true, Ordering::Relaxed);
        }
    }

    fn windows(&self) -> bool {
        self.inner
            .mailboxes
            .as_ref()
            .is_some_and(|m| m.windows.load(Ordering::Relaxed))
    }

    /// The last seq of `id`'s window here, if it has one (a read of the mailbox elsewhere goes on
    /// after it).
    pub fn window_last(&self, id: Id) -> Option<u64> {
        self.shard(id)
            .get(&id)
            .and_then(|e| e.history.as_ref())
            .map(History::last_seq)
    }

    /// Brings `id`'s window here up to `sync` (read from the mailbox elsewhere after the
    /// window's last seq), telling its listener; `false` when the id has no window here (nobody
    /// listens on it) or it changed under the read.
    pub fn sync_window(&self, id: Id, sync: MailboxSync, now_ms: u64) -> bool {
        let Some(m) = &self.inner.mailboxes else {
            return false;
        };
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        let Some(entry) = shard.get_mut(&id) else {
            return false;
        };
        if entry.history.is_none() || !merge(entry, m, sync, now_ms) {
            return false;
        }
        if let Slot::Single(mb) = &entry.slot {
            wakers.add(mb.signal());
        }
        true
    }

    /// The mailbox `id`'s window here looks onto was lost where it was kept (its numbering
    /// went back: the engine restarted without its data): the window is given back and its
    /// listener closed (`4002`); one connecting again reads the mailbox afresh (`409` for a
    /// `since` above its new last seq).
    pub fn reset_window(&self, id: Id) {
        let Some(m) = &self.inner.mailboxes else {
            return;
        };
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        let Some(entry) = shard.get_mut(&id) else {
            return;
        };
        if let Some(mut h) = entry.history.take() {
            h.clear(&m.budget);
        }
        if let Slot::Single(mb) = &entry.slot {
            let mut s = lock(&mb.state);
            s.lost = true;
            wakers.add(s.waker.take());
        }
    }

    /// Takes record `seq` of `id`'s mailbox, numbered elsewhere, into its window here: the
    /// listener reads it in seq order. Records must come in order: `Ahead` says which are
    /// missing (read them from the mailbox, then this one again).
    pub fn mirror(&self, id: Id, seq: u64, at_ms: u64, from: Option<Id>, item: MirrorItem, now_ms: u64) -> Mirrored {
        let Some(m) = &self.inner.mailboxes else {
            return Mirrored::NoWindow;
        };
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        let Some(entry) = shard.get_mut(&id) else {
            return Mirrored::NoWindow;
        };
        let listener = match &entry.slot {
            Slot::Single(mb) => Some(mb.clone()),
            _ => None,
        };
        let Some(h) = &mut entry.history else {
            return Mirrored::NoWindow;
        };
        let (payload, request) = match item {
            MirrorItem::Message(p) => (Some(p), None),
            MirrorItem::Taken => (None, None),
            MirrorItem::Request {
                payload,
                reply,
                timeout_ms,
            } => (None, Some((payload, reply, timeout_ms))),
        };
        let record = Restored {
            seq,
            at_ms,
            from,
            payload,
        };
        match h.mirror(&m.config, &m.budget, record, now_ms) {
            Mirror::Behind => {
                // A request whose seq was read into the window already (as a seq taken): it is
                // still handed to the envelope listener, through its queue.
                if let (Some((payload, reply, timeout_ms)), Some(mb)) = (request, &listener) {
                    if !mb.envelope {
                        return Mirrored::Done(Err(DeliveryError::CannotReply.to_http(id)));
                    }
                    let item = Item::Request {
                        seq,
                        id,
                        timeout_ms,
                        payload,
                        reply,
                    };
                    return Mirrored::Done(match mb.push(item, false) {
                        Push::Queued(w) => {
                            wakers.add(w);
                            Ok(Delivered::AwaitingReply)
                        }
                        Push::Full(_) => Err(DeliveryError::QueueFull.to_http(id)),
                        Push::Closed => Err(DeliveryError::NoListener.to_http(id)),
                    });
                }
                return Mirrored::Behind;
            }
            Mirror::Ahead { last } => return Mirrored::Ahead { last },
            Mirror::Kept(a) => {
                m.dropped.fetch_add(a.dropped, Ordering::Relaxed);
            }
        }
        let result = match (request, &listener) {
            (None, Some(mb)) => {
                wakers.add(mb.signal());
                Ok(Delivered::Mailbox { seq, live: true })
            }
            (None, None) => Ok(Delivered::Mailbox { seq, live: false }),
            (Some((payload, reply, timeout_ms)), Some(mb)) if mb.envelope => {
                h.set_request(seq, payload, reply, timeout_ms);
                wakers.add(mb.signal());
                Ok(Delivered::AwaitingReply)
            }
            (Some(_), Some(_)) => Err(DeliveryError::CannotReply.to_http(id)),
            (Some(_), None) => Err(DeliveryError::NoListener.to_http(id)),
        };
        Mirrored::Done(result)
    }

    /// A listener of `id` was refused: a window made for it is given back if nobody else listens
    /// here, and an entry left unused is forgotten.
    fn refused_listener(&self, shard: &mut HashMap<Id, Entry>, id: Id) {
        let Some(entry) = shard.get_mut(&id) else {
            return;
        };
        if let (Some(m), true, false) = (&self.inner.mailboxes, self.windows(), entry.online()) {
            if let Some(mut h) = entry.history.take() {
                h.clear(&m.budget);
            }
        }
        if entry.is_unused() {
            self.forget(shard, id);
        }
    }

    /// The mailbox of `entry` (made if missing), when its id has one.
    fn mailbox_of<'e>(&self, entry: &'e mut Entry) -> Option<&'e mut History> {
        let m = self.inner.mailboxes.as_ref()?;
        Some(entry.history.get_or_insert_with(|| m.new_history()))
    }

    fn register(
        &self,
        entry: &mut Entry,
        id: Id,
        envelope: bool,
        cursor: Option<u64>,
        wakers: &mut Wakers,
    ) -> ListenerHandle {
        let mailbox = Arc::new(Mailbox::new(self.inner.queue_limit, envelope));
        entry.generation += 1;
        let cursor = cursor.filter(|_| self.has_mailbox(id));
        if let (Some(c), Some(h)) = (cursor, &entry.history) {
            if h.readable(c) {
                lock(&mailbox.state).signal = true;
            }
        }
        let was_online = entry.online();
        if self.is_topic(id) {
            match &mut entry.slot {
                Slot::Topic(list) => list.push(mailbox.clone()),
                slot => *slot = Slot::Topic(vec![mailbox.clone()]),
            }
            self.inner.topic_listeners.fetch_add(1, Ordering::Relaxed);
        } else if let Slot::Single(old) = std::mem::replace(&mut entry.slot, Slot::Single(mailbox.clone())) {
            wakers.add(old.close());
            // Requests were for the listener replaced: their senders learn it went away.
            if let Some(h) = &mut entry.history {
                h.drop_requests();
            }
        }
        if !was_online {
            self.inner.listeners.fetch_add(1, Ordering::Relaxed);
            if !entry.remote {
                self.notify(entry, id, true, wakers);
            }
            self.changed(id, wakers);
        }
        ListenerHandle {
            registry: self.clone(),
            id,
            mailbox,
            watching: Vec::new(),
            cursor: cursor.map(AtomicU64::new),
        }
    }

    /// Calls `observer` with an id each time it may have gone from no listener to some on this
    /// broker, or back (after the registry's locks are released, so the observer may call the
    /// registry; calls for one id may come in either order from different threads: read
    /// [`Registry::is_listened`] for the state now). For a cluster, which subscribes to an engine
    /// for the ids listened on here. Set once; `false` if one was set already.
    pub fn on_listened_change(&self, observer: impl Fn(Id) + Send + Sync + 'static) -> bool {
        self.inner.observer.0.set(Arc::new(observer)).is_ok()
    }

    fn changed(&self, id: Id, wakers: &mut Wakers) {
        if let Some(o) = self.inner.observer.0.get() {
            wakers.1.push((o.clone(), id));
        }
    }

    /// Tells the registry whether another broker sharing the id space has a listener on `id`
    /// (a cluster learns it from its engine): watchers here see the id online while it is
    /// listened on here or there.
    pub fn set_remote(&self, id: Id, listened: bool) {
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        if !listened && !shard.contains_key(&id) {
            return;
        }
        let entry = shard.entry(id).or_default();
        let before = entry.present();
        entry.remote = listened;
        if entry.present() != before {
            self.notify(entry, id, listened, &mut wakers);
        }
        if entry.is_unused() {
            self.forget(&mut shard, id);
        }
    }

    /// Closes this broker's listener of plain id `id` as replaced (`4000`), because another
    /// broker sharing the id space took the id. Returns whether there was one.
    pub fn evict(&self, id: Id) -> bool {
        self.evict_if(id, None)
    }

    /// How many listeners `id` has had on this broker (a listener's generation): compare with
    /// [`Registry::evict_if`] to evict only the listener seen when deciding.
    pub fn listen_generation(&self, id: Id) -> u64 {
        self.shard(id).get(&id).map_or(0, |e| e.generation)
    }

    /// As [`Registry::evict`], only while `id`'s listener is still of `generation` (no newer one
    /// came since it was read); `None`: whichever listener it has.
    pub fn evict_if(&self, id: Id, generation: Option<u64>) -> bool {
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        let Some(entry) = shard.get_mut(&id) else {
            return false;
        };
        if generation.is_some_and(|g| g != entry.generation) || !matches!(entry.slot, Slot::Single(_)) {
            // A newer listener, none, or a topic's (topics are never replaced).
            return false;
        }
        let Slot::Single(old) = std::mem::take(&mut entry.slot) else {
            return false;
        };
        wakers.add(old.close());
        self.went_offline(&mut shard, id, &mut wakers);
        true
    }

    /// Whether `id` keeps a mailbox.
    pub fn has_mailbox(&self, id: Id) -> bool {
        self.inner.mailboxes.as_ref().is_some_and(|m| m.config.ids.contains(id))
    }

    /// Counts what a mailbox dropped and tells the store it may delete it.
    fn after_drop(&self, id: Id, dropped: u64, trim_through: Option<u64>) {
        let Some(m) = &self.inner.mailboxes else {
            return;
        };
        m.dropped.fetch_add(dropped, Ordering::Relaxed);
        if let (Some(through), Some(p)) = (trim_through, &m.persist) {
            // A trim that cannot be queued is harmless: the records are dropped again (by the
            // same bounds and TTL) when they are loaded.
            let _ = p.submit(StoreOp::Trim { id, through }, None);
        }
    }

    /// Removes an unused entry, remembering its mailbox's last seq so that it is never reused.
    fn forget(&self, shard: &mut HashMap<Id, Entry>, id: Id) {
        if let Some(entry) = shard.remove(&id) {
            if let (Some(h), Some(m)) = (&entry.history, &self.inner.mailboxes) {
                m.floor.fetch_max(h.last_seq(), Ordering::Relaxed);
            }
        }
    }

    /// Restores one id's mailbox from a store at startup (before any connection), at wall-clock
    /// `now_ms`; bounds and TTL apply as to new messages.
    pub fn restore(&self, id: Id, trimmed_through: u64, records: Vec<Restored>, now_ms: u64) {
        let Some(m) = &self.inner.mailboxes else {
            return;
        };
        let (h, dropped) = History::restore(&m.config, &m.budget, trimmed_through, records, now_ms);
        self.after_drop(id, dropped.dropped, dropped.trim_through);
        let mut shard = self.shard(id);
        let entry = shard.entry(id).or_default();
        if let Some(old) = entry.history.take() {
            // Restored twice: the budget forgets the first.
            let mut old = old;
            let cfg = MailboxConfig {
                ttl: std::time::Duration::ZERO,
                ..m.config.clone()
            };
            let _ = old.expire(&cfg, &m.budget, u64::MAX);
        }
        m.floor.fetch_max(h.last_seq(), Ordering::Relaxed);
        entry.history = Some(h);
        if entry.is_unused() {
            self.forget(&mut shard, id);
        }
    }

    /// Keeps `payload` in the mailbox of `id` (or, with `reply`, queues a request to its
    /// envelope listener), answering `route` now or, with a store, once the message is durable.
    pub(crate) fn deliver_mailbox(
        &self,
        id: Id,
        payload: Bytes,
        from: Option<Id>,
        reply: Option<(ReplySender, u64)>,
        now_ms: u64,
        route: RouteReply,
    ) {
        let Some(m) = &self.inner.mailboxes else {
            return route.answer(Err(DeliveryError::NoListener.to_http(id)));
        };
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        let entry = shard.entry(id).or_default();
        let h = entry.history.get_or_insert_with(|| m.new_history());
        if let Some((reply, timeout_ms)) = reply {
            // A request is not kept; it takes a seq (so `reply_to` is unique, and it reaches the
            // listener in order with the messages around it) that replay passes over.
            let listener = match &entry.slot {
                Slot::Single(mb) if mb.envelope => mb.clone(),
                Slot::Single(_) => return route.answer(Err(DeliveryError::CannotReply.to_http(id))),
                _ => {
                    if entry.is_unused() {
                        self.forget(&mut shard, id);
                    }
                    return route.answer(Err(DeliveryError::NoListener.to_http(id)));
                }
            };
            let Ok(a) = h.append_request(&m.config, &m.budget, now_ms, payload, reply, timeout_ms) else {
                m.refused.fetch_add(1, Ordering::Relaxed);
                return route.answer(Err(DeliveryError::MailboxFull.to_http(id)));
            };
            wakers.add(listener.signal());
            self.after_drop(id, a.dropped, a.trim_through);
            if let Some(p) = &m.persist {
                let op = StoreOp::Append {
                    id,
                    seq: a.seq,
                    at_ms: now_ms,
                    from: None,
                    payload: None,
                };
                let _ = p.submit(op, None);
            }
            drop(shard);
            return route.answer(Ok(Delivered::AwaitingReply));
        }
        let pending = m.persist.is_some();
        let a = match h.append(&m.config, &m.budget, now_ms, from, Some(payload.clone()), pending) {
            Ok(a) => a,
            Err(Refused::Full | Refused::BudgetSpent) => {
                m.refused.fetch_add(1, Ordering::Relaxed);
                if entry.is_unused() {
                    self.forget(&mut shard, id);
                }
                return route.answer(Err(DeliveryError::MailboxFull.to_http(id)));
            }
        };
        self.after_drop(id, a.dropped, a.trim_through);
        let seq = a.seq;
        let Some(p) = &m.persist else {
            let live = match &entry.slot {
                Slot::Single(mb) => {
                    wakers.add(mb.signal());
                    true
                }
                _ => false,
            };
            drop(shard);
            return route.answer(Ok(Delivered::Mailbox { seq, live }));
        };
        let op = StoreOp::Append {
            id,
            seq,
            at_ms: now_ms,
            from,
            payload: Some(payload),
        };
        let done = Persisted {
            registry: self.clone(),
            id,
            seq,
            reply: Some(route),
        };
        // Submitted under the shard lock, so the store sees each id's seqs in order.
        if let Err(Refusal { error, done }) = p.submit(op, Some(done)) {
            m.store_errors.fetch_add(1, Ordering::Relaxed);
            h.settle(&m.budget, seq, false);
            tracing::warn!(%id, "mailbox store refused a message: {error:?}");
            let reply = done.and_then(|mut d| d.reply.take());
            drop(shard);
            if let Some(reply) = reply {
                reply.answer(Err(DeliveryError::StoreUnavailable.to_http(id)));
            }
        }
    }

    /// The store's answer for a message: make it readable (or drop it) and answer its sender.
    pub(crate) fn settle(
        &self,
        id: Id,
        seq: u64,
        result: Result<(), crate::mailbox::PersistError>,
        reply: Option<RouteReply>,
    ) {
        let mut wakers = Wakers::default();
        let mut live = false;
        if let Some(m) = &self.inner.mailboxes {
            let mut shard = self.shard(id);
            if let Some(entry) = shard.get_mut(&id) {
                if let Some(h) = &mut entry.history {
                    h.settle(&m.budget, seq, result.is_ok());
                }
                if let Slot::Single(mb) = &entry.slot {
                    live = true;
                    wakers.add(mb.signal());
                }
            }
        }
        if let (Err(e), Some(m)) = (&result, &self.inner.mailboxes) {
            m.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%id, seq, "mailbox store failed a message: {e:?}");
        }
        if let Some(reply) = reply {
            reply.answer(match result {
                Ok(()) => Ok(Delivered::Mailbox { seq, live }),
                Err(_) => Err(DeliveryError::StoreUnavailable.to_http(id)),
            });
        }
    }

    /// The mailboxes' configuration, when the broker keeps any.
    pub fn mailbox_config(&self) -> Option<&MailboxConfig> {
        self.inner.mailboxes.as_ref().map(|m| &m.config)
    }

    /// Messages kept in mailboxes now, their charged bytes, and the counts of messages dropped
    /// (pushed out or expired), refused (`507`) and failed or refused by the store so far.
    pub fn mailbox_figures(&self) -> [u64; 5] {
        match &self.inner.mailboxes {
            None => [0; 5],
            Some(m) => [
                m.budget.messages() as u64,
                m.budget.used() as u64,
                m.dropped.load(Ordering::Relaxed),
                m.refused.load(Ordering::Relaxed),
                m.store_errors.load(Ordering::Relaxed),
            ],
        }
    }

    /// Queues `payload` for the listener(s) of `id`; with `reply`, as a request whose answer goes
    /// there (plain ids with an envelope listener only).
    pub fn deliver(
        &self,
        id: Id,
        payload: Bytes,
        from: Option<Id>,
        reply: Option<(ReplySender, u64)>,
    ) -> Result<Delivered, DeliveryError> {
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        let topic = self.is_topic(id);
        let Some(entry) = shard.get_mut(&id) else {
            return Err(if topic {
                DeliveryError::NoTopicListener
            } else {
                DeliveryError::NoListener
            });
        };
        match &mut entry.slot {
            Slot::Empty if topic => Err(DeliveryError::NoTopicListener),
            Slot::Empty => Err(DeliveryError::NoListener),
            Slot::Single(mailbox) => {
                if reply.is_some() && !mailbox.envelope {
                    return Err(DeliveryError::CannotReply);
                }
                let seq = entry.seq + 1;
                let (item, delivered) = match reply {
                    Some((reply, timeout_ms)) => (
                        Item::Request {
                            seq,
                            id,
                            timeout_ms,
                            payload,
                            reply,
                        },
                        Delivered::AwaitingReply,
                    ),
                    None => (Item::Message { seq, id, from, payload }, Delivered::Listener),
                };
                match mailbox.push(item, false) {
                    Push::Queued(w) => {
                        wakers.add(w);
                        entry.seq = seq;
                        Ok(delivered)
                    }
                    Push::Full(_) => Err(DeliveryError::QueueFull),
                    Push::Closed => Err(DeliveryError::NoListener),
                }
            }
            Slot::Topic(list) => {
                if reply.is_some() {
                    return Err(DeliveryError::ReplyToTopic);
                }
                let seq = entry.seq + 1;
                let envelope = list
                    .iter()
                    .any(|m| m.envelope)
                    .then(|| envelope::frame_bytes(Some(&envelope::message_header(seq, id, from)), &payload));
                let frames = Arc::new(SharedFrames {
                    plain: envelope::frame_bytes(None, &payload),
                    envelope,
                    payload_len: payload.len(),
                });
                let mut recipients = 0u32;
                let mut slow = 0usize;
                let before = list.len();
                list.retain(|m| match m.push(Item::Frames(frames.clone()), true) {
                    Push::Queued(w) => {
                        recipients += 1;
                        wakers.add(w);
                        true
                    }
                    Push::Full(w) => {
                        slow += 1;
                        wakers.add(w);
                        false
                    }
                    // Closed already (as too slow, by a presence event): counted then.
                    Push::Closed => false,
                });
                let dropped = before - list.len();
                self.inner.slow_closed.fetch_add(slow, Ordering::Relaxed);
                self.inner.topic_listeners.fetch_sub(dropped, Ordering::Relaxed);
                entry.seq = seq;
                if list.is_empty() {
                    self.went_offline(&mut shard, id, &mut wakers);
                }
                if recipients == 0 {
                    return Err(if slow > 0 {
                        DeliveryError::QueueFull
                    } else {
                        DeliveryError::NoTopicListener
                    });
                }
                Ok(Delivered::Topic { recipients })
            }
        }
    }

    /// Whether someone listens on `id` now.
    pub fn is_listened(&self, id: Id) -> bool {
        self.shard(id).get(&id).is_some_and(Entry::online)
    }

    /// Number of ids listened on now.
    pub fn listeners(&self) -> usize {
        self.inner.listeners.load(Ordering::Relaxed)
    }

    /// Number of topic listener connections now.
    pub fn topic_listeners(&self) -> usize {
        self.inner.topic_listeners.load(Ordering::Relaxed)
    }

    /// Topic listeners closed so far because their queue was full.
    pub fn slow_listeners_closed(&self) -> usize {
        self.inner.slow_closed.load(Ordering::Relaxed)
    }

    /// Ids followed now, summed over all watchers.
    pub fn presence_watches(&self) -> usize {
        self.inner.watches.load(Ordering::Relaxed)
    }

    /// Tells `id`'s watchers that it went on- or offline.
    fn notify(&self, entry: &mut Entry, id: Id, online: bool, wakers: &mut Wakers) {
        for w in &entry.watchers {
            match w.push(Item::Presence { id, online }, true) {
                Push::Queued(waker) => wakers.add(waker),
                Push::Full(waker) => {
                    self.inner.slow_closed.fetch_add(1, Ordering::Relaxed);
                    wakers.add(waker);
                }
                Push::Closed => {}
            }
        }
    }

    /// The last listener of `id` left: reset its count, tell its watchers, forget it if unused.
    fn went_offline(&self, shard: &mut HashMap<Id, Entry>, id: Id, wakers: &mut Wakers) {
        let Some(entry) = shard.get_mut(&id) else {
            return;
        };
        entry.slot = Slot::Empty;
        entry.seq = 0;
        if let Some(h) = &mut entry.history {
            h.drop_requests();
        }
        if let (Some(m), true) = (&self.inner.mailboxes, self.windows()) {
            // A window is kept while someone listens here; the next listener reads the mailbox
            // again.
            if let Some(mut h) = entry.history.take() {
                h.clear(&m.budget);
            }
        }
        self.inner.listeners.fetch_sub(1, Ordering::Relaxed);
        if !entry.remote {
            self.notify(entry, id, false, wakers);
        }
        self.changed(id, wakers);
        if entry.is_unused() {
            self.forget(shard, id);
        }
    }

    fn remove(&self, id: Id, mailbox: &Arc<Mailbox>) {
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        let Some(entry) = shard.get_mut(&id) else {
            return;
        };
        let now_empty = match &mut entry.slot {
            Slot::Single(m) => Arc::ptr_eq(m, mailbox),
            Slot::Topic(list) => {
                let before = list.len();
                list.retain(|m| !Arc::ptr_eq(m, mailbox));
                if list.len() < before {
                    self.inner.topic_listeners.fetch_sub(1, Ordering::Relaxed);
                }
                list.is_empty() && before > 0
            }
            Slot::Empty => false,
        };
        if now_empty {
            self.went_offline(&mut shard, id, &mut wakers);
        }
    }

    fn watch(&self, id: Id, mailbox: &Arc<Mailbox>) {
        let mut wakers = Wakers::default();
        let mut shard = self.shard(id);
        let entry = shard.entry(id).or_default();
        if !entry.watchers.iter().any(|w| Arc::ptr_eq(w, mailbox)) {
            entry.watchers.push(mailbox.clone());
            self.inner.watches.fetch_add(1, Ordering::Relaxed);
        }
        // The current state, queued under the same lock as the changes, so none is missed.
        let online = entry.present();
        match mailbox.push(Item::Presence { id, online }, true) {
            Push::Queued(w) => wakers.add(w),
            Push::Full(w) => {
                self.inner.slow_closed.fetch_add(1, Ordering::Relaxed);
                wakers.add(w);
            }
            Push::Closed => {}
        }
    }

    fn unwatch(&self, id: Id, mailbox: &Arc<Mailbox>) {
        let mut shard = self.shard(id);
        let Some(entry) = shard.get_mut(&id) else {
            return;
        };
        let before = entry.watchers.len();
        entry.watchers.retain(|w| !Arc::ptr_eq(w, mailbox));
        if entry.watchers.len() < before {
            self.inner.watches.fetch_sub(1, Ordering::Relaxed);
        }
        if entry.is_unused() {
            self.forget(&mut shard, id);
        }
    }
}

/// Brings `entry`'s window up to `sync`: made from it when the window is new (`sync` read
/// everything), else trimmed as the mailbox elsewhere was and given the records after its last
/// seq. `false` when `sync` was read after more than the window has (the window was given back
/// and made again meanwhile).
fn merge(entry: &mut Entry, m: &Mailboxes, sync: MailboxSync, now_ms: u64) -> bool {
    match &mut entry.history {
        None if sync.after == 0 => {
            // A window has no hole but below its first record: seqs missing between two records
            // (trimmed while the mailbox was read in pages) are gone, and said so.
            let mut records = sync.records;
            let mut trimmed = sync.trimmed_through;
            if let Some(i) = records.windows(2).rposition(|w| w[1].seq != w[0].seq + 1) {
                records.drain(..=i);
            }
            if let Some(first) = records.first() {
                trimmed = trimmed.max(first.seq - 1);
            }
            let (h, dropped) = History::restore(&m.config, &m.budget, trimmed, records, now_ms);
            m.dropped.fetch_add(dropped.dropped, Ordering::Relaxed);
            entry.history = Some(h);
            true
        }
        Some(h) if h.last_seq() >= sync.after => {
            let a = h.trim_through(&m.budget, sync.trimmed_through);
            m.dropped.fetch_add(a.dropped, Ordering::Relaxed);
            for r in sync.records {
                let seq = r.seq;
                if seq <= h.last_seq() {
                    continue;
                }
                if seq > h.last_seq() + 1 {
                    // A seq the mailbox elsewhere no longer has between two it has (it trims from
                    // the front only, so never): a window can only say a gap below what it
                    // keeps, so it says one through it.
                    let _ = h.trim_through(&m.budget, seq - 1);
                }
                if let Mirror::Kept(a) = h.mirror(&m.config, &m.budget, r, now_ms) {
                    m.dropped.fetch_add(a.dropped, Ordering::Relaxed);
                }
            }
            true
        }
        _ => false,
    }
}

/// Locks, ignoring poisoning: the guarded data stays consistent because no code that holds these
/// locks can panic midway.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One listener's bounded queue.
#[derive(Debug)]
struct Mailbox {
    state: Mutex<MailboxState>,
    limit: usize,
    envelope: bool,
}

#[derive(Debug, Default)]
struct MailboxState {
    queue: VecDeque<Item>,
    waker: Option<Waker>,
    replaced: bool,
    /// The queue overflowed where that closes the listener (topics, presence).
    overflowed: bool,
    /// The id's mailbox may have something for this listener's cursor.
    signal: bool,
    /// The mailbox this listener reads was lost where it was kept (a cluster's engine restarted
    /// without its data): the listener is closed to start again.
    lost: bool,
}

enum Push {
    Queued(Option<Waker>),
    /// Full; with `overflow_closes`, the listener is now marked to close (and woken).
    Full(Option<Waker>),
    Closed,
}

impl Mailbox {
    fn new(limit: usize, envelope: bool) -> Self {
        Mailbox {
            state: Mutex::new(MailboxState::default()),
            limit,
            envelope,
        }
    }

    fn push(&self, item: Item, overflow_closes: bool) -> Push {
        let mut s = lock(&self.state);
        if s.replaced || s.overflowed {
            return Push::Closed;
        }
        if s.queue.len() >= self.limit {
            if overflow_closes {
                s.overflowed = true;
                s.queue.clear();
                return Push::Full(s.waker.take());
            }
            return Push::Full(None);
        }
        s.queue.push_back(item);
        Push::Queued(s.waker.take())
    }

    fn close(&self) -> Option<Waker> {
        let mut s = lock(&self.state);
        s.replaced = true;
        s.waker.take()
    }

    /// The id's mailbox has news for this listener.
    fn signal(&self) -> Option<Waker> {
        let mut s = lock(&self.state);
        s.signal = true;
        s.waker.take()
    }
}

/// What a listener finds in its queue.
#[derive(Debug)]
pub enum Pop {
    /// The next item.
    Item(Item),
    /// Nothing now.
    Empty,
    /// Another connection became the listener, and everything queued before has been taken.
    Replaced,
    /// The queue overflowed on a topic or with presence events: close the listener as too slow.
    Overflowed,
    /// The mailbox this listener read is gone where it was kept (a cluster's engine restarted
    /// without its data, its numbering with it): close the listener, which may start again.
    Lost,
    /// Messages `from..=to` of a mailbox id were dropped before this listener read them.
    Gap {
        /// First seq lost.
        from: u64,
        /// Last seq lost.
        to: u64,
    },
}

/// A connection's place as a listener of one id. Dropping it stops listening (unless it was
/// replaced already) and following presence.
#[derive(Debug)]
pub struct ListenerHandle {
    registry: Registry,
    id: Id,
    mailbox: Arc<Mailbox>,
    /// Ids whose presence this listener follows.
    watching: Vec<Id>,
    /// On a mailbox id: the next seq to read.
    cursor: Option<AtomicU64>,
}

impl ListenerHandle {
    /// The id listened on.
    pub fn id(&self) -> Id {
        self.id
    }

    /// Takes the next queued item: requests and presence events first, then what the id's
    /// mailbox holds for this listener.
    pub fn pop(&self) -> Pop {
        {
            let mut s = lock(&self.mailbox.state);
            if s.overflowed {
                return Pop::Overflowed;
            }
            if s.lost {
                return Pop::Lost;
            }
            if let Some(m) = s.queue.pop_front() {
                return Pop::Item(m);
            }
            if s.replaced {
                return Pop::Replaced;
            }
            if self.cursor.is_none() {
                return Pop::Empty;
            }
            // Cleared before the mailbox is read: news arriving after the read sets it again.
            s.signal = false;
        }
        let Some(cursor) = &self.cursor else {
            return Pop::Empty;
        };
        let mut shard = self.registry.shard(self.id);
        let Some(h) = shard.get_mut(&self.id).and_then(|e| e.history.as_mut()) else {
            return Pop::Empty;
        };
        let mut at = cursor.load(Ordering::Relaxed);
        let read = h.read(&mut at);
        cursor.store(at, Ordering::Relaxed);
        if h.readable(at) {
            lock(&self.mailbox.state).signal = true;
        }
        match read {
            Read::Gap { from, to } => Pop::Gap { from, to },
            Read::Message { seq, from, payload } => Pop::Item(Item::Message {
                seq,
                id: self.id,
                from,
                payload,
            }),
            Read::Request {
                seq,
                payload,
                reply,
                timeout_ms,
            } => Pop::Item(Item::Request {
                seq,
                id: self.id,
                timeout_ms,
                payload,
                reply,
            }),
            Read::Empty => Pop::Empty,
        }
    }

    /// Ready when [`ListenerHandle::pop`] has something to say; otherwise the waker is kept and
    /// woken when an item arrives or the listener is replaced.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.mailbox.state);
        if !s.queue.is_empty() || s.replaced || s.overflowed || s.signal || s.lost {
            return Poll::Ready(());
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Number of ids followed.
    pub fn watching(&self) -> usize {
        self.watching.len()
    }

    /// How many of `ids` are not followed yet.
    pub fn new_watches(&self, ids: &[Id]) -> usize {
        ids.iter().filter(|id| !self.watching.contains(id)).count()
    }

    /// Follows `id`'s presence: its current state is queued at once as an [`Item::Presence`],
    /// then each change.
    pub fn watch(&mut self, id: Id) {
        self.registry.watch(id, &self.mailbox);
        if !self.watching.contains(&id) {
            self.watching.push(id);
        }
    }

    /// Stops following `id`.
    pub fn unwatch(&mut self, id: Id) {
        if let Some(i) = self.watching.iter().position(|w| *w == id) {
            self.watching.swap_remove(i);
            self.registry.unwatch(id, &self.mailbox);
        }
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.watching) {
            self.registry.unwatch(id, &self.mailbox);
        }
        self.registry.remove(self.id, &self.mailbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u32) -> Id {
        Id::new(v).unwrap()
    }

    /// A presence event's id and state.
    fn presence(p: Pop) -> (u32, bool) {
        match p {
            Pop::Item(Item::Presence { id, online }) => (id.get(), online),
            other => panic!("expected a presence event, got {other:?}"),
        }
    }

    fn payload(p: Pop) -> Bytes {
        match p {
            Pop::Item(Item::Message { payload, .. }) => payload,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn deliver_queue_replace_remove() {
        let r = Registry::new(2, IdSet::default());
        assert_eq!(
            r.deliver(id(1), Bytes::new(), None, None),
            Err(DeliveryError::NoListener)
        );
        let a = r.listen(id(1), false);
        assert_eq!(r.listeners(), 1);
        r.deliver(id(1), Bytes::from_static(b"x"), None, None).unwrap();
        r.deliver(id(1), Bytes::from_static(b"y"), None, None).unwrap();
        assert_eq!(
            r.deliver(id(1), Bytes::new(), None, None),
            Err(DeliveryError::QueueFull)
        );
        let b = r.listen(id(1), false);
        assert_eq!(r.listeners(), 1);
        // The replaced listener still gets what was queued for it, then learns it was replaced.
        assert_eq!(payload(a.pop()), Bytes::from_static(b"x"));
        assert_eq!(payload(a.pop()), Bytes::from_static(b"y"));
        assert!(matches!(a.pop(), Pop::Replaced));
        r.deliver(id(1), Bytes::from_static(b"z"), None, None).unwrap();
        drop(a);
        assert!(
            r.is_listened(id(1)),
            "dropping the replaced handle keeps the new listener"
        );
        match b.pop() {
            // The count goes on across the replacement: the old listener had 1 and 2.
            Pop::Item(Item::Message { seq, payload, .. }) => assert_eq!((seq, &payload[..]), (3, &b"z"[..])),
            other => panic!("{other:?}"),
        }
        drop(b);
        assert!(!r.is_listened(id(1)));
        assert_eq!(r.listeners(), 0);
    }

    #[test]
    fn topics_fan_out_and_drop_the_slow() {
        let mut topics = IdSet::default();
        topics.add_item("100-199").unwrap();
        let r = Registry::new(1, topics);
        let t = id(150);
        assert_eq!(
            r.deliver(t, Bytes::new(), None, None),
            Err(DeliveryError::NoTopicListener)
        );
        let a = r.listen(t, false);
        let b = r.listen(t, true);
        assert_eq!(r.topic_listeners(), 2);
        assert_eq!(
            r.deliver(t, Bytes::from_static(b"m"), None, None),
            Ok(Delivered::Topic { recipients: 2 })
        );
        // a takes its message, b does not: the next message closes b as too slow.
        assert!(matches!(a.pop(), Pop::Item(Item::Frames(_))));
        assert_eq!(
            r.deliver(t, Bytes::from_static(b"n"), None, None),
            Ok(Delivered::Topic { recipients: 1 })
        );
        assert!(matches!(b.pop(), Pop::Overflowed));
        assert_eq!(r.slow_listeners_closed(), 1);
        assert_eq!(r.topic_listeners(), 1);
        drop(b);
        assert_eq!(r.topic_listeners(), 1);
        let (tx, _rx) = crate::reply::reply_channel();
        assert_eq!(
            r.deliver(t, Bytes::new(), None, Some((tx, 1))),
            Err(DeliveryError::ReplyToTopic)
        );
    }

    #[test]
    fn presence_counts_listeners_on_other_brokers() {
        let r = Registry::new(8, IdSet::default());
        let mut w = r.listen(id(1), true);
        w.watch(id(2));
        assert_eq!(presence(w.pop()), (2, false));
        r.set_remote(id(2), true);
        assert_eq!(presence(w.pop()), (2, true), "listened elsewhere");
        assert!(!r.is_listened(id(2)), "routing still sees no local listener");
        let l = r.listen(id(2), false);
        r.set_remote(id(2), false);
        drop(l);
        assert_eq!(
            presence(w.pop()),
            (2, false),
            "one offline, when the last listener anywhere left"
        );
        assert!(matches!(w.pop(), Pop::Empty), "no event for the move");
        r.set_remote(id(3), false);
        drop(w);
        assert_eq!(r.listeners(), 0);
        // Nothing is kept for ids nobody watches or listens on.
        r.set_remote(id(4), true);
        r.set_remote(id(4), false);
        assert!(r.shard(id(4)).get(&id(4)).is_none());
    }

    #[test]
    fn evict_spares_a_newer_listener() {
        let r = Registry::new(8, IdSet::default());
        let a = r.listen(id(7), false);
        let seen = r.listen_generation(id(7));
        let b = r.listen(id(7), false);
        assert!(!r.evict_if(id(7), Some(seen)), "b came after the decision");
        assert!(matches!(b.pop(), Pop::Empty));
        assert!(r.evict_if(id(7), Some(r.listen_generation(id(7)))));
        assert!(matches!(b.pop(), Pop::Replaced));
        drop((a, b));
        assert_eq!(r.listeners(), 0);
        // A topic's listeners are never evicted (nor lost by trying).
        let mut topics = IdSet::default();
        topics.add_item("100").unwrap();
        let r = Registry::new(8, topics);
        let t = r.listen(id(100), false);
        assert!(!r.evict(id(100)));
        assert_eq!(r.topic_listeners(), 1);
        assert!(r.deliver(id(100), Bytes::from_static(b"x"), None, None).is_ok());
        drop(t);
        assert_eq!(r.listeners(), 0);
    }

    #[test]
    fn presence_state_then_changes() {
        let r = Registry::new(8, IdSet::default());
        let mut w = r.listen(id(1), true);
        w.watch(id(2));
        assert_eq!(presence(w.pop()), (2, false));
        let l = r.listen(id(2), false);
        assert_eq!(presence(w.pop()), (2, true));
        let l2 = r.listen(id(2), false);
        assert!(matches!(w.pop(), Pop::Empty), "a replacement is not an event");
        drop(l);
        drop(l2);
        assert_eq!(presence(w.pop()), (2, false));
        assert_eq!(r.presence_watches(), 1);
        drop(w);
        assert_eq!(r.presence_watches(), 0);
        assert_eq!(r.listeners(), 0);
    }
}
