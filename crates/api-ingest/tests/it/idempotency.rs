//! `Idempotency-Key`: a repeated request answers its first job, even when that job's message never
//! left or its write's response was lost.

use axum::body::Body;
use http::{Request, StatusCode};
use jobpipe_core::dispatch::{Dispatcher, QueueRoutes};
use jobpipe_testkit::{ScriptedFault, token};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::{error_code, error_field, spawn_app, through_proxy};

#[tokio::test]
async fn an_idempotency_key_replays_the_same_job_and_rejects_a_different_body() {
    let app = spawn_app().await;
    let post = |key: &'static str, user: &'static str, body: Value| {
        let request = Request::post("/jobs")
            .header("authorization", format!("Bearer {}", token(user)))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap();
        app.call(request)
    };
    let body = json!({"kind": "echo", "input": {"a": 1, "b": 2}});
    let first = post("order-42", "alice", body.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    // Same body with keys in another order is the same request.
    let again = post("order-42", "alice", json!({"input": {"b": 2, "a": 1}, "kind": "echo"})).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["jobId"], first.body["jobId"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(app.queued_messages().await, 1, "a replay of a dispatched job sends nothing");

    let different = post("order-42", "alice", json!({"kind": "echo", "input": {"a": 2}})).await;
    assert_eq!(different.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!((error_code(&different), error_field(&different)), ("idempotency_key_reused", Some("Idempotency-Key")));

    // Keys are per caller: bob's "order-42" is his own job.
    let bobs = post("order-42", "bob", body).await;
    assert_eq!(bobs.status, StatusCode::ACCEPTED);
    assert_ne!(bobs.body["jobId"], first.body["jobId"]);

    let bad = post("", "alice", json!({"kind": "echo"})).await;
    assert_eq!((bad.status, error_field(&bad)), (StatusCode::BAD_REQUEST, Some("Idempotency-Key")));
}

#[tokio::test]
async fn a_client_retry_after_a_failed_send_sends_the_message_at_once() {
    let app = spawn_app().await;
    // The first request's function stores the job but cannot send its message.
    let broken = app.router_with(|api| {
        api.dispatcher = Dispatcher::new(api.dispatcher.sqs().clone(), QueueRoutes::single("http://127.0.0.1:9/none"));
    });
    let request = || {
        Request::post("/jobs")
            .header("authorization", format!("Bearer {}", token("alice")))
            .header("content-type", "application/json")
            .header("idempotency-key", "retry-me")
            .body(Body::from(json!({"kind": "echo"}).to_string()))
            .unwrap()
    };
    let first = broken.oneshot(request()).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(app.queued_messages().await, 0);

    // The client retries with the same key: the replay finds the job undispatched and sends it, without
    // waiting for the reconciler.
    let replay = app.call(request()).await;
    assert_eq!(
        (replay.status, &replay.headers["idempotent-replayed"]),
        (StatusCode::ACCEPTED, &"true".parse().unwrap())
    );
    assert_eq!(app.queued_messages().await, 1);
    app.process_queue().await;
    assert_eq!(
        app.get("alice", &format!("/jobs/{}", replay.body["jobId"].as_str().unwrap())).await.body["status"],
        "completed"
    );
    // Once sent, the reconciler has nothing to re-send.
    app.clock.advance_ms(120_000);
    assert_eq!(app.processor.reconcile(None).await.unwrap().redispatched, 0);
}

/// A keyed submission whose `PutItem` took effect but whose response was lost: the SDK's retry meets the
/// job this very request wrote. It is a new job (`202`), not a replay of an earlier one.
#[tokio::test]
async fn a_submission_whose_write_response_was_lost_is_accepted_not_replayed() {
    let app = spawn_app().await;
    let (api, proxy) = through_proxy(&app).await;
    proxy.script(ScriptedFault::lost_response("DynamoDB_20120810.PutItem", "attribute_not_exists"));
    let request = Request::post("/jobs")
        .header("authorization", format!("Bearer {}", token("alice")))
        .header("content-type", "application/json")
        .header("idempotency-key", "lost-response-1")
        .body(Body::from(json!({"kind": "echo", "input": {"n": 1}}).to_string()))
        .unwrap();
    let response = api.oneshot(request).await.unwrap();
    assert_eq!(proxy.scripted_pending(), 0, "the lost response was injected");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().get("idempotent-replayed").is_none(), "{:?}", response.headers());
    assert_eq!(app.queued_messages().await, 1);
}
