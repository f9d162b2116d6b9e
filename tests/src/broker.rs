//! The broker under test as a child process.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::http::{Conn, Response};
use crate::tls::TestCert;
use crate::ws::{Listener, RawWs};
use crate::Adapter;

/// How long a broker may take to print its `listening on` lines, or a CLI run to exit.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Prefix of the line printed per listen address (SPEC §8), before the scheme.
const LISTENING_PREFIX: &str = "listening on ";

/// A scratch directory removed on drop (config files, captured stderr).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory unique to this process and call.
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "fedbroker-tests-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }

    /// As [`TempDir::write`], returning the path as a `String` (for argument lists).
    pub fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        self.write(name, contents).display().to_string()
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Options for starting a [`Broker`]; [`Broker::start`] covers the common case.
pub struct BrokerBuilder {
    adapter: Adapter,
    args: Vec<String>,
    config: Option<String>,
    listeners: Option<usize>,
    /// `(flag, file name, contents)`: written to the broker's scratch directory, passed as `flag PATH`.
    files: Vec<(String, String, Vec<u8>)>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl BrokerBuilder {
    /// Appends command-line arguments (flags for §5/§6/TLS tests go here too).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Writes `toml` to a file and passes it with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    /// Writes `contents` to a file `name` in the broker's scratch directory and passes `flag PATH`
    /// (`--auth-tokens`, `--auth-jwt-secret`, …).
    pub fn file_arg(mut self, flag: &str, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files
            .push((flag.to_string(), name.to_string(), contents.as_ref().to_vec()));
        self
    }

    /// Serves TLS with `cert` (`--tls-cert`/`--tls-key`): the broker must print `https://` lines,
    /// and [`Broker::connect`], [`Broker::listen`] and friends then speak TLS, trusting `cert`.
    pub fn tls(self, cert: &TestCert) -> Self {
        self.file_arg("--tls-cert", "cert.pem", cert.cert_pem())
            .file_arg("--tls-key", "key.pem", cert.key_pem())
            .expect_tls(cert)
    }

    /// Expects TLS with `cert` configured some other way (a config file): `https://` lines, and
    /// TLS clients trusting `cert`.
    pub fn expect_tls(mut self, cert: &TestCert) -> Self {
        self.tls = Some(cert.client_config());
        self
    }

    /// How many `listening on` lines to wait for, when the listen addresses come from the config file.
    /// Without it: one per `--listen`, and `--listen 127.0.0.1:0` is added when there is none.
    pub fn expect_listeners(mut self, count: usize) -> Self {
        self.listeners = Some(count);
        self
    }

    /// Spawns the broker and waits (bounded) until it has printed one `listening on` line per listener.
    pub fn start(self) -> Broker {
        let dir = TempDir::new();
        let mut args = self.args;
        for (flag, name, contents) in &self.files {
            args.push(flag.clone());
            args.push(dir.file(name, contents));
        }
        if let Some(toml) = &self.config {
            let path = dir.write("config.toml", toml);
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        let listeners = match self.listeners {
            Some(count) => count,
            None => match args.iter().filter(|a| *a == "--listen").count() {
                0 => {
                    args.push("--listen".into());
                    args.push("127.0.0.1:0".into());
                    1
                }
                count => count,
            },
        };

        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let binary = self.adapter.binary();
        let mut child = Command::new(&binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", binary.display()));

        // A reader thread turns stdout into lines on a channel, so waiting for them is bounded; it keeps
        // draining stdout afterwards so that the broker never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines_tx.send(line);
            }
        });

        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut broker = Broker {
            adapter: self.adapter,
            tls: self.tls,
            child,
            addrs: Vec::new(),
            stdout_lines: Vec::new(),
            stderr_path,
            exit: None,
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while broker.addrs.len() < listeners {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(remaining) {
                Ok(line) => line,
                Err(_) => {
                    let status = broker.child.try_wait().ok().flatten();
                    panic!(
                        "{} did not print {listeners} `listening on` line(s) within {STARTUP_TIMEOUT:?} \
                         (args {args:?}, exit status {status:?}, stdout {:?})\nstderr:\n{}",
                        binary.display(),
                        broker.stdout_lines,
                        broker.stderr()
                    );
                }
            };
            if let Some(url) = line.trim_end().strip_prefix(LISTENING_PREFIX) {
                let addr = url.strip_prefix(scheme).and_then(|rest| rest.strip_prefix("://"));
                let addr = addr.unwrap_or_else(|| {
                    panic!(
                        "stdout line {line:?} should announce a {scheme}:// URL (SPEC §8)\nstderr:\n{}",
                        broker.stderr()
                    )
                });
                let addr = addr
                    .parse()
                    .unwrap_or_else(|e| panic!("bad address in stdout line {line:?}: {e}"));
                broker.addrs.push(addr);
            }
            broker.stdout_lines.push(line);
        }
        broker
    }
}

/// A running broker; killed on drop. When the test is panicking its stderr is printed, so the test's
/// captured output shows what the broker logged.
pub struct Broker {
    adapter: Adapter,
    /// The client configuration when the broker serves TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
    child: Child,
    addrs: Vec<SocketAddr>,
    stdout_lines: Vec<String>,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
    _dir: TempDir,
}

impl Broker {
    /// Starts `adapter` with `args` (plus `--listen 127.0.0.1:0` unless `args` has a `--listen`).
    pub fn start(adapter: Adapter, args: &[&str]) -> Broker {
        Broker::builder(adapter).args(args).start()
    }

    /// A builder for config files and listener counts.
    pub fn builder(adapter: Adapter) -> BrokerBuilder {
        BrokerBuilder {
            adapter,
            args: Vec::new(),
            config: None,
            listeners: None,
            files: Vec::new(),
            tls: None,
        }
    }

    /// The adapter this broker runs.
    pub fn adapter(&self) -> Adapter {
        self.adapter
    }

    /// The first listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// All listen addresses, in the order they were printed.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The stdout lines read so far (the `listening on` lines at least).
    pub fn stdout_lines(&self) -> &[String] {
        &self.stdout_lines
    }

    /// Everything the broker wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read(&self.stderr_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// A new HTTP connection to the first listen address (over TLS when the broker serves TLS).
    pub fn connect(&self) -> Conn {
        match &self.tls {
            None => Conn::connect(self.addr()),
            Some(config) => Conn::connect_tls(self.addr(), config.clone()),
        }
    }

    /// The client TLS configuration trusting this broker's certificate, when it serves TLS.
    pub fn tls_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// The `Host` header value for this broker (`127.0.0.1:port`).
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The broker's own origin as a browser sends it (SPEC §6): scheme + `Host`.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme(), self.host())
    }

    /// Sends raw bytes on a new connection and reads one response.
    #[track_caller]
    pub fn exchange(&self, raw: &[u8]) -> (Conn, Response) {
        let mut conn = self.connect();
        conn.send(raw);
        let response = conn.read_response();
        (conn, response)
    }

    /// Sends raw bytes on a new connection and asserts that they are refused with an error `status`
    /// (§3 error shape), after which the broker closes the connection.
    #[track_caller]
    pub fn assert_refused(&self, raw: &[u8], status: u16) -> Response {
        let (mut conn, response) = self.exchange(raw);
        response.assert_error(status);
        conn.expect_closed();
        response
    }

    /// `GET path` on a new connection.
    pub fn get(&self, path: &str) -> Response {
        self.connect().get(path)
    }

    /// `POST /{id}` with `body` on a new connection.
    pub fn post(&self, id: u32, body: &[u8]) -> Response {
        self.connect().post(&format!("/{id}"), body)
    }

    /// A tungstenite listener on `/{id}` (`wss://` when the broker serves TLS).
    #[track_caller]
    pub fn listen(&self, id: u32) -> Listener {
        self.listen_with(&format!("/{id}"), &[])
    }

    /// A tungstenite listener on `path` (which may carry a query, e.g. `?token=`), sending the extra
    /// request `headers`; panics unless the broker answers `101`.
    #[track_caller]
    pub fn listen_with(&self, path: &str, headers: &[(&str, &str)]) -> Listener {
        self.try_listen_with(path, headers)
            .unwrap_or_else(|e| panic!("listen on {}{path} failed: {e}", self.addr()))
    }

    /// As [`Broker::listen_with`], returning the handshake error as text.
    pub fn try_listen_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<Listener, String> {
        Listener::try_connect_with(self.addr(), path, headers, self.tls.clone())
    }

    /// A raw-frame WebSocket connection on `/{id}`.
    #[track_caller]
    pub fn listen_raw(&self, id: u32) -> RawWs {
        RawWs::upgrade(self.connect(), &format!("/{id}"))
    }

    /// `GET /` as parsed JSON, after checking status and content type.
    pub fn stats(&self) -> serde_json::Value {
        self.connect().stats("/")
    }

    /// One counter of `GET /` (panics if missing or not a non-negative integer).
    pub fn stat(&self, key: &str) -> u64 {
        let stats = self.stats();
        stats[key]
            .as_u64()
            .unwrap_or_else(|| panic!("statistics key {key:?} missing or not a count: {stats}"))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the broker.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits up to `timeout` for the broker to exit and returns its status; panics if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = wait_child(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("broker still running {timeout:?} after being told to stop"));
        self.exit = Some(status);
        status
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} stderr ---\n{}--- end of stderr ---",
                self.adapter.name(),
                self.stderr()
            );
        }
    }
}

/// What a short-lived run of the binary (`--help`, `--version`, a bad flag) produced.
#[derive(Debug)]
pub struct CliOutput {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything printed to stdout.
    pub stdout: String,
    /// Everything printed to stderr.
    pub stderr: String,
}

impl CliOutput {
    /// The exit code; panics if the process was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }
}

/// Runs the binary with `args` to completion (bounded: killed and failed after 10 s).
pub fn run_cli(adapter: Adapter, args: &[&str]) -> CliOutput {
    let binary = adapter.binary();
    let mut child = Command::new(&binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", binary.display()));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let Some(status) = wait_child(&mut child, STARTUP_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{} {args:?} still running after {STARTUP_TIMEOUT:?}", binary.display());
    };
    CliOutput {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Reads a pipe to its end on a thread (so a chatty child never blocks on a full pipe).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Polls `child` until it exits or `timeout` passes (`None` then; the child is left running).
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
