//! Recurring maintenance windows: on given weekdays, from a local start time, for
//! a duration, in an IANA time zone (so a window follows daylight-saving shifts).

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone)]
pub struct Window {
    pub days: Vec<Weekday>,
    pub start_minute: i64,
    pub duration_minutes: i64,
    pub time_zone: String,
}

pub fn parse_day(text: &str) -> Option<Weekday> {
    Some(match text.to_ascii_lowercase().get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    })
}

pub fn day_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Monday => "mon",
        Weekday::Tuesday => "tue",
        Weekday::Wednesday => "wed",
        Weekday::Thursday => "thu",
        Weekday::Friday => "fri",
        Weekday::Saturday => "sat",
        Weekday::Sunday => "sun",
    }
}

/// "HH:MM" to minutes after midnight.
pub fn parse_start(text: &str) -> Option<i64> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m) && text.len() == 5).then_some(h * 60 + m)
}

impl Window {
    /// The occurrence that is open at `now`, or else the next one, as unix seconds.
    pub fn current_or_next(&self, now: i64) -> Option<(i64, i64)> {
        let tz = TimeZone::get(&self.time_zone).ok()?;
        let now_ts = Timestamp::from_second(now).ok()?;
        let today = now_ts.to_zoned(tz.clone()).date();
        // A window may last up to a week, so one that opened up to 7 days ago can still be open.
        for offset in -7i64..=7 {
            let date = today.checked_add(offset.days()).ok()?;
            if !self.days.contains(&date.weekday()) {
                continue;
            }
            let hour = i8::try_from(self.start_minute / 60).ok()?;
            let minute = i8::try_from(self.start_minute % 60).ok()?;
            let start = date.at(hour, minute, 0, 0).to_zoned(tz.clone()).ok()?.timestamp().as_second();
            let end = start + self.duration_minutes * 60;
            if end > now {
                return Some((start, end));
            }
        }
        None
    }

    /// The latest occurrence that has ended by `now`, as unix seconds.
    pub fn previous(&self, now: i64) -> Option<(i64, i64)> {
        let tz = TimeZone::get(&self.time_zone).ok()?;
        let today = Timestamp::from_second(now).ok()?.to_zoned(tz.clone()).date();
        let hour = i8::try_from(self.start_minute / 60).ok()?;
        let minute = i8::try_from(self.start_minute % 60).ok()?;
        // A window lasts at most a week, so one that ended opened within 14 days.
        (-14i64..=0)
            .rev()
            .filter_map(|offset| {
                let date = today.checked_add(offset.days()).ok()?;
                if !self.days.contains(&date.weekday()) {
                    return None;
                }
                let start = date.at(hour, minute, 0, 0).to_zoned(tz.clone()).ok()?.timestamp().as_second();
                Some((start, start + self.duration_minutes * 60))
            })
            .filter(|(_, end)| *end <= now)
            .max_by_key(|(_, end)| *end)
    }

    pub fn is_open(&self, now: i64) -> bool {
        self.current_or_next(now).is_some_and(|(start, _)| start <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        crate::util::parse_time(text).unwrap_or_default()
    }

    fn saturday_night_berlin() -> Window {
        Window {
            days: vec![Weekday::Saturday],
            start_minute: 23 * 60,
            duration_minutes: 180,
            time_zone: "Europe/Berlin".into(),
        }
    }

    #[test]
    fn open_inside_and_across_midnight() {
        let w = saturday_night_berlin();
        // 2027-06-05 is a Saturday; Berlin is UTC+2 in summer.
        assert!(w.is_open(at("2027-06-05T21:30:00Z")));
        assert!(w.is_open(at("2027-06-05T23:59:00Z")));
        assert!(!w.is_open(at("2027-06-06T00:00:00Z")));
        assert!(!w.is_open(at("2027-06-05T20:59:00Z")));
    }

    #[test]
    fn next_occurrence_follows_daylight_saving() {
        let w = saturday_night_berlin();
        // Winter: UTC+1, so 23:00 local is 22:00 UTC.
        assert_eq!(
            w.current_or_next(at("2027-01-04T12:00:00Z")),
            Some((at("2027-01-09T22:00:00Z"), at("2027-01-10T01:00:00Z")))
        );
    }

    #[test]
    fn previous_occurrence_is_the_last_that_ended() {
        let w = saturday_night_berlin();
        // During the window the previous one is a week earlier.
        assert_eq!(
            w.previous(at("2027-06-05T22:00:00Z")),
            Some((at("2027-05-29T21:00:00Z"), at("2027-05-30T00:00:00Z")))
        );
        // Just after it ends, it is the previous one.
        assert_eq!(
            w.previous(at("2027-06-06T00:00:00Z")),
            Some((at("2027-06-05T21:00:00Z"), at("2027-06-06T00:00:00Z")))
        );
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_start("02:30"), Some(150));
        assert_eq!(parse_start("24:00"), None);
        assert_eq!(parse_start("2:30"), None);
        assert_eq!(parse_day("Saturday"), Some(Weekday::Saturday));
        assert_eq!(parse_day("xyz"), None);
    }
}
