//! How long hotpatches keep being offered for a baseline once a newer one is out.
//!
//! One rule, used both by the calendar (for the plan: "covered until …") and by
//! the offer (for what actually shipped), so that the date the server shows and the
//! date the offer switches to a baseline can never disagree.

use jiff::ToSpan;
use jiff::civil::Date;

/// The largest grace the calendar accepts. Longer than a month would let coverage
/// of a baseline run into the hotpatch months of the next one, which defeats the
/// point of a cadence.
pub const MAX_GRACE_DAYS: u16 = 31;

/// The last day hotpatches are offered for a baseline, given the release date of
/// the baseline that follows it.
///
/// * A planned successor: the day before its release, plus `grace_days`. With the
///   default grace of zero, coverage ends the day before the successor comes out,
///   so "covered until 2027-04-12" means "install 2027.04 and restart by then".
/// * An unplanned successor ends coverage the day before it is released whatever
///   the grace: it exists because a fix could not ship as a hotpatch, so
///   hotpatching the old baseline cannot make the machine safe any more.
///
/// `None` only when the result would fall outside the dates `jiff` represents.
pub fn coverage_end(successor_release: Date, successor_unplanned: bool, grace_days: u16) -> Option<Date> {
    let day_before = successor_release.yesterday().ok()?;
    if successor_unplanned || grace_days == 0 {
        return Some(day_before);
    }
    day_before.checked_add(i32::from(grace_days).days()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn planned_successor_honours_grace_unplanned_does_not() {
        let next = date(2027, 4, 13);
        assert_eq!(coverage_end(next, false, 0), Some(date(2027, 4, 12)));
        assert_eq!(coverage_end(next, false, 7), Some(date(2027, 4, 19)));
        assert_eq!(coverage_end(next, true, 7), Some(date(2027, 4, 12)));
        assert_eq!(coverage_end(Date::MIN, false, 0), None);
    }
}
