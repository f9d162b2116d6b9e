//! docs/cluster.md: brokers sharing one id space through an engine (`--cluster nats://…` and
//! `--cluster redis://…`), with a real `nats-server` or `redis-server` started by each test —
//! delivery across brokers, `404` when nobody listens anywhere, replacement across brokers
//! (`4000`), backpressure crossing (`503`), the engine going down and coming back, a broker
//! dying, mailboxes kept by the engine. Every test runs on both engines and every adapter.

use std::time::Duration;

use fedbroker_tests::*;

/// Bound on waiting for what the brokers do asynchronously (subscriptions, reconnects).
const WAIT: Duration = Duration::from_secs(15);

fn node(a: Adapter, engine: &EngineServer, extra: &[&str]) -> Broker {
    let url = engine.url();
    let mut args = vec!["--cluster", url.as_str(), "--log-level", "debug"];
    args.extend_from_slice(extra);
    Broker::start(a, &args)
}

/// POSTs `body` to `id` on `broker` until the answer is `status` (a subscription on another
/// broker takes a moment to reach the engine), and returns that answer.
#[track_caller]
fn post_until(broker: &Broker, id: u32, body: &[u8], status: u16) -> Response {
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = broker.post(id, body);
        if r.status == status {
            return r;
        }
        seen.insert((r.status, String::from_utf8_lossy(&r.body).trim().to_owned()));
        assert!(
            std::time::Instant::now() < deadline,
            "POST /{id} not answered {status} within {WAIT:?}; answers: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `broker` is connected to its engine (a mailbox id needs it: its mailbox is there).
#[track_caller]
fn connected(broker: &Broker) {
    eventually(WAIT, "connected to the engine", || {
        (broker.stat("cluster_connected") == 1).then_some(())
    });
}

/// The cluster tests, on each engine and every adapter: `engine()` starts the engine of the
/// module they are in; tests of one engine only follow its name.
macro_rules! engine_tests {
    ($engine:ident, $kind:expr, $($only:tt)*) => {
        mod $engine {
            use super::*;

            const KIND: EngineKind = $kind;

            fn engine() -> Option<EngineServer> {
                EngineServer::start(KIND)
            }

            adapter_tests! {

            /// A POST to one broker reaches the listener on another; an id nobody listens on anywhere is
            /// `404` on every broker; a multi-target send mixes local and remote ids.
            fn delivery_across_brokers(a: Adapter) {
                let Some(engine) = engine() else { return };
                let one = node(a, &engine, &[]);
                let two = node(a, &engine, &[]);
                let mut on_one = one.listen(5);
                post_until(&two, 5, b"first", 204);
                assert_eq!(on_one.recv(), b"first");
                for i in 0..20u32 {
                    two.post(5, format!("m{i}").as_bytes()).assert_status(204);
                }
                for i in 0..20u32 {
                    assert_eq!(on_one.recv(), format!("m{i}").into_bytes(), "in order across brokers");
                }
                two.post(6, b"x").assert_error(404);
                one.post(6, b"x").assert_error(404);
                assert_eq!((one.stat("cluster"), one.stat("cluster_connected")), (1, 1));
                assert_eq!(one.stat("cluster_subscriptions"), 1, "id 5");
                assert_eq!(two.stat("cluster_subscriptions"), 0);
                assert_eq!(Broker::start(a, &[]).stat("cluster"), 0, "a broker alone");
                let mut on_two = two.listen(9);
                post_until(&one, 9, b"warm", 204);
                assert_eq!(on_two.recv(), b"warm");
                two.connect().post("/5,9", b"both").assert_status(204);
                assert_eq!(on_one.recv(), b"both");
                assert_eq!(on_two.recv(), b"both");
            }

            /// A listener taking an id on another broker replaces the first one there (`4000`), and
            /// messages follow it.
            fn replacement_across_brokers(a: Adapter) {
                let Some(engine) = engine() else { return };
                let one = node(a, &engine, &[]);
                let two = node(a, &engine, &[]);
                let mut first = one.listen(7);
                post_until(&two, 7, b"to first", 204);
                assert_eq!(first.recv(), b"to first");
                let mut second = two.listen(7);
                first.set_read_timeout(WAIT);
                assert_eq!(first.expect_close().0, 4000, "replaced from the other broker");
                post_until(&one, 7, b"to second", 204);
                assert_eq!(second.recv(), b"to second");
            }

            /// A full listener queue on one broker answers `503` to a POST on another.
            fn backpressure_crosses_brokers(a: Adapter) {
                let Some(engine) = engine() else { return };
                let one = node(a, &engine, &["--queue-limit", "2"]);
                let two = node(a, &engine, &[]);
                let _slow = one.listen(3);
                post_until(&two, 3, b"hello", 204);
                let mut conn = two.connect();
                let refused = (0..200u64).find_map(|seed| {
                    let r = conn.post("/3", &random_bytes(seed, 256 * 1024));
                    (r.status != 204).then_some(r)
                });
                let r = refused.expect("a listener that does not read fills up");
                r.assert_error(503);
                assert!(r.header("retry-after").is_some(), "{r:?}");
            }

            /// With the engine down, ids listened on locally keep working and others get `503`; when it
            /// is back, the brokers reconnect and subscribe again by themselves.
            fn engine_down_and_back(a: Adapter) {
                let Some(mut engine) = engine() else { return };
                let one = node(a, &engine, &[]);
                let two = node(a, &engine, &[]);
                let mut remote = one.listen(5);
                let mut local = two.listen(9);
                post_until(&two, 5, b"up", 204);
                assert_eq!(remote.recv(), b"up");
                engine.stop();
                eventually(WAIT, "cluster_connected 0", || (two.stat("cluster_connected") == 0).then_some(()));
                two.post(9, b"local").assert_status(204);
                assert_eq!(local.recv(), b"local");
                let down = post_until(&two, 5, b"down", 503);
                assert!(
                    String::from_utf8_lossy(&down.body).contains("could not be routed"),
                    "{down:?}"
                );
                engine.restart();
                post_until(&two, 5, b"back", 204);
                assert_eq!(two.stat("cluster_connected"), 1);
                // A message whose request was cut by the outage may still arrive (its sender was told
                // 503, as for any request whose answer was lost): only those may come first.
                let mut got = remote.recv();
                while got == b"down" {
                    got = remote.recv();
                }
                assert_eq!(got, b"back");
            }

            /// Brokers started before their engine is up keep trying, and share ids once it is;
        /// until then, ids listened on elsewhere are `503` and local ones work.
        fn brokers_started_before_the_engine(a: Adapter) {
            let Some(mut engine) = engine() else { return };
            engine.stop();
            let one = node(a, &engine, &[]);
            let two = node(a, &engine, &[]);
            let mut here = two.listen(3);
            two.post(3, b"local").assert_status(204);
            assert_eq!(here.recv(), b"local");
            let mut there = one.listen(4);
            two.post(4, b"x").assert_error(503);
            assert_eq!(two.stat("cluster_connected"), 0);
            engine.restart();
            post_until(&two, 4, b"up", 204);
            assert_eq!(there.recv(), b"up");
            post_until(&one, 3, b"both ways", 204);
            assert_eq!(here.recv(), b"both ways");
        }

        /// Two listeners of one id made on two brokers while the engine was down are settled
        /// when it is back: the newer stays, the older is closed with `4000`.
        fn listeners_made_during_an_outage_are_settled(a: Adapter) {
            let Some(mut engine) = engine() else { return };
            let one = node(a, &engine, &[]);
            let two = node(a, &engine, &[]);
            let mut older = one.listen(7);
            post_until(&two, 7, b"up", 204);
            assert_eq!(older.recv(), b"up");
            engine.stop();
            eventually(WAIT, "both disconnected", || {
                (one.stat("cluster_connected") == 0 && two.stat("cluster_connected") == 0).then_some(())
            });
            let mut newer = two.listen(7);
            engine.restart();
            older.set_read_timeout(WAIT);
            assert_eq!(older.expect_close().0, 4000, "the older listener yields");
            post_until(&one, 7, b"after", 204);
            assert_eq!(newer.recv(), b"after");
        }

        /// A request-reply crosses brokers: the envelope listener on one answers a `POST ?reply=` sent
            /// to another; a listener that leaves before answering is `502`.
            fn request_reply_across_brokers(a: Adapter) {
                let Some(engine) = engine() else { return };
                let one = node(a, &engine, &[]);
                let two = node(a, &engine, &[]);
                let mut l = EnvelopeListener::new(one.listen_with("/6", &[("Sec-WebSocket-Protocol", SUBPROTOCOL)]));
                post_until(&two, 6, b"warm", 204);
                l.recv_kind("message");
                let addr = two.addr();
                let asker = std::thread::spawn(move || Conn::connect(addr).post("/6?reply=5000", b"ping"));
                let request = l.recv_kind("request");
                assert_eq!(request.payload, b"ping");
                let seq = request.uint("seq");
                l.reply(seq, 200, Some("text/plain"), serde_json::json!(1), b"pong")
                    .assert_ack(&serde_json::json!(1), 200);
                let answered = asker.join().unwrap();
                answered.assert_status(200);
                assert_eq!(answered.body, b"pong");
                assert_eq!(answered.header("content-type"), Some("text/plain"));

                let asker = std::thread::spawn(move || Conn::connect(addr).post("/6?reply=5000", b"ping"));
                l.recv_kind("request");
                drop(l);
                let gone = asker.join().unwrap();
                gone.assert_error(502);
            }

            /// A topic's message reaches its listeners on every broker, and `Fedbroker-Recipients` counts
            /// them all; a broker whose listeners left is no longer counted.
            fn topics_fan_out_across_brokers(a: Adapter) {
                let Some(engine) = engine() else { return };
                let one = node(a, &engine, &["--topics", "1000-1999"]);
                let two = node(a, &engine, &["--topics", "1000-1999"]);
                let mut here = one.listen(1500);
                let mut there = [two.listen(1500), two.listen(1500)];
                let r = eventually(WAIT, "three recipients", || {
                    let r = one.post(1500, b"t");
                    (r.header("fedbroker-recipients") == Some("3")).then_some(r)
                });
                r.assert_status(204);
                one.post(1500, b"u").assert_status(204);
                // Earlier attempts may have reached some of them: only those come before "u".
                for l in std::iter::once(&mut here).chain(there.iter_mut()) {
                    let mut got = l.recv();
                    while got == b"t" {
                        got = l.recv();
                    }
                    assert_eq!(got, b"u");
                }
                let from_two = two.post(1500, b"v");
                assert_eq!(from_two.header("fedbroker-recipients"), Some("3"), "{from_two:?}");
                drop(here);
                eventually(WAIT, "two recipients", || {
                    (two.post(1500, b"w").header("fedbroker-recipients") == Some("2")).then_some(())
                });
                drop(there);
                eventually(WAIT, "nobody", || (one.post(1500, b"x").status == 404).then_some(()));
            }

            /// A mailbox id's message reaches its listener on another broker (`204`); with nobody
            /// listening anywhere it is kept by the engine (`202`), for a listener on any broker;
            /// with the engine down, a listener on a mailbox id is refused `503` (its mailbox
            /// cannot be read) and one on a plain id is not.
            fn mailbox_ids_in_a_cluster(a: Adapter) {
                let Some(mut engine) = engine() else { return };
                let one = node(a, &engine, &["--mailbox", "1-100"]);
                let two = node(a, &engine, &["--mailbox", "1-100"]);
                connected(&one);
                connected(&two);
                let mut l = one.listen(20);
                post_until(&two, 20, b"live", 204);
                assert_eq!(l.recv(), b"live");
                drop(l);
                let kept = post_until(&two, 21, b"kept", 202);
                assert_eq!(kept.header("fedbroker-seq"), Some("1"));
                let mut later = one.listen_with("/21?since=0", &[]);
                assert_eq!(later.recv(), b"kept");
                engine.stop();
                eventually(WAIT, "a mailbox listener refused while the engine is down", || {
                    match one.try_listen_with("/22", &[]) {
                        Err(e) if e.contains("503") => Some(()),
                        _ => None,
                    }
                });
                let _plain = one.listen(200);
            }

            /// Presence crosses brokers: a watcher on one broker sees an id come online when it is
            /// listened on at another, and offline when that listener leaves; a replacement across
            /// brokers is no event.
            fn presence_across_brokers(a: Adapter) {
                let Some(engine) = engine() else { return };
                let one = node(a, &engine, &[]);
                let two = node(a, &engine, &[]);
                let mut watcher = EnvelopeListener::new(one.listen_with("/1", &[("Sec-WebSocket-Protocol", SUBPROTOCOL)]));
                watcher.watch(&[5], serde_json::json!("w")).assert_ack(&serde_json::json!("w"), 200);
                assert_eq!(watcher.recv_kind("offline").uint("id"), 5);
                let there = two.listen(5);
                assert_eq!(watcher.recv_kind("online").uint("id"), 5, "listened on the other broker");
                let here = one.listen(5);
                drop(there);
                post_until(&two, 5, b"moved", 204);
                drop(here);
                assert_eq!(
                    watcher.recv_kind("offline").uint("id"),
                    5,
                    "no event for the move, offline when the last listener left"
                );
            }

            /// A broker that dies (SIGKILL) takes its listeners with it; they reconnect to another broker
            /// and messages reach them there, sent through any broker; a watcher elsewhere sees the id
            /// online again.
            fn a_broker_dies_and_its_listeners_move(a: Adapter) {
                let Some(engine) = engine() else { return };
                let mut one = node(a, &engine, &[]);
                let two = node(a, &engine, &[]);
                let three = node(a, &engine, &[]);
                let mut l = one.listen(8);
                post_until(&three, 8, b"before", 204);
                assert_eq!(l.recv(), b"before");
                one.signal(libc::SIGKILL);
                one.wait_exit(WAIT);
                l.set_read_timeout(WAIT);
                drop(l);
                // The listener comes back on another broker.
                let mut moved = two.listen(8);
                post_until(&three, 8, b"after", 204);
                assert_eq!(moved.recv(), b"after");
                two.post(8, b"local").assert_status(204);
                assert_eq!(moved.recv(), b"local");
            }

            /// A broker that dies says nothing: the others notice its silence (it sent a heartbeat
        /// every 2 s) and a watcher sees its ids go offline without any message sent to them.
        fn a_dead_brokers_ids_go_offline(a: Adapter) {
            let Some(engine) = engine() else { return };
            let mut one = node(a, &engine, &[]);
            let two = node(a, &engine, &[]);
            let mut watcher = EnvelopeListener::new(two.listen_with("/1", &[("Sec-WebSocket-Protocol", SUBPROTOCOL)]));
            watcher.watch(&[8], serde_json::json!("w")).assert_ack(&serde_json::json!("w"), 200);
            assert_eq!(watcher.recv_kind("offline").uint("id"), 8);
            let _l = one.listen(8);
            assert_eq!(watcher.recv_kind("online").uint("id"), 8);
            one.signal(libc::SIGKILL);
            one.wait_exit(WAIT);
            watcher.inner().set_read_timeout(WAIT);
            assert_eq!(watcher.recv_kind("offline").uint("id"), 8, "noticed without a message");
        }

        /// An engine that requires credentials: brokers given them in the URL share ids; a broker
            /// with wrong ones stays disconnected (its remote messages get `503`), ids listened on it
            /// still work.
            fn engine_with_credentials(a: Adapter) {
                let Some(engine) = EngineServer::start_with_credentials(KIND, "fed", "s3cret") else { return };
                let good = engine.url_with("fed:s3cret@");
                let bad = engine.url_with("fed:b4dpass@");
                let one = Broker::start(a, &["--cluster", good.as_str(), "--mailbox", "90-99"]);
                // Debug logs too: the engine client's own lines name the address it dials.
                let two = Broker::start(a, &["--cluster", good.as_str(), "--log-level", "debug", "--mailbox", "90-99"]);
                let intruder = Broker::start(a, &["--cluster", bad.as_str(), "--log-level", "debug"]);
                let mut l = one.listen(4);
                post_until(&two, 4, b"ok", 204);
                assert_eq!(l.recv(), b"ok");
                // A mailbox id (through Redis, the least ACL of docs/security.md has room for it).
                post_until(&two, 90, b"kept", 202);
                let mut kept = two.listen_with("/90?since=0", &[]);
                assert_eq!(kept.recv(), b"kept");
                intruder.post(4, b"x").assert_error(503);
                assert_eq!(intruder.stat("cluster_connected"), 0);
                let mut own = intruder.listen(9);
                intruder.post(9, b"local").assert_status(204);
                assert_eq!(own.recv(), b"local");
                let logs = intruder.stderr() + &two.stderr();
                assert!(logs.contains("127.0.0.1"), "the debug log names the engine's address");
                assert!(!logs.contains("s3cret") && !logs.contains("b4dpass"), "no password in the logs");
            }



            /// The engine keeps the mailboxes, shared by every broker: a mailbox id's messages are numbered
            /// in one sequence whichever broker they reach, kept with nobody listening anywhere (`202`),
            /// and replayed with `since` by any broker; a refusing mailbox is full for every broker at
            /// once (`507`); a request to an envelope listener of a mailbox id takes a seq of the same
            /// sequence and is answered across brokers.
            fn mailboxes_are_shared_across_brokers(a: Adapter) {
                let Some(engine) = engine() else { return };
                let flags = ["--mailbox", "30-39", "--mailbox-messages", "3", "--mailbox-full", "refuse"];
                let brokers: Vec<Broker> = (0..3).map(|_| node(a, &engine, &flags)).collect();
                brokers.iter().for_each(connected);
                let mut seqs = Vec::new();
                for (i, b) in brokers.iter().enumerate() {
                    let r = post_until(b, 30, format!("m{i}").as_bytes(), 202);
                    seqs.push(r.header("fedbroker-seq").map(str::to_owned));
                }
                assert_eq!(seqs, [Some("1".into()), Some("2".into()), Some("3".into())], "one sequence");
                brokers[1].post(30, b"m3").assert_error(507);
                brokers[2].post(30, b"m3").assert_error(507);
                for (i, b) in brokers.iter().enumerate() {
                    let mut l = b.listen_with(&format!("/30?since={i}"), &[]);
                    assert_eq!(l.seq_header(), Some(3), "the 101 names the last seq given anywhere");
                    for j in i..3 {
                        assert_eq!(l.recv(), format!("m{j}").as_bytes(), "replayed by broker {i}");
                    }
                }
                // Request-reply to an envelope listener of a mailbox id, through another broker.
                let mut l = EnvelopeListener::new(brokers[0].listen_with("/31", &[("Sec-WebSocket-Protocol", SUBPROTOCOL)]));
                let first = brokers[1].post(31, b"one");
                assert!(matches!(first.status, 202 | 204), "{first:?}");
                assert_eq!(first.header("fedbroker-seq"), Some("1"));
                assert_eq!(l.recv_kind("message").uint("seq"), 1);
                let addr = brokers[2].addr();
                let asker = std::thread::spawn(move || Conn::connect(addr).post("/31?reply=5000", b"ping"));
                let request = l.recv_kind("request");
                assert_eq!(request.uint("seq"), 2, "the request takes the next seq");
                l.reply(2, 200, None, serde_json::json!(1), b"pong").assert_ack(&serde_json::json!(1), 200);
                let answered = asker.join().unwrap();
                answered.assert_status(200);
                assert_eq!(answered.body, b"pong");
                let after = brokers[2].post(31, b"three");
                assert_eq!(after.header("fedbroker-seq"), Some("3"), "{after:?}");
                assert_eq!(l.recv_kind("message").uint("seq"), 3);
            }

            /// A broker dies (SIGKILL) while its listener reads a mailbox id: the listener reconnects to
            /// another broker with `since` = the last seq it processed, and receives every message
            /// acknowledged after it (`204` while it listened, `202` after), in order, once each.
            fn a_broker_dies_and_nothing_acknowledged_is_lost(a: Adapter) {
                let Some(engine) = engine() else { return };
                let flags = ["--mailbox", "40-49"];
                let mut one = node(a, &engine, &flags);
                let two = node(a, &engine, &flags);
                let three = node(a, &engine, &flags);
                [&one, &two, &three].into_iter().for_each(connected);
                let mut l = one.listen_with("/40?since=0", &[]);
                // Once only (every POST is kept): 202 while the listener's subscription is not in place
                // yet, and it reaches the listener either way.
                let first = three.post(40, b"0");
                assert!(matches!(first.status, 202 | 204), "{first:?}");
                assert_eq!(l.recv(), b"0");
                let mut acked = vec![(1u64, b"0".to_vec())];
                // Acknowledged while it listens; it processes only the first half.
                for i in 1..20u32 {
                    let body = i.to_string().into_bytes();
                    let r = three.post(40, &body);
                    r.assert_status(204);
                    acked.push((r.header("fedbroker-seq").unwrap().parse().unwrap(), body));
                }
                let mut processed = 1u64;
                for (seq, body) in &acked[1..10] {
                    assert_eq!(&l.recv(), body);
                    processed = *seq;
                }
                one.signal(libc::SIGKILL);
                one.wait_exit(WAIT);
                drop(l);
                // Acknowledged while nobody listens anywhere (204 until Redis noticed the dead
                // broker's connection closed: kept either way).
                for i in 20..30u32 {
                    let body = i.to_string().into_bytes();
                    let r = three.post(40, &body);
                    assert!(matches!(r.status, 202 | 204), "{r:?}");
                    acked.push((r.header("fedbroker-seq").unwrap().parse().unwrap(), body));
                }
                let seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
                assert_eq!(seqs, (1..=30).collect::<Vec<u64>>(), "every message numbered once, in order");
                let mut moved = two.listen_with(&format!("/40?since={processed}"), &[]);
                assert_eq!(moved.seq_header(), Some(30));
                for (_, body) in acked.iter().filter(|(s, _)| *s > processed) {
                    assert_eq!(&moved.recv(), body, "nothing acknowledged is lost");
                }
                // 202 until the listener's subscription is in place; it reaches the listener either way.
                let live = two.post(40, b"live");
                assert!(matches!(live.status, 202 | 204), "{live:?}");
                assert_eq!(moved.recv(), b"live", "and nothing comes twice");
            }

            /// The engine restarts while a listener reads a mailbox id. With its data kept
            /// (JetStream's store on disk, as these tests run nats-server) the listener carries
            /// on; without (a Redis without persistence, as these tests run it) the mailbox is
            /// gone and numbered from 1 again: the listener is closed with `4002` rather than
            /// left waiting for seqs that will not come, and listening again reads it afresh.
            fn mailbox_across_an_engine_restart(a: Adapter) {
                let Some(mut engine) = engine() else { return };
                let flags = ["--mailbox", "50-59"];
                let one = node(a, &engine, &flags);
                let two = node(a, &engine, &flags);
                connected(&one);
                connected(&two);
                let mut l = one.listen_with("/50?since=0", &[]);
                let first = two.post(50, b"before");
                assert!(matches!(first.status, 202 | 204), "{first:?}");
                assert_eq!(l.recv(), b"before");
                engine.restart();
                // 503 (nothing kept) until the broker is connected again.
                let after = eventually(WAIT, "the engine back", || {
                    let r = two.post(50, b"after");
                    (r.status != 503).then_some(r)
                });
                assert!(matches!(after.status, 202 | 204), "{after:?}");
                let mut current = if KIND == EngineKind::Nats {
                    assert_eq!(after.header("fedbroker-seq"), Some("2"));
                    assert_eq!(l.recv(), b"after");
                    l
                } else {
                    assert_eq!(after.header("fedbroker-seq"), Some("1"), "numbered again");
                    l.set_read_timeout(WAIT);
                    assert_eq!(l.expect_close().0, 4002);
                    let mut again = eventually(WAIT, "listening again", || one.try_listen_with("/50?since=0", &[]).ok());
                    assert_eq!(again.recv(), b"after");
                    again
                };
                // Back without anything it kept, on either engine: the same.
                engine.restart_empty();
                let lost = eventually(WAIT, "the engine back", || {
                    let r = two.post(50, b"anew");
                    (r.status != 503).then_some(r)
                });
                assert!(matches!(lost.status, 202 | 204), "{lost:?}");
                assert_eq!(lost.header("fedbroker-seq"), Some("1"), "numbered again");
                current.set_read_timeout(WAIT);
                assert_eq!(current.expect_close().0, 4002, "not left waiting for seqs that will not come");
                let mut fresh = eventually(WAIT, "listening again", || one.try_listen_with("/50?since=0", &[]).ok());
                assert_eq!(fresh.recv(), b"anew");
            }

            /// `--mailbox-bytes` bounds each broker's window, whatever the engine keeps: a read
            /// of the mailbox holds only the newest that fit, and what is older is said lost
            /// (`410` for a plain listener asking for it), never skipped.
            fn a_window_keeps_what_mailbox_bytes_allows(a: Adapter) {
                let Some(engine) = engine() else { return };
                let flags = ["--mailbox", "60-69", "--max-message-size", "100", "--mailbox-bytes", "400"];
                let one = node(a, &engine, &flags);
                let two = node(a, &engine, &flags);
                connected(&one);
                connected(&two);
                for i in 1..=3u8 {
                    let r = two.post(60, &[i; 100]);
                    assert_eq!(r.status, 202, "{r:?}");
                }
                // 3 × (100 + 64) bytes: a window keeps the newest 2.
                match one.try_listen_with("/60?since=0", &[]) {
                    Err(refused) => assert!(refused.contains("410"), "{refused}"),
                    Ok(_) => panic!("since=0 upgraded, though seq 1 is past the window"),
                }
                let mut l = one.listen_with("/60?since=1", &[]);
                assert_eq!(l.seq_header(), Some(3));
                assert_eq!(l.recv(), [2u8; 100]);
                assert_eq!(l.recv(), [3u8; 100]);
            }

                $($only)*
            }
        }
    };
}

engine_tests! { nats, EngineKind::Nats,
    /// A message larger than the engine takes (nats-server's max_payload, 1 MiB by default) is
    /// `413` when it must cross brokers; the same message to a local listener is delivered.
    fn larger_than_the_engine_takes(a: Adapter) {
        let Some(engine) = engine() else { return };
        let one = node(a, &engine, &[]);
        let two = node(a, &engine, &["--max-message-size", "4194304"]);
        let _remote = one.listen(5);
        let mut local = two.listen(6);
        post_until(&two, 5, b"small", 204);
        let big = vec![7u8; 3 << 20];
        let r = two.connect().post("/5", &big);
        r.assert_error(413);
        two.connect().post("/6", &big).assert_status(204);
        assert_eq!(local.recv().len(), big.len());
    }
}

engine_tests! { redis, EngineKind::Redis,
    /// A message larger than a broker's Redis subscriber connection reads (64 MiB) is `413`
    /// where it would cross brokers, and the brokers' connections carry on.
    fn larger_than_the_subscriber_reads(a: Adapter) {
        let Some(engine) = engine() else { return };
        let one = node(a, &engine, &["--max-message-size", "80000000"]);
        let two = node(a, &engine, &["--max-message-size", "80000000"]);
        let mut l = one.listen(5);
        post_until(&two, 5, b"small", 204);
        assert_eq!(l.recv(), b"small");
        let big = vec![1u8; 65 << 20];
        two.connect().post("/5", &big).assert_error(413);
        two.post(5, b"after").assert_status(204);
        assert_eq!(l.recv(), b"after");
    }

    /// A Redis with only a password (`requirepass`, no ACL user): `redis://:PASSWORD@…`.
    fn redis_with_a_password_only(a: Adapter) {
        let Some(engine) = EngineServer::start_with_args(KIND, &["--requirepass", "s3cret"]) else { return };
        let one = Broker::start(a, &["--cluster", engine.url_with(":s3cret@").as_str()]);
        let two = Broker::start(a, &["--cluster", engine.url_with(":s3cret@").as_str()]);
        let wrong = Broker::start(a, &["--cluster", engine.url_with(":nope@").as_str()]);
        let mut l = one.listen(4);
        post_until(&two, 4, b"ok", 204);
        assert_eq!(l.recv(), b"ok");
        wrong.post(4, b"x").assert_error(503);
        assert_eq!(wrong.stat("cluster_connected"), 0);
    }
}

adapter_tests! {
    /// `--cluster` takes nats:// and redis:// URLs; anything else stops the broker with one line
    /// that names the problem and never the credentials.
    fn cluster_url_checked(a: Adapter) {
        for (url, needle) in [
            ("127.0.0.1:4222", "expected nats://"),
            ("http://127.0.0.1:4222", "not an engine"),
            ("rediss://u:hidden@127.0.0.1:6379", "not an engine"),
            ("nats://", "without a host"),
            ("redis://u:hidden@127.0.0.1:99999", "port"),
            ("redis://u:hidden@127.0.0.1:6379/notadb", "not a Redis address"),
        ] {
            let out = run_cli(a, &["--cluster", url]);
            assert_eq!(out.code(), 2, "{url}: {out:?}");
            assert!(out.stderr.contains(needle), "{url}: {}", out.stderr);
            assert!(!out.stderr.contains("hidden"), "{url}: {}", out.stderr);
        }
        // The engine keeps the mailboxes: a store of this broker's own would not be used.
        let store = TempDir::new();
        let dir = store.path().to_str().unwrap();
        let args = ["--cluster", "redis://127.0.0.1:6379", "--mailbox", "1-9", "--store", dir];
        let out = run_cli(a, &args);
        assert_eq!(out.code(), 2, "{out:?}");
        assert!(out.stderr.contains("kept in the engine"), "{}", out.stderr);
    }
}
