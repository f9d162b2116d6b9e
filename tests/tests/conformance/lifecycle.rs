//! §8 startup output and listen addresses; §4 graceful shutdown on SIGTERM/SIGINT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use fedbroker_tests::*;

/// §4 allows 5 s for in-flight requests; one more second of margin.
const EXIT_TIMEOUT: Duration = Duration::from_secs(6);

/// Signals `broker`, checks that its listeners are closed with 1001 and that it exits 0.
fn assert_graceful_stop(mut broker: Broker, listeners: Vec<Listener>, signal: i32) {
    broker.signal(signal);
    for mut listener in listeners {
        assert_eq!(
            listener.expect_close().0,
            1001,
            "listeners are closed with 1001 (going away)"
        );
    }
    let status = broker.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "exit status after signal {signal}: {status:?}");
}

adapter_tests! {
    /// One `listening on http://ADDR` line per `--listen`, IPv4 and IPv6, both serving the same broker.
    fn one_listening_line_per_listener(a: Adapter) {
        let broker = Broker::start(a, &["--listen", "127.0.0.1:0", "--listen", "[::1]:0"]);
        let addrs = broker.addrs();
        let mut ips: Vec<IpAddr> = addrs.iter().map(|addr| addr.ip()).collect();
        ips.sort();
        assert_eq!(
            ips,
            [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ],
            "{:?}",
            broker.stdout_lines()
        );
        for (line, addr) in broker.stdout_lines().iter().zip(addrs) {
            assert_ne!(
                addr.port(),
                0,
                "port 0 must be replaced by the bound port: {line:?}"
            );
            assert_eq!(
                line,
                &format!("listening on http://{addr}"),
                "exact stdout line"
            );
        }
        let v4 = addrs
            .iter()
            .find(|addr| addr.is_ipv4())
            .copied()
            .expect("v4");
        let v6 = addrs
            .iter()
            .find(|addr| addr.is_ipv6())
            .copied()
            .expect("v6");
        let mut listener = Listener::connect(v6, "/3");
        Conn::connect(v4).post("/3", b"across").assert_status(204);
        assert_eq!(listener.recv(), b"across");
    }

    /// Everything works on an IPv6-only broker.
    fn ipv6_listener(a: Adapter) {
        let broker = Broker::start(a, &["--listen", "[::1]:0"]);
        assert!(broker.addr().is_ipv6(), "{:?}", broker.stdout_lines());
        assert_eq!(broker.get("/healthz").body, b"ok");
        broker.stats();
        let mut listener = broker.listen(4);
        broker.post(4, b"over v6").assert_status(204);
        assert_eq!(listener.recv(), b"over v6");
    }

    /// SIGTERM: listeners closed with 1001, exit 0.
    fn sigterm_graceful_shutdown(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let listeners = vec![broker.listen(1), broker.listen(2)];
        assert_graceful_stop(broker, listeners, libc::SIGTERM);
    }

    /// Once the `listening on` lines are out the broker is up: a SIGTERM right then is a graceful
    /// stop (exit 0), not death by the signal's default action.
    fn sigterm_right_after_startup_exits_0(a: Adapter) {
        let broker = Broker::start(a, &[]);
        assert_graceful_stop(broker, Vec::new(), libc::SIGTERM);
    }

    /// SIGINT: the same.
    fn sigint_graceful_shutdown(a: Adapter) {
        let broker = Broker::start(a, &[]);
        let listeners = vec![broker.listen(1)];
        assert_graceful_stop(broker, listeners, libc::SIGINT);
    }

    /// A request in flight when shutdown starts (head received, body still arriving) is answered,
    /// not dropped: its listener is gone by then, so 404 or 503 are as good an answer as 204.
    fn shutdown_finishes_in_flight_request(a: Adapter) {
        let mut broker = Broker::start(a, &[]);
        let mut listener = broker.listen(1);
        let mut in_flight = broker.connect();
        // `Expect: 100-continue`: the `100` shows the broker has the head before shutdown begins
        // (otherwise a head still in the socket buffer would meet an idle connection's close).
        in_flight.send(&in_flight.build(
            "POST",
            "/1",
            &[("Expect", "100-continue"), ("Content-Length", "10")],
            b"",
        ));
        in_flight.read_response().assert_status(100);
        in_flight.send(b"01234");
        broker.signal(libc::SIGTERM);
        // The listener's 1001 shows that shutdown has begun; then the request completes.
        assert_eq!(listener.expect_close().0, 1001);
        in_flight.send(b"56789");
        let response = in_flight.read_response();
        assert!(
            [204, 404, 503].contains(&response.status),
            "in-flight request got:\n{response:?}"
        );
        if response.status != 204 {
            response.assert_error(response.status);
        }
        let status = broker.wait_exit(EXIT_TIMEOUT);
        assert_eq!(status.code(), Some(0), "{status:?}");
    }
}
