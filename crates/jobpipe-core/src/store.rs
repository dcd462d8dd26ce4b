//! The jobs table and the job state machine: every transition is one conditional DynamoDB write.
//!
//! This is the only module that knows DynamoDB attribute names. Each method is a single request whose
//! condition states exactly when the transition is allowed; when the condition fails, the item as it was
//! (`ReturnValuesOnConditionCheckFailure::AllOld`) tells the caller why, without a second read.
//!
//! A write can take effect while its response is lost; the SDK then retries it, and the retry's condition
//! fails against the write itself. Every transition therefore recognises its own earlier write in the old
//! item (its lease token, or the `updatedAt` it wrote) and reports success, never a conflict it caused.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use base64::Engine as _;
use serde_json::Value;

use crate::clock::Millis;
use crate::error::AwsError;
use crate::job::{ErrorInfo, Job, JobId, JobStatus, Lease, Payload};

/// Attribute and index names of the jobs table (template.yaml declares the same).
pub mod attr {
    pub const JOB_ID: &str = "jobId";
    pub const OWNER: &str = "owner";
    pub const KIND: &str = "kind";
    pub const STATUS: &str = "status";
    pub const INPUT: &str = "input";
    pub const INPUT_REF: &str = "inputRef";
    pub const RESULT: &str = "result";
    pub const RESULT_REF: &str = "resultRef";
    pub const ERROR_CODE: &str = "errorCode";
    pub const ERROR_MESSAGE: &str = "errorMessage";
    pub const LAST_ERROR_CODE: &str = "lastErrorCode";
    pub const LAST_ERROR_MESSAGE: &str = "lastErrorMessage";
    pub const ATTEMPTS: &str = "attempts";
    pub const PROGRESS: &str = "progress";
    pub const CREATED_AT: &str = "createdAt";
    pub const STARTED_AT: &str = "startedAt";
    pub const COMPLETED_AT: &str = "completedAt";
    pub const UPDATED_AT: &str = "updatedAt";
    /// The lease of the worker holding a `processing` job; on a finished job, the token of the write that
    /// finished it (a retried write recognises itself by it).
    pub const LEASE_TOKEN: &str = "leaseToken";
    pub const LEASE_EXPIRES_AT: &str = "leaseExpiresAt";
    pub const IDEMPOTENCY_KEY: &str = "idempotencyKey";
    pub const REQUEST_HASH: &str = "requestHash";
    pub const CORRELATION_ID: &str = "correlationId";
    pub const DISPATCH_SHARD: &str = "dispatchShard";
    pub const DISPATCH_DUE_AT: &str = "dispatchDueAt";
    pub const DISPATCHED_AT: &str = "dispatchedAt";
    /// DynamoDB TTL attribute (epoch seconds): finished jobs expire.
    pub const EXPIRES_AT: &str = "expiresAt";

    /// GSI: owner (hash) + createdAt (range), for listing a caller's jobs newest first.
    pub const BY_OWNER_INDEX: &str = "byOwner";
    /// Sparse GSI: dispatchShard (hash) + dispatchDueAt (range): every unfinished job, by when the
    /// reconciler should next look at it.
    pub const PENDING_DISPATCH_INDEX: &str = "pendingDispatch";
}

/// How many partitions the pending-dispatch index is spread over, so it never becomes a hot key.
pub const DISPATCH_SHARDS: u32 = 8;

/// The outcome of creating a job.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    Created(Job),
    /// The idempotency key was used before with the same request: this is that job.
    Replayed(Job),
    /// The idempotency key was used before with a different request.
    KeyReused(Job),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// This delivery now holds the lease; `attempts` already counts this attempt.
    Claimed(Job),
    /// Completed, failed or cancelled before: nothing to run again.
    AlreadyFinished(Job),
    /// Another delivery holds a live lease until `expires_at`.
    HeldElsewhere {
        expires_at: Millis,
    },
    /// Every allowed attempt was used (earlier workers died): the job must be failed, not run.
    AttemptsExhausted(Job),
    NotFound,
}

/// The outcome of a lease holder finishing, failing or releasing a job.
#[derive(Debug, Clone, PartialEq)]
pub enum FenceOutcome {
    Done(Job),
    /// The lease was lost (expired and taken over, or the job finished elsewhere): nothing was written.
    LeaseLost(Option<Job>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    Cancelled(Job),
    NotCancellable(Job),
    NotFound,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ForceFailOutcome {
    Failed(Job),
    AlreadyFinished(Job),
    /// A worker holds a live lease; it will finish the job.
    LeaseLive,
    NotFound,
}

/// A job whose message may never have reached SQS.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingDispatch {
    pub job_id: JobId,
    pub kind: String,
    pub correlation_id: String,
}

/// A position in a caller's job list, opaque to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct PageToken {
    job_id: String,
    created_at: Millis,
}

impl PageToken {
    pub fn encode(&self) -> String {
        let json = serde_json::json!({ "j": self.job_id, "c": self.created_at });
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    }

    pub fn decode(token: &str) -> Option<PageToken> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        let json: Value = serde_json::from_slice(&bytes).ok()?;
        let job_id = JobId::parse(json.get("j")?.as_str()?)?;
        let created_at = json.get("c")?.as_i64()?;
        Some(PageToken { job_id: job_id.as_str().to_string(), created_at })
    }
}

#[derive(Debug, Clone)]
pub struct JobStore {
    client: Client,
    table: String,
    /// How long finished jobs are kept before DynamoDB TTL removes them.
    retention_secs: i64,
}

type Item = HashMap<String, AttributeValue>;

impl JobStore {
    pub fn new(client: Client, table: impl Into<String>, retention_secs: i64) -> Self {
        JobStore { client, table: table.into(), retention_secs }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Writes a new `queued` job unless its id exists. With an idempotency key the id is derived from
    /// the key, so a repeated request meets its earlier job here and is told apart by the request hash.
    pub async fn create(&self, job: &Job) -> Result<CreateOutcome, AwsError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(job)))
            .condition_expression("attribute_not_exists(#id)")
            .expression_attribute_names("#id", attr::JOB_ID)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(CreateOutcome::Created(job.clone())),
            Err(err) => {
                let old = err.as_service_error().and_then(|e| match e {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                        Some(c.item().cloned().unwrap_or_default())
                    }
                    _ => None,
                });
                match old {
                    // Exactly what this request writes: its own write, whose response was lost.
                    Some(item) if item == to_item(job) => Ok(CreateOutcome::Created(job.clone())),
                    Some(item) => {
                        let existing = from_item(&item)?;
                        if existing.owner == job.owner && existing.request_hash == job.request_hash {
                            Ok(CreateOutcome::Replayed(existing))
                        } else {
                            Ok(CreateOutcome::KeyReused(existing))
                        }
                    }
                    None => Err(AwsError::from_sdk("PutItem (create job)", err)),
                }
            }
        }
    }

    /// A strongly consistent read of one job.
    pub async fn get(&self, job_id: &JobId) -> Result<Option<Job>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::JOB_ID, s(job_id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem (job)", e))?;
        out.item().map(from_item).transpose()
    }

    /// The owner's jobs, newest first, optionally of one status.
    pub async fn list_by_owner(
        &self,
        owner: &str,
        status: Option<JobStatus>,
        limit: usize,
        start: Option<&PageToken>,
    ) -> Result<(Vec<Job>, Option<PageToken>), AwsError> {
        const MAX_PAGES: usize = 10;
        let mut jobs = Vec::new();
        let mut start_key = start.map(|t| {
            HashMap::from([
                (attr::JOB_ID.to_string(), s(&t.job_id)),
                (attr::OWNER.to_string(), s(owner)),
                (attr::CREATED_AT.to_string(), n(t.created_at)),
            ])
        });
        for _ in 0..MAX_PAGES {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(attr::BY_OWNER_INDEX)
                .key_condition_expression("#owner = :owner")
                .expression_attribute_names("#owner", attr::OWNER)
                .expression_attribute_values(":owner", s(owner))
                .scan_index_forward(false)
                .limit(limit as i32)
                .set_exclusive_start_key(start_key.take());
            if let Some(status) = status {
                query = query
                    .filter_expression("#status = :status")
                    .expression_attribute_names("#status", attr::STATUS)
                    .expression_attribute_values(":status", s(status.as_str()));
            }
            let out = query.send().await.map_err(|e| AwsError::from_sdk("Query (jobs by owner)", e))?;
            for item in out.items() {
                jobs.push(from_item(item)?);
                if jobs.len() == limit {
                    let last = &jobs[limit - 1];
                    let more = out.last_evaluated_key().is_some() || !std::ptr::eq(item, out.items().last().unwrap());
                    let token =
                        more.then(|| PageToken { job_id: last.job_id.as_str().into(), created_at: last.created_at });
                    return Ok((jobs, token));
                }
            }
            match out.last_evaluated_key() {
                Some(lek) => start_key = Some(lek.clone()),
                None => return Ok((jobs, None)),
            }
        }
        // A sparse filter scanned many pages without filling one: hand back where we stopped.
        let token = start_key.and_then(|k| {
            Some(PageToken {
                job_id: k.get(attr::JOB_ID)?.as_s().ok()?.clone(),
                created_at: k.get(attr::CREATED_AT)?.as_n().ok()?.parse().ok()?,
            })
        });
        Ok((jobs, token))
    }

    /// queued -> cancelled, only by the owner.
    pub async fn cancel(&self, job_id: &JobId, owner: &str, now: Millis) -> Result<CancelOutcome, AwsError> {
        let writer = uuid::Uuid::new_v4().to_string();
        let result = self
            .update(job_id)
            .condition_expression("#owner = :owner AND #status = :queued")
            .update_expression(
                "SET #status = :cancelled, leaseToken = :writer, completedAt = :now, updatedAt = :now, \
                 expiresAt = :ttl REMOVE dispatchShard, dispatchDueAt",
            )
            .expression_attribute_values(":writer", s(&writer))
            .expression_attribute_names("#owner", attr::OWNER)
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":queued", s(JobStatus::Queued.as_str()))
            .expression_attribute_values(":cancelled", s(JobStatus::Cancelled.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ttl", n(self.expires_at(now)))
            .send()
            .await;
        let own = finished_by(JobStatus::Cancelled, &writer);
        Ok(match conditional(result, "UpdateItem (cancel job)", own)? {
            Ok(job) => CancelOutcome::Cancelled(job),
            Err(Some(old)) if old.owner == owner => CancelOutcome::NotCancellable(old),
            Err(_) => CancelOutcome::NotFound,
        })
    }

    /// queued -> processing, or takes over a processing job whose lease expired. Increments `attempts`.
    pub async fn claim(
        &self,
        job_id: &JobId,
        lease: &Lease,
        max_attempts: u32,
        now: Millis,
    ) -> Result<ClaimOutcome, AwsError> {
        let result = self
            .update(job_id)
            .condition_expression(
                "attribute_exists(#id) AND attempts < :max AND \
                 (#status = :queued OR (#status = :processing AND leaseExpiresAt < :now))",
            )
            .update_expression(
                "SET #status = :processing, leaseToken = :token, leaseExpiresAt = :expires, \
                 attempts = attempts + :one, startedAt = if_not_exists(startedAt, :now), updatedAt = :now",
            )
            .expression_attribute_names("#id", attr::JOB_ID)
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_values(":max", n(max_attempts))
            .expression_attribute_values(":queued", s(JobStatus::Queued.as_str()))
            .expression_attribute_values(":processing", s(JobStatus::Processing.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":token", s(&lease.token))
            .expression_attribute_values(":expires", n(lease.expires_at))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        let own = |old: &Item| {
            has_s(old, attr::STATUS, JobStatus::Processing.as_str()) && has_s(old, attr::LEASE_TOKEN, &lease.token)
        };
        Ok(match conditional(result, "UpdateItem (claim job)", own)? {
            Ok(job) => ClaimOutcome::Claimed(job),
            Err(None) => ClaimOutcome::NotFound,
            Err(Some(old)) if old.status.is_terminal() => ClaimOutcome::AlreadyFinished(old),
            Err(Some(old)) => match &old.lease {
                Some(l) if old.status == JobStatus::Processing && l.expires_at >= now => {
                    ClaimOutcome::HeldElsewhere { expires_at: l.expires_at }
                }
                _ if old.attempts >= max_attempts => ClaimOutcome::AttemptsExhausted(old),
                // The item changed between our condition and its read-back, which a single request rules
                // out; treat it as held so the message is retried rather than dropped.
                _ => ClaimOutcome::HeldElsewhere { expires_at: now },
            },
        })
    }

    /// processing -> completed, only for the holder of `token`.
    pub async fn complete(
        &self,
        job_id: &JobId,
        token: &str,
        result: &Payload,
        now: Millis,
    ) -> Result<FenceOutcome, AwsError> {
        let (result_attr, result_value) = payload_attr(result, attr::RESULT, attr::RESULT_REF);
        // The lease token stays on the finished item: it is how a retried write recognises itself.
        let expression = "SET #status = :completed, #result = :result, progress = :hundred, completedAt = :now, \
                          updatedAt = :now, expiresAt = :ttl \
                          REMOVE leaseExpiresAt, lastErrorCode, lastErrorMessage, dispatchShard, dispatchDueAt";
        let result = self
            .fenced(job_id, token)
            .update_expression(expression)
            .expression_attribute_names("#result", result_attr)
            .expression_attribute_values(":completed", s(JobStatus::Completed.as_str()))
            .expression_attribute_values(":result", result_value)
            .expression_attribute_values(":hundred", n(100))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ttl", n(self.expires_at(now)))
            .send()
            .await;
        fence_outcome(conditional(result, "UpdateItem (complete job)", finished_by(JobStatus::Completed, token))?)
    }

    /// processing -> failed, only for the holder of `token`.
    pub async fn fail(
        &self,
        job_id: &JobId,
        token: &str,
        error: &ErrorInfo,
        now: Millis,
    ) -> Result<FenceOutcome, AwsError> {
        let result = self
            .fenced(job_id, token)
            .update_expression(
                "SET #status = :failed, errorCode = :code, errorMessage = :message, completedAt = :now, \
                 updatedAt = :now, expiresAt = :ttl \
                 REMOVE leaseExpiresAt, lastErrorCode, lastErrorMessage, dispatchShard, dispatchDueAt",
            )
            .expression_attribute_values(":failed", s(JobStatus::Failed.as_str()))
            .expression_attribute_values(":code", s(&error.code))
            .expression_attribute_values(":message", s(&error.message))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ttl", n(self.expires_at(now)))
            .send()
            .await;
        fence_outcome(conditional(result, "UpdateItem (fail job)", finished_by(JobStatus::Failed, token))?)
    }

    /// Gives the lease up after a retryable error: the job stays `processing`, records the error, and the
    /// next delivery may claim it at once. A released lease keeps its token with expiry 0, which no
    /// fenced write accepts.
    pub async fn release_for_retry(
        &self,
        job_id: &JobId,
        token: &str,
        error: &ErrorInfo,
        now: Millis,
    ) -> Result<FenceOutcome, AwsError> {
        self.release(job_id, token, error, now, false).await
    }

    /// Gives the lease up after the job was throttled (a quota said "not now"): like `release_for_retry`,
    /// and the attempt is given back, since nothing about the job failed.
    pub async fn release_throttled(
        &self,
        job_id: &JobId,
        token: &str,
        error: &ErrorInfo,
        now: Millis,
    ) -> Result<FenceOutcome, AwsError> {
        self.release(job_id, token, error, now, true).await
    }

    /// The lease holder releases its lease, recording `error`; `give_back_attempt` undoes its claim's count.
    async fn release(
        &self,
        job_id: &JobId,
        token: &str,
        error: &ErrorInfo,
        now: Millis,
        give_back_attempt: bool,
    ) -> Result<FenceOutcome, AwsError> {
        let refund = if give_back_attempt { ", attempts = attempts - :one" } else { "" };
        let mut update = self
            .fenced(job_id, token)
            .update_expression(format!(
                "SET lastErrorCode = :code, lastErrorMessage = :message, leaseExpiresAt = :released, \
                 updatedAt = :now{refund}"
            ))
            .expression_attribute_values(":code", s(&error.code))
            .expression_attribute_values(":message", s(&error.message))
            .expression_attribute_values(":now", n(now));
        if give_back_attempt {
            update = update.expression_attribute_values(":one", n(1));
        }
        let own = |old: &Item| {
            has_s(old, attr::STATUS, JobStatus::Processing.as_str())
                && has_s(old, attr::LEASE_TOKEN, token)
                && has_n(old, attr::LEASE_EXPIRES_AT, RELEASED)
        };
        fence_outcome(conditional(update.send().await, "UpdateItem (release job)", own)?)
    }

    /// Records progress (0-100) for the lease holder. Returns false when the lease is gone.
    pub async fn report_progress(
        &self,
        job_id: &JobId,
        token: &str,
        progress: u8,
        now: Millis,
    ) -> Result<bool, AwsError> {
        let result = self
            .fenced(job_id, token)
            .update_expression("SET progress = :progress, updatedAt = :now")
            .expression_attribute_values(":progress", n(progress.min(100)))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        let own = |old: &Item| {
            has_s(old, attr::STATUS, JobStatus::Processing.as_str())
                && has_s(old, attr::LEASE_TOKEN, token)
                && has_n(old, attr::PROGRESS, progress.min(100))
        };
        Ok(conditional(result, "UpdateItem (job progress)", own)?.is_ok())
    }

    /// Fails a job that is not finished and that no worker holds a live lease on: used when its message
    /// was dead-lettered or its attempts ran out while workers died.
    pub async fn force_fail(
        &self,
        job_id: &JobId,
        error: &ErrorInfo,
        now: Millis,
    ) -> Result<ForceFailOutcome, AwsError> {
        let writer = uuid::Uuid::new_v4().to_string();
        let result = self
            .update(job_id)
            .condition_expression(
                "#status IN (:queued, :processing) AND (attribute_not_exists(leaseExpiresAt) OR leaseExpiresAt < :now)",
            )
            .update_expression(
                "SET #status = :failed, leaseToken = :writer, errorCode = :code, errorMessage = :message, \
                 completedAt = :now, updatedAt = :now, expiresAt = :ttl \
                 REMOVE leaseExpiresAt, dispatchShard, dispatchDueAt, lastErrorCode, lastErrorMessage",
            )
            .expression_attribute_values(":writer", s(&writer))
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_values(":queued", s(JobStatus::Queued.as_str()))
            .expression_attribute_values(":processing", s(JobStatus::Processing.as_str()))
            .expression_attribute_values(":failed", s(JobStatus::Failed.as_str()))
            .expression_attribute_values(":code", s(&error.code))
            .expression_attribute_values(":message", s(&error.message))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ttl", n(self.expires_at(now)))
            .send()
            .await;
        Ok(match conditional(result, "UpdateItem (force-fail job)", finished_by(JobStatus::Failed, &writer))? {
            Ok(job) => ForceFailOutcome::Failed(job),
            Err(None) => ForceFailOutcome::NotFound,
            Err(Some(old)) if old.status.is_terminal() => ForceFailOutcome::AlreadyFinished(old),
            Err(Some(_)) => ForceFailOutcome::LeaseLive,
        })
    }

    /// The job's message is in SQS as of `now`. Only `dispatchedAt` changes, which the pending-dispatch
    /// index does not project: no index write. A finished job is left alone.
    pub async fn confirm_dispatch(&self, job_id: &JobId, now: Millis) -> Result<(), AwsError> {
        let result = self
            .unfinished(job_id)
            .update_expression("SET dispatchedAt = :now")
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::None)
            .send()
            .await;
        // A condition failure means the job finished or is gone: nothing left to dispatch.
        conditional(result, "UpdateItem (confirm dispatch)", |_| false).map(|_| ())
    }

    /// When the reconciler should next look at this unfinished job (its place in the pending-dispatch
    /// index). A finished job is left alone.
    pub async fn schedule_dispatch_check(&self, job_id: &JobId, due: Millis) -> Result<(), AwsError> {
        let result = self
            .unfinished(job_id)
            .update_expression("SET dispatchShard = :shard, dispatchDueAt = :due")
            .expression_attribute_values(":shard", s(shard_of(job_id)))
            .expression_attribute_values(":due", n(due))
            .return_values(ReturnValue::None)
            .send()
            .await;
        conditional(result, "UpdateItem (schedule dispatch check)", |_| false).map(|_| ())
    }

    /// Takes a finished job out of the pending-dispatch index (a mark left by an older version).
    pub async fn clear_dispatch_check(&self, job_id: &JobId) -> Result<(), AwsError> {
        let result = self
            .update(job_id)
            .condition_expression("attribute_exists(#id)")
            .expression_attribute_names("#id", attr::JOB_ID)
            .update_expression("REMOVE dispatchShard, dispatchDueAt")
            .return_values(ReturnValue::None)
            .send()
            .await;
        conditional(result, "UpdateItem (clear dispatch check)", |_| false).map(|_| ())
    }

    /// An update of a job that exists and has not finished.
    fn unfinished(&self, job_id: &JobId) -> UpdateItemFluentBuilder {
        self.update(job_id)
            .condition_expression("attribute_exists(#id) AND #status IN (:queued, :processing)")
            .expression_attribute_names("#id", attr::JOB_ID)
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_values(":queued", s(JobStatus::Queued.as_str()))
            .expression_attribute_values(":processing", s(JobStatus::Processing.as_str()))
    }

    /// Unfinished jobs the reconciler should look at by `now` (their dispatch check is due).
    pub async fn due_for_dispatch(&self, now: Millis, limit: usize) -> Result<Vec<PendingDispatch>, AwsError> {
        let mut due = Vec::new();
        for shard in 0..DISPATCH_SHARDS {
            let mut start_key = None;
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(attr::PENDING_DISPATCH_INDEX)
                    .key_condition_expression("dispatchShard = :shard AND dispatchDueAt <= :now")
                    .expression_attribute_values(":shard", s(shard_name(shard)))
                    .expression_attribute_values(":now", n(now))
                    .set_exclusive_start_key(start_key.take())
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("Query (pending dispatch)", e))?;
                for item in out.items() {
                    if due.len() == limit {
                        return Ok(due);
                    }
                    due.push(PendingDispatch {
                        job_id: JobId::parse(&get_s(item, attr::JOB_ID)?)
                            .ok_or_else(|| AwsError::corrupt("pending dispatch", "job id is not a UUID"))?,
                        kind: get_s(item, attr::KIND)?,
                        correlation_id: get_s(item, attr::CORRELATION_ID).unwrap_or_default(),
                    });
                }
                match out.last_evaluated_key() {
                    Some(lek) => start_key = Some(lek.clone()),
                    None => break,
                }
            }
        }
        Ok(due)
    }

    fn expires_at(&self, now: Millis) -> i64 {
        now / 1000 + self.retention_secs
    }

    fn update(&self, job_id: &JobId) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(attr::JOB_ID, s(job_id.as_str()))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }

    /// An update that only the current lease holder may make (a released lease holds nothing).
    fn fenced(&self, job_id: &JobId, token: &str) -> UpdateItemFluentBuilder {
        self.update(job_id)
            .condition_expression("#status = :processing AND leaseToken = :token AND leaseExpiresAt > :released")
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_values(":processing", s(JobStatus::Processing.as_str()))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":released", n(RELEASED))
    }
}

/// Turns an UpdateItem result into `Ok(new job)` or, when the condition failed, `Err(old job if any)`.
/// A failed condition whose old item `own` recognises as this very write (it took effect, its response
/// was lost, and the SDK's retry met it) is the write's success.
fn conditional(
    result: Result<UpdateItemOutput, SdkError<UpdateItemError, HttpResponse>>,
    operation: &str,
    own: impl Fn(&Item) -> bool,
) -> Result<Result<Job, Option<Job>>, AwsError> {
    match result {
        Ok(out) => match out.attributes() {
            Some(item) if !item.is_empty() => Ok(Ok(from_item(item)?)),
            _ => Ok(Err(None)),
        },
        Err(err) => match err.as_service_error() {
            Some(UpdateItemError::ConditionalCheckFailedException(c)) => match c.item() {
                Some(item) if !item.is_empty() && own(item) => {
                    tracing::info!(operation, "a retried write found its own earlier write: done");
                    Ok(Ok(from_item(item)?))
                }
                Some(item) if !item.is_empty() => Ok(Err(Some(from_item(item)?))),
                _ => Ok(Err(None)),
            },
            _ => Err(AwsError::from_sdk(operation, err)),
        },
    }
}

/// The `leaseExpiresAt` of a released lease: no fenced write accepts it, and any claim may take the job.
const RELEASED: Millis = 0;

/// Recognises a finishing write by its token (a lease holder's, or a cancel's or force-fail's own): the
/// job in `status`, carrying the token.
fn finished_by(status: JobStatus, token: &str) -> impl Fn(&Item) -> bool + '_ {
    move |old| has_s(old, attr::STATUS, status.as_str()) && has_s(old, attr::LEASE_TOKEN, token)
}

fn has_s(item: &Item, name: &str, value: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::S(v)) if v == value)
}

fn has_n(item: &Item, name: &str, value: impl Into<i64>) -> bool {
    let value = value.into();
    matches!(item.get(name), Some(AttributeValue::N(v)) if v.parse::<i64>().ok() == Some(value))
}

fn fence_outcome(result: Result<Job, Option<Job>>) -> Result<FenceOutcome, AwsError> {
    Ok(match result {
        Ok(job) => FenceOutcome::Done(job),
        Err(old) => FenceOutcome::LeaseLost(old),
    })
}

pub fn shard_name(shard: u32) -> String {
    format!("s{shard}")
}

/// The pending-dispatch shard of a job: a stable hash of its id.
pub fn shard_of(job_id: &JobId) -> String {
    let hash = job_id.as_str().bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    shard_name(hash % DISPATCH_SHARDS)
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn payload_attr(payload: &Payload, inline: &'static str, reference: &'static str) -> (&'static str, AttributeValue) {
    match payload {
        Payload::Inline(value) => (inline, s(value.to_string())),
        Payload::S3 { key } => (reference, s(key)),
    }
}

fn to_item(job: &Job) -> Item {
    let mut item = Item::new();
    let mut put = |k: &str, v: AttributeValue| {
        item.insert(k.to_string(), v);
    };
    put(attr::JOB_ID, s(job.job_id.as_str()));
    put(attr::OWNER, s(&job.owner));
    put(attr::KIND, s(&job.kind));
    put(attr::STATUS, s(job.status.as_str()));
    let (name, value) = payload_attr(&job.input, attr::INPUT, attr::INPUT_REF);
    put(name, value);
    if let Some(result) = &job.result {
        let (name, value) = payload_attr(result, attr::RESULT, attr::RESULT_REF);
        put(name, value);
    }
    if let Some(e) = &job.error {
        put(attr::ERROR_CODE, s(&e.code));
        put(attr::ERROR_MESSAGE, s(&e.message));
    }
    if let Some(e) = &job.last_error {
        put(attr::LAST_ERROR_CODE, s(&e.code));
        put(attr::LAST_ERROR_MESSAGE, s(&e.message));
    }
    put(attr::ATTEMPTS, n(job.attempts));
    put(attr::PROGRESS, n(job.progress));
    put(attr::CREATED_AT, n(job.created_at));
    if let Some(t) = job.started_at {
        put(attr::STARTED_AT, n(t));
    }
    if let Some(t) = job.completed_at {
        put(attr::COMPLETED_AT, n(t));
    }
    put(attr::UPDATED_AT, n(job.updated_at));
    if let Some(lease) = &job.lease {
        put(attr::LEASE_TOKEN, s(&lease.token));
        put(attr::LEASE_EXPIRES_AT, n(lease.expires_at));
    }
    if let Some(key) = &job.idempotency_key {
        put(attr::IDEMPOTENCY_KEY, s(key));
    }
    put(attr::REQUEST_HASH, s(&job.request_hash));
    put(attr::CORRELATION_ID, s(&job.correlation_id));
    if let Some(due) = job.dispatch_due_at {
        put(attr::DISPATCH_SHARD, s(shard_of(&job.job_id)));
        put(attr::DISPATCH_DUE_AT, n(due));
    }
    if let Some(at) = job.dispatched_at {
        put(attr::DISPATCHED_AT, n(at));
    }
    item
}

/// Reads a job from a DynamoDB stream image (`NewImage`/`OldImage`, in DynamoDB JSON).
pub fn job_from_stream_image(image: &Value) -> Result<Job, AwsError> {
    let Value::Object(fields) = image else {
        return Err(AwsError::corrupt("reading stream image", "image is not an object"));
    };
    let item = fields
        .iter()
        .map(|(name, value)| Ok((name.clone(), attribute_from_json(value)?)))
        .collect::<Result<Item, AwsError>>()?;
    from_item(&item)
}

/// One attribute in DynamoDB JSON (`{"S": "x"}`, `{"N": "1"}`, `{"M": {...}}`, ...).
fn attribute_from_json(value: &Value) -> Result<AttributeValue, AwsError> {
    let bad = || AwsError::corrupt("reading stream image", format!("not a DynamoDB attribute: {value}"));
    let Some((tag, inner)) = value.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
        return Err(bad());
    };
    let strings = |v: &Value| -> Result<Vec<String>, AwsError> {
        v.as_array().ok_or_else(bad)?.iter().map(|s| s.as_str().map(String::from).ok_or_else(bad)).collect()
    };
    Ok(match tag.as_str() {
        "S" => AttributeValue::S(inner.as_str().ok_or_else(bad)?.to_string()),
        "N" => AttributeValue::N(inner.as_str().ok_or_else(bad)?.to_string()),
        "BOOL" => AttributeValue::Bool(inner.as_bool().ok_or_else(bad)?),
        "NULL" => AttributeValue::Null(true),
        "SS" => AttributeValue::Ss(strings(inner)?),
        "NS" => AttributeValue::Ns(strings(inner)?),
        "L" => AttributeValue::L(
            inner.as_array().ok_or_else(bad)?.iter().map(attribute_from_json).collect::<Result<_, _>>()?,
        ),
        "M" => AttributeValue::M(
            inner
                .as_object()
                .ok_or_else(bad)?
                .iter()
                .map(|(k, v)| Ok((k.clone(), attribute_from_json(v)?)))
                .collect::<Result<_, AwsError>>()?,
        ),
        "B" => {
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(inner.as_str().ok_or_else(bad)?).map_err(|_| bad())?;
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(bytes))
        }
        _ => return Err(bad()),
    })
}

fn get_s(item: &Item, name: &str) -> Result<String, AwsError> {
    opt_s(item, name)?.ok_or_else(|| AwsError::corrupt("reading job item", format!("attribute {name} missing")))
}

fn opt_s(item: &Item, name: &str) -> Result<Option<String>, AwsError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(AwsError::corrupt("reading job item", format!("attribute {name} is not a string"))),
    }
}

fn opt_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, AwsError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| AwsError::corrupt("reading job item", format!("attribute {name} is not a valid number"))),
        Some(_) => Err(AwsError::corrupt("reading job item", format!("attribute {name} is not a number"))),
    }
}

fn opt_payload(item: &Item, inline: &str, reference: &str) -> Result<Option<Payload>, AwsError> {
    if let Some(text) = opt_s(item, inline)? {
        let value = serde_json::from_str(&text)
            .map_err(|e| AwsError::corrupt("reading job item", format!("attribute {inline} is not JSON: {e}")))?;
        return Ok(Some(Payload::Inline(value)));
    }
    Ok(opt_s(item, reference)?.map(|key| Payload::S3 { key }))
}

fn opt_error(item: &Item, code: &str, message: &str) -> Result<Option<ErrorInfo>, AwsError> {
    Ok(match opt_s(item, code)? {
        Some(code) => Some(ErrorInfo { code, message: opt_s(item, message)?.unwrap_or_default() }),
        None => None,
    })
}

fn from_item(item: &Item) -> Result<Job, AwsError> {
    let job_id = get_s(item, attr::JOB_ID)?;
    let status = get_s(item, attr::STATUS)?;
    let status = JobStatus::parse(&status)
        .ok_or_else(|| AwsError::corrupt("reading job item", format!("unknown status {status:?}")))?;
    // A finished job keeps its last lease's token (see `complete`), but holds no lease.
    let lease = match (opt_s(item, attr::LEASE_TOKEN)?, opt_n(item, attr::LEASE_EXPIRES_AT)?) {
        _ if status.is_terminal() => None,
        (Some(token), Some(expires_at)) => Some(Lease { token, expires_at }),
        // A lease released before tokens were kept: only its (past) expiry.
        (None, Some(expires_at)) => Some(Lease { token: String::new(), expires_at }),
        _ => None,
    };
    Ok(Job {
        job_id: JobId::parse(&job_id)
            .ok_or_else(|| AwsError::corrupt("reading job item", format!("job id {job_id:?} is not a UUID")))?,
        owner: get_s(item, attr::OWNER)?,
        kind: get_s(item, attr::KIND)?,
        status,
        input: opt_payload(item, attr::INPUT, attr::INPUT_REF)?.unwrap_or(Payload::Inline(Value::Null)),
        result: opt_payload(item, attr::RESULT, attr::RESULT_REF)?,
        error: opt_error(item, attr::ERROR_CODE, attr::ERROR_MESSAGE)?,
        last_error: opt_error(item, attr::LAST_ERROR_CODE, attr::LAST_ERROR_MESSAGE)?,
        attempts: opt_n(item, attr::ATTEMPTS)?.unwrap_or(0),
        progress: opt_n(item, attr::PROGRESS)?.unwrap_or(0),
        created_at: opt_n(item, attr::CREATED_AT)?.unwrap_or(0),
        started_at: opt_n(item, attr::STARTED_AT)?,
        completed_at: opt_n(item, attr::COMPLETED_AT)?,
        updated_at: opt_n(item, attr::UPDATED_AT)?.unwrap_or(0),
        lease,
        idempotency_key: opt_s(item, attr::IDEMPOTENCY_KEY)?,
        request_hash: opt_s(item, attr::REQUEST_HASH)?.unwrap_or_default(),
        correlation_id: opt_s(item, attr::CORRELATION_ID)?.unwrap_or_default(),
        dispatch_due_at: opt_n(item, attr::DISPATCH_DUE_AT)?,
        dispatched_at: opt_n(item, attr::DISPATCHED_AT)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let token = PageToken { job_id: JobId::new_random().as_str().into(), created_at: 1_700_000_000_123 };
        assert_eq!(PageToken::decode(&token.encode()), Some(token));
        for bad in
            ["", "!!!", "eyJ4IjoxfQ", &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("{\"j\":\"x\",\"c\":1}")]
        {
            assert_eq!(PageToken::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn stream_images_read_as_jobs() {
        let id = JobId::new_random();
        let image = serde_json::json!({
            "jobId": {"S": id.as_str()}, "owner": {"S": "alice"}, "kind": {"S": "echo"},
            "status": {"S": "completed"}, "input": {"S": "{\"a\":1}"}, "result": {"S": "{\"a\":1}"},
            "attempts": {"N": "1"}, "progress": {"N": "100"}, "createdAt": {"N": "1"}, "updatedAt": {"N": "2"},
            "extra": {"M": {"l": {"L": [{"BOOL": true}, {"NULL": true}, {"SS": ["x"]}, {"B": "AAE="}]}}}
        });
        let job = job_from_stream_image(&image).unwrap();
        assert_eq!((job.job_id, job.status, job.progress), (id, JobStatus::Completed, 100));
        assert_eq!(job.result, Some(Payload::Inline(serde_json::json!({"a": 1}))));
        for bad in [serde_json::json!([]), serde_json::json!({"jobId": {"Q": "x"}}), serde_json::json!({"jobId": "x"})]
        {
            assert!(job_from_stream_image(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn items_round_trip() {
        let job = Job {
            job_id: JobId::new_random(),
            owner: "alice".into(),
            kind: "echo".into(),
            status: JobStatus::Processing,
            input: Payload::Inline(serde_json::json!({"a": [1, 2]})),
            result: Some(Payload::S3 { key: "results/x/result.json".into() }),
            error: None,
            last_error: Some(ErrorInfo { code: "boom".into(), message: "went wrong".into() }),
            attempts: 2,
            progress: 40,
            created_at: 1,
            started_at: Some(2),
            completed_at: None,
            updated_at: 3,
            lease: Some(Lease { token: "t".into(), expires_at: 9 }),
            idempotency_key: Some("k".into()),
            request_hash: "h".into(),
            correlation_id: "c".into(),
            dispatch_due_at: Some(5),
            dispatched_at: Some(4),
        };
        assert_eq!(from_item(&to_item(&job)).unwrap(), job);
        assert!(to_item(&job).contains_key(attr::DISPATCH_SHARD));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Stream images from outside are read into a job or refused with an error: never a panic.
        #[test]
        fn any_stream_image_reads_or_errors(image in json_value()) {
            let _ = job_from_stream_image(&image);
        }

        #[test]
        fn any_page_token_decodes_or_is_refused(token in ".{0,80}") {
            let _ = PageToken::decode(&token);
        }
    }
}
