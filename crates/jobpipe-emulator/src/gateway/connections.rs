//! The `@connections` management API: a connection exists here from when its `$connect` returned until
//! it closed; before and after, every call answers `GoneException`, as API Gateway's does.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::Message;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;

use super::{Gateway, rfc3339};

/// An open WebSocket, as `@connections` reaches it.
pub(super) struct Connection {
    pub(super) outgoing: mpsc::UnboundedSender<Message>,
    pub(super) connected_at: u64,
    pub(super) last_active_at: u64,
}

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

pub(super) async fn push(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>, body: Bytes) -> Response {
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

pub(super) async fn connection_info(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let connections = gateway.connections.lock().await;
    let Some(connection) = connections.get(&id) else { return gone(&id) };
    axum::Json(json!({
        "connectedAt": rfc3339(connection.connected_at),
        "lastActiveAt": rfc3339(connection.last_active_at),
        "identity": {"sourceIp": "127.0.0.1", "userAgent": ""},
    }))
    .into_response()
}

pub(super) async fn close_connection(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    match gateway.connections.lock().await.get(&id) {
        Some(connection) => {
            let _ = connection.outgoing.send(Message::Close(None));
            StatusCode::NO_CONTENT.into_response()
        }
        None => gone(&id),
    }
}
