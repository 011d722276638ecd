//! The catalog as the rules read it: an organisation's hotpatches and baselines,
//! and what a build-id or an artifact hash must look like.

use sqlx::Row;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Hotpatch {
    pub patch_id: String,
    pub artifact_sha256: String,
    pub product: String,
    pub build_id: String,
    pub file_name: String,
    pub arch: String,
    pub level: i64,
    pub classification: String,
    pub cves: Vec<String>,
    pub description: String,
    pub created: String,
    pub key_id: String,
}

pub async fn hotpatches(st: &AppState, org_id: &str) -> ApiResult<Vec<Hotpatch>> {
    let rows = sqlx::query(
        "SELECT patch_id, artifact_sha256, product, build_id, file_name, arch, level, classification, cves, description, created, key_id \
         FROM hotpatches WHERE org_id = $1 ORDER BY file_name, build_id, level",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(Hotpatch {
            patch_id: r.try_get(0)?,
            artifact_sha256: r.try_get(1)?,
            product: r.try_get(2)?,
            build_id: r.try_get(3)?,
            file_name: r.try_get(4)?,
            arch: r.try_get(5)?,
            level: r.try_get(6)?,
            classification: r.try_get(7)?,
            cves: serde_json::from_str(&r.try_get::<String, _>(8)?)?,
            description: r.try_get(9)?,
            created: r.try_get(10)?,
            key_id: r.try_get(11)?,
        });
    }
    Ok(out)
}

pub fn check_sha256(sha: &str) -> ApiResult<()> {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("{sha:?} is not a lower-case hex SHA-256")))
    }
}

pub fn check_build_id(id: &str) -> ApiResult<()> {
    let ok = id.len() >= 8
        && id.len() <= 128
        && id.len().is_multiple_of(2)
        && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("build_id {id:?} must be lower-case hex of 4 to 64 bytes")))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Baseline {
    pub id: String,
    pub name: String,
    pub product: String,
    pub released: i64,
    pub planned: bool,
    pub reason: String,
    pub targets: Vec<(String, String)>,
}

pub async fn baselines(st: &AppState, org_id: &str) -> ApiResult<Vec<Baseline>> {
    let rows = sqlx::query(
        "SELECT id, name, product, released, planned, reason FROM baselines WHERE org_id = $1 ORDER BY released, name",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let targets = sqlx::query(
        "SELECT t.baseline_id, t.file_name, t.build_id FROM baseline_targets t JOIN baselines b ON b.id = t.baseline_id WHERE b.org_id = $1",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let id: String = r.try_get(0)?;
        let mut list = Vec::new();
        for t in &targets {
            if t.try_get::<String, _>(0)? == id {
                list.push((t.try_get(1)?, t.try_get(2)?));
            }
        }
        out.push(Baseline {
            id,
            name: r.try_get(1)?,
            product: r.try_get(2)?,
            released: r.try_get(3)?,
            planned: r.try_get::<i64, _>(4)? != 0,
            reason: r.try_get(5)?,
            targets: list,
        });
    }
    Ok(out)
}
