//! Inputs and results stored apart in S3: named in messages and list pages, whole in a job's view,
//! result files through short-lived links.

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use jobpipe_testkit::{ScriptedFault, token};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::{spawn_app, through_proxy};

#[tokio::test]
async fn large_inputs_travel_by_reference_and_read_back_whole() {
    let app = spawn_app().await;
    let blob = "y".repeat(300 * 1024);
    let posted = app.post_job("alice", json!({"kind": "echo", "input": {"blob": blob}})).await;
    assert_eq!(posted.status, StatusCode::ACCEPTED);
    let records = app.stack.receive_batch(1).await;
    assert!(records[0].body.as_ref().unwrap().len() < 200, "the message names the job, nothing more");
    app.stack.expire_visibility(&records).await;
    app.process_queue().await;
    let job = app.get("alice", &format!("/jobs/{}", posted.body["jobId"].as_str().unwrap())).await;
    assert_eq!(job.body["status"], "completed");
    assert_eq!(job.body["result"]["blob"].as_str().map(str::len), Some(300 * 1024));
}

#[tokio::test]
async fn a_payload_removed_by_the_lifecycle_rule_reads_as_null() {
    let app = spawn_app().await;
    let posted = app.post_job("alice", json!({"kind": "echo", "input": {"blob": "z".repeat(20_000)}})).await;
    let job_id = posted.body["jobId"].as_str().unwrap();
    let objects = app.stack.clients.s3.list_objects_v2().bucket(&app.stack.bucket).send().await.unwrap();
    for object in objects.contents() {
        app.stack.clients.s3.delete_object().bucket(&app.stack.bucket).key(object.key().unwrap()).send().await.unwrap();
    }
    let job = app.get("alice", &format!("/jobs/{job_id}")).await;
    assert_eq!((job.status, &job.body["input"]), (StatusCode::OK, &Value::Null));
}

#[tokio::test]
async fn a_finished_image_is_handed_out_through_a_short_lived_link() {
    let app = spawn_app().await;
    let posted = app
        .post_job("alice", json!({"kind": "image", "input": {"prompt": "a red kite", "width": 512, "height": 512}}))
        .await;
    assert_eq!(posted.status, StatusCode::ACCEPTED, "{}", posted.body);
    assert_eq!(app.queued_messages().await, 0, "image jobs have their own queue");
    assert_eq!(app.stack.queue_depth(&app.stack.image_queue_url).await, 1);
    app.process(&app.stack.image_queue_url, &app.stack.image_queue_arn).await;

    let job = app.get("alice", &format!("/jobs/{}", posted.body["jobId"].as_str().unwrap())).await;
    assert_eq!(job.body["status"], "completed", "{}", job.body);
    let url = job.body["result"]["url"].as_str().expect("a presigned URL");
    assert!(url.contains("X-Amz-Expires=900") && url.contains("X-Amz-Signature="), "{url}");
    assert_eq!(job.body["result"]["urlExpiresInSeconds"], 900);
    let fetched = reqwest::get(url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    let bytes = fetched.bytes().await.unwrap();
    assert_eq!(jobpipe_core::kinds::raster::png_dimensions(&bytes), Ok((512, 512)));

    // The object itself is not public: without the signature it is refused.
    let unsigned = url.split('?').next().unwrap();
    assert_ne!(reqwest::get(unsigned).await.unwrap().status(), 200);
}

/// A list page never reads payloads stored in S3: each is `null` and named in `omitted` (`GET
/// /jobs/{id}` has it). Before, every large input was fetched, so one unreadable object (an expired one
/// answers 403 without s3:ListBucket) made the whole page a 500, and a hundred 1 MiB inputs exceeded
/// Lambda's 6 MB response limit.
#[tokio::test]
async fn a_list_page_never_reads_payloads_stored_apart() {
    let app = spawn_app().await;
    let big = app.post_job("alice", json!({"kind": "echo", "input": {"blob": "z".repeat(20_000)}})).await;
    let small = app.post_job("alice", json!({"kind": "echo", "input": {"n": 1}})).await;
    let (api, proxy) = through_proxy(&app).await;
    // Every read of the bucket fails, as many times as the SDK tries.
    let bucket_reads = format!("GET /{}/", app.stack.bucket);
    proxy.script(ScriptedFault { times: 3, ..ScriptedFault::lost_response(&bucket_reads, "") });
    let request = Request::get("/jobs")
        .header("authorization", format!("Bearer {}", token("alice")))
        .body(Body::empty())
        .unwrap();
    let response = api.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(proxy.scripted_pending(), 3, "the page read nothing from S3");
    let shown = |id: &Value| page["jobs"].as_array().unwrap().iter().find(|j| j["jobId"] == *id).unwrap().clone();
    let (big_view, small_view) = (shown(&big.body["jobId"]), shown(&small.body["jobId"]));
    assert_eq!((&big_view["input"], &big_view["omitted"]), (&Value::Null, &json!(["input"])));
    assert_eq!((&small_view["input"], small_view.get("omitted")), (&json!({"n": 1}), None));

    // The job itself still carries its input.
    let job = app.get("alice", &format!("/jobs/{}", big.body["jobId"].as_str().unwrap())).await;
    assert_eq!(job.body["input"]["blob"].as_str().map(str::len), Some(20_000));
}
