//! A real cluster engine for the cluster tests: `nats-server` on a loopback port, started and
//! stopped by the test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` child on `127.0.0.1`; killed on drop.
pub struct NatsServer {
    port: u16,
    child: Option<Child>,
    /// Extra arguments (credentials).
    args: Vec<String>,
}

impl NatsServer {
    /// Starts one on a free port, or `None` (with a note) when `nats-server` is not installed;
    /// under `CI=true` a missing server fails the test instead of skipping it.
    pub fn start() -> Option<NatsServer> {
        NatsServer::start_with(&[])
    }

    /// As [`NatsServer::start`], with extra `nats-server` arguments (`--user u --pass p`).
    pub fn start_with(args: &[&str]) -> Option<NatsServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut server = NatsServer {
            port,
            child: None,
            args,
        };
        if !server.run() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("nats-server is not installed (scripts/test-all installs it; CI must not skip)");
            }
            eprintln!("nats-server is not installed: cluster test skipped");
            return None;
        }
        Some(server)
    }

    /// Starts the server (again) on its port; `false` when the binary is missing.
    fn run(&mut self) -> bool {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (the engine goes down).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.run(), "nats-server vanished");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
