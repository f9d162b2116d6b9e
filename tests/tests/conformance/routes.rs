//! §2 addressing and §3 routes: success paths, statistics (§7), route-level errors (404, 405, 426).

use std::time::Duration;

use fedbroker_tests::*;

/// The keys §7 requires in `GET /`, all counts except the first three.
const STATS_COUNTS: [&str; 8] = [
    "uptime_seconds",
    "connections",
    "listeners",
    "messages_received",
    "messages_delivered",
    "messages_rejected",
    "bytes_received",
    "bytes_delivered",
];

adapter_tests! {
    /// `GET /healthz` → 200 `ok`.
    fn healthz_ok(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let response = broker.get("/healthz");
        response.assert_status(200);
        assert_eq!(response.body, b"ok", "{response:?}");
    }

    /// `GET /` → 200 JSON with every §7 key; `runtime` names the adapter.
    fn statistics_json(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let stats = broker.stats();
        assert_eq!(stats["name"], "fedbroker", "{stats}");
        assert_eq!(stats["version"], "0.1.0", "{stats}");
        assert_eq!(stats["runtime"], a.name(), "{stats}");
        for key in STATS_COUNTS {
            assert!(
                stats[key].is_u64(),
                "`{key}` missing or not a count: {stats}"
            );
        }
    }

    /// `connections` counts open connections, the stats request's own included; `listeners` counts
    /// live listeners, and both go down when connections end.
    fn statistics_count_connections_and_listeners(a: Adapter) {
        let broker = Broker::start(a, &[]);
        assert_eq!(
            broker.stat("connections"),
            1,
            "a fresh broker has only the stats connection"
        );
        assert_eq!(broker.stat("listeners"), 0);
        let first = broker.listen(1);
        let _second = broker.listen(2);
        let mut idle = broker.connect();
        idle.get("/healthz").assert_status(200);
        eventually(Duration::from_secs(5), "2 listeners, 4 connections", || {
            let stats = broker.stats();
            (stats["listeners"] == 2 && stats["connections"] == 4).then_some(())
        });
        first.close();
        drop(idle);
        eventually(Duration::from_secs(5), "1 listener, 2 connections", || {
            let stats = broker.stats();
            (stats["listeners"] == 1 && stats["connections"] == 2).then_some(())
        });
    }

    /// A delivery moves the message and byte counters; a POST to nobody is not delivered.
    fn statistics_counters_move(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(3);
        let body = random_bytes(4, 1234);
        broker.post(3, &body).assert_status(204);
        assert_eq!(listener.recv(), body);
        let stats = eventually(Duration::from_secs(5), "messages_delivered = 1", || {
            let stats = broker.stats();
            (stats["messages_delivered"] == 1).then_some(stats)
        });
        assert_eq!(stats["messages_received"], 1, "{stats}");
        assert_eq!(stats["bytes_received"], 1234, "{stats}");
        assert_eq!(stats["bytes_delivered"], 1234, "{stats}");

        broker.post(4, b"nobody").assert_error(404);
        let stats = broker.stats();
        assert_eq!(stats["messages_delivered"], 1, "{stats}");
        assert_eq!(stats["bytes_delivered"], 1234, "{stats}");
    }

    /// `GET /metrics` → Prometheus text format 0.0.4 with fedbroker metrics.
    fn metrics_prometheus_text(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let response = broker.get("/metrics");
        response.assert_status(200);
        let content_type = response
            .expect_header("content-type")
            .to_ascii_lowercase()
            .replace(' ', "");
        assert!(
            content_type.starts_with("text/plain;version=0.0.4"),
            "{response:?}"
        );
        assert!(response.text().contains("fedbroker_"), "{response:?}");
    }

    /// HEAD on each GET route answers as GET without a body.
    fn head_on_get_routes(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut conn = broker.connect();
        for path in ["/", "/healthz", "/metrics"] {
            let response = conn.head(path);
            response.assert_status(200);
            conn.expect_message_boundary(&response);
        }
    }

    /// `OPTIONS /{id}` without `Origin` → 204 with `Allow`.
    fn options_204_with_allow(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut conn = broker.connect();
        let response = conn.request("OPTIONS", "/42", &[], b"");
        response.assert_status(204);
        response.expect_header("allow");
        conn.expect_message_boundary(&response);
    }

    /// A 204 carries no body and no `Content-Length`/`Transfer-Encoding` (RFC 9110 §8.6, RFC 9112 §6.1).
    fn no_content_has_no_body_framing(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let _listener = broker.listen(5);
        let mut conn = broker.connect();
        let response = conn.post("/5", b"x");
        response.assert_status(204);
        assert!(
            response.header("content-length").is_none(),
            "204 with Content-Length:\n{response:?}"
        );
        assert!(
            response.header("transfer-encoding").is_none(),
            "204 with Transfer-Encoding:\n{response:?}"
        );
        conn.expect_message_boundary(&response);
    }

    /// `POST /{id}` with nobody listening → 404.
    fn post_without_listener_404(a: Adapter) {
        let broker = Broker::start(a, &[]);
        broker.post(42, b"hello").assert_error(404);
        // Valid ids at both ends of the range are routed, not refused.
        broker.post(1, b"").assert_error(404);
        broker.post(2147483647, b"").assert_error(404);
    }

    /// Paths that are no route → 404.
    fn unknown_paths_404(a: Adapter) {
        let broker = Broker::start(a, &[]);
        for (method, path) in [
            ("GET", "/a/b"),
            ("POST", "/a/b"),
            ("POST", "/42/x"),
            ("GET", "/healthz/x"),
        ] {
            let mut conn = broker.connect();
            let response = conn.request(method, path, &[], b"");
            response.assert_error(404);
            conn.expect_message_boundary(&response);
        }
    }

    /// A method the route does not take → 405 with `Allow` listing what it takes.
    fn method_not_allowed_405(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let cases = [
            ("PUT", "/42", "POST"),
            ("DELETE", "/42", "POST"),
            ("PATCH", "/42", "GET"),
            ("POST", "/", "GET"),
            ("PUT", "/", "GET"),
            ("POST", "/healthz", "GET"),
            ("DELETE", "/metrics", "GET"),
        ];
        for (method, path, allowed) in cases {
            let mut conn = broker.connect();
            let response = conn.request(method, path, &[], b"");
            response.assert_error(405);
            let allow = response.expect_header("allow");
            assert!(
                allow.contains(allowed),
                "{method} {path}: Allow should list {allowed}:\n{response:?}"
            );
            conn.expect_message_boundary(&response);
        }
    }

    /// `GET /{id}` without upgrade headers → 426 with `Upgrade: websocket`; HEAD likewise, bodiless.
    fn listen_without_upgrade_426(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut conn = broker.connect();
        let response = conn.get("/42");
        response.assert_error(426);
        assert!(response.has_token("upgrade", "websocket"), "{response:?}");
        conn.expect_message_boundary(&response);

        let mut conn = broker.connect();
        let response = conn.head("/42");
        response.assert_status(426);
        assert!(response.has_token("upgrade", "websocket"), "{response:?}");
        conn.expect_message_boundary(&response);
    }

    /// Ids outside 1..=2^31-1 or not canonical → 400, for sending and for listening.
    fn invalid_ids_400(a: Adapter) {
        let broker = Broker::start(a, &[]);
        for id in [
            "0",
            "2147483648",
            "042",
            "+4",
            "4a",
            "abc",
            "-1",
            "99999999999999999999",
        ] {
            let path = format!("/{id}");
            let mut conn = broker.connect();
            let response = conn.post(&path, b"x");
            assert_eq!(response.status, 400, "POST {path}:\n{response:?}");
            response.assert_error(400);
            conn.expect_message_boundary(&response);

            let mut conn = broker.connect();
            let response = conn.request("GET", &path, &UPGRADE_HEADERS, b"");
            assert_eq!(response.status, 400, "listen on {path}:\n{response:?}");
            response.assert_error(400);
        }
    }

    /// The query string is not part of the id (it goes to the authorizer, §5).
    fn query_string_is_not_the_id(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = Listener::connect(broker.addr(), "/8?client=a");
        broker.connect().post("/8?x=1&y=2", b"q").assert_status(204);
        assert_eq!(listener.recv(), b"q");
    }

    /// `--base-path /mq` moves every route under `/mq` and nothing stays at `/`.
    fn base_path_prefixes_every_route(a: Adapter) {
        let broker = Broker::start(a, &["--base-path", "/mq"]);
        let mut listener = Listener::connect(broker.addr(), "/mq/42");
        broker
            .connect()
            .post("/mq/42", b"under base")
            .assert_status(204);
        assert_eq!(listener.recv(), b"under base");
        broker.connect().stats("/mq/");
        broker.connect().stats("/mq");
        let healthz = broker.get("/mq/healthz");
        assert_eq!(
            (healthz.status, healthz.body.as_slice()),
            (200, &b"ok"[..]),
            "{healthz:?}"
        );
        broker.get("/mq/metrics").assert_status(200);
        broker.post(42, b"outside").assert_error(404);
        broker.get("/healthz").assert_error(404);
        broker.get("/").assert_error(404);
    }
}
