//! Browsers: which origins may use the broker (SPEC §6).
//!
//! A request with an `Origin` header is served only if that origin is listed
//! (`--cors-allow-origin`, or `*` for any) or is the broker's own origin (its scheme and the
//! `Host` header). Everything else gets `403` and no CORS headers: this refuses cross-site
//! WebSocket hijacking as well as cross-origin sends.

use crate::http::RequestHead;

/// The allowed origins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorsPolicy {
    any: bool,
    /// Lowercased `scheme://host[:port]`, default ports removed.
    origins: Vec<String>,
    /// Count the broker's own origin only when `Host` names a loopback host (`localhost`,
    /// `127.0.0.0/8`, `[::1]`): against DNS rebinding, where a hostile page's own name resolves to
    /// the broker and its `Host` and `Origin` agree.
    own_origin_loopback_only: bool,
}

/// What the `Origin` of a request means for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginCheck {
    /// No `Origin` header: not a cross-origin browser request; nothing to do.
    Absent,
    /// The broker's own origin, not listed: served, no CORS headers needed.
    SameOrigin,
    /// A listed origin: served, with CORS headers naming it.
    Allowed(String),
    /// Refused with `403`.
    Refused,
}

impl CorsPolicy {
    /// A policy from `--cors-allow-origin` values: `*`, or origins such as
    /// `https://app.example:8443` (scheme and host, optional port, nothing else).
    pub fn new<S: AsRef<str>>(list: &[S]) -> Result<Self, String> {
        let mut p = CorsPolicy::default();
        for o in list {
            let o = o.as_ref().trim();
            if o == "*" {
                p.any = true;
                continue;
            }
            let n = normalize(o).ok_or_else(|| {
                format!("{o:?} is not an origin: expected scheme://host[:port] such as https://app.example, or *")
            })?;
            if !p.origins.contains(&n) {
                p.origins.push(n);
            }
        }
        Ok(p)
    }

    /// Counts the broker's own origin only for loopback `Host` names (see the field). For the
    /// open mode, where no credentials stand between a rebinding page and the broker.
    pub fn own_origin_loopback_only(mut self) -> Self {
        self.own_origin_loopback_only = true;
        self
    }

    /// Whether any origin is configured.
    pub fn is_empty(&self) -> bool {
        !self.any && self.origins.is_empty()
    }

    /// Checks a request's `Origin` against the policy; `secure` tells the broker's own scheme.
    pub fn check(&self, head: &RequestHead, secure: bool) -> OriginCheck {
        let origin = match head.single_header("origin") {
            Ok(None) => return OriginCheck::Absent,
            Ok(Some(_)) => match head.header_str("origin") {
                Some(s) => s.trim(),
                None => return OriginCheck::Refused,
            },
            // Several Origin headers: ambiguous, refused.
            Err(_) => return OriginCheck::Refused,
        };
        let normalized = normalize(origin);
        if self.any || normalized.as_ref().is_some_and(|n| self.origins.contains(n)) {
            return OriginCheck::Allowed(origin.to_owned());
        }
        let host = head.header_str("host");
        if let (Some(n), Some(host)) = (normalized, host) {
            if self.own_origin_loopback_only && !is_loopback_host(host.trim()) {
                return OriginCheck::Refused;
            }
            let own = normalize(&format!("{}://{}", if secure { "https" } else { "http" }, host.trim()));
            if own.as_deref() == Some(n.as_str()) {
                return OriginCheck::SameOrigin;
            }
        }
        OriginCheck::Refused
    }
}

/// Whether a `Host` value names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host[:port]` lowercased, with the scheme's default port removed; `None` if it is not
/// an origin of that shape.
fn normalize(o: &str) -> Option<String> {
    let o = o.to_ascii_lowercase();
    let (scheme, rest) = o.split_once("://")?;
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return None;
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.bytes().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let rest = match (scheme, rest.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) if !h.ends_with(':') => h.to_owned(),
        _ => rest.to_owned(),
    };
    Some(format!("{scheme}://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HeadReader, Limits};
    use bytes::BytesMut;

    fn head(headers: &str) -> RequestHead {
        let raw = format!("GET / HTTP/1.1\r\n{headers}\r\n");
        HeadReader::new(Limits::default())
            .read(&mut BytesMut::from(raw.as_bytes()))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn checks() {
        let p = CorsPolicy::new(&["https://App.example", "http://localhost:3000"]).unwrap();
        let c = |h: &str| p.check(&head(h), false);
        assert_eq!(c("Host: b:1\r\n"), OriginCheck::Absent);
        assert_eq!(
            c("Host: b:1\r\nOrigin: https://app.example:443\r\n"),
            OriginCheck::Allowed("https://app.example:443".into())
        );
        assert_eq!(
            c("Host: b:1\r\nOrigin: http://localhost:3000\r\n"),
            OriginCheck::Allowed("http://localhost:3000".into())
        );
        assert_eq!(
            c("Host: b:1\r\nOrigin: http://localhost:3001\r\n"),
            OriginCheck::Refused
        );
        assert_eq!(c("Host: b:1\r\nOrigin: http://B:1\r\n"), OriginCheck::SameOrigin);
        assert_eq!(c("Host: b\r\nOrigin: http://b:80\r\n"), OriginCheck::SameOrigin);
        assert_eq!(
            p.check(&head("Host: b:1\r\nOrigin: http://b:1\r\n"), true),
            OriginCheck::Refused
        );
        assert_eq!(c("Host: b:1\r\nOrigin: null\r\n"), OriginCheck::Refused);
        assert_eq!(
            c("Host: b:1\r\nOrigin: http://a\r\nOrigin: http://b:1\r\n"),
            OriginCheck::Refused
        );
        // DNS rebinding: a hostile name resolving to a loopback broker agrees with its own Host.
        let strict = CorsPolicy::new::<&str>(&[]).unwrap().own_origin_loopback_only();
        let rebinding = head("Host: evil.example:8080\r\nOrigin: http://evil.example:8080\r\n");
        assert_eq!(p.check(&rebinding, false), OriginCheck::SameOrigin);
        assert_eq!(strict.check(&rebinding, false), OriginCheck::Refused);
        for own in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"] {
            let h = head(&format!("Host: {own}\r\nOrigin: http://{own}\r\n"));
            assert_eq!(strict.check(&h, false), OriginCheck::SameOrigin, "{own}");
        }
        let any = CorsPolicy::new(&["*"]).unwrap();
        assert_eq!(
            any.check(&head("Host: b\r\nOrigin: null\r\n"), false),
            OriginCheck::Allowed("null".into())
        );
        for bad in ["app.example", "https://a/b", "https://", "ftp//x"] {
            assert!(CorsPolicy::new(&[bad]).is_err(), "{bad}");
        }
    }
}
