//! Listener and sender connections for each protocol, behind one interface, and the sender loops
//! that define each protocol's "acknowledged per message" job.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::fed::{HttpSender, Response};
use crate::net::{Kind, Target, Ws};
use crate::{mqtt, nats, payload};

/// Counters the monitor watches for progress.
#[derive(Default)]
pub struct Progress {
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub rejected: AtomicU64,
    /// POSTs answered `202` (a mailbox id's message kept, no listener's subscription in place
    /// yet; counted as acknowledged, see [`Plan::accept_202`]).
    pub kept: AtomicU64,
}

/// A subscribed listener: fedbroker `GET /{id}`, MQTT SUBSCRIBE, NATS SUB.
pub enum Listener {
    Fed(Ws),
    Mqtt(Ws, mqtt::Reader),
    Nats(Ws, nats::Reader),
}

impl Listener {
    /// Connects listener `j` (fedbroker id `j + 1`, topic `bench/j`, subject `bench.j`) and waits
    /// until the broker has confirmed the subscription.
    pub async fn connect(t: &Target, j: u32, src: Option<Ipv4Addr>, small: bool) -> Result<Self, String> {
        Ok(match t.kind {
            Kind::Fedbroker => Listener::Fed(crate::fed::listen(t.addr, src, j + 1, small).await?),
            Kind::Mqtt => {
                let (ws, r) = mqtt::subscribe(t.addr, src, &format!("l{j}"), &mqtt::topic(j), small).await?;
                Listener::Mqtt(ws, r)
            }
            Kind::Nats => {
                let (ws, r) = nats::subscribe(t.addr, src, &nats::subject(j), small).await?;
                Listener::Nats(ws, r)
            }
        })
    }

    /// Connects fan-out listener `j`: every one on the same topic (fedbroker topic id `topic`,
    /// MQTT topic `bench/fanout` at QoS 0, NATS subject `bench.fanout`), confirmed as above.
    pub async fn connect_fanout(t: &Target, j: u32, topic: u32) -> Result<Self, String> {
        Ok(match t.kind {
            Kind::Fedbroker => Listener::Fed(crate::fed::listen(t.addr, None, topic, false).await?),
            Kind::Mqtt => {
                let (ws, r) = mqtt::subscribe(t.addr, None, &format!("f{j}"), mqtt::FANOUT_TOPIC, false).await?;
                Listener::Mqtt(ws, r)
            }
            Kind::Nats => {
                let (ws, r) = nats::subscribe(t.addr, None, nats::FANOUT_SUBJECT, false).await?;
                Listener::Nats(ws, r)
            }
        })
    }

    /// Waits for the next WebSocket data message and calls `f` with each payload it carries.
    pub async fn recv(&mut self, f: &mut impl FnMut(&[u8]) -> Result<(), String>) -> Result<(), String> {
        match self {
            Listener::Fed(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => return f(&b),
                    Some(Ok(Message::Text(_))) => {
                        return Err("listener received a text message; fedbroker sends binary".into())
                    }
                    Some(Ok(Message::Close(c))) => return Err(format!("broker closed the listener: {c:?}")),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("listener WebSocket: {e}")),
                    None => return Err("broker closed the listener connection".into()),
                }
            },
            Listener::Mqtt(ws, r) => {
                let data = mqtt::next_data(ws).await?;
                r.feed(&data, |p| {
                    if !mqtt::is_publish(&p) {
                        return Err(format!("MQTT listener: unexpected packet type {}", p.kind()));
                    }
                    let (pid, body) = mqtt::parse_publish(&p)?;
                    if pid.is_some() {
                        return Err("MQTT listener: QoS > 0 delivery on a QoS 0 subscription".into());
                    }
                    f(body)
                })
            }
            Listener::Nats(ws, r) => {
                let data = nats::next_data(ws).await?;
                r.feed(&data, |e| match e {
                    nats::Event::Msg(m, _) => f(m),
                    nats::Event::Pong => Ok(()),
                })?;
                r.answer_pings(ws).await
            }
        }
    }
}

/// What one sender does: which listener it targets, how many messages, how fast.
#[derive(Clone, Copy)]
pub struct Plan {
    pub index: u32,
    pub dest: u32,
    pub count: u64,
    pub payload: usize,
    pub window: usize,
    /// Pacing: nanoseconds between this sender's messages (None: as fast as acks allow).
    pub interval_ns: Option<f64>,
    pub start: Instant,
    /// No new message is started after this (messages in flight are still acknowledged).
    pub deadline: Option<Instant>,
    /// fedbroker mailbox ids (docs/mailbox.md, docs/cluster.md §3): a `202` (kept, no listener's
    /// subscription in place yet) acknowledges as a `204` does, and the message must still
    /// arrive; every `202`/`204` must carry `Fedbroker-Seq`, increasing on each sender's id.
    /// Off: anything but `204` fails the sender.
    pub accept_202: bool,
}

impl Plan {
    fn due(&self, k: u64) -> Option<Instant> {
        self.interval_ns
            .map(|iv| self.start + Duration::from_nanos((k as f64 * iv) as u64))
    }

    fn is_due(&self, k: u64, now: Instant) -> bool {
        self.due(k).is_none_or(|d| d <= now)
    }

    /// May message `k` still be started?
    fn more(&self, k: u64, now: Instant) -> bool {
        k < self.count && self.deadline.is_none_or(|d| now < d)
    }
}

async fn sleep_until(d: Option<Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// A connected sender.
pub enum Sender {
    Fed(HttpSender),
    Mqtt(Ws, mqtt::Reader),
    Nats(Ws, nats::Reader),
}

impl Sender {
    /// Connects sender `i` aimed at listener `dest`.
    pub async fn connect(t: &Target, i: u32, dest: u32, payload: usize) -> Result<Self, String> {
        Ok(match t.kind {
            Kind::Fedbroker => Sender::Fed(HttpSender::connect(t.addr, dest + 1, payload).await?),
            Kind::Mqtt => {
                let (ws, r) = mqtt::connect(t.addr, None, &format!("s{i}"), false).await?;
                Sender::Mqtt(ws, r)
            }
            Kind::Nats => {
                let (ws, r) = nats::connect(t.addr, None, "", false).await?;
                Sender::Nats(ws, r)
            }
        })
    }

    /// Sends the plan's messages, each acknowledged by the broker, at most `window` in flight;
    /// returns how many were sent (= acknowledged).
    pub async fn run(self, p: Plan, prog: &Progress) -> Result<u64, String> {
        match self {
            Sender::Fed(h) => run_fed(h, p, prog).await,
            Sender::Mqtt(ws, r) => run_mqtt(ws, r, p, prog).await,
            Sender::Nats(ws, r) => run_nats(ws, r, p, prog).await,
        }
    }
}

/// HTTP: up to W pipelined `POST`s on one keep-alive connection, each acknowledged by its `204`.
async fn run_fed(mut h: HttpSender, p: Plan, prog: &Progress) -> Result<u64, String> {
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut resps: Vec<Response> = Vec::new();
    let mut last_seq = 0u64;
    loop {
        let now = Instant::now();
        while p.more(sent, now) && sent - acked < p.window as u64 && p.is_due(sent, now) {
            h.push(|b| payload::encode(b, p.payload, p.index, sent));
            sent += 1;
        }
        h.flush().await?;
        if sent == acked {
            if !p.more(sent, now) {
                return Ok(sent);
            }
            sleep_until(p.due(sent)).await;
            continue;
        }
        if p.interval_ns.is_some() && p.more(sent, now) && sent - acked < p.window as u64 {
            tokio::select! {
                r = h.read(&mut resps) => r?,
                () = sleep_until(p.due(sent)) => {}
            }
        } else {
            h.read(&mut resps).await?;
        }
        let n = resps.len() as u64;
        for r in resps.drain(..) {
            if p.accept_202 {
                check_mailbox_ack(&r, p.index, &mut last_seq)?;
                if r.status == 202 {
                    prog.kept.fetch_add(1, Ordering::Relaxed);
                }
            } else if r.status != 204 {
                return Err(format!(
                    "sender {}: POST answered {} {:?} (relay expects 204; is --queue-limit too small?)",
                    p.index,
                    r.status,
                    r.text()
                ));
            }
        }
        if acked + n > sent {
            return Err(format!("sender {}: more responses than requests", p.index));
        }
        acked += n;
        prog.acked.fetch_add(n, Ordering::Relaxed);
    }
}

/// A mailbox id's answer to one of sender `index`'s POSTs: `204` or `202`, with a
/// `Fedbroker-Seq` above the previous answer's (`last`): the answers come in the order of the
/// sender's requests, and its messages are numbered in that order on its id.
fn check_mailbox_ack(r: &Response, index: u32, last: &mut u64) -> Result<(), String> {
    if r.status != 204 && r.status != 202 {
        return Err(format!(
            "sender {index}: POST answered {} {:?} (relay --accept-202 expects 204 or 202)",
            r.status,
            r.text()
        ));
    }
    let seq = r.seq.ok_or_else(|| {
        format!(
            "sender {index}: POST answered {} without Fedbroker-Seq (is the id given a --mailbox?)",
            r.status
        )
    })?;
    if seq <= *last {
        return Err(format!(
            "sender {index}: Fedbroker-Seq {seq} after {} on the same id (seqs must increase)",
            *last
        ));
    }
    *last = seq;
    Ok(())
}

/// MQTT: QoS 1 PUBLISH, at most W unacknowledged, each acknowledged by its PUBACK.
async fn run_mqtt(mut ws: Ws, mut r: mqtt::Reader, p: Plan, prog: &Progress) -> Result<u64, String> {
    let topic = mqtt::topic(p.dest);
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut inflight: Vec<u16> = Vec::with_capacity(p.window);
    let mut pid: u16 = 0;
    loop {
        let now = Instant::now();
        let mut fed = false;
        while p.more(sent, now) && inflight.len() < p.window && p.is_due(sent, now) {
            pid = pid.checked_add(1).unwrap_or(1);
            let mut v = Vec::with_capacity(p.payload + topic.len() + 12);
            mqtt::publish_qos1(&mut v, &topic, pid, p.payload, |b| {
                payload::encode(b, p.payload, p.index, sent)
            });
            ws.feed(Message::Binary(v.into()))
                .await
                .map_err(|e| format!("MQTT PUBLISH: {e}"))?;
            inflight.push(pid);
            sent += 1;
            fed = true;
        }
        if fed {
            ws.flush().await.map_err(|e| format!("MQTT PUBLISH: {e}"))?;
        }
        if inflight.is_empty() {
            if !p.more(sent, now) {
                return Ok(sent);
            }
            sleep_until(p.due(sent)).await;
            continue;
        }
        let data = if p.interval_ns.is_some() && p.more(sent, now) && inflight.len() < p.window {
            tokio::select! {
                d = mqtt::next_data(&mut ws) => Some(d?),
                () = sleep_until(p.due(sent)) => None,
            }
        } else {
            Some(mqtt::next_data(&mut ws).await?)
        };
        if let Some(data) = data {
            let before = acked;
            r.feed(&data, |pk| {
                if let Some(id) = mqtt::puback(&pk)? {
                    let at = inflight
                        .iter()
                        .position(|&x| x == id)
                        .ok_or_else(|| format!("MQTT: PUBACK for packet id {id} that is not in flight"))?;
                    inflight.remove(at);
                    acked += 1;
                }
                Ok(())
            })?;
            prog.acked.fetch_add(acked - before, Ordering::Relaxed);
        }
    }
}

/// NATS: a window of W `PUB`s then `PING`; the `PONG` acknowledges the window (core NATS has no
/// per-message acknowledgement; the server answers PING only after processing what came before).
async fn run_nats(mut ws: Ws, mut r: nats::Reader, p: Plan, prog: &Progress) -> Result<u64, String> {
    let subject = nats::subject(p.dest);
    let mut sent = 0u64;
    while p.more(sent, Instant::now()) {
        let n = (p.window as u64).min(p.count - sent);
        for k in 0..n {
            if let Some(d) = p.due(sent) {
                if d > Instant::now() {
                    ws.flush().await.map_err(|e| format!("NATS PUB: {e}"))?;
                    tokio::time::sleep_until(d.into()).await;
                }
            }
            let mut v = Vec::with_capacity(p.payload + subject.len() + 32);
            nats::publish(&mut v, &subject, p.payload, |b| {
                payload::encode(b, p.payload, p.index, sent)
            });
            if k == n - 1 {
                v.extend_from_slice(b"PING\r\n");
            }
            ws.feed(Message::Binary(Bytes::from(v)))
                .await
                .map_err(|e| format!("NATS PUB: {e}"))?;
            sent += 1;
        }
        ws.flush().await.map_err(|e| format!("NATS PUB: {e}"))?;
        nats::wait_pong(&mut ws, &mut r, |_| Err("NATS sender received a MSG".into())).await?;
        prog.acked.fetch_add(n, Ordering::Relaxed);
    }
    Ok(sent)
}
