//! What no handler serves and failed AWS calls answer in the API's JSON error shape; an AWS failure is
//! logged once.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use http::{Method, Request, StatusCode};
use jobpipe_core::store::JobStore;
use jobpipe_testkit::{ScriptedFault, token};
use serde_json::json;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::MutexGuardWriter;

use crate::helpers::{call, error_code, spawn_app, through_proxy};

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let reply = app.get("alice", "/nope").await;
    assert_eq!((reply.status, error_code(&reply)), (StatusCode::NOT_FOUND, "not_found"));
    let reply = app.send(Method::PUT, "/jobs", Some("alice"), None).await;
    assert_eq!((reply.status, error_code(&reply)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
}

/// What the code under test logs on this thread (a test's runtime polls everything on it) while the
/// guard `Logs::capture` returns lives.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    /// The lines that contain `text`.
    fn lines_with(&self, text: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes).lines().filter(|line| line.contains(text)).map(String::from).collect()
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = MutexGuardWriter<'a, Vec<u8>>;

    fn make_writer(&'a self) -> Self::Writer {
        MakeWriter::make_writer(&*self.0)
    }
}

/// A failed AWS call answers a 5xx in the API's error shape, `503` when retrying can help and `500`
/// otherwise, and is logged exactly once, in the request's span (by the middleware, from the error the
/// response carries; the conversion into the answer logs nothing).
#[tokio::test]
async fn an_aws_failure_is_a_5xx_logged_once() {
    let app = spawn_app().await;
    let (logs, _guard) = Logs::capture();
    let get = |correlation_id: &str| {
        Request::get(format!("/jobs/{}", jobpipe_core::JobId::new_random()))
            .header("authorization", format!("Bearer {}", token("alice")))
            .header("x-correlation-id", correlation_id)
            .body(Body::empty())
            .unwrap()
    };

    // Every GetItem is throttled, however often the SDK retries: retryable.
    let (throttled, proxy) = through_proxy(&app).await;
    proxy.script(ScriptedFault {
        target: "DynamoDB_20120810.GetItem".into(),
        body_contains: String::new(),
        after_effect: false,
        times: 10,
    });
    let reply = call(&throttled, get("aws-fails-retryable")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.body);
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(
        reply.body,
        json!({"error": {"code": "service_unavailable", "message": "a backing service is busy; retry shortly"}})
    );

    // The table does not exist: permanent.
    let missing = app.router_with(|api| {
        api.store = JobStore::new(app.stack.clients.dynamodb.clone(), format!("{}-missing", app.stack.table), 60)
    });
    let reply = call(&missing, get("aws-fails-permanent")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", reply.body);
    assert_eq!(reply.body, json!({"error": {"code": "internal_error", "message": "the request failed on our side"}}));

    let logged = logs.lines_with("request failed on an AWS call");
    assert_eq!(logged.len(), 2, "once per request: {logged:#?}");
    assert!(logged[0].contains("aws-fails-retryable") && logged[0].contains("retryable=true"), "{}", logged[0]);
    assert!(logged[1].contains("aws-fails-permanent") && logged[1].contains("retryable=false"), "{}", logged[1]);
}
