//! The JWT authorizer (SPEC §5): bearer tokens signed with an HMAC secret (HS256/384/512) or a
//! public key (RS256, ES256, EdDSA), carrying `listen` and `send` claims.
//!
//! `exp` and `nbf` are checked here against the wall-clock time the caller passes in (the
//! `jsonwebtoken` crate would read the system clock itself), exactly unless a leeway is set.

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{Action, AuthReply, AuthRequest, AuthTime, Authorizer, Decision, IdSet};

/// Shortest HMAC secret accepted (RFC 7518 §3.2: at least the hash size of HS256).
pub const MIN_HMAC_SECRET: usize = 32;

/// What is checked besides the signature.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JwtOptions {
    /// Required `aud`.
    pub audience: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Seconds of tolerance on `exp` and `nbf`.
    pub leeway: u64,
}

/// Decides with signed tokens.
pub struct JwtAuthorizer {
    key: DecodingKey,
    validation: Validation,
    leeway: u64,
}

impl std::fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthorizer")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    listen: IdSet,
    #[serde(default)]
    send: IdSet,
    #[serde(default)]
    presence: IdSet,
    /// NumericDate: seconds since the epoch, possibly fractional (RFC 7519 §2).
    exp: Option<f64>,
    nbf: Option<f64>,
}

impl JwtAuthorizer {
    /// HS256, HS384 and HS512 tokens signed with `secret` (at least [`MIN_HMAC_SECRET`] bytes).
    pub fn hmac(secret: &[u8], options: JwtOptions) -> Result<Self, String> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(format!(
                "the HMAC secret is {} bytes; at least {MIN_HMAC_SECRET} are needed",
                secret.len()
            ));
        }
        let key = DecodingKey::from_secret(secret);
        Ok(Self::with(
            key,
            vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            options,
        ))
    }

    /// Tokens signed with the private half of a public key in SPKI PEM: RSA (RS256), EC P-256
    /// (ES256) or Ed25519 (EdDSA). HMAC algorithms are never accepted with it.
    pub fn public_key_pem(pem: &[u8], options: JwtOptions) -> Result<Self, String> {
        let text = std::str::from_utf8(pem).map_err(|_| "the public key is not PEM text".to_owned())?;
        if !text.contains("-----BEGIN PUBLIC KEY-----") {
            return Err("expected an SPKI public key in PEM (-----BEGIN PUBLIC KEY-----)".to_owned());
        }
        let (key, alg) = if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (k, Algorithm::EdDSA)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            if !is_p256(pem) {
                return Err("the EC public key is not on P-256, the curve of ES256".to_owned());
            }
            (k, Algorithm::ES256)
        } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (k, Algorithm::RS256)
        } else {
            return Err("the public key is not an RSA, EC P-256 or Ed25519 key in SPKI PEM".to_owned());
        };
        Ok(Self::with(key, vec![alg], options))
    }

    fn with(key: DecodingKey, algorithms: Vec<Algorithm>, options: JwtOptions) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        // Time claims are checked in `decide` with the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let mut required = HashSet::new();
        match &options.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &options.issuer {
            validation.set_issuer(&[iss]);
            required.insert("iss".to_owned());
        }
        validation.required_spec_claims = required;
        JwtAuthorizer {
            key,
            validation,
            leeway: options.leeway,
        }
    }

    fn decide(&self, request: &AuthRequest, time: AuthTime) -> Decision {
        if request.action == Action::ReadStats {
            // Statistics are guarded by the stats token, if one is set.
            return Decision::Allow { until: None };
        }
        let Some(token) = &request.token else {
            return Decision::Unauthenticated;
        };
        let claims = match decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => data.claims,
            Err(e) => {
                tracing::debug!("JWT refused: {e}");
                return Decision::Unauthenticated;
            }
        };
        let now = time.since_epoch.as_secs_f64();
        let leeway = self.leeway as f64;
        if claims.exp.is_some_and(|e| !e.is_finite()) || claims.nbf.is_some_and(|n| !n.is_finite()) {
            return Decision::Unauthenticated;
        }
        // RFC 7519 §4.1.4/§4.1.5: not on or after `exp`, not before `nbf`.
        if claims.exp.is_some_and(|exp| now >= exp + leeway) {
            return Decision::Unauthenticated;
        }
        if claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Decision::Unauthenticated;
        }
        let allowed = match (request.action, request.id) {
            (Action::Send, Some(id)) => claims.send.contains(id),
            (Action::Listen, Some(id)) => claims.listen.contains(id),
            (Action::Presence, Some(id)) => claims.presence.contains(id),
            _ => false,
        };
        if !allowed {
            return Decision::Forbidden;
        }
        let until = claims
            .exp
            .map(|exp| time.now + Duration::from_secs_f64((exp + leeway - now).max(0.0)));
        Decision::Allow { until }
    }
}

/// Whether an EC SPKI key names the P-256 curve (OID 1.2.840.10045.3.1.7 in its algorithm
/// parameters).
fn is_p256(pem: &[u8]) -> bool {
    const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pem::parse(pem).is_ok_and(|p| p.contents().windows(P256.len()).take(32).any(|w| w == P256))
}

impl Authorizer for JwtAuthorizer {
    fn authorize(&self, request: &AuthRequest, time: AuthTime, reply: AuthReply) {
        reply.decide(self.decide(request, time));
    }
}
