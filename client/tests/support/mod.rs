//! Running the `fedbroker` client binary, and a local DNS server (dnsmasq) holding SRV records, for
//! the client's black-box tests. Everything talks to loopback only; every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fedbroker_tests::{wait_child, TempDir};

/// Longest a client run may take in these tests (a 503 retry waits about a second).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished client run produced.
#[derive(Debug)]
pub struct Output {
    /// Exit code.
    pub code: i32,
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: String,
}

/// A running client process, its stderr readable line by line as it comes.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stdout: Option<JoinHandle<Vec<u8>>>,
}

/// Starts `fedbroker ARGS` with `stdin` as its input, without FEDBROKER_* from the environment.
pub fn spawn(args: &[&str], stdin: &[u8]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedbroker"))
        .args(args)
        .env_remove("FEDBROKER_TOKEN")
        .env_remove("FEDBROKER_DNS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the fedbroker client");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let stdout = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = out.read_to_end(&mut bytes);
        bytes
    });
    let err = child.stderr.take().expect("piped stderr");
    let (tx, lines) = mpsc::channel();
    let stderr = Arc::new(Mutex::new(String::new()));
    let all = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            all.lock().unwrap().push_str(&format!("{line}\n"));
            let _ = tx.send(line);
        }
    });
    Running {
        child,
        lines,
        stderr,
        stdout: Some(stdout),
    }
}

/// Runs `fedbroker ARGS` to the end (bounded by [`RUN_TIMEOUT`]).
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    spawn(args, stdin).finish()
}

impl Running {
    /// Waits (bounded) for a stderr line containing `needle`; panics with the stderr so far.
    #[track_caller]
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "no stderr line with {needle:?} (exit status {status:?}); stderr:\n{}",
                        self.stderr.lock().unwrap()
                    );
                }
            }
        }
    }

    /// Waits for the process to exit 0 having printed exactly `stdout`.
    #[track_caller]
    pub fn expect_stdout(self, stdout: &[u8]) {
        let out = self.finish();
        assert_code(&out, 0);
        assert_eq!(out.stdout, stdout, "stdout");
    }

    /// Waits (bounded) for the process to exit and collects its output.
    #[track_caller]
    pub fn finish(mut self) -> Output {
        let status = wait_child(&mut self.child, RUN_TIMEOUT);
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "fedbroker still running after {RUN_TIMEOUT:?}; stderr:\n{}",
                self.stderr.lock().unwrap()
            );
        };
        let stdout = self.stdout.take().expect("once").join().expect("stdout reader");
        // The stderr reader ends with the pipe; give it a bounded moment to take the last lines.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
        {}
        Output {
            code: status.code().expect("exited, not killed by a signal"),
            stdout,
            stderr: self.stderr.lock().unwrap().clone(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.stdout.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Asserts the exit code, showing the run's output when it differs.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.code,
        code,
        "exit code; stderr:\n{}\nstdout: {:?}",
        out.stderr,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A loopback port that refuses connections (bound, then closed at once).
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// dnsmasq, or `None` (a skip, said on stderr) when it is not installed — except under `CI=true`,
/// where a missing dnsmasq fails the test: CI must never skip (scripts/test-all installs it).
pub fn dnsmasq_binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/dnsmasq", "/usr/local/sbin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).map(|d| d.join("dnsmasq")).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "dnsmasq is not installed and CI=true: this test must run (apt-get install dnsmasq)"
        );
        eprintln!("SKIPPED: dnsmasq is not installed (apt-get install dnsmasq); under CI=true this fails");
    }
    found
}

/// A dnsmasq answering on a loopback port with the records given, and nothing else (no upstream,
/// no /etc/hosts; names under `.test` it does not hold are NXDOMAIN). Killed on drop.
pub struct Dnsmasq {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq with `records` (flags such as `--srv-host=…`, `--host-record=…`); `None`
    /// when dnsmasq is missing outside CI.
    pub fn start(records: &[String]) -> Option<Dnsmasq> {
        let binary = dnsmasq_binary()?;
        let dir = TempDir::new();
        let log = dir.path().join("dnsmasq.log");
        // A free port can be taken by someone else between the check and dnsmasq's bind: retry.
        for _ in 0..5 {
            let port = free_udp_and_tcp_port();
            let mut child = Command::new(&binary)
                .args([
                    "--no-daemon".to_string(),
                    format!("--port={port}"),
                    "--listen-address=127.0.0.1".into(),
                    "--bind-interfaces".into(),
                    "--no-resolv".into(),
                    "--no-hosts".into(),
                    "--conf-file=/dev/null".into(),
                    "--pid-file=".into(),
                    "--local=/test/".into(),
                    format!("--log-facility={}", log.display()),
                    "--log-queries".into(),
                ])
                .args(records)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("stderr")).expect("create"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
            // Ready when it accepts DNS over TCP on the port (it binds UDP at the same time).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Dnsmasq {
                        child,
                        port,
                        log,
                        _dir: dir,
                    });
                }
                if child.try_wait().expect("try_wait").is_some() || Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "dnsmasq did not start; stderr:\n{}",
            std::fs::read_to_string(dir_stderr(&log)).unwrap_or_default()
        );
    }

    /// `--dns` value for the client.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What dnsmasq logged (the queries), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn dir_stderr(log: &Path) -> PathBuf {
    log.with_file_name("stderr")
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 at the time of asking.
fn free_udp_and_tcp_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// `--srv-host=_fedbroker._tcp.DOMAIN,TARGET,PORT,PRIORITY,WEIGHT`
pub fn srv(domain: &str, target: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("--srv-host=_fedbroker._tcp.{domain},{target},{port},{priority},{weight}")
}

/// `--host-record=NAME,127.0.0.1` (an SRV target must resolve).
pub fn host(name: &str) -> String {
    format!("--host-record={name},127.0.0.1")
}
