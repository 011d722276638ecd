//! Schema migrations, run at every start. Each migration runs once, in its own
//! transaction, and is recorded in `schema_migrations`; on PostgreSQL an advisory
//! lock keeps replicas that start together from racing each other.

use sqlx::{Executor, Row};

use crate::db::{Backend, Db, DbError};

/// Ordered migrations. `{blob}` is replaced by the backend's binary column type.
/// Times are BIGINT unix seconds; ids are random hex text made by the server.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created BIGINT NOT NULL
);
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created BIGINT NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    token_hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    created BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE ui_sessions (
    session_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    kind TEXT NOT NULL,
    expires BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_org_at ON audit_log (org_id, at);
CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    token_hash TEXT NOT NULL UNIQUE,
    tags TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    used_at BIGINT,
    machine_id TEXT,
    revoked_at BIGINT
);
CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    credential_hash TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL DEFAULT '',
    kernel TEXT NOT NULL DEFAULT '',
    arch TEXT NOT NULL DEFAULT '',
    cores BIGINT NOT NULL DEFAULT 0,
    readiness TEXT NOT NULL DEFAULT '{}',
    tags TEXT NOT NULL DEFAULT '[]',
    enrolled BIGINT NOT NULL,
    last_seen BIGINT,
    state_hash TEXT NOT NULL DEFAULT '',
    revoked_at BIGINT
);
CREATE INDEX machines_org ON machines (org_id);
CREATE TABLE machine_targets (
    machine_id TEXT NOT NULL REFERENCES machines(id),
    build_id TEXT NOT NULL,
    file_name TEXT NOT NULL,
    processes BIGINT NOT NULL,
    applied_patch_id TEXT,
    applied_level BIGINT NOT NULL,
    error TEXT,
    PRIMARY KEY (machine_id, build_id)
);
CREATE INDEX machine_targets_build ON machine_targets (build_id);
CREATE TABLE artifacts (
    sha256 TEXT PRIMARY KEY,
    bytes {blob} NOT NULL,
    size BIGINT NOT NULL,
    created BIGINT NOT NULL
);
CREATE TABLE hotpatches (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    patch_id TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL REFERENCES artifacts(sha256),
    product TEXT NOT NULL,
    build_id TEXT NOT NULL,
    file_name TEXT NOT NULL,
    arch TEXT NOT NULL,
    level BIGINT NOT NULL,
    classification TEXT NOT NULL,
    cves TEXT NOT NULL,
    description TEXT NOT NULL,
    created TEXT NOT NULL,
    key_id TEXT NOT NULL,
    uploaded BIGINT NOT NULL,
    PRIMARY KEY (org_id, patch_id)
);
CREATE INDEX hotpatches_build ON hotpatches (org_id, build_id);
CREATE TABLE baselines (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    product TEXT NOT NULL,
    released BIGINT NOT NULL,
    planned BIGINT NOT NULL,
    reason TEXT NOT NULL,
    created BIGINT NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE baseline_targets (
    baseline_id TEXT NOT NULL REFERENCES baselines(id),
    build_id TEXT NOT NULL,
    file_name TEXT NOT NULL,
    PRIMARY KEY (baseline_id, build_id)
);
CREATE TABLE maintenance_windows (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    days TEXT NOT NULL,
    start_minute BIGINT NOT NULL,
    duration_minutes BIGINT NOT NULL,
    time_zone TEXT NOT NULL,
    created BIGINT NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    patch_id TEXT,
    baseline_id TEXT,
    scope_tags TEXT NOT NULL,
    start_at BIGINT NOT NULL,
    window_id TEXT,
    canary_percent BIGINT NOT NULL,
    soak_seconds BIGINT NOT NULL,
    failure_threshold_percent BIGINT NOT NULL,
    reboot_policy TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL DEFAULT '',
    created BIGINT NOT NULL
);
CREATE INDEX deployments_org_state ON deployments (org_id, state);
CREATE TABLE work_results (
    machine_id TEXT NOT NULL REFERENCES machines(id),
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    ring TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (machine_id, deployment_id)
);
CREATE INDEX work_results_deployment ON work_results (deployment_id);
CREATE TABLE work_history (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX work_history_machine ON work_history (machine_id, at);
CREATE TABLE subscriptions (
    org_id TEXT PRIMARY KEY REFERENCES orgs(id),
    active_from BIGINT,
    active_until BIGINT,
    trial_until BIGINT,
    price_cents_per_core_month BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE usage_days (
    machine_id TEXT NOT NULL REFERENCES machines(id),
    org_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    cores BIGINT NOT NULL,
    PRIMARY KEY (machine_id, day)
);
CREATE INDEX usage_days_org_day ON usage_days (org_id, day);
"#,
    ),
    // Machines sign each request with a key made at enrollment (hotpatch-wire);
    // the server keeps the public half and the last sequence it accepted.
    // `credential_hash` now holds the SHA-256 of that public key, so one key
    // enrolls one machine. Machines enrolled before this hold no key and must
    // enroll again.
    (
        2,
        r#"
ALTER TABLE machines ADD COLUMN public_key TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN last_sequence BIGINT NOT NULL DEFAULT 0;
"#,
    ),
    // Saved queries (see crate::query) and deployments scoped by one. No foreign key
    // on scope_query_id: a query may be deleted once only cancelled deployments use
    // it, and those keep the id (their scope then matches nothing, never everything).
    (
        3,
        r#"
CREATE TABLE saved_queries (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    query TEXT NOT NULL,
    created BIGINT NOT NULL,
    UNIQUE (org_id, name)
);
ALTER TABLE deployments ADD COLUMN scope_query_id TEXT;
CREATE INDEX deployments_scope_query ON deployments (scope_query_id);
"#,
    ),
    // Invoices are closed an hour after their month ends and stored as issued
    // (the whole invoice as JSON), so later price or fleet changes never rewrite
    // a bill already sent.
    (
        4,
        r#"
CREATE TABLE invoices (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    month TEXT NOT NULL,
    issued BIGINT NOT NULL,
    amount_cents BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (org_id, month)
);
"#,
    ),
    // Each organisation's release cadence (hotpatch_release::CalendarConfig as
    // JSON); absent means the default quarterly calendar.
    (
        5,
        r#"
CREATE TABLE calendars (
    org_id TEXT PRIMARY KEY REFERENCES orgs(id),
    config TEXT NOT NULL,
    updated BIGINT NOT NULL
);
"#,
    ),
    // Credentials end together: a web session (and a sign-in link) remembers the
    // API token it was made from and lives only while that token does; tokens may
    // expire; a removed user keeps its rows (audit, names) but can no longer sign
    // in. Sessions made before this know no token, so they end here (sign in again).
    (
        6,
        r#"
ALTER TABLE api_tokens ADD COLUMN expires BIGINT;
ALTER TABLE users ADD COLUMN removed_at BIGINT;
DELETE FROM ui_sessions;
ALTER TABLE ui_sessions ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE ui_sessions ADD COLUMN token_id TEXT NOT NULL DEFAULT '';
ALTER TABLE ui_sessions ADD COLUMN created BIGINT NOT NULL DEFAULT 0;
CREATE INDEX ui_sessions_token ON ui_sessions (token_id);
CREATE INDEX ui_sessions_user ON ui_sessions (user_id)
"#,
    ),
    // Publisher keys an organisation trusts beyond the server's --trust files
    // (added and revoked in the UI or API, effective at once on every replica),
    // and indexes for the machine list's filters and sort orders.
    (
        7,
        r#"
CREATE TABLE trusted_keys (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    label TEXT NOT NULL,
    added BIGINT NOT NULL,
    added_by TEXT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (org_id, key_id)
);
CREATE INDEX machines_org_hostname ON machines (org_id, hostname, id);
CREATE INDEX machines_org_last_seen ON machines (org_id, last_seen, id);
CREATE INDEX machine_targets_file ON machine_targets (file_name, machine_id);
"#,
    ),
    // The publisher's signed catalog metadata and revocation statements, passed
    // on to agents, which verify them with their own keys.
    (
        8,
        r#"
CREATE TABLE signed_documents (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    kind TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    version BIGINT NOT NULL,
    document TEXT NOT NULL,
    added BIGINT NOT NULL,
    added_by TEXT NOT NULL,
    PRIMARY KEY (org_id, kind, sha256)
);
CREATE INDEX signed_documents_version ON signed_documents (org_id, kind, version)
"#,
    ),
    // Tiers (channels): each organisation's ordered tiers with "deploy after" per
    // tier, the tier a hotpatch was promoted to (one row per tier it reached),
    // each machine's tier (NULL: the organisation's last tier), and pins that
    // hold a group of machines (a tag or a saved query) at a level of one build.
    // Numbered 9: 8 is taken by publisher-signed catalog metadata.
    (
        9,
        r#"
CREATE TABLE tiers (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    position BIGINT NOT NULL,
    deploy_after_seconds BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);
CREATE TABLE promotions (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    patch_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    PRIMARY KEY (org_id, patch_id, tier)
);
CREATE TABLE pins (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    tag TEXT,
    query_id TEXT,
    build_id TEXT NOT NULL,
    level BIGINT NOT NULL,
    created BIGINT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX pins_org ON pins (org_id);
ALTER TABLE machines ADD COLUMN tier TEXT;
CREATE INDEX work_history_at ON work_history (at)
"#,
    ),
    // Signed documents per publisher (the anchor key id; '' for metadata
    // stored before publishers were told apart) and keys documents (rotation);
    // each machine's stale catalogs as it last reported them (JSON, '' none).
    (
        10,
        r#"
ALTER TABLE signed_documents ADD COLUMN publisher TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN catalogs_stale TEXT NOT NULL DEFAULT ''
"#,
    ),
    // Why a deployment's rings are what they are when the server chose them
    // (a small fleet goes all at once, without a canary soak).
    (11, "ALTER TABLE deployments ADD COLUMN rings_note TEXT"),
    // Each machine's kinds of work as a bit set kept by `work_flags` (0 until
    // the organisation's first recomputation, which `org_work`'s missing row
    // asks for), indexed for the overview's counts and the state filters; and
    // until when each organisation's bits hold without an event. The processes
    // mapping each target (`processes`), as the agent listed them last; the tier
    // an enrollment token puts its machine in.
    (
        12,
        r#"
ALTER TABLE machines ADD COLUMN work BIGINT NOT NULL DEFAULT 0;
CREATE INDEX machines_org_work ON machines (org_id, revoked_at, work, last_seen);
ALTER TABLE machine_targets ADD COLUMN process_list TEXT NOT NULL DEFAULT '[]';
ALTER TABLE enrollment_tokens ADD COLUMN tier TEXT;
CREATE TABLE org_work (
    org_id TEXT PRIMARY KEY REFERENCES orgs(id),
    computed_at BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    entitled BIGINT NOT NULL
)
"#,
    ),
];

pub async fn migrate(db: &Db) -> Result<(), DbError> {
    let mut conn = db.writer.acquire().await?;
    if db.backend == Backend::Postgres {
        // A replica waits for another's migration as long as it takes, and a
        // migration over a large table may run long: no request timeouts here.
        conn.execute("SET lock_timeout = 0; SET statement_timeout = 0").await?;
        // Arbitrary constant naming "hotpatch schema migration".
        conn.execute("SELECT pg_advisory_lock(7243911)").await?;
    }
    let result = run_pending(db, &mut conn).await;
    if db.backend == Backend::Postgres {
        conn.execute("SELECT pg_advisory_unlock(7243911)").await?;
        conn.execute(crate::db::POSTGRES_TIMEOUTS).await?;
    }
    result
}

async fn run_pending(db: &Db, conn: &mut sqlx::AnyConnection) -> Result<(), DbError> {
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)")
        .await?;
    let done: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()?;
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let sql = sql.replace("{blob}", db.blob_type());
        let run = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                tx.execute(statement).await?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)")
                .bind(*version)
                .bind(crate::util::now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        };
        run.await.map_err(|source| DbError::Migration { version: *version, source })?;
        tracing::info!(version, "schema migration applied");
    }
    Ok(())
}
