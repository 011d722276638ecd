//! Invariants of the offer and the calendar over generated catalogs and calendars.

use hotpatch_release::{
    BaselineKind, CalendarConfig, CalendarError, CatalogBaseline, CatalogHotpatch, Classification, MonthKind, Offer,
    OfferInput, PatchDay, ProductCatalog, ReleaseCalendar, RunningBaseline, UnplannedBaseline, Weekday, YearMonth,
    decide,
};
use jiff::ToSpan;
use jiff::civil::{Date, date};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeSet;

const START: Date = date(2027, 1, 1);

fn day(offset: i64) -> Date {
    START.checked_add(offset.days()).unwrap()
}

type RawBaseline = (i64, bool);
type RawPatch = (usize, u32, usize, i64, u8);

fn class(i: usize) -> Classification {
    // Weighted towards security so that long hotpatchable runs are common.
    Classification::ALL.get(i).copied().unwrap_or(Classification::Security)
}

fn catalog(raw_baselines: &[RawBaseline], raw_patches: &[RawPatch]) -> ProductCatalog {
    let mut offset = 0;
    let baselines: Vec<CatalogBaseline> = raw_baselines
        .iter()
        .enumerate()
        .map(|(i, &(gap, unplanned))| {
            offset += gap;
            CatalogBaseline {
                id: format!("b{i}").parse().unwrap(),
                build_id: format!("{i:02x}{i:02x}").parse().unwrap(),
                release_date: day(offset),
                kind: if unplanned && i > 0 {
                    BaselineKind::Unplanned { reason: "cannot be hotpatched".into() }
                } else {
                    BaselineKind::Planned
                },
            }
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut hotpatches = Vec::new();
    for &(b, level, c, after, cve) in raw_patches {
        let b = b % baselines.len();
        if !seen.insert((b, level)) {
            continue;
        }
        let base = &baselines[b];
        hotpatches.push(CatalogHotpatch {
            baseline_build_id: base.build_id.clone(),
            patch_id: format!("p{b}-{level}").parse().unwrap(),
            level,
            classification: class(c),
            cves: (0..cve).map(|k| format!("CVE-2027-{b}{level}{k:02}0").parse().unwrap()).collect(),
            release_date: base.release_date.checked_add(after.days()).unwrap(),
        });
    }
    ProductCatalog { product: "openssl".parse().unwrap(), baselines, hotpatches }
}

prop_compose! {
    fn offer_input()(
        raw_baselines in prop::collection::vec((20i64..200, any::<bool>()), 1..=4),
        raw_patches in prop::collection::vec((0usize..4, 1u32..=8, 0usize..10, 0i64..150, 0u8..3), 0..14),
        on in any::<Index>(),
        applied in prop::option::of(1u32..=8),
        entitled in any::<bool>(),
        today in 0i64..900,
        grace_days in 0u16..=31,
    ) -> OfferInput {
        let catalog = catalog(&raw_baselines, &raw_patches);
        let b = on.get(&catalog.baselines);
        OfferInput {
            running: RunningBaseline {
                product: catalog.product.clone(),
                baseline: b.id.clone(),
                build_id: b.build_id.clone(),
                release_date: b.release_date,
            },
            applied_level: applied,
            catalog,
            entitled,
            today: day(today),
            grace_days,
        }
    }
}

/// Released levels above the applied one for the running baseline, ascending.
fn pending(input: &OfferInput) -> Vec<&CatalogHotpatch> {
    let applied = input.applied_level.unwrap_or(0);
    let mut p: Vec<_> = input
        .catalog
        .hotpatches
        .iter()
        .filter(|h| h.baseline_build_id == input.running.build_id)
        .filter(|h| h.level > applied && h.release_date <= input.today)
        .collect();
    p.sort_by_key(|h| h.level);
    p
}

fn newer_released(input: &OfferInput) -> Vec<&CatalogBaseline> {
    let mut n: Vec<_> = input
        .catalog
        .baselines
        .iter()
        .filter(|b| b.release_date > input.running.release_date && b.release_date <= input.today)
        .collect();
    n.sort_by_key(|b| b.release_date);
    n
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_hotpatch_without_entitlement(mut input in offer_input()) {
        input.entitled = false;
        let offer = decide(&input).unwrap();
        prop_assert!(!matches!(offer, Offer::Hotpatch { .. }), "{offer:?}");
    }

    #[test]
    fn a_hotpatch_is_the_highest_deliverable_level(input in offer_input()) {
        let offer = decide(&input).unwrap();
        if let Offer::Hotpatch { level, patch_id, cves, .. } = &offer {
            let applied = input.applied_level.unwrap_or(0);
            prop_assert!(*level > applied);
            prop_assert!(input.entitled);
            let pending = pending(&input);
            let upto: Vec<_> = pending.iter().take_while(|h| h.level <= *level).collect();
            prop_assert_eq!(upto.last().map(|h| &h.patch_id), Some(patch_id));
            prop_assert!(upto.iter().all(|h| h.classification.hotpatchable()));
            // Maximal: the next released level, if any, is not deliverable.
            if let Some(next) = pending.iter().find(|h| h.level > *level) {
                prop_assert!(!next.classification.hotpatchable());
            }
            let want: BTreeSet<_> = upto.iter().flat_map(|h| h.cves.iter().cloned()).collect();
            prop_assert_eq!(cves.iter().cloned().collect::<BTreeSet<_>>(), want);
            // Never over an unplanned successor or two baselines behind.
            let newer = newer_released(&input);
            prop_assert!(newer.len() <= 1);
            prop_assert!(newer.iter().all(|b| b.kind == BaselineKind::Planned));
        }
    }

    #[test]
    fn a_baseline_offer_is_the_newest_released(input in offer_input()) {
        let offer = decide(&input).unwrap();
        if let Offer::Baseline { baseline, restart_required, .. } = &offer {
            prop_assert!(*restart_required);
            let newer = newer_released(&input);
            let newest = newer.last().map(|b| &b.id);
            // A newer baseline is offered only once it is out, and it is the newest.
            prop_assert_eq!(newest, Some(baseline));
        }
    }

    #[test]
    fn up_to_date_only_when_nothing_deliverable(input in offer_input()) {
        let offer = decide(&input).unwrap();
        if matches!(offer, Offer::UpToDate { .. }) && input.entitled {
            prop_assert!(newer_released(&input).len() <= 1);
            if let Some(first) = pending(&input).first() {
                prop_assert!(!first.classification.hotpatchable(), "{offer:?}");
            }
        }
    }

    #[test]
    fn nothing_newer_means_up_to_date(mut input in offer_input()) {
        let running = input.running.clone();
        input.catalog.baselines.retain(|b| b.release_date <= running.release_date);
        let kept: BTreeSet<_> = input.catalog.baselines.iter().map(|b| b.build_id.clone()).collect();
        input
            .catalog
            .hotpatches
            .retain(|h| h.baseline_build_id != running.build_id && kept.contains(&h.baseline_build_id));
        let offer = decide(&input).unwrap();
        prop_assert!(matches!(offer, Offer::UpToDate { .. }), "{offer:?}");
    }

    #[test]
    fn entries_not_yet_released_change_nothing(input in offer_input()) {
        let before = decide(&input).unwrap();
        let mut later = input.clone();
        let tomorrow = input.today.tomorrow().unwrap();
        later.catalog.baselines.push(CatalogBaseline {
            id: "future".parse().unwrap(),
            build_id: "ffff".parse().unwrap(),
            release_date: tomorrow,
            kind: BaselineKind::Unplanned { reason: "scheduled".into() },
        });
        later.catalog.hotpatches.push(CatalogHotpatch {
            baseline_build_id: input.running.build_id.clone(),
            patch_id: "future-99".parse().unwrap(),
            level: 99,
            classification: Classification::NonSecurity,
            cves: vec![],
            release_date: tomorrow,
        });
        prop_assume!(later.catalog.validate().is_ok());
        prop_assert_eq!(decide(&later).unwrap(), before);
    }

    #[test]
    fn json_round_trip_gives_the_same_offer(input in offer_input()) {
        let text = serde_json::to_string(&input).unwrap();
        let back: OfferInput = serde_json::from_str(&text).unwrap();
        let offer = decide(&input).unwrap();
        prop_assert_eq!(decide(&back).unwrap(), offer.clone());
        let offer_back: Offer = serde_json::from_str(&serde_json::to_string(&offer).unwrap()).unwrap();
        prop_assert_eq!(offer_back, offer);
    }
}

fn weekday(i: u8) -> Weekday {
    [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
        Weekday::Sunday,
    ][usize::from(i % 7)]
}

prop_compose! {
    fn calendar()(
        months in prop::collection::btree_set(1u8..=12, 1..=12),
        unplanned in prop::collection::btree_set((2026i16..=2029, 1u8..=12), 0..6),
        rule in 0u8..3,
        nth in 1u8..=4,
        wd in 0u8..7,
        dom in 1u8..=28,
        grace_days in 0u16..=31,
    ) -> ReleaseCalendar {
        let patch_day = match rule {
            0 => PatchDay::NthWeekday { nth, weekday: weekday(wd) },
            1 => PatchDay::LastWeekday { weekday: weekday(wd) },
            _ => PatchDay::DayOfMonth { day: dom },
        };
        let unplanned = unplanned
            .into_iter()
            .filter(|(_, m)| !months.contains(m))
            .map(|(y, m)| UnplannedBaseline {
                month: YearMonth::new(y, m).unwrap(),
                reason: format!("zero-day {y}-{m}"),
            })
            .collect();
        ReleaseCalendar::new(CalendarConfig {
            baseline_months: months.into_iter().rev().collect(),
            unplanned,
            patch_day,
            grace_days,
        })
        .unwrap()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn months_classify_consistently(cal in calendar()) {
        for year in 2026..=2029 {
            for m in 1..=12u8 {
                let month = YearMonth::new(year, m).unwrap();
                let kind = cal.month_kind(month);
                let unplanned = cal.unplanned().iter().any(|u| u.month == month);
                let planned = cal.baseline_months().contains(&m);
                prop_assert!(!(planned && unplanned));
                match kind {
                    MonthKind::PlannedBaseline => prop_assert!(planned),
                    MonthKind::UnplannedBaseline { .. } => prop_assert!(unplanned),
                    MonthKind::HotpatchMonth => prop_assert!(!planned && !unplanned),
                }
                let released = cal.release_date(month);
                prop_assert_eq!(YearMonth::of(released), Some(month));
            }
        }
    }

    #[test]
    fn next_baseline_is_the_first_one_after(cal in calendar(), offset in 0i64..1400) {
        let d = date(2026, 1, 1).checked_add(offset.days()).unwrap();
        let next = cal.next_baseline_after(d).unwrap();
        prop_assert!(next.release_date > d);
        prop_assert!(next.kind.is_baseline());
        prop_assert_eq!(cal.month_kind(next.month), next.kind.clone());
        prop_assert_eq!(cal.release_date(next.month), next.release_date);
        let mut m = YearMonth::of(d).unwrap();
        while m < next.month {
            prop_assert!(!(cal.month_kind(m).is_baseline() && cal.release_date(m) > d), "{m} skipped");
            m = m.next().unwrap();
        }
        let until = cal.covered_until(d).unwrap();
        let day_before = next.release_date.yesterday().unwrap();
        prop_assert!(until >= d);
        if matches!(next.kind, MonthKind::UnplannedBaseline { .. }) {
            prop_assert_eq!(until, day_before);
        } else {
            prop_assert_eq!(until, day_before.checked_add(i64::from(cal.grace_days()).days()).unwrap());
        }
    }

    #[test]
    fn out_of_range_months_are_refused(bad in prop_oneof![Just(0u8), 13u8..=255]) {
        let err = ReleaseCalendar::new(CalendarConfig {
            baseline_months: vec![1, bad],
            ..CalendarConfig::default()
        })
        .unwrap_err();
        prop_assert_eq!(err, CalendarError::BaselineMonthOutOfRange(bad));
    }
}
