//! The fault scenario: mailbox ids under load while listeners drop their connections at random
//! and reconnect with `?since=`, and while the broker is killed with SIGKILL and restarted.
//!
//! S senders POST to L mailbox ids; each id belongs to one sender, which round-robins over its
//! ids on one keep-alive connection with W requests in flight. Every `202`/`204` is an
//! acknowledgement and names the message's seq (`Fedbroker-Seq`); the sender records (id, seq,
//! tag), the tag being the sender's own message counter carried in the self-checking payload.
//! `503`/`507`, a refused connection or a connection lost with requests in flight (the broker was
//! killed) are not acknowledgements: those messages are sent again, with a bounded backoff. So a
//! message can reach its listener without ever being acknowledged (its answer died with the
//! broker): that is counted as "delivered unacked" and is allowed.
//!
//! Each id has one listener, plain or envelope (`fedbroker.v1`), that remembers the last seq it
//! received (a plain listener counts from its `since`, an envelope listener reads the header) and
//! at random (seeded) drops its connection abruptly and comes back with `?since=LAST` after a
//! random pause. A `410` or a `gap` event (messages dropped from the mailbox), a `409` (the
//! mailbox went back: the broker forgot acknowledged messages) and close code `4002` are
//! recorded; connection failures while the broker is down are retried with a bounded backoff.
//!
//! The bench starts the broker itself (`--broker-cmd`) on a port it picked, so that after each
//! SIGKILL it can start the same command line on the same address. At the end, once the senders
//! are done and the listeners have caught up (or `--drain-timeout` passed), every acknowledged
//! message must have been delivered exactly once, at its seq, with its payload, in seq order.

use std::collections::VecDeque;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::fed::{parse_envelope, HttpSender, Response, ENVELOPE};
use crate::net::{loadavg, Ws};
use crate::payload;
use crate::scenario::{new_hist, us};

/// Where the broker comes from.
pub enum BrokerSpec {
    /// Started (and restarted) by the bench: program and arguments, without `--listen`.
    Command { argv: Vec<String>, log: Option<PathBuf> },
    /// Already running at this address (no kills possible).
    Running(SocketAddr),
}

/// Fault scenario settings.
pub struct Fault {
    pub broker: BrokerSpec,
    pub ids: u32,
    pub first_id: u32,
    pub senders: u32,
    pub payload: usize,
    pub messages: u64,
    pub window: usize,
    /// Every n-th listener speaks the envelope (0: none).
    pub envelope_every: u32,
    /// Per message received, the chance that the listener drops its connection.
    pub drop_prob: f64,
    /// A dropped listener stays away for up to this long.
    pub offline: Duration,
    /// SIGKILL + restart this many times, spread evenly over the messages.
    pub kills: u32,
    /// And every this long while the senders run.
    pub restart_every: Option<Duration>,
    /// Between the kill and the restart.
    pub down: Duration,
    pub seed: u64,
    pub drain_timeout: Duration,
    /// A client that cannot reach the broker for this long fails the run.
    pub reconnect_timeout: Duration,
    pub stall: Duration,
    pub label: String,
}

/// xorshift64*: small, seeded, good enough to decide when to drop a connection.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

// ---- the broker as a child process ---------------------------------------------------------

/// The broker child: started on a fixed address, killed with SIGKILL, started again.
struct BrokerProc {
    /// Program and arguments, `--listen 127.0.0.1:PORT` included.
    argv: Vec<String>,
    log: Option<PathBuf>,
    child: Option<Child>,
    addr: SocketAddr,
}

impl BrokerProc {
    /// Picks a free loopback port and starts the broker on it.
    async fn start(mut argv: Vec<String>, log: Option<PathBuf>) -> Result<Self, String> {
        if argv.is_empty() {
            return Err("--broker-cmd is empty".into());
        }
        if argv.iter().any(|a| a == "--listen" || a.starts_with("--listen=")) {
            return Err("--broker-cmd must not contain --listen: the bench picks the address".into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("picking a free port: {e}"))?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        argv.extend(["--listen".to_string(), addr.to_string()]);
        let mut b = BrokerProc {
            argv,
            log,
            child: None,
            addr,
        };
        b.spawn().await?;
        Ok(b)
    }

    /// Starts the command and waits for its `listening on` line (a few tries: the port may
    /// still be held for a moment after a kill).
    async fn spawn(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..5 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            match self.spawn_once().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn spawn_once(&mut self) -> Result<(), String> {
        let stderr = match &self.log {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. It makes the
        // broker die with the bench, so that a bench killed by its caller leaves no broker behind
        // on the port.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("starting {}: {e}", self.argv[0]))?;
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Reads the address, then drains stdout until the broker exits.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = rx.try_recv() {
                if a != self.addr.to_string() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("the broker listens on {a}, not on {}", self.addr));
                }
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("the broker exited at start ({st}): {}", self.argv.join(" ")));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the broker printed no 'listening on' line in 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, reaped.
    fn kill9(&mut self) -> Result<(), String> {
        if let Some(mut c) = self.child.take() {
            if let Ok(Some(st)) = c.try_wait() {
                return Err(format!("the broker had exited by itself ({st}) before the kill"));
            }
            c.kill().map_err(|e| format!("SIGKILL: {e}"))?;
            c.wait().map_err(|e| format!("wait after SIGKILL: {e}"))?;
        }
        Ok(())
    }

    /// SIGTERM (a clean shutdown), then SIGKILL after 5 s.
    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            for _ in 0..100 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

// ---- shared progress -----------------------------------------------------------------------

/// What every task updates and the supervisor watches.
struct Shared {
    addr: SocketAddr,
    acked: AtomicU64,
    delivered: AtomicU64,
    /// Retries and reconnections: progress too while the broker is down.
    churn: AtomicU64,
    /// Per id (index from 0): highest acknowledged seq.
    max_acked: Vec<AtomicU64>,
    /// Per id: last seq its listener received.
    last_seen: Vec<AtomicU64>,
}

/// Backoff for reconnecting: 5 ms doubling to 500 ms; fails once the peer has been unreachable
/// for `limit`.
struct Backoff {
    next: Duration,
    since: Option<Instant>,
    limit: Duration,
}

impl Backoff {
    fn new(limit: Duration) -> Self {
        Backoff {
            next: Duration::from_millis(5),
            since: None,
            limit,
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(5);
        self.since = None;
    }

    async fn wait(&mut self, what: &str, e: &str) -> Result<(), String> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.limit {
            return Err(format!("{what}: broker unreachable for {:?}: {e}", self.limit));
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_millis(500));
        Ok(())
    }
}

// ---- senders -------------------------------------------------------------------------------

/// One message of a sender: which of its ids (slot) and its tag (the payload's sequence).
#[derive(Clone, Copy)]
struct Msg {
    slot: usize,
    tag: u64,
}

#[derive(Default)]
struct SenderOut {
    /// Per slot: (seq, tag) of every acknowledged message.
    acks: Vec<Vec<(u64, u64)>>,
    acked_202: u64,
    acked_204: u64,
    /// `503`/`507` answers (sent again).
    refused: u64,
    /// Messages in flight on a lost connection (sent again).
    resent: u64,
    /// Connections lost or refused.
    conn_failures: u64,
    last_ack: Option<Instant>,
    hist: Option<Histogram<u64>>,
}

struct SenderPlan {
    index: u32,
    /// Id indexes (from 0) this sender owns.
    ids: Vec<u32>,
    count: u64,
}

async fn sender_task(a: Arc<Fault>, sh: Arc<Shared>, p: SenderPlan) -> Result<SenderOut, String> {
    let what = format!("sender {}", p.index);
    let mut out = SenderOut {
        acks: vec![Vec::new(); p.ids.len()],
        ..SenderOut::default()
    };
    let mut hist = new_hist();
    let mut retry: VecDeque<Msg> = VecDeque::new();
    let mut inflight: VecDeque<(Msg, Instant)> = VecDeque::new();
    let mut next_tag = 0u64;
    let mut conn: Option<HttpSender> = None;
    let mut backoff = Backoff::new(a.reconnect_timeout);
    let mut resps: Vec<Response> = Vec::new();
    let mut refused_streak = 0u32;
    loop {
        let Some(h) = conn.as_mut() else {
            match HttpSender::connect_any(sh.addr).await {
                Ok(h) => {
                    conn = Some(h);
                    backoff.reset();
                }
                Err(e) => {
                    out.conn_failures += 1;
                    sh.churn.fetch_add(1, Ordering::Relaxed);
                    backoff.wait(&what, &e).await?;
                }
            }
            continue;
        };
        while inflight.len() < a.window {
            let m = if let Some(m) = retry.pop_front() {
                m
            } else if next_tag < p.count {
                let m = Msg {
                    slot: (next_tag % p.ids.len() as u64) as usize,
                    tag: next_tag,
                };
                next_tag += 1;
                m
            } else {
                break;
            };
            let id = a.first_id + p.ids[m.slot];
            h.push_to(id, a.payload, |b| payload::encode(b, a.payload, p.index, m.tag));
            inflight.push_back((m, Instant::now()));
        }
        if inflight.is_empty() {
            break;
        }
        let r = match h.flush().await {
            Ok(()) => h.read(&mut resps).await,
            Err(e) => Err(e),
        };
        if r.is_err() {
            // The broker went away (killed) or closed the connection: whatever is in flight may or
            // may not have been kept; send it again, in order.
            out.conn_failures += 1;
            out.resent += inflight.len() as u64;
            sh.churn.fetch_add(1, Ordering::Relaxed);
            for (m, _) in inflight.drain(..).rev() {
                retry.push_front(m);
            }
            resps.clear();
            conn = None;
            continue;
        }
        let mut refused_now = false;
        for r in resps.drain(..) {
            let (m, t0) = inflight
                .pop_front()
                .ok_or_else(|| format!("{what}: more responses than requests"))?;
            let id = a.first_id + p.ids[m.slot];
            match r.status {
                202 | 204 => {
                    let seq = r.seq.ok_or_else(|| {
                        format!(
                            "{what}: POST /{id} answered {} without Fedbroker-Seq (is --mailbox covering the ids?)",
                            r.status
                        )
                    })?;
                    if r.status == 202 {
                        out.acked_202 += 1;
                    } else {
                        out.acked_204 += 1;
                    }
                    out.acks[m.slot].push((seq, m.tag));
                    sh.max_acked[p.ids[m.slot] as usize].fetch_max(seq, Ordering::Relaxed);
                    sh.acked.fetch_add(1, Ordering::Relaxed);
                    hist.saturating_record(t0.elapsed().as_nanos().max(1) as u64);
                    out.last_ack = Some(Instant::now());
                }
                503 | 507 => {
                    out.refused += 1;
                    refused_now = true;
                    sh.churn.fetch_add(1, Ordering::Relaxed);
                    retry.push_back(m);
                }
                s => {
                    return Err(format!(
                    "{what}: POST /{id} answered {s} {:?} (the fault scenario expects 202/204, or 503/507 to retry)",
                    r.text()
                ))
                }
            }
        }
        if refused_now {
            refused_streak = (refused_streak + 1).min(8);
            tokio::time::sleep(Duration::from_millis(1 << refused_streak)).await;
        } else {
            refused_streak = 0;
        }
    }
    out.hist = Some(hist);
    Ok(out)
}

// ---- listeners -----------------------------------------------------------------------------

#[derive(Default)]
struct ListenerOut {
    /// (seq, tag) of every message received, seqs strictly increasing.
    got: Vec<(u64, u64)>,
    /// A seq received a second time.
    duplicates: u64,
    /// A seq below the last one that had not been received before.
    out_of_order: u64,
    /// Seqs an envelope listener never saw and was not told about (not by itself a loss: a seq
    /// taken by a message that was never acknowledged may be skipped).
    skipped: u64,
    /// `gap` events and `410`s: messages the mailbox no longer had.
    gaps: u64,
    gap_seqs: u64,
    /// Voluntary drops (then a reconnect with since).
    drops: u64,
    /// Connections lost otherwise (the broker killed, 4002) and re-established.
    lost_conns: u64,
    closed_4002: u64,
    /// `409`: the broker's last seq went below ours (it forgot acknowledged messages).
    reset: Option<String>,
    last_delivery: Option<Instant>,
}

enum Upgrade {
    Open(Box<Ws>),
    /// A refusal before the upgrade: status and `Fedbroker-Seq`.
    Refused(u16, Option<u64>),
}

async fn connect_listener(addr: SocketAddr, id: u32, since: u64, envelope: bool) -> Result<Upgrade, String> {
    let tcp = crate::net::connect_tcp(addr, None).await?;
    let path = format!("/{id}?since={since}");
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    if envelope {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(ENVELOPE));
    }
    let cfg = WebSocketConfig::default().max_message_size(Some(64 << 20));
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg)),
    )
    .await
    .map_err(|_| format!("WebSocket handshake {path}: no answer in 5 s"))?;
    match r {
        Ok((ws, resp)) => {
            if envelope
                && resp.headers().get("sec-websocket-protocol").map(|v| v.as_bytes()) != Some(ENVELOPE.as_bytes())
            {
                return Err(format!("GET {path}: the broker did not confirm {ENVELOPE}"));
            }
            Ok(Upgrade::Open(Box::new(ws)))
        }
        Err(tungstenite::Error::Http(resp)) => {
            let seq = resp
                .headers()
                .get("fedbroker-seq")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            Ok(Upgrade::Refused(resp.status().as_u16(), seq))
        }
        Err(e) => Err(format!("WebSocket handshake {path}: {e}")),
    }
}

/// What one received frame was.
enum Frame {
    Message(u64, u64),
    Gap(u64, u64),
}

/// Listener of id index `j`: receives, checks, drops at random, reconnects with `since`.
async fn listener_task(
    a: Arc<Fault>,
    sh: Arc<Shared>,
    j: u32,
    mut stop: watch::Receiver<bool>,
) -> Result<ListenerOut, String> {
    let id = a.first_id + j;
    let owner = j % a.senders;
    let envelope = a.envelope_every > 0 && j % a.envelope_every == a.envelope_every - 1;
    let what = format!("{} listener on {id}", if envelope { "envelope" } else { "plain" });
    let mut rng = Rng::new(a.seed ^ (u64::from(id) << 32));
    let mut out = ListenerOut::default();
    let mut last = 0u64;
    let mut backoff = Backoff::new(a.reconnect_timeout);
    'connect: loop {
        if *stop.borrow() {
            return Ok(out);
        }
        let mut ws = match connect_listener(sh.addr, id, last, envelope).await {
            Ok(Upgrade::Open(ws)) => {
                backoff.reset();
                ws
            }
            Ok(Upgrade::Refused(410, Some(n))) if n > last => {
                // Messages after `last` are gone from the mailbox: resume after them.
                out.gaps += 1;
                out.gap_seqs += n - last;
                last = n;
                continue;
            }
            Ok(Upgrade::Refused(409, n)) => {
                out.reset = Some(format!(
                    "{what}: GET ?since={last} answered 409: the broker's last seq is {}, below what it had delivered (acknowledged messages forgotten across a restart)",
                    n.map_or("?".into(), |n| n.to_string())
                ));
                return Ok(out);
            }
            Ok(Upgrade::Refused(503, _)) => {
                sh.churn.fetch_add(1, Ordering::Relaxed);
                backoff.wait(&what, "503").await?;
                continue;
            }
            Ok(Upgrade::Refused(s, _)) => return Err(format!("{what}: GET /{id}?since={last} answered {s}")),
            Err(e) => {
                sh.churn.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    r = backoff.wait(&what, &e) => r?,
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        loop {
            let m = tokio::select! {
                m = ws.next() => m,
                _ = stop.changed() => return Ok(out),
            };
            let data = match m {
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Text(_))) => return Err(format!("{what}: a text message")),
                Some(Ok(Message::Close(c))) => {
                    if c.as_ref().map(|c| c.code) == Some(CloseCode::Library(4002)) {
                        out.closed_4002 += 1;
                    }
                    out.lost_conns += 1;
                    sh.churn.fetch_add(1, Ordering::Relaxed);
                    continue 'connect;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    out.lost_conns += 1;
                    sh.churn.fetch_add(1, Ordering::Relaxed);
                    continue 'connect;
                }
            };
            let frame = if envelope {
                let (h, body) = parse_envelope(&data).map_err(|e| format!("{what}: {e}"))?;
                let num = |k: &str| h.get(k).and_then(Value::as_u64);
                if num("id") != Some(u64::from(id)) {
                    return Err(format!("{what}: an envelope for another id: {h}"));
                }
                match h.get("type").and_then(Value::as_str) {
                    Some("message") => {
                        let seq = num("seq").ok_or_else(|| format!("{what}: a message without seq: {h}"))?;
                        Frame::Message(seq, check(&what, body, a.payload, owner)?)
                    }
                    Some("gap") => match (num("from"), num("to")) {
                        (Some(f), Some(t)) if f <= t => Frame::Gap(f, t),
                        _ => return Err(format!("{what}: a malformed gap event: {h}")),
                    },
                    _ => return Err(format!("{what}: unexpected envelope: {h}")),
                }
            } else {
                Frame::Message(last + 1, check(&what, &data, a.payload, owner)?)
            };
            let (seq, tag) = match frame {
                Frame::Gap(f, t) => {
                    out.gaps += 1;
                    out.gap_seqs += t - f + 1;
                    last = last.max(t);
                    continue;
                }
                Frame::Message(seq, tag) => (seq, tag),
            };
            if seq <= last {
                if out.got.binary_search_by_key(&seq, |g| g.0).is_ok() {
                    out.duplicates += 1;
                } else {
                    out.out_of_order += 1;
                }
                continue;
            }
            out.skipped += seq - last - 1;
            last = seq;
            out.got.push((seq, tag));
            out.last_delivery = Some(Instant::now());
            sh.last_seen[j as usize].store(last, Ordering::Relaxed);
            sh.delivered.fetch_add(1, Ordering::Relaxed);
            if rng.chance(a.drop_prob) {
                // Abrupt: the TCP connection is dropped without a close handshake.
                drop(ws);
                out.drops += 1;
                let pause = rng.below(a.offline.as_millis() as u64 + 1);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    _ = stop.changed() => return Ok(out),
                }
                continue 'connect;
            }
        }
    }
}

/// Checks a payload's bytes and sender; returns its tag.
fn check(what: &str, p: &[u8], len: usize, owner: u32) -> Result<u64, String> {
    let d = payload::decode(p, len).map_err(|e| format!("{what}: {e}"))?;
    if d.sender != owner {
        return Err(format!(
            "{what}: a message from sender {}, which does not send to it",
            d.sender
        ));
    }
    Ok(d.seq)
}

// ---- kills ---------------------------------------------------------------------------------

/// Kills and restarts the broker: at `kills` evenly spaced points of the acknowledged count, and
/// every `restart_every`, until the senders are done. Returns the broker and each restart's
/// time from its exec to its `listening on` line (the store's recovery is in it).
async fn killer(
    a: Arc<Fault>,
    sh: Arc<Shared>,
    mut broker: BrokerProc,
    mut done: watch::Receiver<bool>,
) -> Result<(BrokerProc, Vec<f64>), String> {
    let mut marks: VecDeque<u64> = (1..=u64::from(a.kills))
        .map(|k| a.messages * k / (u64::from(a.kills) + 1))
        .collect();
    let mut next_timed = a.restart_every.map(|d| Instant::now() + d);
    let mut times = Vec::new();
    loop {
        if *done.borrow() {
            return Ok((broker, times));
        }
        let acked = sh.acked.load(Ordering::Relaxed);
        let by_count = marks.front().is_some_and(|m| acked >= *m);
        let by_time = next_timed.is_some_and(|t| Instant::now() >= t);
        if by_count || by_time {
            if by_count {
                marks.pop_front();
            }
            broker.kill9()?;
            tokio::time::sleep(a.down).await;
            let t0 = Instant::now();
            broker
                .spawn()
                .await
                .map_err(|e| format!("restart after SIGKILL: {e}"))?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            sh.churn.fetch_add(1, Ordering::Relaxed);
            next_timed = a.restart_every.map(|d| Instant::now() + d);
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
            _ = done.changed() => {}
        }
    }
}

// ---- the run -------------------------------------------------------------------------------

/// Runs the scenario. `Err`: the run broke down. `Ok`: the JSON result, and why it failed when an
/// acknowledged message was lost, duplicated or delivered out of order.
pub async fn fault(a: Fault) -> Result<(Value, Option<String>), String> {
    let load = loadavg();
    payload::epoch();
    let (broker, addr, argv) = match &a.broker {
        BrokerSpec::Command { argv, log } => {
            let b = BrokerProc::start(argv.clone(), log.clone()).await?;
            let (addr, argv) = (b.addr, b.argv.join(" "));
            (Some(b), addr, argv)
        }
        BrokerSpec::Running(addr) => {
            if a.kills > 0 || a.restart_every.is_some() {
                return Err("--kills and --restart-every need --broker-cmd (the bench restarts the broker)".into());
            }
            (None, *addr, String::new())
        }
    };
    let a = Arc::new(a);
    let sh = Arc::new(Shared {
        addr,
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        churn: AtomicU64::new(0),
        max_acked: (0..a.ids).map(|_| AtomicU64::new(0)).collect(),
        last_seen: (0..a.ids).map(|_| AtomicU64::new(0)).collect(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let mut listeners = JoinSet::new();
    for j in 0..a.ids {
        let (a, sh, stop) = (a.clone(), sh.clone(), stop_rx.clone());
        listeners.spawn(async move { listener_task(a, sh, j, stop).await.map(|o| (j, o)) });
    }
    // Listeners first (since=0 from the start), then the senders.
    crate::fed::wait_stat(addr, "listeners", u64::from(a.ids)).await?;
    let start = Instant::now();
    let mut senders = JoinSet::new();
    let mut owned: Vec<Vec<u32>> = Vec::new();
    for i in 0..a.senders {
        let ids: Vec<u32> = (i..a.ids).step_by(a.senders as usize).collect();
        owned.push(ids.clone());
        let count = a.messages / u64::from(a.senders) + u64::from(u64::from(i) < a.messages % u64::from(a.senders));
        let p = SenderPlan { index: i, ids, count };
        let (a, sh) = (a.clone(), sh.clone());
        senders.spawn(async move { sender_task(a, sh, p).await.map(|o| (i, o)) });
    }
    let mut killer_task = broker.map(|b| tokio::spawn(killer(a.clone(), sh.clone(), b, done_rx)));

    // Supervise: senders to completion, then the listeners catch up.
    let mut souts: Vec<Option<SenderOut>> = (0..a.senders).map(|_| None).collect();
    let mut seen = (u64::MAX, Instant::now());
    let mut drain_start: Option<Instant> = None;
    let mut drained = true;
    let mut louts: Vec<ListenerOut> = (0..a.ids).map(|_| ListenerOut::default()).collect();
    let mut reset = vec![false; a.ids as usize];
    loop {
        tokio::select! {
            Some(r) = senders.join_next(), if !senders.is_empty() => match r {
                Ok(Ok((i, o))) => souts[i as usize] = Some(o),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("sender task failed: {e}")),
            },
            Some(r) = listeners.join_next() => match r {
                // Only a mailbox that went back (409) ends a listener early: counted below.
                Ok(Ok((j, o))) if o.reset.is_some() => {
                    reset[j as usize] = true;
                    louts[j as usize] = o;
                }
                Ok(Ok(_)) => return Err("a listener stopped early".into()),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("listener task failed: {e}")),
            },
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if let Some(k) = killer_task
            .as_mut()
            .filter(|k| k.is_finished() && drain_start.is_none())
        {
            // It only finishes early on an error.
            match k.await {
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("kill task failed: {e}")),
                Ok(Ok(_)) => return Err("the kill task ended before the senders".into()),
            }
        }
        let moved =
            sh.acked.load(Ordering::Relaxed) + sh.delivered.load(Ordering::Relaxed) + sh.churn.load(Ordering::Relaxed);
        if moved != seen.0 {
            seen = (moved, Instant::now());
        } else if seen.1.elapsed() > a.stall && drain_start.is_some() {
            // Nothing more is coming: the check below says what is missing.
            drained = false;
            break;
        } else if seen.1.elapsed() > a.stall {
            return Err(format!(
                "no progress for {:?}: {} acknowledged, {} delivered",
                a.stall,
                sh.acked.load(Ordering::Relaxed),
                sh.delivered.load(Ordering::Relaxed)
            ));
        }
        if senders.is_empty() {
            let t = *drain_start.get_or_insert_with(|| {
                let _ = done_tx.send(true);
                Instant::now()
            });
            let caught_up = sh
                .max_acked
                .iter()
                .zip(&sh.last_seen)
                .zip(&reset)
                .all(|((m, l), r)| *r || l.load(Ordering::Relaxed) >= m.load(Ordering::Relaxed));
            if caught_up {
                break;
            }
            if t.elapsed() > a.drain_timeout {
                drained = false;
                break;
            }
        }
    }
    let (mut broker, restart_ms) = match killer_task {
        Some(k) => {
            let (b, t) = k.await.map_err(|e| format!("kill task failed: {e}"))??;
            (Some(b), t)
        }
        None => (None, Vec::new()),
    };
    // Late duplicates would arrive now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    while let Some(r) = listeners.join_next().await {
        match r {
            Ok(Ok((j, o))) => louts[j as usize] = o,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("listener task failed: {e}")),
        }
    }
    if let Some(b) = broker.as_mut() {
        b.stop().await;
    }

    // ---- the check ---------------------------------------------------------------------------
    let souts: Vec<SenderOut> = souts.into_iter().map(Option::unwrap_or_default).collect();
    verify(&a, &owned, souts, louts, start, drained, restart_ms, load, argv)
}

/// Compares what was acknowledged with what was delivered; prints the result line.
#[allow(clippy::too_many_arguments)]
fn verify(
    a: &Fault,
    owned: &[Vec<u32>],
    souts: Vec<SenderOut>,
    louts: Vec<ListenerOut>,
    start: Instant,
    drained: bool,
    restart_ms: Vec<f64>,
    load: f64,
    argv: String,
) -> Result<(Value, Option<String>), String> {
    let mut acks: Vec<Vec<(u64, u64)>> = vec![Vec::new(); a.ids as usize];
    let mut hist = new_hist();
    let (mut a202, mut a204, mut refused, mut resent, mut conn_failures) = (0, 0, 0, 0, 0);
    let mut last_ack: Option<Instant> = None;
    for (i, o) in souts.into_iter().enumerate() {
        for (slot, v) in o.acks.into_iter().enumerate() {
            acks[owned[i][slot] as usize].extend(v);
        }
        if let Some(h) = o.hist {
            hist.add(&h).expect("same histogram bounds");
        }
        a202 += o.acked_202;
        a204 += o.acked_204;
        refused += o.refused;
        resent += o.resent;
        conn_failures += o.conn_failures;
        last_ack = last_ack.max(o.last_ack);
    }
    let (mut acked, mut delivered, mut ok, mut lost, mut wrong, mut reused, mut unacked) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut first_bad: Option<String> = None;
    for (j, (mut ack, l)) in acks.into_iter().zip(&louts).enumerate() {
        let id = a.first_id + j as u32;
        ack.sort_unstable();
        acked += ack.len() as u64;
        delivered += l.got.len() as u64;
        for w in ack.windows(2).filter(|w| w[0].0 == w[1].0) {
            reused += 1;
            first_bad.get_or_insert_with(|| {
                format!(
                    "id {id}: seq {} acknowledged twice (tags {} and {})",
                    w[0].0, w[0].1, w[1].1
                )
            });
        }
        for &(seq, tag) in &ack {
            match l.got.binary_search_by_key(&seq, |g| g.0) {
                Ok(k) if l.got[k].1 == tag => ok += 1,
                Ok(k) => {
                    wrong += 1;
                    first_bad.get_or_insert_with(|| {
                        format!(
                            "id {id}: seq {seq} acknowledged for message {tag}, delivered with message {}",
                            l.got[k].1
                        )
                    });
                }
                Err(_) => {
                    lost += 1;
                    first_bad.get_or_insert_with(|| {
                        format!("id {id}: acknowledged seq {seq} (message {tag}) never delivered")
                    });
                }
            }
        }
        unacked += l
            .got
            .iter()
            .filter(|g| ack.binary_search_by_key(&g.0, |x| x.0).is_err())
            .count() as u64;
    }
    let sum = |f: fn(&ListenerOut) -> u64| louts.iter().map(f).sum::<u64>();
    let duplicates = sum(|l| l.duplicates);
    let out_of_order = sum(|l| l.out_of_order);
    let gaps = sum(|l| l.gaps);
    let gap_seqs = sum(|l| l.gap_seqs);
    let drops = sum(|l| l.drops);
    let lost_conns = sum(|l| l.lost_conns);
    let closed_4002 = sum(|l| l.closed_4002);
    let skipped = sum(|l| l.skipped);
    let resets = louts.iter().filter(|l| l.reset.is_some()).count();
    let last_delivery = louts.iter().filter_map(|l| l.last_delivery).max();
    let secs = |t: Option<Instant>| t.map_or(0.0, |t| (t - start).as_secs_f64()).max(1e-9);
    let ack_rate = acked as f64 / secs(last_ack);
    let delivery_rate = delivered as f64 / secs(last_delivery);
    let envelope_listeners = a.ids.checked_div(a.envelope_every).unwrap_or(0);
    let mut rs = restart_ms.clone();
    rs.sort_by(f64::total_cmp);
    let restarts = rs.len();
    let line = format!(
        "fault {}: {acked} messages acked ({a202} × 202, {a204} × 204), {delivered} delivered: lost {lost}, duplicates {duplicates}, out of order {}, delivered unacked {unacked}; {} listener reconnects ({drops} dropped at random, {lost_conns} cut), {restarts} broker restarts (SIGKILL{}), {} sends retried ({refused} refused 503/507, {resent} in flight on a lost connection); {ack_rate:.0} msgs/s acked, {delivery_rate:.0} delivered; ack latency p50 {:.0} µs, p99 {:.0} µs; {} ids ({envelope_listeners} envelope), {} senders, window {}, {} B (load {load:.2})",
        a.label,
        out_of_order + wrong,
        drops + lost_conns,
        if restarts > 0 {
            format!(", each listening again {:.0}–{:.0} ms after its exec", rs[0], rs[restarts - 1])
        } else {
            String::new()
        },
        refused + resent,
        us(&hist, 0.5),
        us(&hist, 0.99),
        a.ids,
        a.senders,
        a.window,
        a.payload,
    );
    println!("{line}");
    let mut v = json!({
        "scenario": "fault", "label": a.label, "broker": argv,
        "ids": a.ids, "senders": a.senders, "payload": a.payload, "window": a.window,
        "messages_planned": a.messages, "envelope_listeners": envelope_listeners,
        "drop_prob": a.drop_prob, "kills": a.kills, "seed": a.seed,
        "acked": acked, "acked_202": a202, "acked_204": a204, "delivered": delivered,
        "acked_delivered": ok, "lost": lost, "duplicates": duplicates, "out_of_order": out_of_order, "misnumbered": wrong,
        "seq_reused": reused, "mailboxes_reset": resets, "delivered_unacked": unacked, "skipped_unreported": skipped,
    });
    let more = json!({
        "gaps": gaps, "gap_seqs": gap_seqs, "closed_4002": closed_4002,
        "reconnects": drops + lost_conns, "random_drops": drops, "connections_cut": lost_conns,
        "restarts": restarts, "restart_ms": restart_ms, "refused_503_507": refused,
        "resent": resent, "sender_connection_failures": conn_failures, "drained": drained,
        "elapsed_s": secs(last_ack), "msgs_per_s": ack_rate, "delivered_per_s": delivery_rate,
        "ack_p50_us": us(&hist, 0.5), "ack_p99_us": us(&hist, 0.99), "ack_p999_us": us(&hist, 0.999),
        "loadavg": load,
    });
    if let (Some(m), Some(o)) = (v.as_object_mut(), more.as_object()) {
        m.extend(o.clone());
    }
    let mut why = Vec::new();
    if lost > 0 {
        why.push(format!("{lost} acknowledged messages lost"));
    }
    if duplicates > 0 {
        why.push(format!("{duplicates} duplicates"));
    }
    if out_of_order > 0 || wrong > 0 {
        why.push(format!("{} out of order or at the wrong seq", out_of_order + wrong));
    }
    if resets > 0 {
        why.push(format!(
            "{resets} mailboxes went back across a restart ({})",
            louts.iter().find_map(|l| l.reset.as_deref()).unwrap_or_default()
        ));
    }
    if reused > 0 {
        why.push(format!("{reused} seqs acknowledged twice"));
    }
    if gaps > 0 {
        why.push(format!(
            "{gaps} gaps ({gap_seqs} seqs) reported: raise --mailbox-messages"
        ));
    }
    if !drained {
        why.push(format!(
            "listeners not caught up when the wait ended (--drain-timeout {:?}, or nothing moved for --stall-timeout)",
            a.drain_timeout
        ));
    }
    if why.is_empty() {
        return Ok((v, None));
    }
    let e = format!(
        "{}{}",
        why.join(", "),
        first_bad.map(|b| format!(" (first: {b})")).unwrap_or_default()
    );
    v["error"] = json!(e);
    Ok((v, Some(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ids: u32, senders: u32) -> Fault {
        Fault {
            broker: BrokerSpec::Running(([127, 0, 0, 1], 1).into()),
            ids,
            first_id: 1,
            senders,
            payload: 64,
            messages: 10,
            window: 1,
            envelope_every: 2,
            drop_prob: 0.0,
            offline: Duration::ZERO,
            kills: 0,
            restart_every: None,
            down: Duration::ZERO,
            seed: 1,
            drain_timeout: Duration::ZERO,
            reconnect_timeout: Duration::ZERO,
            stall: Duration::ZERO,
            label: "test".into(),
        }
    }

    fn sender(acks: Vec<Vec<(u64, u64)>>) -> SenderOut {
        SenderOut {
            acks,
            ..SenderOut::default()
        }
    }

    fn listener(got: Vec<(u64, u64)>) -> ListenerOut {
        ListenerOut {
            got,
            ..ListenerOut::default()
        }
    }

    fn run(a: &Fault, owned: &[Vec<u32>], s: Vec<SenderOut>, l: Vec<ListenerOut>) -> (Value, Option<String>) {
        verify(a, owned, s, l, Instant::now(), true, Vec::new(), 0.0, String::new()).unwrap()
    }

    #[test]
    fn every_acked_message_once_passes_and_unacked_ones_are_allowed() {
        let a = settings(2, 1);
        // One sender owning ids 1 and 2; id 2's listener also got seq 3, never acknowledged.
        let s = sender(vec![vec![(1, 0), (2, 2)], vec![(1, 1), (2, 3)]]);
        let l = vec![listener(vec![(1, 0), (2, 2)]), listener(vec![(1, 1), (2, 3), (3, 4)])];
        let (v, fail) = run(&a, &[vec![0, 1]], vec![s], l);
        assert_eq!(fail, None);
        assert_eq!((v["acked"].as_u64(), v["delivered"].as_u64()), (Some(4), Some(5)));
        assert_eq!(v["delivered_unacked"], 1);
        assert_eq!(v["lost"], 0);
    }

    #[test]
    fn lost_duplicated_and_misnumbered_messages_fail() {
        let a = settings(1, 1);
        let s = sender(vec![vec![(1, 0), (2, 1), (3, 2), (4, 3)]]);
        // Seq 2 never arrived; seq 4 arrived with another message; one seq came twice.
        let mut l = listener(vec![(1, 0), (3, 2), (4, 7)]);
        l.duplicates = 1;
        let (v, fail) = run(&a, &[vec![0]], vec![s], vec![l]);
        let fail = fail.expect("a failure");
        assert_eq!((v["lost"].as_u64(), v["misnumbered"].as_u64()), (Some(1), Some(1)));
        assert!(fail.contains("1 acknowledged messages lost"), "{fail}");
        assert!(fail.contains("1 duplicates"), "{fail}");
        assert!(fail.contains("at the wrong seq"), "{fail}");
        assert_eq!(v["error"].as_str(), Some(fail.as_str()));
    }

    #[test]
    fn a_seq_acknowledged_twice_or_a_reset_mailbox_fails() {
        let a = settings(1, 1);
        let s = sender(vec![vec![(1, 0), (1, 5)]]);
        let mut l = listener(vec![(1, 5)]);
        l.reset = Some("409".into());
        let (v, fail) = run(&a, &[vec![0]], vec![s], vec![l]);
        let fail = fail.expect("a failure");
        assert_eq!(
            (v["seq_reused"].as_u64(), v["mailboxes_reset"].as_u64()),
            (Some(1), Some(1))
        );
        assert!(
            fail.contains("acknowledged twice") && fail.contains("went back"),
            "{fail}"
        );
    }

    #[test]
    fn rng_is_seeded_and_chance_follows_p() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next() == b.next()));
        let mut r = Rng::new(1);
        let hits = (0..100_000).filter(|_| r.chance(0.1)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| r.chance(0.0)));
        assert!((0..1000).all(|_| r.below(5) < 5));
    }
}
