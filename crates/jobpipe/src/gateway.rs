//! The local API Gateway: the HTTP API's routes as API Gateway v2 events, the WebSocket API as a real
//! WebSocket endpoint (`/ws`) routed to its function, the `@connections` management API that pushes to
//! those sockets, the dev helpers, and the web UI.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use crate::bedrock::BedrockStandIn;
use crate::resources::ACCOUNT;
use crate::runtime::Function;
use crate::template::DEFAULT_ROUTE;

/// The largest body the HTTP API accepts (API Gateway's limit).
const MAX_HTTP_BODY: usize = 10 * 1024 * 1024;
/// API Gateway WebSocket messages are at most 128 KB.
const MAX_WS_MESSAGE: usize = 128 * 1024;

/// An HTTP API route from the template and the function behind it.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    pub method: String,
    pub path: String,
    pub function: Function,
    /// Guarded by the API's JWT authorizer: a request without a token is refused before the function.
    pub authorized: bool,
}

/// The HTTP API's `CorsConfiguration`, resolved. API Gateway answers preflights no route takes, adds these
/// headers to what the integration answers, and drops any CORS headers the integration sets.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
}

impl Cors {
    fn allows(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    }

    /// Replaces the response's CORS headers with the configured ones, for a request from `origin`.
    fn apply(&self, origin: Option<&str>, preflight: bool, headers: &mut HeaderMap) {
        let names: Vec<_> =
            headers.keys().filter(|name| name.as_str().starts_with("access-control-")).cloned().collect();
        for name in names {
            headers.remove(name);
        }
        let Some(origin) = origin.filter(|origin| self.allows(origin)) else { return };
        let mut set = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        let any_origin = self.allow_origins.iter().any(|o| o == "*") && !self.allow_credentials;
        set("access-control-allow-origin", if any_origin { "*".into() } else { origin.to_string() });
        if self.allow_credentials {
            set("access-control-allow-credentials", "true".into());
        }
        if preflight {
            set("access-control-allow-methods", self.allow_methods.join(","));
            set("access-control-allow-headers", self.allow_headers.join(","));
            if let Some(max_age) = self.max_age {
                set("access-control-max-age", max_age.to_string());
            }
        } else if !self.expose_headers.is_empty() {
            set("access-control-expose-headers", self.expose_headers.join(","));
        }
    }
}

/// A WebSocket route key and its function; `replies` when the route sends the function's answer back.
#[derive(Debug, Clone)]
pub struct SocketRoute {
    pub route_key: String,
    pub function: Function,
    pub replies: bool,
}

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
    connections: Mutex<HashMap<String, Connection>>,
}

struct Connection {
    outgoing: mpsc::UnboundedSender<Message>,
    connected_at: u64,
    last_active_at: u64,
}

impl Gateway {
    pub fn new(
        http_routes: Vec<HttpRoute>,
        cors: Option<Cors>,
        socket_routes: Vec<SocketRoute>,
        web_dir: PathBuf,
        dev: Arc<dyn DevHelpers>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            http_routes,
            cors,
            socket_routes,
            web_dir,
            dev,
            bedrock: Arc::new(BedrockStandIn::default()),
            connections: Mutex::new(HashMap::new()),
        })
    }

    pub fn router(self: &Arc<Gateway>) -> Router {
        Router::new()
            .route("/ws", get(websocket))
            .route("/@connections/{id}", post(push).get(connection_info).delete(close_connection))
            .route("/dev/token", post(dev_token))
            .route(crate::dev::DEV_JWKS_PATH, get(dev_jwks))
            .route("/dev/resources", get(dev_resources))
            .fallback(http_api)
            .with_state(self.clone())
            .merge(self.bedrock.router())
    }

    /// How many WebSocket connections are open.
    pub async fn open_connections(&self) -> usize {
        self.connections.lock().await.len()
    }

    fn socket_route(&self, key: &str) -> Option<&SocketRoute> {
        self.socket_routes.iter().find(|r| r.route_key == key)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    jobpipe_core::clock::to_rfc3339(ms as i64)
}

fn gateway_error(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json!({ "message": message }).to_string()).into_response()
}

// ---- HTTP API -------------------------------------------------------------------------------------

/// Matches a template path (`/jobs/{jobId}`, `/{proxy+}`) against a request path.
pub fn match_path(template: &str, path: &str) -> Option<HashMap<String, String>> {
    let pattern: Vec<&str> = template.trim_matches('/').split('/').collect();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut parameters = HashMap::new();
    for (index, part) in pattern.iter().enumerate() {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix("+}")) {
            parameters.insert(name.to_string(), segments.get(index..)?.join("/"));
            return Some(parameters);
        }
        let segment = segments.get(index)?;
        match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if !segment.is_empty() => {
                parameters.insert(name.to_string(), segment.to_string());
            }
            Some(_) => return None,
            None if part == segment => {}
            None => return None,
        }
    }
    (segments.len() == pattern.len()).then_some(parameters)
}

async fn http_api(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let origin = parts.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(String::from);
    let preflight = parts.method == Method::OPTIONS
        && origin.is_some()
        && parts.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let route = gateway.http_routes.iter().filter(|route| route.path != DEFAULT_ROUTE).find_map(|route| {
        let method_matches = route.method == "ANY" || route.method == parts.method.as_str();
        let parameters = match_path(&route.path, &path)?;
        method_matches.then_some((route, parameters))
    });
    // What no route takes: the web UI's files (served here, not by API Gateway), then `$default`.
    let route = match route {
        Some(route) => route,
        None => {
            if parts.method == Method::GET
                && let Some(file) = static_file(&gateway.web_dir, &path).await
            {
                return file;
            }
            match gateway.http_routes.iter().find(|route| route.path == DEFAULT_ROUTE) {
                Some(route) => (route, HashMap::new()),
                // With CORS configured, API Gateway answers a preflight no route takes by itself.
                None if preflight && gateway.cors.is_some() => {
                    let mut response = StatusCode::NO_CONTENT.into_response();
                    if let Some(cors) = &gateway.cors {
                        cors.apply(origin.as_deref(), true, response.headers_mut());
                    }
                    return response;
                }
                None => return gateway_error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
    };
    let (route, path_parameters) = route;
    // The JWT authorizer's identity source is the Authorization header: without it API Gateway answers
    // 401 itself, before the function and without CORS headers (so a browser sees a CORS failure).
    if route.authorized && !parts.headers.contains_key(header::AUTHORIZATION) {
        return gateway_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let body = match axum::body::to_bytes(body, MAX_HTTP_BODY).await {
        Ok(body) => body,
        Err(_) => return gateway_error(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large"),
    };
    let source_ip = ConnectInfo::<std::net::SocketAddr>::from_request_parts(&mut parts, &())
        .await
        .map(|ConnectInfo(a)| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into());
    let event = http_event(&parts, &route.method, &route.path, path_parameters, &body, &source_ip);
    let mut response = match route.function.invoke_json(&event).await {
        Ok(response) => http_response(response),
        Err(error) => {
            tracing::warn!(%error, "HTTP API integration failed");
            gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    };
    if let Some(cors) = &gateway.cors {
        cors.apply(origin.as_deref(), preflight, response.headers_mut());
    }
    response
}

/// The API Gateway HTTP API (payload format 2.0) event for a request.
fn http_event(
    parts: &http::request::Parts,
    route_method: &str,
    route_path: &str,
    path_parameters: HashMap<String, String>,
    body: &Bytes,
    source_ip: &str,
) -> Value {
    let mut headers = serde_json::Map::new();
    let mut cookies = Vec::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).to_string();
        if name == header::COOKIE {
            cookies.extend(value.split(';').map(|c| c.trim().to_string()));
            continue;
        }
        let entry = headers.entry(name.as_str().to_string()).or_insert(Value::String(String::new()));
        let joined = match entry.as_str() {
            Some("") => value,
            Some(existing) => format!("{existing},{value}"),
            None => value,
        };
        *entry = Value::String(joined);
    }
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let mut query = serde_json::Map::new();
    for (key, value) in url_pairs(&raw_query) {
        let entry = query.entry(key).or_insert(Value::String(String::new()));
        let joined = match entry.as_str() {
            Some("") => value,
            Some(existing) => format!("{existing},{value}"),
            None => value,
        };
        *entry = Value::String(joined);
    }
    let (body, is_base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let now = now_ms();
    let request_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&uuid::Uuid::new_v4().as_bytes()[..10]);
    let route_key =
        if route_path == DEFAULT_ROUTE { DEFAULT_ROUTE.to_string() } else { format!("{route_method} {route_path}") };
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": parts.uri.path(),
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "local",
            "domainName": parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": parts.headers.get(header::USER_AGENT).and_then(|h| h.to_str().ok()).unwrap_or(""),
            },
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": rfc3339(now),
            "timeEpoch": now,
        },
        "isBase64Encoded": is_base64,
    });
    if !body.is_empty() {
        event["body"] = json!(body);
    }
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    if !path_parameters.is_empty() {
        event["pathParameters"] = json!(path_parameters);
    }
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    event
}

/// Splits and percent-decodes a query string.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(text: &str) -> String {
        let bytes = text.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && i + 2 < bytes.len()
                && let Ok(byte) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
            {
                out.push(byte);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Turns the function's answer into an HTTP response as API Gateway does (format 2.0).
fn http_response(response: Value) -> Response {
    let Some(status) = response.get("statusCode").and_then(Value::as_u64) else {
        // Without statusCode API Gateway infers 200 and a JSON body.
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], response.to_string()).into_response();
    };
    let mut builder =
        Response::builder().status(StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (name, value) in response.get("headers").and_then(Value::as_object).into_iter().flatten() {
        if let Some(value) = value.as_str() {
            builder = builder.header(name.as_str(), value);
        }
    }
    for (name, values) in response.get("multiValueHeaders").and_then(Value::as_object).into_iter().flatten() {
        for value in values.as_array().into_iter().flatten().filter_map(Value::as_str) {
            builder = builder.header(name.as_str(), value);
        }
    }
    for cookie in response.get("cookies").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        builder = builder.header(header::SET_COOKIE, cookie);
    }
    let body = response.get("body").and_then(Value::as_str).unwrap_or("");
    let body = if response.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        base64::engine::general_purpose::STANDARD.decode(body).unwrap_or_default()
    } else {
        body.as_bytes().to_vec()
    };
    builder.body(Body::from(body)).unwrap_or_else(|_| gateway_error(StatusCode::BAD_GATEWAY, "Bad Gateway"))
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

// ---- WebSocket API --------------------------------------------------------------------------------

fn socket_event(connection_id: &str, route_key: &str, event_type: &str, connected_at: u64) -> Value {
    let now = now_ms();
    json!({
        "requestContext": {
            "routeKey": route_key,
            "eventType": event_type,
            "messageDirection": "IN",
            "connectionId": connection_id,
            "connectedAt": connected_at,
            "requestTimeEpoch": now,
            "requestTime": rfc3339(now),
            "requestId": uuid::Uuid::new_v4().to_string(),
            "extendedRequestId": uuid::Uuid::new_v4().to_string(),
            "apiId": "local",
            "stage": "local",
            "domainName": "127.0.0.1",
            "identity": { "sourceIp": "127.0.0.1" },
        },
        "isBase64Encoded": false,
    })
}

fn new_connection_id() -> String {
    // API Gateway's ids look like `L0SM9cOFvHcCIhw=`.
    base64::engine::general_purpose::STANDARD.encode(&uuid::Uuid::new_v4().as_bytes()[..10])
}

async fn websocket(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(connect) = gateway.socket_route("$connect").cloned() else {
        return gateway_error(StatusCode::NOT_FOUND, "the template declares no $connect route");
    };
    let connection_id = new_connection_id();
    let connected_at = now_ms();
    let mut event = socket_event(&connection_id, "$connect", "CONNECT", connected_at);
    if !query.is_empty() {
        event["queryStringParameters"] = json!(query);
    }
    let header_map: serde_json::Map<String, Value> =
        headers.iter().map(|(k, v)| (k.as_str().to_string(), json!(String::from_utf8_lossy(v.as_bytes())))).collect();
    event["headers"] = Value::Object(header_map);
    let answer = connect.function.invoke_json(&event).await;
    let status = match &answer {
        Ok(response) => response.get("statusCode").and_then(Value::as_u64).unwrap_or(200) as u16,
        Err(_) => 500,
    };
    if !(200..300).contains(&status) {
        let body =
            answer.ok().and_then(|r| r.get("body").and_then(Value::as_str).map(String::from)).unwrap_or_default();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        return (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    // Registered only now that $connect has returned, as API Gateway does: until then `@connections`
    // answers GoneException, which is what the notifier sees on AWS for a push racing the handshake.
    let (outgoing, queued) = mpsc::unbounded_channel();
    gateway
        .connections
        .lock()
        .await
        .insert(connection_id.clone(), Connection { outgoing, connected_at, last_active_at: connected_at });
    let failed = (gateway.clone(), connection_id.clone());
    upgrade
        .max_message_size(MAX_WS_MESSAGE)
        .on_failed_upgrade(move |error| {
            tracing::warn!(%error, "WebSocket upgrade failed after $connect");
            tokio::spawn(async move { close_socket(&failed.0, &failed.1, connected_at).await });
        })
        .on_upgrade(move |socket| serve_socket(gateway, connection_id, connected_at, socket, queued))
}

async fn serve_socket(
    gateway: Arc<Gateway>,
    connection_id: String,
    connected_at: u64,
    socket: WebSocket,
    mut queued: mpsc::UnboundedReceiver<Message>,
) {
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(message) = queued.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(message)) = stream.next().await {
        let body = match message {
            Message::Text(text) => text.to_string(),
            Message::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Message::Close(_) => break,
            _ => continue,
        };
        if let Some(connection) = gateway.connections.lock().await.get_mut(&connection_id) {
            connection.last_active_at = now_ms();
        }
        // Route selection: `$request.body.action`, falling back to `$default`.
        let action =
            serde_json::from_str::<Value>(&body).ok().and_then(|v| v.get("action")?.as_str().map(String::from));
        let route = action
            .as_deref()
            .and_then(|a| gateway.socket_route(a))
            .or_else(|| gateway.socket_route("$default"))
            .cloned();
        let Some(route) = route else { continue };
        let mut event = socket_event(&connection_id, &route.route_key, "MESSAGE", connected_at);
        event["body"] = json!(body);
        let (gateway, connection_id) = (gateway.clone(), connection_id.clone());
        // Messages are handled concurrently, as API Gateway invokes the integration per message.
        tokio::spawn(async move {
            let reply = match route.function.invoke_json(&event).await {
                Ok(response) => response.get("body").and_then(Value::as_str).map(String::from),
                Err(error) => {
                    tracing::warn!(%error, "WebSocket integration failed");
                    Some(json!({"message": "Internal server error", "connectionId": connection_id}).to_string())
                }
            };
            if let (true, Some(reply)) = (route.replies, reply.filter(|r| !r.is_empty()))
                && let Some(connection) = gateway.connections.lock().await.get(&connection_id)
            {
                let _ = connection.outgoing.send(Message::Text(reply.into()));
            }
        });
    }
    writer.abort();
    close_socket(&gateway, &connection_id, connected_at).await;
}

/// Forgets a connection and runs `$disconnect` for it.
async fn close_socket(gateway: &Gateway, connection_id: &str, connected_at: u64) {
    gateway.connections.lock().await.remove(connection_id);
    if let Some(disconnect) = gateway.socket_route("$disconnect").cloned() {
        let event = socket_event(connection_id, "$disconnect", "DISCONNECT", connected_at);
        if let Err(error) = disconnect.function.invoke_json(&event).await {
            tracing::warn!(%error, "$disconnect failed");
        }
    }
}

// ---- @connections management API ------------------------------------------------------------------
// A connection exists here from when its `$connect` returned until it closed; before and after, every
// call answers GoneException, as API Gateway's does.

fn gone(connection_id: &str) -> Response {
    let mut response = (
        StatusCode::GONE,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"message": format!("connection {connection_id} is gone")}).to_string(),
    )
        .into_response();
    response.headers_mut().insert("x-amzn-errortype", HeaderValue::from_static("GoneException"));
    response
}

async fn push(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>, body: Bytes) -> Response {
    let connections = gateway.connections.lock().await;
    let Some(connection) = connections.get(&id) else { return gone(&id) };
    let message = match String::from_utf8(body.to_vec()) {
        Ok(text) => Message::Text(text.into()),
        Err(e) => Message::Binary(e.into_bytes().into()),
    };
    match connection.outgoing.send(message) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(_) => gone(&id),
    }
}

async fn connection_info(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let connections = gateway.connections.lock().await;
    let Some(connection) = connections.get(&id) else { return gone(&id) };
    axum::Json(json!({
        "connectedAt": rfc3339(connection.connected_at),
        "lastActiveAt": rfc3339(connection.last_active_at),
        "identity": {"sourceIp": "127.0.0.1", "userAgent": ""},
    }))
    .into_response()
}

async fn close_connection(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    match gateway.connections.lock().await.get(&id) {
        Some(connection) => {
            let _ = connection.outgoing.send(Message::Close(None));
            StatusCode::NO_CONTENT.into_response()
        }
        None => gone(&id),
    }
}

// ---- Dev helpers ----------------------------------------------------------------------------------

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
    axum::Json(crate::dev::dev_jwks()).into_response()
}

async fn dev_resources(State(gateway): State<Arc<Gateway>>) -> Response {
    let mut resources = gateway.dev.resources();
    let connections: Vec<String> = gateway.connections.lock().await.keys().cloned().collect();
    resources["webSocketConnections"] = json!(connections);
    axum::Json(resources).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_template_paths() {
        let check = |template: &str, path: &str, expected: Option<&[(&str, &str)]>| {
            let expected = expected.map(|pairs| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            assert_eq!(match_path(template, path), expected, "{template} ~ {path}");
        };
        check("/jobs", "/jobs", Some(&[]));
        check("/jobs", "/jobs/", Some(&[]));
        check("/jobs/{jobId}", "/jobs/abc", Some(&[("jobId", "abc")]));
        check("/jobs/{jobId}", "/jobs", None);
        check("/jobs/{jobId}", "/jobs/a/b", None);
        check("/jobs", "/other", None);
        check("/{proxy+}", "/a/b/c", Some(&[("proxy", "a/b/c")]));
    }

    #[test]
    fn decodes_query_strings() {
        assert_eq!(
            url_pairs("status=queued&limit=2&nextToken=a%3Db&x&q=a+b"),
            vec![
                ("status".into(), "queued".into()),
                ("limit".into(), "2".into()),
                ("nextToken".into(), "a=b".into()),
                ("x".into(), String::new()),
                ("q".into(), "a b".into()),
            ]
        );
    }
}
