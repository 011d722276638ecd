//! Cross-site request forgery: a page of another origin can make a user's browser
//! send a request to this server, with the session cookie. Changes through the API
//! need a bearer token or a machine signature (see `auth`), which such a page does
//! not have; and every request that may change something (not GET, HEAD, OPTIONS)
//! is refused when the browser says it comes from another origin, which covers the
//! web UI's own forms (sign-in included) too.
//!
//! Same rule as Go's `net/http.CrossOriginProtection`: `Sec-Fetch-Site` (sent by
//! every current browser) decides when present; else `Origin` must name this host;
//! a request with neither comes from no browser (curl, the agent) and passes.
//! Ports count: `http://127.0.0.1:8081` is another origin than `:8080` although a
//! SameSite cookie treats them as one site.

use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

pub async fn refuse_cross_origin(req: Request, next: Next) -> Response {
    if !req.method().is_safe()
        && let Some(why) = cross_origin(req.headers())
    {
        tracing::warn!(method = %req.method(), path = req.uri().path(), why, "cross-origin request refused");
        return ApiError::Forbidden(format!(
            "cross-origin request refused ({why}): changes come only from this server's own pages or from API clients"
        ))
        .into_response();
    }
    next.run(req).await
}

/// Why the request comes from another origin, or None when it does not (or comes
/// from no browser at all).
fn cross_origin(headers: &HeaderMap) -> Option<&'static str> {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    match text("sec-fetch-site") {
        // "none": the user opened it themselves (typed, bookmark).
        Some("same-origin" | "none") => return None,
        Some(_) => return Some("Sec-Fetch-Site is not same-origin"),
        None => {}
    }
    let origin = text(header::ORIGIN.as_str())?;
    let authority = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    let host = text(header::HOST.as_str());
    match (authority, host) {
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => None,
        _ => Some("Origin is not this server"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn browsers_of_other_origins_are_told_apart_from_this_one_and_from_non_browsers() {
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(cross_origin(&headers(&[host])), None, "no browser headers: curl, the agent");
        assert_eq!(cross_origin(&headers(&[host, ("sec-fetch-site", "same-origin")])), None);
        assert_eq!(cross_origin(&headers(&[host, ("sec-fetch-site", "none")])), None);
        assert_eq!(cross_origin(&headers(&[host, ("origin", "http://127.0.0.1:8080")])), None);
        assert_eq!(cross_origin(&headers(&[("host", "CP.example"), ("origin", "https://cp.example")])), None);
        for refused in [
            vec![host, ("sec-fetch-site", "same-site")],
            vec![host, ("sec-fetch-site", "cross-site")],
            // Sec-Fetch-Site decides even when Origin looks right.
            vec![host, ("sec-fetch-site", "same-site"), ("origin", "http://127.0.0.1:8080")],
            vec![host, ("origin", "http://127.0.0.1:8081")],
            vec![host, ("origin", "null")],
            vec![host, ("origin", "http://127.0.0.1:8080.evil.example")],
            vec![("origin", "http://127.0.0.1:8080")],
        ] {
            assert!(cross_origin(&headers(&refused)).is_some(), "{refused:?}");
        }
    }
}
