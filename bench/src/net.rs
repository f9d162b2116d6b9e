//! Targets, TCP and WebSocket connection set-up shared by every scenario.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// Which broker protocol a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// fedbroker: `POST /{id}` to send, WebSocket `GET /{id}` to listen.
    Fedbroker,
    /// MQTT 3.1.1 over WebSocket (path `/mqtt`, subprotocol `mqtt`), e.g. mosquitto.
    Mqtt,
    /// The NATS text protocol over WebSocket, e.g. nats-server's `websocket` listener.
    Nats,
}

/// A broker to drive: `fedbroker://ADDR`, `mqtt-ws://ADDR` or `nats-ws://ADDR`.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("target '{s}' has no scheme (fedbroker://, mqtt-ws://, nats-ws://)"))?;
        let kind = match scheme {
            "fedbroker" => Kind::Fedbroker,
            "mqtt-ws" => Kind::Mqtt,
            "nats-ws" => Kind::Nats,
            _ => {
                return Err(format!(
                    "unknown target scheme '{scheme}' (fedbroker, mqtt-ws, nats-ws)"
                ))
            }
        };
        let addr = rest
            .trim_end_matches('/')
            .parse()
            .map_err(|_| format!("target address '{rest}' is not IP:PORT"))?;
        Ok(Target { kind, addr })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            Kind::Fedbroker => "fedbroker",
            Kind::Mqtt => "mqtt-ws",
            Kind::Nats => "nats-ws",
        };
        write!(f, "{scheme}://{}", self.addr)
    }
}

/// Connects over TCP with Nagle off, from source address `src` when given (bound before
/// connecting, so many connections can spread over 127.0.0.x and not exhaust one address's
/// ephemeral ports).
pub async fn connect_tcp(addr: SocketAddr, src: Option<Ipv4Addr>) -> Result<TcpStream, String> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let (Some(ip), SocketAddr::V4(_)) = (src, addr) {
        sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let s = sock.connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    Ok(s)
}

/// Opens a client WebSocket to `ws://addr{path}`, offering `subprotocol` when given. `small`
/// shrinks tungstenite's buffers for the idle scenario's thousands of connections.
pub async fn ws_connect(
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
    path: &str,
    subprotocol: Option<&str>,
    small: bool,
) -> Result<Ws, String> {
    let tcp = connect_tcp(addr, src).await?;
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    let mut cfg = WebSocketConfig::default().max_message_size(Some(64 << 20));
    if small {
        cfg = cfg.read_buffer_size(4096).write_buffer_size(0);
    } else {
        // Frames go out when the sender flushes, so one window is one write.
        cfg = cfg.write_buffer_size(256 << 10);
    }
    let (ws, resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg))
        .await
        .map_err(|e| format!("WebSocket handshake with {addr}{path}: {e}"))?;
    if resp.status().as_u16() != 101 {
        return Err(format!(
            "WebSocket handshake with {addr}{path}: status {}",
            resp.status()
        ));
    }
    Ok(ws)
}

/// The `VmRSS` of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("bad VmRSS line '{line}'"))?;
    Ok(kb * 1024)
}

/// The 1-minute load average, recorded next to every figure (the machine is shared).
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// CPU time (user + system) consumed so far by process `pid`, in microseconds (clock-tick
/// resolution, usually 10 ms).
pub fn process_cpu_us(pid: u32) -> Result<u64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let rest = s.rsplit_once(") ").map(|(_, r)| r).ok_or("bad /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or("bad /proc/PID/stat");
    let t = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(t * 1_000_000 / hz)
}

/// CPU time (user + system) consumed so far by this process, in microseconds.
pub fn self_cpu_us() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}
