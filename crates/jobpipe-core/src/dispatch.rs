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

use std::collections::HashMap;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::MessageAttributeValue;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::error::AwsError;
use crate::job::ErrorInfo;
use crate::job::{Job, JobId};
use crate::store::{ForceFailOutcome, JobStore, PendingDispatch};

/// SQS message attribute carrying the request's correlation id.
pub const CORRELATION_ID_ATTRIBUTE: &str = "correlationId";
/// SQS message attribute naming the job kind (for routing and metrics, never trusted for dispatch).
pub const KIND_ATTRIBUTE: &str = "kind";

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

    /// Sends the job's message. On a FIFO queue the job id is both group and deduplication id.
    pub async fn send(&self, job_id: &JobId, kind: &str, correlation_id: &str) -> Result<(), AwsError> {
        self.send_delayed(job_id, kind, correlation_id, std::time::Duration::ZERO).await
    }

    /// Sends the job's message, invisible for `delay` (at most 15 minutes; standard queues only).
    pub async fn send_delayed(
        &self,
        job_id: &JobId,
        kind: &str,
        correlation_id: &str,
        delay: std::time::Duration,
    ) -> Result<(), AwsError> {
        let queue_url = self.routes.queue_for(kind);
        let body = serde_json::to_string(&JobMessage { job_id: job_id.clone() }).expect("a job message serializes");
        let mut request = self
            .sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .message_attributes(CORRELATION_ID_ATTRIBUTE, string_attribute(correlation_id))
            .message_attributes(KIND_ATTRIBUTE, string_attribute(kind));
        if queue_url.ends_with(".fifo") {
            request = request.message_group_id(job_id.as_str()).message_deduplication_id(job_id.as_str());
        } else if !delay.is_zero() {
            request = request.delay_seconds(delay.as_secs().min(900) as i32);
        }
        request.send().await.map_err(|e| AwsError::from_sdk(format!("SendMessage (job {job_id})"), e))?;
        Ok(())
    }

    /// Sends the message and records that it was sent (`now`).
    pub async fn dispatch(
        &self,
        store: &JobStore,
        job_id: &JobId,
        kind: &str,
        correlation_id: &str,
        now: Millis,
    ) -> Result<(), AwsError> {
        self.send(job_id, kind, correlation_id).await?;
        store.confirm_dispatch(job_id, now).await
    }
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
pub async fn sweep_due(
    store: &JobStore,
    dispatcher: &Dispatcher,
    policy: DispatchPolicy,
    now: Millis,
    limit: usize,
) -> Result<SweepReport, AwsError> {
    let mut report = SweepReport::default();
    for due in store.due_for_dispatch(now, limit).await? {
        if let Err(error) = sweep_one(store, dispatcher, policy, now, &due, &mut report).await {
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
    if now - job.created_at >= policy.max_age.as_millis() as Millis {
        let info = ErrorInfo {
            code: "expired".into(),
            message: format!("not finished within {} s of being accepted", policy.max_age.as_secs()),
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
    match job.dispatched_at {
        Some(sent) if now - sent < recheck => {
            report.rescheduled += 1;
            store.schedule_dispatch_check(&job.job_id, sent + recheck).await
        }
        _ => {
            dispatcher.dispatch(store, &job.job_id, &due.kind, &due.correlation_id, now).await?;
            tracing::info!(job_id = %job.job_id, correlation_id = %due.correlation_id, first = job.dispatched_at.is_none(), "re-dispatched job");
            report.redispatched += 1;
            store.schedule_dispatch_check(&job.job_id, now + recheck).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
