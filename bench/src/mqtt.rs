//! The four MQTT 3.1.1 exchanges the benchmark needs, over WebSocket (path `/mqtt`, subprotocol
//! `mqtt`): CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH QoS 1/PUBACK (senders) and PUBLISH QoS 0
//! (to listeners).
//!
//! Why not `rumqttc`: its `websocket` feature pulls `async-tungstenite` 0.29 (a second tungstenite
//! next to the workspace's 0.30), `ws_stream_tungstenite`, `flume`, `tokio-rustls` with its default
//! crypto provider and more, which this CI-built crate does not want; and its event loop owns the
//! in-flight window and reports PUBACKs through its own queue, which hides exactly the
//! "W in flight, each acknowledged by its PUBACK" job the benchmark must control and time. The
//! packets below are a few dozen lines.

use std::net::{Ipv4Addr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::net::Ws;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBACK: u8 = 9;
const PINGRESP: u8 = 13;

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT, clean session, keep-alive off (the benchmark's connections are short or idle on
/// purpose; fedbroker's listeners answer the broker's pings instead).
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&0u16.to_be_bytes());
    put_str(&mut body, client_id);
    let mut p = vec![CONNECT << 4];
    put_len(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

fn subscribe_packet(pid: u16, topic: &str, qos: u8) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    put_str(&mut body, topic);
    body.push(qos);
    let mut p = vec![0x82];
    put_len(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

/// Appends a QoS 1 PUBLISH whose payload is `len` bytes written by `payload`.
pub fn publish_qos1(out: &mut Vec<u8>, topic: &str, pid: u16, len: usize, payload: impl FnOnce(&mut Vec<u8>)) {
    out.push((PUBLISH << 4) | 0x02);
    put_len(out, 2 + topic.len() + 2 + len);
    put_str(out, topic);
    out.extend_from_slice(&pid.to_be_bytes());
    let before = out.len();
    payload(out);
    debug_assert_eq!(out.len() - before, len);
}

/// Appends a QoS 0 PUBLISH (no packet id, no acknowledgement).
pub fn publish_qos0(out: &mut Vec<u8>, topic: &str, len: usize, payload: impl FnOnce(&mut Vec<u8>)) {
    out.push(PUBLISH << 4);
    put_len(out, 2 + topic.len() + len);
    put_str(out, topic);
    let before = out.len();
    payload(out);
    debug_assert_eq!(out.len() - before, len);
}

/// PINGREQ: the broker answers PINGRESP after handling every packet before it, so it
/// acknowledges a window of QoS 0 PUBLISHes.
pub const PINGREQ: [u8; 2] = [0xc0, 0x00];

/// Is this packet a PINGRESP? Anything else on a QoS 0 publisher's connection is an error.
pub fn pingresp(p: &Packet<'_>) -> Result<(), String> {
    match p.kind() {
        PINGRESP if p.body.is_empty() => Ok(()),
        k => Err(format!(
            "MQTT: unexpected packet type {k} on a QoS 0 publisher connection"
        )),
    }
}

/// The topic every fan-out listener subscribes to.
pub const FANOUT_TOPIC: &str = "bench/fanout";

/// The topic of listener `j`.
pub fn topic(j: u32) -> String {
    format!("bench/{j}")
}

/// MQTT packets reassembled from WebSocket messages (a packet may span messages and a message
/// may hold several packets).
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    pos: usize,
}

/// One packet: its first byte and its body after the remaining-length field.
pub struct Packet<'a> {
    pub first: u8,
    pub body: &'a [u8],
}

impl Packet<'_> {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
}

impl Reader {
    /// Adds `data` and calls `f` for every complete packet.
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Packet<'_>) -> Result<(), String>) -> Result<(), String> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        // Common case: whole packets in one message, parsed in place.
        let (src, owned) = if self.buf.is_empty() {
            (data, false)
        } else {
            self.buf.extend_from_slice(data);
            (&self.buf[..], true)
        };
        let mut pos = 0;
        loop {
            let rest = &src[pos..];
            if rest.len() < 2 {
                break;
            }
            let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
            let complete_len = loop {
                if i >= rest.len() {
                    break false;
                }
                if i > 4 {
                    return Err("MQTT: malformed remaining length".into());
                }
                let b = rest[i];
                len += (b & 0x7f) as usize * mult;
                mult *= 128;
                i += 1;
                if b & 0x80 == 0 {
                    break true;
                }
            };
            if !complete_len || rest.len() < i + len {
                break;
            }
            f(Packet {
                first: rest[0],
                body: &rest[i..i + len],
            })?;
            pos += i + len;
        }
        if owned {
            self.pos = pos;
        } else {
            self.buf.extend_from_slice(&data[pos..]);
        }
        Ok(())
    }
}

/// Splits a PUBLISH body into (packet id if QoS > 0, payload); the topic is skipped.
pub fn parse_publish<'a>(p: &Packet<'a>) -> Result<(Option<u16>, &'a [u8]), String> {
    let b = p.body;
    if b.len() < 2 {
        return Err("MQTT: short PUBLISH".into());
    }
    let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
    let qos = (p.first >> 1) & 3;
    let mut at = 2 + tl;
    if b.len() < at {
        return Err("MQTT: short PUBLISH topic".into());
    }
    let pid = if qos > 0 {
        if b.len() < at + 2 {
            return Err("MQTT: short PUBLISH packet id".into());
        }
        let id = u16::from_be_bytes([b[at], b[at + 1]]);
        at += 2;
        Some(id)
    } else {
        None
    };
    Ok((pid, &b[at..]))
}

/// Reads WebSocket messages into `r` until `f` returns `Some`.
pub async fn read_until<T>(
    ws: &mut Ws,
    r: &mut Reader,
    mut f: impl FnMut(Packet<'_>) -> Result<Option<T>, String>,
) -> Result<T, String> {
    let mut got = None;
    loop {
        let data = next_data(ws).await?;
        r.feed(&data, |p| {
            if got.is_none() {
                got = f(p)?;
            }
            Ok(())
        })?;
        if let Some(v) = got.take() {
            return Ok(v);
        }
    }
}

/// The next data message's bytes (control frames are answered by tungstenite).
pub async fn next_data(ws: &mut Ws) -> Result<tokio_tungstenite::tungstenite::Bytes, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b),
            Some(Ok(Message::Text(t))) => {
                return Ok(tokio_tungstenite::tungstenite::Bytes::from(
                    t.as_str().as_bytes().to_vec(),
                ))
            }
            Some(Ok(Message::Close(c))) => return Err(format!("MQTT broker closed the WebSocket: {c:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("MQTT WebSocket: {e}")),
            None => return Err("MQTT broker closed the connection".into()),
        }
    }
}

/// Connects, sends CONNECT and waits for a successful CONNACK.
pub async fn connect(
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
    client_id: &str,
    small: bool,
) -> Result<(Ws, Reader), String> {
    let mut ws = crate::net::ws_connect(addr, src, "/mqtt", Some("mqtt"), small).await?;
    ws.send(Message::Binary(connect_packet(client_id).into()))
        .await
        .map_err(|e| format!("MQTT CONNECT: {e}"))?;
    let mut r = Reader::default();
    read_until(&mut ws, &mut r, |p| match p.kind() {
        CONNACK if p.body.len() == 2 && p.body[1] == 0 => Ok(Some(())),
        CONNACK => Err(format!("MQTT CONNACK refused: {:?}", p.body)),
        k => Err(format!("MQTT: packet type {k} before CONNACK")),
    })
    .await?;
    Ok((ws, r))
}

/// Connects and subscribes to `topic` at QoS 0 (the listener acknowledges nothing, like a
/// fedbroker WebSocket listener), waiting for the SUBACK.
pub async fn subscribe(
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
    client_id: &str,
    topic: &str,
    small: bool,
) -> Result<(Ws, Reader), String> {
    let (mut ws, mut r) = connect(addr, src, client_id, small).await?;
    ws.send(Message::Binary(subscribe_packet(1, topic, 0).into()))
        .await
        .map_err(|e| format!("MQTT SUBSCRIBE: {e}"))?;
    read_until(&mut ws, &mut r, |p| match p.kind() {
        SUBACK if p.body.len() == 3 && p.body[2] <= 2 => Ok(Some(())),
        SUBACK => Err(format!("MQTT SUBACK refused: {:?}", p.body)),
        k => Err(format!("MQTT: packet type {k} before SUBACK")),
    })
    .await?;
    Ok((ws, r))
}

/// Is this packet a PUBACK, and for which id? PINGRESP is ignored; anything else is an error.
pub fn puback(p: &Packet<'_>) -> Result<Option<u16>, String> {
    match p.kind() {
        PUBACK if p.body.len() == 2 => Ok(Some(u16::from_be_bytes([p.body[0], p.body[1]]))),
        PINGRESP => Ok(None),
        k => Err(format!("MQTT: unexpected packet type {k} on a sender connection")),
    }
}

/// Is this packet a PUBLISH (what listeners expect)?
pub fn is_publish(p: &Packet<'_>) -> bool {
    p.kind() == PUBLISH
}
