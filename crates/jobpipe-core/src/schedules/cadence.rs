//! When a schedule ticks: a cron expression in an IANA time zone, or a fixed rate.
//!
//! Cron expressions have five fields (minute, hour, day of month, month, day of week) and are evaluated
//! by `croner` in the schedule's time zone with `jiff`'s bundled time zone database, so "09:00 every
//! weekday in Europe/Paris" follows daylight saving time. A rate (`"15 minutes"`, `"1 hour"`, `"2 days"`)
//! ticks every period counted from an anchor (the schedule's creation). Nothing ticks more often than once
//! a minute: the reconciler that fires ticks runs every minute.

use std::str::FromStr;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::clock::Millis;

/// The shortest rate; cron expressions have minutes as their finest field.
pub const MIN_RATE: Duration = Duration::from_secs(60);
/// The longest rate: a year.
pub const MAX_RATE: Duration = Duration::from_secs(366 * 24 * 3600);

/// How a schedule ticks.
#[derive(Debug, Clone)]
pub enum Cadence {
    Cron { expression: String, cron: Box<Cron>, zone: TimeZone },
    Rate { period: Duration, anchor: Millis },
}

/// Why a cadence was refused, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct CadenceError {
    pub field: &'static str,
    pub problem: String,
}

fn refuse(field: &'static str, problem: impl Into<String>) -> CadenceError {
    CadenceError { field, problem: problem.into() }
}

impl Cadence {
    /// A five-field cron expression in `timezone` (an IANA name such as `Europe/Paris`).
    pub fn cron(expression: &str, timezone: &str) -> Result<Cadence, CadenceError> {
        let zone = zone(timezone)?;
        let fields = expression.split_whitespace().count();
        if fields != 5 {
            return Err(refuse(
                "cron",
                format!("has {fields} fields; give five: minute hour day-of-month month day-of-week"),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| refuse("cron", format!("is not a cron expression: {e}")))?;
        let cadence = Cadence::Cron { expression: expression.trim().to_string(), cron: Box::new(cron), zone };
        // An expression that can never match (30 February) would leave the schedule without a next tick.
        if cadence.next_after(0).is_none() {
            return Err(refuse("cron", "never matches a date"));
        }
        Ok(cadence)
    }

    /// A rate such as `"15 minutes"`, `"1 hour"` or `"2 days"`, ticking from `anchor`.
    pub fn rate(text: &str, anchor: Millis) -> Result<Cadence, CadenceError> {
        let period = parse_rate(text)?;
        Ok(Cadence::Rate { period, anchor })
    }

    /// The first tick strictly after `after` (epoch ms), if there is one.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        match self {
            Cadence::Cron { cron, zone, .. } => {
                let start = Timestamp::from_millisecond(after).ok()?.to_zoned(zone.clone());
                let next = cron.find_next_occurrence(&start, false).ok()?;
                Some(next.timestamp().as_millisecond())
            }
            Cadence::Rate { period, anchor } => {
                let period = period.as_millis() as Millis;
                if after < *anchor {
                    return Some(*anchor);
                }
                Some(anchor + ((after - anchor) / period + 1) * period)
            }
        }
    }

    /// The last tick at or before `at`, if there is one.
    pub fn latest_at_or_before(&self, at: Millis) -> Option<Millis> {
        match self {
            Cadence::Cron { cron, zone, .. } => {
                let start = Timestamp::from_millisecond(at).ok()?.to_zoned(zone.clone());
                let previous = cron.find_previous_occurrence(&start, true).ok()?;
                Some(previous.timestamp().as_millisecond())
            }
            Cadence::Rate { period, anchor } => {
                let period = period.as_millis() as Millis;
                (at >= *anchor).then(|| anchor + (at - anchor) / period * period)
            }
        }
    }

    /// The rate in its canonical words (`"15 minutes"`), for a rate cadence.
    pub fn rate_text(&self) -> Option<String> {
        match self {
            Cadence::Rate { period, .. } => Some(rate_words(*period)),
            Cadence::Cron { .. } => None,
        }
    }
}

/// Whether `name` is an IANA time zone (a rate keeps one too, for whoever reads the schedule).
pub fn check_timezone(name: &str) -> Result<(), CadenceError> {
    zone(name).map(|_| ())
}

/// An IANA time zone from the bundled database.
fn zone(name: &str) -> Result<TimeZone, CadenceError> {
    TimeZone::get(name)
        .map_err(|_| refuse("timezone", format!("{name:?} is not an IANA time zone name (like Europe/Paris or UTC)")))
}

/// `"<n> <unit>"` with unit minute(s), hour(s) or day(s).
fn parse_rate(text: &str) -> Result<Duration, CadenceError> {
    let shape = || refuse("rate", format!("{text:?} is not like \"15 minutes\", \"1 hour\" or \"2 days\""));
    let mut words = text.split_whitespace();
    let (Some(count), Some(unit), None) = (words.next(), words.next(), words.next()) else {
        return Err(shape());
    };
    let count = u64::from_str(count).map_err(|_| shape())?;
    let seconds = match unit {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        _ => return Err(shape()),
    };
    let period = Duration::from_secs(count.saturating_mul(seconds));
    if period < MIN_RATE || period > MAX_RATE {
        return Err(refuse("rate", "must be from 1 minute to 366 days"));
    }
    Ok(period)
}

fn rate_words(period: Duration) -> String {
    let seconds = period.as_secs();
    let (count, unit) = if seconds.is_multiple_of(86_400) {
        (seconds / 86_400, "day")
    } else if seconds.is_multiple_of(3600) {
        (seconds / 3600, "hour")
    } else {
        (seconds / 60, "minute")
    };
    format!("{count} {unit}{}", if count == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_rfc3339;

    fn at(text: &str) -> Millis {
        from_rfc3339(text).unwrap()
    }

    #[test]
    fn a_cron_ticks_in_its_time_zone_across_daylight_saving_time() {
        let weekdays_at_nine = Cadence::cron("0 9 * * MON-FRI", "Europe/Paris").unwrap();
        // Friday 2026-03-27 10:00 Paris (CET, UTC+1): next is Monday 30 March 09:00, now CEST (UTC+2).
        assert_eq!(weekdays_at_nine.next_after(at("2026-03-27T09:00:00Z")), Some(at("2026-03-30T07:00:00Z")));
        assert_eq!(weekdays_at_nine.next_after(at("2026-03-26T07:59:00Z")), Some(at("2026-03-26T08:00:00Z")));
        // Strictly after: a tick is never its own successor.
        assert_eq!(weekdays_at_nine.next_after(at("2026-03-26T08:00:00Z")), Some(at("2026-03-27T08:00:00Z")));
        assert_eq!(weekdays_at_nine.latest_at_or_before(at("2026-03-30T07:00:00Z")), Some(at("2026-03-30T07:00:00Z")));
        assert_eq!(weekdays_at_nine.latest_at_or_before(at("2026-03-29T12:00:00Z")), Some(at("2026-03-27T08:00:00Z")));
        let utc = Cadence::cron("*/15 * * * *", "UTC").unwrap();
        assert_eq!(utc.next_after(at("2026-12-24T18:07:30Z")), Some(at("2026-12-24T18:15:00Z")));
    }

    /// The daylight saving days in Paris in 2026: 02:00-03:00 does not exist on 29 March and happens twice
    /// on 25 October. A single fixed time of day runs once either way (in the gap at the first valid time
    /// after it, in the overlap at its first occurrence); a list of hours follows the wall clock, so its
    /// time in the gap is skipped and its time in the overlap runs twice (croner, as Vixie cron does).
    #[test]
    fn daylight_saving_gaps_and_overlaps_follow_the_documented_rules() {
        let ticks = |expression: &str, from: &str, count: usize| {
            let cadence = Cadence::cron(expression, "Europe/Paris").unwrap();
            let mut tick = at(from);
            (0..count)
                .map(|_| {
                    tick = cadence.next_after(tick).unwrap();
                    tick
                })
                .collect::<Vec<_>>()
        };
        let spring = "2026-03-28T23:00:00Z";
        let autumn = "2026-10-24T22:00:00Z";
        assert_eq!(ticks("30 2 * * *", spring, 2), [at("2026-03-29T01:00:00Z"), at("2026-03-30T00:30:00Z")]);
        assert_eq!(ticks("30 2 * * *", autumn, 2), [at("2026-10-25T00:30:00Z"), at("2026-10-26T01:30:00Z")]);
        assert_eq!(ticks("0 2,14 * * *", spring, 2), [at("2026-03-29T12:00:00Z"), at("2026-03-30T00:00:00Z")]);
        assert_eq!(
            ticks("0 2,14 * * *", autumn, 3),
            [at("2026-10-25T00:00:00Z"), at("2026-10-25T01:00:00Z"), at("2026-10-25T13:00:00Z")]
        );
    }

    #[test]
    fn a_rate_ticks_every_period_from_its_anchor() {
        let anchor = at("2026-12-24T18:00:00Z");
        let every_quarter = Cadence::rate("15 minutes", anchor).unwrap();
        assert_eq!(every_quarter.next_after(anchor - 1), Some(anchor));
        assert_eq!(every_quarter.next_after(anchor), Some(anchor + 900_000));
        assert_eq!(every_quarter.next_after(anchor + 899_999), Some(anchor + 900_000));
        assert_eq!(every_quarter.latest_at_or_before(anchor + 2_000_000), Some(anchor + 1_800_000));
        assert_eq!(every_quarter.latest_at_or_before(anchor - 1), None);
        assert_eq!(every_quarter.rate_text().as_deref(), Some("15 minutes"));
        assert_eq!(Cadence::rate("1 hour", 0).unwrap().rate_text().as_deref(), Some("1 hour"));
        assert_eq!(Cadence::rate("48 hours", 0).unwrap().rate_text().as_deref(), Some("2 days"));
    }

    #[test]
    fn cadences_that_cannot_be_kept_are_refused_naming_the_field() {
        let field = |result: Result<Cadence, CadenceError>| result.unwrap_err().field;
        assert_eq!(field(Cadence::cron("0 9 * * MON-FRI", "Mars/Olympus")), "timezone");
        assert_eq!(field(Cadence::cron("0 0 9 * * MON-FRI", "UTC")), "cron", "six fields (seconds)");
        assert_eq!(field(Cadence::cron("every day", "UTC")), "cron");
        assert_eq!(field(Cadence::cron("61 * * * *", "UTC")), "cron");
        assert_eq!(field(Cadence::cron("0 0 30 2 *", "UTC")), "cron", "30 February never comes");
        for bad in ["30 seconds", "0 minutes", "15", "fifteen minutes", "1 week", "367 days", "1 minute ago"] {
            assert_eq!(field(Cadence::rate(bad, 0)), "rate", "{bad}");
        }
    }
}
