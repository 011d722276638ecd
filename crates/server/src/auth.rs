//! Who is calling: a user (API token or web session cookie) with a role in one
//! organisation, or an enrolled machine (machine credential). Secrets are
//! compared by their stored hash only.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::error::ApiError;
use crate::state::AppState;
use crate::util::{hash_secret, now};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, ApiError> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(ApiError::BadRequest(format!("unknown role {other:?} (expected admin, operator or viewer)"))),
        }
    }
}

/// A signed-in user. Every query a handler makes is scoped by `org_id`, which is
/// what keeps organisations apart.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub org_id: String,
    pub name: String,
    pub role: Role,
}

impl User {
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs the {} role; user {:?} is {}",
                role.as_str(),
                self.name,
                self.role.as_str()
            )))
        }
    }

    /// How the audit log names this actor.
    pub fn actor(&self) -> String {
        format!("user:{}", self.name)
    }
}

pub const SESSION_COOKIE: &str = "hp_session";

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

fn session_cookie(parts: &Parts) -> Option<&str> {
    let cookies = parts.headers.get(header::COOKIE)?.to_str().ok()?;
    cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<User, ApiError> {
        let row = if let Some(token) = bearer(parts) {
            sqlx::query(
                "SELECT u.id, u.org_id, u.name, u.role FROM api_tokens t JOIN users u ON u.id = t.user_id \
                 WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
            )
            .bind(hash_secret(token))
            .fetch_optional(&state.db.pool)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("API token unknown or revoked".into()))?
        } else if let Some(session) = session_cookie(parts) {
            sqlx::query(
                "SELECT u.id, u.org_id, u.name, u.role FROM ui_sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.session_hash = $1 AND s.kind = 'session' AND s.expires > $2",
            )
            .bind(hash_secret(session))
            .bind(now())
            .fetch_optional(&state.db.pool)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("session expired; sign in again".into()))?
        } else {
            return Err(ApiError::Unauthorized("missing credentials: send 'Authorization: Bearer <API token>'".into()));
        };
        Ok(User {
            user_id: row.try_get(0)?,
            org_id: row.try_get(1)?,
            name: row.try_get(2)?,
            role: Role::parse(&row.try_get::<String, _>(3)?)?,
        })
    }
}

/// An enrolled, not revoked machine, authenticated by its machine credential.
#[derive(Debug, Clone)]
pub struct Machine {
    pub id: String,
    pub org_id: String,
    pub tags: Vec<String>,
    pub state_hash: String,
    pub cores: i64,
    pub last_seen: Option<i64>,
}

impl FromRequestParts<AppState> for Machine {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Machine, ApiError> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized("missing machine credential: send 'Authorization: Bearer <credential>'".into())
        })?;
        let row = sqlx::query(
            "SELECT id, org_id, tags, state_hash, cores, last_seen, revoked_at FROM machines WHERE credential_hash = $1",
        )
        .bind(hash_secret(token))
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("machine credential unknown".into()))?;
        if row.try_get::<Option<i64>, _>(6)?.is_some() {
            return Err(ApiError::Unauthorized("machine credential revoked".into()));
        }
        Ok(Machine {
            id: row.try_get(0)?,
            org_id: row.try_get(1)?,
            tags: serde_json::from_str(&row.try_get::<String, _>(2)?)?,
            state_hash: row.try_get(3)?,
            cores: row.try_get(4)?,
            last_seen: row.try_get(5)?,
        })
    }
}

/// The organisation on whose behalf a request runs, whether a user or a machine
/// sends it (artifact downloads accept both).
pub struct OrgCaller {
    pub org_id: String,
}

impl FromRequestParts<AppState> for OrgCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<OrgCaller, ApiError> {
        if bearer(parts).is_some_and(|t| t.starts_with("hpm_")) {
            let machine = Machine::from_request_parts(parts, state).await?;
            Ok(OrgCaller { org_id: machine.org_id })
        } else {
            let user = User::from_request_parts(parts, state).await?;
            Ok(OrgCaller { org_id: user.org_id })
        }
    }
}
