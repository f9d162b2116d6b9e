//! Every authorization decision of the built-in modes: mode × action × id in/out of range ×
//! token missing/invalid/expired/valid, plus the JWT refusals (alg none, algorithm confusion,
//! audience, issuer, not-before, leeway) and the stats token.

mod common;

use std::time::Duration;

use common::*;
use fedbroker_core::auth::{decision_channel, IdSet, JwtAuthorizer, JwtOptions, StaticTokens, TokenSpec, TokensFile};
use fedbroker_core::{Action, AllowAll, AuthRequest, AuthTime, Authorizer, Broker, Config, Decision, Id};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const ALLOW: Decision = Decision::Allow { until: None };

fn time(clock: &Clock) -> AuthTime {
    AuthTime {
        now: clock.0,
        since_epoch: Duration::from_secs(NOW),
    }
}

fn decide(a: &dyn Authorizer, action: Action, id: u32, token: Option<&str>, t: AuthTime) -> Decision {
    let req = AuthRequest {
        action,
        id: if action == Action::ReadStats {
            None
        } else {
            Some(Id::new(id).unwrap())
        },
        token: token.map(str::to_owned),
        query: None,
        origin: None,
    };
    let (reply, pending) = decision_channel();
    a.authorize(&req, t, reply);
    pending.try_take().expect("built-in authorizers decide at once")
}

fn ids(items: serde_json::Value) -> IdSet {
    serde_json::from_value(items).unwrap()
}

/// The grant every mode is tested with: listen on 42, send to 100-200 and 7.
fn grant() -> (IdSet, IdSet) {
    (ids(json!([42])), ids(json!(["100-200", 7])))
}

/// (action, id, whether the grant covers it)
const CASES: [(Action, u32, bool); 7] = [
    (Action::Listen, 42, true),
    (Action::Listen, 43, false),
    (Action::Send, 100, true),
    (Action::Send, 200, true),
    (Action::Send, 7, true),
    (Action::Send, 201, false),
    (Action::Send, 42, false),
];

#[test]
fn open_mode_allows_everything() {
    let clock = Clock::new();
    for (action, id, _) in CASES {
        assert_eq!(decide(&AllowAll, action, id, None, time(&clock)), ALLOW);
    }
}

#[test]
fn tokens_file_matrix() {
    let clock = Clock::new();
    let (listen, send) = grant();
    let hashed = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(b"hashed-secret");
        d.iter().map(|b| format!("{b:02X}")).collect::<String>()
    };
    let file = TokensFile {
        token: vec![
            TokenSpec {
                token: Some("plain-secret".into()),
                listen: listen.clone(),
                send: send.clone(),
                ..Default::default()
            },
            TokenSpec {
                token_sha256: Some(hashed),
                listen,
                send,
                ..Default::default()
            },
            TokenSpec {
                token: Some("stats-only".into()),
                ..Default::default()
            },
        ],
    };
    let a = StaticTokens::new(file).unwrap();
    for token in ["plain-secret", "hashed-secret"] {
        for (action, id, covered) in CASES {
            let want = if covered { ALLOW } else { Decision::Forbidden };
            assert_eq!(
                decide(&a, action, id, Some(token), time(&clock)),
                want,
                "{token} {action:?} {id}"
            );
        }
    }
    for (action, id, _) in CASES {
        assert_eq!(decide(&a, action, id, None, time(&clock)), Decision::Unauthenticated);
        assert_eq!(
            decide(&a, action, id, Some("wrong"), time(&clock)),
            Decision::Unauthenticated
        );
        assert_eq!(
            decide(&a, action, id, Some("plain-secre"), time(&clock)),
            Decision::Unauthenticated
        );
        assert_eq!(
            decide(&a, action, id, Some("stats-only"), time(&clock)),
            Decision::Forbidden
        );
    }
    // Statistics are the stats token's business, not the tokens file's.
    assert_eq!(decide(&a, Action::ReadStats, 0, None, time(&clock)), ALLOW);
}

#[test]
fn tokens_file_refusals() {
    let bad = [
        TokenSpec::default(),
        TokenSpec {
            token: Some(String::new()),
            ..Default::default()
        },
        TokenSpec {
            token: Some("a".into()),
            token_sha256: Some("00".repeat(32)),
            ..Default::default()
        },
        TokenSpec {
            token_sha256: Some("zz".repeat(32)),
            ..Default::default()
        },
        TokenSpec {
            token_sha256: Some("00".repeat(31)),
            ..Default::default()
        },
    ];
    for spec in bad {
        let shown = format!("{spec:?}");
        assert!(StaticTokens::new(TokensFile { token: vec![spec] }).is_err(), "{shown}");
    }
    assert!(
        StaticTokens::new(TokensFile::default()).is_err(),
        "an empty file lets nobody in"
    );
}

/// A token with the standard grant, signed as given, with extra claims merged in.
fn jwt(alg: Algorithm, key: &EncodingKey, extra: serde_json::Value) -> String {
    let mut claims = json!({"listen": [42], "send": ["100-200", 7]});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn key_file(name: &str) -> Vec<u8> {
    let pem: &[u8] = match name {
        "rsa.key" => include_bytes!("keys/rsa.key"),
        "rsa.pub" => include_bytes!("keys/rsa.pub"),
        "ec.key" => include_bytes!("keys/ec.key"),
        "ec.pub" => include_bytes!("keys/ec.pub"),
        "ed25519.key" => include_bytes!("keys/ed25519.key"),
        "ed25519.pub" => include_bytes!("keys/ed25519.pub"),
        "p384.pub" => include_bytes!("keys/p384.pub"),
        other => panic!("no test key {other}"),
    };
    pem.to_vec()
}

/// Every signing mode: (authorizer, algorithm, signing key).
fn jwt_modes(options: JwtOptions) -> Vec<(JwtAuthorizer, Algorithm, EncodingKey)> {
    let secret = b"0123456789abcdef0123456789abcdef-and-more";
    let mut modes = Vec::new();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        modes.push((
            JwtAuthorizer::hmac(secret, options.clone()).unwrap(),
            alg,
            EncodingKey::from_secret(secret),
        ));
    }
    modes.push((
        JwtAuthorizer::public_key_pem(&key_file("rsa.pub"), options.clone()).unwrap(),
        Algorithm::RS256,
        EncodingKey::from_rsa_pem(&key_file("rsa.key")).unwrap(),
    ));
    modes.push((
        JwtAuthorizer::public_key_pem(&key_file("ec.pub"), options.clone()).unwrap(),
        Algorithm::ES256,
        EncodingKey::from_ec_pem(&key_file("ec.key")).unwrap(),
    ));
    modes.push((
        JwtAuthorizer::public_key_pem(&key_file("ed25519.pub"), options).unwrap(),
        Algorithm::EdDSA,
        EncodingKey::from_ed_pem(&key_file("ed25519.key")).unwrap(),
    ));
    modes
}

#[test]
fn jwt_matrix() {
    let clock = Clock::new();
    let t = time(&clock);
    for (a, alg, key) in jwt_modes(JwtOptions::default()) {
        let valid = jwt(alg, &key, json!({"exp": NOW + 60}));
        let no_exp = jwt(alg, &key, json!({}));
        let expired = jwt(alg, &key, json!({"exp": NOW}));
        let early = jwt(alg, &key, json!({"nbf": NOW + 1, "exp": NOW + 60}));
        let on_nbf = jwt(alg, &key, json!({"nbf": NOW, "exp": NOW + 60}));
        for (action, id, covered) in CASES {
            let allowed = |until| {
                if covered {
                    Decision::Allow { until }
                } else {
                    Decision::Forbidden
                }
            };
            let ctx = format!("{alg:?} {action:?} {id}");
            assert_eq!(
                decide(&a, action, id, Some(&valid), t),
                allowed(Some(clock.0 + Duration::from_secs(60))),
                "{ctx}"
            );
            assert_eq!(decide(&a, action, id, Some(&no_exp), t), allowed(None), "{ctx}");
            assert_eq!(
                decide(&a, action, id, Some(&on_nbf), t),
                allowed(Some(clock.0 + Duration::from_secs(60))),
                "{ctx}"
            );
            for bad in [
                None,
                Some(expired.as_str()),
                Some(early.as_str()),
                Some("garbage"),
                Some("a.b.c"),
            ] {
                assert_eq!(
                    decide(&a, action, id, bad, t),
                    Decision::Unauthenticated,
                    "{ctx} {bad:?}"
                );
            }
            // A valid token with its signature tampered with.
            let mut tampered = valid.clone();
            let last = tampered.pop().unwrap();
            tampered.push(if last == 'A' { 'B' } else { 'A' });
            assert_eq!(
                decide(&a, action, id, Some(&tampered), t),
                Decision::Unauthenticated,
                "{ctx}"
            );
        }
        assert_eq!(decide(&a, Action::ReadStats, 0, None, t), ALLOW);
    }
}

#[test]
fn jwt_refuses_none_and_algorithm_confusion() {
    let clock = Clock::new();
    let t = time(&clock);
    use base64_url as b64;
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(format!(r#"{{"listen":[42],"exp":{}}}"#, NOW + 60).as_bytes());
    let none = format!("{header}.{payload}.");
    for (a, _, _) in jwt_modes(JwtOptions::default()) {
        assert_eq!(
            decide(&a, Action::Listen, 42, Some(&none), t),
            Decision::Unauthenticated
        );
    }
    // HS256 signed with the public key's PEM as the HMAC secret, against that public key.
    for name in ["rsa.pub", "ec.pub", "ed25519.pub"] {
        let pem = key_file(name);
        let a = JwtAuthorizer::public_key_pem(&pem, JwtOptions::default()).unwrap();
        let forged = jwt(
            Algorithm::HS256,
            &EncodingKey::from_secret(&pem),
            json!({"exp": NOW + 60}),
        );
        assert_eq!(
            decide(&a, Action::Listen, 42, Some(&forged), t),
            Decision::Unauthenticated,
            "{name}"
        );
    }
    // A token for one key is no good with another of the same kind.
    let other = JwtAuthorizer::hmac(&[7u8; 32], JwtOptions::default()).unwrap();
    let token = jwt(Algorithm::HS256, &EncodingKey::from_secret(&[8u8; 32]), json!({}));
    assert_eq!(
        decide(&other, Action::Listen, 42, Some(&token), t),
        Decision::Unauthenticated
    );
}

fn base64_url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (u32::from(c) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

#[test]
fn jwt_audience_issuer_leeway() {
    let clock = Clock::new();
    let t = time(&clock);
    let secret = [9u8; 32];
    let key = EncodingKey::from_secret(&secret);
    let opts = JwtOptions {
        audience: Some("brokers".into()),
        issuer: Some("app".into()),
        leeway: 0,
    };
    let a = JwtAuthorizer::hmac(&secret, opts).unwrap();
    let good = jwt(Algorithm::HS256, &key, json!({"aud": "brokers", "iss": "app"}));
    assert_eq!(decide(&a, Action::Listen, 42, Some(&good), t), ALLOW);
    for claims in [
        json!({"iss": "app"}),
        json!({"aud": "brokers"}),
        json!({"aud": "other", "iss": "app"}),
        json!({"aud": "brokers", "iss": "other"}),
    ] {
        let tok = jwt(Algorithm::HS256, &key, claims.clone());
        assert_eq!(
            decide(&a, Action::Listen, 42, Some(&tok), t),
            Decision::Unauthenticated,
            "{claims}"
        );
    }
    let lenient = JwtAuthorizer::hmac(
        &secret,
        JwtOptions {
            leeway: 30,
            ..Default::default()
        },
    )
    .unwrap();
    let just_expired = jwt(Algorithm::HS256, &key, json!({"exp": NOW - 10}));
    let until = Some(clock.0 + Duration::from_secs(20));
    assert_eq!(
        decide(&lenient, Action::Listen, 42, Some(&just_expired), t),
        Decision::Allow { until }
    );
    let long_expired = jwt(Algorithm::HS256, &key, json!({"exp": NOW - 30}));
    assert_eq!(
        decide(&lenient, Action::Listen, 42, Some(&long_expired), t),
        Decision::Unauthenticated
    );
    let soon = jwt(Algorithm::HS256, &key, json!({"nbf": NOW + 30}));
    assert_eq!(decide(&lenient, Action::Listen, 42, Some(&soon), t), ALLOW);
    assert!(
        JwtAuthorizer::hmac(&[1u8; 31], JwtOptions::default()).is_err(),
        "short secrets are refused"
    );
    assert!(
        JwtAuthorizer::public_key_pem(&key_file("ec.key"), JwtOptions::default()).is_err(),
        "private key given"
    );
}

#[test]
fn jwt_listener_is_closed_4001_when_its_token_expires() {
    let mut clock = Clock::new();
    let secret = [5u8; 32];
    let a = JwtAuthorizer::hmac(&secret, JwtOptions::default()).unwrap();
    let broker = Broker::with_authorizer(Config::default(), "sim", a, clock.0, Duration::from_secs(NOW));
    let token = jwt(
        Algorithm::HS256,
        &EncodingKey::from_secret(&secret),
        json!({"exp": NOW + 5}),
    );
    let mut s = broker.accept(clock.0);
    s.handle_input(
        clock.0,
        format!("GET /42?token={token} HTTP/1.1\r\nHost: sim\r\n{UPGRADE_HEADERS}\r\n").as_bytes(),
    );
    let mut wire = bytes::BytesMut::from(&drain(&mut s, clock.0)[..]);
    assert_eq!(take_response(&mut wire, false).unwrap().0, 101);
    // The expiry is a timer of the session, before the first ping.
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, clock.0 + Duration::from_secs(5));
    let now = clock.advance(Duration::from_secs(5));
    s.handle_timeout(now);
    wire.extend_from_slice(&drain(&mut s, now));
    let frames = take_frames(&mut wire);
    assert_eq!(frames.len(), 1);
    assert_eq!(close_code(&frames[0].1), 4001);
    assert_eq!(&frames[0].1[2..], b"token expired");
    // Sending with an expired token is refused.
    let mut sender = broker.accept(now);
    sender.handle_input(
        now,
        format!("POST /42 HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(responses(&drain(&mut sender, now))[0].0, 401);
}

#[test]
fn stats_token_guards_statistics_only() {
    let clock = Clock::new();
    let mut c = Config::default();
    c.stats_token = Some("st4ts".into());
    let broker = Broker::new(c, "sim", clock.0, Duration::from_secs(NOW));
    for (req, status) in [
        ("GET / HTTP/1.1\r\nHost: s\r\n\r\n", 401),
        (
            "GET /metrics HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer nope\r\n\r\n",
            401,
        ),
        ("GET / HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer st4ts\r\n\r\n", 200),
        ("GET /metrics?token=st4ts HTTP/1.1\r\nHost: s\r\n\r\n", 200),
        ("GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n", 200),
        ("POST /9 HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n", 404),
    ] {
        let mut s = broker.accept(clock.0);
        s.handle_input(clock.0, req.as_bytes());
        let rs = responses(&drain(&mut s, clock.0));
        assert_eq!(rs[0].0, status, "{req}");
        if status == 401 {
            assert!(rs[0].1.contains(&("www-authenticate".into(), "Bearer".into())));
        }
    }
}

#[test]
fn failed_auth_says_nothing_about_listeners() {
    let clock = Clock::new();
    let tokens = StaticTokens::new(TokensFile {
        token: vec![
            TokenSpec {
                token: Some("l".into()),
                listen: ids(json!([1, 2])),
                ..Default::default()
            },
            TokenSpec {
                token: Some("s".into()),
                send: ids(json!([3])),
                ..Default::default()
            },
        ],
    })
    .unwrap();
    let broker = Broker::with_authorizer(Config::default(), "sim", tokens, clock.0, Duration::from_secs(NOW));
    let mut l = broker.accept(clock.0);
    l.handle_input(
        clock.0,
        format!("GET /1 HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer l\r\n{UPGRADE_HEADERS}\r\n").as_bytes(),
    );
    assert!(drain(&mut l, clock.0).starts_with(b"HTTP/1.1 101 "));
    let answer = |id: u32, token: &str| {
        let mut s = broker.accept(clock.0);
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        s.handle_input(
            clock.0,
            format!("POST /{id} HTTP/1.1\r\nHost: s\r\n{auth}Content-Length: 1\r\n\r\nx").as_bytes(),
        );
        responses(&drain(&mut s, clock.0)).remove(0)
    };
    // Id 1 has a listener, id 2 has none: a refused sender cannot tell them apart.
    for token in ["", "bad", "s"] {
        assert_eq!(answer(1, token), answer(2, token), "token {token:?}");
    }
    assert_eq!(answer(1, "").0, 401);
    assert_eq!(answer(1, "s").0, 403);
}

#[test]
fn jwt_time_is_exact_and_fractional_dates_work() {
    let clock = Clock::new();
    let secret = [3u8; 32];
    let key = EncodingKey::from_secret(&secret);
    let a = JwtAuthorizer::hmac(&secret, JwtOptions::default()).unwrap();
    let at = |secs: f64| AuthTime {
        now: clock.0,
        since_epoch: Duration::from_secs_f64(secs),
    };
    let tok = jwt(
        Algorithm::HS256,
        &key,
        json!({"exp": NOW as f64 + 0.5, "nbf": NOW as f64 - 0.25}),
    );
    let until = Some(clock.0 + Duration::from_millis(250));
    assert_eq!(
        decide(&a, Action::Listen, 42, Some(&tok), at(NOW as f64 + 0.25)),
        Decision::Allow { until }
    );
    assert_eq!(
        decide(&a, Action::Listen, 42, Some(&tok), at(NOW as f64 + 0.5)),
        Decision::Unauthenticated
    );
    assert_eq!(
        decide(&a, Action::Listen, 42, Some(&tok), at(NOW as f64 - 0.5)),
        Decision::Unauthenticated
    );
}

#[test]
fn broker_wall_clock_follows_a_stepped_system_clock() {
    let mut clock = Clock::new();
    let broker = Broker::new(Config::default(), "sim", clock.0, Duration::from_secs(NOW));
    let later = clock.advance(Duration::from_millis(1500));
    assert_eq!(broker.wall_clock(later), Duration::from_millis(NOW * 1000 + 1500));
    broker.set_wall_clock(later, Duration::from_secs(NOW + 3600));
    let after = clock.advance(Duration::from_secs(1));
    assert_eq!(broker.wall_clock(after), Duration::from_secs(NOW + 3601));
}
