//! Many jobs as one: `POST /batches` (up to 100 jobs, all accepted or none), `GET /batches/{batchId}`
//! (counts by status, whether every job ended, the jobs a page at a time), `DELETE /batches/{batchId}`
//! (cancels the jobs that have not started).
//!
//! A batch is its jobs: they are created in one transaction, their ids derive from the batch's
//! (`JobId::in_batch`), and each carries its place (`batchId`, `batchIndex`, `batchSize`). So the batch's
//! state is read from the jobs themselves (strongly consistent reads), and its counts are always theirs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use jobpipe_core::clock::to_rfc3339;
use jobpipe_core::intake::{BatchAccepted, Intake, NewJob};
use jobpipe_core::job::{Job, JobId, JobStatus, JobView};
use jobpipe_core::metrics::{self, Unit};
use jobpipe_core::open_jobs::OpenJobs;
use jobpipe_core::store::{CancelOutcome, MAX_TRANSACTION_ITEMS};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::caller::Authenticated;
use crate::error::{ApiError, CommonErrors, ErrorBody};
use crate::jobs::{Payloads, view};
use crate::submit::{
    check_body, check_input_kept_until_start, check_kind_input, check_start, idempotency_key, json_fields,
    submission_in,
};
use crate::{Api, CorrelationId};

/// The most jobs in one batch.
pub const MAX_BATCH_JOBS: usize = 100;

/// A new batch.
#[derive(Debug, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only its OpenAPI description is used: `create` reads the body.
pub struct NewBatch {
    /// 1 to 100 jobs, each as `POST /jobs` takes one.
    #[schema(min_items = 1, max_items = 100, value_type = Vec<Object>)]
    jobs: Vec<Value>,
}

/// Jobs of a batch by status.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchCounts {
    pub scheduled: u32,
    pub queued: u32,
    pub processing: u32,
    pub completed: u32,
    pub failed: u32,
    pub cancelled: u32,
}

/// A batch, as `GET /batches/{batchId}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchView {
    pub batch_id: JobId,
    pub total: u32,
    pub counts: BatchCounts,
    /// Every job ended (completed, failed or cancelled).
    pub done: bool,
    /// When the batch's completion was recorded, once, as its last job's end was: the moment it was pushed
    /// to its subscribers and delivered as `batch.completed`. `null` until then (shortly after `done`).
    #[schema(format = DateTime)]
    pub completed_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Every job's id, in submission order.
    pub job_ids: Vec<JobId>,
    /// A page of the jobs (inputs and results stored apart are `omitted`, as on `GET /jobs`).
    pub jobs: Vec<JobView>,
    /// Pass as `nextToken` for the next page of jobs; `null` on the last one.
    pub next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchQuery {
    limit: Option<String>,
    next_token: Option<String>,
}

/// Submits up to 100 jobs as one batch: each is checked as `POST /jobs` checks one, and one that would
/// be refused refuses the batch (`422` naming it: `jobs[3].input.width`), storing nothing. Accepted, the
/// jobs are stored together (all or none) and run as any job; follow them with `GET /batches/{batchId}`.
#[utoipa::path(
    post,
    path = "/batches",
    operation_id = "submitBatch",
    tag = "batches",
    request_body = NewBatch,
    params(("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = "^[!-~]+$",
        description = "Submitting again with the same key and jobs answers the first batch instead of a new one.")),
    responses(
        (status = 202, description = "Accepted (or, with a reused Idempotency-Key, the batch it accepted before).",
            body = BatchView,
            headers(("Location" = String, description = "The batch's URL."),
                ("Idempotent-Replayed" = Option<String>, description = "`true` when this answers an earlier submission."))),
        (status = 400, description = "The body is not JSON or not a batch.", body = ErrorBody),
        (status = 413, description = "The body is over the size limit.", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`.", body = ErrorBody),
        (status = 422, description = "A job the batch holds would be refused (the field names it), or a reused \
            Idempotency-Key.", body = ErrorBody),
        (status = 429, description = "Over the tenant's submissions per second or open jobs; nothing was stored.",
            body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn create(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_body(&api, &headers, &body)?;
    let key = idempotency_key(&headers)?;
    let mut fields = json_fields(&body, &["jobs"], "a batch has jobs, a list of 1 to 100 jobs")?;
    let Some(Value::Array(items)) = fields.remove("jobs") else {
        return Err(ApiError::bad_request("jobs", "must be a list of 1 to 100 jobs"));
    };
    if items.is_empty() || items.len() > MAX_BATCH_JOBS {
        return Err(ApiError::bad_request(
            "jobs",
            format!("has {} jobs; a batch has 1 to {MAX_BATCH_JOBS}", items.len()),
        ));
    }
    let now = api.clock.now_ms();
    let mut jobs = Vec::with_capacity(items.len());
    // Start times are checked apart: a keyed retry is the batch it names even once a `runAt` has passed.
    let mut starts = Ok(());
    for (index, item) in items.into_iter().enumerate() {
        let checked = submission_in(item).and_then(|submission| {
            check_kind_input(&api, &submission.kind, &submission.input)?;
            let callback_url = match &submission.callback_url {
                Some(url) => Some(crate::webhooks::check_url(&api, url, "callback.url")?),
                None => None,
            };
            if starts.is_ok() {
                starts = check_start(submission.start, now)
                    .and_then(|()| check_input_kept_until_start(&api, submission.start, &submission.input, now))
                    .map_err(|error| in_job(error, index));
            }
            Ok(NewJob {
                owner: caller.sub.clone(),
                kind: submission.kind,
                input: submission.input,
                idempotency_key: None,
                correlation_id: correlation_id.clone(),
                start: submission.start,
                callback_url,
            })
        });
        jobs.push(checked.map_err(|error| in_job(error, index))?);
    }
    let intake = Intake {
        store: &api.store,
        payloads: &api.payloads,
        dispatcher: &api.dispatcher,
        dispatch_grace: api.dispatch_grace,
    };
    // A keyed batch stored before is answered as it was, before anything that may have changed since (a
    // start now past, the tenant's limits) is checked.
    let replay = match &key {
        Some(key) => intake.replay_batch(&caller.sub, &jobs, key, now).await?,
        None => None,
    };
    let accepted = match replay {
        Some(replayed) => replayed,
        None => {
            starts?;
            let open = check_limits(&api, &caller.sub, jobs.len(), now).await?;
            intake.accept_batch(&caller.sub, jobs, key.as_deref(), now, open).await?
        }
    };
    let (batch_id, jobs, replayed) = match accepted {
        BatchAccepted::New { batch_id, jobs } => (batch_id, jobs, false),
        BatchAccepted::Replayed { batch_id, jobs } => (batch_id, jobs, true),
        BatchAccepted::KeyReused => return Err(ApiError::key_reused()),
        BatchAccepted::OverOpenJobs { limit } => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!("this batch would take the tenant over {limit} jobs waiting or running, its limit"),
            )
            .field("openJobs")
            .retry_after(5));
        }
    };
    tracing::info!(%batch_id, jobs = jobs.len(), replayed, "batch accepted");
    if !replayed {
        for job in &jobs {
            metrics::emit(crate::SERVICE, "JobsAccepted", Unit::Count, 1.0, &[("Kind", job.kind.as_str())]);
        }
    }
    let limit = 20;
    let body = batch_view(&api, &batch_id, &jobs, 0, limit).await?;
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/batches/{batch_id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A batch larger than the tenant's limits allow at all is refused (`422`: waiting cannot help); within
/// them, its jobs count against its submissions per second (`429` over it). Answers the tenant's open-jobs
/// counter and limit, when it has one, for the batch to be counted against.
async fn check_limits<'a>(
    api: &'a Api,
    owner: &str,
    count: usize,
    now: jobpipe_core::clock::Millis,
) -> Result<Option<(&'a OpenJobs, u32)>, ApiError> {
    let Some(quota) = &api.quota else { return Ok(None) };
    let too_large = |why: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "batch_too_large", why).field("jobs");
    let open = quota.open_jobs_limit(owner, now).await?;
    if let Some((_, limit)) = open {
        if count > limit as usize {
            return Err(too_large(format!("{count} jobs; this tenant may have {limit} jobs waiting or running")));
        }
        if count >= MAX_TRANSACTION_ITEMS {
            return Err(too_large(format!(
                "a tenant with an open-jobs quota submits at most {} jobs a batch",
                MAX_TRANSACTION_ITEMS - 1
            )));
        }
    }
    if let Some(limit) = quota.submissions_per_second_limit(owner, now).await?
        && count > limit as usize
    {
        return Err(too_large(format!("{count} jobs; this tenant may submit {limit} a second")));
    }
    crate::submit::admit_many(api, owner, count as u32, now).await?;
    Ok(open)
}

/// A job's refusal as the batch's: `422`, its field prefixed with the job's place.
fn in_job(error: ApiError, index: usize) -> ApiError {
    let field = match &error.field {
        Some(field) if field != "body" => format!("jobs[{index}].{field}"),
        _ => format!("jobs[{index}]"),
    };
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.code, format!("job {index}: {}", error.message)).field(field)
}

/// The batch: its jobs by status, whether all ended, and a page of them.
#[utoipa::path(
    get,
    path = "/batches/{batchId}",
    operation_id = "getBatch",
    tag = "batches",
    params(
        ("batchId" = String, Path, description = "The id `POST /batches` answered."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Jobs in the page (default 20)."),
        ("nextToken" = Option<String>, Query, description = "The `nextToken` of the previous page."),
    ),
    responses(
        (status = 200, body = BatchView),
        (status = 400, description = "An unknown or invalid query parameter.", body = ErrorBody),
        (status = 404, description = "No such batch (or not yours).", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn get(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Path(batch_id): Path<String>,
    query: Result<Query<BatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BatchView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit", "must be a whole number from 1 to 100"))?,
    };
    let offset = match query.next_token.as_deref() {
        None => 0,
        Some(token) => token
            .parse::<usize>()
            .ok()
            .filter(|n| *n < MAX_BATCH_JOBS)
            .ok_or_else(|| ApiError::bad_request("nextToken", "is not a token this API gave"))?,
    };
    let (batch_id, jobs) = read_batch(&api, &caller.sub, &batch_id).await?;
    Ok(Json(batch_view(&api, &batch_id, &jobs, offset, limit).await?))
}

/// Cancels every job of the batch that has not started (scheduled or queued); the others run on.
#[utoipa::path(
    delete,
    path = "/batches/{batchId}",
    operation_id = "cancelBatch",
    tag = "batches",
    params(("batchId" = String, Path, description = "The batch's id.")),
    responses(
        (status = 200, description = "The batch after the cancels.", body = BatchView),
        (status = 404, description = "No such batch (or not yours).", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn cancel(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Path(batch_id): Path<String>,
) -> Result<Json<BatchView>, ApiError> {
    let (batch_id, mut jobs) = read_batch(&api, &caller.sub, &batch_id).await?;
    let now = api.clock.now_ms();
    let mut cancelled = 0;
    // Each cancel answers the job as it is now (cancelled, or started meanwhile): the view needs no read.
    for job in jobs.iter_mut().filter(|job| job.status.is_cancellable()) {
        match api.store.cancel(&job.job_id, &caller.sub, now).await? {
            CancelOutcome::Cancelled(now_cancelled) => {
                cancelled += 1;
                *job = now_cancelled;
            }
            CancelOutcome::NotCancellable(started) => *job = started,
            CancelOutcome::NotFound => {}
        }
    }
    tracing::info!(%batch_id, cancelled, "batch cancelled");
    Ok(Json(batch_view(&api, &batch_id, &jobs, 0, 20).await?))
}

/// The caller's batch and its jobs (consistent reads); `404` for another's or none.
async fn read_batch(api: &Api, owner: &str, batch_id: &str) -> Result<(JobId, Vec<Job>), ApiError> {
    let batch_id = JobId::parse(batch_id).ok_or_else(not_found)?;
    let ours = |job: &Job| job.owner == owner && job.batch.as_ref().is_some_and(|batch| batch.batch_id == batch_id);
    // The first job names the batch's size; once it has expired (ended jobs are kept `JOB_RETENTION_DAYS`,
    // later ones may be scheduled long after), every place a batch can have is read.
    let size = match api.store.get(&JobId::in_batch(&batch_id, 0)).await? {
        Some(first) if ours(&first) => first.batch.map_or(0, |batch| batch.size),
        Some(_) => return Err(not_found()),
        None => MAX_BATCH_JOBS as u32,
    };
    let ids: Vec<JobId> = (0..size).map(|index| JobId::in_batch(&batch_id, index)).collect();
    let jobs: Vec<Job> = api.store.get_many(&ids).await?.into_iter().filter(ours).collect();
    if jobs.is_empty() {
        return Err(not_found());
    }
    Ok((batch_id, jobs))
}

async fn batch_view(
    api: &Api,
    batch_id: &JobId,
    jobs: &[Job],
    offset: usize,
    limit: usize,
) -> Result<BatchView, ApiError> {
    let mut counts = BatchCounts::default();
    for job in jobs {
        let count = match job.status {
            JobStatus::Scheduled => &mut counts.scheduled,
            JobStatus::Queued => &mut counts.queued,
            JobStatus::Processing => &mut counts.processing,
            JobStatus::Completed => &mut counts.completed,
            JobStatus::Failed => &mut counts.failed,
            JobStatus::Cancelled => &mut counts.cancelled,
        };
        *count += 1;
    }
    let mut page = Vec::new();
    for job in jobs.iter().skip(offset).take(limit) {
        page.push(view(api, job, Payloads::Omitted).await?);
    }
    let next = offset + limit;
    let done = jobs.iter().all(|job| job.status.is_terminal());
    let completed_at = match done {
        true => api.store.batch_progress(batch_id).await?.and_then(|progress| progress.completed_at).map(to_rfc3339),
        false => None,
    };
    Ok(BatchView {
        batch_id: batch_id.clone(),
        total: jobs.first().and_then(|job| job.batch.as_ref()).map_or(jobs.len() as u32, |batch| batch.size),
        done,
        completed_at,
        created_at: to_rfc3339(jobs.first().map_or(0, |job| job.created_at)),
        job_ids: jobs.iter().map(|job| job.job_id.clone()).collect(),
        counts,
        jobs: page,
        next_token: (next < jobs.len()).then(|| next.to_string()),
    })
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such batch")
}
