//! Recurring jobs: `POST /schedules`, `GET /schedules`, `GET|DELETE /schedules/{scheduleId}`,
//! `POST /schedules/{scheduleId}/pause|resume`. The reconciler fires the ticks (`jobpipe_core::schedules`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jobpipe_core::intake::request_hash;
use jobpipe_core::job::JobId;
use jobpipe_core::schedules::{
    Cadence, CreateScheduleOutcome, Schedule, SchedulePage, SchedulePageToken, ScheduleState, ScheduleStore,
    ScheduleView, check_timezone,
};
use serde_json::{Value, json};

use crate::Api;
use crate::caller::Authenticated;
use crate::error::{ApiError, CommonErrors, ErrorBody};
use crate::jobs::{not_our_token, page_query};
use crate::submit::{check_body, check_kind_input, idempotency_key, json_fields};

/// A new schedule: a job (kind and input, as `POST /jobs` takes them) and when to create it.
#[derive(Debug, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only its OpenAPI description is used: `parse_schedule` reads the body.
pub struct NewSchedule {
    /// A kind `GET /kinds` lists.
    #[schema(min_length = 1, max_length = 64)]
    kind: String,
    /// The job's input, as the kind takes it (checked as `POST /jobs` checks it; at most 16 KiB; an empty
    /// object when left out).
    #[schema(value_type = Option<Object>, nullable = false)]
    input: Option<Value>,
    /// Five fields: minute hour day-of-month month day-of-week, read in `timezone` (`0 9 * * MON-FRI`).
    /// Not with `rate`.
    #[schema(nullable = false, min_length = 9, max_length = 200)]
    cron: Option<String>,
    /// Every so often from the schedule's creation: `"15 minutes"`, `"1 hour"`, `"2 days"` (1 minute to
    /// 366 days). Not with `cron`.
    #[schema(nullable = false, min_length = 1, max_length = 32)]
    rate: Option<String>,
    /// The IANA time zone a cron expression is read in (default `UTC`), so `0 9 * * *` in
    /// `Europe/Paris` follows daylight saving time.
    #[schema(nullable = false, min_length = 1, max_length = 64)]
    timezone: Option<String>,
}

/// Creates a schedule. Each tick creates one job (a scheduled job whose `runAt` is the tick), also when
/// the trigger fires twice; ticks missed while the pipeline was down are skipped but the latest, which
/// runs late, once.
#[utoipa::path(
    post,
    path = "/schedules",
    operation_id = "createSchedule",
    tag = "schedules",
    request_body = NewSchedule,
    params(("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = "^[!-~]+$",
        description = "Retry-safe creation: the same key and body answer the same schedule.")),
    responses(
        (status = 201, description = "Created (or, with the same Idempotency-Key and body, created before).", body = ScheduleView),
        (status = 400, description = "The body is not JSON or not a schedule.", body = ErrorBody),
        (status = 413, description = "The body is over the size limit.", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`.", body = ErrorBody),
        (status = 422, description = "Unknown kind, input the kind rejects or over 16 KiB, a cron expression, rate or time zone that cannot be kept, or a reused Idempotency-Key.", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn create(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_body(&api, &headers, &body)?;
    let key = idempotency_key(&headers)?;
    let request = parse_schedule(&body)?;
    check_kind_input(&api, &request.kind, &request.input)?;
    let input_bytes = request.input.to_string().len();
    if input_bytes > api.payloads.inline_max_bytes() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "input_too_large",
            format!("a schedule's input is at most {} bytes (this is {input_bytes})", api.payloads.inline_max_bytes()),
        )
        .field("input"));
    }
    let now = api.clock.now_ms();
    let cadence = match (&request.cron, &request.rate) {
        (Some(cron), _) => Cadence::cron(cron, &request.timezone),
        (None, Some(rate)) => check_timezone(&request.timezone).and_then(|()| Cadence::rate(rate, now)),
        (None, None) => unreachable!("parse_schedule requires one"),
    }
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule", e.problem).field(e.field))?;
    let schedule_id = match &key {
        // A space keeps schedule keys apart from jobs' (a client's key has none).
        Some(key) => JobId::from_idempotency_key(&caller.sub, &format!("schedule {key}")).as_str().to_string(),
        None => uuid::Uuid::now_v7().to_string(),
    };
    let hash = request_hash(
        &request.kind,
        &json!({"input": request.input, "cron": request.cron, "rate": cadence.rate_text(), "timezone": request.timezone}),
    );
    let schedule = Schedule {
        schedule_id,
        owner: caller.sub,
        kind: request.kind,
        input: request.input,
        cron: request.cron.map(|cron| cron.trim().to_string()),
        rate: cadence.rate_text(),
        timezone: request.timezone,
        state: ScheduleState::Active,
        next_tick_at: cadence.next_after(now),
        last_tick_at: None,
        last_job_id: None,
        skipped_ticks: 0,
        created_at: now,
        updated_at: now,
        idempotency_key: key,
        request_hash: hash,
    };
    let (schedule, replayed) = match store(&api)?.create(&schedule).await? {
        CreateScheduleOutcome::Created(schedule) => (schedule, false),
        CreateScheduleOutcome::Replayed(schedule) => (schedule, true),
        CreateScheduleOutcome::KeyReused => {
            return Err(ApiError::key_reused());
        }
    };
    tracing::info!(schedule_id = %schedule.schedule_id, kind = %schedule.kind, replayed, next_tick = schedule.next_tick_at, "schedule created");
    let mut response = (StatusCode::CREATED, Json(schedule.view())).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/schedules/{}", schedule.schedule_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// One schedule. Another caller's answers `404`, as a missing one does.
#[utoipa::path(
    get,
    path = "/schedules/{scheduleId}",
    operation_id = "getSchedule",
    tag = "schedules",
    params(("scheduleId" = String, Path, description = "The id `POST /schedules` answered.")),
    responses(
        (status = 200, body = ScheduleView),
        (status = 404, description = "No such schedule (or not yours).", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn get(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Path(schedule_id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let schedule_id = parse_id(&schedule_id)?;
    let schedule = store(&api)?.get(&caller.sub, &schedule_id).await?.ok_or_else(not_found)?;
    Ok(Json(schedule.view()))
}

/// Your schedules, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/schedules",
    operation_id = "listSchedules",
    tag = "schedules",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)."),
        ("nextToken" = Option<String>, Query, description = "The `nextToken` of the previous page."),
    ),
    responses(
        (status = 200, body = SchedulePage),
        (status = 400, description = "An unknown or invalid query parameter.", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn list(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<SchedulePage>, ApiError> {
    let (limit, token) = page_query(&query, &[])?;
    let start = token.map(|t| SchedulePageToken::decode(t).ok_or_else(not_our_token)).transpose()?;
    let (schedules, next) = store(&api)?.list(&caller.sub, limit, start.as_ref()).await?;
    Ok(Json(SchedulePage {
        schedules: schedules.iter().map(Schedule::view).collect(),
        next_token: next.map(|t| t.encode()),
    }))
}

/// Stops the schedule creating jobs until it is resumed. Jobs already created for coming ticks (up to a
/// few minutes ahead) stay scheduled; cancel them with `DELETE /jobs/{jobId}` if need be.
#[utoipa::path(
    post,
    path = "/schedules/{scheduleId}/pause",
    operation_id = "pauseSchedule",
    tag = "schedules",
    params(("scheduleId" = String, Path, description = "The schedule's id.")),
    responses(
        (status = 200, description = "Paused (or already paused).", body = ScheduleView),
        (status = 404, description = "No such schedule (or not yours).", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn pause(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Path(schedule_id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let schedule_id = parse_id(&schedule_id)?;
    let schedule = store(&api)?.pause(&caller.sub, &schedule_id, api.clock.now_ms()).await?.ok_or_else(not_found)?;
    tracing::info!(%schedule_id, "schedule paused");
    Ok(Json(schedule.view()))
}

/// Starts a paused schedule again from its next tick after now: ticks while it was paused are not made up.
#[utoipa::path(
    post,
    path = "/schedules/{scheduleId}/resume",
    operation_id = "resumeSchedule",
    tag = "schedules",
    params(("scheduleId" = String, Path, description = "The schedule's id.")),
    responses(
        (status = 200, description = "Active (or already active).", body = ScheduleView),
        (status = 409, description = "The cron expression has no later date to tick at.", body = ErrorBody),
        (status = 404, description = "No such schedule (or not yours).", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn resume(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Path(schedule_id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let schedule_id = parse_id(&schedule_id)?;
    let store = store(&api)?;
    let schedule = store.get(&caller.sub, &schedule_id).await?.ok_or_else(not_found)?;
    if schedule.state == ScheduleState::Active {
        return Ok(Json(schedule.view()));
    }
    let now = api.clock.now_ms();
    let cadence = schedule
        .cadence()
        .map_err(|e| ApiError::from(jobpipe_core::AwsError::corrupt("reading a schedule", e.to_string())))?;
    let next = cadence.next_after(now).ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "schedule_ended", "the cron expression has no later date to tick at")
    })?;
    let resumed = store.resume(&caller.sub, &schedule_id, next, now).await?.ok_or_else(not_found)?;
    tracing::info!(%schedule_id, next_tick = resumed.next_tick_at, "schedule resumed");
    Ok(Json(resumed.view()))
}

/// Deletes the schedule. Jobs its ticks created stay (cancel them with `DELETE /jobs/{jobId}`).
#[utoipa::path(
    delete,
    path = "/schedules/{scheduleId}",
    operation_id = "deleteSchedule",
    tag = "schedules",
    params(("scheduleId" = String, Path, description = "The schedule's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such schedule (or not yours).", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn delete(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Path(schedule_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let schedule_id = parse_id(&schedule_id)?;
    store(&api)?.delete(&caller.sub, &schedule_id).await?.ok_or_else(not_found)?;
    tracing::info!(%schedule_id, "schedule deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn store(api: &Api) -> Result<&ScheduleStore, ApiError> {
    api.schedules.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this deployment has no schedules (SCHEDULES_TABLE is not set)",
        )
    })
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such schedule")
}

/// Only canonical UUID text names a schedule; anything else is a schedule that does not exist.
fn parse_id(text: &str) -> Result<String, ApiError> {
    JobId::parse(text).map(|id| id.as_str().to_string()).ok_or_else(not_found)
}

/// A parsed `POST /schedules` body: `cron` xor `rate`, the time zone defaulted.
#[derive(Debug)]
struct ScheduleRequest {
    kind: String,
    input: Value,
    cron: Option<String>,
    rate: Option<String>,
    timezone: String,
}

fn parse_schedule(body: &[u8]) -> Result<ScheduleRequest, ApiError> {
    let mut fields = json_fields(
        body,
        &["kind", "input", "cron", "rate", "timezone"],
        "a schedule has kind, input, cron or rate, and timezone",
    )?;
    // A string field, at most `max` characters long (as the schema's `maxLength` counts).
    let text = |fields: &mut serde_json::Map<String, Value>, name: &'static str, max: usize| match fields.remove(name) {
        None => Ok(None),
        Some(Value::String(text)) if text.chars().count() <= max => Ok(Some(text)),
        Some(Value::String(_)) => Err(ApiError::bad_request(name, format!("is longer than {max} characters"))),
        Some(_) => Err(ApiError::bad_request(name, "must be a string")),
    };
    let kind = text(&mut fields, "kind", 64)?
        .filter(|kind| !kind.is_empty())
        .ok_or_else(|| ApiError::bad_request("kind", "is required: a kind GET /kinds lists"))?;
    let input = match fields.remove("input") {
        None => Value::Object(Default::default()),
        Some(input @ Value::Object(_)) => input,
        Some(_) => return Err(ApiError::bad_request("input", "must be a JSON object")),
    };
    let (cron, rate) = match (text(&mut fields, "cron", 200)?, text(&mut fields, "rate", 32)?) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("rate", "give cron or rate, not both")),
        (None, None) => return Err(ApiError::bad_request("cron", "give cron (or rate): when the schedule ticks")),
        other => other,
    };
    let timezone = text(&mut fields, "timezone", 64)?.unwrap_or_else(|| "UTC".into());
    Ok(ScheduleRequest { kind, input, cron, rate, timezone })
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any request body is a schedule request or a 400 naming the problem: never a panic.
        #[test]
        fn any_body_is_a_schedule_or_a_400(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(error) = parse_schedule(&body) {
                prop_assert_eq!(error.status, StatusCode::BAD_REQUEST);
                prop_assert!(error.field.is_some());
            }
        }
    }
}
