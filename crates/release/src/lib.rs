//! The release model, shared by the agent and the control plane so that both give
//! the same answer: the release calendar, the classification rules, and the offer
//! decision for a machine. Pure: no I/O, and no clock — callers pass "today".
//!
//! # Model
//!
//! A *target* is one ELF object, identified by its build-id. A *baseline* is a
//! release of a target installed on disk; a process only picks it up by
//! restarting. A *hotpatch* is a package of replacement functions for exactly one
//! baseline build-id, with a *level*: levels are cumulative, level n carries every
//! fix of levels 1..=n. Only [`Classification::Security`] and
//! [`Classification::Critical`] fixes may ship as hotpatches; everything else
//! needs a baseline.
//!
//! The [`ReleaseCalendar`] is the plan: a planned baseline on a cadence (default
//! January, April, July, October), hotpatch months between, and unplanned
//! baselines that replace a hotpatch month when a fix cannot wait or cannot be
//! hotpatched. Releases come out on the *patch day* (default: the second Tuesday).
//! A baseline is *covered* — hotpatches are offered for it — until the day before
//! the next baseline is released, plus a grace (default none) that only applies
//! when that next baseline is planned; see [`coverage::coverage_end`].
//!
//! The [`catalog`] is what actually shipped, with real dates; the offer is decided
//! from it.
//!
//! # Offer rules
//!
//! [`decide`] first checks the input (consistent catalog, the running baseline is
//! in it with the same id and date, product matches, applied level is not 0) and
//! refuses inconsistent input with an [`OfferError`]. Only catalog entries whose
//! release date is on or before "today" count. Then, first match wins:
//!
//! 1. **Missed a baseline.** Two or more baselines newer than the running one are
//!    out: offer the newest ("machine missed the last baseline").
//! 2. **One newer baseline is out.** It is offered ("… is out") when it is
//!    unplanned (immediately: hotpatching the old baseline cannot make it safe),
//!    when the machine is not entitled to hotpatches, or when the running
//!    baseline's coverage has ended. Otherwise the machine is in its grace and the
//!    rules below go on, with the coverage date added to the reason.
//! 3. **Not entitled.** Never a hotpatch: up to date, "not entitled to hotpatches".
//! 4. **Hotpatch.** Among released levels above the applied one, the highest
//!    level such that it and every pending level below it are hotpatchable.
//!    Its CVEs are those of all the levels it brings.
//! 5. **Fix needs a baseline.** The lowest pending level is not hotpatchable
//!    (e.g. classified non-security): offer the newer baseline if one is out,
//!    else up to date with the reason that the fix waits for the next baseline.
//! 6. **Nothing newer.** Up to date (an applied level at or above the highest
//!    released level is up to date too).
//!
//! # Example
//!
//! ```
//! use hotpatch_release::{Offer, OfferInput, ReleaseCalendar};
//!
//! let calendar = ReleaseCalendar::default();
//! let july = calendar.release_date("2027-07".parse()?);
//! assert_eq!(calendar.covered_until(july), Some(jiff::civil::date(2027, 10, 11)));
//!
//! let input: OfferInput = serde_json::from_str(r#"{
//!     "running": {"product": "openssl", "baseline": "2027.07",
//!                 "build_id": "aa07", "release_date": "2027-07-13"},
//!     "applied_level": null,
//!     "catalog": {
//!         "product": "openssl",
//!         "baselines": [{"id": "2027.07", "build_id": "aa07",
//!                        "release_date": "2027-07-13", "kind": {"kind": "planned"}}],
//!         "hotpatches": [{"baseline_build_id": "aa07", "patch_id": "openssl-2027.07-1",
//!                         "level": 1, "classification": "security",
//!                         "cves": ["CVE-2027-1234"], "release_date": "2027-08-10"}]
//!     },
//!     "entitled": true,
//!     "today": "2027-08-11"
//! }"#)?;
//! let offer = hotpatch_release::decide(&input)?;
//! assert!(matches!(offer, Offer::Hotpatch { level: 1, .. }));
//! assert_eq!(offer.reason(), "hotpatch level 1 fixes CVE-2027-1234 without a restart");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod calendar;
pub mod catalog;
pub mod classification;
pub mod coverage;
pub mod ids;
pub mod month;
pub mod offer;

pub use calendar::{
    CalendarConfig, CalendarError, MonthKind, PatchDay, ReleaseCalendar, ScheduledBaseline, UnplannedBaseline, Weekday,
};
pub use catalog::{BaselineKind, CatalogBaseline, CatalogError, CatalogHotpatch, ProductCatalog};
pub use classification::Classification;
pub use ids::{BaselineId, BuildId, CveId, IdError, PatchId, ProductName};
pub use month::{YearMonth, YearMonthError};
pub use offer::{Offer, OfferError, OfferInput, OfferKind, RunningBaseline, decide};
