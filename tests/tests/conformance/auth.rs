//! §5 open mode and the tokens file (`--auth-tokens`), §7 `--stats-token`, and credentials kept out
//! of the logs.

use sha2::{Digest, Sha256};

use crate::support::*;
use fedbroker_tests::*;

/// Listens on 42 and 100..=200, sends to 1..=1000 and 5000.
const ALPHA: &str = "tok-alpha-5f2c9e71";
/// Stored as `token_sha256` only; listens anywhere, sends nowhere.
const BETA: &str = "tok-beta-81d4a7c2";
/// Sends anywhere, listens nowhere.
const GAMMA: &str = "tok-gamma-c03b11d8";
/// Listens on 9; its text needs percent-encoding in a query (`+`, `/`, `=`).
const DELTA: &str = "tok-delta+/=9e";
/// Known to no broker.
const UNKNOWN: &str = "tok-unknown-aa93f0b4";
/// The statistics token of the §7 tests.
const STATS: &str = "stats-tok-7d1e44aa";

/// Lower-case hex SHA-256 of `text`.
fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tokens file of these tests (SPEC §5 syntax).
fn tokens_toml() -> String {
    format!(
        r#"# fedbroker test tokens
[[token]]
token = "{ALPHA}"
listen = [42, "100-200"]
send = ["1-1000", 5000]

[[token]]
token_sha256 = "{beta}"
listen = ["*"]

[[token]]
token = "{GAMMA}"
send = ["*"]

[[token]]
token = "{DELTA}"
listen = [9]
"#,
        beta = sha256_hex(BETA)
    )
}

/// A broker in tokens-file mode with `extra` flags.
fn tokens_broker(a: Adapter, extra: &[&str]) -> Broker {
    Broker::builder(a)
        .file_arg("--auth-tokens", "tokens.toml", tokens_toml())
        .args(extra)
        .start()
}

adapter_tests! {
    /// Open mode (no auth flag) on loopback: anyone listens, sends and reads the statistics.
    fn open_mode_allows_everything_on_loopback(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut listener = broker.listen(42);
        broker.post(42, b"open").assert_status(204);
        assert_eq!(listener.recv(), b"open");
        broker.get("/").assert_status(200);
        broker.get("/metrics").assert_status(200);
        broker.get("/healthz").assert_status(200);
    }

    /// All of 127.0.0.0/8 is loopback: open mode is allowed there too.
    fn open_mode_allowed_on_any_loopback_address(a: Adapter) {
        let broker = Broker::start(a, &["--listen", "127.0.0.2:0"]);
        assert_eq!(broker.addr().ip().to_string(), "127.0.0.2");
        let mut listener = broker.listen(42);
        broker.post(42, b"lo").assert_status(204);
        assert_eq!(listener.recv(), b"lo");
    }

    /// Open mode on a non-loopback address refuses to start (before binding anything): exit 2, one
    /// line that points at `--allow-anonymous`. Also when only one of several addresses is public,
    /// and when the address comes from the config file.
    fn open_mode_refused_on_non_loopback_address(a: Adapter) {
        let out = run_cli(a, &["--listen", "192.0.2.1:0"]);
        assert_usage_error(&out, &["--allow-anonymous"]);

        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--listen", "192.0.2.1:0"]);
        assert_usage_error(&out, &["--allow-anonymous"]);

        let dir = TempDir::new();
        let config = dir.file("public.toml", "listen = [\"192.0.2.1:0\"]\n");
        let out = run_cli(a, &["--config", &config]);
        assert_usage_error(&out, &["--allow-anonymous", "allow_anonymous"]);
    }

    /// With `--allow-anonymous` the same command passes validation; it then fails to bind the
    /// address (this machine does not own 192.0.2.1), which is not a usage error.
    fn allow_anonymous_passes_validation(a: Adapter) {
        let out = run_cli(a, &["--listen", "192.0.2.1:0", "--allow-anonymous"]);
        assert_ne!(out.code(), 2, "--allow-anonymous must lift the open-mode refusal: {out:?}");
        assert_ne!(out.code(), 0, "binding 192.0.2.1 cannot succeed here: {out:?}");
    }

    /// An authentication mode needs no `--allow-anonymous` on a non-loopback address.
    fn auth_mode_allowed_on_non_loopback(a: Adapter) {
        let dir = TempDir::new();
        let tokens = dir.file("tokens.toml", tokens_toml());
        let out = run_cli(a, &["--listen", "192.0.2.1:0", "--auth-tokens", &tokens]);
        assert_ne!(out.code(), 2, "a tokens file is not the open mode: {out:?}");
    }

    /// Two authentication modes at once are a usage error.
    fn two_auth_modes_exit_2(a: Adapter) {
        let dir = TempDir::new();
        let tokens = dir.file("tokens.toml", tokens_toml());
        let secret = dir.file("jwt.secret", "0123456789abcdef0123456789abcdef");
        let out = run_cli(
            a,
            &["--listen", "127.0.0.1:0", "--auth-tokens", &tokens, "--auth-jwt-secret", &secret],
        );
        assert_usage_error(&out, &["auth"]);
    }

    /// Credentials as `Authorization: Bearer` and as `?token=` (other query parameters around it),
    /// for sending and for listening; each request is authorized on its own, even on one connection.
    fn tokens_header_and_query_forms(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        let alpha = bearer(ALPHA);

        // Listen: header form on 42, query form on 150 (a range), hashed token on 7.
        let mut on_42 = broker.listen_with("/42", &[("Authorization", &alpha)]);
        let mut on_150 = broker.listen_with(&format!("/150?token={ALPHA}"), &[]);
        let mut on_7 = broker.listen_with(&format!("/7?client=web&token={BETA}&x=1"), &[]);

        let mut conn = broker.connect();
        conn.request("POST", "/42", &[("Authorization", &alpha)], b"header")
            .assert_status(204);
        assert_eq!(on_42.recv(), b"header");
        conn.request("POST", &format!("/42?token={ALPHA}"), &[], b"query")
            .assert_status(204);
        assert_eq!(on_42.recv(), b"query");
        conn.request("POST", &format!("/150?a=b&token={ALPHA}"), &[], b"range")
            .assert_status(204);
        assert_eq!(on_150.recv(), b"range");
        // Same connection, no credentials this time: refused; then (if the connection stays open)
        // credentials again: accepted.
        let refused = conn.request("POST", "/42", &[], b"anonymous");
        assert_unauthorized(&refused);
        if !refused.has_token("connection", "close") {
            conn.request("POST", "/42", &[("Authorization", &alpha)], b"again")
                .assert_status(204);
            assert_eq!(on_42.recv(), b"again");
        }
        let mut conn = broker.connect();
        conn.request("POST", "/7", &[("Authorization", &bearer(GAMMA))], b"gamma")
            .assert_status(204);
        assert_eq!(on_7.recv(), b"gamma");
        assert_eq!(broker.stat("listeners"), 3);
    }

    /// `?token=` is percent-decoded like any query value.
    fn query_token_is_percent_decoded(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        let mut listener = broker.listen_with("/9?token=tok-delta%2B%2F%3D9e", &[]);
        post_bearer(&broker, "/9", GAMMA, b"decoded").assert_status(204);
        assert_eq!(listener.recv(), b"decoded");
        broker.listen_with("/9", &[("Authorization", &bearer(DELTA))]);
    }

    /// The `Bearer` scheme name is case-insensitive (RFC 9110 §11.1).
    fn bearer_scheme_is_case_insensitive(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        let mut listener = broker.listen_with("/42", &[("Authorization", &format!("bearer {ALPHA}"))]);
        post_with(&broker, "/42", &[("Authorization", &format!("BEARER {ALPHA}"))], b"x")
            .assert_status(204);
        assert_eq!(listener.recv(), b"x");
    }

    /// No credentials, an unknown token, or another scheme → `401` with `WWW-Authenticate: Bearer`,
    /// for sending and for listening, with and without a listener on the id.
    fn missing_or_unknown_token_401(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        let _listener = broker.listen_with(&format!("/42?token={ALPHA}"), &[]);
        for id in [42, 43] {
            let path = format!("/{id}");
            assert_unauthorized(&post_with(&broker, &path, &[], b"x"));
            assert_unauthorized(&post_bearer(&broker, &path, UNKNOWN, b"x"));
            assert_unauthorized(&post_with(&broker, &format!("{path}?token={UNKNOWN}"), &[], b"x"));
            assert_unauthorized(&post_with(&broker, &format!("{path}?token="), &[], b"x"));
            assert_unauthorized(&post_with(&broker, &path, &[("Authorization", "Basic dXNlcjpwYXNz")], b"x"));
            // The hash of a token is not the token.
            assert_unauthorized(&post_bearer(&broker, &path, &sha256_hex(BETA), b"x"));
            assert_unauthorized(&upgrade_with(&broker, &path, &[]));
            assert_unauthorized(&upgrade_with(&broker, &path, &[("Authorization", &bearer(UNKNOWN))]));
            assert_unauthorized(&upgrade_with(&broker, &format!("{path}?token={UNKNOWN}"), &[]));
        }
        let refused = broker.try_listen_with(&format!("/43?token={UNKNOWN}"), &[]);
        assert!(refused.is_err(), "an unknown token must not listen");
        assert_eq!(broker.stat("listeners"), 1, "a refused upgrade must not register a listener");
    }

    /// A known token used outside its grant → `403`: ids outside its sets and ranges (edges
    /// checked), or an action it has no key for. Inside its grant with nobody listening → `404`.
    fn token_outside_its_grant_403(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        // Listening.
        for id in [100, 200, 42] {
            broker.listen_with(&format!("/{id}?token={ALPHA}"), &[]);
        }
        for id in [41, 43, 99, 201, 2_147_483_647] {
            assert_forbidden(&upgrade_with(&broker, &format!("/{id}?token={ALPHA}"), &[]));
        }
        assert_forbidden(&upgrade_with(&broker, "/42", &[("Authorization", &bearer(GAMMA))]));
        assert_forbidden(&upgrade_with(&broker, "/8", &[("Authorization", &bearer(DELTA))]));
        // Sending.
        for id in [1, 1000, 5000] {
            post_bearer(&broker, &format!("/{id}"), ALPHA, b"x").assert_error(404);
        }
        for id in [1001, 4999, 5001, 2_147_483_647] {
            assert_forbidden(&post_bearer(&broker, &format!("/{id}"), ALPHA, b"x"));
        }
        // BETA may listen anywhere but has no `send` key: it sends nowhere.
        let mut listener = broker.listen_with(&format!("/2147483647?token={BETA}"), &[]);
        assert_forbidden(&post_bearer(&broker, "/2147483647", BETA, b"x"));
        assert_forbidden(&post_bearer(&broker, "/9", DELTA, b"x"));
        post_bearer(&broker, "/2147483647", GAMMA, b"max id").assert_status(204);
        assert_eq!(listener.recv(), b"max id");
    }

    /// A failed auth never reveals whether the id has a listener: the 401 and the 403 for an id are
    /// the same before and after someone listens on it.
    fn failed_auth_does_not_reveal_listener(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        let refusals = |broker: &Broker| {
            [
                post_with(broker, "/150", &[], b"x"),
                post_bearer(broker, "/150", UNKNOWN, b"x"),
                post_bearer(broker, "/150", BETA, b"x"),
                upgrade_with(broker, "/150", &[]),
                upgrade_with(broker, "/150", &[("Authorization", &bearer(GAMMA))]),
            ]
        };
        let before = refusals(&broker);
        let _listener = broker.listen_with(&format!("/150?token={ALPHA}"), &[]);
        let after = refusals(&broker);
        for (before, after) in before.iter().zip(&after) {
            assert!([401, 403].contains(&before.status), "{before:?}");
            assert_eq!(
                shape(before),
                shape(after),
                "a refusal differs once id 150 has a listener:\nwithout: {before:?}\nwith: {after:?}"
            );
        }
    }

    /// Bad tokens files stop the broker at start: exit 2 and one line naming the file.
    fn bad_tokens_files_exit_2(a: Adapter) {
        let dir = TempDir::new();
        let cases = [
            ("not-toml.toml", "[[token]\ntoken = \"x\"\n".to_string()),
            ("open-range.toml", "[[token]]\ntoken = \"x\"\nsend = [\"5-\"]\n".to_string()),
            ("reversed-range.toml", "[[token]]\ntoken = \"x\"\nlisten = [\"9-3\"]\n".to_string()),
            ("zero-id.toml", "[[token]]\ntoken = \"x\"\nlisten = [0]\n".to_string()),
            ("huge-id.toml", "[[token]]\ntoken = \"x\"\nsend = [2147483648]\n".to_string()),
            ("word-id.toml", "[[token]]\ntoken = \"x\"\nsend = [\"all\"]\n".to_string()),
            ("short-hash.toml", format!("[[token]]\ntoken_sha256 = \"{}\"\nlisten = [1]\n", &sha256_hex(BETA)[1..])),
            ("non-hex-hash.toml", format!("[[token]]\ntoken_sha256 = \"{}\"\nlisten = [1]\n", "g".repeat(64))),
            ("unknown-key.toml", "[[token]]\ntoken = \"x\"\nlisten = [1]\nsned = [2]\n".to_string()),
        ];
        for (name, contents) in cases {
            let path = dir.file(name, &contents);
            let out = run_cli(a, &["--listen", "127.0.0.1:0", "--auth-tokens", &path]);
            assert_usage_error(&out, &[name]);
        }
        let missing = dir.path().join("absent-tokens.toml").display().to_string();
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--auth-tokens", &missing]);
        assert_usage_error(&out, &["absent-tokens.toml"]);
    }

    /// The security settings work from `--config` too (keys are the flag names with `_`).
    fn security_settings_from_config_file(a: Adapter) {
        let dir = TempDir::new();
        let tokens = dir.file("tokens.toml", tokens_toml());
        let broker = Broker::builder(a)
            .config(&format!(
                "listen = [\"127.0.0.1:0\"]\nauth_tokens = {tokens:?}\nstats_token = \"{STATS}\"\n\
                 cors_allow_origin = [\"https://app.example\"]\n"
            ))
            .expect_listeners(1)
            .start();
        let mut listener = broker.listen_with(&format!("/42?token={ALPHA}"), &[]);
        assert_unauthorized(&post_with(&broker, "/42", &[], b"x"));
        post_bearer(&broker, "/42", GAMMA, b"configured").assert_status(204);
        assert_eq!(listener.recv(), b"configured");
        assert_unauthorized(&broker.get("/"));
        broker.get(&format!("/?token={STATS}")).assert_status(200);
        let cors = post_with(&broker, "/42", &[("Origin", "https://app.example"), ("Authorization", &bearer(GAMMA))], b"page");
        cors.assert_status(204);
        assert_eq!(cors.header("access-control-allow-origin"), Some("https://app.example"), "{cors:?}");
        assert_eq!(listener.recv(), b"page");
        assert_forbidden(&post_with(&broker, "/42", &[("Origin", "https://evil.example"), ("Authorization", &bearer(GAMMA))], b"x"));
    }

    /// Without `--stats-token` the statistics stay open in tokens mode too.
    fn stats_open_without_stats_token(a: Adapter) {
        let broker = tokens_broker(a, &[]);
        broker.get("/").assert_status(200);
        broker.get("/metrics").assert_status(200);
        broker.get("/healthz").assert_status(200);
    }

    /// `--stats-token`: `/` and `/metrics` need it (header or query) else `401` with
    /// `WWW-Authenticate`; `/healthz` stays open; sending and listening are unaffected in open mode.
    fn stats_token_guards_statistics(a: Adapter) {
        let broker = Broker::start(a, &["--stats-token", STATS]);
        for path in ["/", "/metrics"] {
            assert_unauthorized(&broker.get(path));
            assert_unauthorized(&broker.connect().request("GET", path, &[("Authorization", &bearer(UNKNOWN))], b""));
            assert_unauthorized(&broker.get(&format!("{path}?token={UNKNOWN}")));
            let head = broker.connect().head(path);
            assert_eq!(head.status, 401, "HEAD {path} without the token:\n{head:?}");
            broker
                .connect()
                .request("GET", path, &[("Authorization", &bearer(STATS))], b"")
                .assert_status(200);
            broker.get(&format!("{path}?token={STATS}")).assert_status(200);
        }
        broker.connect().stats(&format!("/?token={STATS}"));
        let health = broker.get("/healthz");
        assert_eq!((health.status, health.body.as_slice()), (200, &b"ok"[..]));

        let mut listener = broker.listen(42);
        broker.post(42, b"still open").assert_status(204);
        assert_eq!(listener.recv(), b"still open");
    }

    /// Under `--base-path` the credentials guard the prefixed routes the same way.
    fn credentials_under_base_path(a: Adapter) {
        let broker = tokens_broker(a, &["--base-path", "/mq", "--stats-token", STATS]);
        let mut listener = Listener::connect(broker.addr(), &format!("/mq/42?token={ALPHA}"));
        assert_unauthorized(&post_with(&broker, "/mq/42", &[], b"x"));
        assert_forbidden(&post_bearer(&broker, "/mq/42", BETA, b"x"));
        post_bearer(&broker, "/mq/42", ALPHA, b"prefixed").assert_status(204);
        assert_eq!(listener.recv(), b"prefixed");
        assert_unauthorized(&broker.get("/mq/"));
        assert_unauthorized(&broker.get("/mq/metrics"));
        broker.get(&format!("/mq/?token={STATS}")).assert_status(200);
        broker.get(&format!("/mq/metrics?token={STATS}")).assert_status(200);
        broker.get("/mq/healthz").assert_status(200);
    }

    /// The stats token and the tokens file are separate: neither opens the other's doors.
    fn stats_token_separate_from_auth_tokens(a: Adapter) {
        let broker = tokens_broker(a, &["--stats-token", STATS]);
        assert_unauthorized(&broker.connect().request("GET", "/", &[("Authorization", &bearer(GAMMA))], b""));
        assert_unauthorized(&broker.get(&format!("/metrics?token={ALPHA}")));
        assert_unauthorized(&post_bearer(&broker, "/42", STATS, b"x"));
        assert_unauthorized(&upgrade_with(&broker, &format!("/42?token={STATS}"), &[]));
        broker.get(&format!("/?token={STATS}")).assert_status(200);
    }

    /// Tokens never appear in the logs, even at `trace`: valid and invalid, header and query, on
    /// requests that succeed and on requests refused for other reasons (bad id, unknown path).
    fn tokens_never_logged(a: Adapter) {
        let broker = tokens_broker(a, &["--log-level", "trace", "--stats-token", STATS]);
        let mut listener = broker.listen_with(&format!("/42?token={ALPHA}"), &[]);
        post_bearer(&broker, "/42", ALPHA, b"1").assert_status(204);
        post_with(&broker, &format!("/42?token={ALPHA}"), &[], b"2").assert_status(204);
        post_bearer(&broker, "/42", GAMMA, b"3").assert_status(204);
        for _ in 0..3 {
            listener.recv();
        }
        let _beta = broker.listen_with("/77", &[("Authorization", &bearer(BETA))]);
        assert_unauthorized(&post_bearer(&broker, "/42", UNKNOWN, b"x"));
        assert_unauthorized(&post_with(&broker, &format!("/42?token={UNKNOWN}"), &[], b"x"));
        assert_unauthorized(&upgrade_with(&broker, &format!("/43?token={UNKNOWN}"), &[]));
        assert_forbidden(&post_bearer(&broker, "/4999", ALPHA, b"x"));
        // Refused for other reasons (invalid id, unknown path), whichever status comes first.
        let _ = broker.get(&format!("/abc?token={ALPHA}"));
        let _ = broker.get(&format!("/no/such/path?token={GAMMA}"));
        broker.get(&format!("/?token={STATS}")).assert_status(200);
        broker
            .connect()
            .request("GET", "/metrics", &[("Authorization", &bearer(STATS))], b"")
            .assert_status(200);
        assert_unauthorized(&broker.get(&format!("/?token={UNKNOWN}")));
        drop(listener);

        let log = stop_and_read_stderr(broker);
        eprintln!("{} bytes of trace log checked", log.len());
        assert_not_logged(&log, &[ALPHA, BETA, GAMMA, UNKNOWN, STATS]);
    }
}
