//! The patterns of docs/patterns.md simulated in one process with a virtual clock: request-reply
//! (answered, timed out, the listener dying mid-request, the pending bound), topics, presence,
//! multi-target sends, and the envelope listener's input cut at any point.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use fedbroker_core::envelope::encode_message;
use fedbroker_core::ws::OpCode;
use fedbroker_core::{Broker, Config, Session};
use proptest::prelude::*;
use serde_json::Value;

fn config() -> Config {
    let mut c = Config::default();
    c.topics.add_item("1000-1999").unwrap();
    c.queue_limit = 4;
    c.max_pending_replies = 2;
    c.max_reply_timeout = Duration::from_secs(5);
    c
}

fn broker(clock: &Clock) -> Arc<Broker> {
    Broker::new(config(), "sim", clock.0, Duration::from_secs(1_800_000_000))
}

fn envelope_upgrade(id: u32) -> Vec<u8> {
    format!("GET /{id} HTTP/1.1\r\nHost: sim\r\nSec-WebSocket-Protocol: fedbroker.v1\r\n{UPGRADE_HEADERS}\r\n")
        .into_bytes()
}

/// A listener session (plain or envelope) with its unread output.
struct Peer {
    s: Session,
    buf: BytesMut,
}

impl Peer {
    fn open(broker: &Arc<Broker>, clock: &Clock, id: u32, envelope: bool) -> Peer {
        let mut s = broker.accept(clock.0);
        let req = if envelope { envelope_upgrade(id) } else { listen(id) };
        s.handle_input(clock.0, &req);
        let mut buf = BytesMut::from(&drain(&mut s, clock.0)[..]);
        let (status, headers, _) = take_response(&mut buf, false).expect("a 101");
        assert_eq!(status, 101);
        let proto = headers.iter().find(|(k, _)| k == "sec-websocket-protocol");
        assert_eq!(proto.map(|(_, v)| v.as_str()), envelope.then_some("fedbroker.v1"));
        Peer { s, buf }
    }

    fn frames(&mut self, clock: &Clock) -> Vec<(OpCode, Vec<u8>)> {
        self.s.handle_wake(clock.0);
        let out = drain(&mut self.s, clock.0);
        self.buf.extend_from_slice(&out);
        take_frames(&mut self.buf)
    }

    /// The envelope messages received: (header, payload).
    fn envelopes(&mut self, clock: &Clock) -> Vec<(Value, Vec<u8>)> {
        self.frames(clock)
            .into_iter()
            .map(|(op, p)| {
                assert_eq!(op, OpCode::Binary, "an envelope listener gets binary messages only");
                split(&p)
            })
            .collect()
    }

    fn send(&mut self, clock: &Clock, header: &str, payload: &[u8]) {
        let frame = client_frame(true, OpCode::Binary, &encode_message(header, payload), [1, 2, 3, 4]);
        self.s.handle_input(clock.0, &frame);
    }
}

fn split(p: &[u8]) -> (Value, Vec<u8>) {
    let n = usize::from(u16::from_be_bytes([p[0], p[1]]));
    (serde_json::from_slice(&p[2..2 + n]).unwrap(), p[2 + n..].to_vec())
}

fn post_to(broker: &Arc<Broker>, clock: &Clock, path: &str, body: &[u8]) -> Session {
    let mut s = broker.accept(clock.0);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: sim\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.handle_input(clock.0, &req);
    s
}

fn response(s: &mut Session, clock: &Clock) -> Option<Resp> {
    s.handle_wake(clock.0);
    let out = drain(s, clock.0);
    let mut buf = BytesMut::from(&out[..]);
    take_response(&mut buf, false)
}

#[test]
fn request_reply_answered_timed_out_and_bounded() {
    let mut clock = Clock::new();
    let b = broker(&clock);
    let mut l = Peer::open(&b, &clock, 7, true);

    // Answered: the reply's status, type and body become the POST's response.
    let mut p = post_to(&b, &clock, "/7?reply=1000", b"question");
    assert!(response(&mut p, &clock).is_none(), "the POST waits");
    let got = l.envelopes(&clock);
    assert_eq!(got[0].0["type"], "request");
    assert_eq!(got[0].0["timeout_ms"], 1000);
    assert_eq!(got[0].1, b"question");
    let seq = got[0].0["seq"].as_u64().unwrap();
    l.send(
        &clock,
        &format!(r#"{{"type":"reply","reply_to":{seq},"status":201,"content_type":"text/x","ref":1}}"#),
        b"answer",
    );
    let ack = l.envelopes(&clock);
    assert_eq!(
        (ack[0].0["type"].as_str(), ack[0].0["status"].as_u64()),
        (Some("ack"), Some(200))
    );
    let (status, headers, body) = response(&mut p, &clock).expect("the reply");
    assert_eq!((status, body.as_slice()), (201, &b"answer"[..]));
    assert!(headers.contains(&("content-type".into(), "text/x".into())));

    // Not answered in time: 504 at the virtual deadline, and a late reply is refused.
    let mut p = post_to(&b, &clock, "/7?reply=300", b"q");
    let seq = l.envelopes(&clock)[0].0["seq"].as_u64().unwrap();
    clock.advance(Duration::from_millis(299));
    p.handle_timeout(clock.0);
    assert!(response(&mut p, &clock).is_none());
    clock.advance(Duration::from_millis(1));
    p.handle_timeout(clock.0);
    assert_eq!(response(&mut p, &clock).unwrap().0, 504);
    l.send(
        &clock,
        &format!(r#"{{"type":"reply","reply_to":{seq},"status":200}}"#),
        b"",
    );
    let late = l.envelopes(&clock);
    assert_eq!(
        (late[0].0["type"].as_str(), late[0].0["status"].as_u64()),
        (Some("error"), Some(404))
    );

    // The bound: two may wait; the third gets 503 at once.
    let mut p1 = post_to(&b, &clock, "/7?reply=5000", b"1");
    let mut p2 = post_to(&b, &clock, "/7?reply=5000", b"2");
    let mut p3 = post_to(&b, &clock, "/7?reply=5000", b"3");
    assert_eq!(response(&mut p3, &clock).unwrap().0, 503);
    assert_eq!(b.snapshot(clock.0).pending_replies, 2);

    // The listener dies mid-request: both waiting POSTs get 502 and the bound is free again.
    assert_eq!(l.envelopes(&clock).len(), 2);
    drop(l);
    assert_eq!(response(&mut p1, &clock).unwrap().0, 502);
    assert_eq!(response(&mut p2, &clock).unwrap().0, 502);
    let snap = b.snapshot(clock.0);
    assert_eq!(
        (
            snap.pending_replies,
            snap.replies,
            snap.replies_failed,
            snap.replies_timed_out
        ),
        (0, 1, 2, 1)
    );

    // A plain listener cannot reply.
    let _plain = Peer::open(&b, &clock, 8, false);
    let mut p = post_to(&b, &clock, "/8?reply=100", b"q");
    assert_eq!(response(&mut p, &clock).unwrap().0, 409);
}

#[test]
fn a_request_queued_but_not_yet_sent_fails_when_its_listener_goes() {
    let clock = Clock::new();
    let b = broker(&clock);
    let l = Peer::open(&b, &clock, 9, true);
    // Queued, never taken by the listener's connection (no wake): the queue holds the sender.
    let mut p = post_to(&b, &clock, "/9?reply=5000", b"q");
    assert!(response(&mut p, &clock).is_none());
    drop(l);
    let (status, _, body) = response(&mut p, &clock).unwrap();
    assert_eq!(status, 502);
    assert_eq!(body, b"the listener on id 9 went away before replying\n");
}

#[test]
fn topic_fans_out_once_and_drops_the_slow_listener() {
    let clock = Clock::new();
    let b = broker(&clock);
    let mut fast = Peer::open(&b, &clock, 1500, false);
    let mut env = Peer::open(&b, &clock, 1500, true);
    let mut slow = Peer::open(&b, &clock, 1500, false);
    for i in 0..4u8 {
        let mut p = post_to(&b, &clock, "/1500", &[i]);
        let (status, headers, _) = response(&mut p, &clock).unwrap();
        assert_eq!(status, 204);
        assert!(headers.contains(&("fedbroker-recipients".into(), "3".into())));
        // Two of them keep up; `slow` never takes its queue (queue limit 4).
        assert_eq!(fast.frames(&clock), vec![(OpCode::Binary, vec![i])]);
        let e = env.envelopes(&clock);
        assert_eq!(
            (e[0].0["seq"].as_u64(), e[0].1.clone()),
            (Some(u64::from(i) + 1), vec![i])
        );
    }
    let mut p = post_to(&b, &clock, "/1500", b"x");
    let (_, headers, _) = response(&mut p, &clock).unwrap();
    assert!(headers.contains(&("fedbroker-recipients".into(), "2".into())));
    let closed = slow.frames(&clock);
    let close = closed.last().expect("a close frame");
    assert_eq!(close.0, OpCode::Close);
    assert_eq!(close_code(&close.1), 1008);
    assert_eq!(&close.1[2..], b"too slow: queue full");
    assert_eq!(b.snapshot(clock.0).slow_listeners_closed, 1);
    drop((fast, env));
    let mut p = post_to(&b, &clock, "/1500", b"x");
    assert_eq!(response(&mut p, &clock).unwrap().2, b"no listener on topic 1500\n");
}

#[test]
fn presence_current_state_then_changes() {
    let clock = Clock::new();
    let b = broker(&clock);
    let mut w = Peer::open(&b, &clock, 1, true);
    let _two = Peer::open(&b, &clock, 2, false);
    w.send(&clock, r#"{"type":"watch","ids":[2,3],"ref":"x"}"#, b"");
    let events: Vec<String> = w
        .envelopes(&clock)
        .into_iter()
        .map(|(h, _)| format!("{} {}", h["type"].as_str().unwrap(), h["id"]))
        .collect();
    assert_eq!(events, ["ack null", "online 2", "offline 3"]);
    let three = Peer::open(&b, &clock, 3, false);
    let replaced = Peer::open(&b, &clock, 3, false);
    assert_eq!(w.envelopes(&clock)[0].0["type"], "online");
    assert!(w.envelopes(&clock).is_empty(), "a replacement is no event");
    drop((three, replaced));
    assert_eq!(w.envelopes(&clock)[0].0["type"], "offline");
    w.send(&clock, r#"{"type":"unwatch","ids":[3]}"#, b"");
    assert_eq!(w.envelopes(&clock)[0].0["type"], "ack");
    let _again = Peer::open(&b, &clock, 3, false);
    assert!(w.envelopes(&clock).is_empty(), "unwatched");
    assert_eq!(b.snapshot(clock.0).presence_watches, 1);
}

#[test]
fn multi_target_reports_each_id_in_order() {
    let clock = Clock::new();
    let b = broker(&clock);
    let mut one = Peer::open(&b, &clock, 1, false);
    let mut t = Peer::open(&b, &clock, 1001, false);
    let mut p = post_to(&b, &clock, "/1,1001", b"m");
    assert_eq!(response(&mut p, &clock).unwrap().0, 204);
    let mut p = post_to(&b, &clock, "/2,1,1001", b"m");
    let (status, headers, body) = response(&mut p, &clock).unwrap();
    assert_eq!(status, 207);
    assert!(headers.contains(&("content-type".into(), "application/json".into())));
    let report: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        report,
        serde_json::json!({"results":[
            {"id":2,"status":404,"error":"no listener on id 2"},
            {"id":1,"status":204},
            {"id":1001,"status":204,"recipients":1}]})
    );
    assert_eq!(one.frames(&clock).len(), 2);
    assert_eq!(t.frames(&clock).len(), 2);
}

/// An envelope listener's whole exchange (sends to a live id, a dead id, bad headers, watches),
/// from the bytes of its input.
fn envelope_run(wire: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<u8>) {
    let clock = Clock::new();
    let b = broker(&clock);
    let mut target = Peer::open(&b, &clock, 2, false);
    let mut me = b.accept(clock.0);
    let mut out = Vec::new();
    let mut at = 0;
    let mut pieces: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    pieces.sort_unstable();
    pieces.push(wire.len());
    let feed = |s: &mut Session, data: &[u8], out: &mut Vec<u8>| {
        let mut rest = data;
        while !rest.is_empty() {
            if !s.wants_read() {
                s.handle_wake(clock.0);
                out.extend(drain(s, clock.0));
                if !s.wants_read() {
                    break;
                }
            }
            // As an adapter does: input is fed only while the session wants it.
            let n = rest.len().min(7);
            s.handle_input(clock.0, &rest[..n]);
            rest = &rest[n..];
            out.extend(drain(s, clock.0));
        }
    };
    for cut in pieces {
        let piece = &wire[at..cut.max(at)];
        at = cut.max(at);
        feed(&mut me, piece, &mut out);
    }
    me.handle_wake(clock.0);
    out.extend(drain(&mut me, clock.0));
    let got: Vec<u8> = target.frames(&clock).into_iter().flat_map(|(_, p)| p).collect();
    (out, got)
}

fn envelope_message() -> impl Strategy<Value = Vec<u8>> {
    let payload = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        payload
            .clone()
            .prop_map(|p| encode_message(r#"{"type":"send","to":2,"ref":"a"}"#, &p)),
        payload.prop_map(|p| encode_message(r#"{"type":"send","to":3,"ref":[1]}"#, &p)),
        Just(encode_message(r#"{"type":"watch","ids":[2,3]}"#, b"")),
        Just(encode_message(r#"{"type":"nope"}"#, b"")),
        Just(b"\x00".to_vec()),
        Just(encode_message(r#"{"type":"reply","reply_to":9,"status":200}"#, b"")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However the input is cut, the envelope listener gets the same answers and the target the
    /// same messages.
    #[test]
    fn any_split_of_envelope_input_gives_the_same_events(
        msgs in proptest::collection::vec(envelope_message(), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        mask: [u8; 4],
    ) {
        let mut wire = envelope_upgrade(1);
        for m in &msgs {
            wire.extend(client_frame(true, OpCode::Binary, m, mask));
        }
        let whole = envelope_run(&wire, &[]);
        let cut = envelope_run(&wire, &cuts);
        prop_assert_eq!(&whole, &cut);
        // One answer (ack or error) per message, after the 101.
        let mut buf = BytesMut::from(&whole.0[..]);
        let (status, _, _) = take_response(&mut buf, false).unwrap();
        prop_assert_eq!(status, 101);
        let answers = take_frames(&mut buf)
            .into_iter()
            .filter(|(_, p)| matches!(split(p).0["type"].as_str(), Some("ack" | "error")))
            .count();
        prop_assert_eq!(answers, msgs.len());
    }
}

/// A router that answers later, as a cluster engine would: the POST waits (holding no thread),
/// and the answer given from outside completes it; a dropped answer is a `503`.
#[test]
fn routing_completes_asynchronously_outside_the_core() {
    let clock = Clock::new();
    let (b, deferred, local) = deferred_broker(&clock);
    let mut l = Peer::open(&b, &clock, 5, false);
    let mut p = post_to(&b, &clock, "/5", b"later");
    assert!(response(&mut p, &clock).is_none(), "waits for the router");
    let (request, reply) = deferred.0.lock().unwrap().pop().expect("routed");
    assert_eq!(request.id.get(), 5);
    fedbroker_core::Router::route(&local, request, reply);
    assert_eq!(response(&mut p, &clock).unwrap().0, 204);
    assert_eq!(l.frames(&clock), vec![(OpCode::Binary, b"later".to_vec())]);

    // A multi-target send waits for every answer, in any order.
    let mut p = post_to(&b, &clock, "/5,6", b"m");
    assert!(response(&mut p, &clock).is_none());
    let mut pending = std::mem::take(&mut *deferred.0.lock().unwrap());
    assert_eq!(pending.len(), 2);
    let (r6, reply6) = pending.pop().unwrap();
    fedbroker_core::Router::route(&local, r6, reply6);
    assert!(response(&mut p, &clock).is_none(), "one answer of two");
    let (r5, reply5) = pending.pop().unwrap();
    fedbroker_core::Router::route(&local, r5, reply5);
    let (status, _, body) = response(&mut p, &clock).unwrap();
    assert_eq!(status, 207);
    assert!(String::from_utf8(body).unwrap().contains(r#"{"id":6,"status":404"#));

    // An answer dropped unanswered (the engine went away) is a 503 with Retry-After.
    let mut p = post_to(&b, &clock, "/5", b"x");
    drop(deferred.0.lock().unwrap().pop());
    let (status, headers, _) = response(&mut p, &clock).unwrap();
    assert_eq!(status, 503);
    assert!(headers.contains(&("retry-after".into(), "1".into())));
}

/// A request-reply whose routing answers later still waits for its reply afterwards.
#[test]
fn request_reply_through_a_deferred_router() {
    let clock = Clock::new();
    let (b, deferred, local) = deferred_broker(&clock);
    let mut l = Peer::open(&b, &clock, 5, true);
    let mut p = post_to(&b, &clock, "/5?reply=1000", b"q");
    assert!(response(&mut p, &clock).is_none());
    assert_eq!(
        b.snapshot(clock.0).pending_replies,
        1,
        "still waiting while being routed"
    );
    let (request, reply) = deferred.0.lock().unwrap().pop().unwrap();
    fedbroker_core::Router::route(&local, request, reply);
    assert!(response(&mut p, &clock).is_none(), "now waiting for the reply");
    let seq = l.envelopes(&clock)[0].0["seq"].as_u64().unwrap();
    l.send(
        &clock,
        &format!(r#"{{"type":"reply","reply_to":{seq},"status":204}}"#),
        b"",
    );
    let (status, headers, _) = response(&mut p, &clock).unwrap();
    assert_eq!(status, 204);
    assert!(!headers.iter().any(|(k, _)| k == "content-type"));
    assert_eq!(b.snapshot(clock.0).pending_replies, 0);
}

/// A router that keeps every message for the test to route (or drop) later, as a cluster engine
/// answering asynchronously would.
#[derive(Clone, Default)]
struct Deferred(Arc<std::sync::Mutex<Vec<(fedbroker_core::RouteRequest, fedbroker_core::RouteReply)>>>);

impl fedbroker_core::Router for Deferred {
    fn route(&self, request: fedbroker_core::RouteRequest, reply: fedbroker_core::RouteReply) {
        self.0.lock().unwrap().push((request, reply));
    }
}

/// A broker routed by a [`Deferred`] router, and a [`fedbroker_core::LocalRouter`] over its
/// registry to finish the routing with.
fn deferred_broker(clock: &Clock) -> (Arc<Broker>, Deferred, fedbroker_core::LocalRouter) {
    let deferred = Deferred::default();
    let mut local = None;
    let b = Broker::with_router(
        config(),
        "sim",
        fedbroker_core::AllowAll,
        |registry| {
            local = Some(fedbroker_core::LocalRouter::new(registry));
            deferred.clone()
        },
        clock.0,
        Duration::from_secs(1_800_000_000),
    );
    (b, deferred, local.expect("the router builder ran"))
}

/// A stand-in for a cluster engine (SPEC §10): which broker subscribed to which id, and each
/// broker's local router to hand a message to, as a NATS request would reach the node holding
/// the listener and carry its answer back.
#[derive(Default)]
struct Engine {
    subscribed: std::sync::Mutex<std::collections::BTreeMap<u32, usize>>,
    nodes: std::sync::Mutex<Vec<(fedbroker_core::Registry, fedbroker_core::LocalRouter)>>,
}

/// A broker's router in the cluster: ids listened on here are routed here; others go through
/// the engine to the broker that subscribed to them, whose answer (204, 503, …) comes back.
struct ClusterRouter {
    node: usize,
    engine: Arc<Engine>,
    local: fedbroker_core::LocalRouter,
    registry: fedbroker_core::Registry,
}

impl fedbroker_core::Router for ClusterRouter {
    fn route(&self, request: fedbroker_core::RouteRequest, reply: fedbroker_core::RouteReply) {
        if self.registry.is_listened(request.id) {
            return self.local.route(request, reply);
        }
        let owner = self.engine.subscribed.lock().unwrap().get(&request.id.get()).copied();
        match owner.filter(|n| *n != self.node) {
            Some(n) => {
                let remote = self.engine.nodes.lock().unwrap()[n].1.clone();
                remote.route(request, reply)
            }
            None => reply.answer(Err(fedbroker_core::HttpError::NoListener(request.id))),
        }
    }
}

/// One broker of the simulated cluster: it subscribes to the ids listened on here and, when it
/// takes an id another broker held, evicts that broker's listener (a replacement across nodes).
fn cluster_node(clock: &Clock, engine: &Arc<Engine>, node: usize) -> Arc<Broker> {
    Broker::with_router(
        config(),
        "sim",
        fedbroker_core::AllowAll,
        |registry| {
            let local = fedbroker_core::LocalRouter::new(registry.clone());
            engine.nodes.lock().unwrap().push((registry.clone(), local.clone()));
            let (e, r) = (engine.clone(), registry.clone());
            registry.on_listened_change(move |id| {
                let mut subs = e.subscribed.lock().unwrap();
                if r.is_listened(id) {
                    if let Some(previous) = subs.insert(id.get(), node).filter(|p| *p != node) {
                        let other = e.nodes.lock().unwrap()[previous].0.clone();
                        drop(subs);
                        other.evict(id);
                    }
                } else if subs.get(&id.get()) == Some(&node) {
                    subs.remove(&id.get());
                }
            });
            ClusterRouter {
                node,
                engine: engine.clone(),
                local,
                registry,
            }
        },
        clock.0,
        Duration::from_secs(1_800_000_000),
    )
}

/// Two brokers share one id space through the registry's seams alone: a POST to either reaches
/// the listener on the other, its `503` crosses back, a listener taking the id on the other
/// broker replaces the first there (`4000`), and an id nobody listens on is `404` on both.
#[test]
fn two_brokers_share_an_id_space_through_the_router_seam() {
    let clock = Clock::new();
    let engine = Arc::new(Engine::default());
    let a = cluster_node(&clock, &engine, 0);
    let b = cluster_node(&clock, &engine, 1);

    let mut on_a = Peer::open(&a, &clock, 5, false);
    let mut p = post_to(&b, &clock, "/5", b"via b");
    assert_eq!(response(&mut p, &clock).unwrap().0, 204);
    assert_eq!(on_a.frames(&clock), vec![(OpCode::Binary, b"via b".to_vec())]);

    // Backpressure crosses: the listener on a does not read, its queue (4) fills, b answers 503.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let mut p = post_to(&b, &clock, "/5", &[0; 70_000]);
        statuses.push(response(&mut p, &clock).unwrap().0);
    }
    assert!(statuses.ends_with(&[503]), "{statuses:?}");

    // A listener on b takes id 5 from a: a's listener is closed with 4000, and a routes to b.
    let mut on_b = Peer::open(&b, &clock, 5, false);
    let closing: Vec<_> = on_a
        .frames(&clock)
        .into_iter()
        .filter(|(op, _)| *op == OpCode::Close)
        .collect();
    assert_eq!(closing.len(), 1, "a's listener told it was replaced");
    assert_eq!(close_code(&closing[0].1), 4000);
    let mut p = post_to(&a, &clock, "/5", b"via a");
    assert_eq!(response(&mut p, &clock).unwrap().0, 204);
    assert_eq!(on_b.frames(&clock), vec![(OpCode::Binary, b"via a".to_vec())]);

    // Nobody anywhere: 404 from both.
    drop(on_a);
    drop(on_b);
    for broker in [&a, &b] {
        let mut p = post_to(broker, &clock, "/5", b"x");
        assert_eq!(response(&mut p, &clock).unwrap().0, 404);
    }
    assert!(
        engine.subscribed.lock().unwrap().is_empty(),
        "unsubscribed when the last listener left"
    );
}
