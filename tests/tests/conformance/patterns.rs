//! docs/patterns.md: multi-target send (§1), topic ids (§2), the `fedbroker.v1` envelope (§3),
//! request-reply (§4), presence (§5), and their limits and statistics (§6).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;
use fedbroker_tests::*;

/// Bound on waiting for state the broker updates asynchronously (a listener unregistered).
const WAIT: Duration = Duration::from_secs(5);

/// The §6 statistics keys added by docs/patterns.md.
const PATTERN_STATS: [&str; 7] = [
    "topic_listeners",
    "slow_listeners_closed",
    "pending_replies",
    "replies",
    "replies_timed_out",
    "replies_failed",
    "presence_watches",
];

/// The path `/1,2,3` of a multi-target send to `ids`.
fn targets(ids: impl IntoIterator<Item = u32>) -> String {
    let ids: Vec<String> = ids.into_iter().map(|id| id.to_string()).collect();
    format!("/{}", ids.join(","))
}

/// `POST path` with `body` on a new connection.
#[track_caller]
fn post_path(broker: &Broker, path: &str, body: &[u8]) -> Response {
    broker.connect().post(path, body)
}

/// Asserts a `207 Multi-Status` whose JSON body is exactly `{"results": results}`.
#[track_caller]
fn assert_multi_status(response: &Response, results: Value) {
    response.assert_status(207);
    assert_eq!(
        response.json(),
        json!({ "results": results }),
        "207 report:\n{response:?}"
    );
}

/// Asserts `204` on a topic with `Fedbroker-Recipients: recipients`.
#[track_caller]
fn assert_recipients(response: &Response, recipients: usize) {
    response.assert_status(204);
    assert_eq!(
        response.header("fedbroker-recipients"),
        Some(recipients.to_string().as_str()),
        "wrong `Fedbroker-Recipients`:\n{response:?}"
    );
}

/// Waits until the statistics key `key` reads `value`.
#[track_caller]
fn wait_stat(broker: &Broker, key: &str, value: u64) {
    eventually(WAIT, &format!("statistics {key} = {value}"), || {
        (broker.stat(key) == value).then_some(())
    });
}

/// POSTs 256 KiB bodies to `path` until the answer is not `204` (the queue of a listener that does
/// not read is full, or the listener is closed) and returns that answer. Socket buffers absorb a
/// few MiB first: 200 × 256 KiB = 50 MiB at most.
#[track_caller]
fn post_until_refused(broker: &Broker, path: &str) -> Response {
    let mut conn = broker.connect();
    for seed in 0..200 {
        let response = conn.post(path, &random_bytes(seed, 256 * 1024));
        if response.status != 204 {
            return response;
        }
    }
    panic!("POST {path} still 204 after 50 MiB to a listener that does not read");
}

/// Tokens of the §1 and §5 authorization tests.
const LISTENER: &str = "tok-listener-3a9c01";
const SEND_1_2: &str = "tok-send12-77b2e4";
const SEND_ALL: &str = "tok-sendall-0d5f18";
const WATCHER: &str = "tok-watcher-c4e6a2";
const NO_PRESENCE: &str = "tok-nopresence-91ab3f";

/// A tokens file with a `presence` list (docs/patterns.md §5) next to `listen` and `send` (SPEC §5).
fn pattern_tokens() -> String {
    format!(
        r#"[[token]]
token = "{LISTENER}"
listen = ["*"]

[[token]]
token = "{SEND_1_2}"
send = [1, 2]

[[token]]
token = "{SEND_ALL}"
send = ["*"]

[[token]]
token = "{WATCHER}"
listen = ["*"]
send = ["*"]
presence = [7, "100-200"]

[[token]]
token = "{NO_PRESENCE}"
listen = ["*"]
send = ["*"]
"#
    )
}

/// A broker in tokens-file mode with [`pattern_tokens`].
fn tokens_broker(a: Adapter, extra: &[&str]) -> Broker {
    Broker::builder(a)
        .file_arg("--auth-tokens", "tokens.toml", pattern_tokens())
        .args(extra)
        .start()
}

/// The presence events `(type, id)` of the next `count` envelopes, in any order.
#[track_caller]
fn presence_events(listener: &mut EnvelopeListener, count: usize) -> BTreeSet<(String, u64)> {
    (0..count)
        .map(|_| {
            let event = listener.recv();
            assert!(
                matches!(event.kind(), "online" | "offline") && event.payload.is_empty(),
                "expected a presence event, got {event:?}"
            );
            (event.kind().to_string(), event.uint("id"))
        })
        .collect()
}

/// `{(type, id)}` as [`presence_events`] returns it.
fn events(list: &[(&str, u64)]) -> BTreeSet<(String, u64)> {
    list.iter().map(|(kind, id)| (kind.to_string(), *id)).collect()
}

/// A `POST /{id}` marker to the watcher itself, which must be its next envelope (`message` with
/// `seq`): proves that no event was queued for it before.
#[track_caller]
fn assert_no_event_before_marker(broker: &Broker, watcher: &mut EnvelopeListener, id: u32, seq: u64) {
    broker.post(id, b"marker").assert_status(204);
    let next = watcher.recv();
    assert!(
        next.kind() == "message" && next.header["seq"] == json!(seq) && next.payload == b"marker",
        "expected only the marker message (seq {seq}), got {next:?}: an unexpected event came first?"
    );
}

adapter_tests! {
    // ---- §1 multi-target send ----

    /// `POST /1,2,3` with every target listening → `204`, and each gets the one body byte for
    /// byte; an envelope target gets it as a `message` for its own id.
    fn multi_target_all_accepted_204(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut one = broker.listen(1);
        let mut two = broker.listen(2);
        let mut three = broker.listen(3);
        let body = random_bytes(1, 100_000);
        let response = post_path(&broker, "/1,2,3", &body);
        response.assert_status(204);
        assert!(response.body.is_empty(), "204 has no body:\n{response:?}");
        for (id, listener) in [(1, &mut one), (2, &mut two), (3, &mut three)] {
            assert!(listener.recv() == body, "target {id} did not get the body exactly");
        }

        let mut four = broker.listen_envelope(4);
        post_path(&broker, "/4,2", b"shared").assert_status(204);
        assert_eq!(four.recv_message(4, 1).payload, b"shared");
        assert_eq!(two.recv(), b"shared");
    }

    /// Some targets without a listener → `207 Multi-Status`, `application/json`, one entry per id
    /// in request order, failed entries with the sentence a POST to that id alone would get; the
    /// accepted targets got the message. All failing is a 207 too.
    fn multi_target_partial_207_in_request_order(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut one = broker.listen(1);
        let mut three = broker.listen(3);
        let response = post_path(&broker, "/3,2,1", b"hi");
        assert_multi_status(
            &response,
            json!([
                {"id": 3, "status": 204},
                {"id": 2, "status": 404, "error": "no listener on id 2"},
                {"id": 1, "status": 204},
            ]),
        );
        assert_eq!(response.reason, "Multi-Status", "{response:?}");
        assert_eq!(one.recv(), b"hi");
        assert_eq!(three.recv(), b"hi");

        let response = post_path(&broker, "/5,4", b"nobody");
        assert_multi_status(
            &response,
            json!([
                {"id": 5, "status": 404, "error": "no listener on id 5"},
                {"id": 4, "status": 404, "error": "no listener on id 4"},
            ]),
        );
    }

    /// A target whose queue is full is a `503` entry with the queue-full sentence; the others
    /// still get the message.
    fn multi_target_207_with_queue_full_entry(a: Adapter) {
        let broker = Broker::start(a, &["--queue-limit", "1"]);
        let _slow = broker.listen(2);
        let mut one = broker.listen(1);
        let mut conn = broker.connect();
        // Id 2 never reads: its queue fills up (after the socket buffers), id 1 reads everything.
        for seed in 0..200 {
            let body = random_bytes(seed, 256 * 1024);
            let response = conn.post("/1,2", &body);
            assert!(one.recv() == body, "id 1 missed message {seed}");
            if response.status == 204 {
                continue;
            }
            assert_multi_status(
                &response,
                json!([
                    {"id": 1, "status": 204},
                    {"id": 2, "status": 503, "error": "the listener on id 2 is not keeping up; retry later"},
                ]),
            );
            return;
        }
        panic!("no 503 entry after 50 MiB to a listener that does not read");
    }

    /// A topic target's entry carries `recipients`.
    fn multi_target_topic_entry_has_recipients(a: Adapter) {
        let broker = Broker::start(a, &["--topics", "100-199"]);
        let mut first = broker.listen(100);
        let mut second = broker.listen(100);
        let response = post_path(&broker, "/5,100", b"fan");
        assert_multi_status(
            &response,
            json!([
                {"id": 5, "status": 404, "error": "no listener on id 5"},
                {"id": 100, "status": 204, "recipients": 2},
            ]),
        );
        assert_eq!(first.recv(), b"fan");
        assert_eq!(second.recv(), b"fan");
    }

    /// A non-canonical or empty element, or an id twice → `400` naming it, and nothing is sent.
    fn multi_target_bad_list_400_names_the_id(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut seven = broker.listen(7);
        let mut eight = broker.listen(8);
        for (path, sentence) in [
            ("/7,07", r#"invalid id "07" in the target list"#),
            ("/0,7", r#"invalid id "0" in the target list"#),
            ("/7,2147483648", r#"invalid id "2147483648" in the target list"#),
            ("/7,4a", r#"invalid id "4a" in the target list"#),
            ("/7,+8", r#"invalid id "+8" in the target list"#),
            ("/7,,8", r#"invalid id "" in the target list"#),
            ("/7,", r#"invalid id "" in the target list"#),
            ("/7,8,7", "id 7 appears twice in the target list"),
            ("/8,7,8", "id 8 appears twice in the target list"),
        ] {
            let response = post_path(&broker, path, b"must not arrive");
            response.assert_sentence(400, sentence);
        }
        broker.post(7, b"after").assert_status(204);
        broker.post(8, b"after").assert_status(204);
        assert_eq!(seven.recv(), b"after", "a refused multi-target send delivered something");
        assert_eq!(eight.recv(), b"after", "a refused multi-target send delivered something");
    }

    /// 1024 ids are a valid list (a report of 1024 entries in order); 1025 → `400`.
    fn multi_target_1024_ids_max(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut one = broker.listen(1);
        let response = post_path(&broker, &targets(1..=1024), b"many");
        let mut results = vec![json!({"id": 1, "status": 204})];
        results.extend((2..=1024).map(|id| {
            json!({"id": id, "status": 404, "error": format!("no listener on id {id}")})
        }));
        assert_multi_status(&response, Value::Array(results));
        assert_eq!(one.recv(), b"many");

        let response = post_path(&broker, &targets(1..=1025), b"too many");
        response.assert_sentence(400, "more than 1024 ids in the target list");
        broker.post(1, b"after").assert_status(204);
        assert_eq!(one.recv(), b"after", "a refused multi-target send delivered something");
    }

    /// Credentials must allow `send` to every id, else `401`/`403` and nothing is sent.
    fn multi_target_needs_send_on_every_id(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        let auth = bearer(LISTENER);
        let mut listeners: Vec<Listener> = (1..=3)
            .map(|id| broker.listen_with(&format!("/{id}"), &[("Authorization", &auth)]))
            .collect();
        assert_forbidden(&post_bearer(&broker, "/1,2,3", SEND_1_2, b"refused"));
        assert_forbidden(&post_bearer(&broker, "/3,1", SEND_1_2, b"refused"));
        assert_unauthorized(&post_with(&broker, "/1,2", &[], b"refused"));
        post_bearer(&broker, "/1,2", SEND_1_2, b"allowed").assert_status(204);
        post_bearer(&broker, "/3", SEND_ALL, b"allowed").assert_status(204);
        for (i, listener) in listeners.iter_mut().enumerate() {
            assert_eq!(
                listener.recv(),
                b"allowed",
                "listener {} got a message of a refused send",
                i + 1
            );
        }
    }

    // ---- §2 topic ids ----

    /// A `POST` to a topic reaches every listener: `204` with `Fedbroker-Recipients: N`; a second
    /// listener does not replace the first; one leaving lowers N; `topic_listeners` counts them.
    fn topic_fans_out_to_every_listener(a: Adapter) {
        let broker = Broker::start(a, &["--topics", "100-199"]);
        let mut listeners: Vec<Listener> = (0..3).map(|_| broker.listen(150)).collect();
        assert_eq!(broker.stat("topic_listeners"), 3);
        let body = random_bytes(7, 70_000);
        assert_recipients(&post_path(&broker, "/150", &body), 3);
        for listener in &mut listeners {
            assert!(listener.recv() == body, "a topic listener did not get the body exactly");
        }

        listeners.pop().expect("three").close();
        wait_stat(&broker, "topic_listeners", 2);
        assert_recipients(&post_path(&broker, "/150", b"two left"), 2);
        for listener in &mut listeners {
            assert_eq!(listener.recv(), b"two left");
        }
    }

    /// A topic nobody listens on → `404 no listener on topic N`; ids outside the range keep the
    /// one-listener rules (404 sentence, replacement with 4000).
    fn topic_without_listeners_404(a: Adapter) {
        let broker = Broker::start(a, &["--topics", "100-199"]);
        post_path(&broker, "/151", b"anyone?").assert_sentence(404, "no listener on topic 151");
        post_path(&broker, "/99", b"anyone?").assert_sentence(404, "no listener on id 99");
        let mut old = broker.listen(99);
        let mut new = broker.listen(99);
        assert_eq!(old.expect_close(), (4000, "replaced".to_string()));
        broker.post(99, b"one").assert_status(204);
        assert_eq!(new.recv(), b"one");
        assert_eq!(broker.stat("topic_listeners"), 0);
    }

    /// `--topics` takes an id, a `FROM-TO` range or `*`, and repeats; the config key is `topics`.
    fn topics_flag_forms_and_config_key(a: Adapter) {
        let broker = Broker::start(a, &["--topics", "5", "--topics", "1000-1999"]);
        for id in [5, 1000, 1999] {
            let mut first = broker.listen(id);
            let mut second = broker.listen(id);
            assert_recipients(&broker.post(id, b"x"), 2);
            assert_eq!(first.recv(), b"x");
            assert_eq!(second.recv(), b"x");
        }
        let mut old = broker.listen(6);
        let _new = broker.listen(6);
        assert_eq!(old.expect_close().0, 4000, "id 6 is not a topic");
        drop(broker);

        let broker = Broker::start(a, &["--topics", "*"]);
        let mut first = broker.listen(2147483647);
        let mut second = broker.listen(2147483647);
        assert_recipients(&broker.post(2147483647, b"all"), 2);
        assert_eq!(first.recv(), b"all");
        assert_eq!(second.recv(), b"all");
        drop(broker);

        let broker = Broker::builder(a).config("topics = [\"300-399\"]\n").start();
        let mut first = broker.listen(300);
        let mut second = broker.listen(300);
        assert_recipients(&broker.post(300, b"cfg"), 2);
        assert_eq!(first.recv(), b"cfg");
        assert_eq!(second.recv(), b"cfg");
    }

    /// A topic listener that never reads (`--queue-limit 2`) is closed with `1008 too slow: queue
    /// full` and stops being counted, while the other listener receives every message and senders
    /// never get a 503; `slow_listeners_closed` counts the close.
    fn slow_topic_listener_closed_1008(a: Adapter) {
        let broker = Broker::start(a, &["--topics", "100-199", "--queue-limit", "2"]);
        let mut slow = broker.listen(100);
        let mut fast = broker.listen(100);
        let mut conn = broker.connect();
        let mut closed_at = None;
        for seed in 0..200 {
            let body = random_bytes(seed, 256 * 1024);
            let response = conn.post("/100", &body);
            response.assert_status(204);
            let recipients = response.expect_header("fedbroker-recipients").to_string();
            assert!(fast.recv() == body, "the fast listener missed message {seed}");
            match recipients.as_str() {
                "2" => {}
                "1" => {
                    closed_at = Some(seed);
                    break;
                }
                other => panic!("Fedbroker-Recipients {other:?} with two listeners:\n{response:?}"),
            }
        }
        let closed_at = closed_at.expect("the listener that never reads was never dropped");
        eprintln!("slow topic listener dropped at message {closed_at}");
        let (code, reason, before) = slow.expect_close_after_messages();
        assert_eq!(
            (code, reason.as_str()),
            (1008, "too slow: queue full"),
            "after {before} messages"
        );
        assert_eq!(broker.stat("slow_listeners_closed"), 1);
        wait_stat(&broker, "topic_listeners", 1);
        for i in 0..10u32 {
            assert_recipients(&conn.post("/100", &i.to_be_bytes()), 1);
            assert_eq!(fast.recv(), i.to_be_bytes());
        }
    }

    /// Envelope listeners on a topic see the same `seq` for the same message, and `id` is the topic;
    /// one that joins later starts at the next seq.
    fn topic_envelope_listeners_share_seq(a: Adapter) {
        let broker = Broker::start(a, &["--topics", "100-199"]);
        let mut first = broker.listen_envelope(120);
        let mut second = broker.listen_envelope(120);
        for seq in 1..=3u64 {
            assert_recipients(&broker.post(120, &seq.to_be_bytes()), 2);
            for listener in [&mut first, &mut second] {
                assert_eq!(listener.recv_message(120, seq).payload, seq.to_be_bytes());
            }
        }
        let mut late = broker.listen_envelope(120);
        assert_recipients(&broker.post(120, b"four"), 3);
        for listener in [&mut first, &mut second, &mut late] {
            assert_eq!(listener.recv_message(120, 4).payload, b"four");
        }
        // Once nobody listens on the topic, its count starts again at 1.
        for listener in [first, second, late] {
            listener.close();
        }
        wait_stat(&broker, "topic_listeners", 0);
        let mut again = broker.listen_envelope(120);
        assert_recipients(&broker.post(120, b"new"), 1);
        assert_eq!(again.recv_message(120, 1).payload, b"new");
    }

    // ---- §3 the fedbroker.v1 envelope ----

    /// `Sec-WebSocket-Protocol: fedbroker.v1` (alone, in a list, or in a second header line) → `101`
    /// with exactly `Sec-WebSocket-Protocol: fedbroker.v1`; a message is then one binary frame
    /// `u16 | header | payload` with `type` `message`, `seq`, `id`, and no `from` for a POST.
    fn envelope_negotiated_in_101(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let offers: [&[(&str, &str)]; 3] = [
            &[("Sec-WebSocket-Protocol", "fedbroker.v1")],
            &[("Sec-WebSocket-Protocol", "mqtt, fedbroker.v1, fedbroker.v2")],
            &[("Sec-WebSocket-Protocol", "mqtt"), ("Sec-WebSocket-Protocol", "fedbroker.v1")],
        ];
        for (i, offer) in offers.into_iter().enumerate() {
            let id = 40 + i as u32;
            let mut headers = UPGRADE_HEADERS.to_vec();
            headers.extend_from_slice(offer);
            let mut conn = broker.connect();
            let response = conn.request("GET", &format!("/{id}"), &headers, b"");
            response.assert_status(101);
            assert_eq!(response.header("sec-websocket-accept"), Some(WS_ACCEPT), "{response:?}");
            let protocols: Vec<&str> = response.headers_named("sec-websocket-protocol").collect();
            assert_eq!(protocols, ["fedbroker.v1"], "offer {offer:?}:\n{response:?}");

            let mut ws = RawWs::from_upgraded(conn);
            broker.post(id, b"hello").assert_status(204);
            let frame = ws.next_frame();
            assert_eq!((frame.fin, frame.opcode), (true, opcode::BINARY), "{frame:?}");
            let envelope = Envelope::decode(&frame.payload).unwrap_or_else(|e| panic!("{e}: {frame:?}"));
            envelope.assert_kind("message");
            assert_eq!(envelope.header["seq"], json!(1), "{envelope:?}");
            assert_eq!(envelope.header["id"], json!(id), "{envelope:?}");
            assert!(
                envelope.header.get("from").is_none_or(Value::is_null),
                "a POST has no `from`: {envelope:?}"
            );
            assert_eq!(envelope.payload, b"hello");
        }
    }

    /// Without `Sec-WebSocket-Protocol` the listener is plain, as before: no subprotocol in the
    /// `101`, raw bodies, and a data frame from it closes it with `1003`.
    fn plain_listener_unchanged(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut envelope = broker.listen_envelope(43);
        let mut conn = broker.connect();
        let response = conn.request("GET", "/42", &UPGRADE_HEADERS, b"");
        response.assert_status(101);
        assert!(
            response.header("sec-websocket-protocol").is_none(),
            "no subprotocol for a plain listener:\n{response:?}"
        );
        let mut ws = RawWs::from_upgraded(conn);
        let body = Envelope::new(json!({"type": "message"}), b"looks like one".to_vec()).encode();
        broker.post(42, &body).assert_status(204);
        broker.post(42, b"").assert_status(204);
        assert_eq!(ws.next_frame().payload, body, "a plain listener gets the body as is");
        assert_eq!(ws.next_frame().payload, b"", "a plain listener gets the body as is");
        // The same body to an envelope listener on the same broker comes wrapped.
        broker.post(43, &body).assert_status(204);
        assert_eq!(envelope.recv_message(43, 1).payload, body);
        ws.send(&Frame::new(
            opcode::BINARY,
            Envelope::new(json!({"type": "send", "to": 1}), b"x".to_vec()).encode(),
        ));
        ws.expect_close(1003);
    }

    /// Only other subprotocols offered → `400` with the exact sentence and
    /// `Sec-WebSocket-Protocol: fedbroker.v1` in the answer.
    fn unknown_subprotocol_only_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        for offer in ["fedbroker.v2", "mqtt", "mqtt, fedbroker.v2"] {
            let response = upgrade_with(&broker, "/42", &[("Sec-WebSocket-Protocol", offer)]);
            response.assert_sentence(
                400,
                "bad WebSocket handshake: unsupported subprotocol; this broker speaks fedbroker.v1",
            );
            assert_eq!(
                response.header("sec-websocket-protocol"),
                Some("fedbroker.v1"),
                "offer {offer:?}:\n{response:?}"
            );
        }
        post_path(&broker, "/42", b"x").assert_sentence(404, "no listener on id 42");
    }

    /// `seq` counts an id's messages from 1 without gaps, payloads byte for byte; when the id has
    /// no listener any more the count starts again at 1.
    fn envelope_seq_from_one_without_gaps(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let sizes = [0, 1, 125, 126, 65535, 65536, 100_000, 3, 0, 17];
        let mut conn = broker.connect();
        for (i, size) in sizes.iter().enumerate() {
            conn.post("/42", &random_bytes(i as u64, *size)).assert_status(204);
        }
        for (i, size) in sizes.iter().enumerate() {
            let message = listener.recv_message(42, i as u64 + 1);
            assert!(
                message.payload == random_bytes(i as u64, *size),
                "message {} of {size} bytes not delivered exactly",
                i + 1
            );
        }
        listener.close();
        wait_stat(&broker, "listeners", 0);
        let mut again = broker.listen_envelope(42);
        broker.post(42, b"new").assert_status(204);
        assert_eq!(again.recv_message(42, 1).payload, b"new");
    }

    /// An envelope listener's `send`: `ack` 204 with its `ref`; the receiver's header has `from`;
    /// plain receivers get the payload as is; a topic ack has `recipients`; no listener → `error`
    /// 404; no `ref` → `ref` null; a bad `to` → `error` 400.
    fn envelope_send_to_other_ids(a: Adapter) {
        let broker = Broker::start(a, &["--topics", "100-199"]);
        let mut sender = broker.listen_envelope(7);
        let mut receiver = broker.listen_envelope(8);
        let mut plain = broker.listen(9);
        let mut topic: Vec<Listener> = (0..2).map(|_| broker.listen(100)).collect();

        sender.send_to(8, json!("r1"), b"to eight").assert_ack(&json!("r1"), 204);
        let message = receiver.recv_message(8, 1);
        assert_eq!(message.header["from"], json!(7), "{message:?}");
        assert_eq!(message.payload, b"to eight");

        sender.send_to(9, json!(2), b"to plain").assert_ack(&json!(2), 204);
        assert_eq!(plain.recv(), b"to plain");

        let ack = sender.send_to(100, json!({"k": [1, "two"]}), b"to topic");
        ack.assert_ack(&json!({"k": [1, "two"]}), 204);
        assert_eq!(ack.header["recipients"], json!(2), "{ack:?}");
        for listener in &mut topic {
            assert_eq!(listener.recv(), b"to topic");
        }

        let error = sender.send_to(10, json!("r4"), b"to nobody");
        error.assert_error(&json!("r4"), 404);

        sender.send(json!({"type": "send", "to": 8}), b"no ref");
        sender.recv().assert_ack(&Value::Null, 204);
        assert_eq!(receiver.recv_message(8, 2).payload, b"no ref");

        for to in [json!(0), json!(2147483648u64), json!(-1)] {
            let error = sender.call(json!({"type": "send", "to": to, "ref": "bad"}), b"x");
            error.assert_error(&json!("bad"), 400);
        }

        // A POST to the sender's id meanwhile is a message to it like any other.
        broker.post(7, b"to the sender").assert_status(204);
        assert_eq!(sender.recv_message(7, 1).payload, b"to the sender");
    }

    /// A `send` is authorized with the listener's own token (`send` action on `to`): `error` 403
    /// when it lacks it.
    fn envelope_send_uses_listener_credentials(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        let mut only_listen = broker.listen_envelope_with("/5", &[("Authorization", &bearer(LISTENER))]);
        let mut may_send = broker.listen_envelope_with("/6", &[("Authorization", &bearer(WATCHER))]);
        only_listen.send_to(6, json!("no"), b"refused").assert_error(&json!("no"), 403);
        may_send.send_to(5, json!("yes"), b"allowed").assert_ack(&json!("yes"), 204);
        let message = only_listen.recv_message(5, 1);
        assert_eq!((message.header["from"].clone(), message.payload), (json!(6), b"allowed".to_vec()));
        post_bearer(&broker, "/6", SEND_ALL, b"first").assert_status(204);
        assert_eq!(
            may_send.recv_message(6, 1).payload,
            b"first",
            "the refused send reached id 6"
        );
    }

    /// Messages from one listener are answered one at a time, in order.
    fn envelope_sends_answered_in_order(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut sender = broker.listen_envelope(1);
        let mut receiver = broker.listen_envelope(2);
        for i in 0..50u32 {
            sender.send(json!({"type": "send", "to": 2, "ref": i}), &i.to_be_bytes());
        }
        for i in 0..50u32 {
            sender.recv().assert_ack(&json!(i), 204);
        }
        for i in 0..50u32 {
            let message = receiver.recv_message(2, u64::from(i) + 1);
            assert_eq!((message.header["from"].clone(), message.payload), (json!(1), i.to_be_bytes().to_vec()));
        }
    }

    /// A header that is not JSON, lacks a key, has an unknown `type` or is over 16384 bytes, or a
    /// message too short for its header → `error` 400, and the connection stays open; unknown keys
    /// are ignored.
    fn envelope_malformed_header_400_stays_open(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut sender = broker.listen_envelope(7);
        let mut receiver = broker.listen(8);

        sender.send_raw(&Envelope::encode_raw(b"not json at all", b""));
        sender.recv().assert_error(&Value::Null, 400);
        for (header, reference) in [
            (json!({"type": "send", "ref": "m1"}), "m1"),
            (json!({"type": "bogus", "ref": "m2"}), "m2"),
            (json!({"ref": "m3", "to": 8}), "m3"),
            (json!({"type": "send", "to": "eight", "ref": "m4"}), "m4"),
        ] {
            let error = sender.call(header, b"payload");
            error.assert_error(&json!(reference), 400);
        }
        // A header of exactly 16384 bytes is fine, one byte more is not.
        let padded = |len: usize, reference: &str| {
            let mut header = json!({"type": "send", "to": 8, "ref": reference, "pad": ""});
            let pad = len - header.to_string().len();
            header["pad"] = json!("p".repeat(pad));
            assert_eq!(header.to_string().len(), len);
            header
        };
        sender.send(padded(MAX_HEADER + 1, "m5"), b"too big");
        let error = sender.recv();
        assert_eq!((error.kind(), error.header["status"].clone()), ("error", json!(400)), "{error:?}");
        sender.call(padded(MAX_HEADER, "m6"), b"largest header").assert_ack(&json!("m6"), 204);
        assert_eq!(receiver.recv(), b"largest header");
        for raw in [&b"\x00"[..], b"\x00\x00", b"\x00\x40{\"type\":\"send\"}", b"\x00\x02[]"] {
            sender.send_raw(raw);
            let error = sender.recv();
            assert_eq!(
                (error.kind(), error.header["status"].clone()),
                ("error", json!(400)),
                "{raw:?} → {error:?}"
            );
        }

        let header = json!({"type": "send", "to": 8, "ref": "ok", "future_key": {"x": 1}});
        sender.call(header, b"still here").assert_ack(&json!("ok"), 204);
        assert_eq!(receiver.recv(), b"still here", "nothing of the malformed messages was sent");
    }

    /// A text message from an envelope listener → close `1003` `envelope messages are binary`.
    fn envelope_text_message_closes_1003(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(7);
        listener.send_text(r#"{"type":"send","to":8}"#);
        assert_eq!(listener.expect_close(), (1003, "envelope messages are binary".to_string()));
    }

    // ---- §4 request-reply ----

    /// `POST /42?reply=MS` → a `request` (seq, id, timeout_ms, the body); the `reply` gets `ack`
    /// 200 and the POST gets its status, body and content type (default
    /// `application/octet-stream`); keep-alive works after it; `replies` counts them.
    fn reply_round_trip(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let mut conn = broker.connect();

        conn.start_post("/42?reply=5000", b"question");
        let request = listener.recv_kind("request");
        assert_eq!(
            (request.uint("seq"), request.uint("id"), request.uint("timeout_ms")),
            (1, 42, 5000),
            "{request:?}"
        );
        assert_eq!(request.payload, b"question");
        assert_eq!(broker.stat("pending_replies"), 1);
        let reply_body = random_bytes(3, 40_000);
        listener
            .reply(1, 201, Some("text/plain; charset=utf-8"), json!("r"), &reply_body)
            .assert_ack(&json!("r"), 200);
        let response = conn.read_response();
        response.assert_status(201).assert_content_type("text/plain; charset=utf-8");
        assert!(response.body == reply_body, "reply body not returned exactly:\n{response:?}");

        conn.start_post("/42?reply=5000", b"");
        let request = listener.recv_kind("request");
        assert_eq!((request.uint("seq"), request.payload.len()), (2, 0), "{request:?}");
        listener.reply(2, 418, None, json!(2), b"\x00\xff").assert_ack(&json!(2), 200);
        let response = conn.read_response();
        response.assert_status(418).assert_content_type("application/octet-stream");
        assert_eq!(response.body, b"\x00\xff");

        // A plain POST after the requests counts on: seq 3.
        conn.post("/42", b"plain").assert_status(204);
        assert_eq!(listener.recv_message(42, 3).payload, b"plain");
        assert_eq!((broker.stat("replies"), broker.stat("pending_replies")), (2, 0));
    }

    /// A reply with status 204 must be empty, its status must be 200–599 (else `error` 400); a
    /// second reply to the same seq, or one to a seq that never was, → `error` 404.
    fn reply_checks_status_and_seq(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let mut conn = broker.connect();
        conn.start_post("/42?reply=5000", b"q");
        let seq = listener.recv_kind("request").uint("seq");
        listener.reply(seq + 10, 200, None, json!("w"), b"x").assert_error(&json!("w"), 404);
        listener.reply(seq, 204, None, json!("a"), b"not empty").assert_error(&json!("a"), 400);
        listener.reply(seq, 600, None, json!("b"), b"").assert_error(&json!("b"), 400);
        listener.reply(seq, 199, None, json!("c"), b"").assert_error(&json!("c"), 400);
        for (header, reference) in [
            (json!({"type": "reply", "status": 200, "ref": "k1"}), "k1"),
            (json!({"type": "reply", "reply_to": seq, "ref": "k2"}), "k2"),
            (json!({"type": "reply", "reply_to": "one", "status": 200, "ref": "k3"}), "k3"),
            (json!({"type": "reply", "reply_to": seq, "status": "200", "ref": "k4"}), "k4"),
        ] {
            listener.call(header, b"").assert_error(&json!(reference), 400);
        }
        listener.reply(seq, 204, None, json!("d"), b"").assert_ack(&json!("d"), 200);
        let response = conn.read_response();
        response.assert_status(204);
        assert!(response.body.is_empty(), "{response:?}");
        listener.reply(seq, 200, None, json!("e"), b"late").assert_error(&json!("e"), 404);
        conn.expect_message_boundary(&response);

        conn.start_post("/42?reply=5000", b"q");
        let seq = listener.recv_kind("request").uint("seq");
        listener.reply(seq, 304, None, json!("f"), b"body").assert_error(&json!("f"), 400);
        listener.reply(seq, 304, None, json!("g"), b"").assert_ack(&json!("g"), 200);
        let response = conn.read_response();
        response.assert_status(304);
        conn.expect_message_boundary(&response);
    }

    /// No reply within MS → `504 no reply from id 42 within 300 ms`; a late reply gets `error`
    /// 404; `replies_timed_out` counts it.
    fn reply_timeout_504(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let mut conn = broker.connect();
        conn.start_post("/42?reply=300", b"q");
        let request = listener.recv_kind("request");
        assert_eq!(request.uint("timeout_ms"), 300, "{request:?}");
        let response = conn.read_response();
        response.assert_sentence(504, "no reply from id 42 within 300 ms");
        listener
            .reply(request.uint("seq"), 200, None, json!("late"), b"too late")
            .assert_error(&json!("late"), 404);
        assert_eq!(broker.stat("replies_timed_out"), 1);
        assert_eq!(broker.stat("pending_replies"), 0);
        conn.expect_message_boundary(&response);
    }

    /// `?reply=` beyond `--max-reply-timeout` is capped: the broker answers 504 after the cap, and
    /// tells the listener a `timeout_ms` no longer than it.
    fn reply_timeout_capped(a: Adapter) {
        let broker = Broker::start(a, &["--max-reply-timeout", "400"]);
        let mut listener = broker.listen_envelope(42);
        let mut conn = broker.connect();
        conn.start_post("/42?reply=600000", b"q");
        let request = listener.recv_kind("request");
        assert!(request.uint("timeout_ms") <= 400, "timeout_ms not capped: {request:?}");
        // The connection's read timeout (5 s) would fail the test if the cap were not applied.
        conn.read_response().assert_error(504);
    }

    /// The listener closes, or is replaced, before replying → `502`; `replies_failed` counts it.
    fn reply_listener_gone_502(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let mut conn = broker.connect();
        conn.start_post("/42?reply=5000", b"q");
        listener.recv_kind("request");
        listener.close();
        conn.read_response()
            .assert_sentence(502, "the listener on id 42 went away before replying");

        let mut old = broker.listen_envelope(42);
        conn.start_post("/42?reply=5000", b"q");
        old.recv_kind("request");
        let mut new = broker.listen_envelope(42);
        assert_eq!(old.expect_close(), (4000, "replaced".to_string()));
        conn.read_response()
            .assert_sentence(502, "the listener on id 42 went away before replying");
        assert_eq!(broker.stat("replies_failed"), 2);
        assert_eq!(broker.stat("pending_replies"), 0);
        // The new listener cannot answer its predecessor's request, which is over.
        new.reply(1, 200, None, json!("old"), b"x").assert_error(&json!("old"), 404);
        // The id never stopped having a listener: its count goes on.
        broker.post(42, b"to the new one").assert_status(204);
        assert_eq!(new.recv_message(42, 2).payload, b"to the new one");
    }

    /// A plain listener cannot reply → `409` and nothing is delivered; nobody listening → `404`.
    fn reply_needs_envelope_listener(a: Adapter) {
        let broker = Broker::start(a, &[]);
        post_path(&broker, "/42?reply=1000", b"q").assert_sentence(404, "no listener on id 42");
        let mut plain = broker.listen(42);
        post_path(&broker, "/42?reply=1000", b"q").assert_sentence(
            409,
            "the listener on id 42 cannot reply: it did not negotiate fedbroker.v1",
        );
        broker.post(42, b"next").assert_status(204);
        assert_eq!(plain.recv(), b"next", "the refused request was delivered");
    }

    /// `reply` not a whole number from 1, on a topic, or with several ids → `400`, nothing sent.
    fn reply_bad_requests_400(a: Adapter) {
        let broker = Broker::start(a, &["--topics", "100-199"]);
        let mut listener = broker.listen_envelope(42);
        let mut other = broker.listen_envelope(43);
        let mut topic = broker.listen_envelope(100);
        for value in ["0", "-1", "abc", "", "1.5", "5ms", "0x10"] {
            post_path(&broker, &format!("/42?reply={value}"), b"q").assert_error(400);
        }
        post_path(&broker, "/100?reply=1000", b"q").assert_error(400);
        post_path(&broker, "/42,43?reply=1000", b"q").assert_error(400);
        broker.post(42, b"after").assert_status(204);
        broker.post(43, b"after").assert_status(204);
        assert_recipients(&broker.post(100, b"after"), 1);
        for (id, listener) in [(42, &mut listener), (43, &mut other), (100, &mut topic)] {
            assert_eq!(
                listener.recv_message(id, 1).payload,
                b"after",
                "a refused request reached id {id}"
            );
        }
    }

    /// Beyond `--max-pending-replies` → `503` with the sentence and `Retry-After: 1`; plain POSTs
    /// are not limited; once the first is answered, requests pass again.
    fn pending_replies_limit_503(a: Adapter) {
        let broker = Broker::start(a, &["--max-pending-replies", "1"]);
        let mut listener = broker.listen_envelope(42);
        let mut first = broker.connect();
        first.start_post("/42?reply=5000", b"one");
        assert_eq!(listener.recv_kind("request").uint("seq"), 1);
        assert_eq!(broker.stat("pending_replies"), 1);

        let refused = post_path(&broker, "/42?reply=5000", b"two");
        refused.assert_sentence(503, "too many requests are waiting for replies; retry later");
        assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
        broker.post(42, b"plain").assert_status(204);
        assert_eq!(listener.recv_message(42, 2).payload, b"plain");

        listener.reply(1, 200, None, json!(1), b"answer one").assert_ack(&json!(1), 200);
        assert_eq!(first.read_response().assert_status(200).body, b"answer one");

        let mut second = broker.connect();
        second.start_post("/42?reply=5000", b"two again");
        let request = listener.recv_kind("request");
        assert_eq!((request.uint("seq"), request.payload.as_slice()), (3, &b"two again"[..]));
        listener.reply(3, 200, None, json!(3), b"answer two").assert_ack(&json!(3), 200);
        assert_eq!(second.read_response().assert_status(200).body, b"answer two");
        assert_eq!((broker.stat("replies"), broker.stat("pending_replies")), (2, 0));
    }

    // ---- §5 presence ----

    /// `watch` → `ack` 200, then the current state of each id, then `online` when the first
    /// listener arrives and `offline` when the last leaves; a replacement is not an event.
    fn watch_reports_state_then_changes(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut watcher = broker.listen_envelope(1);
        let mut seven = broker.listen(7);
        watcher.watch(&[7, 8], json!("w")).assert_ack(&json!("w"), 200);
        assert_eq!(presence_events(&mut watcher, 2), events(&[("online", 7), ("offline", 8)]));
        assert_eq!(broker.stat("presence_watches"), 2);

        let eight = broker.listen(8);
        watcher.expect_presence("online", 8);

        let seven_again = broker.listen(7);
        assert_eq!(seven.expect_close(), (4000, "replaced".to_string()));
        assert_no_event_before_marker(&broker, &mut watcher, 1, 1);

        eight.close();
        watcher.expect_presence("offline", 8);
        seven_again.close();
        watcher.expect_presence("offline", 7);
    }

    /// On a topic, only the first listener arriving and the last leaving are events.
    fn presence_on_topic_first_and_last(a: Adapter) {
        let broker = Broker::start(a, &["--topics", "100-199"]);
        let mut watcher = broker.listen_envelope(1);
        watcher.watch(&[100], json!(1)).assert_ack(&json!(1), 200);
        watcher.expect_presence("offline", 100);
        let first = broker.listen(100);
        watcher.expect_presence("online", 100);
        let second = broker.listen(100);
        assert_no_event_before_marker(&broker, &mut watcher, 1, 1);
        first.close();
        wait_stat(&broker, "topic_listeners", 1);
        assert_no_event_before_marker(&broker, &mut watcher, 1, 2);
        second.close();
        watcher.expect_presence("offline", 100);
    }

    /// Watching needs the `presence` action of the tokens file: `error` 403 for an id it lacks (the
    /// whole watch refused), `ack` for the ids it has.
    fn watch_needs_presence_action(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        let mut without = broker.listen_envelope_with("/1", &[("Authorization", &bearer(NO_PRESENCE))]);
        without.watch(&[7], json!("n")).assert_error(&json!("n"), 403);

        let mut watcher = broker.listen_envelope_with("/2", &[("Authorization", &bearer(WATCHER))]);
        watcher.watch(&[8], json!("a")).assert_error(&json!("a"), 403);
        watcher.watch(&[7, 8], json!("b")).assert_error(&json!("b"), 403);
        post_bearer(&broker, "/2", SEND_ALL, b"marker").assert_status(204);
        let next = watcher.recv();
        assert_eq!(
            (next.kind(), next.header["seq"].clone()),
            ("message", json!(1)),
            "a refused watch produced events: {next:?}"
        );
        watcher.watch(&[7, 150], json!("c")).assert_ack(&json!("c"), 200);
        assert_eq!(presence_events(&mut watcher, 2), events(&[("offline", 7), ("offline", 150)]));
        let _seven = broker.listen_with("/7", &[("Authorization", &bearer(LISTENER))]);
        watcher.expect_presence("online", 7);
        assert_eq!(broker.stat("presence_watches"), 2);
    }

    /// `unwatch` → `ack` 200 and no more events for those ids; the others still report.
    fn unwatch_stops_events(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut watcher = broker.listen_envelope(1);
        watcher.watch(&[7, 8], json!(1)).assert_ack(&json!(1), 200);
        assert_eq!(presence_events(&mut watcher, 2), events(&[("offline", 7), ("offline", 8)]));
        watcher.unwatch(&[7], json!("u")).assert_ack(&json!("u"), 200);
        assert_eq!(broker.stat("presence_watches"), 1);
        let _seven = broker.listen(7);
        let _eight = broker.listen(8);
        watcher.expect_presence("online", 8);
        watcher.close();
        wait_stat(&broker, "presence_watches", 0);
    }

    /// More than `--max-watch` ids per connection, or a bad `ids` → `error` 400, connection kept.
    fn watch_limit_and_bad_ids_400(a: Adapter) {
        let broker = Broker::start(a, &["--max-watch", "2"]);
        let mut watcher = broker.listen_envelope(1);
        watcher.watch(&[5, 6, 7], json!(1)).assert_error(&json!(1), 400);
        for (ids, reference) in [(json!("7"), 2), (json!([0]), 3), (json!(["x"]), 4)] {
            watcher
                .call(json!({"type": "watch", "ids": ids, "ref": reference}), b"")
                .assert_error(&json!(reference), 400);
        }
        watcher.watch(&[5, 6], json!(5)).assert_ack(&json!(5), 200);
        assert_eq!(presence_events(&mut watcher, 2), events(&[("offline", 5), ("offline", 6)]));
        watcher.watch(&[7], json!(6)).assert_error(&json!(6), 400);
        assert_eq!(broker.stat("presence_watches"), 2);
    }

    // ---- more §3–§5 cases ----

    /// An envelope `send` to a full queue gets `error` 503, as a POST would.
    fn envelope_send_to_full_queue_503(a: Adapter) {
        let broker = Broker::start(a, &["--queue-limit", "1"]);
        let _slow = broker.listen(2);
        let mut sender = broker.listen_envelope(1);
        for seed in 0..200 {
            let answer = sender.send_to(2, json!(seed), &random_bytes(seed, 256 * 1024));
            if answer.kind() == "ack" {
                answer.assert_ack(&json!(seed), 204);
                continue;
            }
            answer.assert_error(&json!(seed), 503);
            return;
        }
        panic!("no error 503 after 50 MiB of sends to a listener that does not read");
    }

    /// A `POST ?reply=` to an envelope listener whose queue is full → `503` like any POST.
    fn reply_to_full_queue_503(a: Adapter) {
        let broker = Broker::start(a, &["--queue-limit", "1"]);
        let _slow = broker.listen_envelope(42);
        // The queue may drain into the socket between the 503 and the request: then the request
        // is queued and times out (504), and the next round fills the queue again.
        for _ in 0..10 {
            let refused = post_until_refused(&broker, "/42");
            refused.assert_sentence(503, "the listener on id 42 is not keeping up; retry later");
            let response = post_path(&broker, "/42?reply=200", b"q");
            if response.status == 504 {
                continue;
            }
            response.assert_sentence(503, "the listener on id 42 is not keeping up; retry later");
            assert_eq!(broker.stat("pending_replies"), 0);
            return;
        }
        panic!("no 503 for a request to a full queue in 10 rounds");
    }

    /// Several requests wait at once and are answered out of order, each POST getting its own
    /// reply; a reply from another id's listener does not answer them (`error` 404).
    fn replies_matched_by_seq_and_listener(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let mut stranger = broker.listen_envelope(43);
        let mut conns: Vec<Conn> = (0..3).map(|_| broker.connect()).collect();
        for (i, conn) in conns.iter_mut().enumerate() {
            conn.start_post("/42?reply=5000", format!("q{i}").as_bytes());
            let request = listener.recv_kind("request");
            assert_eq!((request.uint("seq"), request.payload.clone()), (i as u64 + 1, format!("q{i}").into_bytes()));
        }
        assert_eq!(broker.stat("pending_replies"), 3);
        stranger.reply(1, 200, None, json!("s"), b"wrong").assert_error(&json!("s"), 404);
        for seq in [3u64, 1, 2] {
            let body = format!("a{seq}");
            listener.reply(seq, 200, None, json!(seq), body.as_bytes()).assert_ack(&json!(seq), 200);
            let response = conns[seq as usize - 1].read_response();
            assert_eq!((response.status, response.text()), (200, body), "{response:?}");
        }
        assert_eq!((broker.stat("replies"), broker.stat("pending_replies")), (3, 0));
    }

    /// A reply `content_type` with a line break never becomes a header of its own in the POST's
    /// response (refused with `error` 400, or sent some safe way).
    fn reply_content_type_cannot_inject_headers(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let mut conn = broker.connect();
        conn.start_post("/42?reply=5000", b"q");
        let seq = listener.recv_kind("request").uint("seq");
        let answer = listener.reply(seq, 200, Some("text/plain\r\nSet-Cookie: x=1"), json!("i"), b"body");
        if answer.kind() == "error" {
            answer.assert_error(&json!("i"), 400);
            listener.reply(seq, 200, None, json!("j"), b"body").assert_ack(&json!("j"), 200);
        } else {
            answer.assert_ack(&json!("i"), 200);
        }
        let response = conn.read_response();
        response.assert_status(200);
        assert!(response.header("set-cookie").is_none(), "header injected:\n{response:?}");
        assert_eq!(response.body, b"body");
        conn.expect_message_boundary(&response);
    }

    /// Every watcher of an id gets its events; a watcher may watch its own id.
    fn several_watchers_each_get_events(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut first = broker.listen_envelope(1);
        let mut second = broker.listen_envelope(2);
        first.watch(&[1, 9], json!(1)).assert_ack(&json!(1), 200);
        assert_eq!(presence_events(&mut first, 2), events(&[("online", 1), ("offline", 9)]));
        second.watch(&[9], json!(2)).assert_ack(&json!(2), 200);
        second.expect_presence("offline", 9);
        assert_eq!(broker.stat("presence_watches"), 3);
        let nine = broker.listen_envelope(9);
        first.expect_presence("online", 9);
        second.expect_presence("online", 9);
        nine.close();
        first.expect_presence("offline", 9);
        second.expect_presence("offline", 9);
    }

    /// A watcher whose queue is full when an event comes is closed with `1008`, rather than miss it.
    fn slow_watcher_closed_1008(a: Adapter) {
        let broker = Broker::start(a, &["--queue-limit", "1"]);
        let mut watcher = broker.listen_envelope(1);
        watcher.watch(&[7], json!(1)).assert_ack(&json!(1), 200);
        watcher.expect_presence("offline", 7);
        // Fill the watcher's queue, then make an event (7 comes or goes). The queue may drain into
        // the socket first, and the event is then queued legitimately: repeat. Once the watcher is
        // closed, a POST to its id is 404.
        let mut seven: Option<Listener> = None;
        let mut closed = false;
        for _ in 0..20 {
            let answer = post_until_refused(&broker, "/1");
            if answer.status == 404 {
                closed = true;
                break;
            }
            answer.assert_error(503);
            match seven.take() {
                Some(listener) => listener.close(),
                None => seven = Some(broker.listen(7)),
            }
        }
        assert!(closed, "a watcher with a full queue was never closed by 20 events");
        let (code, _reason, before) = watcher.inner().expect_close_after_messages();
        assert_eq!(code, 1008, "after {before} messages");
        wait_stat(&broker, "presence_watches", 0);
    }

    /// JWT mode: the `presence` claim authorizes watching.
    fn watch_with_jwt_presence_claim(a: Adapter) {
        use jsonwebtoken::{EncodingKey, Header};
        const SECRET: &[u8] = b"fedbroker-test-secret-0123456789abcdef";
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            + 3600;
        let sign = |claims: Value| {
            jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).expect("sign")
        };
        let with_presence = sign(json!({"exp": exp, "listen": ["*"], "presence": [7, "100-200"]}));
        let without = sign(json!({"exp": exp, "listen": ["*"]}));
        let broker = Broker::builder(a).file_arg("--auth-jwt-secret", "jwt.secret", SECRET).start();

        let mut watcher = broker.listen_envelope_with("/1", &[("Authorization", &bearer(&with_presence))]);
        watcher.watch(&[150], json!("ok")).assert_ack(&json!("ok"), 200);
        watcher.expect_presence("offline", 150);
        watcher.watch(&[8], json!("no")).assert_error(&json!("no"), 403);
        let mut refused = broker.listen_envelope_with(&format!("/2?token={without}"), &[]);
        refused.watch(&[7], json!("no")).assert_error(&json!("no"), 403);
    }

    // ---- §6 flags, config keys ----

    /// The new settings read from the config file (`topics`, `max_pending_replies`,
    /// `max_reply_timeout`, `max_watch`).
    fn pattern_config_keys(a: Adapter) {
        let broker = Broker::builder(a)
            .config("topics = [\"100-199\"]\nmax_pending_replies = 1\nmax_reply_timeout = 300\nmax_watch = 1\n")
            .start();
        let mut first = broker.listen(100);
        let _second = broker.listen(100);
        assert_recipients(&broker.post(100, b"cfg"), 2);
        assert_eq!(first.recv(), b"cfg");

        let mut listener = broker.listen_envelope(42);
        listener.watch(&[1, 2], json!(1)).assert_error(&json!(1), 400);
        let mut conn = broker.connect();
        conn.start_post("/42?reply=60000", b"q");
        listener.recv_kind("request");
        post_path(&broker, "/42?reply=5000", b"q2")
            .assert_sentence(503, "too many requests are waiting for replies; retry later");
        conn.read_response().assert_error(504);
    }

    /// Bad values of the new flags → exit 2 naming the flag; `--help` documents them.
    fn pattern_flags_validated_and_documented(a: Adapter) {
        for (args, names) in [
            (&["--topics", "abc"][..], &["topics"][..]),
            (&["--topics", "0"], &["topics"]),
            (&["--topics", "20-10"], &["topics"]),
            (&["--max-pending-replies", "many"], &["max-pending-replies", "max_pending_replies"]),
            (&["--max-reply-timeout", "soon"], &["max-reply-timeout", "max_reply_timeout"]),
            (&["--max-watch", "x"], &["max-watch", "max_watch"]),
        ] {
            let mut all = vec!["--listen", "127.0.0.1:0"];
            all.extend_from_slice(args);
            let out = run_cli(a, &all);
            assert_usage_error(&out, names);
        }
        let help = run_cli(a, &["--help"]);
        assert_eq!(help.code(), 0, "{help:?}");
        for flag in ["--topics", "--max-pending-replies", "--max-reply-timeout", "--max-watch"] {
            assert!(help.stdout.contains(flag), "--help should document {flag}: {help:?}");
        }
    }

    // ---- more edge cases ----

    /// Multi-target sends work under `--base-path`; an empty first element is refused too.
    fn multi_target_under_base_path(a: Adapter) {
        let broker = Broker::start(a, &["--base-path", "/mq"]);
        let mut one = broker.listen_with("/mq/1", &[]);
        let mut two = broker.listen_with("/mq/2", &[]);
        post_path(&broker, "/mq/1,2", b"based").assert_status(204);
        assert_eq!(one.recv(), b"based");
        assert_eq!(two.recv(), b"based");
        post_path(&broker, "/mq/,1", b"x").assert_sentence(400, r#"invalid id "" in the target list"#);
        assert_multi_status(
            &post_path(&broker, "/mq/2,3", b"half"),
            json!([{"id": 2, "status": 204}, {"id": 3, "status": 404, "error": "no listener on id 3"}]),
        );
        assert_eq!(two.recv(), b"half");
    }

    /// While a request waits for its reply, requests pipelined behind it on the same connection
    /// wait too and are answered in order; other connections are served meanwhile.
    fn reply_then_pipelined_requests_in_order(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let mut plain = broker.listen(43);
        let mut conn = broker.connect();
        let mut batch = conn.build("POST", "/42?reply=5000", &[], b"question");
        batch.extend(conn.build("POST", "/43", &[], b"second"));
        batch.extend(conn.build("GET", "/healthz", &[], b""));
        conn.send(&batch);
        let seq = listener.recv_kind("request").uint("seq");
        broker.post(43, b"other connection").assert_status(204);
        assert_eq!(plain.recv(), b"other connection");
        listener.reply(seq, 202, Some("application/json"), json!(1), b"{}").assert_ack(&json!(1), 200);
        let first = conn.read_response();
        first.assert_status(202).assert_content_type("application/json");
        assert_eq!(first.body, b"{}");
        conn.read_response().assert_status(204);
        assert_eq!(conn.read_response().body, b"ok");
        assert_eq!(plain.recv(), b"second");
    }

    /// A request whose sender hangs up while waiting stops waiting: `pending_replies` ("now")
    /// drops back, so the abandoned request does not hold a `--max-pending-replies` slot until its
    /// deadline (SPEC §9: no client may disturb the others), and a reply to it gets `error` 404
    /// (nobody awaits it).
    fn reply_sender_gone_frees_pending(a: Adapter) {
        let broker = Broker::start(a, &["--max-pending-replies", "1"]);
        let mut listener = broker.listen_envelope(42);
        let mut conn = broker.connect();
        conn.start_post("/42?reply=30000", b"q");
        let seq = listener.recv_kind("request").uint("seq");
        assert_eq!(broker.stat("pending_replies"), 1);
        drop(conn);
        wait_stat(&broker, "pending_replies", 0);
        listener.reply(seq, 200, None, json!("x"), b"nobody").assert_error(&json!("x"), 404);

        let mut conn = broker.connect();
        conn.start_post("/42?reply=5000", b"next");
        let seq = listener.recv_kind("request").uint("seq");
        listener.reply(seq, 200, None, json!("y"), b"answer").assert_ack(&json!("y"), 200);
        assert_eq!(conn.read_response().assert_status(200).body, b"answer");
    }

    /// SIGTERM while a request waits: the listener is closed with `1001`, so the request's answer
    /// is `502` (its listener went away), and the broker exits 0.
    fn shutdown_while_request_waits_502(a: Adapter) {
        let mut broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let mut conn = broker.connect();
        conn.start_post("/42?reply=20000", b"q");
        listener.recv_kind("request");
        broker.signal(libc::SIGTERM);
        conn.read_response()
            .assert_sentence(502, "the listener on id 42 went away before replying");
        assert_eq!(listener.expect_close().0, 1001);
        let status = broker.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "{status:?}");
    }

    /// A request is a send: with a tokens file it needs `send` on the id (401/403 otherwise) and
    /// nothing reaches the listener.
    fn reply_needs_send_authorization(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        let mut listener = broker.listen_envelope_with("/5", &[("Authorization", &bearer(LISTENER))]);
        assert_unauthorized(&post_with(&broker, "/5?reply=1000", &[], b"q"));
        assert_forbidden(&post_bearer(&broker, "/5?reply=1000", SEND_1_2, b"q"));
        let mut conn = broker.connect();
        let request = conn.build("POST", "/5?reply=5000", &[("Authorization", &bearer(SEND_ALL))], b"ok");
        conn.send(&request);
        let request = listener.recv_kind("request");
        assert_eq!((request.uint("seq"), request.payload.as_slice()), (1, &b"ok"[..]));
        listener.reply(1, 200, None, json!(1), b"fine").assert_ack(&json!(1), 200);
        assert_eq!(conn.read_response().assert_status(200).body, b"fine");
    }

    /// A listener sending to its own id gets the `ack` and the `message` (`from` its own id).
    fn envelope_send_to_self(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(7);
        listener.send(json!({"type": "send", "to": 7, "ref": true}), b"me");
        let mut got: Vec<Envelope> = vec![listener.recv(), listener.recv()];
        got.sort_by_key(|e| e.kind().to_string());
        got[0].assert_ack(&json!(true), 204);
        got[1].assert_kind("message");
        assert_eq!(
            (got[1].header["seq"].clone(), got[1].header["from"].clone(), got[1].payload.clone()),
            (json!(1), json!(7), b"me".to_vec()),
            "{:?}",
            got[1]
        );
    }

    /// `unwatch` of ids never watched is acknowledged too; a listener that drops its TCP connection
    /// (no close handshake) goes `offline`.
    fn unwatch_unknown_and_offline_on_drop(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut watcher = broker.listen_envelope(1);
        watcher.unwatch(&[99], json!("u")).assert_ack(&json!("u"), 200);
        watcher.watch(&[7], json!("w")).assert_ack(&json!("w"), 200);
        watcher.expect_presence("offline", 7);
        let seven = broker.listen(7);
        watcher.expect_presence("online", 7);
        drop(seven);
        watcher.expect_presence("offline", 7);
        assert_eq!(broker.stat("presence_watches"), 1);
    }

    // ---- concurrency ----

    /// Concurrent senders to a topic of envelope listeners: every listener sees seq 1..=N without
    /// a gap, the same message at the same seq, and each sender's messages in its order.
    fn topic_concurrent_senders_same_order_everywhere(a: Adapter) {
        const SENDERS: u8 = 4;
        const EACH: u32 = 100;
        let broker = Broker::start(a, &["--topics", "100-199"]);
        let mut listeners: Vec<EnvelopeListener> = (0..3).map(|_| broker.listen_envelope(100)).collect();
        std::thread::scope(|scope| {
            for sender in 0..SENDERS {
                let addr = broker.addr();
                scope.spawn(move || {
                    let mut conn = Conn::connect(addr);
                    for i in 0..EACH {
                        let mut body = vec![sender];
                        body.extend_from_slice(&i.to_be_bytes());
                        assert_recipients(&conn.post("/100", &body), 3);
                    }
                });
            }
        });
        let total = u64::from(SENDERS) * u64::from(EACH);
        let orders: Vec<Vec<Vec<u8>>> = listeners
            .iter_mut()
            .map(|listener| (1..=total).map(|seq| listener.recv_message(100, seq).payload).collect())
            .collect();
        assert!(orders[1] == orders[0] && orders[2] == orders[0], "topic listeners saw different orders");
        let mut next = [0u32; SENDERS as usize];
        for body in &orders[0] {
            let sender = usize::from(body[0]);
            let i = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes"));
            assert_eq!(i, next[sender], "sender {sender} out of order");
            next[sender] += 1;
        }
    }

    /// Many requests from many connections wait at once; answered in reverse order, each POST
    /// gets its own reply.
    fn many_concurrent_requests_each_get_their_reply(a: Adapter) {
        const REQUESTS: usize = 50;
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let mut conns: Vec<Conn> = (0..REQUESTS).map(|_| broker.connect()).collect();
        for (i, conn) in conns.iter_mut().enumerate() {
            conn.start_post("/42?reply=10000", format!("question {i}").as_bytes());
        }
        // The requests may be accepted in any order: map each seq to its question.
        let mut by_seq = std::collections::BTreeMap::new();
        for _ in 0..REQUESTS {
            let request = listener.recv_kind("request");
            by_seq.insert(request.uint("seq"), String::from_utf8(request.payload.clone()).expect("utf-8"));
        }
        assert_eq!(by_seq.keys().copied().collect::<Vec<_>>(), (1..=REQUESTS as u64).collect::<Vec<_>>());
        assert_eq!(broker.stat("pending_replies"), REQUESTS as u64);
        for (seq, question) in by_seq.iter().rev() {
            let answer = question.replace("question", "answer");
            listener.reply(*seq, 200, None, json!(seq), answer.as_bytes()).assert_ack(&json!(seq), 200);
        }
        for (i, conn) in conns.iter_mut().enumerate() {
            let response = conn.read_response();
            assert_eq!((response.status, response.text()), (200, format!("answer {i}")), "{response:?}");
        }
        assert_eq!((broker.stat("replies"), broker.stat("pending_replies")), (REQUESTS as u64, 0));
    }

    /// A listener coming and going 20 times: the watcher's events alternate online/offline,
    /// starting with online and ending with offline, never twice the same in a row.
    fn presence_events_alternate_under_churn(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut watcher = broker.listen_envelope(1);
        watcher.watch(&[7], json!(1)).assert_ack(&json!(1), 200);
        watcher.expect_presence("offline", 7);
        for _ in 0..20 {
            broker.listen(7).close();
        }
        wait_stat(&broker, "listeners", 1);
        broker.post(1, b"marker").assert_status(204);
        let mut kinds = Vec::new();
        loop {
            let next = watcher.recv();
            if next.kind() == "message" {
                assert_eq!(next.payload, b"marker");
                break;
            }
            assert_eq!(next.header["id"], json!(7), "{next:?}");
            kinds.push(next.kind().to_string());
            assert!(kinds.len() <= 40, "more than 40 events for 20 listeners: {kinds:?}");
        }
        assert!(!kinds.is_empty(), "no presence event for 20 listeners");
        assert_eq!(kinds.first().map(String::as_str), Some("online"), "{kinds:?}");
        assert_eq!(kinds.last().map(String::as_str), Some("offline"), "{kinds:?}");
        assert!(kinds.windows(2).all(|w| w[0] != w[1]), "events do not alternate: {kinds:?}");
    }

    /// Defaults: a reply wait is capped at 30000 ms (`timeout_ms` of the request), and 1024 ids may
    /// be watched per connection (1025 → `error` 400).
    fn default_reply_cap_and_watch_limit(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(1);
        let mut conn = broker.connect();
        conn.start_post("/1?reply=3600000", b"q");
        let request = listener.recv_kind("request");
        assert!(
            (1..=30000).contains(&request.uint("timeout_ms")),
            "timeout_ms not capped at the default 30000: {request:?}"
        );
        listener.reply(request.uint("seq"), 200, None, json!(0), b"").assert_ack(&json!(0), 200);
        conn.read_response().assert_status(200);

        let ids: Vec<u32> = (1000..2025).collect();
        listener.watch(&ids, json!(1)).assert_error(&json!(1), 400);
        listener.watch(&ids[..1024], json!(2)).assert_ack(&json!(2), 200);
        let got = presence_events(&mut listener, 1024);
        let want: BTreeSet<(String, u64)> = ids[..1024]
            .iter()
            .map(|id| ("offline".to_string(), u64::from(*id)))
            .collect();
        assert!(got == want, "1024 offline events expected");
        assert_eq!(broker.stat("presence_watches"), 1024);
        listener.watch(&[5000], json!(3)).assert_error(&json!(3), 400);
    }

    /// A multi-target path is a POST-only route (SPEC §3: a method the route does not take → `405`
    /// with `Allow`, as the broker's own `OPTIONS` answer for it says): `GET` and `HEAD`, with or
    /// without a WebSocket upgrade, are `405` too — not `400 invalid id`, the ids are valid.
    fn multi_target_path_is_post_only(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let options = broker.connect().request("OPTIONS", "/1,2", &[], b"");
        options.assert_status(204);
        let allow = options.expect_header("allow").to_string();
        assert!(
            allow.split(',').any(|m| m.trim() == "POST") && !allow.split(',').any(|m| m.trim() == "GET"),
            "OPTIONS on a target list: {options:?}"
        );
        for (method, headers) in [
            ("PUT", &[][..]),
            ("GET", &[][..]),
            ("HEAD", &[][..]),
            ("GET", &UPGRADE_HEADERS[..]),
        ] {
            let mut conn = broker.connect();
            let response = conn.request(method, "/1,2", headers, b"");
            assert_eq!(response.status, 405, "{method} /1,2 (upgrade: {}):\n{response:?}", !headers.is_empty());
            assert_eq!(response.header("allow"), Some(allow.as_str()), "{method}:\n{response:?}");
        }
    }

    /// A slow envelope listener on a topic is closed like a plain one; the other envelope
    /// listener's seq has no gap, and the seq goes on for it.
    fn slow_topic_envelope_listener_closed_others_seq_without_gap(a: Adapter) {
        let broker = Broker::start(a, &["--topics", "100-199", "--queue-limit", "2"]);
        let _slow = broker.listen_envelope(100);
        let mut fast = broker.listen_envelope(100);
        let mut conn = broker.connect();
        for seq in 1..=200u64 {
            let body = random_bytes(seq, 256 * 1024);
            let response = conn.post("/100", &body);
            response.assert_status(204);
            assert!(fast.recv_message(100, seq).payload == body, "message {seq} not delivered exactly");
            if response.header("fedbroker-recipients") == Some("1") {
                assert_eq!(broker.stat("slow_listeners_closed"), 1);
                assert_recipients(&conn.post("/100", b"next"), 1);
                assert_eq!(fast.recv_message(100, seq + 1).payload, b"next");
                return;
            }
            assert_recipients(&response, 2);
        }
        panic!("the envelope listener that never reads was never dropped");
    }

    /// Large request and reply bodies (1 MiB, the default message limit) pass byte for byte; an
    /// HTTP/1.0 request and a `Connection: close` request get their reply, then the connection
    /// closes.
    fn reply_large_bodies_and_connection_close(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen_envelope(42);
        let question = random_bytes(10, 1 << 20);
        let answer = random_bytes(11, (1 << 20) - 64);
        let mut conn = broker.connect();
        conn.start_post("/42?reply=5000", &question);
        let request = listener.recv_kind("request");
        assert!(request.payload == question, "request body not delivered exactly");
        listener.reply(request.uint("seq"), 200, None, json!(1), &answer).assert_ack(&json!(1), 200);
        let response = conn.read_response();
        response.assert_status(200);
        assert!(response.body == answer, "reply body not returned exactly");

        for raw in [
            "POST /42?reply=5000 HTTP/1.0\r\nContent-Length: 2\r\n\r\nq1".to_string(),
            format!(
                "POST /42?reply=5000 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 2\r\n\r\nq2",
                broker.host()
            ),
        ] {
            let mut conn = broker.connect();
            conn.send(raw.as_bytes());
            let request = listener.recv_kind("request");
            listener.reply(request.uint("seq"), 200, None, json!(2), b"bye").assert_ack(&json!(2), 200);
            let response = conn.read_response();
            assert_eq!((response.status, response.body.as_slice()), (200, &b"bye"[..]), "{response:?}");
            conn.expect_closed();
        }
    }

    // ---- §6 statistics ----

    /// The new keys are in `GET /` (counts, zero at start) and in `/metrics`.
    fn pattern_statistics_keys(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let stats = broker.stats();
        for key in PATTERN_STATS {
            assert_eq!(stats[key].as_u64(), Some(0), "statistics key {key:?} missing or not 0: {stats}");
        }
        let metrics = broker.get("/metrics");
        metrics.assert_status(200);
        let text = metrics.text();
        for key in PATTERN_STATS {
            let names = [format!("fedbroker_{key}"), format!("fedbroker_{key}_total")];
            assert!(
                text.lines().filter(|line| !line.starts_with('#')).any(|line| {
                    let name = line.split([' ', '{']).next().unwrap_or_default();
                    names.iter().any(|n| n == name)
                }),
                "/metrics has no sample for {key:?}:\n{text}"
            );
        }
    }
}
