//! §3 upgrade (101) and §4 WebSocket rules for listeners: what they may send, pings, close codes.

use std::time::{Duration, Instant};

use fedbroker_tests::*;

adapter_tests! {
    /// The upgrade → 101 with RFC 6455 headers, no extension even when offered; then frames flow.
    fn upgrade_101_without_extensions(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut conn = broker.connect();
        let mut headers = UPGRADE_HEADERS.to_vec();
        headers.push((
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        ));
        let response = conn.request("GET", "/42", &headers, b"");
        response.assert_status(101);
        assert!(response.has_token("upgrade", "websocket"), "{response:?}");
        assert!(response.has_token("connection", "upgrade"), "{response:?}");
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some(WS_ACCEPT),
            "{response:?}"
        );
        assert!(
            response.header("sec-websocket-extensions").is_none(),
            "no extension may be negotiated:\n{response:?}"
        );

        let mut ws = RawWs::from_upgraded(conn);
        broker.post(42, b"raw").assert_status(204);
        let frame = ws.next_frame();
        assert_eq!(
            frame,
            Frame {
                fin: true,
                rsv: 0,
                opcode: opcode::BINARY,
                mask: None,
                payload: b"raw".to_vec()
            }
        );
    }

    /// Browsers send `Connection: keep-alive, Upgrade` and any case (`Upgrade: WebSocket`).
    fn upgrade_with_token_list_and_any_case(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let headers = [
            ("Upgrade", "WebSocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", WS_KEY),
            ("Sec-WebSocket-Version", "13"),
        ];
        let response = broker.connect().request("GET", "/42", &headers, b"");
        response.assert_status(101);
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some(WS_ACCEPT),
            "{response:?}"
        );
    }

    /// A listener that sends a text or binary message is closed with 1003.
    fn data_frames_from_listener_close_1003(a: Adapter) {
        let broker = Broker::start(a, &[]);
        for frame in [
            Frame::new(opcode::TEXT, "hello"),
            Frame::new(opcode::BINARY, [1, 2, 3]),
        ] {
            let mut ws = broker.listen_raw(1);
            ws.send(&frame);
            ws.expect_close(1003);
        }
    }

    /// An unmasked client frame → 1002.
    fn unmasked_frame_closes_1002(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut ws = broker.listen_raw(1);
        ws.send(&Frame::new(opcode::PING, "x").unmasked());
        ws.expect_close(1002);
    }

    /// Any reserved bit (no extension was negotiated) → 1002.
    fn reserved_bits_close_1002(a: Adapter) {
        let broker = Broker::start(a, &[]);
        for bits in [0b100, 0b010, 0b001] {
            let mut ws = broker.listen_raw(1);
            ws.send(&Frame::new(opcode::PING, "x").with_rsv(bits));
            ws.expect_close(1002);
        }
    }

    /// A control frame with more than 125 bytes of payload → 1002.
    fn oversize_control_frame_closes_1002(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut ws = broker.listen_raw(1);
        ws.send(&Frame::new(opcode::PING, vec![b'p'; 126]));
        ws.expect_close(1002);
    }

    /// A fragmented control frame → 1002.
    fn fragmented_control_frame_closes_1002(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut ws = broker.listen_raw(1);
        ws.send(&Frame::new(opcode::PING, "x").with_fin(false));
        ws.expect_close(1002);
    }

    /// Reserved opcodes → 1002.
    fn reserved_opcodes_close_1002(a: Adapter) {
        let broker = Broker::start(a, &[]);
        for op in [0x3, 0x7, 0xB, 0xF] {
            let mut ws = broker.listen_raw(1);
            ws.send(&Frame::new(op, "x"));
            ws.expect_close(1002);
        }
    }

    /// A continuation frame with no message to continue → 1002.
    fn unexpected_continuation_closes_1002(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut ws = broker.listen_raw(1);
        ws.send(&Frame::new(opcode::CONTINUATION, "x"));
        ws.expect_close(1002);
    }

    /// A close frame whose payload is malformed (one byte, or a code that may not be sent) → 1002
    /// (RFC 6455 §5.5.1, §7.4).
    fn invalid_close_frame_closes_1002(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let payloads: [&[u8]; 4] = [
            &[0x03],
            &999u16.to_be_bytes(),
            &1005u16.to_be_bytes(),
            &5000u16.to_be_bytes(),
        ];
        for payload in payloads {
            let mut ws = broker.listen_raw(1);
            ws.send(&Frame::new(opcode::CLOSE, payload));
            ws.expect_close(1002);
        }
    }

    /// A message over `--max-message-size` → 1009.
    fn message_over_max_size_closes_1009(a: Adapter) {
        let broker = Broker::start(a, &["--max-message-size", "100"]);
        let mut ws = broker.listen_raw(1);
        ws.send(&Frame::new(opcode::BINARY, vec![0u8; 101]));
        ws.expect_close(1009);
    }

    /// Pings are answered with pongs carrying the same payload.
    fn ping_answered_with_pong(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut ws = broker.listen_raw(1);
        for payload in [Vec::new(), b"hello".to_vec(), random_bytes(14, 125)] {
            ws.send(&Frame::new(opcode::PING, payload.clone()));
            let pong = loop {
                let frame = ws.read_frame().unwrap_or_else(|e| panic!("no pong: {e:?}"));
                if frame.opcode != opcode::PING {
                    break frame;
                }
            };
            assert_eq!((pong.opcode, pong.payload), (opcode::PONG, payload));
        }
    }

    /// A client close is echoed, then the server closes TCP.
    fn client_close_echoed(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let mut ws = broker.listen_raw(1);
        ws.send(&Frame::close(1000, "bye"));
        let frame = ws.next_frame();
        assert_eq!(
            (frame.opcode, frame.close_code()),
            (opcode::CLOSE, Some(1000)),
            "{frame:?}"
        );
        ws.conn().expect_closed();
    }

    /// With `--ping-interval 1` a listener that never answers is pinged, then dropped after two
    /// intervals of silence (6 s allowed).
    fn silent_listener_pinged_then_dropped(a: Adapter) {
        let broker = Broker::start(a, &["--ping-interval", "1"]);
        let mut ws = broker.listen_raw(9);
        let start = Instant::now();
        let mut pings = 0;
        loop {
            match ws.read_frame() {
                Ok(frame) if frame.opcode == opcode::PING => pings += 1,
                Ok(frame) if frame.opcode == opcode::CLOSE => {
                    ws.conn().expect_closed();
                    break;
                }
                Ok(frame) => panic!("unexpected frame {frame:?}"),
                Err(e) if e.is_closed() => break,
                Err(e) => panic!("silent listener not dropped: {e:?}"),
            }
            assert!(
                start.elapsed() < Duration::from_secs(6),
                "silent listener still connected after 6 s"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "silent listener dropped only after {:?}",
            start.elapsed()
        );
        assert!(pings >= 1, "the broker never pinged");
        eventually(
            Duration::from_secs(5),
            "POST → 404 after the drop",
            || (broker.post(9, b"gone?").status == 404).then_some(()),
        );
    }

    /// A listener that answers pings stays connected across several intervals.
    fn answering_listener_stays_connected(a: Adapter) {
        let broker = Broker::start(a, &["--ping-interval", "1"]);
        let mut listener = broker.listen(9);
        listener.stay_connected(Duration::from_millis(4500));
        broker.post(9, b"still listening").assert_status(204);
        assert_eq!(listener.recv(), b"still listening");
    }
}
