//! IAM at the gateway's port: `@connections` calls need `execute-api:ManageConnections` on the
//! connection's path, and the Bedrock stand-in's `InvokeModel` needs `bedrock:InvokeModel` on the
//! model's ARN. A call the caller's role does not allow answers 403 as those services do.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Gateway;
use crate::aws::REGION;
use crate::iam::{Iam, Verdict, caller_key, percent_decode};

/// Whose calls the gateway judges, and the WebSocket API's stage as an `execute-api` ARN
/// (`arn:aws:execute-api:<region>:<account>:<api id>/<stage>`).
pub struct GatewayAccess {
    pub iam: Arc<Iam>,
    pub websocket_stage_arn: String,
}

pub(super) async fn judge(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let Some(access) = &gateway.access else { return next.run(request).await };
    let path = request.uri().path();
    let requested = if let Some(connection) = path.strip_prefix("/@connections/") {
        let resource = format!("{}/{}/@connections/{connection}", access.websocket_stage_arn, request.method());
        ("execute-api:ManageConnections".to_string(), resource)
    } else if let Some(model) = path.strip_prefix("/model/").and_then(|rest| rest.strip_suffix("/invoke")) {
        let resource = format!("arn:aws:bedrock:{REGION}::foundation-model/{}", percent_decode(model));
        ("bedrock:InvokeModel".to_string(), resource)
    } else {
        return next.run(request).await;
    };
    let key =
        caller_key(request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()), request.uri().query());
    let (kind, message) = match access.iam.judge(key.as_deref(), &[requested]) {
        Verdict::Allowed => return next.run(request).await,
        Verdict::Denied { message, .. } => ("AccessDeniedException", message),
        Verdict::UnknownKey => {
            ("UnrecognizedClientException", "The security token included in the request is invalid.".to_string())
        }
    };
    let mut response = (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "message": message }).to_string(),
    )
        .into_response();
    response.headers_mut().insert("x-amzn-errortype", HeaderValue::from_static(kind));
    response
}
