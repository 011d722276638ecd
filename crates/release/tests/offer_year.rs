//! The offer, walked through a year month by month, one table per story. Each row
//! names the day, the machine's state, the expected kind of offer and a piece of
//! the reason.

use hotpatch_release::{
    BaselineKind, CatalogBaseline, CatalogError, CatalogHotpatch, Classification, Offer, OfferError, OfferInput,
    OfferKind, ProductCatalog, ReleaseCalendar, RunningBaseline, decide,
};
use jiff::ToSpan;
use jiff::civil::{Date, date};

fn baseline(id: &str, build: &str, released: Date) -> CatalogBaseline {
    CatalogBaseline {
        id: id.parse().unwrap(),
        build_id: build.parse().unwrap(),
        release_date: released,
        kind: BaselineKind::Planned,
    }
}

fn unplanned(id: &str, build: &str, released: Date, reason: &str) -> CatalogBaseline {
    CatalogBaseline { kind: BaselineKind::Unplanned { reason: reason.into() }, ..baseline(id, build, released) }
}

fn patch(build: &str, level: u32, class: Classification, cves: &[&str], released: Date) -> CatalogHotpatch {
    CatalogHotpatch {
        baseline_build_id: build.parse().unwrap(),
        patch_id: format!("openssl-{build}-L{level}").parse().unwrap(),
        level,
        classification: class,
        cves: cves.iter().map(|c| c.parse().unwrap()).collect(),
        release_date: released,
    }
}

/// The 2027 quarterly year on the default calendar (second Tuesdays): baselines in
/// April, July and October; hotpatches for July's in August and September.
fn year() -> ProductCatalog {
    ProductCatalog {
        product: "openssl".parse().unwrap(),
        baselines: vec![
            baseline("2027.04", "aa04", date(2027, 4, 13)),
            baseline("2027.07", "aa07", date(2027, 7, 13)),
            baseline("2027.10", "aa10", date(2027, 10, 12)),
        ],
        hotpatches: vec![
            patch("aa07", 1, Classification::Security, &["CVE-2027-1001"], date(2027, 8, 10)),
            patch("aa07", 2, Classification::Critical, &["CVE-2027-1002"], date(2027, 9, 14)),
        ],
    }
}

fn running(catalog: &ProductCatalog, id: &str) -> RunningBaseline {
    let b = catalog.baselines.iter().find(|b| b.id.as_str() == id).unwrap();
    RunningBaseline {
        product: catalog.product.clone(),
        baseline: b.id.clone(),
        build_id: b.build_id.clone(),
        release_date: b.release_date,
    }
}

struct Row {
    today: Date,
    on: &'static str,
    applied: Option<u32>,
    entitled: bool,
    grace: u16,
    want: OfferKind,
    reason: &'static str,
}

const fn row(today: Date, on: &'static str, applied: Option<u32>, want: OfferKind, reason: &'static str) -> Row {
    Row { today, on, applied, entitled: true, grace: 0, want, reason }
}

fn run(catalog: &ProductCatalog, rows: &[Row]) -> Vec<Offer> {
    rows.iter()
        .map(|r| {
            let input = OfferInput {
                running: running(catalog, r.on),
                applied_level: r.applied,
                catalog: catalog.clone(),
                entitled: r.entitled,
                today: r.today,
                grace_days: r.grace,
            };
            let offer = decide(&input).unwrap_or_else(|e| panic!("{} on {}: {e}", r.today, r.on));
            let at =
                format!("{} on {} applied {:?} entitled {} grace {}", r.today, r.on, r.applied, r.entitled, r.grace);
            assert_eq!(offer.kind(), r.want, "{at}: {offer:?}");
            assert!(offer.reason().contains(r.reason), "{at}: reason {:?} lacks {:?}", offer.reason(), r.reason);
            offer
        })
        .collect()
}

use OfferKind::{Baseline as B, Hotpatch as H, UpToDate as U};

#[test]
fn a_quarter_baseline_then_hotpatches_then_restart() {
    let cat = year();
    let offers = run(
        &cat,
        &[
            row(date(2027, 7, 13), "2027.04", None, B, "baseline 2027.07 is out"),
            row(date(2027, 7, 20), "2027.07", None, U, "nothing newer is released"),
            row(date(2027, 8, 9), "2027.07", None, U, "nothing newer"),
            row(date(2027, 8, 10), "2027.07", None, H, "hotpatch level 1 fixes CVE-2027-1001 without a restart"),
            row(date(2027, 8, 20), "2027.07", Some(1), U, "at hotpatch level 1"),
            row(date(2027, 9, 14), "2027.07", Some(1), H, "hotpatch level 2 fixes CVE-2027-1002"),
            row(date(2027, 9, 14), "2027.07", None, H, "fixes CVE-2027-1001, CVE-2027-1002"),
            row(date(2027, 10, 11), "2027.07", Some(2), U, "at hotpatch level 2"),
            row(date(2027, 10, 11), "2027.07", Some(1), H, "level 2"),
            row(date(2027, 10, 12), "2027.07", Some(2), B, "baseline 2027.10 is out"),
            row(date(2027, 10, 12), "2027.07", None, B, "baseline 2027.10 is out"),
            row(date(2027, 10, 12), "2027.10", None, U, "nothing newer"),
        ],
    );
    match &offers[5] {
        Offer::Hotpatch { level, patch_id, cves, .. } => {
            assert_eq!(*level, 2);
            assert_eq!(patch_id.as_str(), "openssl-aa07-L2");
            // Level 1 is applied: only what level 2 adds is news.
            assert_eq!(cves.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    match &offers[9] {
        Offer::Baseline { baseline, restart_required, .. } => {
            assert_eq!(baseline.as_str(), "2027.10");
            assert!(*restart_required);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn equal_or_higher_applied_level_is_up_to_date() {
    let cat = year();
    run(
        &cat,
        &[
            row(date(2027, 9, 20), "2027.07", Some(2), U, "up to date"),
            // A level above anything released (e.g. the catalog withdrew one).
            row(date(2027, 9, 20), "2027.07", Some(5), U, "at hotpatch level 5"),
        ],
    );
}

#[test]
fn a_machine_that_missed_a_baseline() {
    let cat = year();
    let offers = run(
        &cat,
        &[
            row(date(2027, 7, 20), "2027.04", None, B, "baseline 2027.07 is out"),
            row(date(2027, 10, 12), "2027.04", None, B, "machine missed the last baseline"),
            row(date(2027, 10, 12), "2027.04", None, B, "2 baselines behind"),
        ],
    );
    // The newest baseline is offered, not the one skipped.
    assert!(matches!(&offers[1], Offer::Baseline { baseline, .. } if baseline.as_str() == "2027.10"));
}

#[test]
fn an_unplanned_baseline_in_a_hotpatch_month() {
    let mut cat = year();
    cat.baselines.push(unplanned(
        "2027.08-zd",
        "ab08",
        date(2027, 8, 17),
        "zero-day CVE-2027-2000 in the record layer cannot be hotpatched",
    ));
    cat.hotpatches.push(patch("ab08", 1, Classification::Security, &["CVE-2027-2001"], date(2027, 9, 14)));
    let mut rows = vec![
        row(date(2027, 8, 16), "2027.07", None, H, "hotpatch level 1"),
        row(date(2027, 8, 17), "2027.07", Some(1), B, "unplanned baseline 2027.08-zd is out"),
        row(date(2027, 8, 17), "2027.07", None, B, "cannot be hotpatched"),
        // Hotpatches for the old baseline stop at once, even though level 2 is out.
        row(date(2027, 9, 14), "2027.07", Some(1), B, "unplanned baseline"),
        row(date(2027, 8, 20), "2027.08-zd", None, U, "nothing newer"),
        row(date(2027, 9, 14), "2027.08-zd", None, H, "fixes CVE-2027-2001"),
        row(date(2027, 10, 12), "2027.08-zd", Some(1), B, "baseline 2027.10 is out"),
        row(date(2027, 10, 12), "2027.07", Some(2), B, "missed the last baseline"),
    ];
    // A grace for planned baselines does not delay an unplanned one.
    rows.push(Row { grace: 14, ..row(date(2027, 8, 17), "2027.07", Some(1), B, "unplanned baseline") });
    run(&cat, &rows);
}

#[test]
fn a_non_security_fix_needs_a_baseline() {
    let mut cat = year();
    cat.hotpatches[1] = patch("aa07", 2, Classification::NonSecurity, &[], date(2027, 9, 14));
    cat.hotpatches.push(patch("aa07", 3, Classification::Security, &["CVE-2027-1003"], date(2027, 9, 21)));
    let grace = |r: Row| Row { grace: 7, ..r };
    run(
        &cat,
        &[
            row(date(2027, 9, 30), "2027.07", None, H, "level 2 is classified non-security and needs a baseline"),
            // Level 3 carries level 2's fix, so it cannot ship as a hotpatch either.
            row(date(2027, 9, 30), "2027.07", Some(1), U, "classified non-security"),
            row(date(2027, 9, 30), "2027.07", Some(1), U, "waits for the next baseline"),
            row(date(2027, 10, 12), "2027.07", Some(1), B, "baseline 2027.10 is out"),
            grace(row(
                date(2027, 10, 13),
                "2027.07",
                Some(1),
                B,
                "classified non-security and cannot ship as a hotpatch; install baseline 2027.10",
            )),
            // Not blocked once the machine is past the offending level.
            row(date(2027, 9, 30), "2027.07", Some(2), H, "hotpatch level 3"),
        ],
    );
}

#[test]
fn other_classes_than_security_and_critical_block_too() {
    for class in [Classification::Runtime, Classification::ThirdParty, Classification::FirmwareDriver] {
        let mut cat = year();
        cat.hotpatches[0].classification = class;
        let offer = decide(&OfferInput {
            running: running(&cat, "2027.07"),
            applied_level: None,
            catalog: cat.clone(),
            entitled: true,
            today: date(2027, 9, 20),
            grace_days: 0,
        })
        .unwrap();
        assert_eq!(offer.kind(), OfferKind::UpToDate, "{class}");
        assert!(offer.reason().contains(&format!("classified {class}")), "{offer:?}");
    }
}

#[test]
fn an_unentitled_machine_gets_baselines_only() {
    let unentitled = |r: Row| Row { entitled: false, ..r };
    let cat = year();
    run(
        &cat,
        &[
            unentitled(row(date(2027, 7, 20), "2027.07", None, U, "not entitled to hotpatches")),
            unentitled(row(date(2027, 8, 20), "2027.07", None, U, "not entitled to hotpatches: level 1")),
            unentitled(row(date(2027, 9, 20), "2027.07", Some(1), U, "not entitled")),
            unentitled(row(date(2027, 10, 12), "2027.07", None, B, "baseline 2027.10 is out")),
            // No grace without entitlement: the baseline is due the day it is out.
            Row { grace: 7, ..unentitled(row(date(2027, 10, 12), "2027.07", None, B, "not entitled")) },
        ],
    );
}

#[test]
fn a_grace_keeps_hotpatches_coming_after_a_planned_baseline() {
    let mut cat = year();
    cat.hotpatches.push(patch("aa07", 3, Classification::Security, &["CVE-2027-1003"], date(2027, 10, 14)));
    let grace = |r: Row| Row { grace: 7, ..r };
    run(
        &cat,
        &[
            grace(row(date(2027, 10, 12), "2027.07", Some(2), U, "covered until 2027-10-18")),
            grace(row(
                date(2027, 10, 15),
                "2027.07",
                Some(2),
                H,
                "hotpatch level 3 fixes CVE-2027-1003 without a restart; baseline 2027.10 is out",
            )),
            grace(row(date(2027, 10, 18), "2027.07", Some(3), U, "install it and restart before then")),
            grace(row(date(2027, 10, 19), "2027.07", Some(3), B, "covered until 2027-10-18")),
        ],
    );
}

/// The offer switches to the baseline exactly when the calendar says coverage
/// ends, for every day of the year, with and without a grace.
#[test]
fn offer_follows_the_calendar_coverage_day_by_day() {
    for grace_days in [0u16, 5] {
        let cal = ReleaseCalendar::new(hotpatch_release::CalendarConfig { grace_days, ..Default::default() }).unwrap();
        let months = ["2027-01", "2027-04", "2027-07", "2027-10", "2028-01"];
        let cat = ProductCatalog {
            product: "openssl".parse().unwrap(),
            baselines: months
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let id = m.replace('-', ".");
                    baseline(&id, &format!("b{i}b{i}"), cal.release_date(m.parse().unwrap()))
                })
                .collect(),
            hotpatches: vec![],
        };
        for (i, b) in cat.baselines.iter().enumerate().take(months.len() - 2) {
            let until = cal.covered_until(b.release_date).unwrap();
            let mut day = b.release_date;
            // Stop before the baseline after next, where "missed" takes over.
            while day < cat.baselines[i + 2].release_date {
                let offer = decide(&OfferInput {
                    running: running(&cat, b.id.as_str()),
                    applied_level: None,
                    catalog: cat.clone(),
                    entitled: true,
                    today: day,
                    grace_days,
                })
                .unwrap();
                let want = if day > until { B } else { U };
                assert_eq!(offer.kind(), want, "{} on {day}, covered until {until}", b.id);
                day = day.checked_add(1.day()).unwrap();
            }
        }
    }
}

#[test]
fn inconsistent_input_is_refused_naming_the_problem() {
    let cat = year();
    let good = OfferInput {
        running: running(&cat, "2027.07"),
        applied_level: None,
        catalog: cat.clone(),
        entitled: true,
        today: date(2027, 8, 20),
        grace_days: 0,
    };
    let err = |f: &dyn Fn(&mut OfferInput)| {
        let mut input = good.clone();
        f(&mut input);
        decide(&input).unwrap_err()
    };
    assert!(matches!(err(&|i| i.running.product = "zlib".parse().unwrap()), OfferError::ProductMismatch { .. }));
    assert!(matches!(err(&|i| i.running.build_id = "ffff".parse().unwrap()), OfferError::UnknownBaseline { .. }));
    assert!(matches!(err(&|i| i.running.baseline = "2027.08".parse().unwrap()), OfferError::BaselineMismatch { .. }));
    assert!(matches!(err(&|i| i.running.release_date = date(2027, 7, 14)), OfferError::ReleaseDateMismatch { .. }));
    assert_eq!(err(&|i| i.applied_level = Some(0)), OfferError::AppliedLevelZero);
    assert_eq!(err(&|i| i.grace_days = 32), OfferError::GraceTooLong(32));
    assert!(matches!(
        err(&|i| i.catalog.hotpatches[1].level = 1),
        OfferError::Catalog(CatalogError::DuplicateLevel { level: 1, .. })
    ));
    assert!(matches!(
        err(&|i| i.catalog.hotpatches[1].patch_id = "openssl-aa07-L1".parse().unwrap()),
        OfferError::Catalog(CatalogError::DuplicatePatchId(_))
    ));
    assert!(matches!(err(&|i| i.catalog.hotpatches[0].level = 0), OfferError::Catalog(CatalogError::LevelZero(_))));
    assert!(matches!(
        err(&|i| i.catalog.hotpatches[0].baseline_build_id = "cccc".parse().unwrap()),
        OfferError::Catalog(CatalogError::UnknownBaseline { .. })
    ));
    assert!(matches!(
        err(&|i| i.catalog.baselines[2].release_date = date(2027, 7, 13)),
        OfferError::Catalog(CatalogError::SameReleaseDate { .. })
    ));
    assert!(matches!(
        err(&|i| i.catalog.baselines[2].build_id = "aa07".parse().unwrap()),
        OfferError::Catalog(CatalogError::DuplicateBuildId { .. })
    ));
    assert!(matches!(
        err(&|i| i.catalog.baselines[2].id = "2027.07".parse().unwrap()),
        OfferError::Catalog(CatalogError::DuplicateBaselineId(_))
    ));
    assert!(matches!(
        err(&|i| i.catalog.baselines[2].kind = BaselineKind::Unplanned { reason: " ".into() }),
        OfferError::Catalog(CatalogError::EmptyUnplannedReason(_))
    ));
    let msg = err(&|i| i.running.build_id = "ffff".parse().unwrap()).to_string();
    assert!(msg.contains("2027.07") && msg.contains("ffff"), "{msg}");
}

#[test]
fn json_shapes_for_the_server() {
    let cat = year();
    let input = OfferInput {
        running: running(&cat, "2027.07"),
        applied_level: None,
        catalog: cat,
        entitled: true,
        today: date(2027, 8, 20),
        grace_days: 0,
    };
    let text = serde_json::to_string(&input).unwrap();
    let back: OfferInput = serde_json::from_str(&text).unwrap();
    assert_eq!(back, input);

    let offer = decide(&back).unwrap();
    let value = serde_json::to_value(&offer).unwrap();
    assert_eq!(value["kind"], "hotpatch");
    assert_eq!(value["level"], 1);
    assert_eq!(value["patch_id"], "openssl-aa07-L1");
    assert_eq!(value["cves"], serde_json::json!(["CVE-2027-1001"]));
    let again: Offer = serde_json::from_value(value).unwrap();
    assert_eq!(again, offer);

    let bad = text.replace("\"aa07\"", "\"not-hex\"");
    let err = serde_json::from_str::<OfferInput>(&bad).unwrap_err().to_string();
    assert!(err.contains("build-id"), "{err}");
    let bad = text.replace("\"2027-08-20\"", "\"2027-02-30\"");
    assert!(serde_json::from_str::<OfferInput>(&bad).is_err());
}
