//! The tokens-file authorizer (SPEC §5): static bearer tokens, each with the ids it may send to
//! and listen on. Tokens are kept and compared as SHA-256 digests, in constant time.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Action, AuthReply, AuthRequest, AuthTime, Authorizer, Decision, IdSet};

/// One `[[token]]` table of a tokens file, as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// The token itself.
    pub token: Option<String>,
    /// Or its SHA-256, as 64 hex digits, so the file need not hold the secret.
    pub token_sha256: Option<String>,
    /// Ids it may listen on.
    #[serde(default)]
    pub listen: IdSet,
    /// Ids it may send to.
    #[serde(default)]
    pub send: IdSet,
    /// Ids whose presence it may follow (`watch` in the envelope).
    #[serde(default)]
    pub presence: IdSet,
}

/// A whole tokens file: `[[token]]` tables.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// The tokens.
    #[serde(default)]
    pub token: Vec<TokenSpec>,
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    listen: IdSet,
    send: IdSet,
    presence: IdSet,
}

/// Decides with a fixed table of tokens.
#[derive(Debug)]
pub struct StaticTokens {
    entries: Vec<Entry>,
}

impl StaticTokens {
    /// Checks the tables: each has exactly one of `token` (non-empty) and `token_sha256` (64 hex
    /// digits). The error names the table (1-based).
    pub fn new(file: TokensFile) -> Result<Self, String> {
        let mut entries = Vec::with_capacity(file.token.len());
        for (i, spec) in file.token.into_iter().enumerate() {
            let n = i + 1;
            let digest = match (&spec.token, &spec.token_sha256) {
                (Some(t), None) if !t.is_empty() => sha256(t.as_bytes()),
                (Some(_), None) => return Err(format!("token #{n}: the token is empty")),
                (None, Some(h)) => {
                    parse_hex32(h).ok_or_else(|| format!("token #{n}: token_sha256 must be 64 hexadecimal digits"))?
                }
                (Some(_), Some(_)) => return Err(format!("token #{n}: give token or token_sha256, not both")),
                (None, None) => return Err(format!("token #{n}: needs token or token_sha256")),
            };
            entries.push(Entry {
                digest,
                listen: spec.listen,
                send: spec.send,
                presence: spec.presence,
            });
        }
        if entries.is_empty() {
            return Err("no [[token]] tables: nobody could send or listen".to_owned());
        }
        Ok(StaticTokens { entries })
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn parse_hex32(h: &str) -> Option<[u8; 32]> {
    let h = h.trim().as_bytes();
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in h.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

impl Authorizer for StaticTokens {
    fn authorize(&self, request: &AuthRequest, _time: AuthTime, reply: AuthReply) {
        reply.decide(self.decide(request));
    }
}

impl StaticTokens {
    fn decide(&self, request: &AuthRequest) -> Decision {
        if request.action == Action::ReadStats {
            // Statistics are guarded by the stats token, if one is set, not by these tokens.
            return Decision::Allow { until: None };
        }
        let Some(token) = &request.token else {
            return Decision::Unauthenticated;
        };
        let digest = sha256(token.as_bytes());
        // Compare with every entry, whatever matches, so timing says nothing about which did.
        let mut found = None;
        for e in &self.entries {
            let equal: bool = e.digest.ct_eq(&digest).into();
            if equal && found.is_none() {
                found = Some(e);
            }
        }
        let Some(entry) = found else {
            return Decision::Unauthenticated;
        };
        let allowed = match (request.action, request.id) {
            (Action::Send, Some(id)) => entry.send.contains(id),
            (Action::Listen, Some(id)) => entry.listen.contains(id),
            (Action::Presence, Some(id)) => entry.presence.contains(id),
            _ => false,
        };
        if allowed {
            Decision::Allow { until: None }
        } else {
            Decision::Forbidden
        }
    }
}
