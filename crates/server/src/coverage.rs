//! How long a baseline stays covered by hotpatches: until the next baseline of
//! its product is out plus a grace period in which machines install it and
//! restart. When no later baseline is registered yet, the next planned one is
//! projected from the quarterly cadence (January, April, July, October).

use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::api::catalog::Baseline;

/// Days after the next baseline during which the previous one still gets hotpatches.
pub const GRACE_DAYS: i64 = 14;
pub const BASELINE_MONTHS: [i8; 4] = [1, 4, 7, 10];

pub struct Coverage {
    pub date: String,
    pub advice: String,
    pub expired: bool,
}

fn date_of(unix: i64) -> Option<Date> {
    let ts = jiff::Timestamp::from_second(unix).ok()?;
    Some(ts.to_zoned(TimeZone::UTC).date())
}

/// The first day of the next planned baseline month strictly after `after`.
pub fn next_planned_baseline(after: Date) -> Option<Date> {
    let mut year = after.year();
    let mut month = after.month();
    for _ in 0..13 {
        month += 1;
        if month > 12 {
            month = 1;
            year += 1;
        }
        if BASELINE_MONTHS.contains(&month) {
            return Date::new(year, month, 1).ok();
        }
    }
    None
}

pub fn covered_until(b: &Baseline, all: &[Baseline], now: i64) -> Option<Coverage> {
    let released = date_of(b.released)?;
    let successor = all
        .iter()
        .filter(|o| o.product == b.product && o.released > b.released)
        .min_by_key(|o| o.released);
    let (next_date, next_name) = match successor {
        Some(o) => (date_of(o.released)?, format!("baseline {}", o.name)),
        None => {
            let d = next_planned_baseline(released)?;
            (
                d,
                format!("the next planned baseline ({})", d.strftime("%Y.%m")),
            )
        }
    };
    let until = next_date
        .checked_add(jiff::Span::new().days(GRACE_DAYS))
        .ok()?;
    let expired = date_of(now).is_some_and(|today| today > until);
    let date = until.to_string();
    let advice = if expired {
        format!("coverage ended {date}: install {next_name} and restart")
    } else {
        format!("covered until {date}: install {next_name} and restart before then")
    };
    Some(Coverage {
        date,
        advice,
        expired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(name: &str, released: &str) -> Baseline {
        Baseline {
            id: name.into(),
            name: name.into(),
            product: "p".into(),
            released: crate::util::parse_time(released).unwrap_or_default(),
            planned: true,
            reason: String::new(),
            targets: vec![],
        }
    }

    #[test]
    fn projected_from_the_cadence_when_no_successor() {
        let b = baseline("2027.01", "2027-01-05T00:00:00Z");
        let c = covered_until(&b, std::slice::from_ref(&b), 0).map(|c| c.date);
        assert_eq!(c.as_deref(), Some("2027-04-15"));
    }

    #[test]
    fn successor_release_date_wins() {
        let a = baseline("2027.01", "2027-01-05T00:00:00Z");
        let z = baseline("2027.03-zero-day", "2027-03-10T00:00:00Z");
        let all = [a.clone(), z];
        let c = covered_until(&a, &all, 0).map(|c| (c.date, c.advice));
        assert_eq!(
            c,
            Some(("2027-03-24".into(), "covered until 2027-03-24: install baseline 2027.03-zero-day and restart before then".into()))
        );
    }

    #[test]
    fn october_rolls_into_next_year() {
        let d = Date::new(2027, 10, 20).ok().and_then(next_planned_baseline);
        assert_eq!(d, Date::new(2028, 1, 1).ok());
    }
}
