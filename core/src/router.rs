//! The routing seam: where a message goes, decided now or later, here or elsewhere.
//!
//! A [`Connection`](crate::Connection) emits [`Event::Deliver`](crate::Event::Deliver) and waits
//! for [`Connection::handle_delivered`](crate::Connection::handle_delivered);
//! [`Session`](crate::Session) passes the message to the broker's [`Router`] with a
//! [`RouteReply`] to answer through, at once or from another task or thread. The
//! [`LocalRouter`] queues into this broker's [`Registry`]; a cluster router may ask a remote
//! engine first and answer when it replies, and the core never waits for it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::registry::{Delivered, Registry};
use crate::reply::ReplySender;
use crate::{HttpError, Id};

/// One message to route.
#[derive(Debug)]
pub struct RouteRequest {
    /// The target id.
    pub id: Id,
    /// The message (shared, never copied per target).
    pub payload: Bytes,
    /// The listened id of the envelope listener that sent it, if one did.
    pub from: Option<Id>,
    /// For a request-reply: where the listener's answer goes, and how long the sender waits
    /// (milliseconds).
    pub reply: Option<(ReplySender, u64)>,
    /// When the message was received: wall-clock milliseconds since the Unix epoch (a mailbox
    /// keeps it for its TTL).
    pub at_ms: u64,
}

/// Routes messages. An implementation that must ask elsewhere moves the [`RouteReply`] to where
/// the answer arrives and calls [`RouteReply::answer`] there.
///
/// ```
/// use fedbroker_core::{HttpError, LocalRouter, RouteReply, RouteRequest, Router};
///
/// /// Refuses messages to ids above 1000, routes the rest on this broker.
/// struct SmallIdsOnly(LocalRouter);
///
/// impl Router for SmallIdsOnly {
///     fn route(&self, request: RouteRequest, reply: RouteReply) {
///         if request.id.get() > 1000 {
///             return reply.answer(Err(HttpError::NoListener(request.id)));
///         }
///         self.0.route(request, reply)
///     }
/// }
/// ```
pub trait Router: Send + Sync + 'static {
    /// Routes `request`, answering through `reply` (now or later).
    fn route(&self, request: RouteRequest, reply: RouteReply);

    /// Called before a listener registers on mailbox id `id` (with `since`, when it asked for
    /// one): a router whose mailboxes are kept elsewhere (a cluster's engine) reads what the
    /// mailbox holds and answers it, now or later; the registration waits for the answer. The
    /// default answers at once: this broker's own mailbox is the whole of it. A router that
    /// wraps another must forward this call too: with mailboxes kept elsewhere
    /// ([`Registry::mirror_mailboxes`]), a listener registered without their contents is refused
    /// `503`.
    fn prepare_listen(&self, id: Id, since: Option<u64>, reply: ListenReply) {
        let _ = (id, since);
        reply.answer(Ok(None));
    }

    /// What the router knows of the engine it routes through, for the statistics (a router
    /// that routes only here has nothing to say).
    fn gauges(&self) -> RouterGauges {
        RouterGauges::default()
    }
}

/// A cluster router's state, shown in the statistics (`cluster_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterGauges {
    /// Whether the router routes through an engine shared with other brokers.
    pub clustered: bool,
    /// Whether it is connected to that engine now.
    pub connected: bool,
    /// Ids it has subscribed to on the engine now.
    pub subscriptions: usize,
}

/// Routes into one broker's [`Registry`], answering at once.
#[derive(Clone, Debug)]
pub struct LocalRouter {
    registry: Registry,
}

impl LocalRouter {
    /// A router over `registry` (usually [`crate::Broker::registry`]).
    pub fn new(registry: Registry) -> Self {
        LocalRouter { registry }
    }

    /// The registry it routes into.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Router for LocalRouter {
    fn route(&self, request: RouteRequest, reply: RouteReply) {
        let id = request.id;
        if self.registry.has_mailbox(id) {
            let RouteRequest {
                payload,
                from,
                reply: asks,
                at_ms,
                ..
            } = request;
            return self.registry.deliver_mailbox(id, payload, from, asks, at_ms, reply);
        }
        let result = self
            .registry
            .deliver(id, request.payload, request.from, request.reply)
            .map_err(|e| e.to_http(id));
        reply.answer(result);
    }
}

type Answer = Result<Delivered, HttpError>;

/// One answer handed from wherever it is decided to the connection waiting for it.
#[derive(Debug)]
struct Slot<T> {
    state: Mutex<(Option<T>, Option<Waker>)>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            state: Mutex::new((None, None)),
        }
    }
}

fn lock<T>(slot: &Slot<T>) -> MutexGuard<'_, (Option<T>, Option<Waker>)> {
    slot.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn set<T>(slot: &Slot<T>, value: T) {
    let waker = {
        let mut s = lock(slot);
        s.0 = Some(value);
        s.1.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

fn poll_slot<T>(slot: &Slot<T>, done: bool, cx: &mut Context<'_>) -> Poll<()> {
    if done {
        return Poll::Pending;
    }
    let mut s = lock(slot);
    if s.0.is_some() {
        return Poll::Ready(());
    }
    if !s.1.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        s.1 = Some(cx.waker().clone());
    }
    Poll::Pending
}

/// The way back for one routing answer. Dropping it unanswered answers
/// [`HttpError::RouteUnavailable`].
#[derive(Debug)]
pub struct RouteReply {
    slot: Arc<Slot<Answer>>,
    answered: bool,
}

/// The waiting side of a [`RouteReply`].
#[derive(Debug)]
pub struct PendingRoute {
    slot: Arc<Slot<Answer>>,
    /// Taken already.
    done: bool,
}

/// A reply channel for one routing answer, reusing a finished one's allocation when nobody else
/// holds it (a connection routes one message per request).
pub fn route_channel(spare: Option<PendingRoute>) -> (RouteReply, PendingRoute) {
    let slot = match spare {
        Some(p) if Arc::strong_count(&p.slot) == 1 => {
            *lock(&p.slot) = (None, None);
            p.slot
        }
        _ => Arc::new(Slot::default()),
    };
    (
        RouteReply {
            slot: slot.clone(),
            answered: false,
        },
        PendingRoute { slot, done: false },
    )
}

impl RouteReply {
    /// Delivers the answer (and wakes the connection waiting for it).
    pub fn answer(mut self, result: Result<Delivered, HttpError>) {
        self.answered = true;
        set(&self.slot, result);
    }
}

impl Drop for RouteReply {
    fn drop(&mut self) {
        if !self.answered {
            set(&self.slot, Err(HttpError::RouteUnavailable));
        }
    }
}

/// The answer in `slot`, once given and not taken yet (`done` then).
fn take<T>(slot: &Slot<T>, done: &mut bool) -> Option<T> {
    if *done {
        return None;
    }
    let a = lock(slot).0.take();
    *done = a.is_some();
    a
}

impl PendingRoute {
    /// The answer, once given (once only).
    pub fn try_take(&mut self) -> Option<Answer> {
        take(&self.slot, &mut self.done)
    }

    /// Whether the answer was taken.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Ready once the answer is given; otherwise keeps the waker.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        poll_slot(&self.slot, self.done, cx)
    }
}

/// What a mailbox kept elsewhere (a cluster's engine) holds for one id, read by a router before
/// a listener registers on it ([`Router::prepare_listen`]): this broker's mailbox of the id
/// becomes a window onto it ([`Registry::listen_synced`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailboxSync {
    /// The records were read after this seq (the window's last seq when the read began; 0 for
    /// everything).
    pub after: u64,
    /// Everything up to this seq that is not in `records` is gone from the mailbox (trimmed,
    /// expired).
    pub trimmed_through: u64,
    /// The last seq given on the id, as the mailbox elsewhere said when read (for the router's
    /// own checks: the window's last seq comes from `records` and `trimmed_through`, which reach
    /// it).
    pub last: u64,
    /// The records after `after`, in seq order (`payload: None`: a seq taken by a request).
    pub records: Vec<crate::mailbox::Restored>,
}

type Prepared = Result<Option<MailboxSync>, HttpError>;

/// The way back for [`Router::prepare_listen`]'s answer. Dropping it unanswered answers
/// [`HttpError::RouteUnavailable`].
#[derive(Debug)]
pub struct ListenReply {
    slot: Arc<Slot<Prepared>>,
    answered: bool,
}

/// The waiting side of a [`ListenReply`].
#[derive(Debug)]
pub struct PendingListen {
    slot: Arc<Slot<Prepared>>,
    done: bool,
}

/// A reply channel for one [`Router::prepare_listen`].
pub fn listen_channel() -> (ListenReply, PendingListen) {
    let slot = Arc::new(Slot::default());
    (
        ListenReply {
            slot: slot.clone(),
            answered: false,
        },
        PendingListen { slot, done: false },
    )
}

impl ListenReply {
    /// Ready: register the listener, with what a mailbox kept elsewhere holds (`Some`), or as
    /// this broker alone knows the id (`None`); or refuse the upgrade (`Err`).
    pub fn answer(mut self, result: Result<Option<MailboxSync>, HttpError>) {
        self.answered = true;
        set(&self.slot, result);
    }
}

impl Drop for ListenReply {
    fn drop(&mut self) {
        if !self.answered {
            set(&self.slot, Err(HttpError::RouteUnavailable));
        }
    }
}

impl PendingListen {
    /// The answer, once given (once only).
    pub fn try_take(&mut self) -> Option<Prepared> {
        take(&self.slot, &mut self.done)
    }

    /// Ready once the answer is given; otherwise keeps the waker.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        poll_slot(&self.slot, self.done, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_dropped_and_reused() {
        let (reply, mut pending) = route_channel(None);
        assert_eq!(pending.try_take(), None);
        reply.answer(Ok(Delivered::Listener));
        assert_eq!(pending.try_take(), Some(Ok(Delivered::Listener)));
        assert_eq!(pending.try_take(), None, "once only");
        let (reply, mut pending) = route_channel(Some(pending));
        drop(reply);
        assert_eq!(pending.try_take(), Some(Err(HttpError::RouteUnavailable)));
    }
}
