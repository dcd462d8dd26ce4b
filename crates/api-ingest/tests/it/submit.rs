//! `POST /jobs`: from a submission to its completed job, and the requests it refuses before storing
//! anything.

use axum::body::Body;
use http::{Request, StatusCode};
use jobpipe_core::dispatch::{Dispatcher, QueueRoutes};
use jobpipe_testkit::token;
use serde_json::{Value, json};

use crate::helpers::{Reply, error_code, error_field, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_job_goes_from_post_to_completed() {
    let app = spawn_app().await;
    let posted = app.post_job("alice", json!({"kind": "echo", "input": {"greeting": "hi"}})).await;
    assert_eq!(posted.status, StatusCode::ACCEPTED, "{}", posted.body);
    let job_id = posted.body["jobId"].as_str().unwrap().to_string();
    assert_eq!(posted.headers["location"], format!("/jobs/{job_id}").as_str());
    assert_eq!(posted.body["status"], "queued");
    assert_eq!(posted.body["input"], json!({"greeting": "hi"}));
    for field in ["result", "error", "startedAt", "completedAt", "durationMs"] {
        assert_eq!(posted.body[field], Value::Null, "{field}");
    }
    assert_eq!(app.queued_messages().await, 1);

    app.process_queue().await;
    let job = app.get("alice", &format!("/jobs/{job_id}")).await;
    assert_eq!(job.status, StatusCode::OK);
    assert_eq!(job.body["status"], "completed");
    assert_eq!(job.body["result"], json!({"greeting": "hi"}));
    assert_eq!((job.body["attempts"].as_u64(), job.body["progress"].as_u64()), (Some(1), Some(100)));
    assert!(job.body["durationMs"].is_i64() && job.body["completedAt"].is_string());
    // Internal fields never leak into the view.
    for internal in ["owner", "leaseToken", "requestHash", "lease"] {
        assert!(job.body.get(internal).is_none(), "{internal} leaked");
    }
}

#[tokio::test]
async fn the_correlation_id_travels_from_the_request_to_the_message() {
    let app = spawn_app().await;
    let request = Request::post("/jobs")
        .header("authorization", format!("Bearer {}", token("alice")))
        .header("content-type", "application/json")
        .header("x-correlation-id", "trace-abc-123")
        .body(Body::from(json!({"kind": "echo"}).to_string()))
        .unwrap();
    let reply = app.call(request).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.headers["x-correlation-id"], "trace-abc-123");
    let records = app.stack.receive_batch(1).await;
    assert_eq!(records[0].message_attributes["correlationId"].string_value.as_deref(), Some("trace-abc-123"));

    // Without one (or with an unsafe one) the API makes one up and still echoes it.
    let reply = app.post_job("alice", json!({"kind": "echo"})).await;
    assert!(reply.headers["x-correlation-id"].len() >= 32);
}

#[tokio::test]
async fn a_job_whose_message_failed_to_send_still_completes() {
    // SendMessage fails after the DynamoDB write: the queue URL points nowhere.
    let app = spawn_app_with(&[], |api| {
        let missing = format!("{}-missing", api.dispatcher.queue_urls()[0]);
        api.dispatcher = Dispatcher::new(api.dispatcher.sqs().clone(), QueueRoutes::single(missing));
    })
    .await;
    let posted = app.post_job("alice", json!({"kind": "echo", "input": {"x": 1}})).await;
    assert_eq!(posted.status, StatusCode::ACCEPTED, "the job is durable, so it is accepted");
    let path = format!("/jobs/{}", posted.body["jobId"].as_str().unwrap());
    assert_eq!(app.queued_messages().await, 0);

    app.clock.advance_ms(61_000);
    let report = app.processor.reconcile(None).await.unwrap();
    assert_eq!(report.redispatched, 1);
    app.process_queue().await;
    assert_eq!(app.get("alice", &path).await.body["status"], "completed");
}

#[tokio::test]
async fn bad_bodies_get_clear_errors_and_queue_nothing() {
    let app = spawn_app_with(&[("MAX_BODY_BYTES", "4096")], |_| {}).await;
    let raw = |content_type: &'static str, body: Vec<u8>| {
        let request = Request::post("/jobs")
            .header("authorization", format!("Bearer {}", token("alice")))
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        app.call(request)
    };
    let json_body = |v: Value| raw("application/json", v.to_string().into_bytes());
    let check = |reply: Reply, status: StatusCode, code: &str, field: Option<&str>| {
        assert_eq!(reply.status, status, "{}", reply.body);
        assert_eq!(error_code(&reply), code, "{}", reply.body);
        assert_eq!(error_field(&reply), field, "{}", reply.body);
        assert!(!reply.body["error"]["message"].as_str().unwrap().is_empty());
    };
    use StatusCode as S;
    check(raw("application/json", b"{\"kind\": ".to_vec()).await, S::BAD_REQUEST, "malformed_json", Some("body"));
    check(raw("application/json", vec![0xff, 0xfe, b'{']).await, S::BAD_REQUEST, "malformed_json", Some("body"));
    check(raw("application/json", Vec::new()).await, S::BAD_REQUEST, "malformed_json", Some("body"));
    check(
        raw("text/plain", b"{}".to_vec()).await,
        S::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        Some("Content-Type"),
    );
    check(raw("application/json", vec![b' '; 5000]).await, S::PAYLOAD_TOO_LARGE, "payload_too_large", None);
    check(json_body(json!([1, 2])).await, S::BAD_REQUEST, "invalid_request", Some("body"));
    check(json_body(json!({"input": {}})).await, S::BAD_REQUEST, "invalid_request", Some("kind"));
    check(json_body(json!({"kind": 7})).await, S::BAD_REQUEST, "invalid_request", Some("kind"));
    check(json_body(json!({"kind": "echo", "input": "x"})).await, S::BAD_REQUEST, "invalid_request", Some("input"));
    check(json_body(json!({"kind": "echo", "inputs": {}})).await, S::BAD_REQUEST, "invalid_request", Some("inputs"));
    check(json_body(json!({"kind": "nope"})).await, S::UNPROCESSABLE_ENTITY, "unknown_kind", Some("kind"));
    check(
        json_body(json!({"kind": "echo", "input": {"sleepMs": -5}})).await,
        S::UNPROCESSABLE_ENTITY,
        "invalid_input",
        Some("input.sleepMs"),
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    check(raw("application/json", deep.into_bytes()).await, S::PAYLOAD_TOO_LARGE, "payload_too_large", None);
    let deep = format!("{{\"kind\":\"echo\",\"input\":{{\"a\":{}{}}}}}", "[".repeat(1_000), "]".repeat(1_000));
    check(raw("application/json", deep.into_bytes()).await, S::BAD_REQUEST, "malformed_json", Some("body"));

    assert_eq!(app.queued_messages().await, 0);
    assert_eq!(app.get("alice", "/jobs").await.body["jobs"], json!([]));
}

/// Header values far over anything API Gateway passes (its request headers total at most 10 KB) get a
/// clear answer, and only a valid request is queued.
#[tokio::test]
async fn huge_header_values_are_refused_or_ignored_and_queue_nothing_bad() {
    let app = spawn_app().await;
    let huge = "k".repeat(100_000);
    let post = |name: &'static str, value: String, authorization: String| {
        let request = Request::post("/jobs")
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .header(name, value)
            .body(Body::from(json!({"kind": "echo"}).to_string()))
            .unwrap();
        app.call(request)
    };
    let bearer = || format!("Bearer {}", token("alice"));

    let reply = post("idempotency-key", huge.clone(), bearer()).await;
    assert_eq!(
        (reply.status, error_field(&reply)),
        (StatusCode::BAD_REQUEST, Some("Idempotency-Key")),
        "{}",
        reply.body
    );
    let reply = post("x-unrelated", "v".into(), format!("Bearer {huge}")).await;
    assert_eq!((reply.status, error_code(&reply)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{}", reply.body);
    assert!(!reply.body.to_string().contains(&huge[..64]), "the token is not echoed back");
    assert_eq!(app.queued_messages().await, 0);

    // A correlation id that is not short and plain is replaced, not echoed.
    let reply = post("x-correlation-id", huge.clone(), bearer()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let echoed = reply.headers["x-correlation-id"].to_str().unwrap();
    assert!(echoed.len() <= 128 && echoed != huge, "{echoed}");
    assert_eq!(app.queued_messages().await, 1);
}
