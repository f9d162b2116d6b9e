//! §8 TLS (`--tls-cert`/`--tls-key`): `https://` and `wss://` end to end with a certificate made in
//! the test, TLS 1.2 and 1.3 clients, plain HTTP on the TLS port, and bad certificate/key files.

use std::net::TcpStream;

use crate::support::*;
use fedbroker_tests::*;

/// A broker serving TLS with a fresh certificate.
fn tls_broker(a: Adapter, extra: &[&str]) -> Broker {
    Broker::builder(a).tls(&TestCert::generate()).args(extra).start()
}

adapter_tests! {
    /// With TLS the broker announces `https://`; POSTs over TLS (keep-alive, sizes across TLS record
    /// boundaries) reach a `wss://` listener byte for byte; statistics and health answer over TLS.
    fn https_post_delivered_to_wss_listener(a: Adapter) {
        let broker = tls_broker(a, &[]);
        let line = &broker.stdout_lines()[0];
        assert_eq!(
            line.trim_end(),
            format!("listening on https://{}", broker.addr()),
            "the listening line of a TLS broker"
        );
        let mut listener = broker.listen(42);
        let mut conn = broker.connect();
        assert!(conn.tls_version().is_some());
        for (seed, size) in [0usize, 1, 16_384, 16_385, 100_000, 1 << 20].into_iter().enumerate() {
            let body = random_bytes(seed as u64, size);
            conn.post("/42", &body).assert_status(204);
            assert!(listener.recv() == body, "body of {size} bytes not delivered exactly over TLS");
        }
        assert_eq!(conn.get("/healthz").body, b"ok");
        assert_eq!(conn.stats("/")["messages_delivered"], 6);
        broker.connect().post("/43", b"x").assert_error(404);
        listener.close();
    }

    /// A client offering only TLS 1.2 is served, and so is one offering only TLS 1.3.
    fn tls12_and_tls13_clients_served(a: Adapter) {
        let cert = TestCert::generate();
        let broker = Broker::builder(a).tls(&cert).start();
        let mut listener = broker.listen(42);
        for (version, expected) in [
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        ] {
            let mut conn = Conn::connect_tls(broker.addr(), cert.client_config_for(&[version]));
            assert_eq!(conn.tls_version(), Some(expected));
            conn.post("/42", format!("{expected:?}").as_bytes()).assert_status(204);
            assert_eq!(listener.recv(), format!("{expected:?}").as_bytes());
        }
        let mut wss12 = Listener::try_connect_with(
            broker.addr(),
            "/43",
            &[],
            Some(cert.client_config_for(&[&rustls::version::TLS12])),
        )
        .expect("a TLS 1.2 WebSocket client listens");
        broker.post(43, b"wss over 1.2").assert_status(204);
        assert_eq!(wss12.recv(), b"wss over 1.2");
    }

    /// A browser offers ALPN `h2` and `http/1.1`: the broker, which speaks HTTP/1.1 only, must not
    /// pick `h2` (it may pick `http/1.1` or nothing), and the connection then works.
    fn alpn_never_selects_h2(a: Adapter) {
        let cert = TestCert::generate();
        let broker = Broker::builder(a).tls(&cert).start();
        let mut config = (*cert.client_config()).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut conn = Conn::connect_tls(broker.addr(), std::sync::Arc::new(config));
        let alpn = conn.tls_info().expect("TLS").alpn.clone();
        assert!(
            alpn.is_none() || alpn.as_deref() == Some(&b"http/1.1"[..]),
            "negotiated ALPN {:?}",
            alpn.map(|p| String::from_utf8_lossy(&p).into_owned())
        );
        assert_eq!(conn.get("/healthz").body, b"ok");
    }

    /// Plain HTTP to the TLS port gets no HTTP response (at most a TLS alert, then the connection
    /// ends), and disturbs neither established TLS connections nor new ones; neither do a silent
    /// connection and a client that stops half-way through its handshake.
    fn plain_http_on_tls_port_refused(a: Adapter) {
        let broker = tls_broker(a, &[]);
        let mut listener = broker.listen(42);
        let mut established = broker.connect();
        established.post("/42", b"before").assert_status(204);
        assert_eq!(listener.recv(), b"before");

        let _silent = TcpStream::connect(broker.addr()).expect("connect");
        let mut half = Conn::connect(broker.addr());
        // The first bytes of a TLS 1.2 ClientHello record header, and no more.
        half.send(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01]);

        let mut plain = Conn::connect(broker.addr());
        plain.send(
            format!("POST /42 HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\n\r\nplain", broker.host()).as_bytes(),
        );
        let (bytes, end) = plain.read_until_closed();
        assert!(
            matches!(end, ReadError::Eof { .. } | ReadError::Reset),
            "the broker should end a plaintext connection on its TLS port, got {end:?} after {bytes:?}"
        );
        assert!(
            !bytes.starts_with(b"HTTP/"),
            "plain HTTP on the TLS port got an HTTP answer: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(
            bytes.is_empty() || bytes[0] == 0x15,
            "anything sent back should be a TLS alert record, got {bytes:?}"
        );

        established.post("/42", b"after").assert_status(204);
        assert_eq!(listener.recv(), b"after", "the plaintext message must not be delivered");
        broker.post(42, b"new connection").assert_status(204);
        assert_eq!(listener.recv(), b"new connection");
    }

    /// Slow clients on the TLS port are bounded by `--request-timeout`: a connection that never
    /// starts its handshake, or stops half-way, is closed (no HTTP answer is possible before TLS);
    /// one that completes the handshake but not its request head gets `408` over TLS.
    fn stalled_tls_clients_dropped(a: Adapter) {
        let broker = tls_broker(a, &["--request-timeout", "1"]);
        let mut silent = Conn::connect(broker.addr());
        let mut half = Conn::connect(broker.addr());
        half.send(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01]);
        for (what, conn) in [("silent", &mut silent), ("half a ClientHello", &mut half)] {
            // IO_TIMEOUT (5 s) bounds the wait; the broker should act after about 1 s.
            let (bytes, end) = conn.read_until_closed();
            assert!(
                matches!(end, ReadError::Eof { .. } | ReadError::Reset),
                "{what}: the broker should close a stalled TLS handshake, got {end:?} after {bytes:?}"
            );
            assert!(!bytes.starts_with(b"HTTP/"), "{what}: an HTTP answer in plaintext: {bytes:?}");
        }

        let mut partial = broker.connect();
        partial.send(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Unfinished", broker.host()).as_bytes());
        partial.read_response().assert_error(408);
        partial.expect_closed();
        assert_eq!(broker.connect().get("/healthz").body, b"ok");
    }

    /// TLS from the config file (`tls_cert`, `tls_key`).
    fn tls_from_config_file(a: Adapter) {
        let dir = TempDir::new();
        let cert = TestCert::generate();
        let cert_path = dir.file("cert.pem", cert.cert_pem());
        let key_path = dir.file("key.pem", cert.key_pem());
        let broker = Broker::builder(a)
            .config(&format!("listen = [\"127.0.0.1:0\"]\ntls_cert = {cert_path:?}\ntls_key = {key_path:?}\n"))
            .expect_listeners(1)
            .expect_tls(&cert)
            .start();
        let mut listener = broker.listen(42);
        broker.post(42, b"configured").assert_status(204);
        assert_eq!(listener.recv(), b"configured");
    }

    /// Raw WebSocket frames over TLS: binary delivery, ping/pong, the close handshake.
    fn raw_websocket_over_tls(a: Adapter) {
        let broker = tls_broker(a, &[]);
        let mut ws = broker.listen_raw(42);
        broker.post(42, b"framed").assert_status(204);
        let frame = ws.next_frame();
        assert_eq!((frame.opcode, frame.payload.as_slice()), (opcode::BINARY, &b"framed"[..]));
        ws.send(&Frame::new(opcode::PING, "p"));
        let pong = ws.read_frame().expect("pong");
        assert_eq!((pong.opcode, pong.payload.as_slice()), (opcode::PONG, &b"p"[..]));
        ws.send(&Frame::close(1000, "bye"));
        let close = ws.next_frame();
        assert_eq!((close.opcode, close.close_code()), (opcode::CLOSE, Some(1000)));
        ws.conn().expect_closed();
    }

    /// Over TLS the broker's own origin is `https://` + Host; `http://` + Host is foreign.
    fn own_origin_is_https_under_tls(a: Adapter) {
        let broker = tls_broker(a, &[]);
        assert!(broker.origin().starts_with("https://"));
        let mut listener = broker.listen_with("/42", &[("Origin", &broker.origin())]);
        post_with(&broker, "/42", &[("Origin", &broker.origin())], b"own").assert_status(204);
        assert_eq!(listener.recv(), b"own");
        let plain_origin = format!("http://{}", broker.host());
        let response = post_with(&broker, "/42", &[("Origin", &plain_origin)], b"x");
        assert_forbidden(&response);
        assert!(upgrade_with(&broker, "/42", &[("Origin", &plain_origin)]).status == 403);
    }

    /// Missing, unreadable or mismatched certificate/key files: exit 2, one line naming the file.
    fn bad_tls_files_exit_2(a: Adapter) {
        let dir = TempDir::new();
        let cert = TestCert::generate();
        let other = TestCert::generate();
        let good_cert = dir.file("good-cert.pem", cert.cert_pem());
        let good_key = dir.file("good-key.pem", cert.key_pem());
        let path = |name: &str| dir.path().join(name).display().to_string();
        let garbage_cert = dir.file("garbage-cert.pem", "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        let garbage_key = dir.file("garbage-key.pem", "not a key\n");
        let mismatched_key = dir.file("mismatched-key.pem", other.key_pem());
        let key_as_cert = dir.file("key-as-cert.pem", cert.key_pem());

        let cases: [(&str, &str, &[&str]); 6] = [
            (&path("absent-cert.pem"), &good_key, &["absent-cert.pem"]),
            (&good_cert, &path("absent-key.pem"), &["absent-key.pem"]),
            (&garbage_cert, &good_key, &["garbage-cert.pem"]),
            (&good_cert, &garbage_key, &["garbage-key.pem"]),
            (&good_cert, &mismatched_key, &["mismatched-key.pem", "good-cert.pem"]),
            (&key_as_cert, &good_key, &["key-as-cert.pem"]),
        ];
        for (cert_path, key_path, names) in cases {
            let out = run_cli(
                a,
                &["--listen", "127.0.0.1:0", "--tls-cert", cert_path, "--tls-key", key_path],
            );
            assert_usage_error(&out, names);
        }
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--tls-cert", &good_cert]);
        assert_usage_error(&out, &["tls-key", "tls_key"]);
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--tls-key", &good_key]);
        assert_usage_error(&out, &["tls-cert", "tls_cert"]);
    }
}
