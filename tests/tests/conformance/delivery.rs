//! §4 delivery semantics: byte-exact binary messages, ordering, one listener per id, bounded queues.

use std::time::Duration;

use fedbroker_tests::*;

adapter_tests! {
    /// Every body arrives as one binary message, byte for byte (empty body → empty message), whatever
    /// its Content-Type; the sizes straddle the WebSocket length encodings.
    fn bodies_delivered_byte_exact(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(1);
        let mut conn = broker.connect();
        for (seed, size) in [0, 1, 2, 125, 126, 127, 65535, 65536, 65537, 300_000]
            .into_iter()
            .enumerate()
        {
            let body = random_bytes(seed as u64, size);
            conn.post("/1", &body).assert_status(204);
            assert!(
                listener.recv() == body,
                "body of {size} bytes not delivered exactly"
            );
        }
        // Not UTF-8, labelled as text: still delivered as a binary message, unchanged.
        let body = b"\xff\xfe not utf-8 \x00".to_vec();
        conn.request(
            "POST",
            "/1",
            &[("Content-Type", "text/plain; charset=utf-8")],
            &body,
        )
        .assert_status(204);
        assert_eq!(listener.recv(), body);
    }

    /// The default `--max-message-size` is 1 MiB: exactly 1 MiB is delivered, one byte more is 413.
    fn one_mebibyte_limit_by_default(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(2);
        let body = random_bytes(12, 1 << 20);
        broker.post(2, &body).assert_status(204);
        assert!(listener.recv() == body, "1 MiB body not delivered exactly");
        let mut conn = broker.connect();
        conn.send(&conn.build("POST", "/2", &[("Content-Length", "1048577")], b""));
        conn.read_response().assert_error(413);
    }

    /// 1000 POSTs on one keep-alive connection arrive in order.
    fn keep_alive_order_preserved(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(3);
        let mut conn = broker.connect();
        for i in 0..1000u32 {
            conn.post("/3", &i.to_be_bytes()).assert_status(204);
        }
        for i in 0..1000u32 {
            assert_eq!(listener.recv(), i.to_be_bytes(), "message {i} out of order");
        }
    }

    /// 100 POSTs pipelined in one write: 100 × 204 in order, messages in order.
    fn pipelined_posts_in_order(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(4);
        let mut conn = broker.connect();
        let batch: Vec<u8> = (0..100u32)
            .flat_map(|i| conn.build("POST", "/4", &[], &i.to_be_bytes()))
            .collect();
        conn.send(&batch);
        for _ in 0..100 {
            conn.read_response().assert_status(204);
        }
        for i in 0..100u32 {
            assert_eq!(listener.recv(), i.to_be_bytes(), "message {i} out of order");
        }
    }

    /// Concurrent senders: each sender's messages arrive in its own order, none lost.
    fn concurrent_senders_keep_their_order(a: Adapter) {
        const SENDERS: u8 = 4;
        const EACH: u32 = 100;
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(5);
        std::thread::scope(|scope| {
            for sender in 0..SENDERS {
                let addr = broker.addr();
                scope.spawn(move || {
                    let mut conn = Conn::connect(addr);
                    for seq in 0..EACH {
                        let mut body = vec![sender];
                        body.extend_from_slice(&seq.to_be_bytes());
                        conn.post("/5", &body).assert_status(204);
                    }
                });
            }
        });
        let mut next = [0u32; SENDERS as usize];
        for _ in 0..u32::from(SENDERS) * EACH {
            let message = listener.recv();
            let sender = usize::from(message[0]);
            let seq = u32::from_be_bytes(message[1..5].try_into().expect("4 bytes"));
            assert_eq!(seq, next[sender], "sender {sender} out of order");
            next[sender] += 1;
        }
    }

    /// Messages go to the listener of their id only.
    fn listeners_isolated_by_id(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut one = broker.listen(1);
        let mut two = broker.listen(2);
        broker.post(2, b"for two").assert_status(204);
        broker.post(1, b"for one").assert_status(204);
        assert_eq!(one.recv(), b"for one");
        assert_eq!(two.recv(), b"for two");
    }

    /// A second listener replaces the first: close 4000 `replaced`, and the new one receives.
    fn second_listener_replaces_first(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut old = broker.listen(42);
        let mut new = broker.listen(42);
        assert_eq!(old.expect_close(), (4000, "replaced".to_string()));
        broker.post(42, b"to the new one").assert_status(204);
        assert_eq!(new.recv(), b"to the new one");
        assert_eq!(broker.stat("listeners"), 1);
    }

    /// Once a listener is gone (close handshake, or TCP dropped) its id answers 404.
    fn listener_gone_404(a: Adapter) {
        let broker = Broker::start(a, &[]);
        broker.listen(6).close();
        let dropped = broker.listen(7);
        drop(dropped);
        for id in [6, 7] {
            eventually(
                Duration::from_secs(5),
                &format!("POST /{id} → 404 once its listener is gone"),
                || {
                    let response = broker.post(id, b"anyone?");
                    (response.status == 404).then_some(())
                },
            );
        }
    }

    /// A listener that does not read: once its queue (`--queue-limit 4`) is full, POST → 503 with
    /// `Retry-After`; every message that got 204 is then delivered, in order, byte for byte.
    fn slow_consumer_503_then_all_accepted_delivered(a: Adapter) {
        let broker = Broker::start(a, &["--queue-limit", "4"]);
        let mut listener = broker.listen(7);
        let mut conn = broker.connect();
        let mut accepted = Vec::new();
        let mut refused = None;
        // Socket buffers absorb a few MiB before the queue fills: 200 × 256 KiB = 50 MiB at most.
        for seed in 0..200 {
            let body = random_bytes(seed, 256 * 1024);
            let response = conn.post("/7", &body);
            if response.status != 204 {
                refused = Some(response);
                break;
            }
            accepted.push(body);
        }
        let refused = refused.expect("no 503 after 50 MiB to a listener that does not read");
        eprintln!(
            "{} messages of 256 KiB accepted before the 503",
            accepted.len()
        );
        refused.assert_error(503);
        refused.expect_header("retry-after");
        assert!(
            accepted.len() >= 4,
            "only {} messages accepted with --queue-limit 4",
            accepted.len()
        );
        assert!(
            broker.stat("messages_rejected") >= 1,
            "a 503 is a rejected message"
        );

        for (i, body) in accepted.iter().enumerate() {
            assert!(
                listener.recv() == *body,
                "accepted message {i} of {} not delivered exactly",
                accepted.len()
            );
        }
        // The queue has drained: sending works again and nothing was queued in between.
        broker.post(7, b"after").assert_status(204);
        assert_eq!(listener.recv(), b"after");
    }
}
