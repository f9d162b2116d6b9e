//! How a run ends: one [`Failure`] kind per exit code, so a script can tell "nobody listens" from
//! "wrong token" from "broker down" without parsing stderr.

use std::fmt;
use std::process::ExitCode;

/// Why a command failed. Each kind is exactly one exit code ([`Kind::code`]); the table is
/// [`EXIT_CODES`], printed in `--help` and in client/README.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A local problem: FILE or stdin unreadable, `--output` not writable, `--exec` cannot start,
    /// or the broker answered something that is not HTTP/WebSocket as expected.
    Local,
    /// A bad flag or ADDRESS.
    Usage,
    /// `404`: nobody listens on the id.
    NoListener,
    /// `401`/`403`, or a listener closed with `4001` (token expired).
    Auth,
    /// No broker address accepted a connection (refused, timed out).
    Unreachable,
    /// The name did not resolve: no SRV record, no such domain, DNS server not answering.
    Resolve,
    /// The TLS handshake failed (certificate not trusted or not for this name).
    Tls,
    /// `503` on every attempt (`--retries` used up).
    Busy,
    /// Any other refusal (`400`, `405`, `413`, `5xx` …).
    Refused,
    /// `listen`: another listener took over the id (close code `4000`).
    Replaced,
}

impl Kind {
    /// The process exit code of this outcome.
    pub fn code(self) -> u8 {
        match self {
            Kind::Local => 1,
            Kind::Usage => 2,
            Kind::NoListener => 3,
            Kind::Auth => 4,
            Kind::Unreachable => 5,
            Kind::Resolve => 6,
            Kind::Tls => 7,
            Kind::Busy => 8,
            Kind::Refused => 9,
            Kind::Replaced => 10,
        }
    }

    /// The kind an HTTP refusal status maps to (`503` only once retries are used up).
    pub fn from_status(status: u16) -> Kind {
        match status {
            404 => Kind::NoListener,
            401 | 403 => Kind::Auth,
            503 => Kind::Busy,
            _ => Kind::Refused,
        }
    }
}

/// The exit-code table, as `--help` and client/README.md show it.
pub const EXIT_CODES: &str = "\
EXIT CODES
    0   done: send got 204 (queued for a live listener) or 202 (kept in the mailbox); listen received --count messages
    1   local error: FILE/stdin unreadable, --output not writable, --exec cannot start,
        or the broker's answer was not HTTP/WebSocket as expected
    2   usage: a bad flag or ADDRESS
    3   no listener on the id (404)
    4   credentials missing or refused (401, 403; listen: closed with 4001 token expired)
    5   broker unreachable: every address refused the connection or timed out
    6   address not resolved: no _fedbroker._tcp SRV record, no such domain, DNS not answering
    7   TLS failed: certificate not trusted (see --ca) or not valid for the broker's name
    8   broker busy: 503 on every attempt (see --retries)
    9   refused for another reason (400, 405, 413, 5xx other than 503, ...)
    10  listen: another listener took over the id (close code 4000)";

/// A failed run: what kind, and one sentence for stderr.
#[derive(Debug)]
pub struct Failure {
    /// The outcome, hence the exit code.
    pub kind: Kind,
    /// What went wrong, for a person.
    pub message: String,
}

impl Failure {
    /// A failure of `kind` saying `message`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// The exit code for `main`.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind.code())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_in_the_table_once() {
        let kinds = [
            Kind::Local,
            Kind::Usage,
            Kind::NoListener,
            Kind::Auth,
            Kind::Unreachable,
            Kind::Resolve,
            Kind::Tls,
            Kind::Busy,
            Kind::Refused,
            Kind::Replaced,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len(), "codes are distinct");
        for code in codes.iter().chain(&[0]) {
            let row = format!("\n    {code:<4}");
            assert!(EXIT_CODES.contains(&row), "code {code} missing from the table");
        }
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(Kind::from_status(404), Kind::NoListener);
        assert_eq!(Kind::from_status(401), Kind::Auth);
        assert_eq!(Kind::from_status(403), Kind::Auth);
        assert_eq!(Kind::from_status(503), Kind::Busy);
        assert_eq!(Kind::from_status(413), Kind::Refused);
    }
}
