//! The one-shot channel between a `POST …?reply=MS` waiting for its answer and the listener that
//! answers it (docs/patterns.md §4).
//!
//! The waiting side holds a [`PendingReply`] (polled like any other wake-up, so it holds no
//! thread); the [`ReplySender`] travels with the request into the listener's queue and then into
//! the listener's table of open requests. Dropping the sender without answering (the listener went
//! away, its queue was dropped) tells the waiting side [`ReplyOutcome::Gone`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

/// A listener's answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyMsg {
    /// The HTTP status of the response to the waiting `POST`.
    pub status: u16,
    /// Its `Content-Type`; `application/octet-stream` when `None`.
    pub content_type: Option<String>,
    /// Its body.
    pub body: Bytes,
}

/// How a request ended, as the waiting side learns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// The listener answered.
    Replied(ReplyMsg),
    /// The listener went away (or the request was dropped) before answering.
    Gone,
}

#[derive(Debug, Default)]
struct State {
    outcome: Option<ReplyOutcome>,
    waker: Option<Waker>,
    receiver_alive: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new channel: the sender goes with the request, the pending side stays with the `POST`.
pub fn reply_channel() -> (ReplySender, PendingReply) {
    let shared = Arc::new(Mutex::new(State {
        receiver_alive: true,
        ..State::default()
    }));
    (
        ReplySender {
            shared: shared.clone(),
            done: false,
        },
        PendingReply { shared },
    )
}

/// The answering side of a request. Dropping it unanswered tells the waiting side
/// [`ReplyOutcome::Gone`].
#[derive(Debug)]
pub struct ReplySender {
    shared: Arc<Mutex<State>>,
    done: bool,
}

impl ReplySender {
    /// Answers; `false` when nobody waits any more (the request timed out).
    pub fn send(mut self, reply: ReplyMsg) -> bool {
        self.done = true;
        self.finish(ReplyOutcome::Replied(reply))
    }

    /// Whether the `POST` still waits for this answer.
    pub fn is_waiting(&self) -> bool {
        lock(&self.shared).receiver_alive
    }

    fn finish(&self, outcome: ReplyOutcome) -> bool {
        let (alive, waker) = {
            let mut s = lock(&self.shared);
            s.outcome = Some(outcome);
            (s.receiver_alive, s.waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        alive
    }
}

impl Drop for ReplySender {
    fn drop(&mut self) {
        if !self.done {
            self.finish(ReplyOutcome::Gone);
        }
    }
}

/// The waiting side of a request.
#[derive(Debug)]
pub struct PendingReply {
    shared: Arc<Mutex<State>>,
}

impl PendingReply {
    /// Ready once the outcome is known; otherwise `cx`'s waker is woken when it is.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.shared);
        if s.outcome.is_some() {
            return Poll::Ready(());
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The outcome, once known.
    pub fn try_take(&self) -> Option<ReplyOutcome> {
        lock(&self.shared).outcome.take()
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.receiver_alive = false;
        s.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_gone_and_timed_out() {
        let (tx, rx) = reply_channel();
        assert_eq!(rx.try_take(), None);
        let msg = ReplyMsg {
            status: 200,
            content_type: None,
            body: Bytes::from_static(b"ok"),
        };
        assert!(tx.send(msg.clone()));
        assert_eq!(rx.try_take(), Some(ReplyOutcome::Replied(msg.clone())));

        let (tx, rx) = reply_channel();
        drop(tx);
        assert_eq!(rx.try_take(), Some(ReplyOutcome::Gone));

        let (tx, rx) = reply_channel();
        assert!(tx.is_waiting());
        drop(rx);
        assert!(!tx.is_waiting());
        assert!(!tx.send(msg));
    }
}
