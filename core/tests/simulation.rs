//! Simulation: hundreds of virtual senders and listeners against one broker core in one process,
//! with a virtual clock. Pings, idle drops, request timeouts and replacement are checked without
//! sleeping; delivery is checked byte for byte and in order.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use fedbroker_core::ws::OpCode;
use fedbroker_core::{Broker, Config, Session};

fn config() -> Config {
    let mut c = Config::default();
    c.ping_interval = Duration::from_secs(30);
    c.request_timeout = Duration::from_secs(10);
    c.queue_limit = 8;
    c
}

struct Listener {
    session: Session,
    wire: BytesMut,
}

impl Listener {
    fn open(broker: &std::sync::Arc<Broker>, clock: &Clock, id: u32) -> Listener {
        let mut session = broker.accept(clock.0);
        session.handle_input(clock.0, &listen(id));
        let mut wire = BytesMut::from(&drain(&mut session, clock.0)[..]);
        let (status, _, _) = take_response(&mut wire, false).expect("101");
        assert_eq!(status, 101);
        Listener { session, wire }
    }

    fn frames(&mut self, clock: &Clock) -> Vec<(OpCode, Vec<u8>)> {
        self.session.handle_wake(clock.0);
        let bytes = drain(&mut self.session, clock.0);
        self.wire.extend_from_slice(&bytes);
        take_frames(&mut self.wire)
    }
}

#[test]
fn hundreds_of_senders_and_listeners_deliver_in_order() {
    const LISTENERS: u32 = 300;
    const SENDERS: usize = 300;
    const PER_SENDER: usize = 6;
    let clock = Clock::new();
    let mut c = config();
    c.queue_limit = 4096;
    let broker = Broker::new(c, "sim", clock.0, std::time::Duration::from_secs(1_800_000_000));
    let mut listeners: Vec<Listener> = (1..=LISTENERS).map(|id| Listener::open(&broker, &clock, id)).collect();
    let mut senders: Vec<Session> = (0..SENDERS).map(|_| broker.accept(clock.0)).collect();

    // Interleave: each round every sender posts one message on its keep-alive connection.
    let mut expected: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for round in 0..PER_SENDER {
        for (s, sender) in senders.iter_mut().enumerate() {
            let id = (s as u32 * 7 + round as u32) % LISTENERS + 1;
            let body = format!("sender {s} round {round}").into_bytes();
            sender.handle_input(clock.0, &post(id, &body));
            let rs = responses(&drain(sender, clock.0));
            assert_eq!(rs.len(), 1);
            assert_eq!(rs[0].0, 204, "{}", String::from_utf8_lossy(&rs[0].2));
            expected.entry(id).or_default().push(body);
        }
    }
    for (i, l) in listeners.iter_mut().enumerate() {
        let got: Vec<Vec<u8>> = l
            .frames(&clock)
            .into_iter()
            .map(|(op, p)| {
                assert_eq!(op, OpCode::Binary);
                p
            })
            .collect();
        assert_eq!(
            got,
            expected.remove(&(i as u32 + 1)).unwrap_or_default(),
            "listener {}",
            i + 1
        );
    }
    let snap = broker.snapshot(clock.0);
    assert_eq!(snap.messages_received, (SENDERS * PER_SENDER) as u64);
    assert_eq!(snap.messages_delivered, (SENDERS * PER_SENDER) as u64);
    assert_eq!(snap.listeners, u64::from(LISTENERS));
    assert_eq!(snap.connections, (SENDERS + LISTENERS as usize) as u64);
    drop(senders);
    drop(listeners);
    assert_eq!(broker.snapshot(clock.0).connections, 0);
    assert_eq!(broker.snapshot(clock.0).listeners, 0);
}

#[test]
fn pings_keep_live_listeners_and_drop_silent_ones() {
    let mut clock = Clock::new();
    let broker = Broker::new(config(), "sim", clock.0, std::time::Duration::from_secs(1_800_000_000));
    let mut live: Vec<Listener> = (1..=100).map(|id| Listener::open(&broker, &clock, id)).collect();
    let mut silent: Vec<Listener> = (101..=200).map(|id| Listener::open(&broker, &clock, id)).collect();

    for interval in 1..=4 {
        let now = clock.advance(Duration::from_secs(30));
        for (k, l) in live.iter_mut().chain(silent.iter_mut()).enumerate() {
            // Only a closed connection has no timer (the silent ones, once dropped).
            if let Some(due) = l.session.poll_timeout() {
                assert!(
                    due <= now,
                    "interval {interval}, listener {k}: next timer {:?} after now",
                    due - now
                );
            } else {
                assert!(k >= 100 && l.session.is_closed(), "listener {k} has no timer");
            }
            l.session.handle_timeout(now);
        }
        for l in &mut live {
            let frames = l.frames(&clock);
            assert_eq!(frames, vec![(OpCode::Ping, vec![])], "one ping per interval");
            l.session
                .handle_input(now, &client_frame(true, OpCode::Pong, b"", [1, 2, 3, 4]));
            assert!(!l.session.is_closed());
        }
        for l in &mut silent {
            let frames = l.frames(&clock);
            match interval {
                1 => assert_eq!(frames, vec![(OpCode::Ping, vec![])]),
                // Two intervals without a byte: dropped with a Close saying why, no longer listening.
                2 => {
                    assert_eq!(frames.len(), 1, "{frames:?}");
                    assert_eq!(frames[0].0, OpCode::Close);
                    assert_eq!(close_code(&frames[0].1), 1001);
                    assert_eq!(&frames[0].1[2..], b"ping timeout");
                }
                _ => assert!(frames.is_empty(), "{frames:?}"),
            }
        }
    }
    assert_eq!(
        broker.snapshot(clock.0).listeners,
        100,
        "only the answering listeners remain"
    );
    // The silent ones close for good once the linger after their drop has passed.
    let now = clock.advance(Duration::from_secs(5));
    for l in &mut silent {
        l.session.handle_timeout(now);
        assert!(l.session.is_closed());
    }
}

#[test]
fn request_timeouts_without_sleeping() {
    let mut clock = Clock::new();
    let broker = Broker::new(config(), "sim", clock.0, std::time::Duration::from_secs(1_800_000_000));
    // A partial head, a partial body, and a connection that never sends anything.
    let mut partial_head: Vec<Session> = (0..100).map(|_| broker.accept(clock.0)).collect();
    let mut partial_body: Vec<Session> = (0..100).map(|_| broker.accept(clock.0)).collect();
    let mut silent: Vec<Session> = (0..100).map(|_| broker.accept(clock.0)).collect();
    let _listener = Listener::open(&broker, &clock, 9);
    for s in &mut partial_head {
        s.handle_input(clock.0, b"POST /9 HTTP/1.1\r\nHost: sim\r\nContent-Le");
    }
    for s in &mut partial_body {
        s.handle_input(
            clock.0,
            b"POST /9 HTTP/1.1\r\nHost: sim\r\nContent-Length: 10\r\n\r\nabc",
        );
    }
    let now = clock.advance(Duration::from_secs(9));
    for s in partial_head.iter_mut().chain(&mut partial_body).chain(&mut silent) {
        s.handle_timeout(now);
        assert!(drain(s, now).is_empty(), "nothing before the timeout");
    }
    let now = clock.advance(Duration::from_secs(1));
    for s in partial_head.iter_mut().chain(&mut partial_body).chain(&mut silent) {
        assert!(s.poll_timeout().unwrap() <= now);
        s.handle_timeout(now);
        let rs = responses(&drain(s, now));
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].0, 408);
        assert!(rs[0].1.contains(&("connection".into(), "close".into())));
        assert!(s.should_shutdown_write());
        s.handle_eof(now);
        assert!(s.is_closed());
    }
    // An idle keep-alive connection is closed quietly after the same timeout.
    let mut kept = broker.accept(now);
    kept.handle_input(now, b"GET /healthz HTTP/1.1\r\nHost: sim\r\n\r\n");
    assert_eq!(responses(&drain(&mut kept, now))[0].0, 200);
    let now = clock.advance(Duration::from_secs(10));
    kept.handle_timeout(now);
    assert!(drain(&mut kept, now).is_empty());
    assert!(kept.should_shutdown_write());
}

#[test]
fn replacement_and_slow_consumer() {
    let clock = Clock::new();
    let broker = Broker::new(config(), "sim", clock.0, std::time::Duration::from_secs(1_800_000_000));
    let mut first = Listener::open(&broker, &clock, 5);
    let mut sender = broker.accept(clock.0);
    sender.handle_input(clock.0, &post(5, b"before"));
    assert_eq!(responses(&drain(&mut sender, clock.0))[0].0, 204);

    let mut second = Listener::open(&broker, &clock, 5);
    let frames = first.frames(&clock);
    assert_eq!(
        frames[0],
        (OpCode::Binary, b"before".to_vec()),
        "what was queued still arrives"
    );
    assert_eq!(frames[1].0, OpCode::Close);
    assert_eq!(close_code(&frames[1].1), 4000);
    assert_eq!(&frames[1].1[2..], b"replaced");

    // The second listener does not read: its outbox fills, then its queue, then POST gets 503.
    let payload = vec![7u8; 16 * 1024];
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..100 {
        sender.handle_input(clock.0, &post(5, &payload));
        let rs = responses(&drain(&mut sender, clock.0));
        match rs[0].0 {
            204 => accepted += 1,
            503 => {
                refused = Some(rs[0].clone());
                break;
            }
            other => panic!("unexpected {other}"),
        }
        // The listener's adapter would pull messages whenever woken, without writing them out.
        second.session.handle_wake(clock.0);
    }
    let (_, headers, body) = refused.expect("a full queue answers 503");
    assert!(headers.contains(&("retry-after".into(), "1".into())));
    assert!(String::from_utf8(body).unwrap().contains("id 5"));
    assert!(accepted >= 8, "queue limit 8 plus what fits the outbox: {accepted}");
    // Now the listener reads: every accepted message arrives, none lost.
    let mut got = 0;
    for _ in 0..1000 {
        let frames = second.frames(&clock);
        if frames.is_empty() {
            break;
        }
        got += frames.len();
    }
    assert_eq!(got, accepted);
    assert_eq!(broker.snapshot(clock.0).messages_rejected, 1);
}

#[test]
fn listener_protocol_errors_get_their_close_codes() {
    let clock = Clock::new();
    let mut c = config();
    c.max_message_size = 100;
    let broker = Broker::new(c, "sim", clock.0, std::time::Duration::from_secs(1_800_000_000));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (client_frame(true, OpCode::Binary, b"hi", [1, 2, 3, 4]), 1003),
        (client_frame(true, OpCode::Text, b"hi", [1, 2, 3, 4]), 1003),
        (
            {
                let mut f = client_frame(true, OpCode::Binary, b"hi", [1, 2, 3, 4]);
                f[1] &= 0x7f; // unmasked
                f
            },
            1002,
        ),
        (
            {
                let mut f = client_frame(true, OpCode::Ping, b"", [1, 2, 3, 4]);
                f[0] |= 0x40; // RSV1
                f
            },
            1002,
        ),
        (client_frame(true, OpCode::Ping, &[0; 126], [1, 2, 3, 4]), 1002),
        (client_frame(false, OpCode::Ping, b"", [1, 2, 3, 4]), 1002),
        (client_frame(true, OpCode::Reserved(3), b"", [1, 2, 3, 4]), 1002),
        (client_frame(true, OpCode::Continuation, b"x", [1, 2, 3, 4]), 1002),
        (client_frame(true, OpCode::Binary, &[0; 101], [1, 2, 3, 4]), 1009),
        (
            [
                client_frame(false, OpCode::Binary, &[0; 60], [1, 2, 3, 4]),
                client_frame(true, OpCode::Continuation, &[0; 60], [1, 2, 3, 4]),
            ]
            .concat(),
            1009,
        ),
        (
            client_frame(true, OpCode::Close, &1005u16.to_be_bytes(), [1, 2, 3, 4]),
            1002,
        ),
        (
            client_frame(true, OpCode::Close, &[0x03, 0xe8, 0xff], [1, 2, 3, 4]),
            1007,
        ),
    ];
    for (i, (input, code)) in cases.into_iter().enumerate() {
        let mut l = Listener::open(&broker, &clock, 100 + i as u32);
        l.session.handle_input(clock.0, &input);
        let frames = l.frames(&clock);
        let close = frames
            .iter()
            .find(|(op, _)| *op == OpCode::Close)
            .unwrap_or_else(|| panic!("case {i}: no close in {frames:?}"));
        assert_eq!(close_code(&close.1), code, "case {i}");
    }
    // Ping → pong with the same payload; a client Close is echoed and ends the session.
    let mut l = Listener::open(&broker, &clock, 1);
    l.session
        .handle_input(clock.0, &client_frame(true, OpCode::Ping, b"abc", [9, 8, 7, 6]));
    assert_eq!(l.frames(&clock), vec![(OpCode::Pong, b"abc".to_vec())]);
    l.session.handle_input(
        clock.0,
        &client_frame(true, OpCode::Close, &1000u16.to_be_bytes(), [9, 8, 7, 6]),
    );
    assert_eq!(l.frames(&clock), vec![(OpCode::Close, 1000u16.to_be_bytes().to_vec())]);
    assert!(l.session.should_shutdown_write());
    assert!(!broker.registry().is_listened(fedbroker_core::Id::new(1).unwrap()));
}

#[test]
fn one_response_per_request_even_when_a_discarded_body_is_bad() {
    let clock = Clock::new();
    let broker = Broker::new(config(), "sim", clock.0, std::time::Duration::from_secs(1_800_000_000));
    let mut s = broker.accept(clock.0);
    // Refused early (invalid id), then its chunked body turns out malformed: no second answer.
    s.handle_input(
        clock.0,
        b"POST /abc HTTP/1.1\r\nHost: sim\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    );
    let rs = responses(&drain(&mut s, clock.0));
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_eq!(rs[0].0, 400);
    assert!(s.should_shutdown_write());
}

#[test]
fn over_the_connection_limit_answers_503_at_once() {
    let clock = Clock::new();
    let mut c = config();
    c.max_connections = 2;
    let broker = Broker::new(c, "sim", clock.0, std::time::Duration::from_secs(1_800_000_000));
    let _a = broker.accept(clock.0);
    let _b = broker.accept(clock.0);
    let mut refused = broker.accept(clock.0);
    let rs = responses(&drain(&mut refused, clock.0));
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].0, 503);
    assert!(rs[0].1.contains(&("retry-after".into(), "1".into())));
    // Its request, if it sends one, is read and dropped until it closes.
    refused.handle_input(clock.0, b"GET / HTTP/1.1\r\nHost: sim\r\n\r\n");
    assert!(drain(&mut refused, clock.0).is_empty());
    refused.handle_eof(clock.0);
    assert!(refused.is_closed());
}

#[test]
fn no_new_listener_during_shutdown() {
    let clock = Clock::new();
    let broker = Broker::new(config(), "sim", clock.0, std::time::Duration::from_secs(1_800_000_000));
    let mut s = broker.accept(clock.0);
    s.handle_input(clock.0, b"GET /healthz HTTP/1.1\r\nHost: sim\r\n\r\n");
    assert_eq!(responses(&drain(&mut s, clock.0))[0].0, 200);
    // Shutdown begins while the keep-alive connection is idle; an upgrade then arrives on it.
    s.handle_shutdown(clock.0);
    s.handle_input(clock.0, &listen(3));
    let rs = responses(&drain(&mut s, clock.0));
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].0, 503);
    assert!(rs[0].1.contains(&("connection".into(), "close".into())));
    assert_eq!(broker.snapshot(clock.0).listeners, 0);
}
