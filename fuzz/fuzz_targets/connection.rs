//! A whole `Broker` and up to four `Session`s driven by a random operation sequence, with a
//! virtual clock and an authorizer that can answer at once, later, or never; invariants are
//! checked after every step.
//!
//! Input: 2 parameter bytes, then operations.
//! - byte 0: bits 0–2 the authorizer's first mode (see `AuthMode`); bit 3 the base path `/mq`;
//!   bit 4 CORS allows `http://a.example`; bit 5 a statistics token `s3cr3t`; bit 6 the echo
//!   WebSocket role instead of listeners; bit 7 TLS (`https` own origin);
//! - byte 1 (the patterns of docs/patterns.md): bits 0–1 the topics (none, `40-49`, `1-3`, `*`;
//!   with all but `*`, ids `50-59` keep a mailbox of 3 messages for 2 s, docs/mailbox.md);
//!   bits 2–3 `max_pending_replies` (2, 1, 0, 10000); bits 4–5 `max_reply_timeout` (300 ms,
//!   50 ms, 5 s, 30 s); bits 6–7 `max_watch` (4, 1, 0, 1024);
//! - then operations, each a tag byte: slot `tag >> 4 & 3`, kind `tag & 15`:
//!   `0` accept into the slot (dropping what was there); `1` input (`u8` length, bytes);
//!   `2` input (`u16` LE length, bytes); `3` repeated input (`u8` pattern length 1–16, the pattern,
//!   `u16` LE repeats; at most 64 KiB), read with `read_from` in `READ_CHUNK` pieces;
//!   `4` EOF (`u8`: `handle_eof`, `read_from` giving 0, an error, or would-block); `5` advance the
//!   clock (`u16` LE ms) and run due timeouts everywhere; `6` shutdown of the broker (every
//!   session; no more accepts); `7` shutdown of the slot only; `8` drain the outbox (`u8`: bit 0
//!   through `write_to`, else by hand then `handle_writable`; the rest × 512 bytes, 0 for all);
//!   `9` wake the slot if `poll_wake` is ready; `10` answer the oldest deferred
//!   authorization (`u8`: decision); `11` set the authorizer's mode (`u8`); `12` drop the slot
//!   (the adapter closes the socket); `13` a spurious `handle_writable`; `14` an early
//!   `handle_timeout`; `15` wake every ready slot.
//!   Input is only given while the session `wants_read()`, as an adapter would.
//!
//! Invariants after each step: no panic; every outbox within `HIGH_WATER` plus one step's input
//! and a few responses (far below 4 MiB); a closed session stays closed, writes nothing more and
//! reads nothing; `poll_timeout()` is `Some` exactly until closed, and handling it does not spin;
//! no lost wake-up (a session whose `poll_wake` was pending and was not woken is still pending);
//! each session's output starts with an HTTP/1.1 status line; the statistics agree with the
//! sessions (connections; listeners, topic listeners and waiting `?reply=` requests at most one
//! per session, the latter within `max_pending_replies`; watched ids within `max_watch` per
//! session; delivered + rejected within received, or with topics, whose messages count once per
//! listener, rejected within received and delivered within received × sessions; answered,
//! timed-out and failed replies within received); what an envelope listener receives (read as a
//! client would, after its `101`) is envelope messages with JSON headers of the known types, and
//! its `message`s and `request`s number one id's messages without a gap; live heap stays within
//! a bound of the sessions' outboxes. At the end, once everything is written and every wake-up
//! answered, the statistics count no more listeners closed as too slow than upgraded sessions
//! that ended (see `SLOW_CLOSE_COUNTED_ONCE`); and once everything is dropped, no listener, topic
//! listener, waiting reply, watch, connection or byte of memory is left behind.

#![no_main]

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Buf;
use fedbroker_core::auth::IdSet;
use fedbroker_core::ws::Role;
use fedbroker_core::{
    Action, AuthReply, AuthRequest, AuthTime, Authorizer, Broker, Config, CorsPolicy, Decision, FullPolicy,
    MailboxConfig, Session, HIGH_WATER, READ_CHUNK,
};
use fedbroker_fuzz::{epoch, live_bytes, tracing, CountingAlloc, Cursor};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const SLOTS: usize = 4;
/// Most bytes one operation feeds a session.
const MAX_STEP_INPUT: usize = 64 * 1024;
/// Most operations per run.
const MAX_OPS: usize = 4096;
/// Bound of an outbox: the high-water mark, plus what one step's input may answer (pongs), plus
/// one message or response and the pings and closes of the run.
const TX_BOUND: usize = HIGH_WATER + MAX_STEP_INPUT + 4096 + 16 * 1024;
/// Heap an outbox may take per byte waiting in it: tiny frames cost up to ~60 times their wire
/// size in segments and pinned payload buffers (see `ws_frame.rs` and fuzz/README.md).
const OUTBOX_HEAP_PER_BYTE: usize = 96;
/// Whether the heap an outbox took must be released once it is drained (see `ws_frame.rs`): on
/// since the outbox gives its queue back as it drains; off, a session's bound would follow its
/// largest backlog so far.
const DRAINED_OUTBOX_RELEASES_HEAP: bool = true;
/// Whether the statistics count a listener closed as too slow only once (see fuzz/README.md,
/// open findings): off for now, since a topic listener closed by a presence event that overflowed
/// its queue is counted again by the next message to the topic; the bound then allows two closes
/// per session. Turn it on once the core counts each close once; the kept reproducer
/// `regressions/connection/slow-listener-counted-twice` checks it.
const SLOW_CLOSE_COUNTED_ONCE: bool = true;
/// Heap of one session besides its outbox: input buffer (a head, a body, one read), queue,
/// parser state.
const SESSION_HEAP: usize = 512 * 1024;
/// Heap of the broker and the harness's own bookkeeping.
const BASE_HEAP: usize = 1024 * 1024;

/// How the authorizer answers, set by the fuzzer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthMode {
    Allow,
    /// Keep the reply for the fuzzer to answer (or drop) later.
    Defer,
    Unauthenticated,
    Forbidden,
    /// Allow until 1.5 s from now (a listener is then closed with 4001).
    Expiring,
    /// Drop the reply undecided (the core must treat it as unavailable).
    Drop,
}

impl AuthMode {
    fn from_byte(b: u8) -> AuthMode {
        match b % 6 {
            0 => AuthMode::Allow,
            1 => AuthMode::Defer,
            2 => AuthMode::Unauthenticated,
            3 => AuthMode::Forbidden,
            4 => AuthMode::Expiring,
            _ => AuthMode::Drop,
        }
    }
}

#[derive(Default)]
struct AuthState {
    mode: AtomicU8,
    deferred: Mutex<VecDeque<AuthReply>>,
}

#[derive(Clone, Default)]
struct FuzzAuth(Arc<AuthState>);

impl Authorizer for FuzzAuth {
    fn authorize(&self, request: &AuthRequest, time: AuthTime, reply: AuthReply) {
        assert_eq!(
            request.id.is_some(),
            request.action != Action::ReadStats,
            "id and action disagree: {request:?}"
        );
        match AuthMode::from_byte(self.0.mode.load(Ordering::Relaxed)) {
            AuthMode::Allow => reply.decide(Decision::Allow { until: None }),
            AuthMode::Defer => self.0.deferred.lock().unwrap().push_back(reply),
            AuthMode::Unauthenticated => reply.decide(Decision::Unauthenticated),
            AuthMode::Forbidden => reply.decide(Decision::Forbidden),
            AuthMode::Expiring => reply.decide(Decision::Allow {
                until: Some(time.now + Duration::from_millis(1500)),
            }),
            AuthMode::Drop => drop(reply),
        }
    }
}

/// Records that a waker was woken.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the harness reads in a session's output, as a client would.
#[derive(Debug)]
enum WireState {
    /// Before the end of the first response head.
    Head(Vec<u8>),
    /// After a first `101`: server frames, in `buf` until whole.
    Frames {
        envelope: bool,
        buf: Vec<u8>,
        /// A Close frame was sent.
        closed: bool,
        /// The last `seq` of a `message` or `request`, and its `id`.
        last: Option<(u64, u64)>,
    },
    /// Any other first response: only `101`s are counted (a pipelined upgrade).
    Other(Vec<u8>),
}

/// A session's output seen from the client's side.
#[derive(Debug)]
struct Wire {
    state: WireState,
    /// `101` responses seen (an overestimate: a relayed body may hold the same text).
    upgrades: u64,
}

const SWITCHING: &[u8] = b"HTTP/1.1 101 ";

impl Wire {
    fn new() -> Wire {
        Wire {
            state: WireState::Head(Vec::new()),
            upgrades: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                WireState::Head(head) => {
                    let before = head.len();
                    head.extend_from_slice(bytes);
                    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return;
                    };
                    let end = end + 4;
                    bytes = &bytes[end - before..];
                    let head = std::mem::take(head);
                    let head = &head[..end];
                    self.state = if head.starts_with(SWITCHING) {
                        self.upgrades += 1;
                        let envelope = head
                            .windows(40)
                            .any(|w| w.eq_ignore_ascii_case(b"\r\nSec-WebSocket-Protocol: fedbroker.v1\r\n"));
                        WireState::Frames {
                            envelope,
                            buf: Vec::new(),
                            closed: false,
                            last: None,
                        }
                    } else {
                        WireState::Other(Vec::new())
                    };
                }
                WireState::Other(tail) => {
                    tail.extend_from_slice(bytes);
                    self.upgrades += tail.windows(SWITCHING.len()).filter(|w| *w == SWITCHING).count() as u64;
                    let keep = tail.len().min(SWITCHING.len() - 1);
                    tail.drain(..tail.len() - keep);
                    return;
                }
                WireState::Frames {
                    envelope,
                    buf,
                    closed,
                    last,
                } => {
                    buf.extend_from_slice(bytes);
                    let mut at = 0;
                    while let Some((opcode, payload, next)) = server_frame(&buf[at..]) {
                        if opcode == 8 {
                            *closed = true;
                        } else if opcode == 2 && *envelope {
                            check_envelope(payload, last);
                        }
                        at += next;
                    }
                    buf.drain(..at);
                    return;
                }
            }
        }
    }

    /// An upgraded listener that has sent no Close (yet): it cannot have been closed as slow.
    fn open_listener(&self) -> bool {
        matches!(self.state, WireState::Frames { closed: false, .. })
    }
}

/// The next whole server frame of `b`: opcode, payload, and its length on the wire.
fn server_frame(b: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&b0, rest) = b.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    assert_eq!(b1 & 0x80, 0, "a server frame is masked");
    let (len, rest) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            &rest[2..],
        ),
        127 => {
            let n = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
            (usize::try_from(n).expect("a frame length within memory"), &rest[8..])
        }
        n => (usize::from(n), rest),
    };
    let payload = rest.get(..len)?;
    Some((b0 & 0x0f, payload, b.len() - rest.len() + len))
}

/// A broker → listener envelope message (patterns.md §3): a JSON header with a known `type`;
/// `message`s and `request`s number their id's messages one by one, without a gap.
fn check_envelope(message: &[u8], last: &mut Option<(u64, u64)>) {
    assert!(message.len() >= 2, "envelope message without its header length");
    let h = usize::from(u16::from_be_bytes([message[0], message[1]]));
    let header = message.get(2..2 + h).expect("envelope header within the message");
    let header: serde_json::Value = serde_json::from_slice(header).expect("envelope header is JSON");
    let kind = header["type"].as_str().expect("envelope header has a type");
    match kind {
        "message" | "request" => {
            let seq = header["seq"].as_u64().expect("a seq");
            let id = header["id"].as_u64().expect("an id");
            match *last {
                Some((prev, prev_id)) => {
                    assert_eq!(id, prev_id, "one listener, two ids: {header}");
                    if (50..=59).contains(&id) {
                        // A mailbox passes over seqs that were never messages for this listener
                        // (requests that expired unread), but never goes back.
                        assert!(seq > prev, "seq back or repeated: {prev} then {header}");
                    } else {
                        assert_eq!(seq, prev + 1, "seq gap: {prev} then {header}");
                    }
                }
                None => assert!(seq >= 1, "seq from 1: {header}"),
            }
            *last = Some((seq, id));
        }
        "gap" => {
            let (from, to) = (header["from"].as_u64(), header["to"].as_u64());
            let (Some(from), Some(to)) = (from, to) else {
                panic!("a gap without its range: {header}")
            };
            assert!(1 <= from && from <= to, "an empty gap: {header}");
            let id = header["id"].as_u64().expect("an id");
            assert!((50..=59).contains(&id), "a gap on an id without a mailbox: {header}");
            if let Some((prev, _)) = *last {
                assert!(from > prev, "a gap over what was received: {prev} then {header}");
            }
            *last = Some((to, id));
        }
        "ack" | "error" => {
            assert!(header.get("ref").is_some(), "an answer without ref: {header}");
            assert!(
                header["status"].as_u64().is_some(),
                "an answer without status: {header}"
            );
        }
        "online" | "offline" => assert!(header["id"].as_u64().is_some(), "presence without id: {header}"),
        _ => panic!("unknown envelope type: {header}"),
    }
}

/// One accepted connection and what the harness knows about it.
struct Slot {
    session: Session,
    flag: Arc<Flag>,
    waker: Waker,
    /// `poll_wake` was pending after the last step.
    armed: bool,
    /// Outbox length when last seen closed (it may only shrink from there).
    closed_len: Option<usize>,
    /// The first bytes written, to check the status line.
    head: Vec<u8>,
    /// The largest outbox so far.
    peak_tx: usize,
    /// Its output as the client reads it.
    wire: Wire,
}

impl Slot {
    fn new(session: Session) -> Slot {
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        Slot {
            session,
            flag,
            waker,
            armed: false,
            closed_len: None,
            head: Vec::new(),
            peak_tx: 0,
            wire: Wire::new(),
        }
    }

    fn poll_wake(&mut self) -> Poll<()> {
        let waker = self.waker.clone();
        self.session.poll_wake(&mut Context::from_waker(&waker))
    }

    /// Writes up to `n` bytes as an adapter would: by hand, or through `write_to`.
    fn drain(&mut self, now: Instant, n: usize, with_write_to: bool) {
        let bytes = if with_write_to {
            let mut written = Vec::new();
            let result = self.session.write_to(now, |iov: &[IoSlice<'_>]| {
                let room = n - written.len();
                if room == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let before = written.len();
                for s in iov {
                    let k = s.len().min(n - written.len());
                    written.extend_from_slice(&s[..k]);
                }
                Ok(written.len() - before)
            });
            assert!(result.is_ok(), "write_to failed: {result:?}");
            written.into()
        } else {
            let n = n.min(self.session.transmit().len());
            let bytes = self.session.transmit().copy_to_bytes(n);
            self.session.handle_writable(now);
            bytes
        };
        if tracing() {
            eprintln!("<< {:?}", bytes);
        }
        if self.head.len() < 9 {
            let take = (9 - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            assert!(
                b"HTTP/1.1 ".starts_with(&self.head),
                "output does not start with a status line: {:?}",
                String::from_utf8_lossy(&self.head)
            );
        }
        self.wire.feed(&bytes);
        if self.closed_len.is_some() {
            self.closed_len = Some(self.session.transmit().len());
        }
    }

    /// What was still to be written when the adapter drops the connection, seen as if sent.
    fn dropped(mut self, ended: &mut u64) {
        let out = self.session.transmit();
        let rest = out.copy_to_bytes(out.len());
        self.wire.feed(&rest);
        *ended += self.wire.upgrades;
    }

    /// Runs due timeouts; handling one must move the deadline past `now` within a few calls.
    fn timeouts(&mut self, now: Instant) {
        let mut turns = 0;
        while let Some(t) = self.session.poll_timeout() {
            if t > now {
                break;
            }
            self.session.handle_timeout(now);
            turns += 1;
            assert!(turns < 4, "handle_timeout does not move the deadline past now");
        }
    }
}

fn config(flags: u8, patterns: u8) -> Config {
    let mut c = Config::default();
    c.max_message_size = 4096;
    c.queue_limit = 4;
    c.max_connections = 3;
    c.ping_interval = Duration::from_secs(1);
    c.request_timeout = Duration::from_secs(2);
    c.close_timeout = Duration::from_millis(500);
    c.linger = Duration::from_millis(300);
    if flags & 8 != 0 {
        c.base_path = "/mq".to_owned();
    }
    if flags & 16 != 0 {
        c.cors = CorsPolicy::new(&["http://a.example"]).expect("a valid origin");
    }
    if flags & 32 != 0 {
        c.stats_token = Some("s3cr3t".to_owned());
    }
    if flags & 64 != 0 {
        c.websocket_role = Role::Echo;
    }
    c.secure = flags & 128 != 0;
    c.topics = match patterns & 3 {
        0 => IdSet::default(),
        1 => IdSet::parse_item("40-49").expect("a valid range"),
        2 => IdSet::parse_item("1-3").expect("a valid range"),
        _ => IdSet::all(),
    };
    if patterns & 3 != 3 {
        c.mailbox = Some(MailboxConfig {
            ids: IdSet::parse_item("50-59").expect("a valid range"),
            max_messages: 3,
            max_bytes: 3 * 4096 + 256,
            max_total_bytes: 8 * 4096,
            ttl: Duration::from_secs(2),
            full: if flags & 1 != 0 {
                FullPolicy::Refuse
            } else {
                FullPolicy::DropOldest
            },
        });
    }
    c.max_pending_replies = [2, 1, 0, 10_000][usize::from(patterns >> 2 & 3)];
    c.max_reply_timeout = Duration::from_millis([300, 50, 5000, 30_000][usize::from(patterns >> 4 & 3)]);
    c.max_watch = [4, 1, 0, 1024][usize::from(patterns >> 6)];
    c
}

fn run(data: &[u8]) {
    let baseline = live_bytes();
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let patterns = c.u8();
    let auth = FuzzAuth::default();
    auth.0.mode.store(flags & 7, Ordering::Relaxed);
    let mut now: Instant = epoch();
    let broker = Broker::with_authorizer(
        config(flags, patterns),
        "fuzz",
        auth.clone(),
        now,
        Duration::from_secs(1_800_000_000),
    );
    let mut slots: [Option<Slot>; SLOTS] = Default::default();
    let mut accepting = true;
    // Upgrades of sessions dropped so far (each may have been closed as too slow).
    let mut ended = 0u64;

    for _ in 0..MAX_OPS {
        let Some(tag) = c.next_byte() else { break };
        let k = usize::from(tag >> 4) % SLOTS;
        let mut touched = [false; SLOTS];
        touched[k] = true;
        let mut input: Option<Vec<u8>> = None;
        let mut chunked_reads = false;
        if tracing() {
            eprintln!("op {:#04x} slot {k} at +{:?}", tag, now - epoch());
        }
        match tag & 15 {
            0 => {
                if accepting {
                    if let Some(old) = slots[k].take() {
                        old.dropped(&mut ended);
                    }
                    slots[k] = Some(Slot::new(broker.accept(now)));
                }
            }
            1 => {
                let n = usize::from(c.u8());
                input = Some(c.bytes(n).to_vec());
            }
            2 => {
                let n = usize::from(c.u16());
                input = Some(c.bytes(n).to_vec());
            }
            3 => {
                let plen = usize::from(c.u8() % 16) + 1;
                let pattern = c.bytes(plen);
                let reps = usize::from(c.u16());
                let total = (pattern.len() * reps).min(MAX_STEP_INPUT);
                input = Some(pattern.iter().copied().cycle().take(total).collect());
                chunked_reads = true;
            }
            4 => {
                let how = c.u8() % 4;
                if let Some(s) = &mut slots[k] {
                    match how {
                        0 => s.session.handle_eof(now),
                        1 => s.session.read_from(now, |_| Ok(0)),
                        2 => s.session.read_from(now, |_| Err(io::ErrorKind::ConnectionReset.into())),
                        _ => s.session.read_from(now, |_| Err(io::ErrorKind::WouldBlock.into())),
                    }
                }
            }
            5 => {
                now += Duration::from_millis(u64::from(c.u16()));
                touched = [true; SLOTS];
                for s in slots.iter_mut().flatten() {
                    s.timeouts(now);
                }
            }
            6 => {
                accepting = false;
                touched = [true; SLOTS];
                for s in slots.iter_mut().flatten() {
                    s.session.handle_shutdown(now);
                }
            }
            7 => {
                if let Some(s) = &mut slots[k] {
                    s.session.handle_shutdown(now);
                }
            }
            8 => {
                let b = c.u8();
                let n = match usize::from(b >> 1) * 512 {
                    0 => usize::MAX,
                    n => n,
                };
                if let Some(s) = &mut slots[k] {
                    s.drain(now, n, b & 1 == 1);
                }
            }
            9 => {
                if let Some(s) = &mut slots[k] {
                    if s.poll_wake().is_ready() {
                        s.session.handle_wake(now);
                    }
                }
            }
            10 => {
                let b = c.u8();
                let reply = auth.0.deferred.lock().unwrap().pop_front();
                if let Some(reply) = reply {
                    match b % 6 {
                        0 => reply.decide(Decision::Allow { until: None }),
                        1 => reply.decide(Decision::Allow {
                            until: Some(now + Duration::from_millis(u64::from(b) * 20)),
                        }),
                        2 => reply.decide(Decision::Unauthenticated),
                        3 => reply.decide(Decision::Forbidden),
                        4 => reply.decide(Decision::Unavailable),
                        _ => drop(reply),
                    }
                }
                // The decision reaches its session only through a wake-up.
                touched = [false; SLOTS];
            }
            11 => {
                auth.0.mode.store(c.u8(), Ordering::Relaxed);
                touched = [false; SLOTS];
            }
            12 => {
                if let Some(old) = slots[k].take() {
                    old.dropped(&mut ended);
                }
            }
            13 => {
                if let Some(s) = &mut slots[k] {
                    s.session.handle_writable(now);
                }
            }
            14 => {
                if let Some(s) = &mut slots[k] {
                    s.session.handle_timeout(now);
                }
            }
            _ => {
                touched = [true; SLOTS];
                for s in slots.iter_mut().flatten() {
                    if s.poll_wake().is_ready() {
                        s.session.handle_wake(now);
                    }
                }
            }
        }
        if let (Some(input), Some(s)) = (input, &mut slots[k]) {
            if chunked_reads {
                // As an adapter reads: a chunk at a time, while the session wants to read.
                for chunk in input.chunks(READ_CHUNK) {
                    if !s.session.wants_read() {
                        break;
                    }
                    s.session.read_from(now, |buf| {
                        buf[..chunk.len()].copy_from_slice(chunk);
                        Ok(chunk.len())
                    });
                }
            } else if s.session.wants_read() && !input.is_empty() {
                s.session.handle_input(now, &input);
            }
        }
        check(&broker, &mut slots, &touched);
        let mut bound = BASE_HEAP + auth.0.deferred.lock().unwrap().len() * 256;
        for s in slots.iter_mut().flatten() {
            let tx = s.session.transmit().len();
            s.peak_tx = s.peak_tx.max(tx);
            let backlog = if DRAINED_OUTBOX_RELEASES_HEAP { tx } else { s.peak_tx };
            bound += SESSION_HEAP + OUTBOX_HEAP_PER_BYTE * backlog;
        }
        let live = live_bytes().saturating_sub(baseline);
        assert!(live <= bound, "{live} bytes live, bound {bound}");
    }

    // Everything written and every wake-up answered: a listener closed as too slow has said so
    // (1008) by now. Each listener is closed as too slow at most once, so the statistics count
    // no more such closes than upgraded sessions that are no longer open listeners.
    for _ in 0..4 {
        for s in slots.iter_mut().flatten() {
            s.drain(now, usize::MAX, false);
            if s.poll_wake().is_ready() {
                s.session.handle_wake(now);
            }
        }
    }
    for s in slots.iter_mut().flatten() {
        s.drain(now, usize::MAX, false);
        let open = s.wire.open_listener() && !s.session.should_shutdown_write();
        ended += s.wire.upgrades - u64::from(open);
    }
    let slow = broker.snapshot(now).slow_listeners_closed;
    let per_session = if SLOW_CLOSE_COUNTED_ONCE { 1 } else { 2 };
    assert!(
        slow <= per_session * ended,
        "{slow} listeners counted as closed for being slow, yet only {ended} upgraded sessions ended"
    );
    // The adapter goes away: everything is released.
    drop(slots);
    assert_eq!(
        broker.registry().listeners(),
        0,
        "listeners left after every session was dropped"
    );
    let snap = broker.snapshot(now);
    assert_eq!(snap.connections, 0, "connections left after every session was dropped");
    assert_eq!(snap.listeners, 0, "listeners counted after every session was dropped");
    assert_eq!(
        snap.topic_listeners, 0,
        "topic listeners left after every session was dropped"
    );
    assert_eq!(
        snap.pending_replies, 0,
        "replies still awaited after every session was dropped"
    );
    assert_eq!(snap.presence_watches, 0, "watches left after every session was dropped");
    auth.0.deferred.lock().unwrap().clear();
    drop(broker);
    drop(auth);
    assert_eq!(
        live_bytes(),
        baseline,
        "memory left behind after everything was dropped"
    );
}

fn check(broker: &Broker, slots: &mut [Option<Slot>; SLOTS], touched: &[bool; SLOTS]) {
    let mut alive = 0u64;
    for (i, s) in slots.iter_mut().enumerate() {
        let Some(s) = s else { continue };
        alive += 1;
        let closed = s.session.is_closed();
        let tx = s.session.transmit().len();
        assert!(tx <= TX_BOUND, "slot {i}: {tx} bytes waiting to be written");
        assert_eq!(
            s.session.poll_timeout().is_none(),
            closed,
            "slot {i}: deadline and closed disagree"
        );
        if let Some(at) = s.closed_len {
            assert!(closed, "slot {i}: a closed session reopened");
            assert!(tx <= at, "slot {i}: a closed session queued more bytes");
        } else if closed {
            s.closed_len = Some(tx);
        }
        if closed {
            assert!(!s.session.wants_read(), "slot {i}: a closed session wants to read");
        }
        // No lost wake-up: nothing but a wake may make a pending, untouched session ready.
        let woken = s.flag.0.swap(false, Ordering::SeqCst);
        let ready = s.poll_wake().is_ready();
        if s.armed && !touched[i] && !woken {
            assert!(!ready, "slot {i}: poll_wake became ready without a wake-up");
        }
        s.armed = !ready;
    }
    let snap = broker.snapshot(epoch());
    let config = broker.config();
    assert_eq!(snap.connections, alive, "connection count");
    assert!(snap.listeners <= alive, "more listeners than sessions");
    assert!(snap.topic_listeners <= alive, "more topic listeners than sessions");
    assert!(
        snap.pending_replies <= alive.min(config.max_pending_replies as u64),
        "{} replies awaited by {alive} sessions, limit {}",
        snap.pending_replies,
        config.max_pending_replies
    );
    assert!(
        snap.presence_watches <= alive * config.max_watch as u64,
        "{} ids watched by {alive} sessions, {} each at most",
        snap.presence_watches,
        config.max_watch
    );
    let settled = snap.replies + snap.replies_timed_out + snap.replies_failed;
    assert!(
        settled <= snap.messages_received,
        "{settled} requests settled, {} messages received",
        snap.messages_received
    );
    // A topic message counts as delivered once per listener that took it (at most one per
    // session); any other message at most once, and never both delivered and rejected.
    // A mailbox message is delivered again to each listener that replays it: no upper bound.
    let (fan_out, delivered) = if config.mailbox.is_some() {
        (u64::MAX / SLOTS as u64, 0)
    } else if config.topics.is_empty() {
        (1, snap.messages_delivered)
    } else {
        (SLOTS as u64, 0)
    };
    assert!(
        delivered + snap.messages_rejected <= snap.messages_received
            && snap.messages_delivered <= snap.messages_received.saturating_mul(fan_out),
        "delivered {} + rejected {} > received {}",
        snap.messages_delivered,
        snap.messages_rejected,
        snap.messages_received
    );
}

fuzz_target!(|data: &[u8]| run(data));
