//! Mailboxes: a bounded history of the messages sent to an id, numbered by `seq`, that listeners
//! read through a cursor — live, or from an earlier `seq` after a reconnect (`GET /{id}?since=`).
//!
//! ```text
//!   POST ──► append ──► Pending ──store done──► Ready ──► read by the listener's cursor
//!              │  (no store: Ready at once)  └─failed─► Failed (skipped, never sent)
//!              └── full: drop the oldest, or refuse (507) ── expired (TTL) or pushed out:
//!                                                          dropped, a gap for older cursors
//! ```
//!
//! [`History`] is the state of one id: pure, without locks, time passed in as wall-clock
//! milliseconds (a TTL must hold across restarts, so it is wall time, not an `Instant`). The
//! [`Registry`](crate::Registry) keeps one per mailbox id under its shard lock. Durable storage
//! is not done here: the core decides what is kept and hands each decision to a [`Persist`]
//! implementation (the `fedbroker-store` crate, or an embedder's own), which answers through
//! [`Persisted`] once the record is on disk; a message becomes visible to listeners, and its
//! sender is answered, only then.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::auth::IdSet;
use crate::reply::ReplySender;
use crate::Id;

/// Bytes charged per kept message on top of its payload, so that empty messages are bounded too.
pub const ENTRY_OVERHEAD: usize = 64;

/// What to do with a message to a full mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Drop the oldest kept message (counted, and reported as a gap to a listener that had not
    /// read it yet) to make room: the newest messages are kept.
    #[default]
    DropOldest,
    /// Refuse the new message with `507` unless the oldest was already delivered to a listener:
    /// no message nobody has received is ever dropped to make room.
    Refuse,
}

/// Which ids keep a mailbox, and its bounds (`--mailbox`, `--mailbox-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxConfig {
    /// Ids with a mailbox.
    pub ids: IdSet,
    /// Messages kept per id.
    pub max_messages: usize,
    /// Payload bytes (plus [`ENTRY_OVERHEAD`] per message) kept per id.
    pub max_bytes: usize,
    /// Payload bytes (plus overhead) kept over all mailboxes of the broker; beyond, `507`.
    pub max_total_bytes: usize,
    /// How long a message is kept.
    pub ttl: Duration,
    /// What a full mailbox does.
    pub full: FullPolicy,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        MailboxConfig {
            ids: IdSet::default(),
            max_messages: 1000,
            max_bytes: 16 << 20,
            max_total_bytes: 256 << 20,
            ttl: Duration::from_secs(24 * 3600),
            full: FullPolicy::DropOldest,
        }
    }
}

impl MailboxConfig {
    /// The TTL in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The broker-wide byte budget shared by every [`History`].
#[derive(Debug, Default)]
pub struct Budget {
    used: AtomicUsize,
    messages: AtomicUsize,
}

impl Budget {
    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Messages kept now.
    pub fn messages(&self) -> usize {
        self.messages.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize, max: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|t| *t <= max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Where a kept message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Handed to the store, not durable yet: invisible, and holds back every later message.
    Pending,
    /// Durable (or no store): readable.
    Ready,
    /// The store failed to write it: never read, its sender was refused.
    Failed,
}

#[derive(Debug)]
struct Kept {
    at_ms: u64,
    from: Option<Id>,
    /// `None`: a seq used by something not kept (a request awaiting a reply).
    payload: Option<Bytes>,
    state: State,
    /// A request for the listener connected when it was sent, until that listener reads it (or
    /// leaves): its body, where the answer goes, and how long the sender waits (ms).
    request: Option<Box<(Bytes, ReplySender, u64)>>,
}

impl Kept {
    fn charge(&self) -> usize {
        self.payload.as_ref().map_or(0, |p| p.len() + ENTRY_OVERHEAD)
    }
}

/// Why a message could not be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The id's mailbox is full and its policy refuses (`507`).
    Full,
    /// The broker-wide budget is spent (`507`).
    BudgetSpent,
}

/// What an append did besides taking the message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Appended {
    /// The message's seq.
    pub seq: u64,
    /// Messages dropped to make room (or expired on the way).
    pub dropped: u64,
    /// When something was dropped: the store may delete every record up to this seq.
    pub trim_through: Option<u64>,
}

/// What a cursor finds.
#[derive(Debug)]
pub enum Read {
    /// Messages `from..=to` were dropped before this cursor read them; it now points past them.
    Gap {
        /// First seq lost.
        from: u64,
        /// Last seq lost.
        to: u64,
    },
    /// A request awaiting a reply, at the cursor: it is handed over once.
    Request {
        /// Its seq (the reply's `reply_to`).
        seq: u64,
        /// The body.
        payload: Bytes,
        /// Where the answer goes.
        reply: ReplySender,
        /// How long the sender waits, in milliseconds.
        timeout_ms: u64,
    },
    /// The message at the cursor; the cursor moved past it.
    Message {
        /// Its seq.
        seq: u64,
        /// The envelope listener that sent it.
        from: Option<Id>,
        /// The payload.
        payload: Bytes,
    },
    /// Nothing readable yet.
    Empty,
}

/// Equal when of the same kind with the same fields (a request's reply sender aside).
impl PartialEq for Read {
    fn eq(&self, other: &Read) -> bool {
        match (self, other) {
            (Read::Gap { from: a, to: b }, Read::Gap { from: c, to: d }) => (a, b) == (c, d),
            (
                Read::Request {
                    seq: a,
                    payload: p,
                    timeout_ms: t,
                    ..
                },
                Read::Request {
                    seq: b,
                    payload: q,
                    timeout_ms: u,
                    ..
                },
            ) => (a, p, t) == (b, q, u),
            (
                Read::Message {
                    seq: a,
                    from: f,
                    payload: p,
                },
                Read::Message {
                    seq: b,
                    from: g,
                    payload: q,
                },
            ) => (a, f, p) == (b, g, q),
            (Read::Empty, Read::Empty) => true,
            _ => false,
        }
    }
}

/// Why a listener cannot start at the `since` it gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    /// `since` is beyond the last seq given on the id (the mailbox was reset).
    Ahead {
        /// The last seq given.
        last: u64,
    },
}

/// What [`History::mirror`] made of a record numbered elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mirror {
    /// Kept (or dropped at once by the bounds, and said so).
    Kept(Appended),
    /// At or below the last seq here: had already.
    Behind,
    /// Records between the last seq here and this one are missing: read them first.
    Ahead {
        /// The last seq here.
        last: u64,
    },
}

/// The mailbox of one id.
#[derive(Debug, Default)]
pub struct History {
    /// Seq of `entries[0]` (the next seq when empty).
    first_seq: u64,
    entries: VecDeque<Kept>,
    /// Charged bytes of `entries`.
    bytes: usize,
    /// The last seq given.
    last_seq: u64,
    /// Every message up to this seq that is not in `entries` was dropped (gap below).
    dropped_through: u64,
    /// The highest seq handed to a listener.
    delivered_through: u64,
}

impl History {
    /// An empty mailbox whose next seq is `after + 1` (seqs are never reused: after a restart,
    /// or when an id's mailbox was forgotten, numbering goes on above every seq given before).
    pub fn new(after: u64) -> Self {
        History {
            first_seq: after + 1,
            last_seq: after,
            ..History::default()
        }
    }

    /// The last seq given.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Messages kept now.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|k| k.payload.is_some()).count()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes charged now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The highest seq up to which nothing is pending: a live listener starts after it.
    pub fn visible_through(&self) -> u64 {
        match self.entries.iter().position(|k| k.state == State::Pending) {
            Some(i) => self.first_seq + i as u64 - 1,
            None => self.last_seq,
        }
    }

    /// Whether anything is still pending in the store.
    pub fn has_pending(&self) -> bool {
        self.entries.iter().any(|k| k.state == State::Pending)
    }

    /// Drops what is older than the TTL at `now_ms`.
    pub fn expire(&mut self, cfg: &MailboxConfig, budget: &Budget, now_ms: u64) -> Appended {
        let ttl = cfg.ttl_ms();
        let mut out = Appended::default();
        while let Some(front) = self.entries.front() {
            if front.at_ms.saturating_add(ttl) > now_ms {
                break;
            }
            self.drop_front(budget, &mut out);
        }
        out
    }

    fn drop_front(&mut self, budget: &Budget, out: &mut Appended) {
        if let Some(k) = self.entries.pop_front() {
            let c = k.charge();
            self.bytes -= c;
            budget.give(c);
            if k.payload.is_some() {
                budget.messages.fetch_sub(1, Ordering::Relaxed);
                self.dropped_through = self.first_seq;
                out.dropped += 1;
            }
            out.trim_through = Some(self.first_seq);
            self.first_seq += 1;
        }
    }

    fn is_full(&self, cfg: &MailboxConfig, incoming: usize) -> bool {
        self.len() >= cfg.max_messages.max(1) || self.bytes + incoming > cfg.max_bytes
    }

    /// Whether dropping only what was delivered already (or was never a message) from the front
    /// makes room for `charge` more bytes.
    fn room_without_loss(&self, cfg: &MailboxConfig, charge: usize) -> bool {
        let (mut count, mut bytes) = (self.len(), self.bytes);
        let fits = |count: usize, bytes: usize| count < cfg.max_messages.max(1) && bytes + charge <= cfg.max_bytes;
        for (seq, k) in (self.first_seq..).zip(&self.entries) {
            if fits(count, bytes) {
                return true;
            }
            if k.payload.is_some() && seq > self.delivered_through {
                return false;
            }
            if k.payload.is_some() {
                count -= 1;
            }
            bytes -= k.charge();
        }
        fits(count, bytes)
    }

    /// Keeps a message received at `now_ms` (`payload: None` takes a seq for something not kept,
    /// a request). With `pending`, it stays invisible until [`History::settle`].
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        cfg: &MailboxConfig,
        budget: &Budget,
        now_ms: u64,
        from: Option<Id>,
        payload: Option<Bytes>,
        pending: bool,
    ) -> Result<Appended, Refused> {
        let mut out = self.expire(cfg, budget, now_ms);
        let charge = payload.as_ref().map_or(0, |p| p.len() + ENTRY_OVERHEAD);
        if payload.is_some() {
            if charge > cfg.max_bytes {
                return Err(Refused::Full);
            }
            if cfg.full == FullPolicy::Refuse && !self.room_without_loss(cfg, charge) {
                return Err(Refused::Full);
            }
            while self.is_full(cfg, charge) && !self.entries.is_empty() {
                self.drop_front(budget, &mut out);
            }
            // The broker-wide budget: under drop-oldest, this id's own oldest make room first.
            while !budget.take(charge, cfg.max_total_bytes) {
                let own = cfg.full == FullPolicy::DropOldest && self.entries.iter().any(|k| k.payload.is_some());
                if !own {
                    return Err(Refused::BudgetSpent);
                }
                self.drop_front(budget, &mut out);
            }
        }
        // Leading seqs of requests carry nothing worth a slot once nobody waits for them.
        while self.entries.front().is_some_and(|k| {
            k.payload.is_none() && k.state != State::Pending && k.request.as_ref().is_none_or(|r| !r.1.is_waiting())
        }) {
            self.drop_front(budget, &mut out);
        }
        self.last_seq += 1;
        if self.entries.is_empty() {
            self.first_seq = self.last_seq;
        }
        self.bytes += charge;
        if payload.is_some() {
            budget.messages.fetch_add(1, Ordering::Relaxed);
        }
        self.entries.push_back(Kept {
            at_ms: now_ms,
            from,
            payload,
            state: if pending { State::Pending } else { State::Ready },
            request: None,
        });
        out.seq = self.last_seq;
        Ok(out)
    }

    /// Takes a seq for a request to the connected listener (not kept: replay passes over it),
    /// queued in seq order with the messages around it.
    pub fn append_request(
        &mut self,
        cfg: &MailboxConfig,
        budget: &Budget,
        now_ms: u64,
        payload: Bytes,
        reply: ReplySender,
        timeout_ms: u64,
    ) -> Result<Appended, Refused> {
        let a = self.append(cfg, budget, now_ms, None, None, false)?;
        if let Some(k) = self.entries.back_mut() {
            k.request = Some(Box::new((payload, reply, timeout_ms)));
        }
        Ok(a)
    }

    /// Makes `seq` (taken, not kept) a request for the connected listener, read in seq order.
    pub fn set_request(&mut self, seq: u64, payload: Bytes, reply: ReplySender, timeout_ms: u64) {
        let Some(i) = seq.checked_sub(self.first_seq) else {
            return;
        };
        if let Some(k) = self.entries.get_mut(i as usize) {
            if k.payload.is_none() {
                k.request = Some(Box::new((payload, reply, timeout_ms)));
            }
        }
    }

    /// Forgets the requests not read yet (their listener left or was replaced): their senders
    /// learn that it went away.
    pub fn drop_requests(&mut self) {
        for k in &mut self.entries {
            k.request = None;
        }
    }

    /// The store's answer for `seq`: durable (`ok`), or failed (then never read, and no longer
    /// counted against the bounds). Returns whether the message is still kept (it may have been
    /// pushed out meanwhile).
    pub fn settle(&mut self, budget: &Budget, seq: u64, ok: bool) -> bool {
        let Some(i) = seq.checked_sub(self.first_seq) else {
            return false;
        };
        match self.entries.get_mut(i as usize) {
            Some(k) if k.state == State::Pending => {
                if ok {
                    k.state = State::Ready;
                } else {
                    let c = k.charge();
                    k.state = State::Failed;
                    if k.payload.take().is_some() {
                        budget.messages.fetch_sub(1, Ordering::Relaxed);
                    }
                    self.bytes -= c;
                    budget.give(c);
                }
                true
            }
            _ => false,
        }
    }

    /// Where a listener starts: after `since` when given, else after what is visible now (live
    /// only). A cursor below what is kept reads a [`Read::Gap`] first.
    pub fn start(&self, since: Option<u64>) -> Result<u64, StartError> {
        match since {
            None => Ok(self.visible_through() + 1),
            Some(s) if s > self.last_seq => Err(StartError::Ahead { last: self.last_seq }),
            Some(s) => Ok(s + 1),
        }
    }

    /// Whether a cursor at `cursor` would find a gap first: the range lost.
    pub fn gap_at(&self, cursor: u64) -> Option<(u64, u64)> {
        (cursor <= self.dropped_through && cursor < self.first_seq).then_some((cursor, self.dropped_through))
    }

    /// Whether [`History::read`] at `cursor` has something to say.
    pub fn readable(&self, cursor: u64) -> bool {
        self.gap_at(cursor).is_some() || cursor <= self.visible_through()
    }

    /// Reads at `cursor`, moving it past what was read (and past requests' seqs, failed writes).
    pub fn read(&mut self, cursor: &mut u64) -> Read {
        if let Some((from, to)) = self.gap_at(*cursor) {
            *cursor = to + 1;
            return Read::Gap { from, to };
        }
        *cursor = (*cursor).max(self.first_seq);
        let visible = self.visible_through();
        while *cursor <= visible {
            let seq = *cursor;
            *cursor += 1;
            let Some(k) = self.entries.get_mut((seq - self.first_seq) as usize) else {
                break;
            };
            if let Some(r) = k.request.take() {
                let (payload, reply, timeout_ms) = *r;
                return Read::Request {
                    seq,
                    payload,
                    reply,
                    timeout_ms,
                };
            }
            if let (Some(payload), State::Ready) = (&k.payload, k.state) {
                self.delivered_through = self.delivered_through.max(seq);
                return Read::Message {
                    seq,
                    from: k.from,
                    payload: payload.clone(),
                };
            }
        }
        Read::Empty
    }

    /// Keeps record `r`, numbered elsewhere (a store, an engine), after the last seq (`cfg` must
    /// drop the oldest: a record is never refused, at worst dropped and said so). Seqs between
    /// the last and `r`'s (a write that failed or never became durable) are neither kept nor
    /// reused.
    fn place(&mut self, cfg: &MailboxConfig, budget: &Budget, r: Restored, out: &mut Appended) {
        if self.entries.is_empty() {
            self.first_seq = r.seq;
        } else {
            for _ in self.last_seq + 1..r.seq {
                self.entries.push_back(Kept {
                    at_ms: r.at_ms,
                    from: None,
                    payload: None,
                    state: State::Failed,
                    request: None,
                });
            }
        }
        self.last_seq = r.seq - 1;
        match self.append(cfg, budget, r.at_ms, r.from, r.payload, false) {
            Ok(a) => {
                out.dropped += a.dropped;
                out.trim_through = a.trim_through.or(out.trim_through);
            }
            Err(_) => {
                // Too large for the bounds as configured now, or the broker-wide budget is
                // spent: this record is dropped, and the older ones with it (a mailbox has
                // no hole but below its first kept seq), their room given back.
                while !self.entries.is_empty() {
                    self.drop_front(budget, out);
                }
                self.last_seq = r.seq;
                self.first_seq = r.seq + 1;
                self.dropped_through = r.seq;
                out.dropped += 1;
                out.trim_through = Some(r.seq);
            }
        }
    }

    /// A window onto a mailbox kept elsewhere (a cluster's engine, which numbers its messages):
    /// takes the record it numbered `r.seq`, which must come right after the last seq here. The
    /// window's own bounds drop its oldest to make room (the mailbox elsewhere refused already,
    /// if its policy refuses); a record that cannot be kept at all is dropped and said so (a
    /// gap), never passed over.
    pub fn mirror(&mut self, cfg: &MailboxConfig, budget: &Budget, r: Restored, now_ms: u64) -> Mirror {
        if r.seq <= self.last_seq {
            return Mirror::Behind;
        }
        if r.seq > self.last_seq + 1 {
            return Mirror::Ahead { last: self.last_seq };
        }
        let cfg = &MailboxConfig {
            full: FullPolicy::DropOldest,
            ..cfg.clone()
        };
        let mut out = Appended::default();
        let seq = r.seq;
        self.place(cfg, budget, r, &mut out);
        let e = self.expire(cfg, budget, now_ms);
        out.dropped += e.dropped;
        out.trim_through = e.trim_through.or(out.trim_through);
        out.seq = seq;
        Mirror::Kept(out)
    }

    /// The mailbox this is a window onto no longer has anything up to `through` (trimmed,
    /// expired): dropped here too, and numbering goes on after it. A cursor below reads a gap.
    pub fn trim_through(&mut self, budget: &Budget, through: u64) -> Appended {
        let mut out = Appended::default();
        while !self.entries.is_empty() && self.first_seq <= through {
            self.drop_front(budget, &mut out);
        }
        if self.last_seq < through {
            self.last_seq = through;
            self.first_seq = through + 1;
            self.dropped_through = self.dropped_through.max(through);
        }
        out
    }

    /// Gives back everything kept (the window is closed: its listener left).
    pub fn clear(&mut self, budget: &Budget) {
        let mut out = Appended::default();
        while !self.entries.is_empty() {
            self.drop_front(budget, &mut out);
        }
    }

    /// Messages and seqs from a store at startup, in seq order: `trimmed_through` is the store's
    /// mark below which everything was deleted. Bounds and TTL apply as to new messages.
    pub fn restore(
        cfg: &MailboxConfig,
        budget: &Budget,
        trimmed_through: u64,
        records: impl IntoIterator<Item = Restored>,
        now_ms: u64,
    ) -> (History, Appended) {
        let mut h = History::new(trimmed_through);
        h.dropped_through = trimmed_through;
        // The newest are kept when the bounds were lowered since: older ones go first.
        let cfg = &MailboxConfig {
            full: FullPolicy::DropOldest,
            ..cfg.clone()
        };
        let mut out = Appended::default();
        for r in records {
            if r.seq <= h.last_seq {
                continue;
            }
            h.place(cfg, budget, r, &mut out);
        }
        let e = h.expire(cfg, budget, now_ms);
        out.dropped += e.dropped;
        out.trim_through = e.trim_through.or(out.trim_through);
        (h, out)
    }
}

/// One record read back from a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Its seq.
    pub seq: u64,
    /// Wall-clock milliseconds since the Unix epoch when it was accepted.
    pub at_ms: u64,
    /// The envelope listener that sent it.
    pub from: Option<Id>,
    /// The message; `None` for a seq taken by a request.
    pub payload: Option<Bytes>,
}

/// One decision for the store to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Keep a message (or, with `payload: None`, remember that a request took this seq).
    Append {
        /// The id.
        id: Id,
        /// Its seq.
        seq: u64,
        /// Wall-clock milliseconds since the Unix epoch when it was accepted.
        at_ms: u64,
        /// The envelope listener that sent it.
        from: Option<Id>,
        /// The message.
        payload: Option<Bytes>,
    },
    /// Delete the id's records up to `through`, remembering `through` (seqs stay unique).
    Trim {
        /// The id.
        id: Id,
        /// The last seq deleted.
        through: u64,
    },
}

/// Why a store could not take a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistError {
    /// Its queue is full: retry later (`503`).
    Busy,
    /// It failed and takes nothing more (`503`); the sentence says why.
    Failed(String),
}

/// A [`Persist`] refusing a write: why, and the `done` it was given, back unused.
#[derive(Debug)]
pub struct Refusal {
    /// Why.
    pub error: PersistError,
    /// The `done` given to [`Persist::submit`].
    pub done: Option<Persisted>,
}

/// Carries out the core's storage decisions, off the caller's thread: an embedded database with
/// its own writer thread (`fedbroker-store`), or anything an embedder writes. Implementations
/// must not block, and must apply the ops of one id in the order they were given.
pub trait Persist: Send + Sync + 'static {
    /// Takes `op`; for an append with `done`, calls [`Persisted::finish`] once the record is
    /// durable (or failed). Never calls `done` before returning: a refusal is the `Err` instead,
    /// giving `done` back.
    fn submit(&self, op: StoreOp, done: Option<Persisted>) -> Result<(), Refusal>;
}

/// The way back from a [`Persist`] for one appended message: finishing it makes the message
/// visible to listeners (or drops it, on failure) and answers its sender.
pub struct Persisted {
    pub(crate) registry: crate::Registry,
    pub(crate) id: Id,
    pub(crate) seq: u64,
    pub(crate) reply: Option<crate::RouteReply>,
}

impl std::fmt::Debug for Persisted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persisted")
            .field("id", &self.id)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Persisted {
    /// The record is durable (`Ok`), or could not be written.
    pub fn finish(mut self, result: Result<(), PersistError>) {
        let reply = self.reply.take();
        self.registry.settle(self.id, self.seq, result, reply);
    }
}

impl Drop for Persisted {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let failed = Err(PersistError::Failed("the store dropped the write".into()));
            self.registry.settle(self.id, self.seq, failed, Some(reply));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize, full: FullPolicy) -> MailboxConfig {
        MailboxConfig {
            max_messages: max,
            full,
            ttl: Duration::from_secs(10),
            ..MailboxConfig::default()
        }
    }

    fn msg(r: Read) -> u64 {
        match r {
            Read::Message { seq, .. } => seq,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn drop_oldest_reports_a_gap_to_a_lagging_cursor() {
        let c = cfg(2, FullPolicy::DropOldest);
        let b = Budget::default();
        let mut h = History::new(0);
        let mut cur = h.start(Some(0)).unwrap();
        for _ in 0..3 {
            let _ = h
                .append(&c, &b, 0, None, Some(Bytes::from_static(b"x")), false)
                .unwrap();
        }
        assert_eq!(h.read(&mut cur), Read::Gap { from: 1, to: 1 });
        assert_eq!(msg(h.read(&mut cur)), 2);
        assert_eq!(msg(h.read(&mut cur)), 3);
        assert_eq!(h.read(&mut cur), Read::Empty);
        assert_eq!(b.used(), 2 * (1 + ENTRY_OVERHEAD));
    }

    #[test]
    fn refuse_keeps_what_nobody_received() {
        let c = cfg(2, FullPolicy::Refuse);
        let b = Budget::default();
        let mut h = History::new(0);
        let x = || Some(Bytes::from_static(b"x"));
        let _ = h.append(&c, &b, 0, None, x(), false).unwrap();
        let _ = h.append(&c, &b, 0, None, x(), false).unwrap();
        assert_eq!(h.append(&c, &b, 0, None, x(), false), Err(Refused::Full));
        let mut cur = h.start(Some(0)).unwrap();
        assert_eq!(msg(h.read(&mut cur)), 1);
        let a = h.append(&c, &b, 0, None, x(), false).unwrap();
        assert_eq!((a.seq, a.dropped, a.trim_through), (3, 1, Some(1)));
    }

    #[test]
    fn pending_holds_back_later_messages() {
        let c = cfg(10, FullPolicy::DropOldest);
        let b = Budget::default();
        let mut h = History::new(5);
        let mut cur = h.start(None).unwrap();
        let a = h.append(&c, &b, 0, None, Some(Bytes::from_static(b"a")), true).unwrap();
        let _ = h.append(&c, &b, 0, None, Some(Bytes::from_static(b"b")), true).unwrap();
        assert_eq!(a.seq, 6);
        assert_eq!(h.read(&mut cur), Read::Empty);
        assert!(h.settle(&b, 7, true));
        assert_eq!(h.read(&mut cur), Read::Empty, "6 still pending");
        assert!(h.settle(&b, 6, false));
        assert_eq!(msg(h.read(&mut cur)), 7, "6 failed: skipped, not a gap");
    }

    #[test]
    fn restore_drops_what_no_longer_fits_and_gives_its_room_back() {
        let c = MailboxConfig {
            max_bytes: 200,
            ..cfg(10, FullPolicy::DropOldest)
        };
        let b = Budget::default();
        let rec = |seq, len| Restored {
            seq,
            at_ms: 0,
            from: None,
            payload: Some(Bytes::from(vec![0u8; len])),
        };
        // 1 fits, 2 is larger than the lowered bound, 3 fits.
        let (mut h, out) = History::restore(&c, &b, 0, vec![rec(1, 10), rec(2, 500), rec(3, 10)], 0);
        assert_eq!((out.dropped, out.trim_through), (2, Some(2)));
        assert_eq!(b.used(), h.bytes());
        assert_eq!(b.messages(), 1);
        let mut cur = h.start(Some(0)).unwrap();
        assert_eq!(h.read(&mut cur), Read::Gap { from: 1, to: 2 });
        assert_eq!(msg(h.read(&mut cur)), 3);
    }

    #[test]
    fn ttl_expires_and_since_ahead_is_refused() {
        let c = cfg(10, FullPolicy::DropOldest);
        let b = Budget::default();
        let mut h = History::new(0);
        let _ = h.append(&c, &b, 1_000, None, Some(Bytes::new()), false).unwrap();
        let _ = h.append(&c, &b, 5_000, None, Some(Bytes::new()), false).unwrap();
        let e = h.expire(&c, &b, 11_000);
        assert_eq!((e.dropped, e.trim_through), (1, Some(1)));
        assert_eq!(h.gap_at(1), Some((1, 1)));
        assert_eq!(h.start(Some(3)), Err(StartError::Ahead { last: 2 }));
    }
}
