//! Exponential backoff with full jitter for retrying a job through SQS visibility, and the jittered wait
//! between in-process retries of a contended or throttled call.

use std::time::Duration;

/// SQS caps a message's visibility timeout at 12 hours.
const SQS_MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// Sleeps between half of `ceiling` and all of it, so calls retried together spread out.
pub async fn sleep_jittered(ceiling: Duration) {
    tokio::time::sleep(ceiling.mul_f64(rand::random_range(0.5..=1.0))).await;
}

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_secs(2), max: Duration::from_secs(15 * 60) }
    }
}

impl Backoff {
    /// The ceiling for the delay after the `attempt`-th failure (1-based): base * 2^(attempt-1), capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp);
        ceiling.min(self.max).min(SQS_MAX_VISIBILITY)
    }

    /// A delay drawn uniformly from [ceiling/2, ceiling]: spread out, but never an instant retry.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        let low = ceiling / 2;
        let ms = if ceiling > low { rand::random_range(low..=ceiling) } else { ceiling };
        Duration::from_millis(ms)
    }
}

/// How long a job held back for its tenant's concurrency slot waits before it is looked at again, by how
/// often it was held (`delay(held + 1)`): 1 s after the first hold, doubling up to a minute. A tenant's
/// backlog comes back spread out and ever more rarely (settled, a backlog of `B` jobs costs about
/// `B` / 45 deliveries a second), while a slot that frees is found within a minute.
pub const HELD_FOR_SLOT: Backoff = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) };

/// How long a throttled job waits before it runs again: at least `window` (a quota's period, a minute
/// for Bedrock's per-minute quotas), plus up to half a window of jitter so throttled jobs do not return
/// together.
pub fn throttled_delay(window: Duration) -> Duration {
    let window = window.as_millis() as u64;
    Duration::from_millis(window + rand::random_range(0..=window / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_job_waits_the_window_out_with_jitter() {
        let window = Duration::from_secs(60);
        for _ in 0..200 {
            let delay = throttled_delay(window);
            assert!((window..=window * 3 / 2).contains(&delay), "{delay:?}");
        }
    }

    #[test]
    fn grows_exponentially_then_caps() {
        let b = Backoff { base: Duration::from_secs(2), max: Duration::from_secs(60) };
        let ceilings: Vec<u64> = (1..=7).map(|a| b.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, vec![2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.ceiling(1000).as_secs(), 60);
    }

    #[test]
    fn jitter_stays_within_half_to_full_ceiling() {
        let b = Backoff::default();
        for attempt in 1..10 {
            let ceiling = b.ceiling(attempt);
            for _ in 0..50 {
                let d = b.delay(attempt);
                assert!(d <= ceiling && d >= ceiling / 2, "{d:?} outside {ceiling:?}");
            }
        }
    }
}
