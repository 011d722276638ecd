//! What every form post shares: the extractor that admits a post only from a
//! signed-in browser of this origin with its session's token, and the pages
//! shown after it (a redirect when done, the error above the form when not).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::csrf;
use super::session::UiUser;
use super::view::{Markup, Page, html, notice};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A posted form whose origin and CSRF token were checked, with its fields.
/// Role checks stay with each action (the API's handlers do them).
pub struct UiForm<T> {
    pub user: UiUser,
    pub fields: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for UiForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let user = UiUser::from_request_parts(&mut parts, st).await?;
        let bytes = axum::body::to_bytes(body, crate::api::JSON_BODY_LIMIT).await.map_err(|e| {
            refused(&user, ApiError::PayloadTooLarge(format!("form unreadable or larger than 1 MiB: {e}")))
        })?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        let token = pairs.iter().find(|(k, _)| k == csrf::FIELD).map(|(_, v)| v.as_str());
        guard(&parts.headers, token).map_err(|e| refused(&user, e))?;
        let fields = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| refused(&user, ApiError::BadRequest(format!("form fields: {e}"))))?;
        Ok(UiForm { user, fields })
    }
}

/// Both CSRF checks: the browser's own word on where the post came from, and the token.
pub fn guard(headers: &HeaderMap, token: Option<&str>) -> ApiResult<()> {
    csrf::check_origin(headers)?;
    csrf::check_token(headers, token)
}

/// A refused post (forged, malformed): the reason, with the refusal's status.
pub fn refused(u: &UiUser, err: ApiError) -> Response {
    failed(u, "Not done", &err, html! {})
}

/// The page after a failed action: what went wrong above the form, filled in
/// again, with the error's 4xx status (5xx only when the server itself failed).
pub fn failed(u: &UiUser, title: &str, err: &ApiError, form: Markup) -> Response {
    if err.status().is_server_error() {
        tracing::error!(error = %err, "web form failed");
    }
    let mut page = Page::new();
    page.markup(notice("error", &err.to_string())).markup(form);
    (err.status(), Html(page.render(title, Some((&u.0.name, u.0.role.as_str()))))).into_response()
}

/// After a successful post: the browser goes on to `location` (303, so a reload
/// does not post again).
pub fn done(location: &str) -> Response {
    Redirect::to(location).into_response()
}

/// Builds an API request body from form values, so the UI goes through exactly
/// the API's validation, rules and audit entries.
pub fn api_body<T: DeserializeOwned>(v: Value) -> ApiResult<T> {
    serde_json::from_value(v).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// A form field that may be left empty.
pub fn optional(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Comma- or space-separated words (tags).
pub fn words(text: &str) -> Vec<String> {
    text.split([',', ' ', '\n', '\r', '\t']).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

/// A whole number typed into a form, named in the error when it is not one.
pub fn number(text: &str, what: &str) -> ApiResult<i64> {
    text.trim().parse().map_err(|_| ApiError::BadRequest(format!("{what} must be a whole number, not {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values() {
        assert_eq!(words(" a,b  c\n"), ["a", "b", "c"]);
        assert_eq!(optional("  "), None);
        assert_eq!(number(" 12 ", "x").ok(), Some(12));
        assert!(number("1e3", "soak").is_err_and(|e| e.to_string().contains("soak")));
    }
}
