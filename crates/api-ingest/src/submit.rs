//! `POST /jobs`: validate, store the job as `queued` (or `scheduled`, with `runAt` or `delaySeconds`),
//! send its message, answer `202`.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jobpipe_core::clock::{Millis, from_rfc3339};
use jobpipe_core::controls::Admission;
use jobpipe_core::intake::{Accepted, Intake, MAX_SCHEDULE_AHEAD, NewJob, StartAt};
use jobpipe_core::job::JobView;
use jobpipe_core::metrics::{self, Unit};
use serde_json::{Map, Value};

use crate::caller::Authenticated;
use crate::error::{ApiError, CommonErrors, ErrorBody};
use crate::jobs::{Payloads, view};
use crate::{Api, CorrelationId};

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// How far in the past a `runAt` may be (a client's clock running behind): it then starts at once.
/// Further back is most likely a mistake (a wrong year or time zone), refused rather than run now.
const RUN_AT_PAST_TOLERANCE_MS: Millis = 5 * 60 * 1000;

/// A validated submission.
#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) kind: String,
    pub(crate) input: Value,
    pub(crate) start: StartAt,
    pub(crate) callback_url: Option<String>,
}

/// Submits a job. It is stored as `queued` and sent to the queue before this answers, or, with `runAt` or
/// `delaySeconds`, as `scheduled` to start then (up to 365 days ahead; cancellable until it starts);
/// follow it with `GET /jobs/{jobId}` (the `Location` header) or the WebSocket.
#[utoipa::path(
    post,
    path = "/jobs",
    operation_id = "submitJob",
    tag = "jobs",
    request_body(content = serde_json::Value, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = "^[!-~]+$",
            description = "Submitting again with the same key answers the first job instead of a new one.")
    ),
    responses(
        (status = 202, description = "Accepted (or, with a reused Idempotency-Key, the job it accepted before).",
            body = JobView,
            headers(("Location" = String, description = "The job's URL."),
                ("Idempotent-Replayed" = Option<String>, description = "`true` when this answers an earlier submission."))),
        (status = 400, description = "The body is not JSON or not a job.", body = ErrorBody),
        (status = 413, description = "The body is over the size limit.", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`.", body = ErrorBody),
        (status = 422, description = "Unknown kind, input the kind rejects, a start time in the past or more \
            than 365 days ahead, a callback URL webhooks may not call, or a reused Idempotency-Key.",
            body = ErrorBody),
        (status = 429, description = "Over the tenant's submissions per second (`field`: `submissionsPerSecond`) \
            or its jobs waiting or running (`openJobs`); nothing was stored. Retry after `Retry-After` seconds.",
            body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn submit(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_body(&api, &headers, &body)?;
    let idempotency_key = idempotency_key(&headers)?;
    let submission = parse_submission(&body)?;
    let now = api.clock.now_ms();
    check_kind_input(&api, &submission.kind, &submission.input)?;
    let callback_url = match &submission.callback_url {
        Some(url) => Some(crate::webhooks::check_url(&api, url, "callback.url")?),
        None => None,
    };

    let intake = Intake {
        store: &api.store,
        payloads: &api.payloads,
        dispatcher: &api.dispatcher,
        dispatch_grace: api.dispatch_grace,
    };
    let new = NewJob {
        owner: caller.sub,
        kind: submission.kind,
        input: submission.input,
        idempotency_key,
        correlation_id,
        start: submission.start,
        callback_url,
    };
    // A keyed retry is the job it names even when it would no longer be accepted as new (its `runAt` has
    // passed meanwhile): the start is checked only for a job not seen before.
    let checked = check_start(submission.start, now)
        .and_then(|()| check_input_kept_until_start(&api, submission.start, &new.input, now));
    let accepted = match checked {
        Ok(()) => {
            admit(&api, &new.owner, now).await?;
            let open = match &api.quota {
                Some(quota) => quota.open_jobs_limit(&new.owner, now).await?,
                None => None,
            };
            intake.accept_counted(new, now, open).await?
        }
        Err(refusal) => intake.replay(&new, now).await?.ok_or(refusal)?,
    };
    let (job, replayed) = match accepted {
        Accepted::New(job) => (job, false),
        Accepted::Replayed(job) => (job, true),
        Accepted::KeyReused => {
            return Err(ApiError::key_reused());
        }
        Accepted::OverOpenJobs { limit } => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!(
                    "this tenant has {limit} jobs waiting or running, its limit; retry after Retry-After seconds, \
                     or once some have ended"
                ),
            )
            .field("openJobs")
            .retry_after(OPEN_JOBS_RETRY_AFTER_SECS));
        }
    };
    tracing::info!(job_id = %job.job_id, kind = %job.kind, replayed, run_at = job.run_at, "job accepted");
    if !replayed {
        metrics::emit(crate::SERVICE, "JobsAccepted", Unit::Count, 1.0, &[("Kind", job.kind.as_str())]);
    }

    let location = format!("/jobs/{}", job.job_id);
    let mut response = (StatusCode::ACCEPTED, axum::Json(view(&api, &job, Payloads::Fetched).await?)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The `Retry-After` of a submission over its tenant's open jobs: when one ends is unknown, and a refused
/// transaction still costs a write.
const OPEN_JOBS_RETRY_AFTER_SECS: u64 = 5;

/// Counts a new submission against its tenant's quota; over it, a `429` and nothing stored.
async fn admit(api: &Api, owner: &str, now: Millis) -> Result<(), ApiError> {
    admit_many(api, owner, 1, now).await
}

/// Counts `n` submissions (a batch's jobs) against their tenant's quota; over it, a `429`.
pub(crate) async fn admit_many(api: &Api, owner: &str, n: u32, now: Millis) -> Result<(), ApiError> {
    let Some(quota) = &api.quota else { return Ok(()) };
    match quota.admit(owner, n, now).await? {
        Admission::Admitted => Ok(()),
        Admission::Exceeded { limit, .. } => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!("at most {limit} submissions a second for this tenant; retry after Retry-After seconds"),
        )
        .field("submissionsPerSecond")),
    }
}

/// A JSON body within the size limit.
pub(crate) fn check_body(api: &Api, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    check_content_type(headers)?;
    if body.len() > api.max_body_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is {} bytes; the limit is {}", body.len(), api.max_body_bytes),
        ));
    }
    Ok(())
}

/// A kind this deployment offers, and an input it accepts (`422` naming the field otherwise).
pub(crate) fn check_kind_input(api: &Api, kind: &str, input: &Value) -> Result<(), ApiError> {
    let offered = api.kinds.get(kind).ok_or_else(|| {
        let known: Vec<_> = api.kinds.names().collect();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_kind",
            format!("unknown job kind {kind:?}; available: {}", known.join(", ")),
        )
        .field("kind")
    })?;
    offered
        .validate(input)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", e.message).field(e.field))
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let is_json =
        media_type == "application/json" || (media_type.starts_with("application/") && media_type.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send Content-Type: application/json (got {:?})", content_type),
        )
        .field("Content-Type"))
    }
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let key = value.to_str().ok().map(str::trim).unwrap_or("");
    let valid = !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(ApiError::bad_request(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(Some(key.to_string()))
}

const JOB_FIELDS: [&str; 5] = ["kind", "input", "runAt", "delaySeconds", "callback"];
const JOB_SHAPE: &str = "a job has kind, input, and optionally runAt or delaySeconds, and callback";

fn parse_submission(body: &[u8]) -> Result<Submission, ApiError> {
    submission_of(json_fields(body, &JOB_FIELDS, JOB_SHAPE)?)
}

/// A job of a batch, as `POST /jobs` takes one.
pub(crate) fn submission_in(value: Value) -> Result<Submission, ApiError> {
    submission_of(object_fields(value, &JOB_FIELDS, JOB_SHAPE)?)
}

fn submission_of(mut fields: Map<String, Value>) -> Result<Submission, ApiError> {
    let kind = match fields.remove("kind") {
        Some(Value::String(kind)) if !kind.is_empty() => kind,
        Some(Value::String(_)) | None => return Err(ApiError::bad_request("kind", "is required")),
        Some(_) => return Err(ApiError::bad_request("kind", "must be a string")),
    };
    let input = match fields.remove("input") {
        None => Value::Object(Map::new()),
        Some(input @ Value::Object(_)) => input,
        Some(_) => return Err(ApiError::bad_request("input", "must be a JSON object")),
    };
    let start = match (fields.remove("runAt"), fields.remove("delaySeconds")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("delaySeconds", "give runAt or delaySeconds, not both"));
        }
        (Some(Value::String(text)), None) => StartAt::At(from_rfc3339(&text).ok_or_else(|| {
            ApiError::bad_request("runAt", "must be an RFC 3339 time with an offset, like 2026-12-24T18:00:00Z")
        })?),
        (Some(_), None) => return Err(ApiError::bad_request("runAt", "must be an RFC 3339 time string")),
        (None, Some(delay)) => match whole_number(&delay) {
            Some(seconds) => StartAt::After(std::time::Duration::from_secs(seconds)),
            None => return Err(ApiError::bad_request("delaySeconds", "must be a whole number of seconds")),
        },
        (None, None) => StartAt::Now,
    };
    let callback_url = match fields.remove("callback") {
        None => None,
        Some(Value::Object(mut callback)) => {
            if let Some(unknown) = callback.keys().find(|k| *k != "url") {
                return Err(ApiError::bad_request(format!("callback.{unknown}"), "unknown field; a callback has url"));
            }
            match callback.remove("url") {
                Some(Value::String(url)) => Some(url),
                Some(_) => return Err(ApiError::bad_request("callback.url", "must be a string")),
                None => return Err(ApiError::bad_request("callback.url", "is required")),
            }
        }
        Some(_) => return Err(ApiError::bad_request("callback", "must be an object with url")),
    };
    Ok(Submission { kind, input, start, callback_url })
}

/// A body's fields: a JSON object with only the `known` ones (`400` naming the body or the unknown field;
/// `shape` says what it should be).
pub(crate) fn json_fields(body: &[u8], known: &[&str], shape: &str) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {e}"))
            .field("body")
    })?;
    object_fields(value, known, shape)
}

/// A JSON value's fields: an object with only the `known` ones.
fn object_fields(value: Value, known: &[&str], shape: &str) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_request("body", format!("must be a JSON object: {shape}")));
    };
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(unknown.clone(), format!("unknown field; {shape}")));
    }
    Ok(fields)
}

/// A non-negative whole number, as JSON Schema counts integers: `60` and `60.0` alike.
pub(crate) fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let float = value.as_f64()?;
        (float >= 0.0 && float.fract() == 0.0 && float < u64::MAX as f64).then_some(float as u64)
    })
}

/// An input too large for the job's item is stored in S3, whose lifecycle rule removes it after
/// `JOB_RETENTION_DAYS`: such a job must start with a day to spare, or its input would be gone.
pub(crate) fn check_input_kept_until_start(
    api: &Api,
    start: StartAt,
    input: &Value,
    now: Millis,
) -> Result<(), ApiError> {
    let Some(run_at) = start.run_at(now) else { return Ok(()) };
    if input.to_string().len() <= api.payloads.inline_max_bytes() {
        return Ok(());
    }
    let days = api.payload_retention.as_secs() / 86_400;
    let kept = Duration::from_secs(days.saturating_sub(1) * 86_400).as_millis() as Millis;
    if run_at - now <= kept {
        return Ok(());
    }
    let field = if matches!(start, StartAt::After(_)) { "delaySeconds" } else { "runAt" };
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "start_too_far_ahead",
        format!(
            "an input over {} bytes is kept {days} days: schedule it at most {} days ahead, or send a smaller input",
            api.payloads.inline_max_bytes(),
            days.saturating_sub(1)
        ),
    )
    .field(field))
}

/// A start must be at most `MAX_SCHEDULE_AHEAD` away, and a `runAt` not long past.
pub(crate) fn check_start(start: StartAt, now: Millis) -> Result<(), ApiError> {
    let ahead = MAX_SCHEDULE_AHEAD.as_millis() as Millis;
    let (field, late) = match start {
        StartAt::Now => return Ok(()),
        StartAt::At(at) if at < now - RUN_AT_PAST_TOLERANCE_MS => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "start_in_the_past",
                format!(
                    "runAt is {} s in the past; give a future time (up to {} s late is run at once)",
                    (now - at) / 1000,
                    RUN_AT_PAST_TOLERANCE_MS / 1000
                ),
            )
            .field("runAt"));
        }
        StartAt::At(at) => ("runAt", at - now > ahead),
        StartAt::After(delay) => ("delaySeconds", delay > MAX_SCHEDULE_AHEAD),
    };
    if late {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "start_too_far_ahead",
            format!(
                "{field} is more than {} days ahead; jobs are scheduled up to that",
                MAX_SCHEDULE_AHEAD.as_secs() / 86_400
            ),
        )
        .field(field));
    }
    Ok(())
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any request body is a submission or a 400 naming the problem: never a panic, never a 5xx.
        #[test]
        fn any_body_is_a_submission_or_a_400(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(error) = parse_submission(&body) {
                prop_assert_eq!(error.status, StatusCode::BAD_REQUEST);
                prop_assert!(error.field.is_some());
            }
        }

        #[test]
        fn json_objects_are_a_submission_or_name_the_field(kind in proptest::option::of(".{0,10}"), input in proptest::option::of(any::<i64>()), extra in proptest::option::of("[a-z]{1,6}")) {
            let mut body = serde_json::Map::new();
            if let Some(kind) = &kind { body.insert("kind".into(), Value::String(kind.clone())); }
            if let Some(input) = input { body.insert("input".into(), Value::from(input)); }
            if let Some(extra) = &extra { body.insert(extra.clone(), Value::Null); }
            match parse_submission(Value::Object(body).to_string().as_bytes()) {
                Ok(submission) => prop_assert!(!submission.kind.is_empty() && submission.input.is_object()),
                Err(error) => prop_assert!(error.field.is_some()),
            }
        }
    }
}
