//! The release calendar: month kinds, patch days, next baselines, coverage, and
//! refusal of bad configuration.

use hotpatch_release::{
    CalendarConfig, CalendarError, MonthKind, PatchDay, ReleaseCalendar, UnplannedBaseline, Weekday, YearMonth,
};
use jiff::civil::{Date, date};

fn ym(s: &str) -> YearMonth {
    s.parse().unwrap()
}

fn zero_day_in_may() -> ReleaseCalendar {
    ReleaseCalendar::default().with_unplanned(ym("2027-05"), "zero-day in the record layer").unwrap()
}

#[test]
fn default_calendar_is_quarterly() {
    let cal = ReleaseCalendar::default();
    assert_eq!(cal.baseline_months(), &[1, 4, 7, 10]);
    let kinds: Vec<bool> = (1..=12).map(|m| cal.month_kind(YearMonth::new(2027, m).unwrap()).is_baseline()).collect();
    assert_eq!(kinds, [true, false, false, true, false, false, true, false, false, true, false, false]);
    assert_eq!(cal.month_kind(ym("2027-08")), MonthKind::HotpatchMonth);
    assert_eq!(cal.month_kind(ym("2027-10")), MonthKind::PlannedBaseline);
}

#[test]
fn default_patch_day_is_the_second_tuesday() {
    let cal = ReleaseCalendar::default();
    let table = [
        ("2027-01", date(2027, 1, 12)),
        ("2027-04", date(2027, 4, 13)),
        ("2027-07", date(2027, 7, 13)),
        ("2027-08", date(2027, 8, 10)),
        ("2027-09", date(2027, 9, 14)),
        ("2027-10", date(2027, 10, 12)),
        ("2028-01", date(2028, 1, 11)),
    ];
    for (month, want) in table {
        let got = cal.release_date(ym(month));
        assert_eq!(got, want, "{month}");
        assert_eq!(got.weekday(), jiff::civil::Weekday::Tuesday);
        // Second Tuesday: exactly one Tuesday before it in the month.
        assert!((8..=14).contains(&got.day()), "{month}: {got}");
    }
}

#[test]
fn other_patch_day_rules() {
    let last_friday = ReleaseCalendar::new(CalendarConfig {
        patch_day: PatchDay::LastWeekday { weekday: Weekday::Friday },
        ..CalendarConfig::default()
    })
    .unwrap();
    assert_eq!(last_friday.release_date(ym("2027-02")), date(2027, 2, 26));
    let fifteenth = ReleaseCalendar::new(CalendarConfig {
        patch_day: PatchDay::DayOfMonth { day: 15 },
        ..CalendarConfig::default()
    })
    .unwrap();
    assert_eq!(fifteenth.release_date(ym("2027-11")), date(2027, 11, 15));
}

#[test]
fn unplanned_baseline_replaces_a_hotpatch_month() {
    let cal = zero_day_in_may();
    assert_eq!(
        cal.month_kind(ym("2027-05")),
        MonthKind::UnplannedBaseline { reason: "zero-day in the record layer".into() }
    );
    // Only that one May: the cadence is unchanged elsewhere.
    assert_eq!(cal.month_kind(ym("2028-05")), MonthKind::HotpatchMonth);
    assert_eq!(cal.month_kind(ym("2027-06")), MonthKind::HotpatchMonth);
}

#[test]
fn next_baseline_is_strictly_after_the_date() {
    let cal = zero_day_in_may();
    let next = |d: Date| cal.next_baseline_after(d).unwrap();
    assert_eq!(next(date(2027, 4, 12)).month, ym("2027-04"));
    // On the release day itself, that baseline is no longer "next".
    let after_april = next(date(2027, 4, 13));
    assert_eq!(after_april.month, ym("2027-05"));
    assert_eq!(after_april.release_date, date(2027, 5, 11));
    assert!(matches!(after_april.kind, MonthKind::UnplannedBaseline { .. }));
    assert_eq!(next(date(2027, 5, 11)).month, ym("2027-07"));
    let over_new_year = next(date(2027, 10, 12));
    assert_eq!(over_new_year.month, ym("2028-01"));
    assert_eq!(over_new_year.kind, MonthKind::PlannedBaseline);

    let yearly =
        ReleaseCalendar::new(CalendarConfig { baseline_months: vec![6], ..CalendarConfig::default() }).unwrap();
    assert_eq!(yearly.next_baseline_after(date(2027, 6, 30)).unwrap().month, ym("2028-06"));
    assert_eq!(yearly.next_baseline_after(date(9998, 6, 30)), None);
}

#[test]
fn coverage_ends_the_day_before_the_next_baseline() {
    let cal = ReleaseCalendar::default();
    assert_eq!(cal.covered_until(date(2027, 1, 12)), Some(date(2027, 4, 12)));
    assert_eq!(cal.covered_until(date(2027, 7, 13)), Some(date(2027, 10, 11)));
    assert_eq!(cal.covered_until(date(2027, 10, 12)), Some(date(2028, 1, 10)));

    let zd = zero_day_in_may();
    assert_eq!(zd.covered_until(date(2027, 1, 12)), Some(date(2027, 4, 12)));
    assert_eq!(zd.covered_until(date(2027, 4, 13)), Some(date(2027, 5, 10)));
}

#[test]
fn grace_extends_coverage_only_before_a_planned_baseline() {
    let cal = ReleaseCalendar::new(CalendarConfig { grace_days: 7, ..CalendarConfig::default() })
        .unwrap()
        .with_unplanned(ym("2027-05"), "zero-day")
        .unwrap();
    assert_eq!(cal.covered_until(date(2027, 1, 12)), Some(date(2027, 4, 19)));
    assert_eq!(cal.covered_until(date(2027, 4, 13)), Some(date(2027, 5, 10)));
    assert_eq!(cal.covered_until(date(2027, 5, 11)), Some(date(2027, 7, 19)));
}

#[test]
fn bad_configuration_is_refused_with_what_was_wrong() {
    let with = |f: fn(&mut CalendarConfig)| {
        let mut c = CalendarConfig::default();
        f(&mut c);
        ReleaseCalendar::new(c).unwrap_err()
    };
    let unplanned = |month: &str, reason: &str| UnplannedBaseline { month: ym(month), reason: reason.into() };
    assert_eq!(with(|c| c.baseline_months.clear()), CalendarError::NoBaselineMonths);
    assert_eq!(with(|c| c.baseline_months.push(13)), CalendarError::BaselineMonthOutOfRange(13));
    assert_eq!(with(|c| c.baseline_months = vec![0]), CalendarError::BaselineMonthOutOfRange(0));
    assert_eq!(with(|c| c.baseline_months = vec![4, 1, 4]), CalendarError::DuplicateBaselineMonth(4));
    assert_eq!(
        with(|c| c.patch_day = PatchDay::NthWeekday { nth: 5, weekday: Weekday::Monday }),
        CalendarError::PatchDayNth(5)
    );
    assert_eq!(with(|c| c.patch_day = PatchDay::DayOfMonth { day: 29 }), CalendarError::PatchDayOfMonth(29));
    assert_eq!(with(|c| c.grace_days = 40), CalendarError::GraceTooLong(40));

    let cal = ReleaseCalendar::default();
    assert_eq!(
        cal.with_unplanned(ym("2027-04"), "x").unwrap_err(),
        CalendarError::UnplannedInBaselineMonth(ym("2027-04"))
    );
    assert_eq!(
        cal.with_unplanned(ym("2027-05"), "  ").unwrap_err(),
        CalendarError::EmptyUnplannedReason(ym("2027-05"))
    );
    let c = CalendarConfig {
        unplanned: vec![unplanned("2027-05", "a"), unplanned("2027-05", "b")],
        ..CalendarConfig::default()
    };
    assert_eq!(ReleaseCalendar::new(c).unwrap_err(), CalendarError::DuplicateUnplanned(ym("2027-05")));
    let err = CalendarError::BaselineMonthOutOfRange(13).to_string();
    assert!(err.contains("13") && err.contains("1..=12"), "{err}");
}

#[test]
fn json_form_is_checked_and_round_trips() {
    let cal: ReleaseCalendar = serde_json::from_str("{}").unwrap();
    assert_eq!(cal, ReleaseCalendar::default());

    let text = r#"{
        "baseline_months": [10, 4],
        "unplanned": [{"month": "2027-05", "reason": "zero-day"}],
        "patch_day": {"rule": "nth-weekday", "nth": 1, "weekday": "wednesday"},
        "grace_days": 3
    }"#;
    let cal: ReleaseCalendar = serde_json::from_str(text).unwrap();
    assert_eq!(cal.baseline_months(), &[4, 10]);
    assert_eq!(cal.release_date(ym("2027-04")), date(2027, 4, 7));
    let again: ReleaseCalendar = serde_json::from_str(&serde_json::to_string(&cal).unwrap()).unwrap();
    assert_eq!(again, cal);

    let err = serde_json::from_str::<ReleaseCalendar>(r#"{"baseline_months": [1, 1]}"#).unwrap_err().to_string();
    assert!(err.contains("baseline month 1 is listed twice"), "{err}");
    let err = serde_json::from_str::<ReleaseCalendar>(r#"{"unplanned": [{"month": "2027-5", "reason": "x"}]}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("YYYY-MM"), "{err}");

    let kind = serde_json::to_value(MonthKind::UnplannedBaseline { reason: "zero-day".into() }).unwrap();
    assert_eq!(kind, serde_json::json!({"kind": "unplanned-baseline", "reason": "zero-day"}));
}
