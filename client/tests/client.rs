//! The `fedbroker` client against a real broker binary (fedbroker-tokio) and, for `ID@DOMAIN`, a
//! real DNS server (dnsmasq) holding SRV records, all on loopback.
//!
//! Run `cargo build --workspace --bins` first (the broker binary must exist, as for the black-box
//! suite). Without dnsmasq the SRV tests are skipped with a note, except under `CI=true`, where
//! they fail.

mod support;

use fedbroker_tests::{random_bytes, Adapter, Broker, TempDir, TestCert};
use support::{assert_code, dead_port, host, run, spawn, srv, Dnsmasq};

fn tokio() -> Adapter {
    Adapter::select("tokio").expect("the client tests run against fedbroker-tokio")
}

fn url(broker: &Broker, id: u32) -> String {
    format!("{}://{}/{id}", broker.scheme(), broker.addr())
}

/// Send by URL from stdin and from a file; `listen --exec` runs the command once per message,
/// with the message on stdin and FEDBROKER_ID/FEDBROKER_SEQ set, then `--count` ends it.
#[test]
fn send_by_url_and_listen_with_exec() {
    let broker = Broker::start(tokio(), &[]);
    let dir = TempDir::new();
    let exec = format!(
        "cat > '{}'/msg-$FEDBROKER_SEQ; echo \"$FEDBROKER_ID\" > '{}'/id",
        dir.path().display(),
        dir.path().display()
    );
    let target = url(&broker, 42);
    let mut listener = spawn(&["listen", &target, "--exec", &exec, "--count", "2"], b"");
    listener.wait_for_line("listening on ws://");

    let binary = random_bytes(7, 3000);
    assert_code(&run(&["send", &target], b"from stdin"), 0);
    let file = dir.write("body.bin", &binary);
    let out = run(&["send", &target, file.to_str().unwrap()], b"");
    assert_code(&out, 0);
    assert!(out.stdout.is_empty(), "204 prints nothing");

    assert_code(&listener.finish(), 0);
    assert_eq!(std::fs::read(dir.path().join("msg-1")).unwrap(), b"from stdin");
    assert_eq!(std::fs::read(dir.path().join("msg-2")).unwrap(), binary);
    assert_eq!(std::fs::read_to_string(dir.path().join("id")).unwrap(), "42\n");
}

/// Plain `listen` prints each message's bytes to stdout; `--output DIR` writes a file each.
#[test]
fn listen_to_stdout_and_to_a_directory() {
    let broker = Broker::start(tokio(), &[]);
    let mut printer = spawn(&["listen", &url(&broker, 5), "--count", "2", "--newline"], b"");
    printer.wait_for_line("listening on");
    broker.post(5, b"one").assert_status(204);
    broker.post(5, b"two").assert_status(204);
    printer.expect_stdout(b"one\ntwo\n");

    let dir = TempDir::new();
    let spool = dir.path().join("spool");
    let mut writer = spawn(
        &[
            "listen",
            &url(&broker, 6),
            "--count",
            "1",
            "--output",
            spool.to_str().unwrap(),
        ],
        b"",
    );
    writer.wait_for_line("listening on");
    broker.post(6, b"").assert_status(204);
    let out = writer.finish();
    assert_code(&out, 0);
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read(spool.join("000001.bin")).unwrap(),
        b"",
        "an empty message is an empty file"
    );
}

/// `404` (nobody listens) exits 3, naming the id.
#[test]
fn no_listener_exits_3() {
    let broker = Broker::start(tokio(), &[]);
    let out = run(&["send", &url(&broker, 77)], b"x");
    assert_code(&out, 3);
    assert!(out.stderr.contains("no listener on id 77"), "{}", out.stderr);
}

/// With a tokens file: no token or an unknown one is 401, a token not for this id 403; both exit
/// 4, for send and listen. The right token (flag or FEDBROKER_TOKEN) delivers.
#[test]
fn tokens_file_401_and_403_exit_4() {
    let tokens = "[[token]]\ntoken = \"s3cr3t\"\nlisten = [42]\nsend = [42]\n\n\
                  [[token]]\ntoken = \"other\"\nlisten = [43]\nsend = [43]\n";
    let broker = Broker::builder(tokio())
        .file_arg("--auth-tokens", "tokens.toml", tokens)
        .start();
    let target = url(&broker, 42);
    for (args, status) in [
        (vec!["send", &target], "401"),
        (vec!["send", &target, "--token", "wrong"], "401"),
        (vec!["send", &target, "--token", "other"], "403"),
        (vec!["listen", &target, "--no-reconnect"], "401"),
        (vec!["listen", &target, "--token", "other", "--no-reconnect"], "403"),
    ] {
        let out = run(&args, b"x");
        assert_code(&out, 4);
        assert!(out.stderr.contains(status), "{args:?}: {}", out.stderr);
    }
    let mut listener = spawn(&["listen", &target, "--token", "s3cr3t", "--count", "1"], b"");
    listener.wait_for_line("listening on");
    let mut send = std::process::Command::new(env!("CARGO_BIN_EXE_fedbroker"));
    let out = send
        .args(["send", &target])
        .env("FEDBROKER_TOKEN", "s3cr3t")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_code(&listener.finish(), 0);
}

/// TLS: with `--ca` trusting the broker's certificate, send and listen work over https/wss;
/// without it (system roots only) the certificate is not trusted: exit 7.
#[test]
fn tls_with_ca() {
    let cert = TestCert::generate();
    let broker = Broker::builder(tokio()).tls(&cert).start();
    let dir = TempDir::new();
    let ca = dir.file("ca.pem", cert.cert_pem());
    let target = url(&broker, 9);
    assert!(target.starts_with("https://"));

    let mut listener = spawn(&["listen", &target, "--ca", &ca, "--count", "1"], b"");
    listener.wait_for_line("listening on wss://");
    assert_code(&run(&["send", &target, "--ca", &ca], b"secret"), 0);
    listener.expect_stdout(b"secret");

    let out = run(&["send", &target], b"x");
    assert_code(&out, 7);
    assert!(
        out.stderr.contains("certificate") || out.stderr.contains("root"),
        "{}",
        out.stderr
    );
    // A --ca file without a certificate is a usage error.
    let empty = dir.file("empty.pem", "");
    assert_code(&run(&["send", &target, "--ca", &empty], b"x"), 2);
}

/// `42@example.test` finds the broker through `_fedbroker._tcp.example.test` at a local dnsmasq,
/// for send and for listen.
#[test]
fn send_and_listen_through_srv() {
    let broker = Broker::start(tokio(), &[]);
    let port = broker.addr().port();
    let Some(dns) = Dnsmasq::start(&[
        srv("example.test", "broker1.example.test", port, 10, 5),
        host("broker1.example.test"),
    ]) else {
        return;
    };
    let dns_addr = dns.addr();
    let common = ["--dns", dns_addr.as_str(), "--http"];

    let mut listener = broker.listen(42);
    let out = run(&[&["send", "42@example.test"][..], &common].concat(), b"via SRV");
    assert_code(&out, 0);
    assert_eq!(listener.recv(), b"via SRV", "dnsmasq log:\n{}", dns.log());

    let mut srv_listener = spawn(
        &[&["listen", "43@example.test", "--count", "1"][..], &common].concat(),
        b"",
    );
    let line = srv_listener.wait_for_line("listening on");
    assert!(line.contains(&format!("ws://broker1.example.test:{port}/43")), "{line}");
    broker.post(43, b"to the SRV listener").assert_status(204);
    srv_listener.expect_stdout(b"to the SRV listener");
}

/// The first SRV target (priority 10) refuses connections: the client goes on to the next one
/// (priority 20) and delivers.
#[test]
fn srv_falls_back_to_the_next_target() {
    let broker = Broker::start(tokio(), &[]);
    let dead = dead_port();
    let Some(dns) = Dnsmasq::start(&[
        srv("fallback.test", "dead.fallback.test", dead, 10, 5),
        srv("fallback.test", "live.fallback.test", broker.addr().port(), 20, 5),
        host("dead.fallback.test"),
        host("live.fallback.test"),
    ]) else {
        return;
    };
    let mut listener = broker.listen(8);
    let out = run(
        &["send", "8@fallback.test", "--dns", &dns.addr(), "--http", "--verbose"],
        b"second target",
    );
    assert_code(&out, 0);
    assert_eq!(listener.recv(), b"second target");
    let order = format!("dead.fallback.test:{dead}, live.fallback.test:{}", broker.addr().port());
    assert!(out.stderr.contains(&order), "SRV order by priority: {}", out.stderr);
    assert!(
        out.stderr.contains(&format!("connecting to dead.fallback.test:{dead}")),
        "{}",
        out.stderr
    );
}

/// TLS to an SRV target: the certificate is checked against the target's name.
#[test]
fn srv_with_tls_checks_the_target_name() {
    let name = "broker-tls.secure.test";
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("certificate");
    // The harness checks the broker announces https://; its own client is not used here.
    let broker = Broker::builder(tokio())
        .file_arg("--tls-cert", "cert.pem", cert.pem())
        .file_arg("--tls-key", "key.pem", signing_key.serialize_pem())
        .expect_tls(&TestCert::generate())
        .start();
    let port = broker.addr().port();
    let Some(dns) = Dnsmasq::start(&[
        srv("secure.test", name, port, 10, 5),
        host(name),
        srv("wrongname.test", "other.secure.test", port, 10, 5),
        host("other.secure.test"),
    ]) else {
        return;
    };
    let dir = TempDir::new();
    let ca = dir.file("ca.pem", cert.pem());
    let dns_addr = dns.addr();
    let mut listener = spawn(
        &[
            "listen",
            "3@secure.test",
            "--dns",
            &dns_addr,
            "--ca",
            &ca,
            "--count",
            "1",
        ],
        b"",
    );
    listener.wait_for_line(&format!("listening on wss://{name}:{port}/3"));
    assert_code(
        &run(
            &["send", "3@secure.test", "--dns", &dns_addr, "--ca", &ca],
            b"tls via srv",
        ),
        0,
    );
    listener.expect_stdout(b"tls via srv");

    let out = run(&["send", "3@wrongname.test", "--dns", &dns_addr, "--ca", &ca], b"x");
    assert_code(&out, 7);
    assert!(out.stderr.contains("other.secure.test"), "{}", out.stderr);
}

/// No SRV record for the domain: a clear error, exit 6 (no guess at DOMAIN:443).
#[test]
fn missing_srv_record_exits_6() {
    let Some(dns) = Dnsmasq::start(&[host("nosrv.test")]) else {
        return;
    };
    let out = run(&["send", "42@nosrv.test", "--dns", &dns.addr()], b"x");
    assert_code(&out, 6);
    assert!(out.stderr.contains("_fedbroker._tcp.nosrv.test"), "{}", out.stderr);
    assert!(out.stderr.contains("no such record"), "{}", out.stderr);
}

/// The broker is at `--max-connections 1` (a listener holds the one connection): every POST is
/// answered 503 with Retry-After; the client retries `--retries` times, then exits 8.
#[test]
fn busy_503_exits_8_after_the_retries() {
    let broker = Broker::start(tokio(), &["--max-connections", "1"]);
    let _holder = broker.listen(11);
    let out = run(&["send", &url(&broker, 11), "--retries", "1"], b"x");
    assert_code(&out, 8);
    assert!(out.stderr.contains("retry 1 of 1"), "{}", out.stderr);
    assert!(out.stderr.contains("(2 attempts)"), "{}", out.stderr);
}

/// A second listener on the id replaces the client's: exit 10.
#[test]
fn replaced_listener_exits_10() {
    let broker = Broker::start(tokio(), &[]);
    let mut listener = spawn(&["listen", &url(&broker, 12)], b"");
    listener.wait_for_line("listening on");
    let _newer = broker.listen(12);
    let out = listener.finish();
    assert_code(&out, 10);
    assert!(out.stderr.contains("4000"), "{}", out.stderr);
}

/// The broker shuts down (1001): the listener reconnects to a broker started again on the same
/// port, and receives there.
#[test]
fn listener_reconnects_after_a_broker_restart() {
    let mut first = Broker::start(tokio(), &[]);
    let addr = first.addr().to_string();
    let mut listener = spawn(&["listen", &format!("http://{addr}/13"), "--count", "1"], b"");
    listener.wait_for_line("listening on");
    first.signal(libc::SIGTERM);
    first.wait_exit(std::time::Duration::from_secs(10));
    listener.wait_for_line("reconnecting");
    let second = Broker::start(tokio(), &["--listen", &addr]);
    listener.wait_for_line("listening on");
    second.post(13, b"after the restart").assert_status(204);
    listener.expect_stdout(b"after the restart");
}

/// On a mailbox id the listener resumes where it was (`?since=`): what was sent while it was
/// away comes after the reconnection, once, with nothing handed on twice.
#[test]
fn listener_resumes_a_mailbox_after_a_restart() {
    let dir = TempDir::new();
    let store = dir.path().join("store").display().to_string();
    let args = ["--mailbox", "1-100", "--store", store.as_str()];
    let mut first = Broker::start(tokio(), &args);
    let addr = first.addr().to_string();
    let mut listener = spawn(&["listen", &format!("http://{addr}/13"), "--count", "3"], b"");
    listener.wait_for_line("listening on");
    first.post(13, b"a").assert_status(204);
    first.signal(libc::SIGTERM);
    first.wait_exit(std::time::Duration::from_secs(10));
    listener.wait_for_line("reconnecting");
    let mut with_addr = vec!["--listen", addr.as_str()];
    with_addr.extend_from_slice(&args);
    let second = Broker::start(tokio(), &with_addr);
    // Kept while the listener is away (or delivered live, if it is back already).
    for body in [&b"b"[..], b"c"] {
        let status = second.post(13, body).status;
        assert!(status == 202 || status == 204, "{status}");
    }
    listener.expect_stdout(b"abc");
}

/// The listener answers the broker's pings: with `--ping-interval 1`, after three intervals of
/// silence it is still connected (it would be dropped after two without pongs) and receives.
#[test]
fn listener_answers_pings() {
    let broker = Broker::start(tokio(), &["--ping-interval", "1"]);
    let mut listener = spawn(&["listen", &url(&broker, 15), "--count", "1", "--no-reconnect"], b"");
    listener.wait_for_line("listening on");
    std::thread::sleep(std::time::Duration::from_secs(3));
    broker.post(15, b"still here").assert_status(204);
    listener.expect_stdout(b"still here");
}

/// With `--retries 1`, a listener whose broker is gone gives up: exit 5.
#[test]
fn listener_gives_up_after_its_retries() {
    let mut broker = Broker::start(tokio(), &[]);
    let mut listener = spawn(&["listen", &url(&broker, 14), "--retries", "1"], b"");
    listener.wait_for_line("listening on");
    broker.signal(libc::SIGTERM);
    broker.wait_exit(std::time::Duration::from_secs(10));
    let out = listener.finish();
    assert_code(&out, 5);
    assert!(out.stderr.contains("1001"), "{}", out.stderr);
}

/// Usage errors exit 2 with one line naming the problem; `--help` documents every flag and the
/// exit codes.
#[test]
fn usage_and_help() {
    for args in [
        &["send", "not-an-address"][..],
        &["send", "http://127.0.0.1:1/042"],
        &["send", "42@example.test:99"],
        &["send", "http://127.0.0.1:1/1", "--dns", "nameserver"],
        &["listen", "http://127.0.0.1:1/1", "--count", "0"],
        &["send"],
        &["frobnicate"],
    ] {
        let out = run(args, b"");
        assert_code(&out, 2);
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    for sub in ["send", "listen"] {
        let out = run(&[sub, "--help"], b"");
        assert_code(&out, 0);
        let help = String::from_utf8(out.stdout).unwrap();
        for needle in [
            "--token",
            "--ca",
            "--dns",
            "--timeout",
            "--retries",
            "FEDBROKER_TOKEN",
            "EXIT CODES",
            "_fedbroker._tcp",
            "Default:",
        ] {
            assert!(help.contains(needle), "{sub} --help lacks {needle:?}:\n{help}");
        }
    }
    let out = run(&["--version"], b"");
    assert_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
