//! Loading the authorization mode (SPEC §5) and the TLS settings (SPEC §8) from their files, with
//! one-line errors that name the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fedbroker_core::auth::{JwtAuthorizer, JwtOptions, StaticTokens, TokensFile};
use fedbroker_core::{AllowAll, Authorizer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ConfigError;

/// The security settings as given (flags merged with the config file).
pub(crate) struct Choices {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub auth_tokens: Option<PathBuf>,
    pub auth_jwt_secret: Option<PathBuf>,
    pub auth_jwt_public_key: Option<PathBuf>,
    pub auth_jwt_audience: Option<String>,
    pub auth_jwt_issuer: Option<String>,
    pub auth_jwt_leeway: Option<u64>,
}

/// The security settings, loaded and checked.
pub(crate) struct Security {
    /// Whether no authentication is configured (the open mode).
    pub open: bool,
    pub authorizer: Box<dyn Authorizer>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

fn fail<T>(flag: &str, path: &Path, what: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{flag} {}: {what}", path.display())))
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).or_else(|e| fail(flag, path, format_args!("cannot read: {e}")))
}

impl Security {
    pub fn resolve(c: Choices) -> Result<Security, ConfigError> {
        let modes = [
            c.auth_tokens.is_some(),
            c.auth_jwt_secret.is_some(),
            c.auth_jwt_public_key.is_some(),
        ];
        if modes.iter().filter(|m| **m).count() > 1 {
            return Err(ConfigError(
                "--auth-tokens, --auth-jwt-secret and --auth-jwt-public-key: choose one authentication mode".into(),
            ));
        }
        let jwt = c.auth_jwt_secret.is_some() || c.auth_jwt_public_key.is_some();
        if !jwt {
            for (given, flag) in [
                (c.auth_jwt_audience.is_some(), "--auth-jwt-audience"),
                (c.auth_jwt_issuer.is_some(), "--auth-jwt-issuer"),
                (c.auth_jwt_leeway.is_some(), "--auth-jwt-leeway"),
            ] {
                if given {
                    return Err(ConfigError(format!(
                        "{flag}: only applies with --auth-jwt-secret or --auth-jwt-public-key"
                    )));
                }
            }
        }
        let options = JwtOptions {
            audience: c.auth_jwt_audience,
            issuer: c.auth_jwt_issuer,
            leeway: c.auth_jwt_leeway.unwrap_or(0),
        };
        let authorizer: Box<dyn Authorizer> = if let Some(path) = &c.auth_tokens {
            Box::new(load_tokens(path)?)
        } else if let Some(path) = &c.auth_jwt_secret {
            let mut secret = read("--auth-jwt-secret", path)?;
            // A file written by `echo` or an editor ends in a newline that is not part of the secret.
            if secret.ends_with(b"\n") {
                secret.pop();
                if secret.ends_with(b"\r") {
                    secret.pop();
                }
            }
            Box::new(JwtAuthorizer::hmac(&secret, options).or_else(|e| fail("--auth-jwt-secret", path, e))?)
        } else if let Some(path) = &c.auth_jwt_public_key {
            let pem = read("--auth-jwt-public-key", path)?;
            Box::new(JwtAuthorizer::public_key_pem(&pem, options).or_else(|e| fail("--auth-jwt-public-key", path, e))?)
        } else {
            Box::new(AllowAll)
        };
        let tls = match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => Some(load_tls(cert, key)?),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError("--tls-cert: needs --tls-key too".into())),
            (None, Some(_)) => return Err(ConfigError("--tls-key: needs --tls-cert too".into())),
        };
        Ok(Security {
            open: !modes.contains(&true),
            authorizer,
            tls,
        })
    }
}

fn load_tokens(path: &Path) -> Result<StaticTokens, ConfigError> {
    let flag = "--auth-tokens";
    let text = String::from_utf8(read(flag, path)?).or_else(|_| fail(flag, path, "not UTF-8 text"))?;
    let file: TokensFile = toml::from_str(&text).or_else(|e| {
        let msg = e.message().lines().next().unwrap_or("invalid TOML").to_owned();
        let line = e
            .span()
            .map(|s| format!(" (line {})", text[..s.start.min(text.len())].matches('\n').count() + 1));
        fail(flag, path, format_args!("{msg}{}", line.unwrap_or_default()))
    })?;
    StaticTokens::new(file).or_else(|e| fail(flag, path, e))
}

fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let cert_pem = read("--tls-cert", cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .or_else(|e| fail("--tls-cert", cert, format_args!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return fail("--tls-cert", cert, "no CERTIFICATE in the file");
    }
    let key_pem = read("--tls-key", key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .or_else(|e| fail("--tls-key", key, format_args!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| match e {
            // The certificate itself could not be read: name its file, not the key's.
            rustls::Error::InvalidCertificate(_) => {
                ConfigError(format!("--tls-cert {}: not a usable certificate: {e}", cert.display()))
            }
            e => ConfigError(format!(
                "--tls-key {}: does not fit the certificate in {}: {e}",
                key.display(),
                cert.display()
            )),
        })?;
    Ok(Arc::new(config))
}
