//! Getting a job's message into SQS, and keeping one there until the job finishes.
//!
//! The API writes the job with `dispatchDueAt` (its place in a sparse GSI) a grace period ahead, sends the
//! message, then records `dispatchedAt`. Every unfinished job stays in the index; finishing takes it out.
//! When a job's check falls due, the reconciler (`sweep_due`) looks at it: a job whose message was never
//! confirmed (the send failed, or the sender died) is sent now; one whose last message is older than the
//! recheck period is sent again, because SQS deletes messages after the queue's retention (4 days)
//! without dead-lettering them; a job older than its maximum age fails as `expired`. Each is then
//! scheduled for its next check. A duplicate message is harmless: the state machine runs a job once
//! however often it is delivered.
//!
//! A scheduled job (`runAt`) is in the same index. A job due within `SCHEDULE_LEAD` is sent at once with
//! the rest of its wait as the message's delay; one due later is sent by the sweep that finds its check,
//! which falls due `SCHEDULE_LEAD` before its time, again delayed to its time. Its message is then
//! rechecked from its `runAt`, and its maximum age counts from there too.

use std::collections::HashMap;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::MessageAttributeValue;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Millis};
use crate::error::AwsError;
use crate::job::ErrorInfo;
use crate::job::{Job, JobId};
use crate::store::{ForceFailOutcome, JobStore, PendingDispatch};

/// The longest delay SQS gives a message (`DelaySeconds`).
pub const MAX_MESSAGE_DELAY: std::time::Duration = std::time::Duration::from_secs(900);
/// How long before its `runAt` a scheduled job's message is sent (at submission when it is due sooner, by
/// the sweep that finds its check otherwise). Short, because a delayed message counts in the queue's
/// `ApproximateAgeOfOldestMessage` from when it was sent, and the backlog alarm fires at 5 minutes: a
/// message never waits longer than this (plus the reconciler's lateness, a minute). Long enough that the
/// reconciler, every minute, finds each check before its time.
pub const SCHEDULE_LEAD: std::time::Duration = std::time::Duration::from_secs(3 * 60);

/// Whether a job that may start at `at` is sent now: it is due within `SCHEDULE_LEAD`.
pub fn sent_now(at: Millis, now: Millis) -> bool {
    at - now <= SCHEDULE_LEAD.as_millis() as Millis
}

/// SQS message attribute carrying the request's correlation id.
pub const CORRELATION_ID_ATTRIBUTE: &str = "correlationId";
/// SQS message attribute naming the job kind (for routing and metrics, never trusted for dispatch).
pub const KIND_ATTRIBUTE: &str = "kind";
/// SQS message attribute naming the job's owner, so a worker can take the tenant's concurrency slot
/// before it claims the job (the claim checks it against the job's own owner).
pub const TENANT_ATTRIBUTE: &str = "tenant";
/// SQS message attribute counting how often the job was held back for a concurrency slot (absent: never).
pub const HELD_ATTRIBUTE: &str = "held";

/// The body of a job message. It names the job only: the job's input lives with the job, so no message
/// ever comes near SQS's 256 KB limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobMessage {
    pub job_id: JobId,
}

/// Why a message body cannot be processed, ever.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoisonMessage {
    #[error("message has no body")]
    NoBody,
    #[error("message body is not a job message: {0}")]
    Unparseable(String),
    #[error("message names job {0:?}, which is not a job id")]
    BadJobId(String),
}

impl JobMessage {
    pub fn parse(body: Option<&str>) -> Result<JobMessage, PoisonMessage> {
        let body = body.ok_or(PoisonMessage::NoBody)?;
        let raw: serde_json::Value =
            serde_json::from_str(body).map_err(|e| PoisonMessage::Unparseable(e.to_string()))?;
        let job_id = raw.get("jobId").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        if JobId::parse(&job_id).is_none() {
            return Err(PoisonMessage::BadJobId(job_id));
        }
        serde_json::from_value(raw).map_err(|e| PoisonMessage::Unparseable(e.to_string()))
    }
}

/// Which queue a kind's messages go to. Kinds with their own concurrency limit (image generation) get
/// their own queue, because an SQS event-source filter drops what it does not match.
#[derive(Debug, Clone, Default)]
pub struct QueueRoutes {
    pub default_queue_url: String,
    pub by_kind: HashMap<String, String>,
}

impl QueueRoutes {
    pub fn single(queue_url: impl Into<String>) -> Self {
        QueueRoutes { default_queue_url: queue_url.into(), by_kind: HashMap::new() }
    }

    pub fn queue_for(&self, kind: &str) -> &str {
        self.by_kind.get(kind).unwrap_or(&self.default_queue_url)
    }
}

#[derive(Debug, Clone)]
pub struct Dispatcher {
    sqs: Client,
    routes: QueueRoutes,
}

impl Dispatcher {
    pub fn new(sqs: Client, routes: QueueRoutes) -> Self {
        Dispatcher { sqs, routes }
    }

    pub fn sqs(&self) -> &Client {
        &self.sqs
    }

    /// Every queue jobs may be sent to.
    pub fn queue_urls(&self) -> Vec<&str> {
        std::iter::once(self.routes.default_queue_url.as_str())
            .chain(self.routes.by_kind.values().map(String::as_str))
            .collect()
    }

    /// Sends the job's message, invisible for `delay` (at most 15 minutes; standard queues only). On a
    /// standard queue its `MessageGroupId` is the job's owner, which makes the queue a fair queue: when one
    /// tenant holds a disproportionate share of the messages being processed, SQS hands out the other
    /// tenants' messages first (see ARCHITECTURE.md, "Fairness between tenants"). On a FIFO queue the job
    /// id is both group and deduplication id.
    pub async fn send_delayed(&self, job: &Job, delay: std::time::Duration) -> Result<(), AwsError> {
        self.send_held(job, delay, 0).await
    }

    /// `send_delayed` for a job held back `held` times so far for a concurrency slot.
    pub async fn send_held(&self, job: &Job, delay: std::time::Duration, held: u32) -> Result<(), AwsError> {
        let job_id = &job.job_id;
        let queue_url = self.routes.queue_for(&job.kind);
        let body = serde_json::to_string(&JobMessage { job_id: job_id.clone() }).expect("a job message serializes");
        let mut request = self
            .sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .message_attributes(CORRELATION_ID_ATTRIBUTE, string_attribute(&job.correlation_id))
            .message_attributes(KIND_ATTRIBUTE, string_attribute(&job.kind))
            .message_attributes(TENANT_ATTRIBUTE, string_attribute(&job.owner));
        if held > 0 {
            let held = MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(held.to_string())
                .build()
                .expect("data type is set");
            request = request.message_attributes(HELD_ATTRIBUTE, held);
        }
        if queue_url.ends_with(".fifo") {
            request = request.message_group_id(job_id.as_str()).message_deduplication_id(job_id.as_str());
        } else {
            request = request.message_group_id(tenant_group(&job.owner));
            if !delay.is_zero() {
                // Whole seconds, rounded up: a delay is never shorter than asked.
                let seconds = (delay.as_millis() as u64).div_ceil(1000).min(900);
                request = request.delay_seconds(seconds as i32);
            }
        }
        request.send().await.map_err(|e| AwsError::from_sdk(format!("SendMessage (job {job_id})"), e))?;
        Ok(())
    }

    /// Sends the job's message, delayed to the job's `runAt` when that is ahead (at most
    /// `MAX_MESSAGE_DELAY`), and records that it was sent (`now`).
    pub async fn dispatch(&self, store: &JobStore, job: &Job, now: Millis) -> Result<(), AwsError> {
        self.send_delayed(job, delay_until(job.start_after(), now)).await?;
        store.confirm_dispatch(&job.job_id, now).await
    }
}

/// The message delay that makes a message visible at `at` (whole seconds, rounded up so it is never
/// early), at most `MAX_MESSAGE_DELAY`.
pub fn delay_until(at: Millis, now: Millis) -> std::time::Duration {
    let seconds = ((at - now).max(0) as u64).div_ceil(1000);
    std::time::Duration::from_secs(seconds).min(MAX_MESSAGE_DELAY)
}

/// Whether a message for a job that may start at `at` can have been sent for it: its wait fits in one
/// message delay (a message for a job further off is a stray copy).
pub fn within_message_delay(at: Millis, now: Millis) -> bool {
    at - now <= MAX_MESSAGE_DELAY.as_millis() as Millis
}

/// The `MessageGroupId` that names a tenant to a fair queue: its owner when SQS takes it as it is (1 to
/// 128 printable ASCII characters), otherwise `sha256:` and the hex SHA-256 of it, which names the same
/// tenant every time.
pub fn tenant_group(owner: &str) -> std::borrow::Cow<'_, str> {
    let printable = owner.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if printable && (1..=128).contains(&owner.len()) {
        return owner.into();
    }
    use sha2::{Digest, Sha256};
    let digest: String = Sha256::digest(owner.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{digest}").into()
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(if value.is_empty() { "-" } else { value })
        .build()
        .expect("data type is set")
}

/// How the reconciler treats unfinished jobs (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct DispatchPolicy {
    /// A job's message is sent again when the last one is this old.
    pub recheck: std::time::Duration,
    /// A job this old that has not finished fails as `expired`.
    pub max_age: std::time::Duration,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct SweepReport {
    /// Messages sent for jobs whose message was never confirmed, or may have expired.
    pub redispatched: usize,
    /// Jobs failed for being older than the maximum age, as they ended (for their metrics).
    pub expired: Vec<Job>,
    /// Due jobs that only needed their next check scheduled.
    pub rescheduled: usize,
    /// Jobs whose handling failed; the next sweep retries them.
    pub failed: usize,
}

/// Looks at every unfinished job whose check is due (see the module docs); at most `limit` of them.
/// The clock is read for each job, so a message is sent with the delay that is left when it is sent.
pub async fn sweep_due(
    store: &JobStore,
    dispatcher: &Dispatcher,
    policy: DispatchPolicy,
    clock: &dyn Clock,
    limit: usize,
) -> Result<SweepReport, AwsError> {
    let mut report = SweepReport::default();
    for due in store.due_for_dispatch(clock.now_ms(), limit).await? {
        if let Err(error) = sweep_one(store, dispatcher, policy, clock.now_ms(), &due, &mut report).await {
            tracing::warn!(job_id = %due.job_id, %error, retryable = error.is_retryable(), "dispatch check failed; the next sweep retries it");
            report.failed += 1;
        }
    }
    Ok(report)
}

async fn sweep_one(
    store: &JobStore,
    dispatcher: &Dispatcher,
    policy: DispatchPolicy,
    now: Millis,
    due: &PendingDispatch,
    report: &mut SweepReport,
) -> Result<(), AwsError> {
    let recheck = policy.recheck.as_millis() as Millis;
    let Some(job) = store.get(&due.job_id).await? else { return Ok(()) };
    if job.status.is_terminal() {
        return store.clear_dispatch_check(&job.job_id).await;
    }
    let start = job.start_after();
    if now - start >= policy.max_age.as_millis() as Millis {
        let info = ErrorInfo {
            code: "expired".into(),
            message: format!("not finished within {} s of when it could start", policy.max_age.as_secs()),
        };
        match store.force_fail(&job.job_id, &info, now).await? {
            ForceFailOutcome::Failed(failed) => {
                tracing::warn!(job_id = %job.job_id, "failed a job older than its maximum age");
                report.expired.push(failed);
                return Ok(());
            }
            ForceFailOutcome::AlreadyFinished(_) | ForceFailOutcome::NotFound => return Ok(()),
            // A worker holds it now; look again after the recheck period.
            ForceFailOutcome::LeaseLive => {}
        }
    }
    if !sent_now(start, now) {
        // Not due within the lead yet (its check was moved, or a clock jumped): look again then.
        report.rescheduled += 1;
        return store.schedule_dispatch_check(&job.job_id, start - SCHEDULE_LEAD.as_millis() as Millis).await;
    }
    // A message sent for a scheduled job becomes visible at its `runAt`: its age counts from there.
    match job.dispatched_at.map(|sent| sent.max(start)) {
        Some(visible) if now - visible < recheck => {
            report.rescheduled += 1;
            store.schedule_dispatch_check(&job.job_id, visible + recheck).await
        }
        _ => {
            dispatcher.dispatch(store, &job, now).await?;
            tracing::info!(job_id = %job.job_id, correlation_id = %due.correlation_id, first = job.dispatched_at.is_none(), run_at = job.run_at, "dispatched job");
            report.redispatched += 1;
            store.schedule_dispatch_check(&job.job_id, now.max(start) + recheck).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_delay_is_never_early_and_never_over_sqss_limit() {
        assert_eq!(delay_until(10_000, 10_000), std::time::Duration::ZERO);
        assert_eq!(delay_until(5_000, 10_000), std::time::Duration::ZERO);
        assert_eq!(delay_until(10_001, 10_000), std::time::Duration::from_secs(1));
        assert_eq!(delay_until(12_000, 10_000), std::time::Duration::from_secs(2));
        assert_eq!(delay_until(10_000 + 3_600_000, 10_000), MAX_MESSAGE_DELAY);
        assert!(within_message_delay(900_000, 0) && !within_message_delay(900_001, 0));
        assert!(sent_now(180_000, 0) && !sent_now(180_001, 0));
        // The sweep, a minute or two late, still sends within one message delay.
        assert!(SCHEDULE_LEAD + std::time::Duration::from_secs(120) <= MAX_MESSAGE_DELAY);
    }

    #[test]
    fn a_tenants_message_group_is_its_owner_or_a_stable_digest_of_it() {
        let sub = "6f1c2a9e-1b2c-4d5e-8f90-123456789abc";
        assert_eq!(tenant_group(sub), sub);
        assert_eq!(tenant_group(&"a".repeat(128)), "a".repeat(128));
        for awkward in ["", "with space", "ünïcode", &"a".repeat(129)] {
            let group = tenant_group(awkward);
            assert!(group.starts_with("sha256:") && group.len() == 71, "{awkward:?} gave {group}");
            assert_eq!(group, tenant_group(awkward), "stable");
        }
        assert_ne!(tenant_group("with space"), tenant_group("with  space"));
    }

    #[test]
    fn parses_job_messages_and_names_poison() {
        let id = JobId::new_random();
        let body = format!(r#"{{"jobId":"{id}"}}"#);
        assert_eq!(JobMessage::parse(Some(&body)), Ok(JobMessage { job_id: id }));
        type IsExpected = fn(&PoisonMessage) -> bool;
        let cases: [(Option<&str>, IsExpected); 5] = [
            (None, |e| matches!(e, PoisonMessage::NoBody)),
            (Some("not json"), |e| matches!(e, PoisonMessage::Unparseable(_))),
            (Some(r#"{"jobId":"nope"}"#), |e| matches!(e, PoisonMessage::BadJobId(_))),
            (Some(r#"{"jobId":42}"#), |e| matches!(e, PoisonMessage::BadJobId(_))),
            (Some("[]"), |e| matches!(e, PoisonMessage::BadJobId(_))),
        ];
        for (body, expected) in cases {
            let err = JobMessage::parse(body).unwrap_err();
            assert!(expected(&err), "{body:?} gave {err:?}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any message body, however malformed, is a job message or a named poison: never a panic.
        #[test]
        fn any_body_parses_or_is_poison(body in proptest::option::of(any::<String>())) {
            let _ = JobMessage::parse(body.as_deref());
        }

        #[test]
        fn json_shaped_bodies_parse_or_are_poison(id in "[0-9a-f-]{0,40}", extra in any::<bool>()) {
            let body = if extra { format!(r#"{{"jobId":"{id}","x":1}}"#) } else { format!(r#"{{"jobId":"{id}"}}"#) };
            let parsed = JobMessage::parse(Some(&body));
            prop_assert!(parsed.is_err() || JobId::parse(&id).is_some());
        }
    }
}
