//! `fedbroker send`: one `POST` of the body to the addressed id, retried on `503` with exponential
//! backoff that honours `Retry-After`, at most `--retries` times.

use std::thread::sleep;
use std::time::Duration;

use crate::address::Address;
use crate::http::{self, Request, Response};
use crate::net::Connector;
use crate::outcome::{Failure, Kind};
use crate::verbose;

/// First backoff step; each retry doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest backoff step.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured (a larger one is cut to this).
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// What `send` needs besides the address and body.
pub struct SendOptions {
    /// Bearer token.
    pub token: Option<String>,
    /// Retries after a `503` (0: none).
    pub retries: u32,
    /// `Content-Type` of the body.
    pub content_type: String,
}

/// How long to wait before retry number `retry` (0 for the first): `0.5 s × 2^retry`, at most
/// 30 s, or the server's `Retry-After` (at most 60 s) when that is longer.
pub fn retry_delay(retry: u32, retry_after: Option<Duration>) -> Duration {
    let backoff = BACKOFF_BASE.saturating_mul(1u32 << retry.min(16)).min(BACKOFF_MAX);
    match retry_after {
        Some(after) => backoff.max(after.min(RETRY_AFTER_MAX)),
        None => backoff,
    }
}

/// A `Retry-After` in seconds (the HTTP-date form is not used by brokers and is ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Delivers `body` to `address`: `Ok` with the `2xx` response (`204` normally; a `?reply=` URL
/// gets the reply), or the failure with its exit code.
pub fn send(conn: &mut Connector, address: &Address, body: &[u8], opts: &SendOptions) -> Result<Response, Failure> {
    let (tls, endpoints) = conn.endpoints(address)?;
    let target = match address {
        Address::Url(u) => u.target(),
        Address::Srv { id, .. } => format!("/{id}"),
    };
    // A `?reply=MS` request waits up to MS for the listener's answer: wait that much longer.
    let reply_wait = match address {
        Address::Url(u) => reply_wait(&u.query),
        Address::Srv { .. } => None,
    };
    let mut retry = 0;
    loop {
        let (mut stream, endpoint) = conn.connect(tls, &endpoints)?;
        if let Some(wait) = reply_wait {
            let _ = stream.socket().set_read_timeout(Some(conn.timeout() + wait));
        }
        let host = endpoint.authority();
        let request = Request {
            host: &host,
            target: &target,
            token: opts.token.as_deref(),
            content_type: &opts.content_type,
        };
        let response = http::post(&mut stream, &request, body)?;
        verbose(format_args!("{host} {target}: {}", response.status));
        if (200..300).contains(&response.status) {
            return Ok(response);
        }
        if response.status == 503 && retry < opts.retries {
            let delay = retry_delay(retry, response.header("retry-after").and_then(parse_retry_after));
            eprintln!(
                "fedbroker: {address}: 503 {}; retry {} of {} in {:.1} s",
                response.sentence(),
                retry + 1,
                opts.retries,
                delay.as_secs_f64()
            );
            sleep(delay);
            retry += 1;
            continue;
        }
        let tries = if response.status == 503 {
            format!(" ({} attempts)", retry + 1)
        } else {
            String::new()
        };
        return Err(Failure::new(
            Kind::from_status(response.status),
            format!("{address}: {} {}{tries}", response.status, response.sentence()),
        ));
    }
}

/// The `reply=MS` of a query string, as a duration.
fn reply_wait(query: &str) -> Option<Duration> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("reply="))
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_requests_wait_longer() {
        assert_eq!(reply_wait("reply=5000"), Some(Duration::from_secs(5)));
        assert_eq!(reply_wait("token=x&reply=250"), Some(Duration::from_millis(250)));
        assert_eq!(reply_wait("token=x"), None);
        assert_eq!(reply_wait("reply=soon"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let secs: Vec<f64> = (0..8).map(|r| retry_delay(r, None).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]);
        assert_eq!(retry_delay(u32::MAX, None), BACKOFF_MAX);
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let one = Some(Duration::from_secs(1));
        assert_eq!(retry_delay(0, one), Duration::from_secs(1));
        assert_eq!(retry_delay(3, one), Duration::from_secs(4));
        assert_eq!(retry_delay(0, Some(Duration::from_secs(3600))), RETRY_AFTER_MAX);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after(" 1 "), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
