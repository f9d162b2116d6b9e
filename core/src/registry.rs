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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::auth::IdSet;
use crate::envelope;
use crate::reply::ReplySender;
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
}

impl Entry {
    fn is_unused(&self) -> bool {
        matches!(self.slot, Slot::Empty) && self.watchers.is_empty()
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
}

/// Wake-ups collected while locks are held, made once they are released.
#[derive(Default)]
struct Wakers(Vec<Waker>);

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
    }
}

impl Registry {
    /// An empty registry whose listeners queue at most `queue_limit` items each, and whose ids in
    /// `topics` take any number of listeners.
    pub fn new(queue_limit: usize, topics: IdSet) -> Self {
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
    /// before, then closes); a topic takes any number.
    pub fn listen(&self, id: Id, envelope: bool) -> ListenerHandle {
        let mailbox = Arc::new(Mailbox::new(self.inner.queue_limit, envelope));
        let mut wakers = Wakers::default();
        {
            let mut shard = self.shard(id);
            let entry = shard.entry(id).or_default();
            let was_online = entry.online();
            if self.is_topic(id) {
                match &mut entry.slot {
                    Slot::Topic(list) => list.push(mailbox.clone()),
                    slot => *slot = Slot::Topic(vec![mailbox.clone()]),
                }
                self.inner.topic_listeners.fetch_add(1, Ordering::Relaxed);
            } else if let Slot::Single(old) = std::mem::replace(&mut entry.slot, Slot::Single(mailbox.clone())) {
                wakers.add(old.close());
            }
            if !was_online {
                self.inner.listeners.fetch_add(1, Ordering::Relaxed);
                self.notify(entry, id, true, &mut wakers);
            }
        }
        ListenerHandle {
            registry: self.clone(),
            id,
            mailbox,
            watching: Vec::new(),
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
        self.inner.listeners.fetch_sub(1, Ordering::Relaxed);
        self.notify(entry, id, false, wakers);
        if entry.is_unused() {
            shard.remove(&id);
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
        let online = entry.online();
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
            shard.remove(&id);
        }
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
}

impl ListenerHandle {
    /// The id listened on.
    pub fn id(&self) -> Id {
        self.id
    }

    /// Takes the next queued item.
    pub fn pop(&self) -> Pop {
        let mut s = lock(&self.mailbox.state);
        if s.overflowed {
            return Pop::Overflowed;
        }
        match s.queue.pop_front() {
            Some(m) => Pop::Item(m),
            None if s.replaced => Pop::Replaced,
            None => Pop::Empty,
        }
    }

    /// Ready when [`ListenerHandle::pop`] has something to say; otherwise the waker is kept and
    /// woken when an item arrives or the listener is replaced.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.mailbox.state);
        if !s.queue.is_empty() || s.replaced || s.overflowed {
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
    fn presence_state_then_changes() {
        let r = Registry::new(8, IdSet::default());
        let mut w = r.listen(id(1), true);
        w.watch(id(2));
        let presence = |p: Pop| match p {
            Pop::Item(Item::Presence { id, online }) => (id.get(), online),
            other => panic!("{other:?}"),
        };
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
