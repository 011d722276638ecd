//! Signing a browser in and out: a pasted API token or a one-time link becomes a
//! session cookie (HttpOnly, SameSite=Strict, and Secure when the server serves
//! TLS); the session is stored hashed.

use axum::Form;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;

use super::html::Page;
use crate::audit;
use crate::auth::{SESSION_COOKIE, User};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{hash_secret, new_secret, now};

pub const SESSION_SECONDS: i64 = 12 * 3600;

/// The `Set-Cookie` value for the session (an empty value with `Max-Age=0` clears it).
/// `Secure` keeps a browser from ever sending the cookie over plain HTTP.
fn session_cookie(value: &str, max_age: i64, secure: bool) -> ApiResult<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}; Max-Age={max_age}");
    HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(format!("session cookie: {e}")))
}

/// A signed-in user of the web UI and the token its forms must carry (see
/// `web::csrf`; empty without a session cookie, so such a caller cannot post);
/// anyone else is sent to the sign-in page.
pub struct UiUser(pub User, pub String);

impl UiUser {
    /// Whether the user may change things (operators and admins see forms).
    pub fn acts(&self) -> bool {
        self.0.role >= crate::auth::Role::Operator
    }

    pub fn is_admin(&self) -> bool {
        self.0.role >= crate::auth::Role::Admin
    }
}

impl FromRequestParts<AppState> for UiUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<UiUser, Response> {
        let csrf = super::csrf::session_secret(&parts.headers).map(super::csrf::token_for).unwrap_or_default();
        match User::from_request_parts(parts, state).await {
            Ok(u) => Ok(UiUser(u, csrf)),
            Err(ApiError::Unauthorized(_)) => Err(Redirect::to("/ui/login").into_response()),
            Err(e) => Err(e.into_response()),
        }
    }
}

pub async fn login_form() -> Html<String> {
    let mut page = Page::new();
    page.p("Paste an API token to sign in, or open a one-time link made with POST /api/v1/ui-links.").raw(
        "<form method=\"post\" action=\"/ui/login\"><label>API token <input type=\"password\" name=\"token\" size=\"70\" autocomplete=\"off\"></label> \
         <button type=\"submit\">Sign in</button></form>",
    );
    Html(page.render("Sign in", None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

async fn start_session(st: &AppState, user_id: &str, org_id: &str, actor: &str, next: &str) -> ApiResult<Response> {
    let session = new_secret("hps_")?;
    let mut tx = st.db.begin().await?;
    sqlx::query("INSERT INTO ui_sessions (session_hash, user_id, kind, expires) VALUES ($1, $2, 'session', $3)")
        .bind(hash_secret(&session))
        .bind(user_id)
        .bind(now() + SESSION_SECONDS)
        .execute(&mut *tx)
        .await?;
    audit::record(&mut tx, org_id, actor, "ui.sign-in", actor, json!({})).await?;
    tx.commit().await?;
    let cookie = session_cookie(&session, SESSION_SECONDS, st.secure_cookies)?;
    let mut response = Redirect::to(next).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

pub async fn login_with_token(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // A sign-in posted from another site would sign this browser in as the
    // attacker (login CSRF); there is no session yet, so the origin decides.
    if let Err(e) = super::csrf::check_origin(&headers) {
        let mut page = Page::new();
        page.raw(&super::html::notice("error", &e.to_string()));
        return (e.status(), Html(page.render("Sign in", None))).into_response();
    }
    let row = sqlx::query(
        "SELECT u.id, u.org_id, u.name FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
    )
    .bind(hash_secret(form.token.trim()))
    .fetch_optional(&st.db.pool)
    .await;
    let row = match row {
        Ok(Some(r)) => r,
        Ok(None) => {
            let mut page = Page::new();
            page.raw("<p class=\"s-apply-failed\">That API token is unknown or revoked.</p><p><a href=\"/ui/login\">Try again</a></p>");
            return (axum::http::StatusCode::UNAUTHORIZED, Html(page.render("Sign in", None))).into_response();
        }
        Err(e) => return ApiError::Database(e).into_response(),
    };
    let fields: Result<(String, String, String), sqlx::Error> =
        (|| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))();
    match fields {
        Ok((uid, org, name)) => start_session(&st, &uid, &org, &format!("user:{name}"), "/ui/").await.into_response(),
        Err(e) => ApiError::Database(e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only local UI paths, so the link cannot bounce the browser to another site.
fn safe_next(next: Option<String>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.contains("//") && !n.contains('\\') && n.len() < 200 => n,
        _ => "/ui/".into(),
    }
}

pub async fn login_with_link(
    State(st): State<AppState>,
    Path(code): Path<String>,
    Query(q): Query<Next>,
) -> ApiResult<Response> {
    let mut tx = st.db.begin().await?;
    let row = sqlx::query(
        "SELECT s.user_id, u.org_id, u.name FROM ui_sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.session_hash = $1 AND s.kind = 'link' AND s.used = 0 AND s.expires > $2",
    )
    .bind(hash_secret(&code))
    .bind(now())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::Unauthorized("sign-in link unknown, used or expired".into()))?;
    let consumed = sqlx::query("UPDATE ui_sessions SET used = 1 WHERE session_hash = $1 AND used = 0")
        .bind(hash_secret(&code))
        .execute(&mut *tx)
        .await?;
    if consumed.rows_affected() != 1 {
        return Err(ApiError::Unauthorized("sign-in link already used".into()));
    }
    tx.commit().await?;
    let (uid, org, name): (String, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    start_session(&st, &uid, &org, &format!("user:{name}"), &safe_next(q.next)).await
}

pub async fn logout(State(st): State<AppState>, parts: axum::http::HeaderMap) -> ApiResult<Response> {
    let cookie = parts.get(header::COOKIE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Some(session) =
        cookie.split(';').filter_map(|c| c.trim().split_once('=')).find(|(n, _)| *n == SESSION_COOKIE).map(|(_, v)| v)
    {
        sqlx::query("DELETE FROM ui_sessions WHERE session_hash = $1")
            .bind(hash_secret(session))
            .execute(&st.db.writer)
            .await?;
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie("", 0, st.secure_cookies)?);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_secure_only_when_asked() {
        let plain = session_cookie("hps_x", 60, false).expect("cookie");
        assert_eq!(plain, "hp_session=hps_x; Path=/; HttpOnly; SameSite=Strict; Max-Age=60");
        let secure = session_cookie("", 0, true).expect("cookie");
        assert_eq!(secure, "hp_session=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0");
    }
}
