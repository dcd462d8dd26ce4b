//! The WebSocket routes against moto, driven with the fixtures in `events/`: tokens checked at
//! `$connect`, any frame on `$default` answered in the reply shape, and other users' jobs invisible.

use std::sync::Arc;

use aws_lambda_events::event::apigw::ApiGatewayWebsocketProxyRequest;
use jobpipe_core::SystemClock;
use jobpipe_core::job::{Job, JobId, JobStatus, Payload};
use jobpipe_testkit::{TEST_AUDIENCE, TestStack, claims, now_secs, token, token_with};
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
    stored(stack, a_job(JobId::new_random(), owner)).await
}

fn a_job(job_id: JobId, owner: &str) -> Job {
    Job {
        job_id,
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
        run_at: None,
        started_at: None,
        completed_at: None,
        updated_at: 1,
        lease: None,
        idempotency_key: None,
        request_hash: String::new(),
        correlation_id: "test".into(),
        dispatch_due_at: None,
        dispatched_at: None,
        callback_url: None,
        webhooks: Vec::new(),
        batch: None,
    }
}

fn jobs(stack: &TestStack) -> jobpipe_core::store::JobStore {
    jobpipe_core::store::JobStore::new(stack.clients.dynamodb.clone(), &stack.table, 3600)
}

async fn stored(stack: &TestStack, job: Job) -> JobId {
    jobs(stack).create(&job).await.unwrap();
    job.job_id
}

/// A batch is followed by its owner only, and also once its first job has ended and expired while later
/// ones wait (its progress then names its owner): the subscription answers its progress.
#[tokio::test]
async fn a_batch_is_followed_by_its_owner_also_once_its_first_job_is_gone() {
    let stack = TestStack::new().await;
    let sockets = sockets(&stack).await;
    assert_eq!(connect(&sockets, "c-alice", &token("alice")).await.0, 200);
    assert_eq!(connect(&sockets, "c-bob", &token("bob")).await.0, 200);
    let in_batch = |batch_id: &JobId, index: u32| {
        let mut job = a_job(JobId::in_batch(batch_id, index), "alice");
        job.batch = Some(jobpipe_core::job::BatchRef { batch_id: batch_id.clone(), index, size: 2 });
        job
    };
    let subscribe = |batch_id: &JobId| json!({"action": "subscribe", "batchId": batch_id}).to_string();

    // Both jobs stored, none ended: the owner follows it from nothing ended.
    let fresh = JobId::new_random();
    stored(&stack, in_batch(&fresh, 0)).await;
    stored(&stack, in_batch(&fresh, 1)).await;
    let (status, body) = send(&sockets, "c-alice", &subscribe(&fresh)).await;
    assert_eq!(
        (status, body["type"].as_str(), body["batchId"].as_str()),
        (200, Some("subscribed"), Some(fresh.as_str()))
    );
    assert_eq!((body["batch"]["total"].as_u64(), body["batch"]["ended"].as_u64()), (Some(2), Some(0)), "{body}");
    assert_eq!(send(&sockets, "c-bob", &subscribe(&fresh)).await.0, 404, "another's batch does not exist");

    // Its first job ended (recorded) and is gone; the second waits.
    let older = JobId::new_random();
    let first = jobpipe_core::store::JobEnding {
        job_id: JobId::in_batch(&older, 0),
        owner: "alice".into(),
        status: JobStatus::Completed,
        counted: false,
        batch: Some(jobpipe_core::job::BatchRef { batch_id: older.clone(), index: 0, size: 2 }),
    };
    jobs(&stack).record_batch_end(&first, 5).await.unwrap();
    stored(&stack, in_batch(&older, 1)).await;
    let (status, body) = send(&sockets, "c-alice", &subscribe(&older)).await;
    assert_eq!((status, body["batch"]["ended"].as_u64(), body["batch"]["done"].as_bool()), (200, Some(1), Some(false)));
    assert_eq!(send(&sockets, "c-bob", &subscribe(&older)).await.0, 404);
    let unknown = send(&sockets, "c-alice", &subscribe(&JobId::new_random())).await;
    assert_eq!((unknown.0, unknown.1["error"]["message"].as_str()), (404, Some("no such batch")));
    let both = json!({"action": "subscribe", "batchId": older, "jobId": older}).to_string();
    assert_eq!(send(&sockets, "c-alice", &both).await.0, 400, "a job or a batch, not both");
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

/// `$connect` takes the tokens users have, as the HTTP API's JWT authorizer does: a Cognito access token
/// (`client_id`, no `aud`) and an `aud` array; it refuses one for another app client.
#[tokio::test]
async fn connect_accepts_cognito_access_tokens_and_aud_arrays() {
    let stack = TestStack::new().await;
    let sockets = sockets(&stack).await;
    let cognito = |client_id: &str| {
        json!({
            "sub": "alice", "iss": jobpipe_testkit::test_issuer(), "client_id": client_id, "token_use": "access",
            "scope": "aws.cognito.signin.user.admin", "iat": now_secs(), "exp": now_secs() + 600,
        })
    };
    let mut aud_array = claims("alice");
    aud_array["aud"] = json!(["another-api", TEST_AUDIENCE]);
    assert_eq!(connect(&sockets, "c-cognito", &token_with(&cognito(TEST_AUDIENCE))).await.0, 200);
    assert_eq!(connect(&sockets, "c-array", &token_with(&aud_array)).await.0, 200);
    let (status, body) = connect(&sockets, "c-other", &token_with(&cognito("another-app"))).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"].as_str().unwrap().contains("wrong audience"), "{body}");
}

/// When the issuer's keys cannot be fetched, a connection is refused as unavailable (503, retrying may
/// help), not as a bad token: the token was never judged.
#[tokio::test]
async fn connect_answers_503_while_the_issuers_keys_cannot_be_fetched() {
    let stack = TestStack::new().await;
    let config = stack.config_with(&[("JWT_JWKS_URL", "http://127.0.0.1:9/jwks.json")]);
    let sockets = Arc::new(Sockets::new(&config, &stack.clients, Arc::new(SystemClock)).unwrap());
    let (status, body) = connect(&sockets, "c-unreachable", &token("alice")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("service_unavailable")), "{body}");
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

/// A proxy in front of the engines that, at each read of a job in the jobs table, looks up (directly,
/// through the `byJob` index the notifier queries) which connections are subscribed to that job.
/// Answers the clients that go through the proxy and, per read, the subscribers it found.
async fn subscribers_at_each_job_read(
    stack: &TestStack,
) -> (jobpipe_core::config::AwsClients, Arc<std::sync::Mutex<Vec<Vec<String>>>>) {
    use jobpipe_emulator::faults::{CallHook, FaultProxy, HookVerdict};
    let reads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let subscribers =
        jobpipe_core::connections::ConnectionStore::new(stack.clients.dynamodb.clone(), &stack.connections_table);
    let (jobs_table, seen) = (stack.table.clone(), reads.clone());
    let hook: CallHook = Arc::new(move |target, call| {
        let (jobs_table, seen, subscribers) = (jobs_table.clone(), seen.clone(), subscribers.clone());
        Box::pin(async move {
            if target.ends_with(".GetItem") && call["TableName"] == jobs_table.as_str() {
                let job_id = JobId::parse(call["Key"]["jobId"]["S"].as_str().unwrap()).unwrap();
                let found = subscribers.subscribers(&job_id).await.unwrap();
                seen.lock().unwrap().push(found);
            }
            HookVerdict::Forward
        })
    });
    let proxy = FaultProxy::new(jobpipe_testkit::endpoints(), 0.0, 0.0);
    proxy.set_hook(hook);
    let (url, _serving) = proxy.serve().await.unwrap();
    (jobpipe_emulator::aws::aws_clients(&jobpipe_emulator::aws::Endpoints::one(url)), reads)
}

/// The notifier finds a job's subscribers through the `byJob` index, so a change made after `subscribe`
/// read the job reaches the client only if the subscription existed at that read. Whether the client
/// subscribes with a frame or at `$connect` (`?jobId=`), the state the reply carries is read after the
/// subscription was written.
#[tokio::test]
async fn subscribing_writes_the_subscription_before_reading_the_state_it_answers() {
    let stack = TestStack::new().await;
    let (clients, reads) = subscribers_at_each_job_read(&stack).await;
    let sockets = Arc::new(Sockets::new(&stack.config(), &clients, Arc::new(SystemClock)).unwrap());
    let last_read = || reads.lock().unwrap().last().cloned().expect("the job was read");

    assert_eq!(connect(&sockets, "c-frame", &token("alice")).await.0, 200);
    let job = job_of(&stack, "alice").await;
    let (status, body) = send(&sockets, "c-frame", &json!({"action": "subscribe", "jobId": job}).to_string()).await;
    assert_eq!((status, body["job"]["status"].as_str()), (200, Some("queued")), "{body}");
    assert_eq!(last_read(), ["c-frame"], "the state was read after the subscription was written");

    let query = json!({"token": token("alice"), "jobId": job});
    let (status, _) =
        call(&sockets, event("ws-connect.json", "c-at-connect", |e| e["queryStringParameters"] = query)).await;
    assert_eq!(status, 200);
    let mut subscribed = last_read();
    subscribed.sort();
    assert_eq!(subscribed, ["c-at-connect", "c-frame"], "at $connect too");

    // Another user's job: refused without a subscription ever being written (the notifier would push
    // that job's changes to it).
    let theirs = job_of(&stack, "bob").await;
    let (status, _) = send(&sockets, "c-frame", &json!({"action": "subscribe", "jobId": theirs}).to_string()).await;
    assert_eq!(status, 404);
    assert_eq!(last_read(), Vec::<String>::new());
    let subscribers =
        jobpipe_core::connections::ConnectionStore::new(stack.clients.dynamodb.clone(), &stack.connections_table)
            .subscribers(&theirs)
            .await
            .unwrap();
    assert!(subscribers.is_empty(), "{subscribers:?}");
}
