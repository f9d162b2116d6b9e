//! A broker's mailbox *window* (`Registry::mirror_mailboxes`: the mailbox is kept by a cluster's
//! engine, which numbers its records) against a model of the engine's mailbox, under random
//! operation sequences with injected time: the engine appends (messages, seqs taken by requests)
//! and trims its oldest beyond `MAXLEN`, or forgets everything once idle past the TTL; its
//! publications reach the window late or never (then the window reads the engine, as the
//! cluster does); listeners come from any `since`, read, and leave.
//!
//! What a listener reads is checked against the engine: every message after its `since`, in
//! order, once, unless it was dropped before it was read, and then said so (a gap, or `410` at
//! listen time for a plain listener); seqs taken by requests are passed over silently; and the
//! window is given back once nobody listens.

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use fedbroker_core::auth::IdSet;
use fedbroker_core::mailbox::{FullPolicy, MailboxConfig, Restored, ENTRY_OVERHEAD};
use fedbroker_core::{
    reply_channel, Delivered, HttpError, Id, Item, ListenerHandle, MailboxSync, MirrorItem, Mirrored, PendingReply,
    Pop, Registry,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The first mailbox id (of the fixed cases, and of the random ones)...
const ID: u32 = 100;
/// ... and how many the random cases use.
const IDS: u32 = 2;

/// Largest payload sent.
const MAX_LEN: usize = 200;

fn id() -> Id {
    Id::new(ID).unwrap()
}

/// A message's payload: its seq, then filler up to `len` (≥ 8) bytes.
fn payload(seq: u64, len: usize) -> Bytes {
    let mut v = seq.to_le_bytes().to_vec();
    v.resize(len.max(8), 0xAB);
    Bytes::from(v)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rec {
    /// A message of `len` bytes.
    Message { len: usize },
    /// A seq taken by a request (not kept).
    Taken,
}

/// The engine's mailbox of the id: records numbered from 1, the newest `max` kept (Redis
/// `XADD MAXLEN`), all forgotten once the id is idle past the TTL (`PEXPIRE` on the stream; the
/// counter stays).
#[derive(Debug)]
struct Engine {
    max: usize,
    ttl_ms: u64,
    /// Every record ever given, seq `i + 1` at index `i`, with the time it was appended.
    all: Vec<(u64, Rec)>,
    /// Everything up to this seq is gone from the engine.
    trimmed: u64,
}

impl Engine {
    fn last(&self) -> u64 {
        self.all.len() as u64
    }

    fn rec(&self, seq: u64) -> (u64, Rec) {
        self.all[(seq - 1) as usize]
    }

    fn append(&mut self, now: u64, rec: Rec) -> u64 {
        self.expire(now);
        self.all.push((now, rec));
        let last = self.last();
        self.trimmed = self.trimmed.max(last.saturating_sub(self.max as u64));
        last
    }

    /// The stream expires `ttl` after its last append.
    fn expire(&mut self, now: u64) {
        if let Some((at, _)) = self.all.last() {
            if at.saturating_add(self.ttl_ms) <= now {
                self.trimmed = self.last();
            }
        }
    }

    fn restored(&self, seq: u64) -> Restored {
        let (at_ms, rec) = self.rec(seq);
        Restored {
            seq,
            at_ms,
            from: None,
            payload: match rec {
                Rec::Message { len } => Some(payload(seq, len)),
                Rec::Taken => None,
            },
        }
    }

    /// What the cluster reads of the mailbox after a window's last seq `after` (0: everything).
    fn read(&self, after: u64) -> MailboxSync {
        MailboxSync {
            after,
            trimmed_through: self.trimmed,
            last: self.last(),
            records: (after.max(self.trimmed) + 1..=self.last())
                .map(|s| self.restored(s))
                .collect(),
        }
    }

    /// Whether message `seq` may have been lost by now without a fault of the window: the
    /// engine no longer has it, or it is older than the TTL.
    fn may_be_lost(&self, seq: u64, now: u64) -> bool {
        seq <= self.trimmed || self.rec(seq).0.saturating_add(self.ttl_ms) <= now
    }
}

/// Where a listener starts.
#[derive(Clone, Copy, Debug)]
enum Since {
    /// Live (no `since`).
    Live,
    /// `since` this far below the last seq of the engine as read (clamped at 0).
    Back(u64),
    /// `since` this far above the last seq of the engine as read (+1): refused.
    Ahead(u64),
}

#[derive(Clone, Debug)]
enum Op {
    /// The engine appends a message of `len` bytes; its publication is lost when `lost`.
    Send { len: usize, lost: bool },
    /// The engine takes a seq for a request; published to the window as a request for its
    /// listener when `ask`, else as a seq taken.
    Take { lost: bool, ask: bool },
    /// Up to `n` publications in flight reach the window, in order.
    Deliver { n: usize },
    /// The cluster brings the window up to the engine (`catch_up`).
    CatchUp,
    /// The cluster reads the engine after the window's last seq (everything, without a window),
    /// to use later: events may come between the read and its use, as in a cluster.
    Read,
    /// The read is brought into the window (a `catch_up` whose read was slow).
    ApplyRead,
    /// A listener connects (replacing the one connected, if any), with the engine read now, or
    /// with the read made earlier (`stale`, when there is one).
    Listen { since: Since, envelope: bool, stale: bool },
    /// The listener pops up to `n` items.
    Pop { n: usize },
    /// The listener leaves.
    Leave,
    /// Time passes.
    Wait { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let lost = || prop_oneof![5 => Just(false), 1 => Just(true)];
    prop_oneof![
        6 => (8usize..=MAX_LEN, lost()).prop_map(|(len, lost)| Op::Send { len, lost }),
        1 => (lost(), any::<bool>()).prop_map(|(lost, ask)| Op::Take { lost, ask }),
        4 => (1usize..5).prop_map(|n| Op::Deliver { n }),
        1 => Just(Op::CatchUp),
        1 => Just(Op::Read),
        1 => Just(Op::ApplyRead),
        3 => (
            prop_oneof![
                1 => Just(Since::Live),
                3 => (0u64..4).prop_map(Since::Back),
                2 => (0u64..20).prop_map(Since::Back),
                1 => (0u64..3).prop_map(Since::Ahead),
            ],
            prop_oneof![2 => Just(false), 1 => Just(true)],
            prop_oneof![3 => Just(false), 1 => Just(true)],
        )
            .prop_map(|(since, envelope, stale)| Op::Listen { since, envelope, stale }),
        5 => (1usize..8).prop_map(|n| Op::Pop { n }),
        1 => Just(Op::Leave),
        1 => (0u64..4000).prop_map(|ms| Op::Wait { ms }),
    ]
}

/// The bounds of one case.
#[derive(Clone, Debug)]
struct Setup {
    /// The engine's `MAXLEN`.
    engine_max: usize,
    /// The window's `max_messages`.
    max_messages: usize,
    max_bytes: Option<usize>,
    max_total_bytes: Option<usize>,
    ttl_ms: Option<u64>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1usize..8,
        prop_oneof![3 => (0usize..4).prop_map(Ok), 1 => (1usize..8).prop_map(Err)],
        prop_oneof![3 => Just(None), 1 => (100usize..800).prop_map(Some)],
        prop_oneof![4 => Just(None), 1 => (200usize..1500).prop_map(Some)],
        prop_oneof![2 => Just(None), 1 => (1000u64..8000).prop_map(Some)],
    )
        .prop_map(|(engine_max, window, max_bytes, max_total_bytes, ttl_ms)| Setup {
            engine_max,
            // Mostly at least the engine's bound; sometimes any (smaller).
            max_messages: match window {
                Ok(extra) => engine_max + extra,
                Err(any) => any,
            },
            max_bytes,
            max_total_bytes,
            ttl_ms,
        })
}

/// Counts over all cases, to show the properties were exercised.
#[derive(Default)]
struct Seen {
    cases: Cell<u64>,
    messages: Cell<u64>,
    requests: Cell<u64>,
    gaps: Cell<u64>,
    gaps_in_small_windows: Cell<u64>,
    gone: Cell<u64>,
    since_ahead: Cell<u64>,
    ahead_synced: Cell<u64>,
    replaced: Cell<u64>,
    given_back: Cell<u64>,
    stale_refused: Cell<u64>,
    /// Gaps and `410`s over seqs taken by requests only (the engine's trim mark does not say
    /// what it trimmed).
    lost_nothing: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// The connected listener and what it read.
struct Reader {
    handle: ListenerHandle,
    envelope: bool,
    /// The next seq it has not read nor been told about.
    next: u64,
}

/// One mailbox id: its mailbox in the engine, and its listener here.
struct Side {
    id: Id,
    engine: Engine,
    /// Publications on their way to the window: seq, and whether as a request.
    in_flight: VecDeque<(u64, bool)>,
    reader: Option<Reader>,
    /// A read of the engine not used yet.
    read: Option<MailboxSync>,
}

/// A broker with the windows of [`IDS`] mailbox ids, sharing its byte budget.
struct World<'s> {
    registry: Registry,
    cfg: MailboxConfig,
    sides: Vec<Side>,
    /// The side the operation at hand is on.
    at: usize,
    /// Whether the windows keep at least what the engine keeps (then only the engine's trims
    /// and the TTL lose messages).
    generous: bool,
    now: u64,
    /// Senders of requests, waiting.
    waiting: Vec<PendingReply>,
    /// Requests handed to a listener's queue after their seq was read as taken (side, seq):
    /// they come whenever the listener pops, not in seq order.
    late: std::collections::BTreeSet<(usize, u64)>,
    seen: &'s Seen,
}

impl World<'_> {
    fn id(&self) -> Id {
        self.sides[self.at].id
    }

    /// Seqs `from..to` that a read passed over without a word: never messages.
    fn pass_over(&self, from: u64, to: u64) {
        for s in from..to {
            assert_eq!(
                self.sides[self.at].engine.rec(s).1,
                Rec::Taken,
                "message {s} passed over silently"
            );
        }
    }

    fn mirror_item(&mut self, seq: u64, ask: bool) -> MirrorItem {
        match self.sides[self.at].engine.rec(seq).1 {
            Rec::Message { len } => MirrorItem::Message(payload(seq, len)),
            Rec::Taken if ask => {
                let (reply, rx) = reply_channel();
                self.waiting.push(rx);
                MirrorItem::Request {
                    payload: Bytes::from_static(b"q"),
                    reply,
                    timeout_ms: 1000,
                }
            }
            Rec::Taken => MirrorItem::Taken,
        }
    }

    fn mirror(&mut self, seq: u64, ask: bool) -> Mirrored {
        let at = self.sides[self.at].engine.rec(seq).0;
        let item = self.mirror_item(seq, ask);
        self.registry.mirror(self.id(), seq, at, None, item, self.now)
    }

    /// One publication reaches the window.
    fn deliver(&mut self, seq: u64, ask: bool) {
        let window = self.registry.window_last(self.id());
        match self.mirror(seq, ask) {
            Mirrored::Done(result) => {
                if ask && window.is_some_and(|w| w >= seq) {
                    self.late.insert((self.at, seq));
                } else {
                    assert_eq!(window, Some(seq - 1), "taken right after the window's last");
                }
                // Else a request whose seq the window read already: handed over all the same.
                assert!(self.sides[self.at].reader.is_some(), "a window with nobody listening");
                let listener = self.sides[self.at].reader.as_ref().map(|r| r.envelope);
                match result {
                    Ok(Delivered::Mailbox { seq: s, live }) => {
                        assert_eq!(s, seq);
                        assert_eq!(live, listener.is_some(), "live iff a listener");
                        assert!(!ask || matches!(self.sides[self.at].engine.rec(seq).1, Rec::Message { .. }));
                    }
                    Ok(Delivered::AwaitingReply) => assert!(ask && listener == Some(true)),
                    Err(e) => {
                        assert!(ask && listener != Some(true), "refused {seq}: {e:?}");
                        assert!(
                            matches!(e, HttpError::NoListener(_) | HttpError::CannotReply(_)),
                            "{e:?}"
                        );
                    }
                    other => panic!("mirror of {seq}: {other:?}"),
                }
            }
            Mirrored::Behind => {
                assert!(window.is_some_and(|w| w >= seq), "behind {seq}, window {window:?}");
            }
            Mirrored::Ahead { last } => {
                assert_eq!(Some(last), window);
                assert!(last + 1 < seq);
                // What the cluster does: read the engine after the window, then this again.
                let sync = self.sides[self.at].engine.read(last);
                assert!(
                    self.registry.sync_window(self.id(), sync, self.now),
                    "the window is there"
                );
                assert_eq!(
                    self.registry.window_last(self.id()),
                    Some(self.sides[self.at].engine.last())
                );
                match self.mirror(seq, ask) {
                    Mirrored::Behind => {}
                    // A request the read brought as a seq taken: still handed to the listener.
                    Mirrored::Done(Ok(Delivered::AwaitingReply)) if ask => {
                        self.late.insert((self.at, seq));
                    }
                    Mirrored::Done(Err(HttpError::CannotReply(_))) if ask => {}
                    other => panic!("the read brought {seq}: {other:?}"),
                }
                bump(&self.seen.ahead_synced);
            }
            Mirrored::NoWindow => {
                assert!(self.sides[self.at].reader.is_none(), "a listener has a window");
                assert_eq!(window, None);
            }
        }
    }

    fn catch_up(&mut self) {
        match self.registry.window_last(self.id()) {
            Some(last) => {
                assert!(self.sides[self.at].reader.is_some(), "a window with nobody listening");
                assert!(self
                    .registry
                    .sync_window(self.id(), self.sides[self.at].engine.read(last), self.now));
                assert_eq!(
                    self.registry.window_last(self.id()),
                    Some(self.sides[self.at].engine.last())
                );
            }
            None => assert!(!self
                .registry
                .sync_window(self.id(), self.sides[self.at].engine.read(0), self.now)),
        }
    }

    /// The engine read now, as the cluster reads it: after the window's last seq.
    fn read_engine(&self) -> MailboxSync {
        self.sides[self.at]
            .engine
            .read(self.registry.window_last(self.id()).unwrap_or(0))
    }

    /// Brings a read of the engine, perhaps made before other events, into the window.
    fn apply_read(&mut self, sync: MailboxSync) {
        let (after, last) = (sync.after, sync.last);
        let window = self.registry.window_last(self.id());
        let done = self.registry.sync_window(self.id(), sync, self.now);
        // Refused only without a window: a window's last seq never goes down, nor is a new one
        // made below a read done before it.
        assert_eq!(done, window.is_some(), "sync after {after} into {window:?}");
        assert!(window.is_none() || after <= window.unwrap());
        if done {
            assert!(self.sides[self.at].reader.is_some(), "a window with nobody listening");
            assert_eq!(self.registry.window_last(self.id()), Some(window.unwrap().max(last)));
        }
    }

    fn listen(&mut self, since: Since, envelope: bool, sync: MailboxSync) {
        let window = self.registry.window_last(self.id());
        // The last seq the listener is told: the window's after the read is brought in.
        let last = window.unwrap_or(0).max(sync.last);
        let since = match since {
            Since::Live => None,
            Since::Back(k) => Some(sync.last.saturating_sub(k)),
            Since::Ahead(k) => Some(sync.last + 1 + k),
        };
        let after = sync.after;
        // Read just now (not before other events).
        let fresh = sync.last == self.sides[self.at].engine.last();
        match self
            .registry
            .listen_synced(self.id(), envelope, since, self.now, Some(sync))
        {
            Ok((handle, told)) => {
                assert!(since.is_none_or(|s| s <= last));
                assert_eq!(told, Some(last), "the 101's last seq is the engine's when read");
                if fresh {
                    assert_eq!(told, Some(self.sides[self.at].engine.last()));
                }
                assert_eq!(self.registry.window_last(self.id()), Some(last));
                if let Some(old) = self.sides[self.at].reader.take() {
                    // Requests handed late to its queue come first, then the replacement.
                    let mut popped = old.handle.pop();
                    while let Pop::Item(Item::Request { seq, .. }) = popped {
                        assert!(
                            self.late.remove(&(self.at, seq)),
                            "request {seq} for a replaced listener"
                        );
                        popped = old.handle.pop();
                    }
                    assert!(matches!(popped, Pop::Replaced));
                    bump(&self.seen.replaced);
                }
                self.sides[self.at].reader = Some(Reader {
                    handle,
                    envelope,
                    next: since.unwrap_or(last) + 1,
                });
            }
            Err(HttpError::SinceAhead { last: l, .. }) => {
                assert!(since.is_some_and(|s| s > last), "{since:?} is not ahead of {last}");
                assert_eq!(l, last);
                bump(&self.seen.since_ahead);
            }
            Err(HttpError::Gone { from, to, .. }) => {
                let s = since.expect("a live listener loses nothing");
                assert!(!envelope, "an envelope listener is told in-band");
                assert_eq!(from, s + 1);
                assert!(from <= to && to <= last, "gone {from}..={to}, last {last}");
                self.check_lost(from, to);
                bump(&self.seen.gone);
            }
            Err(HttpError::RouteUnavailable) => {
                // The read was made on a window given back since: the listener may retry.
                assert!(
                    window.is_none() && after > 0,
                    "503 with window {window:?}, read after {after}"
                );
                bump(&self.seen.stale_refused);
            }
            Err(e) => panic!("listen since {since:?}: {e:?}"),
        }
        if self.sides[self.at].reader.is_none() {
            assert_eq!(
                self.registry.window_last(self.id()),
                None,
                "a refused listener leaves no window"
            );
        }
    }

    /// Seqs `from..=to` announced as lost: with a window as large as the engine's mailbox, only
    /// what the engine no longer has, or what is older than the TTL.
    fn check_lost(&self, from: u64, to: u64) {
        if (from..=to).all(|s| self.sides[self.at].engine.rec(s).1 == Rec::Taken) {
            bump(&self.seen.lost_nothing);
        }
        for s in from..=to {
            if self.generous && matches!(self.sides[self.at].engine.rec(s).1, Rec::Message { .. }) {
                assert!(
                    self.sides[self.at].engine.may_be_lost(s, self.now),
                    "message {s} announced lost though the engine has it (trimmed through {})",
                    self.sides[self.at].engine.trimmed
                );
            }
        }
    }

    /// The listener pops up to `n` items; `None`: until there is nothing more.
    fn pop(&mut self, n: Option<usize>) {
        let Some(r) = &self.sides[self.at].reader else { return };
        let (envelope, mut next) = (r.envelope, r.next);
        for _ in 0..n.unwrap_or(usize::MAX) {
            let p = self.sides[self.at].reader.as_ref().unwrap().handle.pop();
            match p {
                Pop::Item(Item::Message { seq, payload, from, .. }) => {
                    assert!(seq >= next, "message {seq} again, or out of order (next {next})");
                    self.pass_over(next, seq);
                    match self.sides[self.at].engine.rec(seq).1 {
                        Rec::Message { len } => {
                            assert_eq!(payload.len(), len);
                            assert_eq!(payload[..8], seq.to_le_bytes(), "message {seq}'s payload");
                        }
                        Rec::Taken => panic!("seq {seq} taken by a request read as a message"),
                    }
                    assert_eq!(from, None);
                    next = seq + 1;
                    bump(&self.seen.messages);
                }
                Pop::Item(Item::Request { seq, .. }) if self.late.remove(&(self.at, seq)) => {
                    // Its seq was read as taken before the request came: handed over late.
                    assert!(envelope, "a request for a plain listener");
                    assert_eq!(self.sides[self.at].engine.rec(seq).1, Rec::Taken);
                    bump(&self.seen.requests);
                }
                Pop::Item(Item::Request { seq, .. }) => {
                    assert!(envelope, "a request for a plain listener");
                    assert!(seq >= next, "request {seq} again, or out of order (next {next})");
                    self.pass_over(next, seq);
                    assert_eq!(self.sides[self.at].engine.rec(seq).1, Rec::Taken);
                    next = seq + 1;
                    bump(&self.seen.requests);
                }
                Pop::Gap { from, to } => {
                    assert!(from >= next, "gap {from}..={to} before the reader (next {next})");
                    assert!(
                        from <= to && to <= self.sides[self.at].engine.last(),
                        "gap {from}..={to}"
                    );
                    self.pass_over(next, from);
                    self.check_lost(from, to);
                    next = to + 1;
                    bump(&self.seen.gaps);
                    if !self.generous {
                        bump(&self.seen.gaps_in_small_windows);
                    }
                }
                Pop::Empty => {
                    // Nothing readable: nothing but taken seqs up to the window's last.
                    let window = self.registry.window_last(self.id()).expect("a listener has a window");
                    assert!(window <= self.sides[self.at].engine.last());
                    self.pass_over(next, window + 1);
                    break;
                }
                other => panic!("listener popped {other:?}"),
            }
        }
        self.sides[self.at].reader.as_mut().unwrap().next = next;
    }

    fn leave(&mut self) {
        if self.sides[self.at].reader.take().is_some() {
            assert_eq!(self.registry.window_last(self.id()), None, "the window is given back");
            bump(&self.seen.given_back);
        }
    }

    /// After every operation.
    fn check(&self) {
        let [messages, bytes, ..] = self.registry.mailbox_figures();
        let ids = self.sides.len();
        assert!(
            messages as usize <= ids * self.cfg.max_messages,
            "{messages} messages kept"
        );
        assert!(
            bytes as usize <= (ids * self.cfg.max_bytes).min(self.cfg.max_total_bytes),
            "{bytes} bytes kept"
        );
        for side in &self.sides {
            let window = self.registry.window_last(side.id);
            assert!(window.is_none_or(|w| w <= side.engine.last()));
            if side.reader.is_none() {
                assert_eq!(window, None, "no window while nobody listens on {}", side.id);
            }
            assert_eq!(self.registry.is_listened(side.id), side.reader.is_some());
        }
        if self.sides.iter().all(|s| s.reader.is_none()) {
            assert_eq!((messages, bytes), (0, 0), "nothing kept once nobody listens");
        }
    }
}

fn registry(cfg: &MailboxConfig) -> Registry {
    let r = Registry::with_mailboxes(8, IdSet::default(), Some(cfg.clone()), None);
    r.mirror_mailboxes();
    r
}

fn config(max_messages: usize, max_bytes: usize, max_total_bytes: usize, ttl_ms: u64) -> MailboxConfig {
    let mut ids = IdSet::default();
    ids.add_item(&format!("{ID}-{}", ID + IDS - 1)).unwrap();
    MailboxConfig {
        ids,
        max_messages,
        max_bytes,
        max_total_bytes,
        ttl: Duration::from_millis(ttl_ms),
        full: FullPolicy::DropOldest,
    }
}

fn run(setup: Setup, ops: Vec<(usize, Op)>, seen: &Seen) {
    let defaults = MailboxConfig::default();
    let cfg = config(
        setup.max_messages,
        setup.max_bytes.unwrap_or(defaults.max_bytes),
        setup.max_total_bytes.unwrap_or(defaults.max_total_bytes),
        setup.ttl_ms.unwrap_or(defaults.ttl_ms()),
    );
    let most = cfg.max_messages * (MAX_LEN + ENTRY_OVERHEAD);
    let sides = (ID..ID + IDS)
        .map(|i| Side {
            id: Id::new(i).unwrap(),
            engine: Engine {
                max: setup.engine_max,
                ttl_ms: cfg.ttl_ms(),
                all: Vec::new(),
                trimmed: 0,
            },
            in_flight: VecDeque::new(),
            reader: None,
            read: None,
        })
        .collect();
    let mut w = World {
        registry: registry(&cfg),
        generous: cfg.max_messages >= setup.engine_max
            && cfg.max_bytes >= most
            && cfg.max_total_bytes >= IDS as usize * most,
        cfg,
        sides,
        at: 0,
        now: 1_000_000,
        waiting: Vec::new(),
        late: Default::default(),
        seen,
    };
    for (at, op) in ops {
        w.at = at % w.sides.len();
        let now = w.now;
        let side = &mut w.sides[w.at];
        match op {
            Op::Send { len, lost } => {
                let seq = side.engine.append(now, Rec::Message { len });
                if !lost {
                    side.in_flight.push_back((seq, false));
                }
            }
            Op::Take { lost, ask } => {
                let seq = side.engine.append(now, Rec::Taken);
                if !lost {
                    side.in_flight.push_back((seq, ask));
                }
            }
            Op::Deliver { n } => {
                for _ in 0..n {
                    if let Some((seq, ask)) = w.sides[w.at].in_flight.pop_front() {
                        w.deliver(seq, ask);
                    }
                }
            }
            Op::CatchUp => w.catch_up(),
            Op::Read => {
                let read = w.read_engine();
                w.sides[w.at].read = Some(read);
            }
            Op::ApplyRead => {
                if let Some(sync) = side.read.take() {
                    w.apply_read(sync);
                }
            }
            Op::Listen { since, envelope, stale } => {
                let sync = match (stale, side.read.take()) {
                    (true, Some(sync)) => sync,
                    (_, read) => {
                        side.read = read;
                        w.read_engine()
                    }
                };
                w.listen(since, envelope, sync);
            }
            Op::Pop { n } => w.pop(Some(n)),
            Op::Leave => w.leave(),
            Op::Wait { ms } => {
                w.now += ms;
                for side in &mut w.sides {
                    side.engine.expire(w.now);
                }
            }
        }
        w.check();
    }
    // In the end everything published arrives, the windows catch up, and each listener reads
    // all: every message after its since was read or announced lost. Then all leave.
    for at in 0..w.sides.len() {
        w.at = at;
        while let Some((seq, ask)) = w.sides[at].in_flight.pop_front() {
            w.deliver(seq, ask);
        }
        if w.sides[at].reader.is_some() {
            w.catch_up();
            w.pop(None);
            let next = w.sides[at].reader.as_ref().unwrap().next;
            w.pass_over(next, w.sides[at].engine.last() + 1);
        }
    }
    for at in 0..w.sides.len() {
        w.at = at;
        w.leave();
        w.check();
    }
    bump(&seen.cases);
}

/// 512 random cases; then the counts show that what is checked happened.
#[test]
fn window_matches_engine_model() {
    let seen = Seen::default();
    let mut runner = TestRunner::new(Config {
        cases: 512,
        // A failure prints its (shrunk) case; nothing is written next to the sources.
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (setup(), proptest::collection::vec((0..IDS as usize, op()), 1..200));
    runner
        .run(&strategy, |(setup, ops)| {
            run(setup, ops, &seen);
            Ok(())
        })
        .unwrap();
    let n = |c: &Cell<u64>| c.get();
    eprintln!(
        "cases {}, messages {}, requests {}, gaps {} ({} in small windows), gone {}, since ahead {}, \
         ahead synced {}, replaced {}, given back {}, stale reads refused {}, \
         losses announced over requests' seqs only {}",
        n(&seen.cases),
        n(&seen.messages),
        n(&seen.requests),
        n(&seen.gaps),
        n(&seen.gaps_in_small_windows),
        n(&seen.gone),
        n(&seen.since_ahead),
        n(&seen.ahead_synced),
        n(&seen.replaced),
        n(&seen.given_back),
        n(&seen.stale_refused),
        n(&seen.lost_nothing),
    );
    assert_eq!(n(&seen.cases), 512);
    assert!(n(&seen.messages) > 1_500, "messages were read");
    for (what, c) in [
        ("requests", &seen.requests),
        ("gaps", &seen.gaps),
        ("gaps in small windows", &seen.gaps_in_small_windows),
        ("gone", &seen.gone),
        ("since ahead", &seen.since_ahead),
        ("ahead synced", &seen.ahead_synced),
        ("replaced", &seen.replaced),
        ("given back", &seen.given_back),
    ] {
        assert!(n(c) >= 10, "too few {what}: {}", n(c));
    }
}

// Exact outputs of a few fixed cases.

fn msg(p: Pop) -> u64 {
    match p {
        Pop::Item(Item::Message { seq, payload: body, .. }) => {
            assert_eq!(body[..8], seq.to_le_bytes());
            seq
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

fn fixed(engine_max: usize, max_messages: usize) -> (Registry, Engine) {
    let cfg = config(max_messages, 1 << 20, 1 << 20, 60_000);
    let engine = Engine {
        max: engine_max,
        ttl_ms: cfg.ttl_ms(),
        all: Vec::new(),
        trimmed: 0,
    };
    (registry(&cfg), engine)
}

fn publish(r: &Registry, e: &Engine, seq: u64) -> Mirrored {
    let item = match e.rec(seq).1 {
        Rec::Message { len } => MirrorItem::Message(payload(seq, len)),
        Rec::Taken => MirrorItem::Taken,
    };
    r.mirror(id(), seq, e.rec(seq).0, None, item, 1_000)
}

#[test]
fn a_lost_publication_is_read_from_the_engine() {
    let (r, mut e) = fixed(10, 10);
    let (l, last) = r.listen_synced(id(), false, Some(0), 1_000, Some(e.read(0))).unwrap();
    assert_eq!(last, Some(0));
    for _ in 0..3 {
        e.append(1_000, Rec::Message { len: 8 });
    }
    e.append(1_000, Rec::Taken);
    assert_eq!(
        publish(&r, &e, 1),
        Mirrored::Done(Ok(Delivered::Mailbox { seq: 1, live: true }))
    );
    // 2 is lost on the way: 3 is ahead.
    assert_eq!(publish(&r, &e, 3), Mirrored::Ahead { last: 1 });
    assert!(r.sync_window(id(), e.read(1), 1_000));
    assert_eq!(r.window_last(id()), Some(4));
    assert_eq!(publish(&r, &e, 3), Mirrored::Behind);
    assert_eq!((msg(l.pop()), msg(l.pop()), msg(l.pop())), (1, 2, 3));
    assert!(matches!(l.pop(), Pop::Empty), "4 is a request's seq: passed over");
    assert_eq!(r.mailbox_figures()[..2], [3, 3 * (8 + ENTRY_OVERHEAD as u64)]);
    drop(l);
    assert_eq!(r.window_last(id()), None);
    assert_eq!(r.mailbox_figures()[..2], [0, 0]);
    assert_eq!(publish(&r, &e, 4), Mirrored::NoWindow);
}

#[test]
fn what_the_engine_trimmed_is_gone_or_a_gap() {
    let (r, mut e) = fixed(3, 10);
    for _ in 0..5 {
        e.append(1_000, Rec::Message { len: 8 });
    }
    assert_eq!(e.trimmed, 2);
    match r.listen_synced(id(), false, Some(0), 1_000, Some(e.read(0))) {
        Err(HttpError::Gone { from, to, .. }) => assert_eq!((from, to), (1, 2)),
        other => panic!("{other:?}"),
    }
    match r.listen_synced(id(), false, Some(6), 1_000, Some(e.read(0))) {
        Err(HttpError::SinceAhead { last, .. }) => assert_eq!(last, 5),
        other => panic!("{other:?}"),
    }
    let (l, last) = r.listen_synced(id(), true, Some(0), 1_000, Some(e.read(0))).unwrap();
    assert_eq!(last, Some(5));
    assert!(matches!(l.pop(), Pop::Gap { from: 1, to: 2 }));
    assert_eq!((msg(l.pop()), msg(l.pop()), msg(l.pop())), (3, 4, 5));
    assert!(matches!(l.pop(), Pop::Empty));
    // The engine goes on while the window misses everything: it reads the engine again.
    for _ in 0..5 {
        e.append(1_000, Rec::Message { len: 8 });
    }
    assert_eq!(publish(&r, &e, 10), Mirrored::Ahead { last: 5 });
    assert!(r.sync_window(id(), e.read(5), 1_000));
    assert!(matches!(l.pop(), Pop::Gap { from: 6, to: 7 }));
    assert_eq!((msg(l.pop()), msg(l.pop()), msg(l.pop())), (8, 9, 10));
    drop(l);
    assert_eq!(r.mailbox_figures()[..2], [0, 0]);
}

#[test]
fn a_smaller_window_drops_its_oldest_and_says_so() {
    let (r, mut e) = fixed(10, 2);
    let (l, _) = r.listen_synced(id(), false, None, 1_000, Some(e.read(0))).unwrap();
    for seq in 1..=4 {
        e.append(1_000, Rec::Message { len: 8 });
        assert!(matches!(publish(&r, &e, seq), Mirrored::Done(Ok(_))));
    }
    assert_eq!(r.mailbox_figures()[0], 2);
    assert!(matches!(l.pop(), Pop::Gap { from: 1, to: 2 }));
    assert_eq!((msg(l.pop()), msg(l.pop())), (3, 4));
    assert!(matches!(l.pop(), Pop::Empty));
    drop(l);
    assert_eq!(r.mailbox_figures()[..2], [0, 0]);
}

/// A listener refused at listen time (`410`, `409`) on an id nobody listens on here leaves no
/// window behind (the one `listen_synced` made from the engine's records is given back).
#[test]
fn a_refused_listener_leaves_no_window() {
    let (r, mut e) = fixed(1, 10);
    e.append(1_000, Rec::Message { len: 8 });
    e.append(1_000, Rec::Message { len: 8 });
    // The engine keeps 2 only: a plain listener from 0 has lost 1.
    match r.listen_synced(id(), false, Some(0), 1_000, Some(e.read(0))) {
        Err(HttpError::Gone { from, to, .. }) => assert_eq!((from, to), (1, 1)),
        other => panic!("{other:?}"),
    }
    assert!(!r.is_listened(id()));
    assert_eq!(r.window_last(id()), None, "no window with nobody listening");
    assert_eq!(r.mailbox_figures()[..2], [0, 0], "nothing kept with nobody listening");
    match r.listen_synced(id(), false, Some(3), 1_000, Some(e.read(0))) {
        Err(HttpError::SinceAhead { last, .. }) => assert_eq!(last, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.window_last(id()), None, "no window with nobody listening");
    assert_eq!(r.mailbox_figures()[..2], [0, 0], "nothing kept with nobody listening");
}
