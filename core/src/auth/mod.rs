//! The authorization seam (SPEC §5): one decision per request, for one action on one id, that may
//! be made at once or later (STYLE.md §5).
//!
//! The connection state machine emits [`crate::Event::Authorize`] and waits for
//! [`crate::Connection::handle_decision`]; [`crate::Session`] asks the broker's [`Authorizer`]
//! and passes it an [`AuthReply`] to answer through, now or from another task or thread.

mod idset;
mod jwt;
mod tokens;

pub use idset::IdSet;
pub use jwt::{JwtAuthorizer, JwtOptions, MIN_HMAC_SECRET};
pub use tokens::{StaticTokens, TokenSpec, TokensFile};

use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::Id;

/// What a request wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send a message to an id (`POST /{id}`).
    Send,
    /// Listen on an id (`GET /{id}` upgrade).
    Listen,
    /// Read the statistics (`GET /`, `GET /metrics`).
    ReadStats,
    /// Follow when an id starts and stops being listened on (`watch` in the `fedbroker.v1`
    /// envelope).
    Presence,
}

/// Everything an authorizer may base its decision on. The token is never logged (its `Debug`
/// output redacts it).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The action asked for.
    pub action: Action,
    /// The id it is asked for (`None` for [`Action::ReadStats`]).
    pub id: Option<Id>,
    /// The bearer token, from `Authorization: Bearer` or the `token` query parameter.
    pub token: Option<String>,
    /// The whole query string of the request, for authorizers that use other parameters.
    pub query: Option<String>,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("action", &self.action)
            .field("id", &self.id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// An authorizer's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; a listener is closed with `4001` at `until`, if given (token expiry).
    Allow {
        /// When the credentials stop being valid.
        until: Option<Instant>,
    },
    /// Credentials missing or invalid (`401`).
    Unauthenticated,
    /// Credentials valid, but not for this (`403`).
    Forbidden,
    /// The authorizer could not decide (a remote service failed; `503`).
    Unavailable,
}

/// When a decision is made: the monotonic instant (for deadlines such as a token's expiry) and
/// the wall-clock time (for `exp`/`nbf`), both given by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthTime {
    /// The caller's `now`.
    pub now: Instant,
    /// Time since the Unix epoch at `now`.
    pub since_epoch: Duration,
}

/// Decides requests. An implementation that must ask a remote service moves the [`AuthReply`] to
/// wherever the answer arrives and calls [`AuthReply::decide`] there; the core never blocks on it.
///
/// ```
/// use fedbroker_core::{Action, AuthReply, AuthRequest, AuthTime, Authorizer, Decision};
///
/// /// Lets anyone send, but only to even ids, and nobody listen; a real one might ask a
/// /// remote service from another task and call `reply.decide` when the answer arrives.
/// struct EvenIdsOnly;
///
/// impl Authorizer for EvenIdsOnly {
///     fn authorize(&self, request: &AuthRequest, _time: AuthTime, reply: AuthReply) {
///         let decision = match (request.action, request.id) {
///             (Action::Send, Some(id)) if id.get() % 2 == 0 => Decision::Allow { until: None },
///             (Action::ReadStats, _) => Decision::Allow { until: None },
///             _ => Decision::Forbidden,
///         };
///         reply.decide(decision);
///     }
/// }
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// Decides `request` at `time`, through `reply` (now or later).
    fn authorize(&self, request: &AuthRequest, time: AuthTime, reply: AuthReply);
}

impl<A: Authorizer + ?Sized> Authorizer for Box<A> {
    fn authorize(&self, request: &AuthRequest, time: AuthTime, reply: AuthReply) {
        (**self).authorize(request, time, reply)
    }
}

/// Allows everything: the open mode of SPEC §5.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _: &AuthRequest, _: AuthTime, reply: AuthReply) {
        reply.decide(Decision::Allow { until: None });
    }
}

/// Whether `presented` equals `expected`, in time that depends on neither (both are hashed
/// first, so not even the length leaks).
pub fn token_matches(presented: Option<&str>, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(p) = presented else { return false };
    let a: [u8; 32] = Sha256::digest(p.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
    a.ct_eq(&b).into()
}

/// The way back for one decision. Dropping it undecided answers [`Decision::Unavailable`].
#[derive(Debug)]
pub struct AuthReply {
    slot: Arc<Slot>,
    decided: bool,
}

/// The waiting side of an [`AuthReply`].
#[derive(Debug)]
pub struct PendingDecision {
    slot: Arc<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    state: Mutex<(Option<Decision>, Option<Waker>)>,
}

/// A reply channel for one decision.
pub fn decision_channel() -> (AuthReply, PendingDecision) {
    decision_channel_reusing(None)
}

/// A reply channel for one decision, reusing a finished one's allocation when nobody else holds it
/// (a connection asks for one decision per request).
pub fn decision_channel_reusing(spare: Option<PendingDecision>) -> (AuthReply, PendingDecision) {
    let slot = match spare {
        // Only we hold it: no reply can write to it any more.
        Some(p) if Arc::strong_count(&p.slot) == 1 => {
            *p.slot.state.lock().unwrap_or_else(|e| e.into_inner()) = (None, None);
            p.slot
        }
        _ => Arc::new(Slot::default()),
    };
    (
        AuthReply {
            slot: slot.clone(),
            decided: false,
        },
        PendingDecision { slot },
    )
}

impl AuthReply {
    /// Delivers the decision (and wakes the connection waiting for it).
    pub fn decide(mut self, decision: Decision) {
        self.set(decision);
    }

    fn set(&mut self, decision: Decision) {
        self.decided = true;
        let waker = {
            let mut s = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
            s.0 = Some(decision);
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for AuthReply {
    fn drop(&mut self) {
        if !self.decided {
            self.set(Decision::Unavailable);
        }
    }
}

impl PendingDecision {
    /// The decision, once made.
    pub fn try_take(&self) -> Option<Decision> {
        self.slot.state.lock().unwrap_or_else(|e| e.into_inner()).0.take()
    }

    /// Ready once the decision is made; otherwise keeps the waker.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0.is_some() {
            return Poll::Ready(());
        }
        s.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The bearer token of a request: `Authorization: Bearer <token>` first (the header's value is
/// `authorization`), else `?token=` of the query.
pub fn bearer_token(authorization: Option<&str>, query: Option<&str>) -> Option<String> {
    if let Some(v) = authorization {
        let v = v.trim();
        if let Some((scheme, token)) = v.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                return Some(token.trim().to_owned());
            }
        }
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(percent_decode)
        .filter(|t| !t.is_empty())
}

/// Decodes `%XX` escapes and `+` of a query value; invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources() {
        assert_eq!(bearer_token(None, Some("a=1&token=x%2By&b=2")), Some("x+y".into()));
        assert_eq!(bearer_token(None, Some("token=%zz%4")), Some("%zz%4".into()));
        assert_eq!(bearer_token(Some("Bearer abc"), Some("token=x")), Some("abc".into()));
        assert_eq!(bearer_token(Some("bearer  abc "), None), Some("abc".into()));
        // Another scheme is not a bearer token; the query may still carry one.
        assert_eq!(bearer_token(Some("Basic abc"), Some("token=q")), Some("q".into()));
        assert_eq!(bearer_token(Some("Bearer "), None), None);
        assert_eq!(bearer_token(None, None), None);
    }

    #[test]
    fn dropped_reply_is_unavailable() {
        let (reply, pending) = decision_channel();
        assert_eq!(pending.try_take(), None);
        drop(reply);
        assert_eq!(pending.try_take(), Some(Decision::Unavailable));
    }

    #[test]
    fn debug_redacts_token() {
        let r = AuthRequest {
            action: Action::Send,
            id: None,
            token: Some("s3cr3t".into()),
            query: None,
            origin: None,
        };
        assert!(!format!("{r:?}").contains("s3cr3t"));
    }
}
