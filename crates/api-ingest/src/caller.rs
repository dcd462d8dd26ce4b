//! Extracts the authenticated caller from a request, through `jobpipe_core::auth` (the one place that
//! decides identity).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jobpipe_core::auth::Caller;
use lambda_http::request::RequestContext;

use crate::Api;
use crate::error::ApiError;

/// The caller of a request, authenticated.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

impl FromRequestParts<Arc<Api>> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, Self::Rejection> {
        let authorizer_sub = parts.extensions.get::<RequestContext>().and_then(authorizer_sub);
        let authorization = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        api.auth.authenticate(authorizer_sub.as_deref(), authorization).await.map(Authenticated).map_err(|reason| {
            // The reason is logged; the token never is.
            if reason.is_retryable() {
                // The token may be fine: the issuer's keys could not be fetched.
                tracing::warn!(%reason, "request not authenticated");
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", reason.to_string());
            }
            tracing::info!(%reason, "request not authenticated");
            ApiError::unauthorized(reason.to_string())
        })
    }
}

/// The `sub` claim API Gateway's JWT authorizer validated, if this request came through one.
fn authorizer_sub(context: &RequestContext) -> Option<String> {
    match context {
        RequestContext::ApiGatewayV2(ctx) => ctx.authorizer.as_ref()?.jwt.as_ref()?.claims.get("sub").cloned(),
        _ => None,
    }
}

/// API Gateway's id for the request, used as the correlation id when the client sent none.
pub fn gateway_request_id(parts: &Parts) -> Option<String> {
    match parts.extensions.get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.request_id.clone(),
        _ => None,
    }
}
