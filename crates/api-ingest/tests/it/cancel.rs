//! `DELETE /jobs/{jobId}`: only a queued job is cancelled, and its message is acknowledged unrun.

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use jobpipe_testkit::{ScriptedFault, token};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::{error_code, spawn_app, through_proxy};

#[tokio::test]
async fn cancelling_works_only_on_queued_jobs() {
    let app = spawn_app().await;
    let job = app.post_job("alice", json!({"kind": "echo"})).await.body;
    let path = format!("/jobs/{}", job["jobId"].as_str().unwrap());

    assert_eq!(app.send(Method::DELETE, &path, Some("bob"), None).await.status, StatusCode::NOT_FOUND);
    let cancelled = app.send(Method::DELETE, &path, Some("alice"), None).await;
    assert_eq!((cancelled.status, cancelled.body["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    let again = app.send(Method::DELETE, &path, Some("alice"), None).await;
    assert_eq!((again.status, error_code(&again)), (StatusCode::CONFLICT, "not_cancellable"));

    // Its message is acknowledged without running it.
    app.process_queue().await;
    let after = app.get("alice", &path).await.body;
    assert_eq!((after["status"].as_str(), after["attempts"].as_u64()), (Some("cancelled"), Some(0)));

    let done = app.post_job("alice", json!({"kind": "echo"})).await.body;
    app.process_queue().await;
    let late =
        app.send(Method::DELETE, &format!("/jobs/{}", done["jobId"].as_str().unwrap()), Some("alice"), None).await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert!(late.body["error"]["message"].as_str().unwrap().contains("completed"));
}

/// A cancel whose `UpdateItem` took effect but whose response was lost cancelled the job: `200`, not a
/// `409` about the job it just cancelled.
#[tokio::test]
async fn a_cancel_whose_write_response_was_lost_still_answers_cancelled() {
    let app = spawn_app().await;
    let posted = app.post_job("alice", json!({"kind": "echo"})).await;
    let job_id = posted.body["jobId"].as_str().unwrap().to_string();
    let (api, proxy) = through_proxy(&app).await;
    proxy.script(ScriptedFault::lost_response("DynamoDB_20120810.UpdateItem", ":cancelled"));
    let request = Request::delete(format!("/jobs/{job_id}"))
        .header("authorization", format!("Bearer {}", token("alice")))
        .body(Body::empty())
        .unwrap();
    let response = api.oneshot(request).await.unwrap();
    assert_eq!(proxy.scripted_pending(), 0, "the lost response was injected");
    let status = response.status();
    let body: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{body}");
}
