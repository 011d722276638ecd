//! Cross-site request forgery: every form the UI posts carries a token tied to
//! the browser's session, and a post whose browser says it came from another
//! origin is refused even with a valid token.
//!
//! The token is a hash of the session secret under its own label, so the
//! server stores nothing extra, a token is useless without the HttpOnly cookie
//! it belongs to, and signing out (or the session's expiry) retires it.

use axum::http::{HeaderMap, header};

use crate::auth::SESSION_COOKIE;
use crate::error::ApiError;
use crate::util::sha256_hex;

/// The name of the hidden form field that carries the token.
pub const FIELD: &str = "csrf";

/// The session secret from the request's cookie, if any.
pub fn session_secret(headers: &HeaderMap) -> Option<&str> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// The token for forms shown to the holder of this session.
pub fn token_for(session: &str) -> String {
    sha256_hex(format!("hotpatch-ui-csrf\0{session}").as_bytes())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Refuses a request that a browser marked as coming from another site or
/// origin. Browsers send `Sec-Fetch-Site` and `Origin` with every form post; a
/// client that sends neither (curl) still needs the session's token.
pub fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    match header(headers, "sec-fetch-site") {
        Some(site) if site != "same-origin" => {
            return Err(ApiError::Forbidden(format!("form posted from another site ({site}); refused")));
        }
        _ => {}
    }
    if let Some(origin) = header(headers, header::ORIGIN.as_str()) {
        let host = header(headers, header::HOST.as_str()).unwrap_or("");
        let ours = [format!("http://{host}"), format!("https://{host}")];
        if host.is_empty() || !ours.iter().any(|o| o == origin) {
            return Err(ApiError::Forbidden(format!("form posted from origin {origin:?}, not this server; refused")));
        }
    }
    Ok(())
}

/// Checks the posted token against the session's, in constant time.
pub fn check_token(headers: &HeaderMap, posted: Option<&str>) -> Result<(), ApiError> {
    let session = session_secret(headers).ok_or_else(|| ApiError::Unauthorized("no session; sign in again".into()))?;
    let expected = token_for(session);
    let posted = posted.unwrap_or("");
    let same = posted.len() == expected.len()
        && posted.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::Forbidden("the form's security token is missing or stale; reload the page and try again".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::request::Parts;
    use axum::http::{HeaderValue, Request};

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().method("POST").uri("/ui/x");
        for (n, v) in headers {
            req = req.header(*n, HeaderValue::from_str(v).expect("header"));
        }
        req.body(()).expect("request").into_parts().0
    }

    fn headers(h: &[(&str, &str)]) -> HeaderMap {
        parts(h).headers
    }

    #[test]
    fn only_this_origin_may_post() {
        assert!(check_origin(&headers(&[("host", "h:1"), ("origin", "http://h:1")])).is_ok());
        assert!(check_origin(&headers(&[("host", "h:1"), ("sec-fetch-site", "same-origin")])).is_ok());
        assert!(check_origin(&headers(&[("host", "h:1")])).is_ok(), "no browser headers: the token decides");
        assert!(check_origin(&headers(&[("host", "h:1"), ("origin", "http://h:2")])).is_err());
        assert!(check_origin(&headers(&[("host", "h:1"), ("origin", "null")])).is_err());
        assert!(check_origin(&headers(&[("host", "h:1"), ("sec-fetch-site", "same-site")])).is_err());
        assert!(check_origin(&headers(&[("host", "h:1"), ("sec-fetch-site", "cross-site")])).is_err());
    }

    #[test]
    fn the_token_belongs_to_its_session() {
        let p = parts(&[("cookie", "a=b; hp_session=hps_1")]);
        assert!(check_token(&p.headers, Some(&token_for("hps_1"))).is_ok());
        assert!(check_token(&p.headers, Some(&token_for("hps_2"))).is_err());
        assert!(check_token(&p.headers, None).is_err());
        assert!(check_token(&parts(&[]).headers, Some(&token_for(""))).is_err());
    }
}
