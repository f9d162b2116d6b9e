//! Who listens on which id, and each listener's bounded queue (SPEC §4).
//!
//! The registry is shared by every connection of a broker. It is sharded so that senders to
//! different ids never wait on one lock, and each listener has its own queue lock; neither lock is
//! held while anything else is done. Wake-ups use [`std::task::Waker`], so any runtime (or a plain
//! thread, through a waker that unparks it) can wait on a queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::{HttpError, Id};

/// Number of registry shards (a power of two).
const SHARDS: usize = 64;

/// Why a message could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryError {
    /// Nobody listens on the id.
    NoListener,
    /// The listener's queue is at its limit.
    QueueFull,
}

impl DeliveryError {
    /// The refusal this becomes for the sender of a message to `id`.
    pub fn to_http(self, id: Id) -> HttpError {
        match self {
            DeliveryError::NoListener => HttpError::NoListener(id),
            DeliveryError::QueueFull => HttpError::QueueFull(id),
        }
    }
}

/// The listeners of one broker, by id. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

type Shard = Mutex<HashMap<Id, Arc<Mailbox>>>;

#[derive(Debug)]
struct Inner {
    shards: Box<[Shard]>,
    listeners: AtomicUsize,
    queue_limit: usize,
}

impl Registry {
    /// An empty registry whose listeners queue at most `queue_limit` messages each.
    pub fn new(queue_limit: usize) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Registry {
            inner: Arc::new(Inner {
                shards,
                listeners: AtomicUsize::new(0),
                queue_limit: queue_limit.max(1),
            }),
        }
    }

    fn shard(&self, id: Id) -> MutexGuard<'_, HashMap<Id, Arc<Mailbox>>> {
        // Fibonacci hashing spreads consecutive ids over the shards.
        let h = (u64::from(id.get()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize;
        lock(&self.inner.shards[h % SHARDS])
    }

    /// Makes the caller the listener of `id`. A previous listener is told it was replaced (it
    /// still receives what was queued for it before, then closes).
    pub fn listen(&self, id: Id) -> ListenerHandle {
        let mailbox = Arc::new(Mailbox::new(self.inner.queue_limit));
        let old = self.shard(id).insert(id, mailbox.clone());
        match old {
            Some(old) => old.close(),
            None => {
                self.inner.listeners.fetch_add(1, Ordering::Relaxed);
            }
        }
        ListenerHandle {
            registry: self.clone(),
            id,
            mailbox,
        }
    }

    /// Queues `payload` for the listener of `id`.
    pub fn deliver(&self, id: Id, payload: Bytes) -> Result<(), DeliveryError> {
        let mailbox = self.shard(id).get(&id).cloned().ok_or(DeliveryError::NoListener)?;
        mailbox.push(payload)
    }

    /// Whether someone listens on `id` now.
    pub fn is_listened(&self, id: Id) -> bool {
        self.shard(id).contains_key(&id)
    }

    /// Number of ids listened on now.
    pub fn listeners(&self) -> usize {
        self.inner.listeners.load(Ordering::Relaxed)
    }

    fn remove(&self, id: Id, mailbox: &Arc<Mailbox>) {
        let mut shard = self.shard(id);
        if shard.get(&id).is_some_and(|m| Arc::ptr_eq(m, mailbox)) {
            shard.remove(&id);
            self.inner.listeners.fetch_sub(1, Ordering::Relaxed);
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
}

#[derive(Debug, Default)]
struct MailboxState {
    queue: VecDeque<Bytes>,
    waker: Option<Waker>,
    replaced: bool,
}

impl Mailbox {
    fn new(limit: usize) -> Self {
        Mailbox {
            state: Mutex::new(MailboxState::default()),
            limit,
        }
    }

    fn push(&self, payload: Bytes) -> Result<(), DeliveryError> {
        let waker = {
            let mut s = lock(&self.state);
            if s.replaced {
                return Err(DeliveryError::NoListener);
            }
            if s.queue.len() >= self.limit {
                return Err(DeliveryError::QueueFull);
            }
            s.queue.push_back(payload);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    fn close(&self) {
        let waker = {
            let mut s = lock(&self.state);
            s.replaced = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// What a listener finds in its queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop {
    /// The next message.
    Message(Bytes),
    /// Nothing now.
    Empty,
    /// Another connection became the listener, and everything queued before has been taken.
    Replaced,
}

/// A connection's place as the listener of one id. Dropping it stops listening (unless it was
/// replaced already).
#[derive(Debug)]
pub struct ListenerHandle {
    registry: Registry,
    id: Id,
    mailbox: Arc<Mailbox>,
}

impl ListenerHandle {
    /// The id listened on.
    pub fn id(&self) -> Id {
        self.id
    }

    /// Takes the next queued message.
    pub fn pop(&self) -> Pop {
        let mut s = lock(&self.mailbox.state);
        match s.queue.pop_front() {
            Some(m) => Pop::Message(m),
            None if s.replaced => Pop::Replaced,
            None => Pop::Empty,
        }
    }

    /// Ready when [`ListenerHandle::pop`] has something to say; otherwise the waker is kept and
    /// woken when a message arrives or the listener is replaced.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.mailbox.state);
        if !s.queue.is_empty() || s.replaced {
            return Poll::Ready(());
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.registry.remove(self.id, &self.mailbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u32) -> Id {
        Id::new(v).unwrap()
    }

    #[test]
    fn deliver_queue_replace_remove() {
        let r = Registry::new(2);
        assert_eq!(r.deliver(id(1), Bytes::new()), Err(DeliveryError::NoListener));
        let a = r.listen(id(1));
        assert_eq!(r.listeners(), 1);
        r.deliver(id(1), Bytes::from_static(b"x")).unwrap();
        r.deliver(id(1), Bytes::from_static(b"y")).unwrap();
        assert_eq!(r.deliver(id(1), Bytes::new()), Err(DeliveryError::QueueFull));
        let b = r.listen(id(1));
        assert_eq!(r.listeners(), 1);
        // The replaced listener still gets what was queued for it, then learns it was replaced.
        assert_eq!(a.pop(), Pop::Message(Bytes::from_static(b"x")));
        assert_eq!(a.pop(), Pop::Message(Bytes::from_static(b"y")));
        assert_eq!(a.pop(), Pop::Replaced);
        r.deliver(id(1), Bytes::from_static(b"z")).unwrap();
        drop(a);
        assert!(
            r.is_listened(id(1)),
            "dropping the replaced handle keeps the new listener"
        );
        assert_eq!(b.pop(), Pop::Message(Bytes::from_static(b"z")));
        drop(b);
        assert!(!r.is_listened(id(1)));
        assert_eq!(r.listeners(), 0);
    }
}
