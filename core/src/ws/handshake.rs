//! The server side of the opening handshake (RFC 6455 §4.2).

use crate::http::{RequestHead, Response};
use crate::HttpError;

/// A checked upgrade request, ready to be accepted with [`Handshake::accept`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    key: String,
}

/// Checks the upgrade headers of a `GET /{id}`: `426` when there is no WebSocket upgrade at all,
/// `400` when one is attempted with wrong headers.
pub fn check_upgrade(head: &RequestHead) -> Result<Handshake, HttpError> {
    if !head.upgrade_websocket() {
        return Err(HttpError::UpgradeRequired);
    }
    if head.version() != http::Version::HTTP_11 {
        return Err(HttpError::BadHandshake("WebSocket needs HTTP/1.1"));
    }
    if !head.connection_upgrade() {
        return Err(HttpError::BadHandshake("Connection must include upgrade"));
    }
    if head.framing().has_body() {
        return Err(HttpError::UnexpectedBody);
    }
    let version = head
        .single_header("sec-websocket-version")
        .map_err(|_| HttpError::BadHandshake("repeated Sec-WebSocket-Version"))?;
    match version.map(<[u8]>::trim_ascii) {
        Some(b"13") => {}
        Some(_) => return Err(HttpError::BadHandshake("Sec-WebSocket-Version must be 13")),
        None => return Err(HttpError::BadHandshake("missing Sec-WebSocket-Version")),
    }
    let key = head
        .single_header("sec-websocket-key")
        .map_err(|_| HttpError::BadHandshake("repeated Sec-WebSocket-Key"))?;
    let key = key.ok_or(HttpError::BadHandshake("missing Sec-WebSocket-Key"))?;
    let key = std::str::from_utf8(key)
        .map_err(|_| HttpError::BadHandshake("Sec-WebSocket-Key is not base64"))?
        .trim();
    if !is_base64_of_16_bytes(key) {
        return Err(HttpError::BadHandshake("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    Ok(Handshake { key: key.to_owned() })
}

/// 16 bytes in base64: 22 alphabet characters, the last carrying 2 bits only, then `==`.
fn is_base64_of_16_bytes(key: &str) -> bool {
    let b = key.as_bytes();
    let is_b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    b.len() == 24 && b[..22].iter().all(|&c| is_b64(c)) && &b[22..] == b"==" && b"AQgw".contains(&b[21])
}

impl Handshake {
    /// The `101 Switching Protocols` response, confirming `protocol` when one was chosen. No
    /// extension is negotiated.
    pub fn accept(&self, protocol: Option<&'static str>) -> Response {
        let r = Response::new(101);
        let r = match protocol {
            Some(p) => r.header("Sec-WebSocket-Protocol", p),
            None => r,
        };
        r.header("Upgrade", "websocket").header("Connection", "Upgrade").header(
            "Sec-WebSocket-Accept",
            tungstenite::handshake::derive_accept_key(self.key.as_bytes()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HeadReader, Limits};
    use bytes::BytesMut;

    fn head(extra: &str) -> RequestHead {
        let raw = format!("GET /1 HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
        HeadReader::new(Limits::default())
            .read(&mut BytesMut::from(raw.as_bytes()))
            .unwrap()
            .unwrap()
    }

    const GOOD: &str = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn rfc_example_key() {
        let mut out = BytesMut::new();
        check_upgrade(&head(GOOD)).unwrap().accept(None).encode(false, &mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{text}"
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(check_upgrade(&head("")).unwrap_err(), HttpError::UpgradeRequired);
        for bad in [
            GOOD.replace("keep-alive, Upgrade", "keep-alive"),
            GOOD.replace("13", "8"),
            GOOD.replace("Sec-WebSocket-Version: 13\r\n", ""),
            GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="),
            GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            format!("{GOOD}Content-Length: 3\r\n"),
        ] {
            assert_eq!(check_upgrade(&head(&bad)).unwrap_err().status(), 400, "{bad}");
        }
    }
}
