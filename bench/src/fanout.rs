//! Fan-out: one publisher, N listeners on one topic (fedbroker: a `--topics` id; MQTT: one QoS 0
//! topic; NATS: one subject). The figure is deliveries per second: messages × listeners received,
//! divided by the time from the first publish to the last delivery. Every listener checks every
//! message: all of them, once each, in order, byte for byte.
//!
//! Nothing is unbounded. The publisher is acknowledged per window (fedbroker: up to W pipelined
//! `POST`s on one keep-alive connection, each answered `204` with `Fedbroker-Recipients: N`;
//! NATS: W `PUB`s in two halves, each half followed by `PING` and acknowledged by its `PONG`;
//! MQTT: the same with QoS 0 `PUBLISH`es and `PINGREQ`/`PINGRESP`). An acknowledgement only says
//! "queued for the subscribers", so the publisher is also held back end to end: it never gets more
//! than `--lag` messages ahead of the slowest listener ([`Gate`]). With `--lag` below fedbroker's
//! `--queue-limit` no topic listener can be closed as too slow, and no peer builds a queue
//! (mosquitto queues QoS 0 without bound; nats-server up to 64 MB per subscriber).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::conn::Listener;
use crate::fed::{HttpSender, Response};
use crate::net::{loadavg, process_cpu_us, self_cpu_us, Kind, Target, Ws};
use crate::scenario::{new_hist, us};
use crate::{mqtt, nats, payload};

/// Fan-out scenario settings.
pub struct Fanout {
    pub target: Target,
    pub listeners: u32,
    pub payload: usize,
    pub messages: u64,
    pub window: usize,
    pub lag: u64,
    pub topic: u32,
    pub max_seconds: Option<f64>,
    pub pid: Option<u32>,
    pub concurrency: usize,
    pub stall: Duration,
    pub label: String,
}

/// End-to-end flow control: listeners report every `step` messages received; checkpoint `k` is
/// reached when all N listeners have received `k × step` messages. The publisher may send message
/// `s` (from 0) only while `s < ok × step + lag`, `ok` being the last checkpoint every listener
/// reached. Checkpoints are counted in a ring of `lag / step + 2` slots; a slot is reset by the
/// publisher before any listener can reach the checkpoint that reuses it.
pub struct Gate {
    n: u32,
    step: u64,
    lag: u64,
    slots: Vec<AtomicU32>,
    notify: Notify,
    /// Deliveries so far, all listeners together (progress and the end condition).
    pub delivered: AtomicU64,
    /// Messages acknowledged to the publisher.
    pub acked: AtomicU64,
}

impl Gate {
    pub fn new(n: u32, lag: u64) -> Self {
        let step = (lag / 8).max(1);
        let windows = (lag / step).max(1);
        Gate {
            n,
            step,
            lag: windows * step,
            slots: (0..windows + 2).map(|_| AtomicU32::new(0)).collect(),
            notify: Notify::new(),
            delivered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        }
    }

    fn slot(&self, k: u64) -> &AtomicU32 {
        &self.slots[(k % self.slots.len() as u64) as usize]
    }

    /// A listener's count went from `before` to `after`.
    fn passed(&self, before: u64, after: u64) {
        for k in before / self.step + 1..=after / self.step {
            if self.slot(k).fetch_add(1, Ordering::AcqRel) + 1 == self.n {
                self.notify.notify_one();
            }
        }
        self.delivered.fetch_add(after - before, Ordering::Relaxed);
    }

    /// Moves `ok` over every checkpoint all listeners reached.
    fn advance(&self, ok: &mut u64) {
        while self.slot(*ok + 1).load(Ordering::Acquire) == self.n {
            self.slot(*ok + 1).store(0, Ordering::Release);
            *ok += 1;
        }
    }

    fn allows(&self, ok: u64, s: u64) -> bool {
        s < ok * self.step + self.lag
    }

    /// Waits until message `s` may be sent.
    async fn wait(&self, ok: &mut u64, s: u64) {
        loop {
            self.advance(ok);
            if self.allows(*ok, s) {
                return;
            }
            self.notify.notified().await;
        }
    }
}

/// What the publisher may do: how many messages, until when.
struct PubPlan {
    count: u64,
    len: usize,
    window: usize,
    listeners: u32,
    deadline: Option<Instant>,
}

impl PubPlan {
    fn more(&self, s: u64) -> bool {
        s < self.count && self.deadline.is_none_or(|d| Instant::now() < d)
    }
}

enum Publisher {
    Fed(HttpSender),
    Mqtt(Ws, mqtt::Reader),
    Nats(Ws, nats::Reader),
}

impl Publisher {
    async fn connect(t: &Target, topic: u32, len: usize) -> Result<Self, String> {
        Ok(match t.kind {
            Kind::Fedbroker => Publisher::Fed(HttpSender::connect(t.addr, topic, len).await?),
            Kind::Mqtt => {
                let (ws, r) = mqtt::connect(t.addr, None, "fanout-pub", false).await?;
                Publisher::Mqtt(ws, r)
            }
            Kind::Nats => {
                let (ws, r) = nats::connect(t.addr, None, "", false).await?;
                Publisher::Nats(ws, r)
            }
        })
    }

    /// Publishes; returns how many messages were published and acknowledged.
    async fn run(self, p: PubPlan, gate: &Gate) -> Result<u64, String> {
        match self {
            Publisher::Fed(h) => pub_fed(h, p, gate).await,
            Publisher::Mqtt(ws, r) => pub_windowed(ws, Proto::Mqtt(r), p, gate).await,
            Publisher::Nats(ws, r) => pub_windowed(ws, Proto::Nats(r), p, gate).await,
        }
    }
}

/// Up to W pipelined `POST /{topic}`, each answered `204` with `Fedbroker-Recipients: N`.
async fn pub_fed(mut h: HttpSender, p: PubPlan, gate: &Gate) -> Result<u64, String> {
    let (mut sent, mut acked, mut ok) = (0u64, 0u64, 0u64);
    let mut resps: Vec<Response> = Vec::new();
    loop {
        gate.advance(&mut ok);
        while p.more(sent) && sent - acked < p.window as u64 && gate.allows(ok, sent) {
            h.push(|b| payload::encode(b, p.len, 0, sent));
            sent += 1;
        }
        h.flush().await?;
        if sent == acked {
            if !p.more(sent) {
                return Ok(sent);
            }
            gate.wait(&mut ok, sent).await;
            continue;
        }
        h.read(&mut resps).await?;
        let n = resps.len() as u64;
        for r in resps.drain(..) {
            if r.status != 204 {
                return Err(format!(
                    "publisher: POST to the topic answered {} {:?} (fan-out expects 204)",
                    r.status,
                    r.text()
                ));
            }
            match r.recipients {
                Some(k) if k == p.listeners => {}
                Some(k) => {
                    return Err(format!(
                        "publisher: 204 with Fedbroker-Recipients: {k}, but {} listeners are subscribed (a listener was dropped?)",
                        p.listeners
                    ))
                }
                None => {
                    return Err(
                        "publisher: 204 without Fedbroker-Recipients (is the id a topic, --topics?)".into(),
                    )
                }
            }
        }
        if acked + n > sent {
            return Err("publisher: more responses than requests".into());
        }
        acked += n;
        gate.acked.fetch_add(n, Ordering::Relaxed);
    }
}

enum Proto {
    Mqtt(mqtt::Reader),
    Nats(nats::Reader),
}

/// MQTT QoS 0 / NATS: the window W goes out in halves, each half's last message followed by
/// `PINGREQ` / `PING`; at most W messages are unacknowledged. The broker answers the ping after
/// handling everything before it, so its answer acknowledges that half.
async fn pub_windowed(mut ws: Ws, mut proto: Proto, p: PubPlan, gate: &Gate) -> Result<u64, String> {
    let chunk = (p.window / 2).max(1) as u64;
    let max_out = (p.window as u64 / chunk).max(1) as usize;
    let mut pending: VecDeque<u64> = VecDeque::new();
    let (mut sent, mut ok) = (0u64, 0u64);
    let what = match proto {
        Proto::Mqtt(_) => "MQTT PUBLISH",
        Proto::Nats(_) => "NATS PUB",
    };
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    loop {
        gate.advance(&mut ok);
        let mut fed = false;
        while pending.len() < max_out && p.more(sent) && gate.allows(ok, sent) {
            let mut k = 0;
            while k < chunk && p.more(sent) && gate.allows(ok, sent) {
                let mut v = Vec::with_capacity(p.len + 32);
                match proto {
                    Proto::Mqtt(_) => mqtt::publish_qos0(&mut v, mqtt::FANOUT_TOPIC, p.len, |b| {
                        payload::encode(b, p.len, 0, sent)
                    }),
                    Proto::Nats(_) => nats::publish(&mut v, nats::FANOUT_SUBJECT, p.len, |b| {
                        payload::encode(b, p.len, 0, sent)
                    }),
                }
                msgs.push(v);
                sent += 1;
                k += 1;
            }
            if let Some(last) = msgs.last_mut() {
                match proto {
                    Proto::Mqtt(_) => last.extend_from_slice(&mqtt::PINGREQ),
                    Proto::Nats(_) => last.extend_from_slice(b"PING\r\n"),
                }
            }
            for v in msgs.drain(..) {
                ws.feed(Message::Binary(Bytes::from(v)))
                    .await
                    .map_err(|e| format!("{what}: {e}"))?;
            }
            pending.push_back(k);
            fed = true;
        }
        if fed {
            ws.flush().await.map_err(|e| format!("{what}: {e}"))?;
        }
        if pending.is_empty() {
            if !p.more(sent) {
                return Ok(sent);
            }
            gate.wait(&mut ok, sent).await;
            continue;
        }
        let mut pongs = 0usize;
        match &mut proto {
            Proto::Mqtt(r) => {
                let data = mqtt::next_data(&mut ws).await?;
                r.feed(&data, |pk| {
                    mqtt::pingresp(&pk)?;
                    pongs += 1;
                    Ok(())
                })?;
            }
            Proto::Nats(r) => {
                let data = nats::next_data(&mut ws).await?;
                r.feed(&data, |e| match e {
                    nats::Event::Pong => {
                        pongs += 1;
                        Ok(())
                    }
                    nats::Event::Msg(..) => Err("NATS publisher received a MSG".into()),
                })?;
                r.answer_pings(&mut ws).await?;
            }
        }
        for _ in 0..pongs {
            let n = pending
                .pop_front()
                .ok_or_else(|| format!("{what}: more ping answers than pings"))?;
            gate.acked.fetch_add(n, Ordering::Relaxed);
        }
    }
}

enum Done {
    Publisher(u64),
    /// A listener stopped: its index, latency histogram, time of its last delivery, messages.
    Listener(u32, Histogram<u64>, Option<Instant>, u64),
}

/// Listener `j`: every message from the one publisher, in sequence from 0, byte-exact.
async fn listen(
    mut l: Listener,
    j: u32,
    len: usize,
    gate: Arc<Gate>,
    mut stop: watch::Receiver<bool>,
) -> Result<Done, String> {
    let mut hist = new_hist();
    let (mut next, mut last) = (0u64, None);
    loop {
        let before = next;
        let mut f = |m: &[u8]| -> Result<(), String> {
            let d = payload::decode(m, len).map_err(|e| format!("listener {j}: {e}"))?;
            if d.sender != 0 {
                return Err(format!("listener {j}: message from unknown sender {}", d.sender));
            }
            if d.seq != next {
                let what = if d.seq < next {
                    "duplicate or reordered"
                } else {
                    "gap: lost or reordered"
                };
                return Err(format!(
                    "listener {j}: {what} message: got seq {}, expected {next}",
                    d.seq
                ));
            }
            next += 1;
            hist.saturating_record(payload::now_ns().saturating_sub(d.sent_ns).max(1));
            Ok(())
        };
        tokio::select! {
            r = l.recv(&mut f) => r?,
            _ = stop.changed() => return Ok(Done::Listener(j, hist, last, next)),
        }
        if next > before {
            last = Some(Instant::now());
            gate.passed(before, next);
        }
    }
}

/// One publisher, N listeners on one topic, every delivery checked.
pub async fn fanout(a: Fanout) -> Result<Value, String> {
    let load = loadavg();
    payload::epoch();
    let n = a.listeners;
    let t0 = Instant::now();
    // Connect the listeners, `concurrency` handshakes at a time.
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let mut connecting = JoinSet::new();
    for j in 0..n {
        let (t, sem, topic) = (a.target, sem.clone(), a.topic);
        connecting.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            Listener::connect_fanout(&t, j, topic)
                .await
                .map(|l| (j, l))
                .map_err(|e| format!("fan-out listener {j}: {e}"))
        });
    }
    let mut subs: Vec<Option<Listener>> = (0..n).map(|_| None).collect();
    while let Some(r) = connecting.join_next().await {
        let (j, l) = r.map_err(|e| format!("task failed: {e}"))??;
        subs[j as usize] = Some(l);
    }
    if a.target.kind == Kind::Fedbroker {
        // Registered on the topic before the first message (MQTT: SUBACK; NATS: PONG after SUB).
        crate::fed::wait_stat(a.target.addr, "topic_listeners", n as u64).await?;
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let publisher = Publisher::connect(&a.target, a.topic, a.payload).await?;

    let gate = Arc::new(Gate::new(n, a.lag));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for (j, l) in subs.into_iter().enumerate() {
        let l = l.expect("every listener connected");
        set.spawn(listen(l, j as u32, a.payload, gate.clone(), stop_rx.clone()));
    }
    let cpu0 = (a.pid.map(process_cpu_us).transpose()?, self_cpu_us());
    let start = Instant::now();
    let plan = PubPlan {
        count: a.messages,
        len: a.payload,
        window: a.window,
        listeners: n,
        deadline: a.max_seconds.map(|m| start + Duration::from_secs_f64(m)),
    };
    {
        let gate = gate.clone();
        set.spawn(async move { publisher.run(plan, &gate).await.map(Done::Publisher) });
    }

    // Wait for the publisher and for every acknowledged message to reach every listener.
    let mut published: Option<u64> = None;
    let mut hist = new_hist();
    let mut last: Option<Instant> = None;
    let mut got = vec![None; n as usize];
    let mut take = |d: Done, published: &mut Option<u64>| match d {
        Done::Publisher(p) => *published = Some(p),
        Done::Listener(j, h, l, k) => {
            hist.add(&h).expect("same histogram bounds");
            last = last.max(l);
            got[j as usize] = Some(k);
        }
    };
    let mut seen = (u64::MAX, Instant::now());
    loop {
        let acked = gate.acked.load(Ordering::Relaxed);
        let delivered = gate.delivered.load(Ordering::Relaxed);
        if let Some(p) = published {
            if delivered >= p * n as u64 {
                break;
            }
        }
        tokio::select! {
            Some(r) = set.join_next() => match r {
                Ok(Ok(d)) => take(d, &mut published),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("task failed: {e}")),
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let moved = acked + delivered;
        if moved != seen.0 {
            seen = (moved, Instant::now());
        } else if seen.1.elapsed() > a.stall {
            return Err(format!(
                "no progress for {:?}: {acked} messages acknowledged to the publisher, {delivered} deliveries of {} expected{}",
                a.stall,
                acked * n as u64,
                if published.is_some() { "" } else { "; the publisher has not finished" }
            ));
        }
    }
    // Late duplicates would arrive now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(d)) => take(d, &mut published),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("task failed: {e}")),
        }
    }
    let published = published.unwrap_or(0);
    for (j, g) in got.iter().enumerate() {
        let g = g.unwrap_or(0);
        if g != published {
            return Err(format!(
                "listener {j}: received {g} of the {published} messages published and acknowledged"
            ));
        }
    }
    let elapsed = last.map_or(0.0, |t| (t - start).as_secs_f64()).max(1e-9);
    let deliveries = published * n as u64;
    let per = |us: u64| us as f64 / deliveries.max(1) as f64;
    let broker_cpu = match (a.pid, cpu0.0) {
        (Some(pid), Some(c0)) => Some(per(process_cpu_us(pid)?.saturating_sub(c0))),
        _ => None,
    };
    let gen_cpu = per(self_cpu_us().saturating_sub(cpu0.1));
    let rate = deliveries as f64 / elapsed;
    let truncated = published < a.messages;
    println!(
        "fanout {} {} B, {} listeners, window {}, lag {}: {:.0} deliveries/s ({:.0} msgs/s published); latency p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs; {} messages{} each delivered to all {} listeners once, in order, byte-exact; CPU per delivery: broker {}, generator {:.2} µs; listeners connected in {:.1} s (load {:.2})",
        a.label,
        a.payload,
        n,
        a.window,
        gate.lag,
        rate,
        published as f64 / elapsed,
        us(&hist, 0.5),
        us(&hist, 0.99),
        hist.max() as f64 / 1000.0,
        published,
        if truncated {
            format!(" (of {} planned: --max-seconds ran out)", a.messages)
        } else {
            String::new()
        },
        n,
        broker_cpu.map_or("?".into(), |c| format!("{c:.2} µs")),
        gen_cpu,
        connect_s,
        load
    );
    Ok(json!({
        "scenario": "fanout", "label": a.label, "target": a.target.to_string(),
        "payload": a.payload, "listeners": n, "window": a.window, "lag": gate.lag,
        "messages": published, "messages_planned": a.messages, "truncated": truncated,
        "deliveries": deliveries, "elapsed_s": elapsed, "deliveries_per_s": rate,
        "msgs_per_s": published as f64 / elapsed,
        "p50_us": us(&hist, 0.5), "p99_us": us(&hist, 0.99), "p999_us": us(&hist, 0.999),
        "max_us": hist.max() as f64 / 1000.0, "connect_s": connect_s, "loadavg": load,
        "broker_cpu_us_per_delivery": broker_cpu, "generator_cpu_us_per_delivery": gen_cpu,
    }))
}
