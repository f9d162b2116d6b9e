//! A whole `Broker` and up to four `Session`s driven by a random operation sequence, with a
//! virtual clock and an authorizer that can answer at once, later, or never; invariants are
//! checked after every step.
//!
//! Input: 1 parameter byte, then operations.
//! - byte 0: bits 0–2 the authorizer's first mode (see `AuthMode`); bit 3 the base path `/mq`;
//!   bit 4 CORS allows `http://a.example`; bit 5 a statistics token `s3cr3t`; bit 6 the echo
//!   WebSocket role instead of listeners; bit 7 TLS (`https` own origin);
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
//! sessions; live heap stays within a bound of the sessions' outboxes; and once everything is
//! dropped, no listener, connection or byte of memory is left behind.

#![no_main]

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Buf;
use fedbroker_core::ws::Role;
use fedbroker_core::{
    Action, AuthReply, AuthRequest, AuthTime, Authorizer, Broker, Config, CorsPolicy, Decision, Session, HIGH_WATER,
    READ_CHUNK,
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
/// Whether the heap an outbox took must be released once it is drained (see `ws_frame.rs`):
/// off for now, so a session's bound follows its largest backlog so far.
const DRAINED_OUTBOX_RELEASES_HEAP: bool = true;
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
        if self.closed_len.is_some() {
            self.closed_len = Some(self.session.transmit().len());
        }
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

fn config(flags: u8) -> Config {
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
    c
}

fn run(data: &[u8]) {
    let baseline = live_bytes();
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let auth = FuzzAuth::default();
    auth.0.mode.store(flags & 7, Ordering::Relaxed);
    let mut now: Instant = epoch();
    let broker = Broker::with_authorizer(
        config(flags),
        "fuzz",
        auth.clone(),
        now,
        Duration::from_secs(1_800_000_000),
    );
    let mut slots: [Option<Slot>; SLOTS] = Default::default();
    let mut accepting = true;

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
                    slots[k] = None;
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
            12 => slots[k] = None,
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

    // The adapter goes away: everything is released.
    for s in slots.iter_mut().flatten() {
        s.drain(now, usize::MAX, false);
    }
    drop(slots);
    assert_eq!(
        broker.registry().listeners(),
        0,
        "listeners left after every session was dropped"
    );
    let snap = broker.snapshot(now);
    assert_eq!(snap.connections, 0, "connections left after every session was dropped");
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
    assert_eq!(snap.connections, alive, "connection count");
    assert!(snap.listeners <= alive, "more listeners than sessions");
    assert!(
        snap.messages_delivered + snap.messages_rejected <= snap.messages_received,
        "delivered {} + rejected {} > received {}",
        snap.messages_delivered,
        snap.messages_rejected,
        snap.messages_received
    );
}

fuzz_target!(|data: &[u8]| run(data));
