//! Tiers (channels) and pins: which hotpatches a machine may be offered.
//!
//! An organisation may order tiers (e.g. edge → beta → candidate → stable), each
//! with a "deploy after" delay. A hotpatch is promoted through them in order; a
//! machine follows one tier (by default the last, most careful one) and is
//! offered a hotpatch only once it was promoted to that tier and the tier's delay
//! has passed since. A pin holds a group of machines (a tag, or a saved query)
//! at a level of one build: nothing above it is offered until the pin is removed.
//! An organisation without tiers offers every deployed hotpatch, as before tiers.
//!
//! The rules here are pure over what [`Gate::load`] read, so every replica that
//! reads the same rows gives the same answer.

pub mod change;

use std::collections::HashMap;
use std::sync::Arc;

use hotpatch_query::{Facts, Query};
use sqlx::Row;

use crate::error::ApiResult;
use crate::state::AppState;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Tier {
    pub name: String,
    pub deploy_after_seconds: i64,
}

/// What a pin applies to.
#[derive(Debug, Clone)]
pub enum PinScope {
    Tag(String),
    /// A saved query: its name, and its parsed text (None when unreadable: the pin
    /// then holds every machine, erring on the side of not patching).
    Query {
        name: String,
        parsed: Option<Arc<Query>>,
    },
}

#[derive(Debug, Clone)]
pub struct Pin {
    pub id: String,
    pub scope: PinScope,
    pub build_id: String,
    pub level: i64,
}

impl Pin {
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        match &self.scope {
            PinScope::Tag(tag) => facts.tags.contains(tag),
            PinScope::Query { parsed, .. } => parsed.as_ref().is_none_or(|q| q.matches(facts)),
        }
    }

    pub fn scope_label(&self) -> String {
        match &self.scope {
            PinScope::Tag(t) => format!("tag {t}"),
            PinScope::Query { name, .. } => format!("query {name}"),
        }
    }
}

/// An organisation's tiers, promotions and pins, as read at one moment.
#[derive(Debug, Default, Clone)]
pub struct Gate {
    /// In order, first (least careful) to last.
    pub tiers: Vec<Tier>,
    /// Per hotpatch: each tier it reached and when.
    pub promotions: HashMap<String, HashMap<String, i64>>,
    pub pins: Vec<Pin>,
}

impl Gate {
    pub async fn load(st: &AppState, org_id: &str) -> ApiResult<Gate> {
        let tiers =
            sqlx::query("SELECT name, deploy_after_seconds FROM tiers WHERE org_id = $1 ORDER BY position, name")
                .bind(org_id)
                .fetch_all(&st.db.pool)
                .await?
                .iter()
                .map(|r| Ok(Tier { name: r.try_get(0)?, deploy_after_seconds: r.try_get(1)? }))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let mut promotions: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for r in sqlx::query("SELECT patch_id, tier, at FROM promotions WHERE org_id = $1")
            .bind(org_id)
            .fetch_all(&st.db.pool)
            .await?
        {
            promotions.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?, r.try_get(2)?);
        }
        let pins = load_pins(st, org_id).await?;
        Ok(Gate { tiers, promotions, pins })
    }

    /// The tier a machine follows: the one it was put in, else the last one
    /// (also when its tier no longer exists). None when there are no tiers.
    pub fn tier_of(&self, assigned: Option<&str>) -> Option<&Tier> {
        assigned.and_then(|a| self.tiers.iter().find(|t| t.name == a)).or_else(|| self.tiers.last())
    }

    /// The furthest tier a hotpatch reached, if any.
    pub fn reached(&self, patch_id: &str) -> Option<&Tier> {
        let reached = self.promotions.get(patch_id)?;
        self.tiers.iter().rev().find(|t| reached.contains_key(&t.name))
    }

    /// The tier a promotion without a named tier goes to: the first not reached.
    pub fn next_tier(&self, patch_id: &str) -> Option<&Tier> {
        let reached = self.promotions.get(patch_id);
        self.tiers.iter().find(|t| reached.is_none_or(|r| !r.contains_key(&t.name)))
    }

    /// The lowest level a pin holds this machine at for `build_id`, with the pin.
    pub fn pinned(&self, facts: &Facts<'_>, build_id: &str) -> Option<&Pin> {
        self.pins.iter().filter(|p| p.build_id == build_id && p.matches(facts)).min_by_key(|p| p.level)
    }

    /// Why hotpatch `patch_id` (level `level` of `build_id`) is held back from a
    /// machine in tier `assigned` with these facts at `now`; None: offer it.
    pub fn hold(
        &self,
        assigned: Option<&str>,
        facts: &Facts<'_>,
        patch_id: &str,
        build_id: &str,
        level: i64,
        now: i64,
    ) -> Option<String> {
        if let Some(pin) = self.pinned(facts, build_id).filter(|p| level > p.level) {
            return Some(format!(
                "{patch_id}: held at level {} by the pin on {} (pin {}); remove the pin to go further",
                pin.level,
                pin.scope_label(),
                pin.id
            ));
        }
        let tier = self.tier_of(assigned)?;
        let Some(at) = self.promotions.get(patch_id).and_then(|p| p.get(&tier.name)) else {
            let reached = self.reached(patch_id).map_or("no tier yet".to_string(), |t| format!("tier {}", t.name));
            return Some(format!(
                "{patch_id}: not yet promoted to tier {} (this machine's tier); it has reached {reached}",
                tier.name
            ));
        };
        let from = at + tier.deploy_after_seconds;
        (now < from).then(|| {
            format!(
                "{patch_id}: tier {} deploys it after {} h, at {}",
                tier.name,
                tier.deploy_after_seconds / 3600,
                crate::util::rfc3339(from)
            )
        })
    }
}

/// The tier a machine was put in, if any.
pub async fn machine_tier(st: &AppState, machine_id: &str) -> ApiResult<Option<String>> {
    let row =
        sqlx::query("SELECT tier FROM machines WHERE id = $1").bind(machine_id).fetch_optional(&st.db.pool).await?;
    Ok(match row {
        Some(r) => r.try_get(0)?,
        None => None,
    })
}

/// Refuses a tier name the organisation does not have (None names no tier).
pub async fn check_tier_named(st: &AppState, org_id: &str, tier: Option<&str>) -> ApiResult<()> {
    let Some(name) = tier else { return Ok(()) };
    let found = sqlx::query("SELECT name FROM tiers WHERE org_id = $1 AND name = $2")
        .bind(org_id)
        .bind(name)
        .fetch_optional(&st.db.pool)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(crate::error::ApiError::BadRequest(format!("tier {name:?}: no such tier in this organisation"))),
    }
}

async fn load_pins(st: &AppState, org_id: &str) -> ApiResult<Vec<Pin>> {
    let rows = sqlx::query(
        "SELECT p.id, p.tag, q.name, q.query, p.build_id, p.level FROM pins p \
         LEFT JOIN saved_queries q ON q.id = p.query_id AND q.org_id = p.org_id WHERE p.org_id = $1 ORDER BY p.created, p.id",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut pins = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get(0)?;
        let scope = match r.try_get::<Option<String>, _>(1)? {
            Some(tag) => PinScope::Tag(tag),
            None => {
                let name: Option<String> = r.try_get(2)?;
                let text: Option<String> = r.try_get(3)?;
                let parsed = text.as_deref().and_then(|t| {
                    hotpatch_query::parse(t)
                        .inspect_err(|e| tracing::warn!(pin = id, "pin's query unreadable, holds every machine: {e}"))
                        .ok()
                        .map(Arc::new)
                });
                PinScope::Query { name: name.unwrap_or_else(|| "(deleted)".into()), parsed }
            }
        };
        pins.push(Pin { id, scope, build_id: r.try_get(4)?, level: r.try_get(5)? });
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(tags: &'a [String]) -> Facts<'a> {
        Facts { hostname: "h", os: "", kernel: "", arch: "", cores: 1, tags, targets: &[] }
    }

    fn gate() -> Gate {
        let tier = |n: &str, h: i64| Tier { name: n.into(), deploy_after_seconds: h * 3600 };
        let mut promotions = HashMap::new();
        promotions
            .insert("fix-1".to_string(), HashMap::from([("edge".to_string(), 1000), ("stable".to_string(), 2000)]));
        promotions.insert("fix-2".to_string(), HashMap::from([("edge".to_string(), 5000)]));
        Gate { tiers: vec![tier("edge", 0), tier("stable", 24)], promotions, pins: Vec::new() }
    }

    #[test]
    fn no_tiers_offers_everything() {
        let g = Gate::default();
        assert_eq!(g.hold(None, &facts(&[]), "fix-9", "aa", 3, 0), None);
    }

    #[test]
    fn a_machine_gets_what_its_tier_has_after_the_delay() {
        let g = gate();
        let f = facts(&[]);
        // Edge: fix-2 at once.
        assert_eq!(g.hold(Some("edge"), &f, "fix-2", "aa", 2, 5000), None);
        // Stable (also the default): fix-2 never promoted there.
        let why = g.hold(None, &f, "fix-2", "aa", 2, 99_999).unwrap_or_default();
        assert!(why.contains("not yet promoted to tier stable") && why.contains("reached tier edge"), "{why}");
        // fix-1 reached stable at 2000: held for 24 h, then offered.
        let why = g.hold(Some("stable"), &f, "fix-1", "aa", 1, 2000 + 3600).unwrap_or_default();
        assert!(why.contains("after 24 h"), "{why}");
        assert_eq!(g.hold(Some("stable"), &f, "fix-1", "aa", 1, 2000 + 86_400), None);
        // A tier that no longer exists falls back to the last.
        assert_eq!(g.tier_of(Some("gone")).map(|t| t.name.as_str()), Some("stable"));
        assert_eq!(g.next_tier("fix-2").map(|t| t.name.as_str()), Some("stable"));
        assert_eq!(g.next_tier("fix-1").map(|t| t.name.as_str()), None);
    }

    #[test]
    fn a_pin_holds_its_group_at_its_level_only() {
        let mut g = Gate::default();
        g.pins.push(Pin { id: "p1".into(), scope: PinScope::Tag("db".into()), build_id: "aa".into(), level: 1 });
        let db = ["db".to_string()];
        assert_eq!(g.hold(None, &facts(&db), "fix-1", "aa", 1, 0), None);
        let why = g.hold(None, &facts(&db), "fix-2", "aa", 2, 0).unwrap_or_default();
        assert!(why.contains("held at level 1 by the pin on tag db"), "{why}");
        // Another group, or another build: not held.
        assert_eq!(g.hold(None, &facts(&[]), "fix-2", "aa", 2, 0), None);
        assert_eq!(g.hold(None, &facts(&db), "other-2", "bb", 2, 0), None);
        // An unreadable query holds every machine rather than none.
        g.pins.push(Pin {
            id: "p2".into(),
            scope: PinScope::Query { name: "q".into(), parsed: None },
            build_id: "bb".into(),
            level: 0,
        });
        assert!(g.hold(None, &facts(&[]), "other-1", "bb", 1, 0).is_some());
    }
}
