//! The local stack end to end, driven as a client would: HTTP API, WebSocket pushes, `@connections`,
//! and `invoke` of every real binary with its fixture.

use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use futures_util::{SinkExt, StreamExt};
use jobpipe::dev::{DevOptions, DevStack};
use jobpipe::invoke::{InvokeOptions, invoke_once};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

mod live_status;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Builds the function binaries once per test process.
fn build_functions() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let template = jobpipe::template::Template::load(&root().join("template.yaml")).unwrap();
        jobpipe::dev::build(&root(), &template.functions().unwrap(), false).expect("building the functions");
    });
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

async fn start_stack() -> DevStack {
    start_stack_with(|_| {}).await
}

async fn start_stack_with(edit: impl FnOnce(&mut DevOptions)) -> DevStack {
    build_functions();
    let mut options = DevOptions::new(root());
    options.port = 0;
    options.build = false;
    options.endpoint = Some(jobpipe_testkit::moto_endpoint().to_string());
    options.prefix = unique("t");
    edit(&mut options);
    DevStack::start(options).await.expect("starting the local stack")
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(stack: &DevStack, query: &str) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    tokio_tungstenite::connect_async(format!("{}?{query}", stack.websocket_url())).await.map(|(socket, _)| socket)
}

/// The next JSON text frame, within `wait`.
async fn next_json(socket: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

async fn post_job(stack: &DevStack, token: &str, input: Value) -> Value {
    let reply = reqwest::Client::new()
        .post(format!("{}/jobs", stack.base_url()))
        .bearer_auth(token)
        .json(&json!({"kind": "echo", "input": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    reply.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_over_http_is_pushed_live_until_completed() {
    let stack = start_stack().await;
    let http = reqwest::Client::new();
    let token = json_of(http.post(format!("{}/dev/token", stack.base_url())).json(&json!({"sub": "alice"}))).await;
    let token = token["token"].as_str().unwrap().to_string();

    let mut socket = connect(&stack, &format!("token={token}")).await.expect("connecting");
    let job = post_job(&stack, &token, json!({"greeting": "hi", "sleepMs": 1200})).await;
    let job_id = job["jobId"].as_str().unwrap();
    socket.send(Message::Text(json!({"action": "subscribe", "jobId": job_id}).to_string().into())).await.unwrap();

    let mut statuses = Vec::new();
    let mut subscribed = false;
    while let Some(message) = next_json(&mut socket, Duration::from_secs(20)).await {
        match message["type"].as_str() {
            Some("subscribed") => {
                subscribed = true;
                statuses.push(message["job"]["status"].as_str().unwrap().to_string());
            }
            Some("job") => {
                assert_eq!(message["jobId"], job_id);
                statuses.push(message["status"].as_str().unwrap().to_string());
                if message["status"] == "completed" {
                    assert_eq!(message["result"], json!({"greeting": "hi", "sleepMs": 1200}));
                    assert_eq!(message["progress"], 100);
                    break;
                }
            }
            other => panic!("unexpected message {other:?}: {message}"),
        }
    }
    assert!(subscribed, "the subscription was confirmed");
    assert!(statuses.iter().any(|s| s == "processing"), "processing was pushed: {statuses:?}");
    assert_eq!(statuses.last().map(String::as_str), Some("completed"), "{statuses:?}");

    let view = json_of(http.get(format!("{}/jobs/{job_id}", stack.base_url())).bearer_auth(&token)).await;
    assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some("completed"), Some(1)));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_refuses_bad_tokens_and_hides_other_users_jobs() {
    let stack = start_stack().await;
    for query in ["", "token=", "token=garbage"] {
        match connect(&stack, query).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401, "{query}"),
            other => panic!("{query:?} connected: {:?}", other.map(|_| ())),
        }
    }
    let alices_job = post_job(&stack, &stack.token("alice"), json!({})).await["jobId"].as_str().unwrap().to_string();
    // Subscribing at connect time to someone else's job refuses the connection.
    match connect(&stack, &format!("token={}&jobId={alices_job}", stack.token("mallory"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("mallory connected: {:?}", other.map(|_| ())),
    }
    let mut socket = connect(&stack, &format!("token={}", stack.token("mallory"))).await.unwrap();
    let mut ask = async |frame: &str| {
        socket.send(Message::Text(frame.to_string().into())).await.unwrap();
        next_json(&mut socket, Duration::from_secs(10)).await.expect("a reply")
    };
    let reply = ask(&json!({"action": "subscribe", "jobId": alices_job}).to_string()).await;
    assert_eq!((reply["type"].as_str(), reply["error"]["code"].as_str()), (Some("error"), Some("not_found")));
    for (frame, code) in [
        ("not json", "malformed_json"),
        ("{\"action\":\"subscribe\"}", "invalid_request"),
        ("{\"action\":\"dance\",\"jobId\":\"x\"}", "unknown_action"),
        ("{\"action\":\"subscribe\",\"jobId\":\"../../etc\"}", "not_found"),
    ] {
        let reply = ask(frame).await;
        assert_eq!(reply["error"]["code"].as_str(), Some(code), "{frame}: {reply}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_connection_is_forgotten_without_blocking_the_others() {
    let stack = start_stack().await;
    let token = stack.token("alice");
    let job = post_job(&stack, &token, json!({"sleepMs": 800})).await;
    let job_id = job["jobId"].as_str().unwrap().to_string();
    // A subscription whose socket no longer exists (its $disconnect never ran).
    let dynamodb = aws_sdk_dynamodb::Client::new(&jobpipe_testkit::sdk_config());
    let connections_table = stack.created.tables["ConnectionsTable"].clone();
    for (key, value) in [("-", "alice"), (job_id.as_str(), "alice")] {
        dynamodb
            .put_item()
            .table_name(&connections_table)
            .item("connectionId", AttributeValue::S("ghost".into()))
            .item("jobId", AttributeValue::S(key.into()))
            .item("owner", AttributeValue::S(value.into()))
            .send()
            .await
            .unwrap();
    }
    let mut socket = connect(&stack, &format!("token={token}&jobId={job_id}")).await.unwrap();
    let mut last = None;
    while let Some(message) = next_json(&mut socket, Duration::from_secs(20)).await {
        if message["type"] == "job" && message["status"] == "completed" {
            last = Some(message);
            break;
        }
    }
    assert!(last.is_some(), "the live connection got every push despite the dead one");
    let ghost_rows = dynamodb
        .query()
        .table_name(&connections_table)
        .key_condition_expression("connectionId = :c")
        .expression_attribute_values(":c", AttributeValue::S("ghost".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(ghost_rows.count(), 0, "GoneException removed the dead connection");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_socket_runs_disconnect_and_crashed_functions_restart() {
    let stack = start_stack().await;
    let socket = connect(&stack, &format!("token={}", stack.token("alice"))).await.unwrap();
    assert_eq!(stack.gateway.open_connections().await, 1);
    drop(socket);
    for _ in 0..50 {
        if stack.gateway.open_connections().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stack.gateway.open_connections().await, 0);

    let api = stack.functions["ApiIngestFunction"].clone();
    api.kill_all();
    let restarts = || api.restarts.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..100 {
        if restarts() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(restarts(), 4, "each of the four execution environments was restarted");
    // The new execution environments serve requests.
    post_job(&stack, &stack.token("alice"), json!({})).await;

    let base = stack.base_url();
    stack.stop().await;
    assert!(reqwest::get(format!("{base}/dev/resources")).await.is_err(), "the gateway is stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_runs_each_function_against_its_fixture() {
    build_functions();
    let fixture = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(root().join("events").join(name)).unwrap()).unwrap()
    };
    let invoke = async |function: &str, event: &str| {
        let options = InvokeOptions {
            build: false,
            endpoint: Some(jobpipe_testkit::moto_endpoint().to_string()),
            prefix: unique("i"),
        };
        invoke_once(&root(), function, fixture(event), options).await.unwrap()
    };
    let body = |response: &Value| -> Value { serde_json::from_str(response["body"].as_str().unwrap()).unwrap() };

    let posted = invoke("ApiIngestFunction", "api-post-job.json").await;
    assert_eq!(posted["statusCode"], 202, "{posted}");
    assert_eq!(body(&posted)["input"]["message"], "hello from a fixture");
    assert_eq!(posted["headers"]["x-correlation-id"], "fixture-correlation-id");

    let missing = invoke("api-ingest", "api-get-job.json").await;
    assert_eq!(
        (missing["statusCode"].as_u64(), body(&missing)["error"]["code"].as_str()),
        (Some(404), Some("not_found"))
    );
    let listed = invoke("ApiIngestFunction", "api-list-jobs.json").await;
    assert_eq!((listed["statusCode"].as_u64(), body(&listed)["jobs"].clone()), (Some(200), json!([])));

    let batch = invoke("QueueProcessorFunction", "sqs-job-batch.json").await;
    let failed: Vec<&str> =
        batch["batchItemFailures"].as_array().unwrap().iter().map(|f| f["itemIdentifier"].as_str().unwrap()).collect();
    assert_eq!(failed, ["2e1424d4-f796-459a-8184-9c92662be6da", "3f2535e5-0807-46ab-9295-ad03773cf7eb"]);
    let report = invoke("QueueProcessorFunction", "schedule-reconcile.json").await;
    assert_eq!(report["redispatched"], 0, "{report}");

    let pushed = invoke("NotifierFunction", "dynamodb-job-changes.json").await;
    assert_eq!(pushed, json!({"batchItemFailures": []}));

    let connected = invoke("WebsocketConnectFunction", "ws-connect.json").await;
    assert_eq!(connected["statusCode"], 200, "{connected}");
    let subscribed = invoke("WebsocketConnectFunction", "ws-subscribe.json").await;
    // A fresh stack has neither this connection nor the job.
    assert_eq!(body(&subscribed)["error"]["code"], "unauthorized");
    let disconnected = invoke("WebsocketConnectFunction", "ws-disconnect.json").await;
    assert_eq!(disconnected["statusCode"], 200);

    let error =
        invoke_once(&root(), "NoSuchFunction", json!({}), InvokeOptions { build: false, ..Default::default() }).await;
    assert!(error.unwrap_err().to_string().contains("ApiIngestFunction"), "the error lists the functions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_submits_a_job_in_the_browser_and_sees_it_complete() {
    let browser_tests = root().join("tests/browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser test needs playwright-core and Debian's chromium: run `cargo xtask setup`"
    );
    let stack = start_stack().await;
    let artifacts = root().join("tests/artifacts");
    let output = tokio::process::Command::new("node")
        .arg(browser_tests.join("submit-job.mjs"))
        .arg(stack.base_url())
        .arg(&artifacts)
        .output()
        .await
        .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser test failed:\n{stdout}\n{stderr}");
    assert!(artifacts.join("browser-job-completed.png").exists());
    stack.stop().await;
}

/// A static host for the web UI on an origin of its own, as a deployed frontend is.
async fn serve_frontend() -> (String, tokio::task::JoinHandle<()>) {
    let web = root().join("web");
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let web = web.clone();
        async move {
            use axum::response::IntoResponse;
            match jobpipe::gateway::static_file(&web, uri.path()).await {
                Some(file) => file,
                None => axum::http::StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (url, tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
}

/// The UI on another origin than the API, as deployed: preflights (which carry no token) must pass the
/// gateway's routing and authorizers and come back with the template's CORS headers, for every method.
/// (The `$default` route's authorizer refused them, and api-ingest answered `OPTIONS` with 405.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_on_another_origin_submits_reads_lists_and_cancels() {
    let browser_tests = root().join("tests/browser");
    assert!(browser_tests.join("node_modules/playwright-core").exists(), "run `cargo xtask setup`");
    let (frontend, frontend_task) = serve_frontend().await;
    let stack = start_stack_with(|options| {
        options.parameters.insert("CorsAllowedOrigin".into(), frontend.clone());
    })
    .await;
    let output = tokio::process::Command::new("node")
        .arg(browser_tests.join("cross-origin.mjs"))
        .args([&frontend, &stack.base_url(), &stack.websocket_url(), &stack.token("cross-origin")])
        .arg(root().join("tests/artifacts"))
        .output()
        .await
        .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "cross-origin browser test failed:\n{stdout}\n{stderr}");

    // An origin the template does not allow gets no CORS headers, so a browser refuses the answer.
    let refused = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{}/jobs", stack.base_url()))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    stack.stop().await;
    frontend_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_watches_lists_and_redrives_dead_letters() {
    use jobpipe::ops::{Target, TargetOptions};
    let stack = start_stack().await;
    let target =
        Target::resolve(&TargetOptions { api: stack.base_url(), stack: None, token: None, user: "operator".into() })
            .await
            .unwrap();
    let job = target.submit("echo", json!({"sleepMs": 800})).await.unwrap();
    let job_id = job["jobId"].as_str().unwrap();
    let mut printed = Vec::new();
    let done = target.watch(job_id, &mut printed).await.unwrap();
    assert_eq!(done["status"], "completed");
    let printed = String::from_utf8(printed).unwrap();
    assert!(printed.contains("processing") && printed.contains("completed"), "{printed}");
    assert!(printed.contains("[####################] 100%"), "{printed}");

    let listed = target.list(Some("completed"), 10).await.unwrap();
    assert_eq!(listed["jobs"][0]["jobId"], job_id);
    let error = target.submit("nope", json!({})).await.unwrap_err().to_string();
    assert!(error.contains("unknown_kind"), "{error}");

    // A dead letter (as if a job's message had been dead-lettered) is listed and moved back.
    let sqs = target.sqs.clone().unwrap();
    let dlq = target.dead_letter_queue_url.clone().unwrap();
    let letter = json!({"jobId": job_id}).to_string();
    let kind =
        aws_sdk_sqs::types::MessageAttributeValue::builder().data_type("String").string_value("echo").build().unwrap();
    sqs.send_message().queue_url(&dlq).message_body(&letter).message_attributes("kind", kind).send().await.unwrap();
    let letters = target.dlq_list(10).await.unwrap();
    assert_eq!((letters.len(), letters[0]["kind"].as_str()), (1, Some("echo")));
    // The listed message is hidden for a moment; wait for it to be visible again, then redrive it.
    let mut moved = 0;
    for _ in 0..40 {
        moved = target.dlq_redrive(10).await.unwrap();
        if moved > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(moved, 1);
    // Its job had already completed: redelivery acknowledges it without running it again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(target.status(job_id).await.unwrap()["attempts"], 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_real_binary_answers_its_fixture_under_cargo_lambda_watch() {
    let bin = root().join(".venv/bin");
    assert!(bin.join("cargo-lambda").exists(), "cargo-lambda is installed by `cargo xtask setup`");
    build_functions();
    // The functions' environment, as the template gives it, resolved to fresh resources in moto.
    let template = jobpipe::template::Template::load(&root().join("template.yaml")).unwrap();
    let local =
        jobpipe::dev::LocalAws::start(&root(), &template, Some(jobpipe_testkit::moto_endpoint().into()), &unique("w"))
            .await
            .unwrap();
    let binaries = DevOptions::new(root()).binaries;
    let mut env = std::collections::BTreeMap::new();
    for spec in template.functions().unwrap() {
        let process = local.function_process(&spec, &binaries, "http://127.0.0.1:9", &Default::default()).unwrap();
        env.extend(process.environment);
    }
    let env_file = std::env::temp_dir().join(format!("{}.env", unique("jobpipe-watch-")));
    // Quoted: cargo-lambda's env-file parser refuses an unquoted `=` inside a value (KIND_QUEUE_URLS).
    std::fs::write(&env_file, env.iter().map(|(k, v)| format!("{k}={v:?}\n")).collect::<String>()).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut watch = tokio::process::Command::new(env!("CARGO"))
        .current_dir(root())
        .env("PATH", &path)
        .args([
            "lambda",
            "watch",
            "--ignore-changes",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port,
            "--env-file",
        ])
        .arg(&env_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting cargo lambda watch");

    let invoke = async |function: &str, fixture: &str| -> Value {
        for _ in 0..120 {
            let output = tokio::process::Command::new(env!("CARGO"))
                .current_dir(root())
                .env("PATH", &path)
                .args([
                    "lambda",
                    "invoke",
                    function,
                    "--invoke-address",
                    "127.0.0.1",
                    "--invoke-port",
                    &port,
                    "--output-format",
                    "json",
                    "--data-file",
                ])
                .arg(root().join("events").join(fixture))
                .output()
                .await
                .unwrap();
            if output.status.success() {
                return serde_json::from_slice(&output.stdout).expect("the response is JSON");
            }
            // Not up yet (watch builds the binary on first use).
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("{function} never answered under cargo lambda watch");
    };
    let posted = invoke("api-ingest", "api-post-job.json").await;
    assert_eq!(posted["statusCode"], 202, "{posted}");
    let batch = invoke("queue-processor", "sqs-job-batch.json").await;
    assert_eq!(batch["batchItemFailures"].as_array().map(Vec::len), Some(2), "{batch}");
    let pushed = invoke("notifier", "dynamodb-job-changes.json").await;
    assert_eq!(pushed, json!({"batchItemFailures": []}));
    let connected = invoke("websocket-connect", "ws-connect.json").await;
    assert_eq!(connected["statusCode"], 200, "{connected}");

    let _ = watch.kill().await;
    let _ = std::fs::remove_file(env_file);
}

/// A Runtime API client in Python standing in for a function: it answers each invocation, after
/// sleeping `sleepMs`, with the time its deadline left it when it took the invocation.
const DEADLINE_REPORTER: &str = r#"
import json, os, time, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next") as r:
        request_id = r.headers["lambda-runtime-aws-request-id"]
        left = int(r.headers["lambda-runtime-deadline-ms"]) - int(time.time() * 1000)
        event = json.loads(r.read())
    time.sleep(event["sleepMs"] / 1000)
    body = json.dumps({"leftAtStart": left}).encode()
    urllib.request.urlopen(urllib.request.Request(api + request_id + "/response", data=body, method="POST")).read()
"#;

/// Waiting for an execution environment never counts against the function's timeout: an invocation's
/// deadline is set when an environment takes it, as Lambda's is, even when invocations queue behind each
/// other. (The local runtime once set it when the invocation was queued, so queued batches of the fault
/// run started with their time nearly gone and failed as `deadline_exceeded`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_gets_its_whole_timeout_from_when_an_environment_takes_it() {
    use std::os::unix::fs::PermissionsExt;
    let python = std::env::var("JOBPIPE_PYTHON").map(PathBuf::from).unwrap_or_else(|_| root().join(".venv/bin/python"));
    let dir = std::env::temp_dir().join(unique("jobpipe-runtime-"));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("bootstrap");
    std::fs::write(&binary, format!("#!{}\n{DEADLINE_REPORTER}", python.display())).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();

    let timeout = Duration::from_secs(3);
    let work_ms = 2_000;
    let process = jobpipe::runtime::FunctionProcess {
        name: "DeadlineReporter".into(),
        binary,
        environment: Default::default(),
        timeout,
        memory_mb: 128,
        instances: 1,
    };
    let (log, _lines) = tokio::sync::mpsc::unbounded_channel();
    let function = jobpipe::runtime::Function::start(process, log).await.unwrap();
    // Three at once on one environment: the second and third wait for the ones before them.
    let event = json!({"sleepMs": work_ms});
    let invocations = (0..3).map(|_| function.invoke_json(&event));
    let answers = futures_util::future::join_all(invocations).await;
    function.stop();
    let _ = std::fs::remove_dir_all(&dir);
    for answer in answers {
        let answer = answer.expect("every invocation ran within its timeout");
        let left = answer["leftAtStart"].as_i64().unwrap();
        assert!(left > work_ms, "an invocation started with {left} ms of its {timeout:?} left: {answer}");
    }
}

/// The fault-injection run, sized for the test command. Its disruption is counted in jobs (a kill of
/// every queue-processor process after every 25 accepted submissions), and it waits for progress to stop
/// rather than for a deadline, so a slower machine makes it slower, never red.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_lost_or_completed_twice_under_faults() {
    build_functions();
    let options = jobpipe::chaos::ChaosOptions { jobs: 300, poison: 6, kill_every_jobs: 25, ..Default::default() };
    let report = jobpipe::chaos::run(&root(), &options, None, false).await.expect("the run");
    println!("{}", report.table());
    assert_eq!(report.violations(), Vec::<String>::new(), "\n{}", report.table());
    assert!(!report.stalled, "progress stopped\n{}", report.table());
    // Refusals come only from injected faults outlasting the SDK's retries: a few at most.
    assert!(report.accepted > 250, "\n{}", report.table());
    // A job ends other than as designed only when killed workers or failed calls used up its attempts;
    // each kill costs the jobs in flight one attempt, so this stays far below the number of kills.
    assert!(report.disrupted <= report.kills, "\n{}", report.table());
    assert!(
        report.kills == report.accepted / 25 && report.faults_injected > 0 && report.duplicates_sent > 0,
        "faults were injected\n{}",
        report.table()
    );
}

/// The served OpenAPI document describes exactly the routes the template deploys, and schemathesis,
/// fuzzing every operation from it through the local stack (API Gateway event, function, moto), finds
/// no 5xx, no undocumented status and no answer outside the documented shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_matches_its_openapi_document_under_schemathesis() {
    let schemathesis = root().join(".venv/bin/schemathesis");
    assert!(schemathesis.exists(), "schemathesis is installed by `cargo xtask setup` (infra/requirements.txt)");
    let stack = start_stack().await;
    let document = json_of(reqwest::Client::new().get(format!("{}/openapi.json", stack.base_url()))).await;

    let template = jobpipe::template::Template::load(&root().join("template.yaml")).unwrap();
    let mut deployed: Vec<String> = template
        .functions()
        .unwrap()
        .iter()
        .flat_map(|f| f.events.iter())
        .filter_map(|event| match event {
            // Not part of the API: the catch-all, the document itself, and the CORS preflight route.
            jobpipe::template::EventSpec::HttpApi { method, path, .. }
                if path != jobpipe::template::DEFAULT_ROUTE && path != "/openapi.json" && method != "OPTIONS" =>
            {
                Some(format!("{method} {path}"))
            }
            _ => None,
        })
        .collect();
    let mut documented: Vec<String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| format!("{} {path}", m.to_uppercase())))
        .collect();
    deployed.sort();
    documented.sort();
    assert_eq!(documented, deployed, "the OpenAPI document and template.yaml's HttpApi routes differ");

    let output = tokio::process::Command::new(&schemathesis)
        .current_dir(root())
        .args(["--no-color", "--config-file", "tests/api/schemathesis.toml", "run"])
        .arg(format!("{}/openapi.json", stack.base_url()))
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", stack.token("schemathesis")))
        .args(["--checks", "all", "--max-examples", "40", "--workers", "2", "--suppress-health-check", "all"])
        .args(["--request-timeout", "20"])
        .output()
        .await
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stack.stop().await;
}

/// Polls `GET /jobs/{id}` until the job is terminal.
async fn until_terminal(stack: &DevStack, token: &str, job_id: &str) -> Value {
    let http = reqwest::Client::new();
    for _ in 0..200 {
        let view = json_of(http.get(format!("{}/jobs/{job_id}", stack.base_url())).bearer_auth(token)).await;
        if ["completed", "failed", "cancelled"].contains(&view["status"].as_str().unwrap_or_default()) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {job_id} did not finish");
}

/// The functions log why a request was refused, but never a credential: no bearer token (accepted or
/// refused, over HTTP or in the WebSocket query), no presigned result URL, no WiFi password from a job.
/// Every metric the template's dashboard plots in the `jobpipe` namespace is emitted by the functions as
/// jobs run (`JobsCompleted`, `JobsFailed` and `JobDuration` were documented and plotted, never emitted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_on_the_dashboard_is_emitted() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let mut plotted: Vec<String> = template
        .split("[\"jobpipe\", \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(String::from))
        .collect();
    plotted.sort();
    plotted.dedup();
    assert!(plotted.len() >= 4, "the dashboard plots jobpipe metrics: {plotted:?}");

    let (tap, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stack = start_stack_with(|options| options.log_tap = Some(tap)).await;
    let token = stack.token("metrics");
    for input in [json!({"sleepMs": 100}), json!({"failPermanently": true})] {
        let job = post_job(&stack, &token, input).await;
        until_terminal(&stack, &token, job["jobId"].as_str().unwrap()).await;
    }
    let mut emitted = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while plotted.iter().any(|name| !emitted.contains(name)) {
        let Ok(Some(line)) = tokio::time::timeout_at(deadline, lines.recv()).await else { break };
        let Some(document) = line.split_once("] ").and_then(|(_, json)| serde_json::from_str::<Value>(json).ok())
        else {
            continue;
        };
        for metric in document["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().into_iter().flatten() {
            emitted.insert(metric["Name"].as_str().unwrap_or_default().to_string());
        }
    }
    let missing: Vec<&String> = plotted.iter().filter(|name| !emitted.contains(*name)).collect();
    assert!(missing.is_empty(), "plotted but never emitted: {missing:?} (emitted: {emitted:?})");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_give_reasons_but_never_tokens_presigned_urls_or_secrets() {
    let (tap, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stack = start_stack_with(|options| options.log_tap = Some(tap)).await;
    let http = reqwest::Client::new();
    let base = stack.base_url();
    let token = stack.token("alice");
    let mut claims = jobpipe::dev::dev_claims("alice");
    claims["exp"] = json!(jobpipe_testkit::now_secs() - 600);
    let expired = jobpipe::dev::dev_signer().sign(&claims);
    // Alice's token with another name in it: the signature no longer matches.
    let [header, _, signature] = <[&str; 3]>::try_from(token.split('.').collect::<Vec<_>>()).unwrap();
    let mallory = jobpipe::dev::dev_token("mallory");
    let forged = format!("{header}.{}.{signature}", mallory.split('.').nth(1).unwrap());
    let password = "correct-horse-battery-staple";

    for refused in [&expired, &forged, &"garbage.token.here".to_string()] {
        let reply = http.get(format!("{base}/jobs")).bearer_auth(refused).send().await.unwrap();
        assert_eq!(reply.status(), 401);
        assert!(connect(&stack, &format!("token={refused}")).await.is_err(), "the socket refuses it too");
    }
    let _socket = connect(&stack, &format!("token={token}")).await.expect("a valid token connects");
    let submitted = json_of(
        http.post(format!("{base}/jobs"))
            .bearer_auth(&token)
            .json(&json!({"kind": "wifi-qr", "input": {"ssid": "home", "password": password}})),
    )
    .await;
    let job_id = submitted["jobId"].as_str().unwrap().to_string();
    let done = until_terminal(&stack, &token, &job_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let url = done["result"]["url"].as_str().expect("a presigned result link").to_string();
    let signature = url.split("X-Amz-Signature=").nth(1).expect("a signed URL").to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.stop().await;

    let mut logged = Vec::new();
    while let Ok(line) = lines.try_recv() {
        logged.push(line);
    }
    let all = logged.join("\n");
    assert!(all.contains("request not authenticated") && all.contains("expired"), "refusals are logged with a reason");
    assert!(all.contains(&job_id), "the job's own lines are here");
    let secrets = [
        ("the valid token", token.as_str()),
        ("the expired token", expired.as_str()),
        ("the forged token", forged.as_str()),
        ("a token's signature", token.rsplit('.').next().unwrap()),
        ("the presigned URL's signature", signature.as_str()),
        ("a presigned URL", "X-Amz-Signature"),
        ("the WiFi password", password),
    ];
    for (what, secret) in secrets {
        let leaks: Vec<&String> = logged.iter().filter(|line| line.contains(secret)).collect();
        assert!(leaks.is_empty(), "{what} was logged:\n{leaks:#?}");
    }
}

/// The benchmark's execution environment measures what it claims: an init time, an answer per event,
/// memory and CPU of the function's own process. (The figures themselves are `jobpipe bench`'s to
/// print; nothing here depends on how fast this machine is.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_environment_times_init_and_reads_usage() {
    jobpipe::dev::build_packages(&root(), &["lambda-floor"], false).expect("building the floor");
    let launch = jobpipe::bench::Launch {
        program: DevOptions::new(root()).binaries.join("lambda-floor"),
        args: vec![],
        env: Default::default(),
        dir: None,
    };
    let env = jobpipe::bench::Environment::start(&launch, "floor").await.expect("the floor starts");
    assert!(env.init > Duration::ZERO && env.init < Duration::from_secs(10), "{:?}", env.init);
    let before = env.usage();
    for n in 0..20 {
        assert_eq!(env.invoke(&json!({"n": n})).await.unwrap(), json!({"n": n}), "the floor echoes its event");
    }
    let after = env.usage();
    assert!(after.peak_rss_kb > 1000, "VmHWM of the function's process: {after:?}");
    assert!(after.cpu > before.cpu, "handling 20 events took CPU: {before:?} -> {after:?}");
    env.stop().await;

    let crashing = jobpipe::bench::Launch { program: "/bin/false".into(), ..launch };
    let error =
        jobpipe::bench::Environment::start(&crashing, "false").await.err().expect("an exit during init is an error");
    assert!(error.to_string().contains("exited during init"), "{error}");
}

/// Runs one step of a generated-client test (a generator, a compiler, a client program) in
/// `tests/clients` and answers what it printed; a failure shows all of its output.
async fn client_step(what: &str, command: &mut tokio::process::Command) -> String {
    let output = command
        .current_dir(root().join("tests/clients"))
        .output()
        .await
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Checks what a generated client's program (`tests/clients`) printed: the echo and wifi-qr jobs it
/// submitted completed, the list of completed jobs has them, a missing job's `404` was read as the
/// document's error body; and the API, asked directly, holds those jobs with the inputs the client sent.
async fn check_client_report(stack: &DevStack, token: &str, stdout: &str, ssid: &str) {
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("the client's report: {e}:\n{stdout}"));
    let jobs = report["jobs"].as_array().unwrap_or_else(|| panic!("{report}"));
    let kinds: Vec<&str> = jobs.iter().filter_map(|job| job["kind"].as_str()).collect();
    assert_eq!(kinds, ["echo", "wifi-qr"], "{report}");
    let listed = report["listed"].as_array().unwrap_or_else(|| panic!("{report}"));
    for job in jobs {
        assert_eq!(job["status"], "completed", "{report}");
        assert!(job["completedAt"].is_string(), "the client read completedAt: {report}");
        assert!(listed.contains(&job["jobId"]), "the client listed {}: {report}", job["jobId"]);
        let id = job["jobId"].as_str().unwrap();
        let view =
            json_of(reqwest::Client::new().get(format!("{}/jobs/{id}", stack.base_url())).bearer_auth(token)).await;
        assert_eq!(view["status"], "completed", "{view}");
        match job["kind"].as_str() {
            Some("echo") => assert_eq!(view["input"], json!({"sleepMs": 10, "failTimes": 0}), "{view}"),
            _ => assert_eq!(view["input"]["ssid"], ssid, "{view}"),
        }
    }
    assert_eq!(report["missing"], json!({"status": 404, "code": "not_found"}), "{report}");
}

/// A TypeScript client generated from the served document by @hey-api/openapi-ts type-checks (tsc, strict)
/// with a program that names each kind's request body and input models, and that program submits, reads
/// and lists jobs through the local stack. (With each kind's alternative inlined, the models had no names.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typescript_client_generated_from_the_openapi_document_submits_reads_and_lists_jobs() {
    let clients = root().join("tests/clients");
    let bin = clients.join("node_modules/.bin");
    assert!(
        bin.join("openapi-ts").exists() && bin.join("tsc").exists(),
        "@hey-api/openapi-ts and typescript are installed by `cargo xtask setup` (tests/clients/package-lock.json)"
    );
    let stack = start_stack().await;
    let document = format!("{}/openapi.json", stack.base_url());
    client_step(
        "@hey-api/openapi-ts",
        tokio::process::Command::new(bin.join("openapi-ts"))
            .args(["--file", "openapi-ts.config.mjs"])
            .env("JOBPIPE_OPENAPI_URL", &document),
    )
    .await;
    let _ = std::fs::remove_dir_all(clients.join("generated/typescript-js"));
    client_step("tsc", tokio::process::Command::new(bin.join("tsc")).args(["--project", "tsconfig.json"])).await;
    let token = stack.token("typescript-client");
    let stdout = client_step(
        "the TypeScript client",
        tokio::process::Command::new("node")
            .arg("generated/typescript-js/typescript/jobs.js")
            .arg(stack.base_url())
            .arg(&token),
    )
    .await;
    check_client_report(&stack, &token, &stdout, "jobpipe-ts").await;
    stack.stop().await;
}

/// A Python client generated from the served document by openapi-python-client, with no warning (it used to
/// make duplicate models from the inlined per-kind alternatives and drop those the submit operation
/// imports), imports whole, and a program using each kind's named models submits, reads and lists jobs
/// through the local stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_the_openapi_document_submits_reads_and_lists_jobs() {
    let venv = root().join(".venv/bin");
    assert!(
        venv.join("openapi-python-client").exists(),
        "openapi-python-client is installed by `cargo xtask setup` (infra/requirements.txt)"
    );
    let stack = start_stack().await;
    let document = format!("{}/openapi.json", stack.base_url());
    client_step(
        "openapi-python-client",
        tokio::process::Command::new(venv.join("openapi-python-client"))
            .args(["generate", "--url", &document, "--meta", "none", "--config", "python/config.yaml"])
            .args(["--output-path", "generated/python/jobpipe_client", "--overwrite", "--fail-on-warning"]),
    )
    .await;
    let token = stack.token("python-client");
    let stdout = client_step(
        "the Python client",
        tokio::process::Command::new(venv.join("python"))
            .arg("python/jobs.py")
            .arg(stack.base_url())
            .arg(&token)
            .env("PYTHONPATH", "generated/python")
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    )
    .await;
    check_client_report(&stack, &token, &stdout, "jobpipe-py").await;
    stack.stop().await;
}

/// The local stack verifies tokens as a deployed one: through the JWKS it serves for its dev key, with
/// the tokens users have (a Cognito access token from `/dev/token`, an `aud` array) accepted over HTTP
/// and on the WebSocket, and a token for another app client refused on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_stack_verifies_tokens_through_the_jwks_it_serves() {
    let stack = start_stack().await;
    let http = reqwest::Client::new();
    let base = stack.base_url();
    let jwks = json_of(http.get(format!("{base}{}", jobpipe::dev::DEV_JWKS_PATH))).await;
    let keys = jwks["keys"].as_array().expect("a JWKS");
    assert_eq!((keys.len(), keys[0]["kid"].as_str()), (1, Some(jobpipe::dev::DEV_JWT_KID)));
    assert_eq!((keys[0]["kty"].as_str(), keys[0]["use"].as_str()), (Some("RSA"), Some("sig")));
    assert!(keys[0].get("d").is_none(), "only the public half is published");

    let issued = json_of(http.post(format!("{base}/dev/token")).json(&json!({"sub": "alice"}))).await;
    let cognito_style = issued["token"].as_str().unwrap().to_string();
    let mut aud_array = jobpipe::dev::dev_claims("alice");
    aud_array["aud"] = json!(["another-api", jobpipe::dev::DEV_AUDIENCE]);
    let aud_array = jobpipe::dev::dev_signer().sign(&aud_array);
    for token in [&cognito_style, &aud_array] {
        let listed = http.get(format!("{base}/jobs")).bearer_auth(token).send().await.unwrap();
        assert_eq!(listed.status(), 200);
        connect(&stack, &format!("token={token}")).await.expect("the socket takes it too");
    }
    let mut other_client = jobpipe::dev::dev_claims("alice");
    other_client["client_id"] = json!("another-app");
    let other_client = jobpipe::dev::dev_signer().sign(&other_client);
    assert_eq!(http.get(format!("{base}/jobs")).bearer_auth(&other_client).send().await.unwrap().status(), 401);
    match connect(&stack, &format!("token={other_client}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("a token for another app client connected: {:?}", other.map(|_| ())),
    }
    stack.stop().await;
}
