//! The jobs HTTP API: `POST /jobs`, `GET /jobs`, `GET /jobs/{jobId}`, `DELETE /jobs/{jobId}`, `GET /kinds`,
//! recurring jobs under `/schedules`, and a tenant's webhook endpoints and signing secret under `/webhooks`.
//!
//! An axum router served by `lambda_http` behind API Gateway, and by the local stack's HTTP server
//! elsewhere; tests call it directly.

mod batches;
mod caller;
mod error;
mod jobs;
pub mod openapi;
mod schedules;
mod submit;
mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jobpipe_core::auth::Authenticator;
use jobpipe_core::clock::Clock;
use jobpipe_core::config::{AwsClients, Config, ConfigError};
use jobpipe_core::controls::{ControlStore, SubmissionQuota};
use jobpipe_core::dispatch::Dispatcher;
use jobpipe_core::kinds::KindRegistry;
use jobpipe_core::open_jobs::OpenJobs;
use jobpipe_core::payload::PayloadStore;
use jobpipe_core::schedules::ScheduleStore;
use jobpipe_core::store::JobStore;
use jobpipe_core::webhooks::store::WebhookStore;
use jobpipe_core::webhooks::target::TargetPolicy;
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;

/// The `Service` dimension of this function's metrics.
pub const SERVICE: &str = "api-ingest";

/// Header a client may set to trace a request end to end; echoed on every response.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";

/// Everything the API needs, built once per execution environment.
#[derive(Debug)]
pub struct Api {
    pub store: JobStore,
    pub payloads: PayloadStore,
    /// `None` where `SCHEDULES_TABLE` is not set: the schedule routes answer `404`.
    pub schedules: Option<ScheduleStore>,
    /// The paused kinds `GET /kinds` shows; `None` where `CONTROL_TABLE` is not set.
    pub controls: Option<ControlStore>,
    /// Submissions per second per tenant (`POST /jobs` answers 429 over it); `None` without a control table.
    pub quota: Option<SubmissionQuota>,
    /// Webhook endpoints and signing secrets; `None` where `WEBHOOKS_TABLE` is not set.
    pub webhooks: Option<WebhookStore>,
    /// Which callback and endpoint URLs are accepted.
    pub webhook_targets: TargetPolicy,
    pub dispatcher: Dispatcher,
    pub kinds: KindRegistry,
    pub auth: Authenticator,
    pub clock: Arc<dyn Clock>,
    pub max_body_bytes: usize,
    pub dispatch_grace: Duration,
    pub result_url_ttl: Duration,
    /// How long stored payloads are kept (`JOB_RETENTION_DAYS`, the bucket's lifecycle rule).
    pub payload_retention: Duration,
}

impl Api {
    pub fn new(config: &Config, clients: &AwsClients, clock: Arc<dyn Clock>) -> Result<Api, ConfigError> {
        Ok(Api {
            store: JobStore::new(clients.dynamodb.clone(), &config.jobs_table, config.job_retention.as_secs() as i64),
            payloads: PayloadStore::new(clients.s3.clone(), &config.payload_bucket, config.inline_payload_max_bytes),
            schedules: config.schedules_table.as_ref().map(|table| ScheduleStore::new(clients.dynamodb.clone(), table)),
            controls: config.control_table.as_ref().map(|table| ControlStore::new(clients.dynamodb.clone(), table)),
            quota: config.control_table.as_ref().map(|table| {
                SubmissionQuota::new(
                    ControlStore::new(clients.dynamodb.clone(), table),
                    config.tenant_submissions_per_second,
                )
                .with_open_jobs(OpenJobs::new(clients.dynamodb.clone(), table), config.tenant_open_jobs)
            }),
            webhooks: config.webhooks_table.as_ref().map(|table| WebhookStore::new(clients.dynamodb.clone(), table)),
            webhook_targets: config.webhook_targets,
            dispatcher: Dispatcher::new(clients.sqs.clone(), config.queue_routes.clone()),
            kinds: KindRegistry::from_config(&config.kinds, &clients.bedrock),
            auth: config.authenticator()?,
            clock,
            max_body_bytes: config.max_body_bytes,
            dispatch_grace: config.dispatch_grace,
            result_url_ttl: config.result_url_ttl,
            payload_retention: config.job_retention,
        })
    }
}

/// The correlation id of the request being handled.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

pub fn router(api: Arc<Api>) -> Router {
    let (routes, openapi) = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(jobs::list, submit::submit))
        .routes(routes!(jobs::get, jobs::cancel))
        .routes(routes!(jobs::kinds))
        .routes(routes!(schedules::list, schedules::create))
        .routes(routes!(schedules::get, schedules::delete))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(batches::create))
        .routes(routes!(batches::get, batches::cancel))
        .routes(routes!(webhooks::list, webhooks::add))
        .routes(routes!(webhooks::remove))
        .routes(routes!(webhooks::secret))
        .routes(routes!(webhooks::rotate))
        .split_for_parts();
    let document = Arc::new(openapi::document(&openapi, &api.kinds));
    routes
        .route(openapi::OPENAPI_PATH, get(move || async move { axum::Json(document.as_ref().clone()) }))
        .fallback(|method: Method| async move {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for this path ({method})"))
        })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed here"))
        })
        // Size is checked by the handler against `max_body_bytes`, with our own error shape.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(answer_preflight))
        // Inside `correlate`, so the line carries the request's correlation id.
        .layer(middleware::from_fn(error::log_aws_errors))
        .layer(middleware::from_fn_with_state(api.clone(), correlate))
        .with_state(api)
}

/// Gives every request a correlation id (the client's, API Gateway's request id, or a new one), runs it
/// inside a span that carries it, logs one line per request and echoes the id.
async fn correlate(State(_api): State<Arc<Api>>, mut request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let correlation_id = parts
        .headers
        .get(CORRELATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_safe_id(v))
        .map(String::from)
        .or_else(|| caller::gateway_request_id(&parts))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    parts.extensions.insert(CorrelationId(correlation_id.clone()));
    let (method, path) = (parts.method.clone(), parts.uri.path().to_string());
    request = Request::from_parts(parts, body);

    if jobpipe_core::metrics::take_cold_start() {
        jobpipe_core::metrics::emit(SERVICE, "ColdStart", jobpipe_core::metrics::Unit::Count, 1.0, &[]);
    }
    let started = Instant::now();
    let span = tracing::info_span!("request", %correlation_id);
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            %method,
            %path,
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_millis() as u64,
            "request handled"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(CORRELATION_ID_HEADER, value);
    }
    response.into_response()
}

/// Answers CORS preflights (`OPTIONS` on any path, the template's unauthenticated preflight route) with
/// `204`: API Gateway adds the CORS headers of the API's `CorsConfiguration` to it, and ignores any the
/// function would set.
async fn answer_preflight(request: Request, next: Next) -> Response {
    if request.method() == Method::OPTIONS {
        return StatusCode::NO_CONTENT.into_response();
    }
    next.run(request).await
}

/// Client-chosen ids end up in logs and message attributes: keep them short and plain.
fn is_safe_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}
