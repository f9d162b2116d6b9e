//! Request classification into the routes of SPEC §3.

use http::Method;

use crate::{HttpError, Id};

/// Methods of the statistics and health routes.
pub const ALLOW_INFO: &str = "GET, HEAD, OPTIONS";
/// Methods of an id's route.
pub const ALLOW_ID: &str = "GET, HEAD, POST, OPTIONS";
/// Methods of a multi-target route.
pub const ALLOW_MANY: &str = "POST, OPTIONS";

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /{id}`: send the body to the listener of the id.
    Send(Id),
    /// `POST /{id},{id},…`: send the body to each id (the list is read with
    /// [`crate::parse_targets`] from the path's last segment).
    SendMany,
    /// `GET /{id}` with a WebSocket upgrade: listen on the id.
    Listen(Id),
    /// `GET /`: statistics as JSON.
    Stats,
    /// `GET /metrics`: statistics as Prometheus text.
    Metrics,
    /// `GET /healthz`: liveness.
    Health,
    /// `OPTIONS`: the methods a path takes (and, later, a CORS preflight).
    Options {
        /// Value of the `Allow` header.
        allow: &'static str,
    },
}

/// Classifies a request by method and path under `base` (normalised, see
/// [`crate::Config::normalize_base_path`]).
pub fn classify(method: &Method, path: &str, base: &str) -> Result<Route, HttpError> {
    if path == "*" {
        return Ok(Route::Options { allow: ALLOW_ID });
    }
    let rest = if base.is_empty() {
        path
    } else if path == base {
        "/"
    } else {
        match path.strip_prefix(base) {
            Some(r) if r.starts_with('/') => r,
            _ => return Err(HttpError::NotFound),
        }
    };
    let info = |route: Route| match *method {
        Method::GET | Method::HEAD => Ok(route),
        Method::OPTIONS => Ok(Route::Options { allow: ALLOW_INFO }),
        _ => Err(HttpError::MethodNotAllowed { allow: ALLOW_INFO }),
    };
    match rest {
        "/" => info(Route::Stats),
        "/metrics" => info(Route::Metrics),
        "/healthz" => info(Route::Health),
        _ => {
            let segment = &rest[1..];
            if segment.contains('/') {
                return Err(HttpError::NotFound);
            }
            if segment.contains(',') {
                return match *method {
                    Method::POST => Ok(Route::SendMany),
                    Method::OPTIONS => Ok(Route::Options { allow: ALLOW_MANY }),
                    _ => Err(HttpError::MethodNotAllowed { allow: ALLOW_MANY }),
                };
            }
            let id = Id::parse(segment.as_bytes()).ok_or(HttpError::InvalidId)?;
            match *method {
                Method::POST => Ok(Route::Send(id)),
                Method::GET | Method::HEAD => Ok(Route::Listen(id)),
                Method::OPTIONS => Ok(Route::Options { allow: ALLOW_ID }),
                _ => Err(HttpError::MethodNotAllowed { allow: ALLOW_ID }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u32) -> Id {
        Id::new(v).unwrap()
    }

    #[test]
    fn routes() {
        let c = |m: Method, p: &str, b: &str| classify(&m, p, b);
        assert_eq!(c(Method::POST, "/42", ""), Ok(Route::Send(id(42))));
        assert_eq!(c(Method::GET, "/42", ""), Ok(Route::Listen(id(42))));
        assert_eq!(c(Method::GET, "/", ""), Ok(Route::Stats));
        assert_eq!(c(Method::HEAD, "/metrics", ""), Ok(Route::Metrics));
        assert_eq!(c(Method::GET, "/healthz", ""), Ok(Route::Health));
        assert_eq!(
            c(Method::POST, "/", ""),
            Err(HttpError::MethodNotAllowed { allow: ALLOW_INFO })
        );
        assert_eq!(
            c(Method::DELETE, "/4", ""),
            Err(HttpError::MethodNotAllowed { allow: ALLOW_ID })
        );
        assert_eq!(c(Method::POST, "/abc", ""), Err(HttpError::InvalidId));
        assert_eq!(c(Method::POST, "/042", ""), Err(HttpError::InvalidId));
        assert_eq!(c(Method::POST, "/4/", ""), Err(HttpError::NotFound));
        assert_eq!(c(Method::GET, "/a/b", ""), Err(HttpError::NotFound));
        assert_eq!(c(Method::POST, "/mq/42", "/mq"), Ok(Route::Send(id(42))));
        assert_eq!(c(Method::GET, "/mq", "/mq"), Ok(Route::Stats));
        assert_eq!(c(Method::GET, "/mq/", "/mq"), Ok(Route::Stats));
        assert_eq!(c(Method::GET, "/mq/metrics", "/mq"), Ok(Route::Metrics));
        assert_eq!(c(Method::POST, "/42", "/mq"), Err(HttpError::NotFound));
        assert_eq!(c(Method::GET, "/mqx/1", "/mq"), Err(HttpError::NotFound));
        assert_eq!(c(Method::OPTIONS, "/1", ""), Ok(Route::Options { allow: ALLOW_ID }));
        assert_eq!(c(Method::POST, "/1,2", ""), Ok(Route::SendMany));
        assert_eq!(c(Method::POST, "/mq/1,x", "/mq"), Ok(Route::SendMany));
        assert_eq!(
            c(Method::GET, "/1,2", ""),
            Err(HttpError::MethodNotAllowed { allow: ALLOW_MANY })
        );
    }
}
