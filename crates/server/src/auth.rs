//! Who is calling: a user (API token or web session cookie) with a role in one
//! organisation, or an enrolled machine (a request signed with its machine key,
//! see `hotpatch-wire`). User secrets are compared by their stored hash only;
//! for machines the server holds only public keys.

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
    pub credential: Credential,
}

/// What the user signed in with. Every web session comes from an API token (pasted,
/// or the one that made its sign-in link) and ends with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Token { id: String, expires: Option<i64> },
    Session { id: String, token_id: String, expires: i64 },
}

impl Credential {
    /// The API token behind the credential.
    pub fn token_id(&self) -> &str {
        match self {
            Credential::Token { id, .. } | Credential::Session { token_id: id, .. } => id,
        }
    }

    /// When the credential ends (None: when revoked). Nothing made with it may
    /// outlive it, or a short-lived credential could mint a lasting one.
    pub fn expires(&self) -> Option<i64> {
        match self {
            Credential::Token { expires, .. } => *expires,
            Credential::Session { expires, .. } => Some(*expires),
        }
    }
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

/// An API caller: a bearer token, or the web session cookie for reads only. A
/// browser sends the cookie with every request to this server, also with one
/// that a page of another site makes it send (cross-site request forgery), so
/// through the API the cookie may read (the UI links to CSV exports) but never
/// change anything: changes need a bearer token, which such a page cannot have.
impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<User, ApiError> {
        let session = if parts.method.is_safe() { Sessions::Accept } else { Sessions::Refuse };
        authenticate(parts, state, session).await
    }
}

/// Whether a web session cookie may stand for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    Accept,
    Refuse,
}

/// The user behind the request's bearer token or (when `sessions` accepts it) web
/// session cookie. The web UI accepts sessions for its forms, which the
/// cross-origin check (`origin`) and the forms' own tokens protect.
pub async fn authenticate(parts: &Parts, state: &AppState, sessions: Sessions) -> Result<User, ApiError> {
    if let Some(token) = bearer(parts) {
        return token_user(state, token)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("API token unknown, expired or revoked".into()));
    }
    let Some(session) = session_cookie(parts) else {
        return Err(ApiError::Unauthorized("missing credentials: send 'Authorization: Bearer <API token>'".into()));
    };
    if sessions == Sessions::Refuse {
        return Err(ApiError::Unauthorized(
            "the web session cookie only reads through the API; changes need 'Authorization: Bearer <API token>'"
                .into(),
        ));
    }
    // The session lives only while its user and the token it came from do.
    let row = sqlx::query(
        "SELECT u.id, u.org_id, u.name, u.role, s.id, s.token_id, s.expires FROM ui_sessions s \
         JOIN users u ON u.id = s.user_id JOIN api_tokens t ON t.id = s.token_id \
         WHERE s.session_hash = $1 AND s.kind = 'session' AND s.expires > $2 AND u.removed_at IS NULL \
         AND t.revoked_at IS NULL AND (t.expires IS NULL OR t.expires > $2)",
    )
    .bind(hash_secret(session))
    .bind(now())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::Unauthorized("session ended; sign in again".into()))?;
    let credential = Credential::Session { id: row.try_get(4)?, token_id: row.try_get(5)?, expires: row.try_get(6)? };
    user_from_row(&row, credential)
}

/// The user of a live API token (not revoked, not expired, user not removed).
pub async fn token_user(state: &AppState, token: &str) -> Result<Option<User>, ApiError> {
    let row = sqlx::query(
        "SELECT u.id, u.org_id, u.name, u.role, t.id, t.expires FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires IS NULL OR t.expires > $2) \
         AND u.removed_at IS NULL",
    )
    .bind(hash_secret(token))
    .bind(now())
    .fetch_optional(&state.db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let credential = Credential::Token { id: row.try_get(4)?, expires: row.try_get(5)? };
    user_from_row(&row, credential).map(Some)
}

fn user_from_row(row: &sqlx::any::AnyRow, credential: Credential) -> Result<User, ApiError> {
    Ok(User {
        user_id: row.try_get(0)?,
        org_id: row.try_get(1)?,
        name: row.try_get(2)?,
        role: Role::parse(&row.try_get::<String, _>(3)?)?,
        credential,
    })
}

/// An enrolled, not revoked machine whose request signature verified with the
/// key it enrolled with. `sequence` is the request's sequence number, above every
/// one accepted from this machine before; whoever writes on the machine's behalf
/// claims it with [`claim_sequence`] so a replayed request is refused.
#[derive(Debug, Clone)]
pub struct Machine {
    pub id: String,
    pub org_id: String,
    pub tags: Vec<String>,
    pub state_hash: String,
    pub cores: i64,
    pub last_seen: Option<i64>,
    pub sequence: i64,
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_machine_request(parts: &Parts) -> bool {
    parts.headers.contains_key(hotpatch_wire::HEADER_MACHINE)
}

fn require_machine_request(parts: &Parts) -> Result<(), ApiError> {
    if is_machine_request(parts) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(format!(
            "missing machine signature: send the {} headers",
            hotpatch_wire::HEADER_MACHINE
        )))
    }
}

fn replayed(sequence: i64, last: i64) -> ApiError {
    ApiError::Unauthorized(format!(
        "replayed or out-of-order machine request: sequence {sequence} is not above the last accepted {last}"
    ))
}

/// Checks a machine request's signature over `body` and that its sequence is
/// above the last accepted one. Changes nothing: see [`claim_sequence`].
pub async fn verify_machine(parts: &Parts, state: &AppState, body: &[u8]) -> Result<Machine, ApiError> {
    let signature = hotpatch_wire::RequestSignature::from_headers(
        header(parts, hotpatch_wire::HEADER_MACHINE),
        header(parts, hotpatch_wire::HEADER_SEQUENCE),
        header(parts, hotpatch_wire::HEADER_SIGNATURE),
    )
    .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let row = sqlx::query(
        "SELECT id, org_id, tags, state_hash, cores, last_seen, revoked_at, public_key, last_sequence FROM machines WHERE id = $1",
    )
    .bind(&signature.machine_id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::Unauthorized(format!("machine {} unknown", signature.machine_id)))?;
    if row.try_get::<Option<i64>, _>(6)?.is_some() {
        return Err(ApiError::Unauthorized(format!("machine {} is revoked", signature.machine_id)));
    }
    let public_key: String = row.try_get(7)?;
    let public = hotpatch_wire::MachinePublicKey::from_hex(&public_key).map_err(|_| {
        ApiError::Unauthorized(format!(
            "machine {} has no enrolled key (enrolled by an earlier version); enroll it again",
            signature.machine_id
        ))
    })?;
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if let Err(e) = public.verify(parts.method.as_str(), path, &signature, body) {
        tracing::warn!(machine = %signature.machine_id, error = %e, "machine request refused");
        return Err(ApiError::Unauthorized(e.to_string()));
    }
    // from_headers keeps sequences within i64.
    let sequence = i64::try_from(signature.sequence).map_err(|_| ApiError::BadRequest("sequence too large".into()))?;
    let last: i64 = row.try_get(8)?;
    if sequence <= last {
        tracing::warn!(machine = %signature.machine_id, sequence, last, "replayed machine request refused");
        return Err(replayed(sequence, last));
    }
    Ok(Machine {
        id: row.try_get(0)?,
        org_id: row.try_get(1)?,
        tags: serde_json::from_str(&row.try_get::<String, _>(2)?)?,
        state_hash: row.try_get(3)?,
        cores: row.try_get(4)?,
        last_seen: row.try_get(5)?,
        sequence,
    })
}

/// Records the machine's sequence as used, inside the caller's transaction. The
/// conditional UPDATE is what makes two copies of one request, racing on two
/// replicas, succeed at most once.
pub async fn claim_sequence(conn: &mut sqlx::AnyConnection, m: &Machine, seen: Option<i64>) -> Result<(), ApiError> {
    let done = sqlx::query(
        "UPDATE machines SET last_sequence = $1, last_seen = COALESCE($2, last_seen) WHERE id = $3 AND last_sequence < $1",
    )
    .bind(m.sequence)
    .bind(seen)
    .bind(&m.id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        tracing::warn!(machine = %m.id, sequence = m.sequence, "replayed machine request refused");
        Err(ApiError::Unauthorized(format!(
            "replayed or out-of-order machine request: sequence {} was already accepted or passed",
            m.sequence
        )))
    }
}

/// A machine request without a body (downloads): verified and its sequence
/// claimed at once.
impl FromRequestParts<AppState> for Machine {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Machine, ApiError> {
        require_machine_request(parts)?;
        let machine = verify_machine(parts, state, &[]).await?;
        // A write: through the writer pool, which on SQLite queues the writers.
        let mut conn = state.db.writer.acquire().await?;
        claim_sequence(&mut conn, &machine, None).await?;
        Ok(machine)
    }
}

/// A machine request with a JSON body: the raw body is what the signature
/// covers, so it is read whole (within the JSON limit), verified, then parsed.
pub struct SignedJson<T> {
    pub machine: Machine,
    pub body: T,
}

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for SignedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        require_machine_request(&parts)?;
        let bytes =
            axum::body::to_bytes(body, crate::api::JSON_BODY_LIMIT).await.map_err(crate::api::json::body_error)?;
        let machine = verify_machine(&parts, state, &bytes).await?;
        crate::api::json::refuse_nul(&bytes)?;
        let body = serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::Unprocessable(format!("invalid request body: {e}")),
            _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
        })?;
        Ok(SignedJson { machine, body })
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
        if is_machine_request(parts) {
            let machine = Machine::from_request_parts(parts, state).await?;
            Ok(OrgCaller { org_id: machine.org_id })
        } else {
            let user = User::from_request_parts(parts, state).await?;
            Ok(OrgCaller { org_id: user.org_id })
        }
    }
}
