//! §3 error statuses caused by the shape of the request: 400, 408, 413, 414, 417, 431, 503, 505.

use std::time::Duration;

use fedbroker_tests::*;

/// `Host` plus `n - 1` short fields: a head of exactly `n` header fields.
fn fields(host: &str, n: usize, value_len: usize) -> String {
    let mut head = format!("Host: {host}\r\n");
    for i in 1..n {
        head.push_str(&format!("X-Field-{i}: {}\r\n", "v".repeat(value_len)));
    }
    head
}

adapter_tests! {
    /// Malformed request lines → 400, then the connection is closed.
    fn malformed_request_line_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let host = broker.host();
        for line in [
            "GET",
            "GET /healthz HTTP/1.1 extra",
            "GET  /healthz HTTP/1.1",
            "G(T /healthz HTTP/1.1",
            "GET healthz HTTP/1.1",
            "GET /healthz HTTP/1.x",
        ] {
            let response =
                broker.assert_refused(format!("{line}\r\nHost: {host}\r\n\r\n").as_bytes(), 400);
            assert_eq!(response.status, 400, "request line {line:?}");
        }
    }

    /// Malformed header fields → 400, then the connection is closed.
    fn malformed_headers_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let host = broker.host();
        for field in [
            "No-Colon",
            "Bad Name: x",
            ": empty-name",
            "Content-Length : 0",
        ] {
            let raw = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n{field}\r\n\r\n");
            broker.assert_refused(raw.as_bytes(), 400);
        }
    }

    /// HTTP/1.1 requires `Host` (RFC 9112 §3.2); HTTP/1.0 does not.
    fn http11_without_host_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        broker.assert_refused(b"GET /healthz HTTP/1.1\r\n\r\n", 400);
        let (_, response) = broker.exchange(b"GET /healthz HTTP/1.0\r\n\r\n");
        response.assert_status(200);
    }

    /// Two `Host` fields → 400 (RFC 9112 §3.2).
    fn duplicate_host_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let host = broker.host();
        let raw =
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nHost: elsewhere.example\r\n\r\n");
        broker.assert_refused(raw.as_bytes(), 400);
    }

    /// A `Host` value that is no `uri-host[:port]` → 400 (RFC 9112 §3.2).
    fn invalid_host_value_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        for host in ["a b", "x/y", "[::1", "host:port"] {
            let raw = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let response = broker.assert_refused(raw.as_bytes(), 400);
            assert_eq!(response.status, 400, "Host: {host}");
        }
    }

    /// `Content-Length` and `Transfer-Encoding` together are a smuggling shape → 400 and close.
    fn content_length_with_transfer_encoding_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let _listener = broker.listen(42);
        let host = broker.host();
        let raw = format!(
            "POST /42 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        broker.assert_refused(raw.as_bytes(), 400);
    }

    /// Conflicting `Content-Length`s → 400 and close.
    fn conflicting_content_lengths_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let _listener = broker.listen(42);
        let host = broker.host();
        for fields in [
            "Content-Length: 5\r\nContent-Length: 6",
            "Content-Length: 5, 6",
        ] {
            let raw = format!("POST /42 HTTP/1.1\r\nHost: {host}\r\n{fields}\r\n\r\nhello!");
            broker.assert_refused(raw.as_bytes(), 400);
        }
    }

    /// `Content-Length` values that are not plain digits → 400 and close.
    fn invalid_content_length_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let _listener = broker.listen(42);
        let host = broker.host();
        for value in ["+5", "-5", "0x5", "5 5", "five", ""] {
            let raw = format!(
                "POST /42 HTTP/1.1\r\nHost: {host}\r\nContent-Length: {value}\r\n\r\nhello"
            );
            broker.assert_refused(raw.as_bytes(), 400);
        }
    }

    /// Bad chunked encoding → 400 and close.
    fn bad_chunked_body_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let _listener = broker.listen(42);
        let host = broker.host();
        let bodies = [
            "zz\r\nhello\r\n0\r\n\r\n",                    // size not hex
            "5\r\nhelloXX0\r\n\r\n",                       // no CRLF after the data
            "-5\r\nhello\r\n0\r\n\r\n",                    // negative size
            "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", // size overflows
        ];
        for body in bodies {
            let raw = format!(
                "POST /42 HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            );
            let response = broker.assert_refused(raw.as_bytes(), 400);
            assert_eq!(response.status, 400, "chunked body {body:?}");
        }
    }

    /// A WebSocket upgrade with missing or invalid handshake headers → 400.
    fn bad_websocket_handshake_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let without_key = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
        ];
        let bad_key = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "not base64 of 16 bytes"),
            ("Sec-WebSocket-Version", "13"),
        ];
        for headers in [&without_key[..], &bad_key[..]] {
            let response = broker.connect().request("GET", "/42", headers, b"");
            assert_eq!(response.status, 400, "headers {headers:?}:\n{response:?}");
            response.assert_error(400);
        }
    }

    /// A request head not received within `--request-timeout` → 408 and close.
    fn partial_head_408(a: Adapter) {
        let broker = Broker::start(a, &["--request-timeout", "1"]);
        let mut conn = broker.connect();
        conn.send(
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Unfinished",
                broker.host()
            )
            .as_bytes(),
        );
        conn.read_response().assert_error(408);
        conn.expect_closed();
    }

    /// A connection that sends nothing as its first request → 408 and close.
    fn silent_connection_408(a: Adapter) {
        let broker = Broker::start(a, &["--request-timeout", "1"]);
        let mut conn = broker.connect();
        conn.read_response().assert_error(408);
        conn.expect_closed();
    }

    /// A request body not received in time → 408 and close.
    fn partial_body_408(a: Adapter) {
        let broker = Broker::start(a, &["--request-timeout", "1"]);
        let _listener = broker.listen(42);
        let mut conn = broker.connect();
        conn.send(
            format!(
                "POST /42 HTTP/1.1\r\nHost: {}\r\nContent-Length: 10\r\n\r\nabc",
                broker.host()
            )
            .as_bytes(),
        );
        conn.read_response().assert_error(408);
        conn.expect_closed();
    }

    /// An idle keep-alive connection after a complete request is closed silently (no 408).
    fn idle_keep_alive_closed_silently(a: Adapter) {
        let broker = Broker::start(a, &["--request-timeout", "1"]);
        let mut conn = broker.connect();
        conn.get("/healthz").assert_status(200);
        conn.expect_closed();
    }

    /// A body over `--max-message-size` → 413 without reading it, then close.
    fn body_too_large_413(a: Adapter) {
        let broker = Broker::start(a, &["--max-message-size", "100"]);
        let mut listener = broker.listen(42);
        let mut conn = broker.connect();
        // Only the head is sent: the 413 must not wait for the body.
        conn.send(
            format!(
                "POST /42 HTTP/1.1\r\nHost: {}\r\nContent-Length: 101\r\n\r\n",
                broker.host()
            )
            .as_bytes(),
        );
        let response = conn.read_response();
        response.assert_error(413);
        assert!(
            response.has_token("connection", "close"),
            "413 should say Connection: close:\n{response:?}"
        );
        conn.expect_closed();
        // At the limit it is accepted.
        let body = random_bytes(5, 100);
        broker.post(42, &body).assert_status(204);
        assert_eq!(listener.recv(), body);
    }

    /// With `Expect: 100-continue` a too-large body gets the 413 instead of `100 Continue`.
    fn expect_continue_too_large_413(a: Adapter) {
        let broker = Broker::start(a, &["--max-message-size", "100"]);
        let _listener = broker.listen(42);
        let mut conn = broker.connect();
        let head = format!(
            "POST /42 HTTP/1.1\r\nHost: {}\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
            broker.host()
        );
        conn.send(head.as_bytes());
        conn.read_response().assert_error(413);
        conn.expect_closed();
    }

    /// A chunked body that grows over the limit → 413 and close.
    fn chunked_too_large_413(a: Adapter) {
        let broker = Broker::start(a, &["--max-message-size", "100"]);
        let _listener = broker.listen(42);
        let mut conn = broker.connect();
        let chunk = format!("40\r\n{}\r\n", "c".repeat(0x40));
        let raw = format!(
            "POST /42 HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}",
            broker.host()
        );
        conn.send(raw.as_bytes());
        conn.read_response().assert_error(413);
        conn.expect_closed();
    }

    /// A request line over 8 KiB → 414; just under is routed normally.
    fn request_line_too_long_414(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let host = broker.host();
        let raw = format!("GET /{} HTTP/1.1\r\nHost: {host}\r\n\r\n", "a".repeat(9000));
        broker.assert_refused(raw.as_bytes(), 414);
        let raw = format!(
            "GET /a/{} HTTP/1.1\r\nHost: {host}\r\n\r\n",
            "a".repeat(8000)
        );
        broker.exchange(raw.as_bytes()).1.assert_error(404);
    }

    /// A head over 16 KiB → 431.
    fn head_too_large_431(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let raw = format!(
            "GET /healthz HTTP/1.1\r\n{}\r\n",
            fields(&broker.host(), 20, 1000)
        );
        broker.assert_refused(raw.as_bytes(), 431);
    }

    /// More than 64 header fields → 431; exactly 64 is fine.
    fn too_many_fields_431(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let raw = format!(
            "GET /healthz HTTP/1.1\r\n{}\r\n",
            fields(&broker.host(), 65, 1)
        );
        broker.assert_refused(raw.as_bytes(), 431);
        let raw = format!(
            "GET /healthz HTTP/1.1\r\n{}\r\n",
            fields(&broker.host(), 64, 1)
        );
        broker.exchange(raw.as_bytes()).1.assert_status(200);
    }

    /// A 12 KiB head of 30 fields is accepted.
    fn large_head_within_limits_accepted(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let raw = format!(
            "GET /healthz HTTP/1.1\r\n{}\r\n",
            fields(&broker.host(), 30, 420)
        );
        assert!(
            (12 * 1024..16 * 1024).contains(&raw.len()),
            "head is {} bytes",
            raw.len()
        );
        broker.exchange(raw.as_bytes()).1.assert_status(200);
    }

    /// An `Expect` other than `100-continue` → 417.
    fn unknown_expectation_417(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let _listener = broker.listen(42);
        let response = broker
            .connect()
            .request("POST", "/42", &[("Expect", "teapot")], b"body");
        response.assert_error(417);
    }

    /// At `--max-connections` the next connection gets 503 and is closed; listeners count; a freed
    /// slot is usable again.
    fn max_connections_503(a: Adapter) {
        let broker = Broker::start(a, &["--max-connections", "2"]);
        let _listener = broker.listen(1);
        let mut open = broker.connect();
        open.get("/healthz").assert_status(200);

        let (mut refused, response) = broker.exchange(
            format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", broker.host()).as_bytes(),
        );
        response.assert_error(503);
        refused.expect_closed();

        drop(open);
        eventually(
            Duration::from_secs(5),
            "a connection slot to free up",
            || {
                let mut conn = Conn::try_connect(broker.addr()).ok()?;
                conn.try_send(
                    format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", broker.host()).as_bytes(),
                )
                .ok()?;
                let response = conn.try_read_response(false).ok()?;
                (response.status == 200).then_some(())
            },
        );
    }

    /// HTTP versions other than 1.0 and 1.1 → 505.
    fn unsupported_http_version_505(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let host = broker.host();
        for version in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9"] {
            let raw = format!("GET /healthz {version}\r\nHost: {host}\r\n\r\n");
            let (_, response) = broker.exchange(raw.as_bytes());
            assert_eq!(response.status, 505, "{version}:\n{response:?}");
            response.assert_error(505);
        }
    }

    /// SPEC §3 lists HTTP/1.2 under 505 too (RFC 9110 §2.5 would have it served as 1.1; SPEC wins).
    fn http_1_2_is_505(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let raw = format!("GET /healthz HTTP/1.2\r\nHost: {}\r\n\r\n", broker.host());
        broker.exchange(raw.as_bytes()).1.assert_error(505);
    }
}
