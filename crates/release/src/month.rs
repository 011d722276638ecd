//! A calendar month (year + month), the unit the release calendar plans in.

use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Years the calendar accepts. The upper bound leaves room to look a year ahead
/// (the next baseline is always within twelve months) without leaving the range
/// `jiff` can represent.
pub const YEARS: std::ops::RangeInclusive<i16> = 1..=9998;

/// A year and month, written `YYYY-MM` in JSON and text (e.g. `2027-04`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct YearMonth {
    // Field order matters: the derived `Ord` must compare the year first.
    year: i16,
    month: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YearMonthError {
    #[error("month {0} is out of range (expected 1..=12)")]
    Month(i64),
    #[error("year {0} is out of range (expected 1..=9998)")]
    Year(i64),
    #[error("{0:?} is not a month of the form YYYY-MM")]
    Syntax(String),
}

impl YearMonth {
    pub fn new(year: i16, month: u8) -> Result<Self, YearMonthError> {
        if !YEARS.contains(&year) {
            return Err(YearMonthError::Year(year.into()));
        }
        if !(1..=12).contains(&month) {
            return Err(YearMonthError::Month(month.into()));
        }
        Ok(Self { year, month })
    }

    /// The month a date falls in; `None` only for dates outside [`YEARS`].
    pub fn of(date: Date) -> Option<Self> {
        // jiff months are always 1..=12, so only the year can be refused.
        Self::new(date.year(), u8::try_from(date.month()).ok()?).ok()
    }

    pub fn year(self) -> i16 {
        self.year
    }

    pub fn month(self) -> u8 {
        self.month
    }

    /// The following month; `None` past the end of [`YEARS`].
    pub fn next(self) -> Option<Self> {
        if self.month == 12 {
            Self::new(self.year.checked_add(1)?, 1).ok()
        } else {
            Some(Self { year: self.year, month: self.month + 1 })
        }
    }

    /// The first day of the month.
    pub fn first_day(self) -> Date {
        // Year and month were validated into jiff's range, day 1 always exists;
        // the fallback is unreachable but keeps this free of panics.
        Date::new(self.year, self.month as i8, 1).unwrap_or(Date::MIN)
    }
}

impl fmt::Display for YearMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for YearMonth {
    type Err = YearMonthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || YearMonthError::Syntax(s.to_string());
        let (y, m) = s.trim().split_once('-').ok_or_else(syntax)?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if y.len() != 4 || m.len() != 2 || !digits(y) || !digits(m) {
            return Err(syntax());
        }
        let year: i16 = y.parse().map_err(|_| syntax())?;
        let month: u8 = m.parse().map_err(|_| syntax())?;
        Self::new(year, month)
    }
}

impl TryFrom<String> for YearMonth {
    type Error = YearMonthError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<YearMonth> for String {
    fn from(m: YearMonth) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let m: YearMonth = "2027-04".parse().unwrap();
        assert_eq!((m.year(), m.month()), (2027, 4));
        assert_eq!(m.to_string(), "2027-04");
        assert_eq!("2027-13".parse::<YearMonth>(), Err(YearMonthError::Month(13)));
        assert!(matches!("2027-4".parse::<YearMonth>(), Err(YearMonthError::Syntax(_))));
        assert!(matches!("0000-01".parse::<YearMonth>(), Err(YearMonthError::Year(0))));
    }

    #[test]
    fn next_wraps_the_year_and_orders() {
        let dec = YearMonth::new(2027, 12).unwrap();
        let jan = dec.next().unwrap();
        assert_eq!(jan, YearMonth::new(2028, 1).unwrap());
        assert!(dec < jan);
        assert_eq!(YearMonth::new(9998, 12).unwrap().next(), None);
    }
}
