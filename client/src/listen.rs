//! `fedbroker listen`: holds a WebSocket on the addressed id and hands each message on, in order:
//! to a file in `--output DIR`, to `--exec CMD` on its stdin, or (with neither) to stdout.
//!
//! Reconnecting: when the connection is lost (network error, broker restart or shutdown close
//! `1001`, nothing received for `--idle-timeout`), or the broker is unreachable or answers `503`,
//! the listener connects again after a backoff of 0.5 s doubling to 30 s (SRV records looked up
//! again), without limit unless `--retries N` bounds the consecutive failures; a connection that
//! was upgraded resets the count. `--no-reconnect` exits at the first loss instead. It never
//! reconnects after a refusal (`401`, `403`, `400` …), a replacement (`4000`: another listener
//! took the id, exit 10) or an expired token (`4001`, exit 4). Messages queued at the broker for
//! a lost connection are lost with it (docs/protocol.md §5): the broker stores nothing.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::Message;

use crate::address::Address;
use crate::net::{Connector, Stream};
use crate::outcome::{Failure, Kind};
use crate::send::retry_delay;
use crate::verbose;

/// What `listen` needs besides the address.
pub struct ListenOptions {
    /// Bearer token (sent on the upgrade request).
    pub token: Option<String>,
    /// Write each message to a new file in this directory.
    pub output: Option<PathBuf>,
    /// Run this shell command per message, the message on its stdin.
    pub exec: Option<String>,
    /// Stop (exit 0) after this many messages.
    pub count: Option<u64>,
    /// On stdout, follow each message with a newline.
    pub newline: bool,
    /// Reconnect after a lost connection.
    pub reconnect: bool,
    /// Consecutive failed reconnections allowed (`None`: no limit).
    pub retries: Option<u32>,
    /// Reconnect when nothing (not even a ping) arrived for this long.
    pub idle_timeout: Duration,
}

/// Listens on `address` until `--count` messages arrived (`Ok`) or a failure ends it.
pub fn listen(conn: &mut Connector, address: &Address, opts: &ListenOptions) -> Result<(), Failure> {
    let mut sink = Sink::new(address, opts)?;
    let mut failures: u32 = 0;
    loop {
        let (upgraded, result) = session(conn, address, opts, &mut sink);
        if upgraded {
            failures = 0;
        }
        let failure = match result {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        let retryable = matches!(failure.kind, Kind::Unreachable | Kind::Busy);
        if !retryable || !opts.reconnect || opts.retries.is_some_and(|max| failures >= max) {
            return Err(failure);
        }
        let delay = retry_delay(failures, None);
        eprintln!("fedbroker: {failure}; reconnecting in {:.1} s", delay.as_secs_f64());
        sleep(delay);
        failures += 1;
    }
}

/// One connection: upgrade, then messages until it ends. The flag says whether it was upgraded.
fn session(
    conn: &mut Connector,
    address: &Address,
    opts: &ListenOptions,
    sink: &mut Sink,
) -> (bool, Result<(), Failure>) {
    // On a mailbox id, a reconnection resumes after the last message handed on (?since=).
    let since = sink.last_seq.or_else(|| given_since(address));
    let mut ws = match upgrade(conn, address, opts, since) {
        Ok((ws, last)) => {
            if let Some(last) = last {
                sink.last_seq = Some(since.unwrap_or(last));
            }
            ws
        }
        Err(f) => return (false, Err(f)),
    };
    if let Err(e) = ws.get_ref().socket().set_read_timeout(Some(opts.idle_timeout)) {
        return (true, Err(Failure::new(Kind::Local, format!("socket: {e}"))));
    }
    loop {
        match ws.read() {
            Ok(Message::Binary(data)) => match sink.deliver(&data) {
                Ok(false) => {}
                Ok(true) => {
                    // --count reached: close politely, bounded by the socket timeouts.
                    let _ = ws.close(None);
                    let _ = ws.flush();
                    return (true, Ok(()));
                }
                Err(f) => return (true, Err(f)),
            },
            Ok(Message::Text(_)) => {
                return (
                    true,
                    Err(Failure::new(
                        Kind::Local,
                        format!("{address}: the broker sent a text message; listeners get binary messages only"),
                    )),
                )
            }
            Ok(Message::Close(frame)) => {
                // tungstenite queued the answering Close; send it before going.
                let _ = ws.flush();
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return (true, Err(closed(address, code, &reason)));
            }
            Ok(_) => {} // pings are answered by tungstenite; pongs and raw frames ignored
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                return (
                    true,
                    Err(Failure::new(
                        Kind::Unreachable,
                        format!(
                            "{address}: nothing from the broker for {} s (see --idle-timeout)",
                            opts.idle_timeout.as_secs()
                        ),
                    )),
                );
            }
            Err(e) => {
                return (
                    true,
                    Err(Failure::new(
                        Kind::Unreachable,
                        format!("{address}: connection lost: {e}"),
                    )),
                )
            }
        }
    }
}

/// The failure a close code from the broker means.
fn closed(address: &Address, code: u16, reason: &str) -> Failure {
    let what = format!("{address}: the broker closed the listener ({code} {reason})");
    let kind = match code {
        4000 => Kind::Replaced,
        4001 => Kind::Auth,
        1002 | 1003 | 1007 | 1009 => Kind::Local,
        // 1001 shutting down / ping timeout, 1008 too slow, 1011 …: worth connecting again.
        _ => Kind::Unreachable,
    };
    Failure::new(kind, what)
}

/// The `since` of the address's query, if it has one.
fn given_since(address: &Address) -> Option<u64> {
    let Address::Url(u) = address else { return None };
    let target = u.target();
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix("since=")?.parse().ok())
}

/// `target` with `since=SEQ` instead of any `since` it had.
fn with_since(target: &str, since: Option<u64>) -> String {
    let Some(since) = since else {
        return target.to_owned();
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && *kv != "since" && !kv.starts_with("since="))
        .map(str::to_owned)
        .collect();
    params.push(format!("since={since}"));
    format!("{path}?{}", params.join("&"))
}

/// Upgrades; on a mailbox id also returns the `101`'s `Fedbroker-Seq`.
fn upgrade(
    conn: &mut Connector,
    address: &Address,
    opts: &ListenOptions,
    since: Option<u64>,
) -> Result<(tungstenite::WebSocket<Stream>, Option<u64>), Failure> {
    let (tls, endpoints) = conn.endpoints(address)?;
    let (stream, endpoint) = conn.connect(tls, &endpoints)?;
    let target = match address {
        Address::Url(u) => u.target(),
        Address::Srv { id, .. } => format!("/{id}"),
    };
    let target = with_since(&target, since);
    let url = format!("{}://{}{target}", if tls { "wss" } else { "ws" }, endpoint.authority());
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Failure::new(Kind::Usage, format!("{url}: {e}")))?;
    if let Some(token) = &opts.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Failure::new(Kind::Usage, "--token: not a valid header value"))?;
        request.headers_mut().insert("authorization", value);
    }
    verbose(format_args!("upgrading {url}"));
    match tungstenite::client::client(request, stream) {
        Ok((ws, response)) => {
            // The line scripts (and the tests) wait for: from now on messages are received.
            eprintln!("fedbroker: listening on {url}");
            let last = response
                .headers()
                .get("fedbroker-seq")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Ok((ws, last))
        }
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let sentence = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            // A 404 to an upgrade is a wrong path (no such route), not a missing listener.
            let kind = match Kind::from_status(status) {
                Kind::NoListener => Kind::Refused,
                k => k,
            };
            Err(Failure::new(kind, format!("{address}: {status} {sentence}")))
        }
        Err(HandshakeError::Failure(tungstenite::Error::Io(e))) => Err(Failure::new(
            Kind::Unreachable,
            format!("{address}: WebSocket upgrade failed: {e}"),
        )),
        Err(HandshakeError::Failure(e)) => Err(Failure::new(
            Kind::Local,
            format!("{address}: WebSocket upgrade failed: {e}"),
        )),
        Err(HandshakeError::Interrupted(_)) => Err(Failure::new(
            Kind::Unreachable,
            format!("{address}: WebSocket upgrade timed out"),
        )),
    }
}

/// Where messages go.
struct Sink {
    output: Option<PathBuf>,
    next_file: u64,
    exec: Option<String>,
    newline: bool,
    received: u64,
    /// On a mailbox id: the seq of the last message handed on (counted from the `101`).
    last_seq: Option<u64>,
    count: Option<u64>,
    id: u32,
    address: String,
}

impl Sink {
    fn new(address: &Address, opts: &ListenOptions) -> Result<Sink, Failure> {
        let mut next_file = 1;
        if let Some(dir) = &opts.output {
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::new(Kind::Local, format!("--output {}: {e}", dir.display())))?;
            next_file = next_file_number(dir)
                .map_err(|e| Failure::new(Kind::Local, format!("--output {}: {e}", dir.display())))?;
        }
        Ok(Sink {
            output: opts.output.clone(),
            next_file,
            exec: opts.exec.clone(),
            newline: opts.newline,
            received: 0,
            last_seq: None,
            count: opts.count,
            id: address.id(),
            address: address.to_string(),
        })
    }

    /// Hands one message on; `true` when `--count` is reached.
    fn deliver(&mut self, data: &[u8]) -> Result<bool, Failure> {
        self.received += 1;
        if let Some(last) = &mut self.last_seq {
            *last += 1;
        }
        let mut file = None;
        if let Some(dir) = &self.output {
            let name = format!("{:06}.bin", self.next_file);
            let path = dir.join(&name);
            // Written aside, then renamed: whoever watches the directory never sees half a message.
            let partial = dir.join(format!(".{name}.partial"));
            std::fs::write(&partial, data)
                .and_then(|()| std::fs::rename(&partial, &path))
                .map_err(|e| Failure::new(Kind::Local, format!("--output: writing {}: {e}", path.display())))?;
            self.next_file += 1;
            file = Some(path);
        }
        if let Some(cmd) = &self.exec {
            self.run(cmd, data, file.as_deref())?;
        }
        if self.output.is_none() && self.exec.is_none() {
            let mut out = io::stdout().lock();
            out.write_all(data)
                .and_then(|()| if self.newline { out.write_all(b"\n") } else { Ok(()) })
                .and_then(|()| out.flush())
                .map_err(|e| Failure::new(Kind::Local, format!("writing to stdout: {e}")))?;
        }
        Ok(self.count.is_some_and(|c| self.received >= c))
    }

    /// Runs `sh -c CMD` with the message on stdin and waits for it; a non-zero exit is reported
    /// and listening goes on.
    fn run(&self, cmd: &str, data: &[u8], file: Option<&Path>) -> Result<(), Failure> {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(cmd)
            .env("FEDBROKER_ID", self.id.to_string())
            .env("FEDBROKER_SEQ", self.received.to_string())
            .env("FEDBROKER_ADDRESS", &self.address)
            .stdin(Stdio::piped());
        if let Some(f) = file {
            command.env("FEDBROKER_FILE", f);
        }
        let mut child = command
            .spawn()
            .map_err(|e| Failure::new(Kind::Local, format!("--exec: cannot run /bin/sh: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its stdin closes the pipe: not an error.
            match stdin.write_all(data) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                    eprintln!("fedbroker: --exec: writing the message to the command: {e}")
                }
                _ => {}
            }
        }
        let status = child
            .wait()
            .map_err(|e| Failure::new(Kind::Local, format!("--exec: {e}")))?;
        if !status.success() {
            eprintln!(
                "fedbroker: --exec command for message {} {status}; listening goes on",
                self.received
            );
        }
        Ok(())
    }
}

/// One more than the highest `NNNNNN.bin` already in `dir`, so a restarted listener never
/// overwrites what an earlier run wrote.
fn next_file_number(dir: &Path) -> io::Result<u64> {
    let mut highest = 0;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".bin"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            highest = highest.max(n);
        }
    }
    highest
        .checked_add(1)
        .ok_or_else(|| io::Error::other("no file number is left after the highest one in the folder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_decide_the_outcome() {
        let a = Address::parse("http://127.0.0.1:1/42").unwrap();
        assert_eq!(closed(&a, 4000, "replaced").kind, Kind::Replaced);
        assert_eq!(closed(&a, 4001, "token expired").kind, Kind::Auth);
        assert_eq!(closed(&a, 1001, "shutting down").kind, Kind::Unreachable);
        assert_eq!(closed(&a, 1008, "too slow: queue full").kind, Kind::Unreachable);
        assert_eq!(closed(&a, 1003, "listeners only receive").kind, Kind::Local);
    }

    #[test]
    fn file_numbers_continue_after_the_highest() {
        let dir = std::env::temp_dir().join(format!("fedbroker-client-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(next_file_number(&dir).unwrap(), 1);
        for name in ["000002.bin", "000010.bin", "notes.txt", ".000011.bin.partial"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        assert_eq!(next_file_number(&dir).unwrap(), 11);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod since_tests {
    use super::with_since;

    #[test]
    fn since_replaces_the_given_one() {
        assert_eq!(with_since("/5", None), "/5");
        assert_eq!(with_since("/5", Some(3)), "/5?since=3");
        assert_eq!(with_since("/mq/5?token=t&since=1", Some(9)), "/mq/5?token=t&since=9");
    }
}
