//! Helpers shared by the security modules (§5 auth, §6 CORS, §7 stats token, §8 TLS).

use std::time::Duration;

use fedbroker_tests::*;

/// `Bearer <token>`, the value of an `Authorization` header.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `POST path` on a new connection with `Authorization: Bearer <token>`.
#[track_caller]
pub fn post_bearer(broker: &Broker, path: &str, token: &str, body: &[u8]) -> Response {
    broker
        .connect()
        .request("POST", path, &[("Authorization", &bearer(token))], body)
}

/// `POST path` on a new connection with extra `headers`.
#[track_caller]
pub fn post_with(broker: &Broker, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    broker.connect().request("POST", path, headers, body)
}

/// A WebSocket upgrade of `path` on a new connection, by hand, with extra `headers`: for refusals,
/// whose status, headers and body a WebSocket library would hide.
#[track_caller]
pub fn upgrade_with(broker: &Broker, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut all = UPGRADE_HEADERS.to_vec();
    all.extend_from_slice(headers);
    broker.connect().request("GET", path, &all, b"")
}

/// `401` per §3/§5: error shape, and a `WWW-Authenticate` challenge for the Bearer scheme.
#[track_caller]
pub fn assert_unauthorized(response: &Response) {
    response.assert_error(401);
    let challenge = response.expect_header("www-authenticate");
    assert!(
        challenge
            .get(..6)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer")),
        "401 must challenge with `WWW-Authenticate: Bearer …`:\n{response:?}"
    );
}

/// `403` per §3: error shape.
#[track_caller]
pub fn assert_forbidden(response: &Response) {
    response.assert_error(403);
}

/// What a refusal looks like from outside, minus the `Date` header: used to check that two
/// refusals are indistinguishable.
pub fn shape(response: &Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<(String, String)> = response
        .headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("date"))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
        .collect();
    headers.sort();
    (response.status, headers, response.body.clone())
}

/// A usage error: exit code 2 and one line on stderr that mentions one of `names` (case-insensitive).
#[track_caller]
pub fn assert_usage_error(out: &CliOutput, names: &[&str]) {
    assert_eq!(out.code(), 2, "a bad flag, config or file must exit 2: {out:?}");
    let stderr = out.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "want exactly one line on stderr: {out:?}");
    let lower = stderr.to_ascii_lowercase();
    assert!(
        names.iter().any(|name| lower.contains(&name.to_ascii_lowercase())),
        "stderr should name the problem (one of {names:?}): {out:?}"
    );
}

/// Stops `broker` with SIGTERM (so that everything it logged is written) and returns its stderr.
pub fn stop_and_read_stderr(mut broker: Broker) -> String {
    broker.signal(libc::SIGTERM);
    broker.wait_exit(Duration::from_secs(10));
    broker.stderr()
}

/// Asserts that none of `secrets` occurs in `log`.
#[track_caller]
pub fn assert_not_logged(log: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "credential {secret:?} appears in the broker's log (SPEC §5: tokens never appear in logs):\n{log}"
        );
    }
}
