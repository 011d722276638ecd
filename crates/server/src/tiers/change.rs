//! Changes to tiers, promotions, machine tiers and pins. The API's handlers and
//! the web UI's forms both call these, so the checks, the role required and the
//! audit entry (in the change's transaction) are the same from either.

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::Gate;
use crate::audit;
use crate::auth::{Role, User};
use crate::domain::names::check_name;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{new_id, now};

pub const MAX_TIERS: usize = 16;
/// "Deploy after" is at most 90 days, like a deployment's soak.
pub const MAX_DEPLOY_AFTER_HOURS: i64 = 90 * 24;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTier {
    pub name: String,
    #[serde(default)]
    pub deploy_after_hours: i64,
}

fn check_tiers(tiers: &[NewTier]) -> ApiResult<()> {
    if tiers.len() > MAX_TIERS {
        return Err(ApiError::BadRequest(format!("at most {MAX_TIERS} tiers")));
    }
    for (i, t) in tiers.iter().enumerate() {
        check_name("tier", &t.name)?;
        if tiers[..i].iter().any(|o| o.name == t.name) {
            return Err(ApiError::BadRequest(format!("tier {:?} is named twice", t.name)));
        }
        if !(0..=MAX_DEPLOY_AFTER_HOURS).contains(&t.deploy_after_hours) {
            return Err(ApiError::BadRequest(format!(
                "tier {:?}: deploy_after_hours {} must be 0-{MAX_DEPLOY_AFTER_HOURS}",
                t.name, t.deploy_after_hours
            )));
        }
    }
    Ok(())
}

/// Replaces the organisation's tiers (in order; empty turns tiers off). A tier
/// that machines are in cannot be dropped (409, naming it); promotions to a
/// dropped tier go with it.
pub async fn set_tiers(st: &AppState, user: &User, tiers: &[NewTier]) -> ApiResult<Value> {
    user.require(Role::Admin)?;
    check_tiers(tiers)?;
    let mut tx = st.db.begin().await?;
    let used = sqlx::query(
        "SELECT tier, CAST(COUNT(*) AS BIGINT) FROM machines WHERE org_id = $1 AND tier IS NOT NULL \
         AND revoked_at IS NULL GROUP BY tier ORDER BY tier",
    )
    .bind(&user.org_id)
    .fetch_all(&mut *tx)
    .await?;
    for r in used {
        let (name, n): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        if !tiers.iter().any(|t| t.name == name) {
            return Err(ApiError::Conflict(format!(
                "tier {name:?} still has {n} machines; move them to another tier first"
            )));
        }
    }
    sqlx::query("DELETE FROM tiers WHERE org_id = $1").bind(&user.org_id).execute(&mut *tx).await?;
    for (position, t) in tiers.iter().enumerate() {
        sqlx::query("INSERT INTO tiers (org_id, name, position, deploy_after_seconds) VALUES ($1, $2, $3, $4)")
            .bind(&user.org_id)
            .bind(&t.name)
            .bind(position as i64)
            .bind(t.deploy_after_hours * 3600)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM promotions WHERE org_id = $1 AND tier NOT IN (SELECT name FROM tiers WHERE org_id = $1)")
        .bind(&user.org_id)
        .execute(&mut *tx)
        .await?;
    let shown: Vec<Value> =
        tiers.iter().map(|t| json!({ "name": t.name, "deploy_after_hours": t.deploy_after_hours })).collect();
    audit::record(&mut tx, &user.org_id, &user.actor(), "tiers.set", "tiers", json!({ "tiers": shown })).await?;
    tx.commit().await?;
    Ok(json!({ "tiers": shown }))
}

/// Promotes a hotpatch to `to` (by default the next tier it has not reached),
/// recording every tier up to it that it skipped, at the same time.
pub async fn promote(st: &AppState, user: &User, patch_id: &str, to: Option<&str>) -> ApiResult<Value> {
    user.require(Role::Operator)?;
    let gate = Gate::load(st, &user.org_id).await?;
    if gate.tiers.is_empty() {
        return Err(ApiError::Conflict("this organisation has no tiers; set them first (PUT /api/v1/tiers)".into()));
    }
    let target = match to {
        Some(name) => gate
            .tiers
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| ApiError::NotFound(format!("no tier {name:?} in this organisation")))?,
        None => {
            let next = gate
                .next_tier(patch_id)
                .ok_or_else(|| ApiError::Conflict(format!("hotpatch {patch_id:?} already reached the last tier")))?;
            gate.tiers.iter().position(|t| t.name == next.name).unwrap_or_default()
        }
    };
    let reached = gate.promotions.get(patch_id);
    let new: Vec<&str> = gate.tiers[..=target]
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| reached.is_none_or(|r| !r.contains_key(*n)))
        .collect();
    let tier = gate.tiers[target].name.clone();
    if new.is_empty() {
        return Err(ApiError::Conflict(format!("hotpatch {patch_id:?} is already in tier {tier:?}")));
    }
    let mut tx = st.db.begin().await?;
    let known = sqlx::query("SELECT patch_id FROM hotpatches WHERE org_id = $1 AND patch_id = $2")
        .bind(&user.org_id)
        .bind(patch_id)
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_none() {
        return Err(ApiError::NotFound(format!("no hotpatch {patch_id:?} in this organisation's catalog")));
    }
    let t = now();
    for name in &new {
        // ON CONFLICT: a promotion racing this one on another replica already recorded it.
        sqlx::query(
            "INSERT INTO promotions (org_id, patch_id, tier, at, actor) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (org_id, patch_id, tier) DO NOTHING",
        )
        .bind(&user.org_id)
        .bind(patch_id)
        .bind(name)
        .bind(t)
        .bind(user.actor())
        .execute(&mut *tx)
        .await?;
    }
    audit::record(
        &mut tx,
        &user.org_id,
        &user.actor(),
        "hotpatch.promote",
        patch_id,
        json!({ "tier": tier, "tiers": new }),
    )
    .await?;
    tx.commit().await?;
    Ok(json!({ "patch_id": patch_id, "tier": tier, "promoted_to": new }))
}

/// Puts a machine in a tier (None: back to the default, the last tier).
pub async fn set_machine_tier(st: &AppState, user: &User, machine_id: &str, tier: Option<&str>) -> ApiResult<Value> {
    user.require(Role::Operator)?;
    let mut tx = st.db.begin().await?;
    if let Some(name) = tier {
        let found = sqlx::query("SELECT name FROM tiers WHERE org_id = $1 AND name = $2")
            .bind(&user.org_id)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Err(ApiError::NotFound(format!("no tier {name:?} in this organisation")));
        }
    }
    let done = sqlx::query("UPDATE machines SET tier = $1 WHERE org_id = $2 AND id = $3 AND revoked_at IS NULL")
        .bind(tier)
        .bind(&user.org_id)
        .bind(machine_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() != 1 {
        return Err(ApiError::NotFound(format!("no machine {machine_id:?} in this organisation")));
    }
    audit::record(&mut tx, &user.org_id, &user.actor(), "machine.tier", machine_id, json!({ "tier": tier })).await?;
    tx.commit().await?;
    Ok(json!({ "id": machine_id, "tier": tier }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPin {
    pub tag: Option<String>,
    pub query: Option<String>,
    pub build_id: String,
    pub level: i64,
}

/// Holds the machines with a tag (or matched by a saved query) at `level` of
/// `build_id`: no higher level is offered to them until the pin is removed.
pub async fn add_pin(st: &AppState, user: &User, pin: &NewPin) -> ApiResult<Value> {
    user.require(Role::Operator)?;
    crate::domain::catalog::check_build_id(&pin.build_id)?;
    if !(0..=i64::from(u32::MAX)).contains(&pin.level) {
        return Err(ApiError::BadRequest(format!("level {} must be 0 or more", pin.level)));
    }
    let mut tx = st.db.begin().await?;
    let (tag, query_id) = match (&pin.tag, &pin.query) {
        (Some(tag), None) => {
            crate::domain::names::check_tags(std::slice::from_ref(tag))?;
            (Some(tag.clone()), None)
        }
        (None, Some(name)) => {
            let sql = format!(
                "SELECT id FROM saved_queries WHERE org_id = $1 AND name = $2{}",
                crate::domain::targeting::lock_clause(st.db.backend, false)
            );
            let row = sqlx::query(&sql)
                .bind(&user.org_id)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no saved query {name:?} in this organisation")))?;
            (None, Some(row.try_get::<String, _>(0)?))
        }
        _ => return Err(ApiError::BadRequest("a pin takes either tag or query (a saved query's name)".into())),
    };
    let id = new_id()?;
    sqlx::query(
        "INSERT INTO pins (id, org_id, tag, query_id, build_id, level, created, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(&user.org_id)
    .bind(&tag)
    .bind(&query_id)
    .bind(&pin.build_id)
    .bind(pin.level)
    .bind(now())
    .bind(user.actor())
    .execute(&mut *tx)
    .await?;
    let detail = json!({ "tag": tag, "query": pin.query, "build_id": pin.build_id, "level": pin.level });
    audit::record(&mut tx, &user.org_id, &user.actor(), "pin.create", &id, detail.clone()).await?;
    tx.commit().await?;
    Ok(json!({ "id": id, "pin": detail }))
}

pub async fn remove_pin(st: &AppState, user: &User, id: &str) -> ApiResult<Value> {
    user.require(Role::Operator)?;
    let mut tx = st.db.begin().await?;
    let done = sqlx::query("DELETE FROM pins WHERE org_id = $1 AND id = $2")
        .bind(&user.org_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() != 1 {
        return Err(ApiError::NotFound(format!("no pin {id:?} in this organisation")));
    }
    audit::record(&mut tx, &user.org_id, &user.actor(), "pin.remove", id, json!({})).await?;
    tx.commit().await?;
    Ok(json!({ "removed": id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_lists_are_checked() {
        let t = |n: &str, h: i64| NewTier { name: n.into(), deploy_after_hours: h };
        assert!(check_tiers(&[t("edge", 0), t("stable", 24)]).is_ok());
        let e = check_tiers(&[t("edge", 0), t("edge", 1)]).expect_err("twice");
        assert!(e.to_string().contains("named twice"), "{e}");
        let e = check_tiers(&[t("edge", -1)]).expect_err("negative");
        assert!(e.to_string().contains("deploy_after_hours -1"), "{e}");
        assert!(check_tiers(&[t("bad name", 0)]).is_err());
    }
}
