//! The jobs HTTP API against moto, driven as a client would drive it, plus the whole pipeline with the
//! queue processor.

use std::sync::{Arc, Mutex};

use api_ingest::{Api, router};
use aws_lambda_events::event::sqs::SqsEvent;
use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use jobpipe_core::clock::ManualClock;
use jobpipe_core::dispatch::{Dispatcher, QueueRoutes};
use jobpipe_core::store::JobStore;
use jobpipe_testkit::{
    BedrockServer, ScriptedFault, TEST_AUDIENCE, TestStack, claims, now_secs, through_fault_proxy, token, token_with,
};
use queue_processor::{Processor, handle_sqs};
use serde_json::{Value, json};
use tower::ServiceExt;

struct App {
    _bedrock: BedrockServer,
    stack: TestStack,
    clock: ManualClock,
    router: Router,
    processor: Arc<Processor>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn spawn_app() -> App {
    spawn_app_with(&[], |_| {}).await
}

async fn spawn_app_with(overrides: &[(&str, &str)], customize: impl FnOnce(&mut Api)) -> App {
    let bedrock = BedrockServer::start().await;
    let stack = TestStack::new().await.with_bedrock_endpoint(&bedrock.url);
    let clock = ManualClock::starting_now();
    let config = stack.config_with(overrides);
    let mut api = Api::new(&config, &stack.clients, Arc::new(clock.clone())).unwrap();
    customize(&mut api);
    let processor = Arc::new(Processor::new(&config, &stack.clients, Arc::new(clock.clone())));
    App { router: router(Arc::new(api)), _bedrock: bedrock, stack, clock, processor }
}

impl App {
    /// Another instance of the API over the same resources (another Lambda execution environment).
    fn router_with(&self, customize: impl FnOnce(&mut Api)) -> Router {
        let mut api = Api::new(&self.stack.config(), &self.stack.clients, Arc::new(self.clock.clone())).unwrap();
        customize(&mut api);
        router(Arc::new(api))
    }

    async fn call(&self, request: Request<Body>) -> Reply {
        call(&self.router, request).await
    }

    async fn send(&self, method: Method, path: &str, user: Option<&str>, body: Option<Value>) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(user) = user {
            request = request.header("authorization", format!("Bearer {}", token(user)));
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.call(request.body(body).unwrap()).await
    }

    async fn post_job(&self, user: &str, body: Value) -> Reply {
        self.send(Method::POST, "/jobs", Some(user), Some(body)).await
    }

    async fn get(&self, user: &str, path: &str) -> Reply {
        self.send(Method::GET, path, Some(user), None).await
    }

    /// Runs the queue processor over whatever is queued, as the event source mapping would.
    async fn process_queue(&self) {
        self.process(&self.stack.queue_url, &self.stack.queue_arn).await
    }

    async fn process(&self, queue_url: &str, queue_arn: &str) {
        for _ in 0..10 {
            let records = jobpipe_testkit::receive_batch(&self.stack.clients.sqs, queue_url, queue_arn, 10).await;
            if records.is_empty() {
                return;
            }
            let mut event = SqsEvent::default();
            event.records = records.clone();
            let response = handle_sqs(self.processor.clone(), event, None).await.unwrap();
            self.stack.settle_on(queue_url, &records, &response).await;
        }
    }

    async fn queued_messages(&self) -> u64 {
        self.stack.queue_depth(&self.stack.queue_url).await
    }
}

/// One request to `router`, its answer read whole.
async fn call(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body =
        if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("every reply is JSON") };
    Reply { status, headers, body }
}

fn error_code(reply: &Reply) -> &str {
    reply.body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error reply: {}", reply.body))
}

fn error_field(reply: &Reply) -> Option<&str> {
    reply.body["error"]["field"].as_str()
}

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

#[tokio::test]
async fn requests_without_a_valid_token_get_401() {
    let app = spawn_app().await;
    let with = |changes: Value| {
        let mut claims = claims("alice");
        for (name, value) in changes.as_object().unwrap() {
            claims[name] = value.clone();
        }
        format!("Bearer {}", token_with(&claims))
    };
    // Alice's token with Mallory's name in it: the signature no longer matches.
    let valid = token("alice");
    let [header, _, signature] = <[&str; 3]>::try_from(valid.split('.').collect::<Vec<_>>()).unwrap();
    let mallory =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims("mallory").to_string());
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing bearer token"),
        (Some("Bearer".into()), "not a bearer token"),
        (Some("Bearer garbage".into()), "malformed token"),
        (Some(with(json!({"exp": now_secs() - 3600}))), "token expired"),
        (Some(with(json!({"aud": "someone-else"}))), "wrong audience"),
        (Some(with(json!({"aud": ["someone-else"], "client_id": TEST_AUDIENCE}))), "wrong audience"),
        (Some(with(json!({"iss": "https://evil.example"}))), "wrong issuer"),
        (Some(format!("Bearer {header}.{mallory}.{signature}")), "bad signature"),
    ];
    for (authorization, reason) in cases {
        for (method, path) in [(Method::GET, "/jobs"), (Method::POST, "/jobs"), (Method::GET, "/jobs/x")] {
            let mut request =
                Request::builder().method(method.clone()).uri(path).header("content-type", "application/json");
            if let Some(a) = &authorization {
                request = request.header("authorization", a);
            }
            let reply = app.call(request.body(Body::from(r#"{"kind":"echo"}"#)).unwrap()).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path} {reason}");
            assert_eq!(error_code(&reply), "unauthorized");
            let message = reply.body["error"]["message"].as_str().unwrap().to_lowercase();
            assert!(message.contains(reason), "{message:?} should say {reason:?}");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
    }
    assert_eq!(app.queued_messages().await, 0);
}

/// Verified where no authorizer runs (locally) as API Gateway's JWT authorizer verifies them deployed.
#[tokio::test]
async fn tokens_users_have_are_accepted_and_an_unreachable_issuer_is_a_503() {
    let app = spawn_app().await;
    let cognito_access_token = json!({
        "sub": "alice", "iss": jobpipe_testkit::test_issuer(), "client_id": TEST_AUDIENCE, "token_use": "access",
        "scope": "openid", "iat": now_secs(), "exp": now_secs() + 600,
    });
    let mut aud_array = claims("alice");
    aud_array["aud"] = json!(["another-api", TEST_AUDIENCE]);
    for claims in [cognito_access_token, aud_array] {
        let request = Request::get("/jobs").header("authorization", format!("Bearer {}", token_with(&claims)));
        let reply = app.call(request.body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{claims}: {}", reply.body);
    }

    // The keys cannot be fetched: the token may be fine, so the client is told to retry.
    let config = app.stack.config_with(&[("JWT_JWKS_URL", "http://127.0.0.1:9/jwks.json")]);
    let down = router(Arc::new(Api::new(&config, &app.stack.clients, Arc::new(app.clock.clone())).unwrap()));
    let request = Request::get("/jobs").header("authorization", format!("Bearer {}", token("alice")));
    let reply = down.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers()["retry-after"], "1");
}

#[tokio::test]
async fn another_users_job_does_not_exist_for_you() {
    let app = spawn_app().await;
    let job = app.post_job("alice", json!({"kind": "echo", "input": {"secret": "alice's"}})).await.body;
    let path = format!("/jobs/{}", job["jobId"].as_str().unwrap());
    let missing = app.get("bob", &format!("/jobs/{}", jobpipe_core::JobId::new_random())).await;
    let theirs = app.get("bob", &path).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.body, missing.body, "indistinguishable from a job that does not exist");
    assert_eq!(app.get("bob", "/jobs").await.body["jobs"], json!([]));
    assert_eq!(app.get("alice", "/jobs/not-a-uuid").await.status, StatusCode::NOT_FOUND);
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

#[tokio::test]
async fn the_available_kinds_are_listed() {
    let app = spawn_app().await;
    assert_eq!(app.get("alice", "/kinds").await.body, json!({"kinds": ["echo", "image", "wifi-qr"]}));
    let app = spawn_app_with(&[("ECHO_KIND_ENABLED", "false")], |_| {}).await;
    assert_eq!(app.get("alice", "/kinds").await.body, json!({"kinds": ["image", "wifi-qr"]}));
    assert_eq!(app.send(Method::GET, "/kinds", None, None).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let reply = app.get("alice", "/nope").await;
    assert_eq!((reply.status, error_code(&reply)), (StatusCode::NOT_FOUND, "not_found"));
    let reply = app.send(Method::PUT, "/jobs", Some("alice"), None).await;
    assert_eq!((reply.status, error_code(&reply)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
}

/// The template's preflight route sends browsers' `OPTIONS` here without a token; a `204` lets API
/// Gateway answer with the CORS headers (it was a `405`, which fails every cross-origin call).
#[tokio::test]
async fn cors_preflights_are_answered_without_a_token() {
    let app = spawn_app().await;
    for path in ["/jobs", "/jobs/3b0c4a3e-0000-4000-8000-000000000000", "/kinds", "/anything"] {
        let request = Request::builder()
            .method(Method::OPTIONS)
            .uri(path)
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .body(Body::empty())
            .unwrap();
        let reply = app.call(request).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{path}: {:?}", reply.body);
    }
}

#[tokio::test]
async fn listing_pages_through_my_jobs_newest_first() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        app.clock.advance_ms(10);
        let input = if n == 2 { json!({"failPermanently": true}) } else { json!({"n": n}) };
        ids.push(app.post_job("alice", json!({"kind": "echo", "input": input})).await.body["jobId"].clone());
    }
    app.post_job("bob", json!({"kind": "echo"})).await;

    let mut seen = Vec::new();
    let mut path = "/jobs?limit=2".to_string();
    loop {
        let page = app.get("alice", &path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let jobs = page.body["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        seen.extend(jobs.iter().map(|j| j["jobId"].clone()));
        match page.body["nextToken"].as_str() {
            Some(token) => path = format!("/jobs?limit=2&nextToken={token}"),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "all of alice's jobs, newest first, none of bob's");

    app.process_queue().await;
    let failed = app.get("alice", "/jobs?status=failed").await.body;
    assert_eq!(failed["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(failed["jobs"][0]["error"]["code"], "echo_failed");
    let completed = app.get("alice", "/jobs?status=completed&limit=100").await.body;
    assert_eq!(completed["jobs"].as_array().unwrap().len(), 4);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("status=done", "status"),
        ("nextToken=abc", "nextToken"),
        ("colour=red", "colour"),
    ] {
        let reply = app.get("alice", &format!("/jobs?{query}")).await;
        assert_eq!((reply.status, error_field(&reply)), (StatusCode::BAD_REQUEST, Some(field)), "{query}");
    }
}

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
async fn behind_api_gateway_the_authorizer_claims_decide_who_calls() {
    let app = spawn_app_with(&[("AUTH_MODE", "apigateway")], |_| {}).await;
    let fixture = std::fs::read_to_string(format!(
        "{}/../../tests/data/example-apigw-v2-request-jwt-authorizer.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut event: Value = serde_json::from_str(&fixture).unwrap();
    event["rawPath"] = json!("/jobs");
    event["rawQueryString"] = json!("");
    event["queryStringParameters"] = json!({});
    event["requestContext"]["http"]["method"] = json!("POST");
    event["requestContext"]["http"]["path"] = json!("/jobs");
    event["headers"] = json!({"content-type": "application/json"});
    event["body"] = json!(r#"{"kind":"echo","input":{"via":"gateway"}}"#);
    event["isBase64Encoded"] = json!(false);
    event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = json!("carol");

    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let reply = app.call(request.map(|b| Body::from(b.to_vec()))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let path = format!("/jobs/{}", reply.body["jobId"].as_str().unwrap());

    // The job belongs to the authorizer's sub.
    event["requestContext"]["http"]["method"] = json!("GET");
    event["rawPath"] = json!(path);
    event["body"] = Value::Null;
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let reply = app.call(request.map(|b| Body::from(b.to_vec()))).await;
    assert_eq!((reply.status, reply.body["input"]["via"].as_str()), (StatusCode::OK, Some("gateway")));

    // In this mode a bearer token alone is not trusted: the authorizer must have run.
    let reply = app.get("carol", &path).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
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

#[tokio::test]
async fn real_kinds_validate_their_input_before_anything_is_queued() {
    let app = spawn_app().await;
    for (kind, input, field) in [
        ("image", json!({}), "input.prompt"),
        ("image", json!({"prompt": "x", "width": 1000}), "input.width"),
        ("image", json!({"prompt": "x", "width": 4096, "height": 320}), "input.height"),
        ("image", json!({"prompt": "x", "quality": "ultra"}), "input.quality"),
        ("image", json!({"prompt": "x", "steps": 30}), "input.steps"),
        ("wifi-qr", json!({"ssid": "home"}), "input.password"),
        ("wifi-qr", json!({"ssid": "home", "password": "secret123", "encryption": "WPA2"}), "input.encryption"),
    ] {
        let reply = app.post_job("alice", json!({"kind": kind, "input": input})).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{kind} {input}");
        assert_eq!((error_code(&reply), error_field(&reply)), ("invalid_input", Some(field)), "{kind} {input}");
    }
    assert_eq!(app.queued_messages().await + app.stack.queue_depth(&app.stack.image_queue_url).await, 0);
}

/// The API over the same resources, reaching moto through a fault proxy, and the proxy.
async fn through_proxy(app: &App) -> (Router, std::sync::Arc<jobpipe_testkit::FaultProxy>) {
    let (proxy, clients) = through_fault_proxy().await;
    let api = Api::new(&app.stack.config(), &clients, Arc::new(app.clock.clone())).unwrap();
    (router(Arc::new(api)), proxy)
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

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
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
