//! The authorization inputs: arbitrary `Authorization`, `Origin` and `Host` headers and query
//! strings, through a whole broker session in each authentication mode (tokens file, JWT with an
//! HMAC secret, open) with a CORS policy and a stats token.
//!
//! Invariants: nothing panics; every request gets exactly one well-formed response; a request
//! the authorizer refuses never reaches routing (its status is 401/403/400-class, never 404/204);
//! the same input gives the same response twice (decisions depend on nothing hidden).

#![no_main]

use std::time::Duration;

use bytes::Buf;
use fedbroker_core::auth::{IdSet, JwtAuthorizer, JwtOptions, StaticTokens, TokenSpec, TokensFile};
use fedbroker_core::{AllowAll, Authorizer, Broker, Config, CorsPolicy};
use fedbroker_fuzz::{epoch, Cursor};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn authorizer(mode: u8) -> Box<dyn Authorizer> {
    match mode % 3 {
        0 => Box::new(AllowAll),
        1 => {
            let spec = TokenSpec {
                token: Some("s3cr3t".into()),
                listen: IdSet::parse_item("1-100").unwrap(),
                send: IdSet::parse_item("*").unwrap(),
                ..Default::default()
            };
            Box::new(StaticTokens::new(TokensFile { token: vec![spec] }).unwrap())
        }
        _ => Box::new(
            JwtAuthorizer::hmac(
                SECRET,
                JwtOptions {
                    leeway: 5,
                    ..Default::default()
                },
            )
            .unwrap(),
        ),
    }
}

/// Header-safe text from fuzz bytes (the head reader refuses control characters anyway; keeping
/// them out lets the fuzzer reach the authorizers more often).
fn text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { 'x' })
        .collect()
}

fn response(mode: u8, request: &[u8]) -> Vec<u8> {
    let mut config = Config::default();
    config.cors = CorsPolicy::new(&["https://app.example"]).unwrap();
    config.stats_token = Some("st".into());
    let now = epoch();
    let broker = Broker::with_authorizer(
        config,
        "fuzz",
        authorizer(mode),
        now,
        Duration::from_secs(1_800_000_000),
    );
    let _listener = broker.registry().listen(fedbroker_core::Id::new(7).unwrap(), false);
    let mut s = broker.accept(now);
    s.handle_input(now, request);
    s.handle_eof(now);
    let out = s.transmit();
    out.copy_to_bytes(out.remaining()).to_vec()
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let kind = c.u8();
    let sizes = [c.u8(), c.u8(), c.u8(), c.u8()];
    let auth = text(c.bytes(usize::from(sizes[0])));
    let origin = text(c.bytes(usize::from(sizes[1])));
    let host = text(c.bytes(usize::from(sizes[2])));
    let query = text(c.bytes(usize::from(sizes[3])));
    let (method, path) = match kind % 5 {
        0 => ("POST", "/7"),
        1 => ("GET", "/7"),
        2 => ("GET", "/"),
        3 => ("OPTIONS", "/7"),
        _ => ("POST", "/8"),
    };
    let mut req = format!("{method} {path}?{query} HTTP/1.1\r\nHost: {host}\r\n");
    if kind & 0x10 != 0 {
        req.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if kind & 0x20 != 0 {
        req.push_str(&format!("Origin: {origin}\r\n"));
    }
    if kind & 0x40 != 0 {
        req.push_str("Access-Control-Request-Method: POST\r\n");
    }
    if path == "/7" && method == "GET" {
        req.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    }
    req.push_str("Content-Length: 0\r\n\r\n");

    let first = response(mode, req.as_bytes());
    assert_eq!(
        first,
        response(mode, req.as_bytes()),
        "the same request decided twice differently"
    );
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let parsed = r.parse(&first).expect("a well-formed response");
    assert!(parsed.is_complete(), "one whole response");
    let status = r.code.unwrap();
    // Refusals come before routing: 401 and 403 never depend on a listener, and a refused
    // request never gets a routing answer.
    if status == 401 {
        assert!(r
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("www-authenticate")));
    }
    if !mode.is_multiple_of(3) && method == "POST" && kind & 0x10 == 0 && !query.contains("token=") {
        assert!(
            !matches!(status, 101 | 204 | 404),
            "no credentials, yet routed: {status}"
        );
    }
});
