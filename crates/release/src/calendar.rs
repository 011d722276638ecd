//! The release calendar: which months bring a baseline (planned on a cadence, or
//! unplanned when a fix cannot ship as a hotpatch), which months bring hotpatches,
//! on which day of the month releases come out, and how long a baseline stays
//! covered by hotpatches.
//!
//! The calendar is the *plan*. What actually shipped, with real dates, is the
//! catalog (see [`crate::catalog`]); the offer decides from the catalog.

use crate::coverage::{MAX_GRACE_DAYS, coverage_end};
use crate::month::YearMonth;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

/// The default cadence: a planned baseline each quarter.
pub const DEFAULT_BASELINE_MONTHS: [u8; 4] = [1, 4, 7, 10];

/// Longest accepted reason text for an unplanned baseline.
pub const MAX_REASON_CHARS: usize = 500;

/// Day of the week, for [`PatchDay`]. Own type because `jiff`'s has no serde form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

impl From<Weekday> for jiff::civil::Weekday {
    fn from(w: Weekday) -> Self {
        use jiff::civil::Weekday as J;
        match w {
            Weekday::Monday => J::Monday,
            Weekday::Tuesday => J::Tuesday,
            Weekday::Wednesday => J::Wednesday,
            Weekday::Thursday => J::Thursday,
            Weekday::Friday => J::Friday,
            Weekday::Saturday => J::Saturday,
            Weekday::Sunday => J::Sunday,
        }
    }
}

/// The day of a month on which that month's release (baseline or hotpatches) comes
/// out.
///
/// The default is the second Tuesday, the same rhythm as Microsoft's "Patch
/// Tuesday": early enough in the month to leave room for maintenance windows,
/// late enough to avoid month-end change freezes, and a weekday that operators
/// already plan around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum PatchDay {
    /// The `nth` (1..=4, so it exists in every month) given weekday.
    NthWeekday { nth: u8, weekday: Weekday },
    /// The last given weekday of the month.
    LastWeekday { weekday: Weekday },
    /// A fixed day (1..=28, so it exists in every month).
    DayOfMonth { day: u8 },
}

impl Default for PatchDay {
    fn default() -> Self {
        PatchDay::NthWeekday { nth: 2, weekday: Weekday::Tuesday }
    }
}

impl PatchDay {
    fn validate(self) -> Result<(), CalendarError> {
        match self {
            PatchDay::NthWeekday { nth, .. } if !(1..=4).contains(&nth) => Err(CalendarError::PatchDayNth(nth)),
            PatchDay::DayOfMonth { day } if !(1..=28).contains(&day) => Err(CalendarError::PatchDayOfMonth(day)),
            _ => Ok(()),
        }
    }

    /// The date in `month`. Infallible for a validated rule: every variant names a
    /// day that exists in every month.
    pub fn in_month(self, month: YearMonth) -> Date {
        let first = month.first_day();
        let found = match self {
            PatchDay::NthWeekday { nth, weekday } => first.nth_weekday_of_month(nth as i8, weekday.into()).ok(),
            PatchDay::LastWeekday { weekday } => first.nth_weekday_of_month(-1, weekday.into()).ok(),
            PatchDay::DayOfMonth { day } => Date::new(month.year(), month.month() as i8, day as i8).ok(),
        };
        // Only reachable with an unvalidated rule; the first is a safe, visible answer.
        found.unwrap_or(first)
    }
}

/// A baseline released outside the cadence, in what would have been a hotpatch
/// month, e.g. for a zero-day whose fix cannot be hotpatched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnplannedBaseline {
    pub month: YearMonth,
    pub reason: String,
}

/// What a month brings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MonthKind {
    PlannedBaseline,
    HotpatchMonth,
    UnplannedBaseline { reason: String },
}

impl MonthKind {
    /// Whether the month brings a baseline (and so a restart).
    pub fn is_baseline(&self) -> bool {
        !matches!(self, MonthKind::HotpatchMonth)
    }
}

/// A baseline the calendar plans, with its release date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledBaseline {
    pub month: YearMonth,
    pub release_date: Date,
    pub kind: MonthKind,
}

/// The calendar as written in configuration. Turn it into a [`ReleaseCalendar`]
/// with [`ReleaseCalendar::new`], which checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// Months (1..=12) that bring a planned baseline every year.
    #[serde(default = "default_baseline_months")]
    pub baseline_months: Vec<u8>,
    #[serde(default)]
    pub unplanned: Vec<UnplannedBaseline>,
    #[serde(default)]
    pub patch_day: PatchDay,
    /// Days a baseline stays covered after a planned successor is out (0..=31);
    /// see [`crate::coverage::coverage_end`].
    #[serde(default)]
    pub grace_days: u16,
}

fn default_baseline_months() -> Vec<u8> {
    DEFAULT_BASELINE_MONTHS.to_vec()
}

impl Default for CalendarConfig {
    fn default() -> Self {
        Self {
            baseline_months: default_baseline_months(),
            unplanned: Vec::new(),
            patch_day: PatchDay::default(),
            grace_days: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("the release calendar has no baseline months; at least one month must bring a planned baseline")]
    NoBaselineMonths,
    #[error("baseline month {0} is out of range (expected 1..=12)")]
    BaselineMonthOutOfRange(u8),
    #[error("baseline month {0} is listed twice")]
    DuplicateBaselineMonth(u8),
    #[error("unplanned baseline in {0} falls in a planned baseline month; move it or drop it")]
    UnplannedInBaselineMonth(YearMonth),
    #[error("two unplanned baselines in {0}; a month holds at most one")]
    DuplicateUnplanned(YearMonth),
    #[error("unplanned baseline in {0} has no reason; say why it could not wait")]
    EmptyUnplannedReason(YearMonth),
    #[error("unplanned baseline in {month} has a reason longer than {max} characters")]
    UnplannedReasonTooLong { month: YearMonth, max: usize },
    #[error("patch day: nth weekday {0} is out of range (expected 1..=4, so it exists in every month)")]
    PatchDayNth(u8),
    #[error("patch day: day of month {0} is out of range (expected 1..=28, so it exists in every month)")]
    PatchDayOfMonth(u8),
    #[error("grace of {0} days is too long (at most {MAX_GRACE_DAYS})")]
    GraceTooLong(u16),
}

/// A checked release calendar. Deserializing one checks it too. The default is
/// the quarterly cadence on the second Tuesday with no grace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CalendarConfig", into = "CalendarConfig")]
pub struct ReleaseCalendar {
    config: CalendarConfig,
}

impl TryFrom<CalendarConfig> for ReleaseCalendar {
    type Error = CalendarError;
    fn try_from(config: CalendarConfig) -> Result<Self, Self::Error> {
        Self::new(config)
    }
}

impl From<ReleaseCalendar> for CalendarConfig {
    fn from(c: ReleaseCalendar) -> Self {
        c.config
    }
}

impl ReleaseCalendar {
    pub fn new(mut config: CalendarConfig) -> Result<Self, CalendarError> {
        if config.baseline_months.is_empty() {
            return Err(CalendarError::NoBaselineMonths);
        }
        let mut seen = [false; 13];
        for &m in &config.baseline_months {
            if !(1..=12).contains(&m) {
                return Err(CalendarError::BaselineMonthOutOfRange(m));
            }
            if std::mem::replace(&mut seen[m as usize], true) {
                return Err(CalendarError::DuplicateBaselineMonth(m));
            }
        }
        config.baseline_months.sort_unstable();
        config.patch_day.validate()?;
        if config.grace_days > MAX_GRACE_DAYS {
            return Err(CalendarError::GraceTooLong(config.grace_days));
        }
        config.unplanned.sort_by_key(|u| u.month);
        for (i, u) in config.unplanned.iter().enumerate() {
            if seen[u.month.month() as usize] {
                return Err(CalendarError::UnplannedInBaselineMonth(u.month));
            }
            if i > 0 && config.unplanned[i - 1].month == u.month {
                return Err(CalendarError::DuplicateUnplanned(u.month));
            }
            if u.reason.trim().is_empty() {
                return Err(CalendarError::EmptyUnplannedReason(u.month));
            }
            if u.reason.chars().count() > MAX_REASON_CHARS {
                return Err(CalendarError::UnplannedReasonTooLong { month: u.month, max: MAX_REASON_CHARS });
            }
        }
        Ok(Self { config })
    }

    /// The same calendar with one more unplanned baseline, checked like the rest.
    pub fn with_unplanned(&self, month: YearMonth, reason: impl Into<String>) -> Result<Self, CalendarError> {
        let mut config = self.config.clone();
        config.unplanned.push(UnplannedBaseline { month, reason: reason.into() });
        Self::new(config)
    }

    /// Planned baseline months, ascending.
    pub fn baseline_months(&self) -> &[u8] {
        &self.config.baseline_months
    }

    /// Unplanned baselines, by month.
    pub fn unplanned(&self) -> &[UnplannedBaseline] {
        &self.config.unplanned
    }

    pub fn patch_day(&self) -> PatchDay {
        self.config.patch_day
    }

    pub fn grace_days(&self) -> u16 {
        self.config.grace_days
    }

    pub fn config(&self) -> &CalendarConfig {
        &self.config
    }

    /// What `month` brings. An unplanned baseline replaces the hotpatch month it
    /// falls in.
    pub fn month_kind(&self, month: YearMonth) -> MonthKind {
        if let Ok(i) = self.config.unplanned.binary_search_by_key(&month, |u| u.month) {
            return MonthKind::UnplannedBaseline { reason: self.config.unplanned[i].reason.clone() };
        }
        if self.config.baseline_months.contains(&month.month()) {
            MonthKind::PlannedBaseline
        } else {
            MonthKind::HotpatchMonth
        }
    }

    /// The day `month`'s release comes out.
    pub fn release_date(&self, month: YearMonth) -> Date {
        self.config.patch_day.in_month(month)
    }

    /// The first baseline (planned or unplanned) released strictly after `date`.
    /// `None` only near the end of the supported years.
    pub fn next_baseline_after(&self, date: Date) -> Option<ScheduledBaseline> {
        let mut month = YearMonth::of(date)?;
        // A planned baseline recurs every year, so thirteen months (this month's
        // release may already be past) always reach one.
        for _ in 0..13 {
            let kind = self.month_kind(month);
            let release_date = self.release_date(month);
            if kind.is_baseline() && release_date > date {
                return Some(ScheduledBaseline { month, release_date, kind });
            }
            month = month.next()?;
        }
        None
    }

    /// The last day hotpatches are offered for the baseline released on
    /// `baseline_release_date`: the day before the next baseline's release, plus
    /// the grace if that baseline is planned (see
    /// [`crate::coverage::coverage_end`]). Any date works: the answer is the
    /// coverage of whatever baseline is current on that day.
    pub fn covered_until(&self, baseline_release_date: Date) -> Option<Date> {
        let next = self.next_baseline_after(baseline_release_date)?;
        let unplanned = matches!(next.kind, MonthKind::UnplannedBaseline { .. });
        coverage_end(next.release_date, unplanned, self.config.grace_days)
    }
}
