//! Names and tags an operator gives things: what they may contain, and that a
//! name is unique within its organisation.

use crate::error::{ApiError, ApiResult};

/// Names of organisations, users, windows...: short, printable, no surprises in
/// URLs, CSV or HTML.
pub fn check_name(what: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} name {name:?} must be 1-64 characters of letters, digits, '-', '_', '.', '@'"
        )))
    }
}

/// Tables whose rows have a name unique within an organisation.
#[derive(Debug, Clone, Copy)]
pub enum Named {
    User,
    Baseline,
    MaintenanceWindow,
    SavedQuery,
}

impl Named {
    fn table_and_noun(self) -> (&'static str, &'static str) {
        match self {
            Named::User => ("users", "user"),
            Named::Baseline => ("baselines", "baseline"),
            Named::MaintenanceWindow => ("maintenance_windows", "maintenance window"),
            Named::SavedQuery => ("saved_queries", "saved query"),
        }
    }
}

/// Refuses with 409 when the organisation already has a `kind` named `name`.
/// Two requests racing past this both try to insert; the unique index stops
/// the second, which `ApiError` also answers with 409.
pub async fn ensure_name_free(conn: &mut sqlx::AnyConnection, kind: Named, org_id: &str, name: &str) -> ApiResult<()> {
    let (table, noun) = kind.table_and_noun();
    // `table` is one of the constants above, never caller input.
    let taken = sqlx::query(&format!("SELECT id FROM {table} WHERE org_id = $1 AND name = $2"))
        .bind(org_id)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    match taken {
        Some(_) => Err(ApiError::Conflict(format!("{noun} {name:?} already exists"))),
        None => Ok(()),
    }
}

pub fn check_tags(tags: &[String]) -> ApiResult<()> {
    if tags.len() > 32 {
        return Err(ApiError::BadRequest("at most 32 tags".into()));
    }
    for t in tags {
        let ok = !t.is_empty()
            && t.len() <= 64
            && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '='));
        if !ok {
            return Err(ApiError::BadRequest(format!(
                "tag {t:?} must be 1-64 characters of letters, digits, '-', '_', '.', ':', '='"
            )));
        }
    }
    Ok(())
}
