//! A JSON body extractor whose every rejection (malformed JSON, unknown field,
//! wrong type, wrong content type, too large, a NUL character) becomes a clear JSON 4xx.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, super::JSON_BODY_LIMIT).await.map_err(body_error)?;
        refuse_nul(&bytes)?;
        let req = Request::from_parts(parts, Body::from(bytes));
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(rejection_error(rejection)),
        }
    }
}

/// Why a JSON body could not be read whole: it stalled (see `limits`), or it is
/// larger than the limit (or the client went away, which no one sees answered).
pub fn body_error(e: axum::Error) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(stalled) = c.downcast_ref::<crate::limits::BodyTimedOut>() {
            return ApiError::BadRequest(stalled.to_string());
        }
        cause = c.source();
    }
    ApiError::PayloadTooLarge(format!(
        "request body too large (over {} bytes) or cut short: {e}",
        super::JSON_BODY_LIMIT
    ))
}

/// A raw body (package upload) that could not be read whole, as a JSON 4xx: too
/// large (413), or stalled or cut short (400), rather than axum's plain text.
pub fn bytes_rejection(r: axum::extract::rejection::BytesRejection) -> ApiError {
    if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge(format!("request body too large: {}", r.body_text()));
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&r);
    while let Some(c) = cause {
        if let Some(stalled) = c.downcast_ref::<crate::limits::BodyTimedOut>() {
            return ApiError::BadRequest(stalled.to_string());
        }
        cause = c.source();
    }
    ApiError::BadRequest(r.body_text())
}

/// Refuses JSON text holding a NUL character (`\u0000`, or a raw NUL byte, which
/// is not JSON anyway): PostgreSQL cannot store one in text, SQLite would, so
/// both refuse it alike, before anything is written.
pub fn refuse_nul(json: &[u8]) -> Result<(), ApiError> {
    let mut i = 0;
    while let Some(&b) = json.get(i) {
        match b {
            0 => return Err(nul_refused()),
            // An escape: `\u0000` is NUL; any other escape, `\\` included, is skipped whole.
            b'\\' if json.get(i + 1..i + 6) == Some(b"u0000") => return Err(nul_refused()),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(())
}

pub fn nul_refused() -> ApiError {
    ApiError::BadRequest("text must not contain NUL characters (\\u0000)".into())
}

fn rejection_error(rejection: JsonRejection) -> ApiError {
    let text = rejection.body_text();
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge(format!("request body too large: {text}"));
    }
    match rejection {
        JsonRejection::JsonDataError(_) => ApiError::Unprocessable(text),
        _ => ApiError::BadRequest(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_found_and_escaped_backslashes_are_not_mistaken_for_them() {
        for bad in
            [&br#"{"a":"x\u0000"}"#[..], br#"{"a\u0000":1}"#, b"{\"a\":\"\0\"}", br#"["\\\u0000"]"#, br#"["\u00001"]"#]
        {
            assert!(refuse_nul(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        for good in [&br#"{"a":"\\u0000"}"#[..], br#"{"a":"\u0001\n"}"#, br#"["\\"]"#, b"\\"] {
            assert!(refuse_nul(good).is_ok(), "{}", String::from_utf8_lossy(good));
        }
    }
}
