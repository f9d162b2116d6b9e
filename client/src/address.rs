//! ADDRESS, the node to send to or listen as: a URL (`https://broker.example.org:8443/mq/42`) or
//! an e-mail-like `42@example.org`, whose broker is found through the DNS SRV record
//! `_fedbroker._tcp.example.org` (see [`crate::srv`]).

use std::fmt;

/// Largest id (SPEC §2: 2^31 − 1).
pub const MAX_ID: u32 = fedbroker_core::Id::MAX;

/// The SRV service label prefixed to the domain of `ID@DOMAIN`.
pub const SRV_PREFIX: &str = "_fedbroker._tcp.";

/// A parsed ADDRESS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A URL naming the broker directly.
    Url(UrlAddress),
    /// `ID@DOMAIN`: the broker is wherever `_fedbroker._tcp.DOMAIN` points.
    Srv {
        /// The id.
        id: u32,
        /// The domain, lower case, without a trailing dot.
        domain: String,
    },
}

/// `http(s)://HOST[:PORT][/BASE]/ID[?QUERY]` (`ws://` and `wss://` are read as `http://` and
/// `https://`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlAddress {
    /// `https://` (or `wss://`).
    pub tls: bool,
    /// The host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// The port (default 80, or 443 with TLS).
    pub port: u16,
    /// The path before the id: empty, or `/mq` for `--base-path /mq` brokers.
    pub base_path: String,
    /// The id.
    pub id: u32,
    /// The query string without `?`, passed on as it is (empty when none).
    pub query: String,
}

/// Why an ADDRESS was not understood (a usage error, exit code 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressError(pub String);

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, AddressError> {
    Err(AddressError(msg.into()))
}

/// Parses a canonical id (SPEC §2): digits only, no leading zero, 1 ..= 2^31 − 1; the
/// broker's own rule (`fedbroker_core::Id::parse`), so the client refuses exactly what a broker
/// would answer `400` to.
pub fn parse_id(s: &str) -> Option<u32> {
    fedbroker_core::Id::parse(s.as_bytes()).map(fedbroker_core::Id::get)
}

impl Address {
    /// Parses ADDRESS.
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        if let Some((scheme, rest)) = s.split_once("://") {
            return parse_url(scheme, rest, s).map(Address::Url);
        }
        let Some((id, domain)) = s.split_once('@') else {
            return fail(format!(
                "address {s:?}: expected a URL such as https://broker.example.org/42 or ID@DOMAIN such as 42@example.org"
            ));
        };
        let id = id_in(s, id, "the part before @")?;
        if domain.contains(':') {
            return fail(format!(
                "address {s:?}: ID@DOMAIN takes no port (the SRV record gives it); to name a broker's host and port, use a URL such as https://{domain}/{id}"
            ));
        }
        let domain = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
        if !is_domain(&domain) {
            return fail(format!(
                "address {s:?}: {domain:?} is not a domain name (letters, digits, '-' and dots)"
            ));
        }
        Ok(Address::Srv { id, domain })
    }

    /// The id addressed.
    pub fn id(&self) -> u32 {
        match self {
            Address::Url(u) => u.id,
            Address::Srv { id, .. } => *id,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Url(u) => {
                let scheme = if u.tls { "https" } else { "http" };
                write!(f, "{scheme}://{}{}", authority(&u.host, u.port), u.target())
            }
            Address::Srv { id, domain } => write!(f, "{id}@{domain}"),
        }
    }
}

impl UrlAddress {
    /// The request target: `/base/ID?query`.
    pub fn target(&self) -> String {
        let mut t = format!("{}/{}", self.base_path, self.id);
        if !self.query.is_empty() {
            t.push('?');
            t.push_str(&self.query);
        }
        t
    }
}

/// `host:port` as it goes in a `Host` header or URL (IPv6 in brackets).
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `text`, the id of `address`, or an error saying that `what` must be one.
fn id_in(address: &str, text: &str, what: &str) -> Result<u32, AddressError> {
    parse_id(text).ok_or_else(|| {
        AddressError(format!(
            "address {address:?}: {what} must be an id (a number from 1 to {MAX_ID}, no sign or leading zero), not {text:?}"
        ))
    })
}

fn parse_url(scheme: &str, rest: &str, whole: &str) -> Result<UrlAddress, AddressError> {
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => false,
        "https" | "wss" => true,
        other => {
            return fail(format!(
                "address {whole:?}: scheme {other:?} is not one of http, https, ws, wss"
            ))
        }
    };
    if let Some(b) = rest.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return fail(format!(
            "address {whole:?}: byte {b:#04x} cannot appear in a URL (percent-encode it)"
        ));
    }
    if rest.contains('#') {
        return fail(format!("address {whole:?}: a URL fragment (#…) has no meaning here"));
    }
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    if authority.contains('@') {
        return fail(format!(
            "address {whole:?}: user information in the URL is not supported; pass a token with --token"
        ));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| AddressError(format!("address {whole:?}: {authority:?} is not HOST or HOST:PORT")))?;
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    let Some((base_path, last)) = path.rsplit_once('/') else {
        return fail(format!(
            "address {whole:?}: the URL's path must end in the id, as in {scheme}://{authority}/42"
        ));
    };
    let id = id_in(whole, last, "the path's last segment")?;
    if base_path.contains("//") || base_path.ends_with('/') {
        return fail(format!("address {whole:?}: empty segment in the path"));
    }
    Ok(UrlAddress {
        tls,
        host: host.to_ascii_lowercase(),
        port,
        base_path: base_path.to_owned(),
        id,
        query: query.to_owned(),
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || !(host.contains(':') || is_domain(host)) {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|&p| p != 0)?),
    };
    Some((host, port))
}

/// A host name or IPv4 address as written in a URL or after `@`: dot-separated labels of ASCII
/// letters, digits, `-` and `_`, none empty or longer than 63.
fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> UrlAddress {
        match Address::parse(s) {
            Ok(Address::Url(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn ids_are_canonical() {
        assert_eq!(parse_id("1"), Some(1));
        assert_eq!(parse_id("2147483647"), Some(MAX_ID));
        for bad in ["", "0", "042", "+4", "-4", "4a", "2147483648", "99999999999", " 4"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn urls() {
        let u = url("https://Broker.example.org:8443/42");
        assert_eq!(
            u,
            UrlAddress {
                tls: true,
                host: "broker.example.org".into(),
                port: 8443,
                base_path: String::new(),
                id: 42,
                query: String::new(),
            }
        );
        assert_eq!(u.target(), "/42");
        let u = url("http://127.0.0.1/mq/v1/7?token=abc");
        assert_eq!((u.tls, u.port, u.base_path.as_str(), u.id), (false, 80, "/mq/v1", 7));
        assert_eq!(u.target(), "/mq/v1/7?token=abc");
        let u = url("wss://[::1]:9000/5");
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "::1", 9000));
        assert_eq!(Address::Url(u).to_string(), "https://[::1]:9000/5");
        assert_eq!(url("ws://localhost/1").port, 80);
        assert_eq!(url("https://localhost/1").port, 443);
    }

    #[test]
    fn bad_urls_say_why() {
        for (s, needle) in [
            ("ftp://h/1", "scheme"),
            ("http://h", "end in the id"),
            ("http://h/", "must be an id"),
            ("http://h/042", "leading zero"),
            ("http://h/2147483648", "2147483648"),
            ("http://h:0/1", "HOST:PORT"),
            ("http://h:99999/1", "HOST:PORT"),
            ("http://user:pw@h/1", "--token"),
            ("http:///1", "HOST"),
            ("http://[zz]/1", "HOST"),
            ("http://h//1", "empty segment"),
            ("http://h/1#x", "fragment"),
            ("http://a b/1", "byte 0x20"),
            ("http://h/1?x=a\r\nX-Injected: y", "byte 0x0d"),
        ] {
            let e = Address::parse(s).unwrap_err().0;
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn email_like() {
        assert_eq!(
            Address::parse("42@Example.ORG.").unwrap(),
            Address::Srv {
                id: 42,
                domain: "example.org".into()
            }
        );
        assert_eq!(Address::parse("7@example.test").unwrap().to_string(), "7@example.test");
        for (s, needle) in [
            ("042@example.org", "before @ must be an id"),
            ("0@example.org", "before @ must be an id"),
            ("x@example.org", "before @ must be an id"),
            ("42@example.org:8443", "takes no port"),
            ("42@", "not a domain"),
            ("42@exa mple.org", "not a domain"),
            ("42@a..b", "not a domain"),
            ("42@-a.org", "not a domain"),
            ("42", "expected a URL"),
            ("example.org/42", "expected a URL"),
        ] {
            let e = Address::parse(s).unwrap_err().0;
            assert!(e.contains(needle), "{s}: {e}");
        }
    }
}
