//! Time as the state machine sees it: milliseconds since the Unix epoch, injectable for tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> Millis;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
    }
}

/// A clock that only moves when told to: leases, backoff and dispatch grace are tested with it.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn starting_now() -> Self {
        ManualClock(Arc::new(AtomicI64::new(SystemClock.now_ms())))
    }

    pub fn advance_ms(&self, ms: Millis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// Formats epoch milliseconds as RFC 3339 in UTC, as the HTTP API shows times.
pub fn to_rfc3339(ms: Millis) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Reads an RFC 3339 time (with its offset) as epoch milliseconds.
pub fn from_rfc3339(text: &str) -> Option<Millis> {
    use time::format_description::well_known::Rfc3339;
    let time = time::OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Millis::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_read_back_as_written() {
        assert_eq!(from_rfc3339("2026-12-24T18:00:00Z"), Some(1_798_135_200_000));
        assert_eq!(from_rfc3339("2026-12-24T19:00:00.250+01:00"), Some(1_798_135_200_250));
        assert_eq!(from_rfc3339(&to_rfc3339(1_798_135_200_250)), Some(1_798_135_200_250));
        for bad in ["", "2026-12-24", "2026-12-24T18:00:00", "tomorrow"] {
            assert_eq!(from_rfc3339(bad), None, "{bad}");
        }
    }
}
