//! §6 browsers: CORS preflights and headers for `--cors-allow-origin`, and the `Origin` check that
//! refuses foreign pages (cross-site WebSocket hijacking included), on by default.

use crate::support::*;
use fedbroker_tests::*;

/// Allowed by the brokers of these tests.
const APP: &str = "https://app.example";
/// Also allowed.
const DEV: &str = "http://localhost:3000";
/// Never allowed.
const EVIL: &str = "https://evil.example";

/// A broker allowing [`APP`] and [`DEV`], with `extra` flags.
fn cors_broker(a: Adapter, extra: &[&str]) -> Broker {
    let mut args = vec!["--cors-allow-origin", APP, "--cors-allow-origin", DEV];
    args.extend_from_slice(extra);
    Broker::start(a, &args)
}

/// A preflight `OPTIONS path` from `origin` for a POST with `Content-Type` and `Authorization`.
fn preflight(broker: &Broker, path: &str, origin: &str) -> Response {
    broker.connect().request(
        "OPTIONS",
        path,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type, authorization"),
        ],
        b"",
    )
}

/// The comma-separated tokens of every `name` header, lower-cased.
fn tokens(response: &Response, name: &str) -> Vec<String> {
    response
        .headers_named(name)
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// No `Access-Control-*` header at all.
#[track_caller]
fn assert_no_cors_headers(response: &Response) {
    let cors: Vec<_> = response
        .headers
        .iter()
        .filter(|(name, _)| name.to_ascii_lowercase().starts_with("access-control-"))
        .collect();
    assert!(
        cors.is_empty(),
        "a refused origin must get no CORS headers, got {cors:?}:\n{response:?}"
    );
}

/// `Access-Control-Allow-Origin` is `origin` (or `*` when `star_ok`), and never credentials mode.
#[track_caller]
fn assert_allow_origin(response: &Response, origin: &str, star_ok: bool) {
    let allowed = response
        .headers_named("access-control-allow-origin")
        .collect::<Vec<_>>();
    assert!(
        allowed == [origin] || (star_ok && allowed == ["*"]),
        "want `Access-Control-Allow-Origin: {origin}`{}:\n{response:?}",
        if star_ok { " (or *)" } else { "" }
    );
    assert!(
        response.header("access-control-allow-credentials").is_none(),
        "`Access-Control-Allow-Credentials` is never sent (SPEC §6):\n{response:?}"
    );
}

/// An actual (non-preflight) response to an allowed origin: allow-origin and the exposed headers.
#[track_caller]
fn assert_cors_actual(response: &Response, origin: &str, star_ok: bool) {
    assert_allow_origin(response, origin, star_ok);
    let exposed = tokens(response, "access-control-expose-headers");
    for header in ["retry-after", "www-authenticate", "fedbroker-recipients"] {
        assert!(
            exposed.iter().any(|t| t == header),
            "`Access-Control-Expose-Headers` should list {header}:\n{response:?}"
        );
    }
}

/// A successful preflight per SPEC §6.
#[track_caller]
fn assert_preflight_ok(response: &Response, origin: &str, star_ok: bool) {
    response.assert_status(204);
    assert_allow_origin(response, origin, star_ok);
    let mut methods = tokens(response, "access-control-allow-methods");
    methods.sort();
    assert_eq!(methods, ["get", "options", "post"], "allowed methods:\n{response:?}");
    let headers = tokens(response, "access-control-allow-headers");
    for header in ["authorization", "content-type"] {
        assert!(
            headers.iter().any(|t| t == header),
            "allowed headers should list {header}:\n{response:?}"
        );
    }
    assert_eq!(response.header("access-control-max-age"), Some("600"), "{response:?}");
    assert!(
        tokens(response, "vary").iter().any(|t| t == "origin"),
        "a preflight answer depends on Origin: `Vary: Origin`:\n{response:?}"
    );
}

/// Every shape of request from `origin` is refused with 403 and no CORS headers: POST, preflight,
/// WebSocket upgrade, statistics.
#[track_caller]
fn assert_origin_refused(broker: &Broker, origin: &str) {
    let responses = [
        post_with(broker, "/42", &[("Origin", origin)], b"from a foreign page"),
        preflight(broker, "/42", origin),
        upgrade_with(broker, "/42", &[("Origin", origin)]),
        broker.connect().request("GET", "/", &[("Origin", origin)], b""),
    ];
    for response in &responses {
        assert_forbidden(response);
        assert_no_cors_headers(response);
    }
}

adapter_tests! {
    /// A preflight from each allowed origin → 204 with the §6 headers, whether or not anyone listens.
    fn preflight_from_allowed_origin(a: Adapter) {
        let broker = cors_broker(a, &[]);
        for origin in [APP, DEV] {
            assert_preflight_ok(&preflight(&broker, "/42", origin), origin, false);
        }
        let _listener = broker.listen(42);
        assert_preflight_ok(&preflight(&broker, "/42", APP), APP, false);
    }

    /// `--cors-allow-origin *` allows any origin (echoed, or `*`).
    fn wildcard_allows_any_origin(a: Adapter) {
        let broker = Broker::start(a, &["--cors-allow-origin", "*"]);
        let origin = "https://anyone.example";
        assert_preflight_ok(&preflight(&broker, "/42", origin), origin, true);
        let mut listener = broker.listen_with("/42", &[("Origin", origin)]);
        let response = post_with(&broker, "/42", &[("Origin", origin)], b"wild");
        response.assert_status(204);
        assert_cors_actual(&response, origin, true);
        assert_eq!(listener.recv(), b"wild");
    }

    /// Actual responses to an allowed origin carry `Access-Control-Allow-Origin` and expose
    /// `Retry-After` and `WWW-Authenticate`: 204, 404, 400, 200 (statistics) and 503 (queue full).
    fn actual_responses_carry_cors_headers(a: Adapter) {
        let broker = cors_broker(a, &["--queue-limit", "1"]);
        let origin = [("Origin", APP)];
        let mut listener = broker.listen_with("/42", &origin);
        let delivered = post_with(&broker, "/42", &origin, b"hello");
        delivered.assert_status(204);
        assert_cors_actual(&delivered, APP, false);
        assert_eq!(listener.recv(), b"hello");

        let nobody = post_with(&broker, "/43", &origin, b"x");
        nobody.assert_error(404);
        assert_cors_actual(&nobody, APP, false);
        let invalid = post_with(&broker, "/abc", &origin, b"x");
        invalid.assert_error(400);
        assert_cors_actual(&invalid, APP, false);
        let stats = broker.connect().request("GET", "/", &origin, b"");
        stats.assert_status(200);
        assert_cors_actual(&stats, APP, false);

        // A listener that never reads: its queue (1) fills once the socket buffers are full.
        let _slow = broker.listen(7);
        let mut conn = broker.connect();
        let body = random_bytes(7, 256 * 1024);
        let full = (0..200)
            .map(|_| conn.request("POST", "/7", &origin, &body))
            .find(|response| response.status != 204)
            .expect("no 503 after 50 MiB to a listener that does not read");
        full.assert_error(503);
        full.expect_header("retry-after");
        assert_cors_actual(&full, APP, false);
    }

    /// In tokens mode a preflight needs no credentials (browsers send none); 401 and 403 to an
    /// allowed origin carry the CORS headers, so that the page can read `WWW-Authenticate`; a
    /// browser listens with `?token=` and its Origin.
    fn cors_with_authentication(a: Adapter) {
        let broker = Broker::builder(a)
            .file_arg(
                "--auth-tokens",
                "tokens.toml",
                "[[token]]\ntoken = \"cors-tok-1\"\nlisten = [42]\nsend = [42]\n",
            )
            .args(&["--cors-allow-origin", APP])
            .start();
        assert_preflight_ok(&preflight(&broker, "/42", APP), APP, false);
        let origin = ("Origin", APP);

        let anonymous = post_with(&broker, "/42", &[origin], b"x");
        assert_unauthorized(&anonymous);
        assert_cors_actual(&anonymous, APP, false);
        let outside = post_with(&broker, "/43", &[origin, ("Authorization", "Bearer cors-tok-1")], b"x");
        assert_forbidden(&outside);
        assert_cors_actual(&outside, APP, false);

        let mut listener = broker.listen_with("/42?token=cors-tok-1", &[origin]);
        let sent = post_with(&broker, "/42", &[origin, ("Authorization", "Bearer cors-tok-1")], b"page");
        sent.assert_status(204);
        assert_cors_actual(&sent, APP, false);
        assert_eq!(listener.recv(), b"page");

        // Valid credentials do not make a foreign page acceptable (nor do missing ones make it a 401).
        let evil = ("Origin", EVIL);
        for response in [
            post_with(&broker, "/42", &[evil, ("Authorization", "Bearer cors-tok-1")], b"x"),
            upgrade_with(&broker, "/42?token=cors-tok-1", &[evil]),
            post_with(&broker, "/42", &[evil], b"x"),
            upgrade_with(&broker, "/42", &[evil]),
        ] {
            assert_forbidden(&response);
            assert_no_cors_headers(&response);
        }
        post_with(&broker, "/42", &[("Authorization", "Bearer cors-tok-1")], b"still mine").assert_status(204);
        assert_eq!(listener.recv(), b"still mine");
    }

    /// Under `--base-path` the CORS rules and the Origin check apply to the prefixed routes.
    fn cors_under_base_path(a: Adapter) {
        let broker = cors_broker(a, &["--base-path", "/mq"]);
        assert_preflight_ok(&preflight(&broker, "/mq/42", APP), APP, false);
        let mut listener = Listener::connect(broker.addr(), "/mq/42");
        let response = post_with(&broker, "/mq/42", &[("Origin", APP)], b"prefixed");
        response.assert_status(204);
        assert_cors_actual(&response, APP, false);
        assert_eq!(listener.recv(), b"prefixed");
        for response in [
            post_with(&broker, "/mq/42", &[("Origin", EVIL)], b"x"),
            preflight(&broker, "/mq/42", EVIL),
            upgrade_with(&broker, "/mq/42", &[("Origin", EVIL)]),
        ] {
            assert_forbidden(&response);
            assert_no_cors_headers(&response);
        }
    }

    /// An Origin neither allowed nor the broker's own → 403 without CORS headers, for POST, the
    /// preflight, the WebSocket upgrade and the statistics; nothing is delivered and the listener
    /// in place is not replaced. Look-alikes of an allowed origin are foreign too.
    fn foreign_origin_refused(a: Adapter) {
        let broker = cors_broker(a, &[]);
        let mut listener = broker.listen(42);
        for origin in [
            EVIL,
            "null",
            "https://app.example.evil",
            "https://app.example:8443",
            "http://app.example",
            "http://localhost:3001",
        ] {
            assert_origin_refused(&broker, origin);
        }
        let hijack = broker.try_listen_with("/42", &[("Origin", EVIL)]);
        assert!(hijack.is_err(), "a foreign page must not take over a listener");
        broker.post(42, b"first").assert_status(204);
        assert_eq!(listener.recv(), b"first", "the listener was replaced, or got a refused message");
    }

    /// The Origin check is on without any `--cors-allow-origin` (cross-site WebSocket hijacking).
    fn foreign_origin_refused_by_default(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(42);
        assert_origin_refused(&broker, EVIL);
        assert_origin_refused(&broker, "null");
        assert!(broker.try_listen_with("/42", &[("Origin", EVIL)]).is_err());
        broker.post(42, b"first").assert_status(204);
        assert_eq!(listener.recv(), b"first");
    }

    /// The broker's own origin (`http://` + `Host`) is accepted without being listed; another
    /// scheme, port or host is not own.
    fn own_origin_accepted_without_listing(a: Adapter) {
        let broker = cors_broker(a, &[]);
        let own = broker.origin();
        let mut listener = broker.listen_with("/42", &[("Origin", &own)]);
        post_with(&broker, "/42", &[("Origin", &own)], b"same origin").assert_status(204);
        assert_eq!(listener.recv(), b"same origin");

        // Reached as localhost: the own origin follows the Host header.
        let port = broker.addr().port();
        let mut conn = broker.connect();
        conn.send(
            format!(
                "POST /42 HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://localhost:{port}\r\nContent-Length: 9\r\n\r\nvia alias"
            )
            .as_bytes(),
        );
        conn.read_response().assert_status(204);
        assert_eq!(listener.recv(), b"via alias");

        let other_port = if port == 1 { 2 } else { port - 1 };
        for origin in [
            format!("https://127.0.0.1:{port}"),
            format!("http://127.0.0.1:{other_port}"),
            format!("http://localhost:{port}"),
            "http://127.0.0.1".to_string(),
        ] {
            let response = post_with(&broker, "/42", &[("Origin", &origin)], b"x");
            assert_forbidden(&response);
            assert_no_cors_headers(&response);
        }
        broker.post(42, b"last").assert_status(204);
        assert_eq!(listener.recv(), b"last");
    }

    /// An allowed origin listens over WebSocket and sends.
    fn allowed_origin_listens_and_sends(a: Adapter) {
        let broker = cors_broker(a, &[]);
        let mut listener = broker.listen_with("/42", &[("Origin", DEV)]);
        let response = post_with(&broker, "/42", &[("Origin", DEV), ("Content-Type", "text/plain")], b"dev page");
        response.assert_status(204);
        assert_cors_actual(&response, DEV, false);
        assert_eq!(listener.recv(), b"dev page");
    }

    /// Requests without Origin (non-browser clients) are unaffected by the CORS settings.
    fn requests_without_origin_unaffected(a: Adapter) {
        let broker = cors_broker(a, &[]);
        let mut listener = broker.listen(42);
        broker.post(42, b"curl").assert_status(204);
        assert_eq!(listener.recv(), b"curl");
        broker.post(43, b"x").assert_error(404);
        broker.stats();
    }
}
