//! The WebSocket routes against moto, driven with the fixtures in `events/`: tokens checked at
//! `$connect`, any frame on `$default` answered in the reply shape, and other users' jobs invisible.

use std::sync::Arc;

use aws_lambda_events::event::apigw::ApiGatewayWebsocketProxyRequest;
use jobpipe_core::SystemClock;
use jobpipe_core::job::{Job, JobId, JobStatus, Payload};
use jobpipe_testkit::{TestStack, token};
use lambda_runtime::{Context, LambdaEvent};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use websocket_connect::{Sockets, handle};

fn fixture(name: &str) -> Value {
    let path = jobpipe_testkit::repo_root().join("events").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn event(
    fixture_name: &str,
    connection_id: &str,
    edit: impl FnOnce(&mut Value),
) -> LambdaEvent<ApiGatewayWebsocketProxyRequest> {
    let mut event = fixture(fixture_name);
    event["requestContext"]["connectionId"] = json!(connection_id);
    edit(&mut event);
    LambdaEvent::new(serde_json::from_value(event).unwrap(), Context::default())
}

/// Runs one route and answers (status, body).
async fn call(sockets: &Arc<Sockets>, event: LambdaEvent<ApiGatewayWebsocketProxyRequest>) -> (i64, Value) {
    let response = handle(sockets.clone(), event).await.expect("the handler answers every event");
    let body = match response.body {
        Some(aws_lambda_events::encodings::Body::Text(text)) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected a JSON text body, got {other:?}"),
    };
    (response.status_code, body)
}

async fn connect(sockets: &Arc<Sockets>, connection_id: &str, token: &str) -> (i64, Value) {
    let query = json!({ "token": token });
    call(sockets, event("ws-connect.json", connection_id, |e| e["queryStringParameters"] = query)).await
}

async fn send(sockets: &Arc<Sockets>, connection_id: &str, body: &str) -> (i64, Value) {
    call(sockets, event("ws-subscribe.json", connection_id, |e| e["body"] = json!(body))).await
}

async fn job_of(stack: &TestStack, owner: &str) -> JobId {
    let job = Job {
        job_id: JobId::new_random(),
        owner: owner.into(),
        kind: "echo".into(),
        status: JobStatus::Queued,
        input: Payload::Inline(json!({})),
        result: None,
        error: None,
        last_error: None,
        attempts: 0,
        progress: 0,
        created_at: 1,
        started_at: None,
        completed_at: None,
        updated_at: 1,
        lease: None,
        idempotency_key: None,
        request_hash: String::new(),
        correlation_id: "test".into(),
        dispatch_due_at: None,
    };
    jobpipe_core::store::JobStore::new(stack.clients.dynamodb.clone(), &stack.table, 3600).create(&job).await.unwrap();
    job.job_id
}

async fn sockets(stack: &TestStack) -> Arc<Sockets> {
    Arc::new(Sockets::new(&stack.config(), &stack.clients, Arc::new(SystemClock)).unwrap())
}

#[tokio::test]
async fn connect_needs_a_valid_token_and_subscribing_sees_only_your_own_jobs() {
    let stack = TestStack::new().await;
    let sockets = sockets(&stack).await;

    assert_eq!(connect(&sockets, "c-bad", "not-a-token").await.0, 401);
    assert_eq!(send(&sockets, "c-bad", r#"{"action":"subscribe","jobId":"x"}"#).await.0, 401, "never registered");

    assert_eq!(connect(&sockets, "c-alice", &token("alice")).await.0, 200);
    let mine = job_of(&stack, "alice").await;
    let theirs = job_of(&stack, "bob").await;
    let (status, body) = send(&sockets, "c-alice", &json!({"action": "subscribe", "jobId": mine}).to_string()).await;
    assert_eq!((status, body["type"].as_str()), (200, Some("subscribed")));
    let (status, body) = send(&sockets, "c-alice", &json!({"action": "subscribe", "jobId": theirs}).to_string()).await;
    let missing =
        send(&sockets, "c-alice", &json!({"action": "subscribe", "jobId": JobId::new_random()}).to_string()).await;
    assert_eq!((status, &body), (missing.0, &missing.1), "another user's job answers exactly like a missing one");
    assert_eq!(status, 404);
}

/// Frames from a generator (text, JSON of any shape, near-miss actions and ids) all get an answer in the
/// reply shape: 200 for a real subscription, otherwise a 4xx naming the problem. Never a 5xx or a panic.
#[tokio::test]
async fn any_frame_is_answered_in_the_reply_shape() {
    let stack = TestStack::new().await;
    let sockets = sockets(&stack).await;
    assert_eq!(connect(&sockets, "c-fuzz", &token("fuzz")).await.0, 200);
    let own = job_of(&stack, "fuzz").await.as_str().to_string();

    let job_ids = proptest::prop_oneof![
        proptest::strategy::Just(own.clone()),
        proptest::strategy::Just(own.to_uppercase()),
        proptest::strategy::Just(format!("{own} ")),
        ".{0,40}",
    ];
    let actions = proptest::prop_oneof![
        proptest::strategy::Just("subscribe".to_string()),
        proptest::strategy::Just("unsubscribe".to_string()),
        ".{0,12}"
    ];
    let frames = proptest::prop_oneof![
        (actions, job_ids).prop_map(|(a, j)| json!({"action": a, "jobId": j}).to_string()),
        proptest::arbitrary::any::<String>(),
        proptest::strategy::Just("[]".to_string()),
        proptest::strategy::Just(r#"{"action":"subscribe","jobId":7}"#.to_string()),
        proptest::strategy::Just(format!(
            r#"{{"action":"subscribe","jobId":"{own}","extra":{}}}"#,
            "[".repeat(64) + &"]".repeat(64)
        )),
    ];
    let mut runner = TestRunner::deterministic();
    for _ in 0..150 {
        let frame = frames.new_tree(&mut runner).unwrap().current();
        let (status, body) = send(&sockets, "c-fuzz", &frame).await;
        if status == 200 {
            assert!(["subscribed", "unsubscribed"].contains(&body["type"].as_str().unwrap()), "{frame:?}: {body}");
        } else {
            assert!((400..500).contains(&status), "{frame:?}: {status} {body}");
            assert_eq!(body["type"], "error", "{frame:?}: {body}");
            assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{frame:?}: {body}");
        }
    }
}
