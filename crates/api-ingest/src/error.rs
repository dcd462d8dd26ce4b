//! The API's errors and their one JSON shape: `{"error": {"code", "message", "field"?}}`.
//!
//! As in axum's error-handling example, turning an error into a response has no side effects: a failed
//! AWS call rides on its response (an extension) to `log_aws_errors`, which logs it once per request,
//! wherever it was met.

use std::sync::Arc;

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jobpipe_core::AwsError;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
    /// The failed AWS call behind this answer, for the log only.
    cause: Option<Arc<AwsError>>,
    /// `Retry-After` in seconds, for a `429` or `503` (1 unless set).
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), field: None, cause: None, retry_after_secs: None }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The `Retry-After` a `429` or `503` answers with.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_secs = Some(seconds);
        self
    }

    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message).field(field)
    }

    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such job")
    }

    /// An `Idempotency-Key` already used with another request.
    pub fn key_reused() -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )
        .field("Idempotency-Key")
    }

    pub fn unauthorized(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }
}

/// A failed AWS call. Internals stay in the log; the client learns whether retrying can help.
impl From<AwsError> for ApiError {
    fn from(error: AwsError) -> Self {
        let answer = if error.is_retryable() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "a backing service is busy; retry shortly",
            )
        } else {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the request failed on our side")
        };
        ApiError { cause: Some(Arc::new(error)), ..answer }
    }
}

/// The failed AWS call behind a response, attached for `log_aws_errors`.
#[derive(Debug, Clone)]
struct AwsCause(Arc<AwsError>);

/// Logs the failed AWS call behind a response, if any. This is the one place such a failure is logged:
/// the conversion into `ApiError` runs at every `?` and stays free of side effects. The line names its
/// request's correlation id itself, so it is found by it also where the request's span is not recorded.
pub async fn log_aws_errors(request: Request, next: Next) -> Response {
    let correlation_id = request.extensions().get::<crate::CorrelationId>().map(|id| id.0.clone()).unwrap_or_default();
    let response = next.run(request).await;
    if let Some(AwsCause(error)) = response.extensions().get::<AwsCause>() {
        tracing::error!(%error, retryable = error.is_retryable(), %correlation_id, "request failed on an AWS call");
    }
    response
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, such as `invalid_request`, `invalid_input`, `unknown_kind`,
    /// `not_found`, `unauthorized` or `service_unavailable`.
    pub code: &'static str,
    /// For people: what is wrong and how to fix it.
    pub message: String,
    /// The request field at fault (`kind`, `input.width`, `Idempotency-Key`, a query parameter, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A `401`: from API Gateway's authorizer, or from the function.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only its OpenAPI description is used.
pub enum UnauthorizedBody {
    Api(ErrorBody),
    Gateway(GatewayMessage),
}

/// API Gateway's own answer, before the function runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GatewayMessage {
    pub message: String,
}

/// Error answers every operation may give.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only its OpenAPI description is used: `ApiError` writes these bodies.
pub enum CommonErrors {
    /// The token is missing, malformed, expired or not ours. API Gateway's JWT authorizer answers most
    /// of these itself, in its own shape (`{"message": "Unauthorized"}`); the function answers the rest
    /// in the API's (`WWW-Authenticate: Bearer`).
    #[response(status = 401)]
    Unauthorized(UnauthorizedBody),
    /// A backing service is throttling or unavailable; retry after `Retry-After` seconds.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, field: self.field } };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(AwsCause(cause));
        }
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // Unless said otherwise: quotas count per second, the next one starts within a second.
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                let seconds = HeaderValue::from(self.retry_after_secs.unwrap_or(1));
                response.headers_mut().insert(header::RETRY_AFTER, seconds);
            }
            _ => {}
        }
        response
    }
}
