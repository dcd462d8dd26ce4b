//! Reading and cancelling jobs: `GET /jobs/{jobId}`, `GET /jobs`, `DELETE /jobs/{jobId}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jobpipe_core::job::{Job, JobId, JobPage, JobStatus, JobView, Payload};
use jobpipe_core::payload::{NO_SUCH_KEY, result_prefix};
use jobpipe_core::store::{CancelOutcome, PageToken};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Api;
use crate::caller::Authenticated;
use crate::error::{ApiError, CommonErrors, ErrorBody};

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;

/// One job, with its result once completed. Another caller's job answers `404`, as a missing one does.
#[utoipa::path(
    get,
    path = "/jobs/{jobId}",
    operation_id = "getJob",
    tag = "jobs",
    params(("jobId" = String, Path, description = "The id `POST /jobs` answered.")),
    responses(
        (status = 200, body = JobView),
        (status = 404, description = "No such job (or not yours).", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn get(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Path(job_id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job_id = JobId::parse(&job_id).ok_or_else(ApiError::not_found)?;
    let job = api.store.get(&job_id).await?;
    // Another owner's job answers exactly like a missing one.
    let job = job.filter(|j| j.owner == caller.sub).ok_or_else(ApiError::not_found)?;
    Ok(Json(view(&api, &job, Payloads::Fetched).await?))
}

/// Your jobs, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/jobs",
    operation_id = "listJobs",
    tag = "jobs",
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs in this status."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)."),
        ("nextToken" = Option<String>, Query, description = "The `nextToken` of the previous page."),
    ),
    responses(
        (status = 200, body = JobPage),
        (status = 400, description = "An unknown or invalid query parameter.", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn list(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<JobPage>, ApiError> {
    let (limit, token) = page_query(&query, &["status"])?;
    let status = match query.get("status").map(String::as_str) {
        None => None,
        Some(s) => Some(
            JobStatus::parse(s)
                .ok_or_else(|| ApiError::bad_request("status", format!("must be one of {}", JobStatus::names())))?,
        ),
    };
    let start = token.map(|t| PageToken::decode(t).ok_or_else(not_our_token)).transpose()?;
    let (jobs, next) = api.store.list_by_owner(&caller.sub, status, limit, start.as_ref()).await?;
    let mut views = Vec::with_capacity(jobs.len());
    for job in &jobs {
        views.push(view(&api, job, Payloads::Omitted).await?);
    }
    Ok(Json(JobPage { jobs: views, next_token: next.map(|t| t.encode()) }))
}

/// A list's query: `limit` (1 to 100, default 20), `nextToken` (answered raw, for the list to decode), and
/// the list's own `filters`; any other parameter is a `400`.
pub(crate) fn page_query<'q>(
    query: &'q HashMap<String, String>,
    filters: &[&str],
) -> Result<(usize, Option<&'q str>), ApiError> {
    let known = |name: &str| ["limit", "nextToken"].contains(&name) || filters.contains(&name);
    if let Some(unknown) = query.keys().find(|k| !known(k)) {
        let mut names = filters.to_vec();
        names.extend(["limit", "nextToken"]);
        return Err(ApiError::bad_request(
            unknown.clone(),
            format!("unknown query parameter; use {}", names.join(", ")),
        ));
    }
    let limit =
        match query.get("limit") {
            None => DEFAULT_PAGE,
            Some(l) => l.parse::<usize>().ok().filter(|l| (1..=MAX_PAGE).contains(l)).ok_or_else(|| {
                ApiError::bad_request("limit", format!("must be a whole number from 1 to {MAX_PAGE}"))
            })?,
        };
    Ok((limit, query.get("nextToken").map(String::as_str).filter(|t| !t.is_empty())))
}

/// A `nextToken` this API did not issue.
pub(crate) fn not_our_token() -> ApiError {
    ApiError::bad_request("nextToken", "is not a token this API issued")
}

/// The kinds `GET /kinds` lists.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KindList {
    pub kinds: Vec<&'static str>,
    /// Those an operator paused: their jobs are accepted and wait, queued, until the kind is resumed.
    pub paused: Vec<String>,
}

/// The job kinds this deployment offers, so a client can build its form.
#[utoipa::path(
    get,
    path = "/kinds",
    operation_id = "listKinds",
    tag = "jobs",
    responses((status = 200, body = KindList), CommonErrors)
)]
pub async fn kinds(State(api): State<Arc<Api>>, Authenticated(_): Authenticated) -> Result<Json<KindList>, ApiError> {
    let kinds: Vec<&'static str> = api.kinds.names().collect();
    let paused = match &api.controls {
        Some(controls) => {
            controls.paused_kinds().await?.into_iter().filter(|kind| kinds.contains(&kind.as_str())).collect()
        }
        None => Vec::new(),
    };
    Ok(Json(KindList { kinds, paused }))
}

/// Cancels a job that has not started: queued, or scheduled.
#[utoipa::path(
    delete,
    path = "/jobs/{jobId}",
    operation_id = "cancelJob",
    tag = "jobs",
    params(("jobId" = String, Path, description = "The id `POST /jobs` answered.")),
    responses(
        (status = 200, description = "Cancelled; the job as it is now.", body = JobView),
        (status = 404, description = "No such job (or not yours).", body = ErrorBody),
        (status = 409, description = "The job has started (or ended).", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn cancel(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Path(job_id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job_id = JobId::parse(&job_id).ok_or_else(ApiError::not_found)?;
    let now = api.clock.now_ms();
    match api.store.cancel(&job_id, &caller.sub, now).await? {
        CancelOutcome::Cancelled(job) => {
            tracing::info!(job_id = %job.job_id, "job cancelled");
            Ok(Json(view(&api, &job, Payloads::Fetched).await?))
        }
        CancelOutcome::NotCancellable(job) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!("job is {}; only scheduled or queued jobs can be cancelled", job.status.as_str()),
        )),
        CancelOutcome::NotFound => Err(ApiError::not_found()),
    }
}

/// What a view does with inputs and results stored in S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payloads {
    /// Fetched (one job): a payload the bucket's lifecycle rule already removed shows as `null`.
    Fetched,
    /// Shown as `null` and named in `omitted` (list pages: a hundred 1 MiB inputs would exceed Lambda's
    /// 6 MB response, and one unreadable object must not fail a whole page).
    Omitted,
}

/// An input or result as a view shows it (see `Payloads`).
async fn payload_value(
    api: &Api,
    name: &str,
    payload: &Payload,
    payloads: Payloads,
    omitted: &mut Vec<String>,
) -> Result<Value, ApiError> {
    if payloads == Payloads::Omitted && matches!(payload, Payload::S3 { .. }) {
        omitted.push(name.to_string());
        return Ok(Value::Null);
    }
    match api.payloads.resolve(payload).await {
        Ok(value) => Ok(value),
        Err(e) if e.code == NO_SUCH_KEY => Ok(Value::Null),
        Err(e) => Err(e.into()),
    }
}

/// The job as the API shows it.
pub async fn view(api: &Api, job: &Job, payloads: Payloads) -> Result<JobView, ApiError> {
    let mut omitted = Vec::new();
    let input = payload_value(api, "input", &job.input, payloads, &mut omitted).await?;
    let mut result = match &job.result {
        Some(payload) => Some(payload_value(api, "result", payload, payloads, &mut omitted).await?),
        None => None,
    };
    // A result file is handed out as a short-lived link; only keys under the job's own prefix qualify.
    if let Some(Value::Object(fields)) = &mut result
        && let Some(key) = fields.get("key").and_then(Value::as_str).map(String::from)
        && key.starts_with(&result_prefix(&job.job_id))
    {
        let url = api.payloads.presign_get(&key, api.result_url_ttl).await?;
        fields.insert("url".into(), Value::String(url));
        fields.insert("urlExpiresInSeconds".into(), json!(api.result_url_ttl.as_secs()));
    }
    let mut view = job.view(input, result);
    view.omitted = omitted;
    Ok(view)
}
