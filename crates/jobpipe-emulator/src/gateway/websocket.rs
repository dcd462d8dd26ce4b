//! The WebSocket API as API Gateway runs it: `$connect` (the connection exists only once it returned),
//! route selection on `$request.body.action` with `$default` as the fallback, route responses, and
//! `$disconnect` when the socket closes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::connections::Connection;
use super::{Gateway, gateway_error, now_ms, rfc3339};
use crate::runtime::Function;

/// API Gateway WebSocket messages are at most 128 KB.
const MAX_WS_MESSAGE: usize = 128 * 1024;

/// A WebSocket route key and its function; `replies` when the route sends the function's answer back.
#[derive(Debug, Clone)]
pub struct SocketRoute {
    pub route_key: String,
    pub function: Function,
    pub replies: bool,
}

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

pub(super) async fn websocket(
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
