//! Recurring jobs: a schedule is a kind, an input and a cadence (`cadence`), owned by a tenant; each tick
//! creates exactly one job.
//!
//! Schedules live in their own table (`store`), keyed by owner and schedule id. An active schedule sits
//! in the sparse `dueTicks` index by its next tick; the reconciler (every minute) fires what is due within
//! `TICK_LOOKAHEAD` (`fire_due`): it creates the tick's job through `intake` as a scheduled job whose
//! `runAt` is the tick, so it starts at the tick to the second, then moves the schedule to its next tick
//! with a write conditioned on the tick it fired. The job's id is derived from (owner, schedule, tick), as
//! an `Idempotency-Key` would be: a tick fired twice (two reconcilers, a retried run, a crash between the
//! job and the move) is one job.
//!
//! Missed ticks: when the pipeline was down across several ticks, only the latest due tick fires (its job
//! starts at once) and the older ones are counted in `skippedTicks`, never run in a burst. A paused
//! schedule has no next tick; resuming picks the first tick after the resume, so ticks while paused are
//! neither fired nor counted.

pub mod cadence;
mod store;

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::{Clock, Millis, to_rfc3339};
use crate::error::AwsError;
use crate::intake::{Accepted, Intake, NewJob, StartAt};
pub use cadence::{Cadence, CadenceError, check_timezone};
pub use store::{CreateScheduleOutcome, SchedulePageToken, ScheduleStore, attr};

/// How far ahead of a tick its job is created. The reconciler runs every minute, so each tick's job
/// exists (as a scheduled job, sent with an SQS delay) before its time.
pub const TICK_LOOKAHEAD: Duration = Duration::from_secs(150);
/// Schedules fired at once.
const TICK_CONCURRENCY: usize = 8;
/// How many ticks of one schedule a run fires at most (every tick due within `TICK_LOOKAHEAD`, for a
/// per-minute schedule three); the next run continues.
const MAX_TICKS_PER_RUN: usize = 5;
/// How many missed ticks are counted one by one before the count stops (a per-minute cron down for a
/// year has half a million).
const MAX_SKIPPED_COUNTED: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ScheduleState {
    /// Ticking.
    Active,
    /// Not ticking until resumed; ticks meanwhile are not made up.
    Paused,
}

impl ScheduleState {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleState::Active => "active",
            ScheduleState::Paused => "paused",
        }
    }

    pub fn parse(text: &str) -> Option<ScheduleState> {
        [ScheduleState::Active, ScheduleState::Paused].into_iter().find(|state| state.as_str() == text)
    }
}

/// A recurring job.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub schedule_id: String,
    pub owner: String,
    pub kind: String,
    pub input: Value,
    /// A five-field cron expression, evaluated in `timezone`; or else `rate`.
    pub cron: Option<String>,
    /// A rate such as `"15 minutes"`, counted from `created_at`.
    pub rate: Option<String>,
    pub timezone: String,
    pub state: ScheduleState,
    /// The next tick to fire; `None` while paused.
    pub next_tick_at: Option<Millis>,
    pub last_tick_at: Option<Millis>,
    pub last_job_id: Option<String>,
    /// Ticks missed while the pipeline could not fire them (see the module docs).
    pub skipped_ticks: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
}

impl Schedule {
    pub fn cadence(&self) -> Result<Cadence, CadenceError> {
        match (&self.cron, &self.rate) {
            (Some(cron), _) => Cadence::cron(cron, &self.timezone),
            (None, Some(rate)) => Cadence::rate(rate, self.created_at),
            (None, None) => Err(CadenceError { field: "cron", problem: "the schedule has no cadence".into() }),
        }
    }

    pub fn view(&self) -> ScheduleView {
        ScheduleView {
            schedule_id: self.schedule_id.clone(),
            kind: self.kind.clone(),
            input: self.input.clone(),
            cron: self.cron.clone(),
            rate: self.rate.clone(),
            timezone: self.timezone.clone(),
            state: self.state,
            next_tick_at: self.next_tick_at.map(to_rfc3339),
            last_tick_at: self.last_tick_at.map(to_rfc3339),
            last_job_id: self.last_job_id.clone(),
            skipped_ticks: self.skipped_ticks,
            created_at: to_rfc3339(self.created_at),
            updated_at: to_rfc3339(self.updated_at),
        }
    }
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleView {
    pub schedule_id: String,
    pub kind: String,
    pub input: Value,
    /// The cron expression (minute hour day-of-month month day-of-week), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The rate (`"15 minutes"`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// The IANA time zone the cron expression is read in.
    pub timezone: String,
    pub state: ScheduleState,
    /// When it next creates a job; `null` while paused.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub next_tick_at: Option<String>,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub last_tick_at: Option<String>,
    /// The job the last tick created.
    pub last_job_id: Option<String>,
    /// Ticks missed while the pipeline could not fire them; only the latest missed tick ran.
    pub skipped_ticks: u64,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
}

/// A page of `GET /schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchedulePage {
    pub schedules: Vec<ScheduleView>,
    /// Pass as `nextToken` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// The idempotency key a tick's job is created under. It has spaces, which a client's `Idempotency-Key`
/// (visible ASCII only) cannot, so no client request can take a tick's job id. It names the schedule's
/// creation too: a schedule deleted and created again under the same `Idempotency-Key` has the same id,
/// and must not find the jobs the old one created ahead.
pub fn tick_key(schedule: &Schedule, tick: Millis) -> String {
    format!("schedule {} created {} tick {tick}", schedule.schedule_id, schedule.created_at)
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TickReport {
    /// Ticks that created their job (or found it created by an earlier run).
    pub ticks_fired: usize,
    /// Missed ticks skipped (only the latest missed one fires).
    pub ticks_skipped: u64,
    /// Schedules whose tick failed this time (logged); the next run retries them.
    pub tick_failures: usize,
}

/// Fires every active schedule's ticks due within `TICK_LOOKAHEAD`: at most `limit` schedules (shared
/// evenly between the index's shards, so none is starved), `TICK_CONCURRENCY` at once, and none started
/// after `stop_at` (the caller's deadline, less what it needs for its other work). The clock is read for
/// each tick: a job is sent with the delay that is left when it is sent.
pub async fn fire_due(
    schedules: &ScheduleStore,
    intake: &Intake<'_>,
    clock: &dyn Clock,
    stop_at: Option<Millis>,
    limit: usize,
) -> Result<TickReport, AwsError> {
    let until = clock.now_ms() + TICK_LOOKAHEAD.as_millis() as Millis;
    let due = schedules.due(until, limit).await?;
    let reports: Vec<TickReport> = futures_util::stream::iter(due)
        .map(|(owner, schedule_id)| async move {
            let mut report = TickReport::default();
            for _ in 0..MAX_TICKS_PER_RUN {
                let now = clock.now_ms();
                if stop_at.is_some_and(|stop_at| now >= stop_at) {
                    break;
                }
                match fire_one(schedules, intake, &owner, &schedule_id, now).await {
                    Ok(Some(skipped)) => {
                        report.ticks_fired += 1;
                        report.ticks_skipped += skipped;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        report.tick_failures += 1;
                        tracing::warn!(%schedule_id, %error, retryable = error.is_retryable(), "schedule tick failed; the next run retries it");
                        break;
                    }
                }
            }
            report
        })
        .buffer_unordered(TICK_CONCURRENCY)
        .collect()
        .await;
    Ok(reports.into_iter().fold(TickReport::default(), |total, one| TickReport {
        ticks_fired: total.ticks_fired + one.ticks_fired,
        ticks_skipped: total.ticks_skipped + one.ticks_skipped,
        tick_failures: total.tick_failures + one.tick_failures,
    }))
}

/// Fires one schedule's due tick: `Some(skipped ticks)` when it fired, `None` when nothing (more) was due
/// (or the index was behind: paused, deleted or already moved on).
async fn fire_one(
    schedules: &ScheduleStore,
    intake: &Intake<'_>,
    owner: &str,
    schedule_id: &str,
    now: Millis,
) -> Result<Option<u64>, AwsError> {
    let until = now + TICK_LOOKAHEAD.as_millis() as Millis;
    // The index is eventually consistent: decide from the item itself.
    let Some(schedule) = schedules.get(owner, schedule_id).await? else { return Ok(None) };
    let Some(due) = schedule.next_tick_at.filter(|due| *due <= until && schedule.state == ScheduleState::Active) else {
        return Ok(None);
    };
    let cadence = schedule.cadence().map_err(|e| AwsError::corrupt("reading a schedule", e.to_string()))?;
    // Several ticks missed: the latest one fires, the older ones are counted.
    let fire =
        if due < now { cadence.latest_at_or_before(now).filter(|latest| *latest > due).unwrap_or(due) } else { due };
    let skipped = count_ticks(&cadence, due, fire);
    let new = NewJob {
        owner: schedule.owner.clone(),
        kind: schedule.kind.clone(),
        input: schedule.input.clone(),
        idempotency_key: Some(tick_key(&schedule, fire)),
        correlation_id: format!("schedule-{schedule_id}"),
        start: StartAt::At(fire),
        callback_url: None,
    };
    let job_id = match intake.accept(new, now).await? {
        Accepted::New(job) | Accepted::Replayed(job) => job.job_id,
        // `accept` counts no open jobs: a tick's job is not refused for its tenant's.
        Accepted::OverOpenJobs { .. } => {
            return Err(AwsError::corrupt("firing a tick", "a tick's job was refused for its tenant's open jobs"));
        }
        Accepted::KeyReused => {
            // Only another input under the same tick key could do this, and a schedule's input never
            // changes: a corrupt item. Move on rather than stop the schedule.
            tracing::error!(%schedule_id, tick = fire, "a tick's job exists with another request; skipped");
            crate::job::JobId::from_idempotency_key(owner, &tick_key(&schedule, fire))
        }
    };
    let next = cadence.next_after(fire);
    schedules.advance(&schedule, due, next, fire, job_id.as_str(), skipped, now).await?;
    tracing::info!(%schedule_id, tick = fire, %job_id, skipped, next_tick = next, "schedule ticked");
    Ok(Some(skipped))
}

/// How many ticks lie in `[from, to)`: the ones skipped when `to` fires instead of `from`.
fn count_ticks(cadence: &Cadence, from: Millis, to: Millis) -> u64 {
    let mut count = 0;
    let mut tick = from;
    while tick < to && count < MAX_SKIPPED_COUNTED {
        count += 1;
        match cadence.next_after(tick) {
            Some(next) => tick = next,
            None => break,
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_ticks_are_counted_up_to_the_one_that_fires() {
        let every_minute = Cadence::rate("1 minute", 0).unwrap();
        assert_eq!(count_ticks(&every_minute, 60_000, 60_000), 0);
        assert_eq!(count_ticks(&every_minute, 60_000, 300_000), 4);
        assert_eq!(count_ticks(&every_minute, 0, Millis::MAX / 2), MAX_SKIPPED_COUNTED);
    }

    #[test]
    fn a_ticks_key_cannot_be_a_clients_idempotency_key_nor_another_incarnations() {
        let schedule = Schedule {
            schedule_id: "0196a3c4-0000-7000-8000-000000000000".into(),
            owner: "alice".into(),
            kind: "echo".into(),
            input: Value::Null,
            cron: None,
            rate: Some("1 minute".into()),
            timezone: "UTC".into(),
            state: ScheduleState::Active,
            next_tick_at: None,
            last_tick_at: None,
            last_job_id: None,
            skipped_ticks: 0,
            created_at: 1,
            updated_at: 1,
            idempotency_key: Some("nightly".into()),
            request_hash: String::new(),
        };
        let key = tick_key(&schedule, 1_798_135_200_000);
        assert!(!key.bytes().all(|b| b.is_ascii_graphic()), "{key}");
        let again = Schedule { created_at: 2, ..schedule };
        assert_ne!(tick_key(&again, 1_798_135_200_000), key, "created again under the same key");
    }
}
