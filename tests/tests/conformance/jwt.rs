//! §5 JWT mode: `--auth-jwt-secret` (HS256/384/512) and `--auth-jwt-public-key` (RS256, ES256,
//! EdDSA), claims, `exp`/`nbf`/leeway, `aud`/`iss`, forged tokens, and the `4001` close of a listener
//! whose token expires. Tokens are made here with `jsonwebtoken`; keys with rcgen and `rsa`.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::*;
use fedbroker_tests::*;

/// The HMAC secret of these tests (at least 32 bytes).
const SECRET: &[u8] = b"fedbroker-test-secret-0123456789abcdef";

/// Seconds since the Unix epoch.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Claims with `listen`, `send` (each omitted when `Value::Null`) and `exp` an hour ahead.
fn claims(listen: Value, send: Value) -> Value {
    let mut claims = json!({ "exp": now() + 3600, "sub": "fedbroker-tests" });
    if !listen.is_null() {
        claims["listen"] = listen;
    }
    if !send.is_null() {
        claims["send"] = send;
    }
    claims
}

/// `claims` with `key` set to `value` (`Value::Null` removes it).
fn with(mut claims: Value, key: &str, value: Value) -> Value {
    match value {
        Value::Null => {
            claims.as_object_mut().expect("claims object").remove(key);
        }
        value => claims[key] = value,
    }
    claims
}

/// A JWT for `claims` signed with `alg` and `key`.
fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign a test JWT")
}

/// A JWT for `claims`, HS256 with [`SECRET`].
fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
}

/// Unpadded base64url (RFC 4648 §5), for hand-made tokens.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A broker in JWT mode with [`SECRET`] and `extra` flags.
fn hmac_broker(a: Adapter, extra: &[&str]) -> Broker {
    Broker::builder(a)
        .file_arg("--auth-jwt-secret", "jwt.secret", SECRET)
        .args(extra)
        .start()
}

/// A broker in JWT mode with the public key `pem`.
fn public_key_broker(a: Adapter, pem: &str) -> Broker {
    Broker::builder(a)
        .file_arg("--auth-jwt-public-key", "jwt-public.pem", pem)
        .start()
}

/// A token that may send anywhere for an hour.
fn sender() -> String {
    hs256(&claims(Value::Null, json!(["*"])))
}

/// An RSA key pair: the private key as PKCS#1 DER (for `jsonwebtoken`) and the public key as SPKI
/// PEM (for the broker). Made once per test process: RSA generation is slow in a debug build.
fn rsa_keys() -> &'static [(Vec<u8>, String); 2] {
    static KEYS: OnceLock<[(Vec<u8>, String); 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let make = || {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::pkcs8::{EncodePublicKey, LineEnding};
            let mut rng = rsa::rand_core::OsRng;
            let private = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("generate an RSA key");
            let der = private.to_pkcs1_der().expect("PKCS#1 DER").as_bytes().to_vec();
            let pem = private
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("SPKI PEM");
            (der, pem)
        };
        [make(), make()]
    })
}

/// Checks a public-key broker end to end: `good` tokens listen and send; tokens signed with
/// `other` keys, or HS256 with the public key's PEM as the HMAC secret (algorithm confusion), or
/// with `alg: none`, are refused with 401.
fn check_public_key_mode(
    a: Adapter,
    pem: &str,
    alg: Algorithm,
    good: &EncodingKey,
    others: &[(Algorithm, EncodingKey)],
) {
    let broker = public_key_broker(a, pem);
    let listen = sign(alg, good, &claims(json!([42]), Value::Null));
    let send = sign(alg, good, &claims(Value::Null, json!(["1-100"])));
    let mut listener = broker.listen_with(&format!("/42?token={listen}"), &[]);
    post_bearer(&broker, "/42", &send, b"signed").assert_status(204);
    assert_eq!(listener.recv(), b"signed");
    assert_forbidden(&post_bearer(&broker, "/101", &send, b"x"));

    let all = claims(json!(["*"]), json!(["*"]));
    for (other_alg, other_key) in others {
        let forged = sign(*other_alg, other_key, &all);
        assert_unauthorized(&post_bearer(&broker, "/42", &forged, b"x"));
        assert_unauthorized(&upgrade_with(&broker, &format!("/42?token={forged}"), &[]));
    }
    for secret in [pem.as_bytes(), pem.trim_end().as_bytes()] {
        let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(secret), &all);
        assert_unauthorized(&post_bearer(&broker, "/42", &confused, b"x"));
    }
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(all.to_string().as_bytes())
    );
    assert_unauthorized(&post_bearer(&broker, "/42", &none, b"x"));
    // Still the first listener, undisturbed.
    post_bearer(&broker, "/42", &send, b"after").assert_status(204);
    assert_eq!(listener.recv(), b"after");
}

adapter_tests! {
    /// HS256, HS384 and HS512 tokens from the secret file, as header and as `?token=`, to listen
    /// and to send.
    fn hmac_algorithms_accepted(a: Adapter) {
        let broker = hmac_broker(a, &[]);
        let key = EncodingKey::from_secret(SECRET);
        for (id, alg) in [(42u32, Algorithm::HS256), (43, Algorithm::HS384), (44, Algorithm::HS512)] {
            let listen = sign(alg, &key, &claims(json!([id]), Value::Null));
            let send = sign(alg, &key, &claims(Value::Null, json!([id])));
            let mut by_query = broker.listen_with(&format!("/{id}?token={listen}"), &[]);
            post_bearer(&broker, &format!("/{id}"), &send, b"header").assert_status(204);
            assert_eq!(by_query.recv(), b"header", "{alg:?}");
            let mut by_header = broker.listen_with(&format!("/{id}"), &[("Authorization", &bearer(&listen))]);
            assert_eq!(by_query.expect_close(), (4000, "replaced".to_string()));
            post_with(&broker, &format!("/{id}?token={send}"), &[], b"query").assert_status(204);
            assert_eq!(by_header.recv(), b"query", "{alg:?}");
        }
    }

    /// The `listen` and `send` claims grant ids, ranges and `*` per action; a missing claim grants
    /// nothing; inside the grant with nobody listening → 404.
    fn claims_decide_ids_and_actions(a: Adapter) {
        let broker = hmac_broker(a, &[]);
        let token = hs256(&claims(json!([42, "100-200"]), json!(["1-1000", 5000])));
        broker.listen_with(&format!("/150?token={token}"), &[]);
        let _on_42 = broker.listen_with(&format!("/42?token={token}"), &[]);
        for id in [43, 99, 201] {
            assert_forbidden(&upgrade_with(&broker, &format!("/{id}?token={token}"), &[]));
        }
        post_bearer(&broker, "/5000", &token, b"x").assert_error(404);
        for id in [1001, 4999, 5001] {
            assert_forbidden(&post_bearer(&broker, &format!("/{id}"), &token, b"x"));
        }
        let send_only = hs256(&claims(Value::Null, json!(["*"])));
        assert_forbidden(&upgrade_with(&broker, &format!("/42?token={send_only}"), &[]));
        let listen_only = hs256(&claims(json!(["*"]), Value::Null));
        let mut top = broker.listen_with(&format!("/2147483647?token={listen_only}"), &[]);
        assert_forbidden(&post_bearer(&broker, "/2147483647", &listen_only, b"x"));
        post_bearer(&broker, "/2147483647", &send_only, b"top").assert_status(204);
        assert_eq!(top.recv(), b"top");
    }

    /// One trailing newline of the secret file is not part of the secret.
    fn secret_file_trailing_newline_stripped(a: Adapter) {
        let mut file = SECRET.to_vec();
        file.push(b'\n');
        let broker = Broker::builder(a)
            .file_arg("--auth-jwt-secret", "jwt.secret", &file)
            .start();
        let mut listener = broker.listen_with(&format!("/42?token={}", hs256(&claims(json!([42]), Value::Null))), &[]);
        post_bearer(&broker, "/42", &sender(), b"stripped").assert_status(204);
        assert_eq!(listener.recv(), b"stripped");
        let with_newline = sign(Algorithm::HS256, &EncodingKey::from_secret(&file), &claims(Value::Null, json!(["*"])));
        assert_unauthorized(&post_bearer(&broker, "/42", &with_newline, b"x"));
    }

    /// A secret shorter than 32 bytes (after the newline is stripped), or a missing file: exit 2,
    /// one line naming the file. Exactly 32 bytes is enough.
    fn short_or_missing_secret_exit_2(a: Adapter) {
        let dir = TempDir::new();
        let short = dir.file("short.secret", &SECRET[..31]);
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--auth-jwt-secret", &short]);
        assert_usage_error(&out, &["short.secret"]);
        let mut short_line = SECRET[..31].to_vec();
        short_line.push(b'\n');
        let short_line = dir.file("short-line.secret", &short_line);
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--auth-jwt-secret", &short_line]);
        assert_usage_error(&out, &["short-line.secret"]);
        let missing = dir.path().join("absent.secret").display().to_string();
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--auth-jwt-secret", &missing]);
        assert_usage_error(&out, &["absent.secret"]);

        let broker = Broker::builder(a)
            .file_arg("--auth-jwt-secret", "exact.secret", &SECRET[..32])
            .start();
        let _listener = broker.listen_with(&format!("/1?token={}", sign(Algorithm::HS256, &EncodingKey::from_secret(&SECRET[..32]), &claims(json!([1]), Value::Null))), &[]);
    }

    /// A public key file that is not an SPKI PEM key, or is missing: exit 2 naming the file.
    fn bad_public_key_file_exit_2(a: Adapter) {
        let dir = TempDir::new();
        let garbage = dir.file("garbage.pem", "-----BEGIN PUBLIC KEY-----\nnot base64 at all!\n-----END PUBLIC KEY-----\n");
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--auth-jwt-public-key", &garbage]);
        assert_usage_error(&out, &["garbage.pem"]);
        let text = dir.file("text.pem", "hello\n");
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--auth-jwt-public-key", &text]);
        assert_usage_error(&out, &["text.pem"]);
        let missing = dir.path().join("absent.pem").display().to_string();
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--auth-jwt-public-key", &missing]);
        assert_usage_error(&out, &["absent.pem"]);
    }

    /// `exp` and `nbf` are enforced exactly (no leeway by default): expired or not yet valid → 401,
    /// to send and to listen.
    fn exp_and_nbf_enforced_exactly(a: Adapter) {
        let broker = hmac_broker(a, &[]);
        let all = claims(json!(["*"]), json!(["*"]));
        let expired = hs256(&with(all.clone(), "exp", json!(now() - 5)));
        let early = hs256(&with(all.clone(), "nbf", json!(now() + 10)));
        for token in [&expired, &early] {
            assert_unauthorized(&post_bearer(&broker, "/42", token, b"x"));
            assert_unauthorized(&upgrade_with(&broker, &format!("/42?token={token}"), &[]));
        }
        let current = hs256(&with(all, "nbf", json!(now() - 5)));
        let mut listener = broker.listen_with(&format!("/42?token={current}"), &[]);
        post_bearer(&broker, "/42", &current, b"valid").assert_status(204);
        assert_eq!(listener.recv(), b"valid");
    }

    /// `--auth-jwt-leeway` relaxes `exp` and `nbf` by that many seconds, no more.
    fn leeway_relaxes_exp_and_nbf(a: Adapter) {
        let broker = hmac_broker(a, &["--auth-jwt-leeway", "60"]);
        let all = claims(json!(["*"]), json!(["*"]));
        let lately_expired = hs256(&with(all.clone(), "exp", json!(now() - 20)));
        let nearly_valid = hs256(&with(all.clone(), "nbf", json!(now() + 20)));
        let mut listener = broker.listen_with(&format!("/42?token={lately_expired}"), &[]);
        post_bearer(&broker, "/42", &nearly_valid, b"within leeway").assert_status(204);
        assert_eq!(listener.recv(), b"within leeway");
        let long_expired = hs256(&with(all.clone(), "exp", json!(now() - 300)));
        let far_future = hs256(&with(all, "nbf", json!(now() + 300)));
        for token in [&long_expired, &far_future] {
            assert_unauthorized(&post_bearer(&broker, "/42", token, b"x"));
        }
    }

    /// With `--auth-jwt-audience`/`--auth-jwt-issuer`, `aud` and `iss` are required and must match
    /// (`aud` may be an array that contains the audience, RFC 7519 §4.1.3).
    fn audience_and_issuer_checked(a: Adapter) {
        let broker = hmac_broker(
            a,
            &["--auth-jwt-audience", "fedbroker-test", "--auth-jwt-issuer", "https://issuer.test"],
        );
        let base = with(
            with(claims(json!(["*"]), json!(["*"])), "aud", json!("fedbroker-test")),
            "iss",
            json!("https://issuer.test"),
        );
        let mut listener = broker.listen_with(&format!("/42?token={}", hs256(&base)), &[]);
        post_bearer(&broker, "/42", &hs256(&base), b"aud+iss").assert_status(204);
        assert_eq!(listener.recv(), b"aud+iss");
        let listed = with(base.clone(), "aud", json!(["someone-else", "fedbroker-test"]));
        post_bearer(&broker, "/42", &hs256(&listed), b"aud list").assert_status(204);
        assert_eq!(listener.recv(), b"aud list");

        for (key, value) in [
            ("aud", json!("someone-else")),
            ("aud", json!(["someone-else"])),
            ("aud", Value::Null),
            ("iss", json!("https://other.test")),
            ("iss", Value::Null),
        ] {
            let token = hs256(&with(base.clone(), key, value.clone()));
            let response = post_bearer(&broker, "/42", &token, b"x");
            assert_eq!(response.status, 401, "{key} = {value}:\n{response:?}");
            assert_unauthorized(&response);
        }
    }

    /// `alg: none`, another secret, a tampered payload, or not a JWT at all → 401.
    fn forged_tokens_refused(a: Adapter) {
        let broker = hmac_broker(a, &[]);
        let _listener = broker.listen_with(&format!("/42?token={}", hs256(&claims(json!([42]), Value::Null))), &[]);
        let all = claims(json!(["*"]), json!(["*"]));
        let payload = b64url(all.to_string().as_bytes());
        let mut forged = vec![
            format!("{}.{payload}.", b64url(br#"{"alg":"none","typ":"JWT"}"#)),
            format!("{}.{payload}.", b64url(br#"{"alg":"None"}"#)),
            sign(Algorithm::HS256, &EncodingKey::from_secret(b"another-secret-of-more-than-32-bytes!"), &all),
            "not-a-jwt".to_string(),
            "a.b.c".to_string(),
        ];
        // A genuine token for id 1 with its payload swapped for one that grants everything.
        let genuine = hs256(&claims(json!([1]), json!([1])));
        let parts: Vec<&str> = genuine.split('.').collect();
        forged.push(format!("{}.{payload}.{}", parts[0], parts[2]));
        // And with its signature stripped.
        forged.push(format!("{}.{}.", parts[0], parts[1]));

        for token in &forged {
            assert_unauthorized(&post_bearer(&broker, "/42", token, b"x"));
            assert_unauthorized(&upgrade_with(&broker, &format!("/43?token={token}"), &[]));
        }
    }

    /// ES256 with an EC P-256 SPKI public key.
    fn es256_public_key(a: Adapter) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        check_public_key_mode(
            a,
            &key.public_key_pem(),
            Algorithm::ES256,
            &EncodingKey::from_ec_der(key.serialized_der()),
            &[
                (Algorithm::ES256, EncodingKey::from_ec_der(other.serialized_der())),
                (Algorithm::EdDSA, EncodingKey::from_ed_der(ed.serialized_der())),
                (Algorithm::HS256, EncodingKey::from_secret(SECRET)),
            ],
        );
    }

    /// EdDSA with an Ed25519 SPKI public key.
    fn eddsa_public_key(a: Adapter) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        check_public_key_mode(
            a,
            &key.public_key_pem(),
            Algorithm::EdDSA,
            &EncodingKey::from_ed_der(key.serialized_der()),
            &[
                (Algorithm::EdDSA, EncodingKey::from_ed_der(other.serialized_der())),
                (Algorithm::ES256, EncodingKey::from_ec_der(ec.serialized_der())),
            ],
        );
    }

    /// RS256 with an RSA SPKI public key.
    fn rs256_public_key(a: Adapter) {
        let [(der, pem), (other_der, _)] = rsa_keys();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        check_public_key_mode(
            a,
            pem,
            Algorithm::RS256,
            &EncodingKey::from_rsa_der(der),
            &[
                (Algorithm::RS256, EncodingKey::from_rsa_der(other_der)),
                (Algorithm::ES256, EncodingKey::from_ec_der(ec.serialized_der())),
            ],
        );
    }

    /// A listener whose token expires is closed with 4001 `token expired` (header and query forms);
    /// until then it receives; afterwards nobody listens on its id.
    fn expiring_listener_closed_4001(a: Adapter) {
        let broker = hmac_broker(a, &[]);
        let exp = now() + 4;
        let short = hs256(&with(claims(json!([42, 43]), Value::Null), "exp", json!(exp)));
        let mut by_header = broker.listen_with("/42", &[("Authorization", &bearer(&short))]);
        let mut by_query = broker.listen_with(&format!("/43?token={short}"), &[]);
        let started = Instant::now();
        let send = sender();
        post_bearer(&broker, "/42", &send, b"before").assert_status(204);
        assert_eq!(by_header.recv(), b"before");
        post_bearer(&broker, "/43", &send, b"before").assert_status(204);
        assert_eq!(by_query.recv(), b"before");

        for listener in [&mut by_header, &mut by_query] {
            // The broker's timer: generous, but bounded (exp is at most 4 s away).
            listener.set_read_timeout(Duration::from_secs(10));
            assert_eq!(listener.expect_close(), (4001, "token expired".to_string()));
        }
        assert!(now() >= exp - 1, "closed {:?} after connecting, before the token expired", started.elapsed());
        for id in [42, 43] {
            eventually(Duration::from_secs(5), "the expired listener to be gone", || {
                (post_bearer(&broker, &format!("/{id}"), &send, b"after").status == 404).then_some(())
            });
        }
    }

    /// JWTs never appear in the logs, even at `trace`, valid or not, header or query.
    fn jwts_never_logged(a: Adapter) {
        let broker = hmac_broker(a, &["--log-level", "trace"]);
        let listen = hs256(&claims(json!([42]), Value::Null));
        let send = sender();
        let expired = hs256(&with(claims(json!(["*"]), json!(["*"])), "exp", json!(now() - 60)));
        let foreign = sign(Algorithm::HS256, &EncodingKey::from_secret(b"another-secret-of-more-than-32-bytes!"), &claims(Value::Null, json!(["*"])));
        let mut listener = broker.listen_with(&format!("/42?token={listen}"), &[]);
        post_bearer(&broker, "/42", &send, b"1").assert_status(204);
        post_with(&broker, &format!("/42?token={send}"), &[], b"2").assert_status(204);
        listener.recv();
        listener.recv();
        assert_unauthorized(&post_bearer(&broker, "/42", &expired, b"x"));
        assert_unauthorized(&post_with(&broker, &format!("/42?token={foreign}"), &[], b"x"));
        assert_unauthorized(&upgrade_with(&broker, "/43", &[("Authorization", &bearer(&expired))]));
        assert_forbidden(&post_bearer(&broker, "/42", &listen, b"x"));
        drop(listener);

        let log = stop_and_read_stderr(broker);
        eprintln!("{} bytes of trace log checked", log.len());
        let signatures: Vec<&str> = [&listen, &send, &expired, &foreign]
            .iter()
            .map(|token| token.rsplit('.').next().expect("three parts"))
            .collect();
        assert_not_logged(&log, &[&listen, &send, &expired, &foreign]);
        assert_not_logged(&log, &signatures);
    }
}

#[test]
fn base64url_matches_rfc4648_vectors() {
    for (input, output) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(b64url(input.as_bytes()), output);
    }
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}

/// The fixtures themselves: every key kind signs tokens that its public PEM verifies (so that a
/// refusal in the tests above is the broker's, not a broken fixture).
#[test]
fn public_key_fixtures_sign_and_verify() {
    use jsonwebtoken::{DecodingKey, Validation};
    let claims = claims(json!([1]), Value::Null);
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
    let [(rsa_der, rsa_pem), _] = rsa_keys();
    let cases = [
        (
            Algorithm::ES256,
            EncodingKey::from_ec_der(ec.serialized_der()),
            DecodingKey::from_ec_pem(ec.public_key_pem().as_bytes()).expect("EC SPKI PEM"),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(ed.serialized_der()),
            DecodingKey::from_ed_pem(ed.public_key_pem().as_bytes()).expect("Ed25519 SPKI PEM"),
        ),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_der(rsa_der),
            DecodingKey::from_rsa_pem(rsa_pem.as_bytes()).expect("RSA SPKI PEM"),
        ),
    ];
    for (alg, encoding, decoding) in cases {
        let token = sign(alg, &encoding, &claims);
        let decoded = jsonwebtoken::decode::<Value>(&token, &decoding, &Validation::new(alg))
            .unwrap_or_else(|e| panic!("{alg:?} fixture does not verify: {e}"));
        assert_eq!(decoded.claims["listen"], json!([1]));
    }
}
