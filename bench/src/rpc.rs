//! Request-reply round trips: K requesters, each with one request outstanding, and one responder
//! that echoes every request's payload.
//!
//! - fedbroker: requester = keep-alive `POST /{id}?reply=MS`; responder = an envelope listener
//!   (`fedbroker.v1`) on `id` that answers each `request` (`u16 BE length | {"type":"request",
//!   "seq":N,…} | payload`) with `{"type":"reply","reply_to":N,"status":200}` + the same payload,
//!   and checks the broker's `ack` for every reply. The POST's `200` body must be its own payload.
//! - NATS (`nats req` style): requester `i` subscribes to `_INBOX.i.*` and publishes
//!   `PUB bench.rpc _INBOX.i.SEQ`; the responder subscribes to `bench.rpc` and publishes the payload
//!   to the reply subject.
//!
//! Every payload is checked byte for byte both ways, and each reply must carry its requester's own
//! index and sequence number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::fed::{parse_envelope, HttpSender, Response};
use crate::net::{loadavg, process_cpu_us, self_cpu_us, Kind, Target, Ws};
use crate::scenario::{new_hist, us};
use crate::{nats, payload};

/// Request-reply scenario settings.
pub struct Rpc {
    pub target: Target,
    pub requesters: u32,
    pub payload: usize,
    pub requests: u64,
    pub timeout_ms: u64,
    pub id: u32,
    pub max_seconds: Option<f64>,
    pub pid: Option<u32>,
    pub stall: Duration,
    pub label: String,
}

#[derive(Default)]
struct Counts {
    /// Round trips completed (reply received and checked).
    done: AtomicU64,
    /// Requests the responder has seen.
    served: AtomicU64,
}

enum Done {
    /// A requester finished: round trips, latency histogram, time of its last reply.
    Requester(u64, Histogram<u64>, Option<Instant>),
    /// The responder stopped: requests answered, replies acknowledged by the broker (fedbroker).
    Responder(u64, Option<u64>),
}

fn check_reply(body: &[u8], len: usize, i: u32, seq: u64) -> Result<(), String> {
    let d = payload::decode(body, len).map_err(|e| format!("requester {i}: reply: {e}"))?;
    if (d.sender, d.seq) != (i, seq) {
        return Err(format!(
            "requester {i}: reply to request {seq} carries requester {} request {}'s payload",
            d.sender, d.seq
        ));
    }
    Ok(())
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

async fn request_fed(
    mut h: HttpSender,
    i: u32,
    count: u64,
    len: usize,
    deadline: Option<Instant>,
    c: Arc<Counts>,
) -> Result<Done, String> {
    let mut hist = new_hist();
    let mut resps: Vec<Response> = Vec::new();
    let mut last = None;
    let mut done = 0u64;
    for seq in 0..count {
        if past(deadline) {
            break;
        }
        let t0 = Instant::now();
        h.push(|b| payload::encode(b, len, i, seq));
        h.flush().await?;
        h.read(&mut resps).await?;
        let r = resps.pop().ok_or("no response")?;
        if !resps.is_empty() {
            return Err(format!("requester {i}: more responses than requests"));
        }
        if r.status != 200 {
            return Err(format!(
                "requester {i}: POST ?reply answered {} {:?} (expected the responder's 200)",
                r.status,
                r.text()
            ));
        }
        check_reply(&r.body, len, i, seq)?;
        let now = Instant::now();
        hist.saturating_record((now - t0).as_nanos().max(1) as u64);
        last = Some(now);
        done += 1;
        c.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Done::Requester(done, hist, last))
}

/// What the envelope responder has seen so far.
#[derive(Default)]
struct Served {
    last_seq: Option<u64>,
    acks: u64,
}

type WsItem = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

/// Handles one message from the broker: a `request` is checked and its reply appended to `out`;
/// an `ack` is counted; anything else fails.
fn serve(m: WsItem, len: usize, st: &mut Served, c: &Counts, out: &mut Vec<Vec<u8>>) -> Result<(), String> {
    let b = match m {
        Some(Ok(Message::Binary(b))) => b,
        Some(Ok(Message::Text(_))) => return Err("responder: text message; envelope messages are binary".into()),
        Some(Ok(Message::Close(c))) => return Err(format!("broker closed the responder: {c:?}")),
        Some(Ok(_)) => return Ok(()),
        Some(Err(e)) => return Err(format!("responder WebSocket: {e}")),
        None => return Err("broker closed the responder connection".into()),
    };
    let (h, body) = parse_envelope(&b).map_err(|e| format!("responder: {e}"))?;
    match h.get("type").and_then(Value::as_str) {
        Some("request") => {
            let seq = h
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("responder: request without a numeric seq: {h}"))?;
            if let Some(l) = st.last_seq {
                if seq != l + 1 {
                    return Err(format!("responder: request seq {seq} after {l} (gap or reorder)"));
                }
            }
            st.last_seq = Some(seq);
            payload::decode(body, len).map_err(|e| format!("responder: request {seq}: {e}"))?;
            let header = format!(r#"{{"type":"reply","reply_to":{seq},"status":200}}"#);
            let mut v = Vec::with_capacity(2 + header.len() + body.len());
            crate::fed::envelope(&mut v, &header, body);
            out.push(v);
            c.served.fetch_add(1, Ordering::Relaxed);
        }
        Some("ack") => {
            if h.get("status").and_then(Value::as_u64) != Some(200) {
                return Err(format!("responder: ack for a reply without status 200: {h}"));
            }
            st.acks += 1;
        }
        Some("error") => return Err(format!("responder: the broker refused a reply: {h}")),
        _ => return Err(format!("responder: unexpected envelope message: {h}")),
    }
    Ok(())
}

/// The envelope responder: answers every `request`, checks every `ack`.
async fn respond_fed(mut ws: Ws, len: usize, c: Arc<Counts>, mut stop: watch::Receiver<bool>) -> Result<Done, String> {
    let mut replies = 0u64;
    let mut st = Served::default();
    let mut out = Vec::new();
    loop {
        let m = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => return Ok(Done::Responder(replies, Some(st.acks))),
        };
        serve(m, len, &mut st, &c, &mut out)?;
        // Everything already received is answered in one write.
        while let Some(m) = ws.next().now_or_never() {
            serve(m, len, &mut st, &c, &mut out)?;
        }
        if !out.is_empty() {
            replies += out.len() as u64;
            for v in out.drain(..) {
                ws.feed(Message::Binary(Bytes::from(v)))
                    .await
                    .map_err(|e| format!("responder reply: {e}"))?;
            }
            ws.flush().await.map_err(|e| format!("responder reply: {e}"))?;
        }
    }
}

fn inbox(i: u32) -> String {
    format!("_INBOX.{i}")
}

async fn request_nats(
    mut ws: Ws,
    mut r: nats::Reader,
    i: u32,
    count: u64,
    len: usize,
    deadline: Option<Instant>,
    c: Arc<Counts>,
) -> Result<Done, String> {
    let mut hist = new_hist();
    let mut last = None;
    let mut done = 0u64;
    let prefix = inbox(i);
    for seq in 0..count {
        if past(deadline) {
            break;
        }
        let t0 = Instant::now();
        let mut v = Vec::with_capacity(len + 48);
        nats::request(&mut v, nats::RPC_SUBJECT, &format!("{prefix}.{seq}"), len, |b| {
            payload::encode(b, len, i, seq)
        });
        ws.send(Message::Binary(Bytes::from(v)))
            .await
            .map_err(|e| format!("NATS PUB: {e}"))?;
        let mut got = false;
        while !got {
            let data = nats::next_data(&mut ws).await?;
            r.feed(&data, |e| {
                match e {
                    nats::Event::Msg(m, _) => {
                        if got {
                            return Err(format!("requester {i}: a second reply to request {seq}"));
                        }
                        check_reply(m, len, i, seq)?;
                        got = true;
                    }
                    nats::Event::Pong => {}
                }
                Ok(())
            })?;
            r.answer_pings(&mut ws).await?;
        }
        let now = Instant::now();
        hist.saturating_record((now - t0).as_nanos().max(1) as u64);
        last = Some(now);
        done += 1;
        c.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Done::Requester(done, hist, last))
}

/// The NATS responder: every request's payload, checked, published to its reply subject.
async fn respond_nats(
    mut ws: Ws,
    mut r: nats::Reader,
    len: usize,
    c: Arc<Counts>,
    mut stop: watch::Receiver<bool>,
) -> Result<Done, String> {
    let mut replies = 0u64;
    let mut out: Vec<Vec<u8>> = Vec::new();
    loop {
        let data = tokio::select! {
            d = nats::next_data(&mut ws) => d?,
            _ = stop.changed() => return Ok(Done::Responder(replies, None)),
        };
        r.feed(&data, |e| {
            if let nats::Event::Msg(m, reply) = e {
                let reply = reply.ok_or("responder: a request without a reply subject")?;
                let reply = std::str::from_utf8(reply).map_err(|_| "responder: reply subject is not UTF-8")?;
                payload::decode(m, len).map_err(|e| format!("responder: request: {e}"))?;
                let mut v = Vec::with_capacity(len + reply.len() + 16);
                nats::publish(&mut v, reply, len, |b| b.extend_from_slice(m));
                out.push(v);
                c.served.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })?;
        r.answer_pings(&mut ws).await?;
        if !out.is_empty() {
            replies += out.len() as u64;
            for v in out.drain(..) {
                ws.feed(Message::Binary(Bytes::from(v)))
                    .await
                    .map_err(|e| format!("responder PUB: {e}"))?;
            }
            ws.flush().await.map_err(|e| format!("responder PUB: {e}"))?;
        }
    }
}

/// K requesters, one request outstanding each, one echoing responder.
pub async fn rpc(a: Rpc) -> Result<Value, String> {
    let load = loadavg();
    payload::epoch();
    let k = a.requesters;
    let c = Arc::new(Counts::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set: JoinSet<Result<Done, String>> = JoinSet::new();
    let split = |i: u32| a.requests / k as u64 + u64::from((i as u64) < a.requests % k as u64);
    let deadline_of = |start: Instant| a.max_seconds.map(|m| start + Duration::from_secs_f64(m));
    let start;
    match a.target.kind {
        Kind::Fedbroker => {
            let ws = crate::fed::listen_envelope(a.target.addr, a.id).await?;
            crate::fed::wait_stat(a.target.addr, "listeners", 1).await?;
            let mut hs = Vec::new();
            for _ in 0..k {
                let path = format!("/{}?reply={}", a.id, a.timeout_ms);
                hs.push(HttpSender::connect_path(a.target.addr, &path, a.payload).await?);
            }
            set.spawn(respond_fed(ws, a.payload, c.clone(), stop_rx.clone()));
            start = Instant::now();
            for (i, h) in hs.into_iter().enumerate() {
                let i = i as u32;
                set.spawn(request_fed(h, i, split(i), a.payload, deadline_of(start), c.clone()));
            }
        }
        Kind::Nats => {
            let sub = format!("SUB {} 1\r\n", nats::RPC_SUBJECT);
            let (ws, r) = nats::connect(a.target.addr, None, &sub, false).await?;
            let mut rs = Vec::new();
            for i in 0..k {
                let sub = format!("SUB {}.* 1\r\n", inbox(i));
                rs.push(nats::connect(a.target.addr, None, &sub, false).await?);
            }
            set.spawn(respond_nats(ws, r, a.payload, c.clone(), stop_rx.clone()));
            start = Instant::now();
            for (i, (ws, r)) in rs.into_iter().enumerate() {
                let i = i as u32;
                set.spawn(request_nats(
                    ws,
                    r,
                    i,
                    split(i),
                    a.payload,
                    deadline_of(start),
                    c.clone(),
                ));
            }
        }
        Kind::Mqtt => {
            return Err("reqrep drives fedbroker:// and nats-ws:// targets (MQTT 3.1.1 has no request-reply)".into())
        }
    }
    let cpu0 = (a.pid.map(process_cpu_us).transpose()?, self_cpu_us());

    let mut hist = new_hist();
    let mut last: Option<Instant> = None;
    let (mut finished, mut total) = (0u32, 0u64);
    let mut responder: Option<(u64, Option<u64>)> = None;
    let mut take = |d: Done, finished: &mut u32, total: &mut u64, responder: &mut Option<(u64, Option<u64>)>| match d {
        Done::Requester(n, h, l) => {
            hist.add(&h).expect("same histogram bounds");
            last = last.max(l);
            *finished += 1;
            *total += n;
        }
        Done::Responder(r, acks) => *responder = Some((r, acks)),
    };
    let mut seen = (u64::MAX, Instant::now());
    while finished < k {
        tokio::select! {
            Some(r) = set.join_next() => match r {
                Ok(Ok(d)) => take(d, &mut finished, &mut total, &mut responder),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("task failed: {e}")),
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if responder.is_some() {
            return Err("the responder stopped early".into());
        }
        let moved = c.done.load(Ordering::Relaxed);
        if moved != seen.0 {
            seen = (moved, Instant::now());
        } else if seen.1.elapsed() > a.stall {
            return Err(format!(
                "no progress for {:?}: {moved} round trips done, {} requests reached the responder; {finished}/{k} requesters finished",
                a.stall,
                c.served.load(Ordering::Relaxed)
            ));
        }
    }
    let cpu1 = (a.pid.map(process_cpu_us).transpose()?, self_cpu_us());
    // The broker's last acks (fedbroker) arrive now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(d)) => take(d, &mut finished, &mut total, &mut responder),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("task failed: {e}")),
        }
    }
    let (replies, acks) = responder.ok_or("the responder did not report")?;
    if replies != total {
        return Err(format!(
            "the responder answered {replies} requests, the requesters completed {total} round trips"
        ));
    }
    if let Some(acks) = acks {
        if acks != replies {
            return Err(format!(
                "the broker acknowledged {acks} of the responder's {replies} replies"
            ));
        }
    }
    let elapsed = last.map_or(0.0, |t| (t - start).as_secs_f64()).max(1e-9);
    let per = |us: u64| us as f64 / total.max(1) as f64;
    let broker_cpu = match (cpu0.0, cpu1.0) {
        (Some(c0), Some(c1)) => Some(per(c1.saturating_sub(c0))),
        _ => None,
    };
    let gen_cpu = per(cpu1.1.saturating_sub(cpu0.1));
    let rate = total as f64 / elapsed;
    let truncated = total < a.requests;
    println!(
        "reqrep {} {} B, {} requesters: {:.0} round trips/s; round trip p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs; {} round trips{}, every reply its own request's payload, byte-exact{}; CPU per round trip: broker {}, generator {:.1} µs (load {:.2})",
        a.label,
        a.payload,
        k,
        rate,
        us(&hist, 0.5),
        us(&hist, 0.99),
        us(&hist, 0.999),
        hist.max() as f64 / 1000.0,
        total,
        if truncated {
            format!(" (of {} planned: --max-seconds ran out)", a.requests)
        } else {
            String::new()
        },
        if acks.is_some() {
            ", every reply acknowledged"
        } else {
            ""
        },
        broker_cpu.map_or("?".into(), |c| format!("{c:.1} µs")),
        gen_cpu,
        load
    );
    Ok(json!({
        "scenario": "reqrep", "label": a.label, "target": a.target.to_string(),
        "payload": a.payload, "requesters": k, "round_trips": total, "requests_planned": a.requests,
        "truncated": truncated, "elapsed_s": elapsed, "round_trips_per_s": rate,
        "p50_us": us(&hist, 0.5), "p99_us": us(&hist, 0.99), "p999_us": us(&hist, 0.999),
        "max_us": hist.max() as f64 / 1000.0, "mean_us": hist.mean() / 1000.0, "loadavg": load,
        "broker_cpu_us_per_rt": broker_cpu, "generator_cpu_us_per_rt": gen_cpu,
    }))
}
