//! The three scenarios: relay, idle, fan-in. Each checks every message and fails loudly.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::conn::{Listener, Plan, Progress, Sender};
use crate::fed::HttpSender;
use crate::net::{loadavg, process_cpu_us, rss_bytes, self_cpu_us, Kind, Target};
use crate::payload;

pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

enum Out {
    /// A sender finished: its index and how many of its messages were acknowledged.
    Sender(u32, u64),
    /// A listener stopped: latency histogram, time of its last delivery, and per sender how
    /// many messages it received (always a gapless sequence from 0).
    Listener(Histogram<u64>, Option<Instant>, Vec<u64>),
}

/// Checks order and content of everything listener `j` receives: senders `i` with
/// `i % listeners == j` send to it, each in sequence from 0. Runs until `stop`, so messages
/// beyond what was acknowledged (duplicates) are seen too.
#[allow(clippy::too_many_arguments)]
async fn listen_task(
    mut l: Listener,
    j: u32,
    senders: u32,
    listeners: u32,
    len: usize,
    pause: Option<Duration>,
    prog: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Result<Out, String> {
    let mut next = vec![0u64; senders as usize];
    let mut hist = new_hist();
    let mut received = 0u64;
    let mut last = None;
    loop {
        let before = received;
        let mut f = |p: &[u8]| -> Result<(), String> {
            let d = payload::decode(p, len).map_err(|e| format!("listener {j}: {e}"))?;
            if d.sender >= senders || d.sender % listeners != j {
                return Err(format!(
                    "listener {j}: message from sender {} that does not send to it",
                    d.sender
                ));
            }
            let want = &mut next[d.sender as usize];
            if d.seq != *want {
                let what = if d.seq < *want {
                    "duplicate or reordered"
                } else {
                    "gap: lost or reordered"
                };
                return Err(format!(
                    "listener {j}: {what} message from sender {}: got seq {}, expected {}",
                    d.sender, d.seq, *want
                ));
            }
            *want += 1;
            received += 1;
            hist.saturating_record(payload::now_ns().saturating_sub(d.sent_ns).max(1));
            Ok(())
        };
        let stopped = tokio::select! {
            r = l.recv(&mut f) => {
                r?;
                false
            }
            _ = stop.changed() => true,
        };
        if stopped {
            return Ok(Out::Listener(hist, last, next));
        }
        if received > before {
            last = Some(Instant::now());
            prog.delivered.fetch_add(received - before, Ordering::Relaxed);
        }
        if let Some(p) = pause {
            if received / 64 != before / 64 {
                tokio::time::sleep(p).await;
            }
        }
    }
}

/// Waits for every sender to finish and for every acknowledged message to be delivered, failing
/// on any task error or when nothing moves for `stall`; then stops the listeners after a short
/// grace period (to catch late duplicates), checks that each sender's acknowledged count equals
/// what its listener received (each a gapless sequence, so: exactly the acknowledged messages,
/// once each) and merges the histograms.
async fn supervise(
    mut set: JoinSet<Result<Out, String>>,
    senders: usize,
    prog: &Progress,
    stop: watch::Sender<bool>,
    stall: Duration,
    budget: Option<Instant>,
) -> Result<Supervised, String> {
    let mut hist = new_hist();
    let mut cut: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut acked_by = vec![None; senders];
    let mut got_by = vec![0u64; senders];
    let mut senders_done = 0;
    let mut seen = (u64::MAX, Instant::now());
    let mut take = |out: Out, senders_done: &mut usize, hist: &mut Histogram<u64>, last: &mut Option<Instant>| match out
    {
        Out::Sender(i, n) => {
            acked_by[i as usize] = Some(n);
            *senders_done += 1;
        }
        Out::Listener(h, l, next) => {
            hist.add(&h).expect("same histogram bounds");
            *last = (*last).max(l);
            for (g, n) in got_by.iter_mut().zip(next) {
                *g += n;
            }
        }
    };
    loop {
        let acked = prog.acked.load(Ordering::Relaxed);
        let delivered = prog.delivered.load(Ordering::Relaxed);
        if senders_done == senders && delivered >= acked {
            break;
        }
        if senders_done == senders && budget.is_some_and(|b| Instant::now() >= b) {
            // Still delivering (else the stall check fires): stop waiting, say so, and count
            // the whole time observed.
            cut = Some(Instant::now());
            break;
        }
        tokio::select! {
            Some(r) = set.join_next() => match r {
                Ok(Ok(out)) => take(out, &mut senders_done, &mut hist, &mut last),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("task failed: {e}")),
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let moved = acked + delivered + prog.rejected.load(Ordering::Relaxed);
        if moved != seen.0 {
            seen = (moved, Instant::now());
        } else if seen.1.elapsed() > stall {
            return Err(format!(
                "no progress for {:?}: {acked} messages acknowledged, {delivered} delivered ({} missing); {senders_done}/{senders} senders finished",
                stall,
                acked.saturating_sub(delivered)
            ));
        }
    }
    // Late duplicates would arrive now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop.send(true);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(out)) => take(out, &mut senders_done, &mut hist, &mut last),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("task failed: {e}")),
        }
    }
    for (i, (a, g)) in acked_by.iter().zip(&got_by).enumerate() {
        let a = a.unwrap_or(0);
        if *g > a || (*g < a && cut.is_none()) {
            let what = if *g < a {
                "lost"
            } else {
                "delivered more than acknowledged"
            };
            return Err(format!("sender {i}: {a} messages acknowledged, {g} delivered ({what})"));
        }
    }
    let undelivered = acked_by.iter().map(|a| a.unwrap_or(0)).sum::<u64>() - got_by.iter().sum::<u64>();
    Ok(Supervised {
        hist,
        last: cut.or(last),
        undelivered,
    })
}

/// What [`supervise`] found.
struct Supervised {
    hist: Histogram<u64>,
    /// Time of the last delivery.
    last: Option<Instant>,
    /// Acknowledged messages still on their way when the time budget ran out (0 without a cut).
    undelivered: u64,
}

pub(crate) fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn split(total: u64, parts: u32, i: u32) -> u64 {
    total / parts as u64 + u64::from((i as u64) < total % parts as u64)
}

/// Relay scenario settings.
pub struct Relay {
    /// Listener `j` connects to `targets[j % n]` (one broker, or several of one cluster).
    pub targets: Vec<Target>,
    /// Sender `i` connects to `send_targets[i % n]`; empty: to its listener's broker.
    pub send_targets: Vec<Target>,
    pub listeners: u32,
    pub senders: u32,
    pub payload: usize,
    pub messages: u64,
    pub window: usize,
    pub rate: Option<f64>,
    /// Stop starting messages after this long (a crawling system still finishes in time).
    pub max_seconds: Option<f64>,
    /// The broker's PIDs (a cluster's brokers and engine), to report their CPU time per message.
    pub pid: Vec<u32>,
    pub stall: Duration,
    pub label: String,
    /// Mailbox ids: `202` acknowledges too ([`Plan::accept_202`]).
    pub accept_202: bool,
}

/// CPU time (user + system) of all of `pids` so far, in microseconds; None without pids.
fn processes_cpu_us(pids: &[u32]) -> Result<Option<u64>, String> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter()
        .map(|&p| process_cpu_us(p))
        .sum::<Result<u64, String>>()
        .map(Some)
}

fn targets_string(t: &[Target]) -> String {
    t.iter().map(Target::to_string).collect::<Vec<_>>().join(",")
}

/// L listeners, S senders (sender `i` → listener `i % L`), every message checked.
pub async fn relay(a: Relay) -> Result<Value, String> {
    let load = loadavg();
    payload::epoch();
    let (l, s) = (a.listeners, a.senders);
    let mut subs = Vec::new();
    let nt = a.targets.len() as u32;
    for j in 0..l {
        subs.push(Listener::connect(&a.targets[(j % nt) as usize], j, None, false).await?);
    }
    let mut conns = Vec::new();
    for i in 0..s {
        let t = if a.send_targets.is_empty() {
            &a.targets[(i % l % nt) as usize]
        } else {
            &a.send_targets[i as usize % a.send_targets.len()]
        };
        conns.push(Sender::connect(t, i, i % l, a.payload).await?);
    }
    let prog = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for (j, sub) in subs.into_iter().enumerate() {
        set.spawn(listen_task(
            sub,
            j as u32,
            s,
            l,
            a.payload,
            None,
            prog.clone(),
            stop_rx.clone(),
        ));
    }
    let cpu0 = (processes_cpu_us(&a.pid)?, self_cpu_us());
    let start = Instant::now();
    let deadline = a.max_seconds.map(|m| start + Duration::from_secs_f64(m));
    let interval_ns = a.rate.map(|r| 1e9 * s as f64 / r);
    for (i, c) in conns.into_iter().enumerate() {
        let i = i as u32;
        let plan = Plan {
            index: i,
            dest: i % l,
            count: split(a.messages, s, i),
            payload: a.payload,
            window: a.window,
            interval_ns,
            start,
            deadline,
            accept_202: a.accept_202,
        };
        let prog = prog.clone();
        set.spawn(async move { c.run(plan, &prog).await.map(|n| Out::Sender(i, n)) });
    }
    let budget = a.max_seconds.map(|m| start + Duration::from_secs_f64(m));
    let Supervised {
        hist,
        last,
        undelivered,
    } = supervise(set, s as usize, &prog, stop_tx, a.stall, budget).await?;
    let elapsed = last.map_or(0.0, |t| (t - start).as_secs_f64()).max(1e-9);
    let messages = prog.delivered.load(Ordering::Relaxed);
    let truncated = messages < a.messages;
    let per_msg = |us: u64| us as f64 / messages.max(1) as f64;
    let broker_cpu = match (processes_cpu_us(&a.pid)?, cpu0.0) {
        (Some(c1), Some(c0)) => Some(per_msg(c1.saturating_sub(c0))),
        _ => None,
    };
    let gen_cpu = per_msg(self_cpu_us().saturating_sub(cpu0.1));
    let rate = messages as f64 / elapsed;
    let kept = prog.kept.load(Ordering::Relaxed);
    println!(
        "relay {} {} B window {}{}: {:.0} msgs/s ({:.1} MiB/s); latency p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs; {} messages{}{} from {} senders to {} listeners, every one delivered once, in order, byte-exact; CPU per message: broker {}, generator {:.1} µs (load {:.2})",
        a.label,
        a.payload,
        a.window,
        a.rate.map(|r| format!(" at {r:.0} msgs/s")).unwrap_or_default(),
        rate,
        rate * a.payload as f64 / 1048576.0,
        us(&hist, 0.5),
        us(&hist, 0.99),
        us(&hist, 0.999),
        hist.max() as f64 / 1000.0,
        messages,
        if truncated {
            format!(
                " (of {} planned: time budget --max-seconds ran out; {undelivered} acknowledged ones were still on their way, not waited for)",
                a.messages
            )
        } else {
            String::new()
        },
        if a.accept_202 {
            format!(" ({kept} answered 202: kept, no listener's subscription in place yet)")
        } else {
            String::new()
        },
        s,
        l,
        broker_cpu.map_or("?".into(), |c| format!("{c:.1} µs")),
        gen_cpu,
        load
    );
    Ok(json!({
        "scenario": "relay", "label": a.label, "target": targets_string(&a.targets),
        "send_target": (!a.send_targets.is_empty()).then(|| targets_string(&a.send_targets)),
        "payload": a.payload, "window": a.window, "listeners": l, "senders": s,
        "messages": messages, "messages_planned": a.messages, "truncated": truncated, "undelivered_at_budget": undelivered, "rate": a.rate, "elapsed_s": elapsed, "msgs_per_s": rate,
        "p50_us": us(&hist, 0.5), "p99_us": us(&hist, 0.99), "p999_us": us(&hist, 0.999),
        "max_us": hist.max() as f64 / 1000.0, "mean_us": hist.mean() / 1000.0, "loadavg": load,
        "broker_cpu_us_per_msg": broker_cpu, "generator_cpu_us_per_msg": gen_cpu,
        "accept_202": a.accept_202, "answered_202": a.accept_202.then_some(kept),
    }))
}

/// Idle scenario settings.
pub struct Idle {
    pub target: Target,
    pub connections: u32,
    pub pid: u32,
    pub sources: u32,
    pub concurrency: usize,
    pub settle: Duration,
    pub label: String,
}

/// C subscribed listeners that receive nothing; the broker's RSS before and after.
pub async fn idle(a: Idle) -> Result<Value, String> {
    let load = loadavg();
    let before = rss_bytes(a.pid)?;
    let ready = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(Semaphore::new(a.concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for i in 0..a.connections {
        let (t, ready, sem, mut stop) = (a.target, ready.clone(), sem.clone(), stop_rx.clone());
        let src = Ipv4Addr::new(127, 0, 0, 1 + (i % a.sources.clamp(1, 250)) as u8);
        set.spawn(async move {
            let permit = sem.acquire_owned().await.expect("semaphore");
            let mut l = Listener::connect(&t, i, Some(src), true)
                .await
                .map_err(|e| format!("idle connection {i} from {src}: {e}"))?;
            drop(permit);
            ready.fetch_add(1, Ordering::SeqCst);
            let mut f = |_: &[u8]| -> Result<(), String> { Err(format!("idle listener {i} received a message")) };
            loop {
                tokio::select! {
                    r = l.recv(&mut f) => r?,
                    _ = stop.changed() => return Ok::<(), String>(()),
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready.load(Ordering::SeqCst) < a.connections as usize {
        tokio::select! {
            Some(r) = set.join_next() => match r {
                Ok(Ok(())) => return Err("an idle connection ended early".into()),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("task failed: {e}")),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} idle connections after 300 s",
                ready.load(Ordering::SeqCst),
                a.connections
            ));
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(a.settle).await;
    let after = rss_bytes(a.pid)?;
    // Still all alive?
    if let Some(r) = futures_util::FutureExt::now_or_never(set.join_next()).flatten() {
        return Err(match r {
            Ok(Ok(())) => "an idle connection ended early".into(),
            Ok(Err(e)) => e,
            Err(e) => format!("task failed: {e}"),
        });
    }
    let _ = stop_tx.send(true);
    while set.join_next().await.is_some() {}
    let per = after.saturating_sub(before) as f64 / a.connections as f64;
    println!(
        "idle {}: {} listeners held (connected in {:.1} s from {} source addresses); broker RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes ({:.2} KiB) per idle listener (load {:.2})",
        a.label,
        a.connections,
        connect_s,
        a.sources.min(a.connections),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per,
        per / 1024.0,
        load
    );
    Ok(json!({
        "scenario": "idle", "label": a.label, "target": a.target.to_string(),
        "connections": a.connections, "rss_before": before, "rss_after": after,
        "bytes_per_conn": per, "connect_s": connect_s, "loadavg": load,
    }))
}

/// Fan-in scenario settings.
pub struct Fanin {
    pub target: Target,
    pub senders: u32,
    pub messages: u64,
    pub payload: usize,
    pub retry_pause: Duration,
    pub honor_retry_after: bool,
    pub listener_pause: Option<Duration>,
    pub stall: Duration,
    pub label: String,
}

/// Many senders (window 1) to one listener: `503`s are counted and retried; every `204`'d
/// message must arrive, in order per sender, exactly once.
pub async fn fanin(a: Fanin) -> Result<Value, String> {
    if a.target.kind != Kind::Fedbroker {
        return Err("fanin drives fedbroker:// targets only (it counts HTTP 503s)".into());
    }
    let load = loadavg();
    payload::epoch();
    let sub = Listener::connect(&a.target, 0, None, false).await?;
    let mut conns = Vec::new();
    for _ in 0..a.senders {
        conns.push(HttpSender::connect(a.target.addr, 1, a.payload).await?);
    }
    let prog = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    set.spawn(listen_task(
        sub,
        0,
        a.senders,
        1,
        a.payload,
        a.listener_pause,
        prog.clone(),
        stop_rx,
    ));
    let max_streak = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for (i, mut h) in conns.into_iter().enumerate() {
        let i = i as u32;
        let count = split(a.messages, a.senders, i);
        let (prog, max_streak) = (prog.clone(), max_streak.clone());
        let (pause, honor, len) = (a.retry_pause, a.honor_retry_after, a.payload);
        set.spawn(async move {
            let mut resps = Vec::new();
            for seq in 0..count {
                let mut streak = 0u64;
                loop {
                    h.push(|b| payload::encode(b, len, i, seq));
                    h.flush().await?;
                    h.read(&mut resps).await?;
                    let r = resps.pop().ok_or("no response")?;
                    match r.status {
                        204 => break,
                        503 => {
                            prog.rejected.fetch_add(1, Ordering::Relaxed);
                            streak += 1;
                            let wait = match (honor, r.retry_after) {
                                (true, Some(s)) => Duration::from_secs(s),
                                _ => pause,
                            };
                            tokio::time::sleep(wait).await;
                        }
                        s => return Err(format!("sender {i}: POST answered {s} {:?}", r.text())),
                    }
                }
                max_streak.fetch_max(streak, Ordering::Relaxed);
                prog.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Out::Sender(i, count))
        });
    }
    let Supervised { hist, last, .. } = supervise(set, a.senders as usize, &prog, stop_tx, a.stall, None).await?;
    let elapsed = last.map_or(0.0, |t| (t - start).as_secs_f64()).max(1e-9);
    let rejected = prog.rejected.load(Ordering::Relaxed);
    let rate = a.messages as f64 / elapsed;
    println!(
        "fanin {}: {} senders -> 1 listener, {} B: {} accepted (204) and all delivered in order, {} refused with 503 and retried (longest streak {}); {:.0} msgs/s; latency p50 {:.0} µs, p99 {:.0} µs (load {:.2})",
        a.label,
        a.senders,
        a.payload,
        a.messages,
        rejected,
        max_streak.load(Ordering::Relaxed),
        rate,
        us(&hist, 0.5),
        us(&hist, 0.99),
        load
    );
    Ok(json!({
        "scenario": "fanin", "label": a.label, "target": a.target.to_string(),
        "senders": a.senders, "payload": a.payload, "messages": a.messages,
        "accepted": a.messages, "rejected_503": rejected, "delivered": prog.delivered.load(Ordering::Relaxed),
        "max_retry_streak": max_streak.load(Ordering::Relaxed), "elapsed_s": elapsed, "msgs_per_s": rate,
        "p50_us": us(&hist, 0.5), "p99_us": us(&hist, 0.99), "loadavg": load,
    }))
}
