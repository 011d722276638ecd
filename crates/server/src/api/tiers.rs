//! Tiers (channels), promotions, machine tiers and pins over HTTP; the rules
//! and changes live in `crate::tiers`.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::auth::User;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::tiers::change::{self, NewPin, NewTier};
use crate::tiers::{Gate, PinScope};
use crate::util::rfc3339;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTiers {
    tiers: Vec<NewTier>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    tier: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineTier {
    tier: Option<String>,
}

/// Machines per tier; those without one follow the last tier.
async fn machines_per_tier(st: &AppState, org_id: &str, gate: &Gate) -> ApiResult<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT tier, CAST(COUNT(*) AS BIGINT) FROM machines WHERE org_id = $1 AND revoked_at IS NULL GROUP BY tier",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut out: Vec<(String, i64)> = gate.tiers.iter().map(|t| (t.name.clone(), 0)).collect();
    for r in rows {
        let (tier, n): (Option<String>, i64) = (r.try_get(0)?, r.try_get(1)?);
        let name = gate.tier_of(tier.as_deref()).map(|t| t.name.clone()).unwrap_or_default();
        if let Some(slot) = out.iter_mut().find(|(t, _)| *t == name) {
            slot.1 += n;
        }
    }
    Ok(out)
}

pub async fn tiers_json(st: &AppState, org_id: &str) -> ApiResult<Value> {
    let gate = Gate::load(st, org_id).await?;
    let counts = machines_per_tier(st, org_id, &gate).await?;
    let tiers: Vec<Value> = gate
        .tiers
        .iter()
        .zip(&counts)
        .map(
            |(t, (_, n))| json!({ "name": t.name, "deploy_after_hours": t.deploy_after_seconds / 3600, "machines": n }),
        )
        .collect();
    let mut promotions: Vec<Value> = gate
        .promotions
        .iter()
        .map(|(patch, reached)| {
            let mut at: Vec<(&String, &i64)> = reached.iter().collect();
            at.sort_by_key(|(name, at)| (**at, gate.tiers.iter().position(|t| &t.name == *name)));
            json!({ "patch_id": patch, "tier": gate.reached(patch).map(|t| &t.name),
                    "tiers": at.iter().map(|(n, t)| json!({ "tier": n, "at": rfc3339(**t) })).collect::<Vec<_>>() })
        })
        .collect();
    promotions.sort_by(|a, b| a["patch_id"].as_str().cmp(&b["patch_id"].as_str()));
    let pins: Vec<Value> = gate
        .pins
        .iter()
        .map(|p| {
            let (tag, query) = match &p.scope {
                PinScope::Tag(t) => (Some(t.as_str()), None),
                PinScope::Query { name, .. } => (None, Some(name.as_str())),
            };
            json!({ "id": p.id, "tag": tag, "query": query, "build_id": p.build_id, "level": p.level })
        })
        .collect();
    Ok(
        json!({ "tiers": tiers, "default_tier": gate.tiers.last().map(|t| &t.name), "promotions": promotions, "pins": pins }),
    )
}

pub async fn get_tiers(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    Ok(Json(tiers_json(&st, &user.org_id).await?))
}

pub async fn set_tiers(
    State(st): State<AppState>,
    user: User,
    ApiJson(b): ApiJson<SetTiers>,
) -> ApiResult<Json<Value>> {
    Ok(Json(change::set_tiers(&st, &user, &b.tiers).await?))
}

pub async fn promote(
    State(st): State<AppState>,
    user: User,
    Path(patch_id): Path<String>,
    ApiJson(b): ApiJson<Promote>,
) -> ApiResult<Json<Value>> {
    Ok(Json(change::promote(&st, &user, &patch_id, b.tier.as_deref()).await?))
}

pub async fn set_machine_tier(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<MachineTier>,
) -> ApiResult<Json<Value>> {
    Ok(Json(change::set_machine_tier(&st, &user, &id, b.tier.as_deref()).await?))
}

pub async fn list_pins(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let all = tiers_json(&st, &user.org_id).await?;
    Ok(Json(json!({ "pins": all["pins"] })))
}

pub async fn add_pin(State(st): State<AppState>, user: User, ApiJson(b): ApiJson<NewPin>) -> ApiResult<Json<Value>> {
    Ok(Json(change::add_pin(&st, &user, &b).await?))
}

pub async fn remove_pin(State(st): State<AppState>, user: User, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(change::remove_pin(&st, &user, &id).await?))
}
