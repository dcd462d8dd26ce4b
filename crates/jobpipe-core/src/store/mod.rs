//! The jobs table and the job state machine: every transition is one conditional DynamoDB write.
//!
//! This is the only module that knows DynamoDB attribute names (`attr`). Each method is a single request
//! whose condition states exactly when the transition is allowed; when the condition fails, the item as
//! it was (`ReturnValuesOnConditionCheckFailure::AllOld`) tells the caller why, without a second read.
//!
//! A write can take effect while its response is lost; the SDK then retries it, and the retry's condition
//! fails against the write itself. Every transition therefore recognises its own earlier write in the old
//! item (its lease token, or the `updatedAt` it wrote) and reports success, never a conflict it caused.
//!
//! The transitions are here; `item` is the codec between `Job` and the item, `update` writes update
//! expressions from `attr` names, `paging` lists a caller's jobs, `pending` keeps the
//! pending-dispatch index, and `batches` records a batch's progress as its jobs end.

pub mod attr;
mod batches;
mod item;
mod paging;
mod pending;
mod update;

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::clock::Millis;
use crate::error::AwsError;
use crate::job::{ErrorInfo, Job, JobId, JobStatus, Lease, Payload};
use crate::webhooks::{DeliveryState, WebhookDelivery};
// Bare, for the expressions `format!` writes.
use attr::{ATTEMPTS, LEASE_EXPIRES_AT, LEASE_TOKEN, RUN_AT, STARTED_AT};
use item::{Item, from_item, has_n, has_s, n, payload_attr, s, to_item};
use update::Update;

pub use batches::{BatchProgress, JobEnding, batch_from_stream_image, is_batch_image};
pub use item::job_from_stream_image;
pub use paging::PageToken;
pub use pending::{DISPATCH_SHARDS, PendingDispatch, shard_name, shard_of, stable_shard};

/// What creating a job that counts against its tenant's open jobs came to.
#[derive(Debug, Clone, PartialEq)]
pub enum CountedCreate {
    Done(Box<CreateOutcome>),
    /// The tenant has its limit of open jobs: nothing was written.
    OverLimit,
}

/// What creating a batch's jobs came to.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchCreate {
    /// Written now (or by this request before its response was lost).
    Created,
    /// The batch exists from an earlier, identical request.
    Replayed,
    /// The batch's key was used before with a different request; nothing was written.
    KeyReused,
    /// The tenant has no room for this many more open jobs; nothing was written.
    OverLimit,
}

/// At most this many jobs are created in one transaction (DynamoDB's limit is 100 actions, and an
/// open-jobs count takes one).
pub const MAX_TRANSACTION_ITEMS: usize = 100;

/// What a create whose condition failed found: its own write (`written`, whose response was lost), the
/// same request before (a replay), or another request under the same key.
fn created_before(job: &Job, written: &Item, old: &Item) -> Result<CreateOutcome, AwsError> {
    if old == written {
        return Ok(CreateOutcome::Created(job.clone()));
    }
    let existing = from_item(old)?;
    if existing.owner == job.owner && existing.request_hash == job.request_hash {
        Ok(CreateOutcome::Replayed(existing))
    } else {
        Ok(CreateOutcome::KeyReused(existing))
    }
}

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
    /// Scheduled for later than now (its message came early): nothing changed, no attempt spent.
    NotYetDue {
        run_at: Millis,
    },
    NotFound,
}

/// Why a lease holder gives its lease up without finishing the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// A retryable error: the attempt counts.
    Retry,
    /// Throttled: the attempt is given back.
    Throttled,
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

#[derive(Debug, Clone)]
pub struct JobStore {
    client: Client,
    table: String,
    /// How long finished jobs are kept before DynamoDB TTL removes them.
    retention_secs: i64,
}

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
        let item = to_item(job);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item.clone()))
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
                    Some(old) => created_before(job, &item, &old),
                    None => Err(AwsError::from_sdk("PutItem (create job)", err)),
                }
            }
        }
    }

    /// `create`, counting the job as one of its tenant's open jobs in the same transaction (`count_up`,
    /// from `OpenJobs::count_up`): over the tenant's limit, nothing is written. The job item is marked
    /// counted, so it is counted down when it ends.
    pub async fn create_counted(&self, job: &Job, count_up: TransactWriteItem) -> Result<CountedCreate, AwsError> {
        let mut item = to_item(job);
        item.insert(crate::open_jobs::attr::COUNTED.into(), AttributeValue::Bool(true));
        let put = self.put_new(item.clone());
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(count_up)
            .send()
            .await;
        let Err(err) = result else { return Ok(CountedCreate::Done(Box::new(CreateOutcome::Created(job.clone())))) };
        let reasons = crate::open_jobs::cancellation_reasons(&err).unwrap_or_default();
        match reasons.first().cloned().flatten() {
            // The job exists: an earlier request's (a replay, or this one's whose response was lost). The
            // count was not touched.
            Some((code, old)) if code == "ConditionalCheckFailed" => {
                created_before(job, &item, &old.unwrap_or_default()).map(|done| CountedCreate::Done(Box::new(done)))
            }
            _ if crate::open_jobs::cancelled_by_condition(&err, 1) => Ok(CountedCreate::OverLimit),
            _ => Err(AwsError::from_sdk("TransactWriteItems (create a counted job)", err)),
        }
    }

    /// A transaction's write of a new job: refused (with the item as it is) when the job exists.
    fn put_new(&self, item: Item) -> Put {
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#id)")
            .expression_attribute_names("#id", attr::JOB_ID)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .expect("table and item are set")
    }

    /// Creates a batch's jobs in one transaction, all or none, with `count_up` (the tenant's open jobs)
    /// when it is limited. Job ids derive from the batch's, so a batch written before is recognised: by
    /// its own earlier write (a lost response), or by the first job's request hash.
    pub async fn create_batch(
        &self,
        jobs: &[Job],
        count_up: Option<TransactWriteItem>,
    ) -> Result<BatchCreate, AwsError> {
        let items: Vec<Item> = jobs
            .iter()
            .map(|job| {
                let mut item = to_item(job);
                if count_up.is_some() {
                    item.insert(crate::open_jobs::attr::COUNTED.into(), AttributeValue::Bool(true));
                }
                item
            })
            .collect();
        // A transaction cancelled because another one held an item (the same batch sent twice at once, or
        // the tenant's count) or because of throttling is tried again: after a conflict over the same
        // batch, the retry finds it written and answers it.
        let mut attempt = 0;
        let err = loop {
            let mut transaction = self.client.transact_write_items();
            for item in &items {
                let put = self.put_new(item.clone());
                transaction = transaction.transact_items(TransactWriteItem::builder().put(put).build());
            }
            if let Some(count_up) = &count_up {
                transaction = transaction.transact_items(count_up.clone());
            }
            let Err(err) = transaction.send().await else { return Ok(BatchCreate::Created) };
            let reasons = crate::open_jobs::cancellation_reasons(&err).unwrap_or_default();
            let contended = reasons.iter().flatten().any(|(code, _)| {
                matches!(code.as_str(), "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded")
            });
            attempt += 1;
            if !contended {
                break err;
            }
            if attempt >= 4 {
                return Err(AwsError {
                    operation: "TransactWriteItems (create a batch)".into(),
                    code: "TransactionConflict".into(),
                    message: "the batch's writes kept conflicting with others (or were throttled); retry".into(),
                    retryability: crate::error::Retryability::Retryable,
                });
            }
            crate::backoff::sleep_jittered(std::time::Duration::from_millis(50 << attempt)).await;
        };
        let reasons = crate::open_jobs::cancellation_reasons(&err).unwrap_or_default();
        let existing = reasons.iter().enumerate().find_map(|(index, reason)| match reason {
            Some((code, old)) if code == "ConditionalCheckFailed" && index < jobs.len() => Some((index, old.clone())),
            _ => None,
        });
        match existing {
            Some((index, old)) => match created_before(&jobs[index], &items[index], &old.unwrap_or_default())? {
                CreateOutcome::Created(_) => Ok(BatchCreate::Created),
                CreateOutcome::Replayed(_) => Ok(BatchCreate::Replayed),
                CreateOutcome::KeyReused(_) => Ok(BatchCreate::KeyReused),
            },
            None if crate::open_jobs::cancelled_by_condition(&err, jobs.len()) => Ok(BatchCreate::OverLimit),
            None => Err(AwsError::from_sdk("TransactWriteItems (create a batch)", err)),
        }
    }

    /// Strongly consistent reads of many jobs (100 a call), in the order asked; missing ones left out.
    pub async fn get_many(&self, ids: &[JobId]) -> Result<Vec<Job>, AwsError> {
        let mut found: HashMap<String, Job> = HashMap::new();
        for chunk in ids.chunks(100) {
            let keys: Vec<Item> =
                chunk.iter().map(|id| HashMap::from([(attr::JOB_ID.to_string(), s(id.as_str()))])).collect();
            let mut pending = Some(
                aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .expect("keys are set"),
            );
            // Unprocessed keys (throttling) are asked again after a growing wait, a bounded number of times.
            for round in 0..10u32 {
                let Some(request) = pending.take() else { break };
                if round > 0 {
                    crate::backoff::sleep_jittered(std::time::Duration::from_millis(25 << round.min(6))).await;
                }
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("BatchGetItem (jobs)", e))?;
                for item in out.responses().and_then(|r| r.get(&self.table)).into_iter().flatten() {
                    let job = from_item(item)?;
                    found.insert(job.job_id.as_str().to_string(), job);
                }
                pending = out.unprocessed_keys().and_then(|u| u.get(&self.table)).cloned();
            }
            if pending.is_some() {
                return Err(AwsError {
                    operation: "BatchGetItem (jobs)".into(),
                    code: "UnprocessedKeys".into(),
                    message: "some jobs were still unread after 10 tries".into(),
                    retryability: crate::error::Retryability::Retryable,
                });
            }
        }
        Ok(ids.iter().filter_map(|id| found.remove(id.as_str())).collect())
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

    /// scheduled or queued -> cancelled, only by the owner.
    pub async fn cancel(&self, job_id: &JobId, owner: &str, now: Millis) -> Result<CancelOutcome, AwsError> {
        let writer = uuid::Uuid::new_v4().to_string();
        let result = self
            .update(job_id)
            .condition("#owner = :owner AND #status IN (:queued, :scheduled)")
            .name("#owner", attr::OWNER)
            .name("#status", attr::STATUS)
            .value(":owner", s(owner))
            .value(":queued", s(JobStatus::Queued.as_str()))
            .value(":scheduled", s(JobStatus::Scheduled.as_str()))
            .sign(&writer)
            .finish(JobStatus::Cancelled, now, self.expires_at(now))
            .send()
            .await;
        let own = finished_by(JobStatus::Cancelled, &writer);
        Ok(match conditional(result, "UpdateItem (cancel job)", own)? {
            Ok(job) => CancelOutcome::Cancelled(job),
            Err(Some(old)) if old.owner == owner => CancelOutcome::NotCancellable(old),
            Err(_) => CancelOutcome::NotFound,
        })
    }

    /// queued (or scheduled, from its `runAt` on) -> processing, or takes over a processing job whose lease
    /// expired. Increments `attempts`.
    pub async fn claim(
        &self,
        job_id: &JobId,
        lease: &Lease,
        max_attempts: u32,
        now: Millis,
    ) -> Result<ClaimOutcome, AwsError> {
        let result = self
            .update(job_id)
            .condition(format!(
                "attribute_exists(#id) AND {ATTEMPTS} < :max AND \
                 (#status = :queued OR (#status = :scheduled AND {RUN_AT} <= :now) \
                  OR (#status = :processing AND {LEASE_EXPIRES_AT} < :now))"
            ))
            .name("#id", attr::JOB_ID)
            .name("#status", attr::STATUS)
            .value(":max", n(max_attempts))
            .value(":queued", s(JobStatus::Queued.as_str()))
            .value(":scheduled", s(JobStatus::Scheduled.as_str()))
            .value(":processing", s(JobStatus::Processing.as_str()))
            .value(":now", n(now))
            .status(JobStatus::Processing)
            .set(attr::LEASE_TOKEN, ":token")
            .set(attr::LEASE_EXPIRES_AT, ":expires")
            .set(attr::ATTEMPTS, &format!("{ATTEMPTS} + :one"))
            .set(attr::STARTED_AT, &format!("if_not_exists({STARTED_AT}, :now)"))
            .set(attr::UPDATED_AT, ":now")
            .value(":token", s(&lease.token))
            .value(":expires", n(lease.expires_at))
            .value(":one", n(1))
            .send()
            .await;
        let own = |old: &Item| {
            has_s(old, attr::STATUS, JobStatus::Processing.as_str()) && has_s(old, attr::LEASE_TOKEN, &lease.token)
        };
        Ok(match conditional(result, "UpdateItem (claim job)", own)? {
            Ok(job) => ClaimOutcome::Claimed(job),
            Err(None) => ClaimOutcome::NotFound,
            Err(Some(old)) if old.status.is_terminal() => ClaimOutcome::AlreadyFinished(old),
            Err(Some(old)) if old.status == JobStatus::Scheduled && old.run_at.is_some_and(|at| at > now) => {
                ClaimOutcome::NotYetDue { run_at: old.start_after() }
            }
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
        let result = self
            .fenced(job_id, token)
            .name("#result", result_attr)
            .set("#result", ":result")
            .set(attr::PROGRESS, ":hundred")
            .value(":result", result_value)
            .value(":hundred", n(100))
            .finish(JobStatus::Completed, now, self.expires_at(now))
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
            .record_error(attr::ERROR_CODE, attr::ERROR_MESSAGE, error)
            .finish(JobStatus::Failed, now, self.expires_at(now))
            .send()
            .await;
        fence_outcome(conditional(result, "UpdateItem (fail job)", finished_by(JobStatus::Failed, token))?)
    }

    /// The lease holder gives its lease up, recording `error` as the last one: the job stays `processing`
    /// and the next delivery may claim it at once. A released lease keeps its token with expiry 0, which
    /// no fenced write accepts. `Release::Throttled` also gives the attempt back, since nothing about the
    /// job failed (a quota said "not now").
    pub async fn release(
        &self,
        job_id: &JobId,
        token: &str,
        error: &ErrorInfo,
        now: Millis,
        why: Release,
    ) -> Result<FenceOutcome, AwsError> {
        let mut update = self
            .fenced(job_id, token)
            .record_error(attr::LAST_ERROR_CODE, attr::LAST_ERROR_MESSAGE, error)
            .set(attr::LEASE_EXPIRES_AT, ":released")
            .set(attr::UPDATED_AT, ":now")
            .value(":now", n(now));
        if why == Release::Throttled {
            update = update.set(attr::ATTEMPTS, &format!("{ATTEMPTS} - :one")).value(":one", n(1));
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
            .set(attr::PROGRESS, ":progress")
            .set(attr::UPDATED_AT, ":now")
            .value(":progress", n(progress.min(100)))
            .value(":now", n(now))
            .send()
            .await;
        let own = |old: &Item| {
            has_s(old, attr::STATUS, JobStatus::Processing.as_str())
                && has_s(old, attr::LEASE_TOKEN, token)
                && has_n(old, attr::PROGRESS, progress.min(100))
        };
        Ok(conditional(result, "UpdateItem (job progress)", own)?.is_ok())
    }

    /// Keeps how a webhook delivery of the job's end went (`webhook:<target>`). A delivered state is never
    /// replaced by a late report of an earlier attempt; `false` when the job is gone or already delivered
    /// there.
    pub async fn record_webhook(&self, job_id: &JobId, delivery: &WebhookDelivery) -> Result<bool, AwsError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::JOB_ID, s(job_id.as_str()))
            .update_expression("SET #w = :state")
            .condition_expression("attribute_exists(#id) AND (attribute_not_exists(#w) OR #w.#state <> :delivered)")
            .expression_attribute_names("#w", item::webhook_attr(&delivery.target))
            .expression_attribute_names("#id", attr::JOB_ID)
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":state", item::webhook_to_attr(delivery))
            .expression_attribute_values(":delivered", s(DeliveryState::Delivered.as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(false),
            Err(err) => Err(AwsError::from_sdk("UpdateItem (webhook delivery state)", err)),
        }
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
            .condition(format!(
                "#status IN (:scheduled, :queued, :processing) AND \
                 (attribute_not_exists({LEASE_EXPIRES_AT}) OR {LEASE_EXPIRES_AT} < :now)"
            ))
            .name("#status", attr::STATUS)
            .value(":scheduled", s(JobStatus::Scheduled.as_str()))
            .value(":queued", s(JobStatus::Queued.as_str()))
            .value(":processing", s(JobStatus::Processing.as_str()))
            .value(":now", n(now))
            .sign(&writer)
            .record_error(attr::ERROR_CODE, attr::ERROR_MESSAGE, error)
            .finish(JobStatus::Failed, now, self.expires_at(now))
            .send()
            .await;
        Ok(match conditional(result, "UpdateItem (force-fail job)", finished_by(JobStatus::Failed, &writer))? {
            Ok(job) => ForceFailOutcome::Failed(job),
            Err(None) => ForceFailOutcome::NotFound,
            Err(Some(old)) if old.status.is_terminal() => ForceFailOutcome::AlreadyFinished(old),
            Err(Some(_)) => ForceFailOutcome::LeaseLive,
        })
    }

    fn expires_at(&self, now: Millis) -> i64 {
        now / 1000 + self.retention_secs
    }

    /// An update of one job that answers the job as written, or as it was when the condition failed.
    fn update(&self, job_id: &JobId) -> Update {
        Update::new(
            self.client
                .update_item()
                .table_name(&self.table)
                .key(attr::JOB_ID, s(job_id.as_str()))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld),
        )
    }

    /// An update that only the current lease holder may make (a released lease holds nothing).
    fn fenced(&self, job_id: &JobId, token: &str) -> Update {
        self.update(job_id)
            .condition(format!("#status = :processing AND {LEASE_TOKEN} = :token AND {LEASE_EXPIRES_AT} > :released"))
            .name("#status", attr::STATUS)
            .value(":processing", s(JobStatus::Processing.as_str()))
            .value(":token", s(token))
            .value(":released", n(RELEASED))
    }
}

/// Turns an UpdateItem result into `Ok(new job)` or, when the condition failed, `Err(old job if any)`.
/// A failed condition whose old item `own` recognises as this very write (it took effect, its response
/// was lost, and the SDK's retry met it) is the write's success.
pub(super) fn conditional(
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

fn fence_outcome(result: Result<Job, Option<Job>>) -> Result<FenceOutcome, AwsError> {
    Ok(match result {
        Ok(job) => FenceOutcome::Done(job),
        Err(old) => FenceOutcome::LeaseLost(old),
    })
}
