//! A tenant's webhooks: `GET|POST /webhooks/endpoints`, `DELETE /webhooks/endpoints/{endpointId}`,
//! `GET /webhooks/secret`, `POST /webhooks/secret/rotate`. Deliveries are made by the webhook sender
//! (`jobpipe_core::webhooks`); a job's own `callback` is taken by `POST /jobs`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jobpipe_core::clock::to_rfc3339;
use jobpipe_core::webhooks::WebhookEvent;
use jobpipe_core::webhooks::signing::SigningSecrets;
use jobpipe_core::webhooks::store::{Endpoint, MAX_ENDPOINTS, RotationRefused, TooManyEndpoints, WebhookStore};
use serde::Serialize;
use serde_json::Value;

use crate::Api;
use crate::caller::Authenticated;
use crate::error::{ApiError, CommonErrors, ErrorBody};
use crate::submit::{check_body, json_fields};

/// The events endpoints may subscribe to.
const DELIVERED: [WebhookEvent; 3] = WebhookEvent::ALL;

/// The longest endpoint description.
const MAX_DESCRIPTION_CHARS: usize = 200;

/// A new endpoint.
#[derive(Debug, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only its OpenAPI description is used: `parse_endpoint` reads the body.
pub struct NewEndpoint {
    /// An `https` URL on a public host; private, loopback, link-local and metadata addresses are refused.
    #[schema(max_length = 2048)]
    url: String,
    /// The events to deliver to it: `job.completed`, `job.failed`.
    #[schema(min_items = 1)]
    events: Vec<WebhookEvent>,
    #[schema(nullable = false, max_length = 200)]
    description: Option<String>,
}

/// A tenant's endpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    endpoints: Vec<Endpoint>,
}

/// The secrets deliveries are signed with (Standard Webhooks: HMAC-SHA256 over `id.timestamp.body`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSecret {
    /// `whsec_...`: verify deliveries with it (any Standard Webhooks library does).
    secret: String,
    /// The secret before the last rotation: deliveries carry its signature too until `previousValidUntil`.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    previous_valid_until: Option<String>,
}

impl WebhookSecret {
    fn of(secrets: SigningSecrets, now: i64) -> WebhookSecret {
        let previous = secrets.previous.filter(|(_, until)| *until > now);
        WebhookSecret {
            secret: secrets.current,
            previous_valid_until: previous.as_ref().map(|(_, until)| to_rfc3339(*until)),
            previous_secret: previous.map(|(secret, _)| secret),
        }
    }
}

/// Your webhook endpoints, oldest first.
#[utoipa::path(
    get,
    path = "/webhooks/endpoints",
    operation_id = "listWebhookEndpoints",
    tag = "webhooks",
    responses((status = 200, body = EndpointList), CommonErrors)
)]
pub async fn list(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<EndpointList>, ApiError> {
    Ok(Json(EndpointList { endpoints: store(&api)?.endpoints(&caller.sub).await? }))
}

/// Registers an endpoint for the events it names. Deliveries are signed with your secret
/// (`GET /webhooks/secret`); an endpoint takes effect within 5 seconds.
#[utoipa::path(
    post,
    path = "/webhooks/endpoints",
    operation_id = "addWebhookEndpoint",
    tag = "webhooks",
    request_body = NewEndpoint,
    responses(
        (status = 201, body = Endpoint),
        (status = 400, description = "The body is not JSON or not an endpoint.", body = ErrorBody),
        (status = 409, description = "You have 10 endpoints already, the most.", body = ErrorBody),
        (status = 413, description = "The body is over the size limit.", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`.", body = ErrorBody),
        (status = 422, description = "A URL webhooks may not call, or an unknown event.", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn add(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_body(&api, &headers, &body)?;
    let (url, events, description) = parse_endpoint(&api, &body)?;
    let store = store(&api)?;
    let now = api.clock.now_ms();
    let endpoint = store.add_endpoint(&caller.sub, &url, &events, description.as_deref(), now).await?.map_err(
        |TooManyEndpoints| {
            ApiError::new(
                StatusCode::CONFLICT,
                "too_many_endpoints",
                format!("a tenant has at most {MAX_ENDPOINTS} endpoints; remove one first"),
            )
        },
    )?;
    // The secret exists from the first endpoint on, so its owner can read it before any delivery.
    store.secrets_or_create(&caller.sub).await?;
    tracing::info!(endpoint_id = %endpoint.endpoint_id, "webhook endpoint added");
    Ok((StatusCode::CREATED, Json(endpoint)).into_response())
}

/// Removes an endpoint; deliveries already queued for it are still attempted.
#[utoipa::path(
    delete,
    path = "/webhooks/endpoints/{endpointId}",
    operation_id = "removeWebhookEndpoint",
    tag = "webhooks",
    params(("endpointId" = String, Path, description = "The id `POST /webhooks/endpoints` answered.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "No such endpoint (or not yours).", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn remove(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
    Path(endpoint_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let valid = endpoint_id.starts_with("ep_")
        && endpoint_id.len() <= 64
        && endpoint_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid || !store(&api)?.remove_endpoint(&caller.sub, &endpoint_id).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint"));
    }
    tracing::info!(%endpoint_id, "webhook endpoint removed");
    Ok(StatusCode::NO_CONTENT)
}

/// Your signing secret (made on first use), and the previous one while a rotation overlaps.
#[utoipa::path(
    get,
    path = "/webhooks/secret",
    operation_id = "getWebhookSecret",
    tag = "webhooks",
    responses((status = 200, body = WebhookSecret), CommonErrors)
)]
pub async fn secret(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<WebhookSecret>, ApiError> {
    let secrets = store(&api)?.secrets_or_create(&caller.sub).await?;
    Ok(Json(WebhookSecret::of(secrets, api.clock.now_ms())))
}

/// Makes a new signing secret. For 24 hours deliveries carry signatures by both, so receivers can move to
/// the new one at their own pace; another rotation waits until then.
#[utoipa::path(
    post,
    path = "/webhooks/secret/rotate",
    operation_id = "rotateWebhookSecret",
    tag = "webhooks",
    responses(
        (status = 200, body = WebhookSecret),
        (status = 409, description = "The previous rotation's overlap has not ended.", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn rotate(
    State(api): State<Arc<Api>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<WebhookSecret>, ApiError> {
    let now = api.clock.now_ms();
    let secrets = store(&api)?.rotate(&caller.sub, now).await?.map_err(|refused| {
        let message = match refused {
            RotationRefused::Overlapping { until } => format!(
                "the previous rotation's old secret stays valid until {}; rotate again after that",
                to_rfc3339(until)
            ),
            RotationRefused::Concurrent => "another rotation changed the secret at the same moment; read it".into(),
        };
        ApiError::new(StatusCode::CONFLICT, "rotation_in_progress", message)
    })?;
    tracing::info!("webhook secret rotated");
    Ok(Json(WebhookSecret::of(secrets, now)))
}

fn store(api: &Api) -> Result<&WebhookStore, ApiError> {
    api.webhooks.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "this deployment has no webhooks (WEBHOOKS_TABLE is not set)")
    })
}

/// A callback or endpoint URL webhooks may call; `422` naming `field` otherwise (also where this deployment
/// delivers no webhooks: a callback accepted there would never be called).
pub(crate) fn check_url(api: &Api, url: &str, field: &str) -> Result<String, ApiError> {
    if api.webhooks.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhooks_not_available",
            "this deployment delivers no webhooks (WEBHOOKS_TABLE is not set)",
        )
        .field(field));
    }
    api.webhook_targets.check_url(url).map(|url| url.to_string()).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_webhook_url", format!("the URL {e}")).field(field)
    })
}

fn parse_endpoint(api: &Api, body: &[u8]) -> Result<(String, Vec<WebhookEvent>, Option<String>), ApiError> {
    let mut fields =
        json_fields(body, &["url", "events", "description"], "an endpoint has url, events and description")?;
    let url = match fields.remove("url") {
        Some(Value::String(url)) => check_url(api, &url, "url")?,
        Some(_) => return Err(ApiError::bad_request("url", "must be a string")),
        None => return Err(ApiError::bad_request("url", "is required")),
    };
    let events = match fields.remove("events") {
        Some(Value::Array(names)) if !names.is_empty() => names
            .iter()
            .map(|name| name.as_str().and_then(WebhookEvent::parse).filter(|event| DELIVERED.contains(event)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                let known: Vec<_> = DELIVERED.iter().map(|e| e.as_str()).collect();
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_event",
                    format!("events are among {}", known.join(", ")),
                )
                .field("events")
            })?,
        Some(_) | None => return Err(ApiError::bad_request("events", "must be a non-empty list of event names")),
    };
    let description = match fields.remove("description") {
        None => None,
        Some(Value::String(text)) if text.chars().count() <= MAX_DESCRIPTION_CHARS => Some(text),
        Some(_) => {
            return Err(ApiError::bad_request(
                "description",
                format!("must be a string of at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
    };
    Ok((url, events, description))
}
