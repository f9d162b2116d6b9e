//! A real cluster engine for the cluster tests: `nats-server` or `redis-server` on a loopback
//! port, started and stopped by the test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Nats,
    Redis,
}

impl EngineKind {
    fn program(self) -> &'static str {
        match self {
            EngineKind::Nats => "nats-server",
            EngineKind::Redis => "redis-server",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            EngineKind::Nats => "nats",
            EngineKind::Redis => "redis",
        }
    }
}

/// An engine's server child on `127.0.0.1`; killed on drop.
pub struct EngineServer {
    kind: EngineKind,
    port: u16,
    child: Option<Child>,
    /// The user and password it requires, if any.
    credentials: Option<(String, String)>,
    /// More arguments for the server.
    extra: Vec<String>,
    /// NATS's JetStream store (the mailboxes), kept across restarts, removed on drop.
    store: crate::TempDir,
}

impl EngineServer {
    /// Starts one on a free port, or `None` (with a note) when the server is not installed;
    /// under `CI=true` a missing server fails the test instead of skipping it.
    pub fn start(kind: EngineKind) -> Option<EngineServer> {
        EngineServer::start_inner(kind, None, &[])
    }

    /// As [`EngineServer::start`], requiring `user` and `password` of its clients.
    pub fn start_with_credentials(kind: EngineKind, user: &str, password: &str) -> Option<EngineServer> {
        EngineServer::start_inner(kind, Some((user.to_owned(), password.to_owned())), &[])
    }

    /// As [`EngineServer::start`], with more arguments for the server (`--requirepass p`).
    pub fn start_with_args(kind: EngineKind, args: &[&str]) -> Option<EngineServer> {
        EngineServer::start_inner(kind, None, args)
    }

    fn start_inner(kind: EngineKind, credentials: Option<(String, String)>, extra: &[&str]) -> Option<EngineServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = EngineServer {
            kind,
            port,
            child: None,
            credentials,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            store: crate::TempDir::new(),
        };
        if !server.run() {
            let program = kind.program();
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{program} is not installed (scripts/test-all installs it; CI must not skip)");
            }
            eprintln!("{program} is not installed: cluster test skipped");
            return None;
        }
        Some(server)
    }

    /// Starts the server (again) on its port; `false` when the binary is missing.
    fn run(&mut self) -> bool {
        let port = self.port.to_string();
        let mut cmd = Command::new(self.kind.program());
        match self.kind {
            EngineKind::Nats => {
                cmd.args(["-a", "127.0.0.1", "-p", &port]);
                // JetStream keeps the mailboxes, on disk in the test's own directory.
                let store = self.store.path().display().to_string();
                cmd.args(["-js", "-sd", &store]);
                if let Some((user, pass)) = &self.credentials {
                    // The least a broker needs, as docs/security.md advises: its subjects, its
                    // inboxes, and JetStream's API on the mailboxes' stream only.
                    let conf = format!(
                        r#"authorization {{ users = [ {{ user: "{user}", password: "{pass}", permissions: {{
                            publish: ["fedbroker.>", "_INBOX.>",
                                "$JS.API.STREAM.INFO.FEDBROKER_MAILBOX", "$JS.API.STREAM.CREATE.FEDBROKER_MAILBOX",
                                "$JS.API.DIRECT.GET.FEDBROKER_MAILBOX", "$JS.API.DIRECT.GET.FEDBROKER_MAILBOX.>",
                                "$JS.API.STREAM.MSG.DELETE.FEDBROKER_MAILBOX"],
                            subscribe: ["fedbroker.>", "_INBOX.>"] }} }} ] }}"#
                    );
                    let conf = self.store.file("nats.conf", conf);
                    cmd.args(["-c", &conf]);
                }
            }
            EngineKind::Redis => {
                // In memory only: nothing written to disk, nothing read back on a restart.
                cmd.args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                if let Some((user, pass)) = &self.credentials {
                    let (user, pass) = (user.as_str(), format!(">{pass}"));
                    // The least a broker needs, as docs/security.md advises.
                    cmd.args(["--user", "default", "off"]);
                    cmd.args(["--user", user, "on", &pass, "resetchannels", "&fedbroker.*"]);
                    cmd.args(["+spublish", "+ssubscribe", "+sunsubscribe", "+ping", "+auth"]);
                    // The mailboxes: a stream and a counter per id, written by one script.
                    cmd.args([
                        "~fedbroker.mailbox.*",
                        "+eval",
                        "+xadd",
                        "+xrange",
                        "+xrevrange",
                        "+xlen",
                    ]);
                    cmd.args(["+xdel", "+incr", "+set", "+get", "+exists", "+pexpire"]);
                }
            }
        }
        let child = cmd
            .args(&self.extra)
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
                "{} did not start on port {}",
                self.kind.program(),
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Which engine it is.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT` or `redis://127.0.0.1:PORT`, without credentials.
    pub fn url(&self) -> String {
        self.url_with("")
    }

    /// The URL with `userinfo@` (`fed:s3cret@`) before the address.
    pub fn url_with(&self, userinfo: &str) -> String {
        format!("{}://{userinfo}127.0.0.1:{}", self.kind.scheme(), self.port)
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
        assert!(self.run(), "{} vanished", self.kind.program());
    }

    /// Starts it again on the same port without what it kept (NATS's JetStream store is
    /// emptied; Redis keeps nothing across restarts here anyway).
    pub fn restart_empty(&mut self) {
        self.stop();
        self.store = crate::TempDir::new();
        assert!(self.run(), "{} vanished", self.kind.program());
    }
}

impl Drop for EngineServer {
    fn drop(&mut self) {
        self.stop();
    }
}
