//! The job model: identity, status, the outcome of a run, and what the HTTP API answers (`JobView`,
//! `JobPage`), which clients can read back typed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::{Millis, to_rfc3339};
use crate::webhooks::WebhookDelivery;

/// A job's id: a UUID (v7 for fresh jobs, v5 of owner and idempotency key for keyed ones).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, format = "uuid"))]
pub struct JobId(String);

/// Namespace for ids derived from an idempotency key, so equal keys of different owners never collide.
const IDEMPOTENCY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a0b_7c1e_2f4d_4e8a_9b3c_5d6e_7f80_9a1b);

impl JobId {
    pub fn new_random() -> Self {
        JobId(uuid::Uuid::now_v7().to_string())
    }

    /// The same owner and key always name the same job: that is what makes `Idempotency-Key` one write.
    pub fn from_idempotency_key(owner: &str, key: &str) -> Self {
        let name = format!("{owner}\u{0}{key}");
        JobId(uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string())
    }

    /// The id of a batch's `index`-th job: derived, so a batch's jobs are found from its id alone, and a
    /// batch submitted again names the same jobs.
    pub fn in_batch(batch_id: &JobId, index: u32) -> Self {
        let name = format!("batch {batch_id} {index}");
        JobId(uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string())
    }

    /// Accepts only canonical UUID text, so a path segment can never smuggle anything into a key.
    pub fn parse(s: &str) -> Option<Self> {
        let uuid = uuid::Uuid::try_parse(s).ok()?;
        let canonical = uuid.hyphenated().to_string();
        (canonical == s).then_some(JobId(canonical))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum JobStatus {
    /// Accepted to start at its `runAt`, not before; cancellable until it starts.
    Scheduled,
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Scheduled,
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        JobStatus::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }

    /// Whether its owner may still cancel it: it has not started.
    pub fn is_cancellable(self) -> bool {
        matches!(self, JobStatus::Scheduled | JobStatus::Queued)
    }

    /// The statuses, comma separated, for error messages.
    pub fn names() -> String {
        JobStatus::ALL.map(JobStatus::as_str).join(", ")
    }
}

/// Why a job failed (or, while it retries, why its last attempt failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

/// The error a job kind returns, classified: a retryable one is retried with backoff, a permanent one
/// fails the job at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    /// A quota said "not now" (Bedrock throttling): the job is retried after the quota window without
    /// spending an attempt, since nothing about the job failed.
    pub throttled: bool,
}

impl JobError {
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobError { code: code.into(), message: message.into(), retryable: false, throttled: false }
    }

    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobError { code: code.into(), message: message.into(), retryable: true, throttled: false }
    }

    pub fn throttled(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobError { code: code.into(), message: message.into(), retryable: true, throttled: true }
    }

    pub fn info(&self) -> ErrorInfo {
        ErrorInfo { code: self.code.clone(), message: self.message.clone() }
    }
}

/// A JSON document stored either in the job item or, when large, as an S3 object.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Inline(Value),
    S3 { key: String },
}

/// The processing claim one delivery holds: only the holder of `token` may finish the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
    pub expires_at: Millis,
}

/// A job as stored. Only `store` turns it into DynamoDB attributes and back.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub job_id: JobId,
    pub owner: String,
    pub kind: String,
    pub status: JobStatus,
    pub input: Payload,
    pub result: Option<Payload>,
    pub error: Option<ErrorInfo>,
    /// The error of the last failed attempt while the job is being retried.
    pub last_error: Option<ErrorInfo>,
    pub attempts: u32,
    pub progress: u8,
    pub created_at: Millis,
    /// When a scheduled job may start (`None`: as soon as it is accepted).
    pub run_at: Option<Millis>,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub updated_at: Millis,
    pub lease: Option<Lease>,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub correlation_id: String,
    /// When the reconciler next looks at the job, while it has not finished (see `dispatch`).
    pub dispatch_due_at: Option<Millis>,
    /// When its message was last known to be in SQS; `None` until the first send succeeded.
    pub dispatched_at: Option<Millis>,
    /// Where to deliver the job's end (`callback.url` at submission), signed (see `webhooks`).
    pub callback_url: Option<String>,
    /// How the deliveries of the job's end went, one per target, ordered by target.
    pub webhooks: Vec<WebhookDelivery>,
    /// The batch the job was submitted in, if any.
    pub batch: Option<BatchRef>,
}

/// A job's place in its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRef {
    pub batch_id: JobId,
    pub index: u32,
    /// How many jobs the batch has.
    pub size: u32,
}

impl Job {
    /// When the job may start: its `runAt`, or its acceptance.
    pub fn start_after(&self) -> Millis {
        self.run_at.map_or(self.created_at, |at| at.max(self.created_at))
    }

    pub fn duration_ms(&self) -> Option<i64> {
        Some(self.completed_at? - self.started_at?)
    }

    /// `{"type":"job", ...}`: the job's live state as pushed over the WebSocket. A result stored in S3 is
    /// left out (`null`); clients fetch it with `GET /jobs/{id}` (a push must stay small: API Gateway
    /// frames are at most 32 KB).
    pub fn status_message(&self) -> Value {
        let mut message = serde_json::to_value(self.update()).unwrap_or_default();
        message["type"] = Value::from("job");
        message
    }

    /// The job's live state, as a push carries it.
    pub fn update(&self) -> JobUpdate {
        let result = match &self.result {
            Some(Payload::Inline(value)) => value.clone(),
            _ => Value::Null,
        };
        JobUpdate {
            job_id: self.job_id.clone(),
            status: self.status,
            progress: self.progress,
            result,
            error: self.error.clone(),
            attempts: self.attempts,
            duration_ms: self.duration_ms(),
            updated_at: to_rfc3339(self.updated_at),
        }
    }

    /// The API's view. Payloads stored in S3 must be resolved by the caller first (see `payload`).
    pub fn view(&self, input: Value, result: Option<Value>) -> JobView {
        JobView {
            job_id: self.job_id.clone(),
            kind: self.kind.clone(),
            status: self.status,
            input,
            result,
            error: self.error.clone(),
            attempts: self.attempts,
            progress: self.progress,
            created_at: to_rfc3339(self.created_at),
            run_at: self.run_at.map(to_rfc3339),
            started_at: self.started_at.map(to_rfc3339),
            completed_at: self.completed_at.map(to_rfc3339),
            updated_at: to_rfc3339(self.updated_at),
            duration_ms: self.duration_ms(),
            callback: self.callback_url.clone().map(|url| Callback { url }),
            batch_id: self.batch.as_ref().map(|batch| batch.batch_id.clone()),
            webhooks: self.webhooks.clone(),
            omitted: Vec::new(),
        }
    }
}

/// What `GET /jobs/{id}` answers. Internal fields (owner, lease, hashes) never appear here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    pub job_id: JobId,
    pub kind: String,
    pub status: JobStatus,
    /// The input as submitted (`null` once the bucket's lifecycle rule removed a large one).
    pub input: Value,
    /// What the job produced, once completed. A result file comes with a short-lived `url`.
    pub result: Option<Value>,
    /// Why the job failed, or why its last attempt failed while it is retried.
    pub error: Option<ErrorInfo>,
    pub attempts: u32,
    /// 0 to 100, as reported by the running job.
    #[cfg_attr(feature = "openapi", schema(maximum = 100))]
    pub progress: u8,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    /// When a scheduled job starts, not before (`runAt` or `delaySeconds` at submission); absent for a
    /// job that starts as soon as it is accepted.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub started_at: Option<String>,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub completed_at: Option<String>,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
    pub duration_ms: Option<i64>,
    /// Where the job's end is delivered, as submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
    /// The batch the job was submitted in (`POST /batches`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<JobId>,
    /// How the webhook deliveries of the job's end went: its callback's and each endpoint's, once tried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookDelivery>,
    /// Fields shown as `null` here because they are stored apart (inputs and results over 16 KiB): list
    /// pages never carry them; `GET /jobs/{jobId}` does. Absent when nothing was left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<String>,
}

/// A job's callback: the URL its end is delivered to, signed like every webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Callback {
    #[cfg_attr(feature = "openapi", schema(max_length = 2048))]
    pub url: String,
}

/// A job's live state as the WebSocket API sends it: the fields of a `{"type":"job", ...}` push (and of the
/// `job` a `subscribed` answer carries). `result` is `null` when it is stored apart; read the job for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobUpdate {
    pub job_id: JobId,
    pub status: JobStatus,
    pub progress: u8,
    pub result: Value,
    pub error: Option<ErrorInfo>,
    pub attempts: u32,
    pub duration_ms: Option<i64>,
    pub updated_at: String,
}

/// A page of `GET /jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `nextToken` for the next page; `null` on the last one.
    pub next_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_ids_are_stable_and_owner_scoped() {
        let a = JobId::from_idempotency_key("alice", "k1");
        assert_eq!(a, JobId::from_idempotency_key("alice", "k1"));
        assert_ne!(a, JobId::from_idempotency_key("bob", "k1"));
        assert_ne!(a, JobId::from_idempotency_key("alice", "k2"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(JobId::from_idempotency_key("ab", "c"), JobId::from_idempotency_key("a", "bc"));
    }

    #[test]
    fn only_canonical_uuids_parse() {
        let id = JobId::new_random();
        assert_eq!(JobId::parse(id.as_str()), Some(id.clone()));
        for bad in ["", "abc", "../x", &id.as_str().to_uppercase(), &id.as_str().replace('-', "")] {
            assert_eq!(JobId::parse(bad), None, "{bad}");
        }
    }

    /// What the API answers reads back as what it sent, so a client can read its answers typed.
    #[test]
    fn views_and_pages_read_back_as_they_were_written() {
        let finished = JobView {
            job_id: JobId::new_random(),
            kind: "image".into(),
            status: JobStatus::Failed,
            input: serde_json::json!({"prompt": "a kite", "width": 512}),
            result: Some(serde_json::json!({"key": "results/x/image.png", "url": "https://example.com/x"})),
            error: Some(ErrorInfo { code: "prompt_blocked".into(), message: "change the prompt".into() }),
            attempts: 2,
            progress: 40,
            created_at: "2026-01-02T03:04:05.006Z".into(),
            run_at: Some("2026-01-02T03:04:06.000Z".into()),
            started_at: Some("2026-01-02T03:04:06.000Z".into()),
            completed_at: Some("2026-01-02T03:04:07.000Z".into()),
            updated_at: "2026-01-02T03:04:07.000Z".into(),
            duration_ms: Some(1000),
            callback: Some(Callback { url: "https://example.com/hook".into() }),
            batch_id: Some(JobId::new_random()),
            webhooks: vec![WebhookDelivery {
                target: "callback".into(),
                event: crate::webhooks::WebhookEvent::JobFailed,
                url: "https://example.com/hook".into(),
                state: crate::webhooks::DeliveryState::Retrying,
                attempts: 2,
                last_status: Some(503),
                last_error: Some("the receiver answered 503".into()),
                next_attempt_at: Some(5),
                updated_at: 4,
            }],
            omitted: vec!["input".into()],
        };
        let queued = JobView {
            status: JobStatus::Queued,
            input: Value::Null,
            run_at: None,
            result: None,
            error: None,
            started_at: None,
            completed_at: None,
            duration_ms: None,
            callback: None,
            batch_id: None,
            webhooks: Vec::new(),
            omitted: Vec::new(),
            ..finished.clone()
        };
        for view in [&finished, &queued] {
            let json = serde_json::to_string(view).unwrap();
            assert_eq!(&serde_json::from_str::<JobView>(&json).unwrap(), view, "{json}");
        }
        for page in [
            JobPage { jobs: vec![finished, queued], next_token: Some("eyJqIjoiYSJ9".into()) },
            JobPage { jobs: Vec::new(), next_token: None },
        ] {
            let json = serde_json::to_string(&page).unwrap();
            assert_eq!(serde_json::from_str::<JobPage>(&json).unwrap(), page, "{json}");
        }
    }

    #[test]
    fn statuses_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("done"), None);
    }
}
