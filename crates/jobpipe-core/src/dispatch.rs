//! Getting a job's message into SQS, and making sure it gets there even if the sender dies.
//!
//! The API writes the job with `dispatchDueAt` set (a sparse GSI), then sends the message, then removes
//! the mark. If the send fails or the function dies in between, the mark stays; the reconciler
//! (`sweep_pending`) re-sends every job whose mark is older than the grace period. A duplicate message is
//! harmless: the state machine runs a job once however often it is delivered.

use std::collections::HashMap;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::MessageAttributeValue;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::error::StoreError;
use crate::job::JobId;
use crate::store::JobStore;

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
    pub async fn send(&self, job_id: &JobId, kind: &str, correlation_id: &str) -> Result<(), StoreError> {
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
        }
        request.send().await.map_err(|e| StoreError::from_sdk(format!("SendMessage (job {job_id})"), e))?;
        Ok(())
    }

    /// Sends the message and clears the job's pending-dispatch mark.
    pub async fn dispatch(
        &self,
        store: &JobStore,
        job_id: &JobId,
        kind: &str,
        correlation_id: &str,
    ) -> Result<(), StoreError> {
        self.send(job_id, kind, correlation_id).await?;
        store.mark_dispatched(job_id).await
    }
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(if value.is_empty() { "-" } else { value })
        .build()
        .expect("data type is set")
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub redispatched: usize,
    pub failed: usize,
}

/// Re-sends every job whose message may not have reached SQS (see the module docs).
pub async fn sweep_pending(
    store: &JobStore,
    dispatcher: &Dispatcher,
    now: Millis,
    limit: usize,
) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    for pending in store.due_for_dispatch(now, limit).await? {
        match dispatcher.dispatch(store, &pending.job_id, &pending.kind, &pending.correlation_id).await {
            Ok(()) => {
                tracing::info!(job_id = %pending.job_id, correlation_id = %pending.correlation_id, "re-dispatched job");
                report.redispatched += 1;
            }
            Err(error) => {
                tracing::warn!(job_id = %pending.job_id, %error, "re-dispatch failed; next sweep retries");
                report.failed += 1;
            }
        }
    }
    Ok(report)
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
