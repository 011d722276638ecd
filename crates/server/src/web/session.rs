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

use super::view::{Page, html, notice};
use crate::audit;
use crate::auth::{Credential, Role, SESSION_COOKIE, Sessions, User, authenticate, token_user};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{hash_secret, new_id, new_secret, now};

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
        match authenticate(parts, state, Sessions::Accept).await {
            Ok(u) => Ok(UiUser(u, csrf)),
            Err(ApiError::Unauthorized(_)) => Err(Redirect::to("/ui/login").into_response()),
            Err(e) => Err(e.into_response()),
        }
    }
}

pub async fn login_form() -> Html<String> {
    let mut page = Page::new();
    // No CSRF field: there is no session yet; the origin check guards the post.
    page.p("Paste an API token to sign in, or open a one-time link made with POST /api/v1/ui-links.").markup(html! {
        form method="post" action="/ui/login" {
            label { "API token " input type="password" name="token" size="70" autocomplete="off"; } " "
            button type="submit" { "Sign in" }
        }
    });
    Html(page.render("Sign in", None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// Starts a web session for `user`, made from (and ending with) the API token
/// `user.credential` names: 12 hours, or less when that token expires sooner.
async fn start_session(st: &AppState, user: &User, next: &str) -> ApiResult<Response> {
    let session = new_secret("hps_")?;
    let t = now();
    let expires = user.credential.expires().map_or(t + SESSION_SECONDS, |e| e.min(t + SESSION_SECONDS));
    let mut tx = st.db.begin().await?;
    sqlx::query(
        "INSERT INTO ui_sessions (session_hash, user_id, kind, expires, id, token_id, created) \
         VALUES ($1, $2, 'session', $3, $4, $5, $6)",
    )
    .bind(hash_secret(&session))
    .bind(&user.user_id)
    .bind(expires)
    .bind(new_id()?)
    .bind(user.credential.token_id())
    .bind(t)
    .execute(&mut *tx)
    .await?;
    let actor = user.actor();
    audit::record(
        &mut tx,
        &user.org_id,
        &actor,
        "ui.sign-in",
        &actor,
        json!({ "token_id": user.credential.token_id() }),
    )
    .await?;
    tx.commit().await?;
    let cookie = session_cookie(&session, expires - t, st.secure_cookies)?;
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
        page.markup(notice("error", &e.to_string()));
        return (e.status(), Html(page.render("Sign in", None))).into_response();
    }
    match token_user(&st, form.token.trim()).await {
        Ok(Some(user)) => start_session(&st, &user, "/ui/").await.into_response(),
        Ok(None) => {
            let mut page = Page::new();
            page.markup(html! {
                p.s-apply-failed { "That API token is unknown, expired or revoked." }
                p { a href="/ui/login" { "Try again" } }
            });
            (axum::http::StatusCode::UNAUTHORIZED, Html(page.render("Sign in", None))).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only local UI paths, so the link cannot bounce the browser to another site;
/// printable ASCII only, so the path is a valid `Location` header.
fn safe_next(next: Option<String>) -> String {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && !n.contains("//")
                && !n.contains('\\')
                && n.len() < 200
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n
        }
        _ => "/ui/".into(),
    }
}

pub async fn login_with_link(
    State(st): State<AppState>,
    Path(code): Path<String>,
    Query(q): Query<Next>,
) -> ApiResult<Response> {
    // Checked before the link is spent, so a bad `next` never wastes it.
    let next = safe_next(q.next);
    let t = now();
    let mut tx = st.db.begin().await?;
    // The link works only while its user and the token that made it do.
    let row = sqlx::query(
        "SELECT u.id, u.org_id, u.name, u.role, t.id, t.expires FROM ui_sessions s JOIN users u ON u.id = s.user_id \
         JOIN api_tokens t ON t.id = s.token_id \
         WHERE s.session_hash = $1 AND s.kind = 'link' AND s.used = 0 AND s.expires > $2 AND u.removed_at IS NULL \
         AND t.revoked_at IS NULL AND (t.expires IS NULL OR t.expires > $2)",
    )
    .bind(hash_secret(&code))
    .bind(t)
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
    let user = User {
        user_id: row.try_get(0)?,
        org_id: row.try_get(1)?,
        name: row.try_get(2)?,
        role: Role::parse(&row.try_get::<String, _>(3)?)?,
        credential: Credential::Token { id: row.try_get(4)?, expires: row.try_get(5)? },
    };
    start_session(&st, &user, &next).await
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
