//! The Lambda Runtime API as one execution environment's process sees it: the one table of its routes
//! (`next`, response, error, init error) and their handlers, served on an endpoint of the process's own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{Instance, Invocation, InvokeError, MAX_PAYLOAD_BYTES, Phase, Ready};
use crate::aws::{ACCOUNT, REGION};

/// Where the Lambda Runtime API lives on its endpoint.
pub const RUNTIME_API: &str = "/2018-06-01/runtime";

/// The Runtime API's routes, each to its handler.
fn routes(instance: Arc<Instance>) -> Router {
    Router::new()
        .route(&format!("{RUNTIME_API}/invocation/next"), get(next))
        .route(&format!("{RUNTIME_API}/invocation/{{id}}/response"), post(respond))
        .route(&format!("{RUNTIME_API}/invocation/{{id}}/error"), post(fail))
        .route(&format!("{RUNTIME_API}/init/error"), post(init_error))
        // Larger than any answer Lambda accepts, so an oversized one is read and refused as Lambda refuses it.
        .layer(DefaultBodyLimit::max(4 * MAX_PAYLOAD_BYTES))
        .with_state(instance)
}

/// Serves a process's Runtime API on a free port until the returned task is aborted.
pub(super) async fn serve(instance: Arc<Instance>) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = routes(instance);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((address, task))
}

async fn next(State(instance): State<Arc<Instance>>) -> Response {
    if !instance.asked.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // The process's first `next` ends its init phase.
        let asked_at = Instant::now();
        let mut launched = instance.launched.subscribe();
        if let Ok(launched) = launched.wait_for(Option::is_some).await
            && let Some((pid, exec)) = *launched
        {
            let ready = Ready { pid, init: asked_at.saturating_duration_since(exec) };
            instance.board.send_modify(|board| board[instance.index] = Phase::Ready(ready));
        }
    }
    let Some(invocation) = instance.take().await else {
        return (StatusCode::GONE, "the local stack is stopping, or this execution environment exited").into_response();
    };
    let Invocation { request_id, payload, taken, reply } = invocation;
    // The deadline counts from now, when this environment takes the invocation.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let deadline_ms = now + instance.timeout.as_millis() as u64;
    {
        let mut current = instance.current.lock().await;
        if *instance.closed.borrow() {
            // The process exited while this request was pending: the invocation fails as a crash would.
            let _ = reply.send(Err(InvokeError::Crashed {
                function: instance.function.clone(),
                status: "exited as it took the invocation".into(),
            }));
            return (StatusCode::GONE, "this execution environment has exited").into_response();
        }
        *current = Some((request_id.clone(), reply));
    }
    let _ = taken.send(());
    let _ = instance.started.send((request_id.clone(), instance.timeout));
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("lambda-runtime-aws-request-id", request_id);
    set("lambda-runtime-deadline-ms", deadline_ms.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{}", instance.function),
    );
    set("lambda-runtime-trace-id", format!("Root=1-{:08x}-{}", now / 1000, uuid::Uuid::new_v4().simple()));
    set("content-type", "application/json".into());
    (StatusCode::OK, headers, payload).into_response()
}

async fn finish(instance: &Instance, id: &str, result: Result<Bytes, InvokeError>) -> StatusCode {
    let mut current = instance.current.lock().await;
    match current.take() {
        Some((current_id, reply)) if current_id == id => {
            let _ = reply.send(result);
            drop(current);
            instance.finished.notify_waiters();
            StatusCode::ACCEPTED
        }
        other => {
            *current = other;
            StatusCode::BAD_REQUEST
        }
    }
}

async fn respond(State(instance): State<Arc<Instance>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    // A response over the synchronous payload limit fails the invocation, and the Runtime API answers
    // the process 413, as Lambda's does.
    if body.len() > MAX_PAYLOAD_BYTES {
        let too_large = InvokeError::ResponseTooLarge { function: instance.function.clone(), bytes: body.len() };
        return match finish(&instance, &id, Err(too_large)).await {
            StatusCode::ACCEPTED => StatusCode::PAYLOAD_TOO_LARGE,
            other => other,
        };
    }
    finish(&instance, &id, Ok(body)).await
}

async fn fail(State(instance): State<Arc<Instance>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let error: HashMap<String, serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    let text = |key: &str| error.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let result = Err(InvokeError::Function {
        function: instance.function.clone(),
        error_type: text("errorType"),
        message: text("errorMessage"),
    });
    finish(&instance, &id, result).await
}

async fn init_error(State(instance): State<Arc<Instance>>, body: Bytes) -> StatusCode {
    tracing::error!(function = %instance.function, error = %String::from_utf8_lossy(&body), "function failed to initialize");
    StatusCode::ACCEPTED
}
