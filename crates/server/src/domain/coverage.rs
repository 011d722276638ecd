//! How long a baseline stays covered by hotpatches, by the rule of
//! `hotpatch_release` so that server and agent agree: until the day before the
//! next baseline of its product is released (plus the calendar's grace when that
//! successor is planned). When no later baseline is registered yet, the next one
//! is taken from the organisation's release calendar (default: quarterly,
//! second Tuesday).

use hotpatch_release::ReleaseCalendar;
use hotpatch_release::coverage::coverage_end;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::catalog::Baseline;

pub struct Coverage {
    pub date: String,
    pub advice: String,
    pub expired: bool,
}

pub fn date_of(unix: i64) -> Option<Date> {
    let ts = jiff::Timestamp::from_second(unix).ok()?;
    Some(ts.to_zoned(TimeZone::UTC).date())
}

pub fn covered_until(b: &Baseline, all: &[Baseline], now: i64, calendar: &ReleaseCalendar) -> Option<Coverage> {
    let released = date_of(b.released)?;
    let successor = all.iter().filter(|o| o.product == b.product && o.released > b.released).min_by_key(|o| o.released);
    let (until, next_name) = match successor {
        Some(o) => {
            (coverage_end(date_of(o.released)?, !o.planned, calendar.grace_days())?, format!("baseline {}", o.name))
        }
        None => {
            let next = calendar.next_baseline_after(released)?;
            (
                calendar.covered_until(released)?,
                format!("the next baseline ({}, due {})", next.month, next.release_date),
            )
        }
    };
    let expired = date_of(now).is_some_and(|today| today > until);
    let date = until.to_string();
    let advice = if expired {
        format!("coverage ended {date}: install {next_name} and restart")
    } else {
        format!("covered until {date}: install {next_name} and restart before then")
    };
    Some(Coverage { date, advice, expired })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(name: &str, released: &str, planned: bool) -> Baseline {
        Baseline {
            id: name.into(),
            name: name.into(),
            product: "p".into(),
            released: crate::util::parse_time(released).unwrap_or_default(),
            planned,
            reason: String::new(),
            targets: vec![],
        }
    }

    #[test]
    fn projected_from_the_calendar_when_no_successor() {
        // The April 2027 baseline comes out on the second Tuesday, 13 April.
        let b = baseline("2027.01", "2027-01-12T00:00:00Z", true);
        let c = covered_until(&b, std::slice::from_ref(&b), 0, &ReleaseCalendar::default()).map(|c| (c.date, c.advice));
        assert_eq!(
            c,
            Some((
                "2027-04-12".into(),
                "covered until 2027-04-12: install the next baseline (2027-04, due 2027-04-13) and restart before then"
                    .into()
            ))
        );
    }

    #[test]
    fn a_registered_unplanned_successor_ends_coverage_the_day_before() {
        let a = baseline("2027.01", "2027-01-12T00:00:00Z", true);
        let z = baseline("2027.03-zero-day", "2027-03-10T00:00:00Z", false);
        let all = [a.clone(), z];
        let c = covered_until(&a, &all, 0, &ReleaseCalendar::default()).map(|c| c.date);
        assert_eq!(c.as_deref(), Some("2027-03-09"));
    }

    #[test]
    fn expired_coverage_says_so() {
        let a = baseline("2027.01", "2027-01-12T00:00:00Z", true);
        let later = crate::util::parse_time("2027-05-01T00:00:00Z").unwrap_or_default();
        let c = covered_until(&a, std::slice::from_ref(&a), later, &ReleaseCalendar::default());
        assert!(c.is_some_and(|c| c.expired && c.advice.starts_with("coverage ended 2027-04-12")));
    }
}
