//! The local API Gateway, one server on one port: the HTTP API's routes as API Gateway v2 events
//! (`http_api`), the WebSocket API as a real WebSocket endpoint (`/ws`) routed to its functions
//! (`websocket`), the `@connections` management API that pushes to those sockets (`connections`), the
//! dev helpers (`/dev/*`), the Bedrock stand-in, and the web UI's files; `access` judges the calls
//! that need IAM.

mod access;
mod connections;
mod http_api;
mod websocket;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Mutex;

pub use access::GatewayAccess;
pub use http_api::{Cors, HttpRoute, match_path};
pub use websocket::SocketRoute;

use crate::bedrock::BedrockStandIn;
use connections::Connection;

/// Dev-only helpers the gateway serves besides the emulated APIs.
pub trait DevHelpers: Send + Sync {
    fn token(&self, sub: &str) -> String;
    fn resources(&self) -> Value;
}

pub struct Gateway {
    pub http_routes: Vec<HttpRoute>,
    /// The HTTP API's CORS configuration, if the template gives one.
    pub cors: Option<Cors>,
    pub socket_routes: Vec<SocketRoute>,
    pub web_dir: PathBuf,
    pub dev: Arc<dyn DevHelpers>,
    /// The Bedrock runtime stand-in (`/model/{id}/invoke`), served on the same port.
    pub bedrock: Arc<BedrockStandIn>,
    /// Judges `@connections` and Bedrock calls by the caller's role; without it, anyone may.
    pub access: Option<GatewayAccess>,
    connections: Mutex<HashMap<String, Connection>>,
}

impl Gateway {
    pub fn new(
        http_routes: Vec<HttpRoute>,
        cors: Option<Cors>,
        socket_routes: Vec<SocketRoute>,
        web_dir: PathBuf,
        dev: Arc<dyn DevHelpers>,
        access: Option<GatewayAccess>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            http_routes,
            cors,
            socket_routes,
            web_dir,
            dev,
            bedrock: Arc::new(BedrockStandIn::default()),
            access,
            connections: Mutex::new(HashMap::new()),
        })
    }

    pub fn router(self: &Arc<Gateway>) -> Router {
        Router::new()
            .route("/ws", get(websocket::websocket))
            .route(
                "/@connections/{id}",
                post(connections::push).get(connections::connection_info).delete(connections::close_connection),
            )
            .route("/dev/token", post(dev_token))
            .route(crate::dev_key::DEV_JWKS_PATH, get(dev_jwks))
            .route("/dev/resources", get(dev_resources))
            .fallback(http_api::http_api)
            .with_state(self.clone())
            .merge(self.bedrock.router())
            .layer(axum::middleware::from_fn_with_state(self.clone(), access::judge))
    }

    /// How many WebSocket connections are open.
    pub async fn open_connections(&self) -> usize {
        self.connections.lock().await.len()
    }

    pub(crate) fn socket_route(&self, key: &str) -> Option<&SocketRoute> {
        self.socket_routes.iter().find(|r| r.route_key == key)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn rfc3339(ms: u64) -> String {
    jobpipe_core::clock::to_rfc3339(ms as i64)
}

pub(crate) fn gateway_error(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json!({ "message": message }).to_string()).into_response()
}

/// A file of the web UI, as a static host serves it (`/` is `index.html`); `None` when there is none.
pub async fn static_file(web_dir: &std::path::Path, path: &str) -> Option<Response> {
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() { "index.html" } else { relative };
    if relative.split('/').any(|part| part == ".." || part.starts_with('.')) {
        return None;
    }
    let file = web_dir.join(relative);
    let contents = tokio::fs::read(&file).await.ok()?;
    let content_type = match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    Some(([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], contents).into_response())
}

async fn dev_token(State(gateway): State<Arc<Gateway>>, body: Bytes) -> Response {
    let sub = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.get("sub")?.as_str().map(String::from));
    match sub.filter(|s| (1..=128).contains(&s.len()) && !s.chars().any(char::is_control)) {
        Some(sub) => axum::Json(json!({"token": gateway.dev.token(&sub), "sub": sub})).into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"code": "invalid_request", "message": "send {\"sub\": \"<1-128 characters>\"}", "field": "sub"}})),
        )
            .into_response(),
    }
}

/// The dev key's JWKS, which the local functions fetch to verify tokens (`JWT_JWKS_URL`).
async fn dev_jwks() -> Response {
    axum::Json(crate::dev_key::dev_jwks()).into_response()
}

async fn dev_resources(State(gateway): State<Arc<Gateway>>) -> Response {
    let mut resources = gateway.dev.resources();
    let connections: Vec<String> = gateway.connections.lock().await.keys().cloned().collect();
    resources["webSocketConnections"] = json!(connections);
    axum::Json(resources).into_response()
}
