//! SPEC §6 through the connection state machine: preflights, CORS headers on actual responses, and
//! refusal of foreign origins (cross-site WebSocket hijacking included).

mod common;

use common::*;
use fedbroker_core::{Broker, Config, CorsPolicy};

fn broker(clock: &Clock) -> std::sync::Arc<Broker> {
    let mut c = Config::default();
    c.cors = CorsPolicy::new(&["https://app.example"]).unwrap();
    Broker::new(c, "sim", clock.0, std::time::Duration::from_secs(1_800_000_000))
}

fn ask(b: &std::sync::Arc<Broker>, clock: &Clock, raw: &str) -> Resp {
    let mut s = b.accept(clock.0);
    s.handle_input(clock.0, raw.as_bytes());
    responses(&drain(&mut s, clock.0)).remove(0)
}

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn preflight_from_an_allowed_origin() {
    let clock = Clock::new();
    let b = broker(&clock);
    let r = ask(&b, &clock, "OPTIONS /42 HTTP/1.1\r\nHost: broker:1\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n");
    assert_eq!(r.0, 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(header(&r, "access-control-allow-methods"), Some("GET, POST, OPTIONS"));
    assert_eq!(
        header(&r, "access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(header(&r, "access-control-max-age"), Some("600"));
    assert_eq!(header(&r, "vary"), Some("Origin"));
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
}

#[test]
fn preflights_succeed_whatever_the_path() {
    let clock = Clock::new();
    let b = broker(&clock);
    for path in ["/042", "/a/b", "/"] {
        let r = ask(&b, &clock, &format!("OPTIONS {path} HTTP/1.1\r\nHost: broker:1\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n\r\n"));
        assert_eq!(r.0, 204, "{path}");
        assert_eq!(header(&r, "access-control-allow-origin"), Some("https://app.example"));
    }
    // The request itself then gets its readable refusal.
    let r = ask(
        &b,
        &clock,
        "POST /042 HTTP/1.1\r\nHost: broker:1\r\nOrigin: https://app.example\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.0, 400);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("https://app.example"));
}

#[test]
fn actual_responses_carry_cors_headers() {
    let clock = Clock::new();
    let b = broker(&clock);
    let r = ask(
        &b,
        &clock,
        "POST /42 HTTP/1.1\r\nHost: broker:1\r\nOrigin: https://app.example\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(r.0, 404);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(
        header(&r, "access-control-expose-headers"),
        Some("Retry-After, WWW-Authenticate, Fedbroker-Recipients, Fedbroker-Seq")
    );
}

#[test]
fn errors_that_end_the_connection_carry_cors_headers_too() {
    let clock = Clock::new();
    let b = broker(&clock);
    // A chunked body over the limit is refused mid-body, and the connection closes.
    let big = format!("{:x}\r\n", 2 * 1024 * 1024);
    let r = ask(&b, &clock, &format!("POST /42 HTTP/1.1\r\nHost: broker:1\r\nOrigin: https://app.example\r\nTransfer-Encoding: chunked\r\n\r\n{big}"));
    assert_eq!(r.0, 413);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(header(&r, "connection"), Some("close"));
}

#[test]
fn foreign_origins_are_refused_without_cors_headers() {
    let clock = Clock::new();
    let b = broker(&clock);
    for raw in [
        "POST /42 HTTP/1.1\r\nHost: broker:1\r\nOrigin: https://evil.example\r\nContent-Length: 1\r\n\r\nx".to_owned(),
        "OPTIONS /42 HTTP/1.1\r\nHost: broker:1\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n".to_owned(),
        format!("GET /42 HTTP/1.1\r\nHost: broker:1\r\nOrigin: https://evil.example\r\n{UPGRADE_HEADERS}\r\n"),
    ] {
        let r = ask(&b, &clock, &raw);
        assert_eq!(r.0, 403, "{raw}");
        assert!(r.1.iter().all(|(k, _)| !k.starts_with("access-control-")), "{raw}");
    }
    // The broker's own origin needs no listing; no Origin at all is not a browser's cross-origin call.
    let own = ask(
        &b,
        &clock,
        &format!("GET /42 HTTP/1.1\r\nHost: broker:1\r\nOrigin: http://broker:1\r\n{UPGRADE_HEADERS}\r\n"),
    );
    assert_eq!(own.0, 101);
    let none = ask(&b, &clock, "GET /healthz HTTP/1.1\r\nHost: broker:1\r\n\r\n");
    assert_eq!(none.0, 200);
    assert_eq!(header(&none, "access-control-allow-origin"), None);
}
