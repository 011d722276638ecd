//! Plans kept between applies of one hotpatch to many processes, keyed by
//! what each depends on, each layer bounded (oldest entry dropped first).
//!
//! - plan: the package (manifest, payload, signer), which names one target
//!   build-id.
//! - bindings: the package, the target's load bias and the process's lookup
//!   scope (each object's build-id and where it is mapped, in search order):
//!   the same objects at the same addresses give the same addresses.
//! - linked image: the package, load bias, region address, the bindings and
//!   the thread-local variables' facts.

use crate::modules::LoadedModule;
use crate::plan::{Bindings, Linked, TargetPlan};
use hotpatch_format::VerifiedPackage;
use hotpatch_link::TlsSymbol;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;

/// Bounds of the layers: a daemon serves a handful of hotpatches, and a
/// machine runs few distinct layouts per target (ASLR gives each process its
/// own, which is then linked afresh from the plan and not kept long).
pub const MAX_PLANS: usize = 16;
pub const MAX_BINDINGS: usize = 64;
pub const MAX_LINKED: usize = 64;

pub type Digest32 = [u8; 32];

/// How often each layer was made afresh or reused (for reports and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub plans_made: u64,
    pub plans_reused: u64,
    pub bindings_made: u64,
    pub bindings_reused: u64,
    pub links_made: u64,
    pub links_reused: u64,
}

/// How one apply used the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PlanUse {
    /// The target plan (symbols, sites, layout) came from an earlier apply.
    pub plan_reused: bool,
    /// The linked image came from an earlier apply with the same layout.
    pub link_reused: bool,
}

struct Bounded<K, V> {
    cap: usize,
    order: VecDeque<K>,
    map: HashMap<K, V>,
}

impl<K: Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Bounded { cap, order: VecDeque::new(), map: HashMap::new() }
    }

    fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).cloned()
    }

    fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

type BindKey = (Digest32, u64, Digest32);
type LinkKey = (Digest32, u64, u64, Digest32, Digest32);

/// The cache of plans one caller keeps across the processes it patches
/// (`hotpatch apply --all`, an agent job).
pub struct PlanCache {
    plans: Bounded<Digest32, Arc<TargetPlan>>,
    bindings: Bounded<BindKey, Arc<Bindings>>,
    linked: Bounded<LinkKey, Arc<Linked>>,
    stats: CacheStats,
}

impl Default for PlanCache {
    fn default() -> Self {
        PlanCache::new()
    }
}

impl PlanCache {
    pub fn new() -> PlanCache {
        PlanCache {
            plans: Bounded::new(MAX_PLANS),
            bindings: Bounded::new(MAX_BINDINGS),
            linked: Bounded::new(MAX_LINKED),
            stats: CacheStats::default(),
        }
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Entries held per layer: plans, bindings, linked images.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.plans.len(), self.bindings.len(), self.linked.len())
    }

    /// The target plan of `package`, made by `make` when not held.
    pub fn plan<E>(
        &mut self,
        package: &Digest32,
        make: impl FnOnce() -> Result<TargetPlan, E>,
    ) -> Result<(Arc<TargetPlan>, bool), E> {
        if let Some(plan) = self.plans.get(package) {
            self.stats.plans_reused += 1;
            return Ok((plan, true));
        }
        let plan = Arc::new(make()?);
        self.stats.plans_made += 1;
        self.plans.insert(*package, plan.clone());
        Ok((plan, false))
    }

    /// The bindings for a process whose lookup scope digests to `scope`.
    pub fn bindings(&mut self, key: (Digest32, u64, Digest32), make: impl FnOnce() -> Bindings) -> Arc<Bindings> {
        if let Some(b) = self.bindings.get(&key) {
            self.stats.bindings_reused += 1;
            return b;
        }
        let b = Arc::new(make());
        self.stats.bindings_made += 1;
        self.bindings.insert(key, b.clone());
        b
    }

    /// The image linked for one layout, made by `make` when not held.
    pub fn linked<E>(
        &mut self,
        key: (Digest32, u64, u64, Digest32, Digest32),
        make: impl FnOnce() -> Result<Linked, E>,
    ) -> Result<(Arc<Linked>, bool), E> {
        if let Some(l) = self.linked.get(&key) {
            self.stats.links_reused += 1;
            return Ok((l, true));
        }
        let l = Arc::new(make()?);
        self.stats.links_made += 1;
        self.linked.insert(key, l.clone());
        Ok((l, false))
    }
}

/// Identity of a package for the cache: everything the plan is made from.
pub fn package_digest(package: &VerifiedPackage) -> Digest32 {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&package.manifest).unwrap_or_default());
    h.update([0]);
    h.update(package.key_id.as_bytes());
    h.update([0]);
    h.update(&package.payload);
    h.finalize().into()
}

/// Identity of a lookup scope: each object's build-id, file and where it is
/// mapped, in search order.
pub fn scope_digest(others: &[LoadedModule]) -> Digest32 {
    let mut h = Sha256::new();
    for m in others {
        h.update(m.build_id.as_deref().unwrap_or_default());
        h.update([0]);
        h.update(m.path.as_bytes());
        h.update([0]);
        h.update(m.start.to_le_bytes());
        h.update(m.end.to_le_bytes());
    }
    h.finalize().into()
}

/// Identity of the thread-local variables' facts a link used.
pub fn tls_digest(tls: &BTreeMap<String, Result<TlsSymbol, String>>) -> Digest32 {
    let mut h = Sha256::new();
    for (name, facts) in tls {
        h.update(name.as_bytes());
        h.update(format!("{facts:?}").as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_drops_the_oldest_entry_past_its_cap() {
        let mut b: Bounded<u32, u32> = Bounded::new(2);
        b.insert(1, 10);
        b.insert(2, 20);
        b.insert(1, 11);
        assert_eq!(b.len(), 2, "a key inserted again is not a new entry");
        b.insert(3, 30);
        assert_eq!(b.get(&1), None);
        assert_eq!(b.get(&2), Some(20));
        assert_eq!(b.get(&3), Some(30));
    }
}
