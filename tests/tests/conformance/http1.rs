//! §3 "HTTP details every client relies on": keep-alive, pipelining, `Connection: close`, HTTP/1.0,
//! `Expect: 100-continue`, chunked bodies, case-insensitive names, and robustness (§9) against
//! garbage and slowloris clients.

use std::time::{Duration, Instant};

use fedbroker_tests::*;

/// `body` in chunked encoding with chunks of `size` bytes, each with a chunk extension, and a trailer.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, chunk) in body.chunks(size).enumerate() {
        out.extend_from_slice(format!("{:X};n={i};flag\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Trailer: done\r\n\r\n");
    out
}

adapter_tests! {
    /// Many requests of every kind on one connection are all answered.
    fn keep_alive_many_requests(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(5);
        let mut conn = broker.connect();
        for i in 0..20u8 {
            conn.post("/5", &[i]).assert_status(204);
            conn.get("/healthz").assert_status(200);
            conn.post("/6", b"nobody").assert_error(404);
            conn.stats("/");
            assert_eq!(listener.recv(), [i]);
        }
    }

    /// Requests written in one go are answered in order.
    fn pipelined_requests_answered_in_order(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(5);
        let mut conn = broker.connect();
        let batch = [
            conn.build("POST", "/5", &[], b"first"),
            conn.build("GET", "/healthz", &[], b""),
            conn.build("POST", "/6", &[], b"nobody"),
            conn.build("HEAD", "/", &[], b""),
            conn.build(
                "POST",
                "/5",
                &[("Transfer-Encoding", "chunked")],
                &chunked(b"second", 4),
            ),
            conn.build("GET", "/healthz", &[], b""),
        ]
        .concat();
        conn.send(&batch);
        conn.read_response().assert_status(204);
        assert_eq!(conn.read_response().body, b"ok");
        conn.read_response().assert_error(404);
        conn.read_head_response().assert_status(200);
        conn.read_response().assert_status(204);
        assert_eq!(conn.read_response().body, b"ok");
        assert_eq!(listener.recv(), b"first");
        assert_eq!(listener.recv(), b"second");
    }

    /// `Connection: close` → the response, then the server closes.
    fn connection_close_honoured(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let _listener = broker.listen(5);
        let mut conn = broker.connect();
        conn.request("GET", "/healthz", &[("Connection", "close")], b"")
            .assert_status(200);
        conn.expect_closed();
        let mut conn = broker.connect();
        conn.request("POST", "/5", &[("Connection", "close")], b"bye")
            .assert_status(204);
        conn.expect_closed();
    }

    /// HTTP/1.0 closes after the response unless it asks for keep-alive.
    fn http10_closes_unless_keep_alive(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let (mut conn, response) = broker.exchange(b"GET /healthz HTTP/1.0\r\n\r\n");
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, &b"ok"[..]),
            "{response:?}"
        );
        conn.expect_closed();

        let request = b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let (mut conn, response) = broker.exchange(request);
        response.assert_status(200);
        conn.send(request);
        conn.read_response().assert_status(200);
    }

    /// `Expect: 100-continue` → `100 Continue`, then the body, then 204.
    fn expect_continue_then_204(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(5);
        let mut conn = broker.connect();
        let body = random_bytes(6, 2000);
        conn.send(&conn.build(
            "POST",
            "/5",
            &[("Expect", "100-continue"), ("Content-Length", "2000")],
            b"",
        ));
        conn.read_response().assert_status(100);
        conn.send(&body);
        conn.read_response().assert_status(204);
        assert_eq!(listener.recv(), body);
    }

    /// `Expect: 100-continue` to nobody: `100 Continue` then 404, or 404 at once (body unread).
    fn expect_continue_without_listener(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut conn = broker.connect();
        conn.send(&conn.build(
            "POST",
            "/5",
            &[("Expect", "100-continue"), ("Content-Length", "10")],
            b"",
        ));
        let response = conn.read_response();
        if response.status == 100 {
            conn.send(b"0123456789");
            conn.read_response().assert_error(404);
        } else {
            response.assert_error(404);
        }
    }

    /// Chunked bodies (extensions, trailers, any chunk size) are delivered de-chunked.
    fn chunked_body_delivered(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(5);
        let mut conn = broker.connect();
        for (seed, size, chunk) in [
            (7, 1000, 1),
            (8, 5000, 0x100),
            (9, 70000, 65536),
            (10, 3, 3),
        ] {
            let body = random_bytes(seed, size);
            let chunked = chunked(&body, chunk);
            conn.request("POST", "/5", &[("Transfer-Encoding", "chunked")], &chunked)
                .assert_status(204);
            assert_eq!(listener.recv(), body, "{size} bytes in chunks of {chunk}");
        }
        conn.request(
            "POST",
            "/5",
            &[("Transfer-Encoding", "chunked")],
            b"0\r\n\r\n",
        )
        .assert_status(204);
        assert_eq!(listener.recv(), b"");
    }

    /// Header names (and the `chunked` coding) are case-insensitive.
    fn header_names_case_insensitive(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(9);
        let host = broker.host();
        let (mut conn, response) = broker.exchange(
            format!("POST /9 HTTP/1.1\r\nhOsT: {host}\r\ncontent-LENGTH: 3\r\n\r\nabc").as_bytes(),
        );
        response.assert_status(204);
        assert_eq!(listener.recv(), b"abc");
        conn.send(format!("POST /9 HTTP/1.1\r\nHOST: {host}\r\nTRANSFER-ENCODING: Chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n").as_bytes());
        conn.read_response().assert_status(204);
        assert_eq!(listener.recv(), b"de");
    }

    /// Garbage bytes → 400 and close, without disturbing other connections.
    fn garbage_400_without_disturbing_others(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(5);
        let mut other = broker.connect();
        other.get("/healthz").assert_status(200);

        let mut garbage = random_bytes(11, 2000);
        garbage.extend_from_slice(b"\r\n\r\n");
        broker.assert_refused(&garbage, 400);

        other.get("/healthz").assert_status(200);
        other.post("/5", b"still here").assert_status(204);
        assert_eq!(listener.recv(), b"still here");
    }

    /// A head trickled byte by byte gets 408 once `--request-timeout` passes (the deadline is not
    /// pushed back by each byte) while another client is served meanwhile.
    fn slowloris_408_while_others_served(a: Adapter) {
        let broker = Broker::start(a, &["--request-timeout", "1"]);
        let mut slow = broker.connect();
        let mut other = broker.connect();
        let endless = format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Slow: {}",
            broker.host(),
            "a".repeat(400)
        );
        // At least 200 × 20 ms = 4 s of trickling, four times the request timeout.
        let mut answered = false;
        let start = Instant::now();
        for &byte in endless.as_bytes().iter().take(200) {
            if slow.has_data(Duration::from_millis(20)) {
                answered = true;
                break;
            }
            if slow.try_send(&[byte]).is_err() {
                break;
            }
            other.get("/healthz").assert_status(200);
        }
        assert!(
            answered || slow.has_data(Duration::from_millis(100)),
            "slowloris kept its connection open while trickling"
        );
        eprintln!(
            "slowloris answered after {:?} of trickling",
            start.elapsed()
        );
        slow.read_response().assert_error(408);
        slow.expect_closed();
    }
}
