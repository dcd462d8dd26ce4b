//! The Lambda side of the local stack: every real binary runs its fixture through `invoke` and under
//! `cargo lambda watch`, and an invocation's deadline counts from when an environment takes it.

use std::time::Duration;

use jobpipe_testkit::local_stack::*;
use serde_json::{Value, json};

use jobpipe_emulator::runtime::FunctionProcess;
use std::path::PathBuf;

use jobpipe_emulator::dev::DevOptions;
use jobpipe_emulator::invoke::{InvokeOptions, invoke_once};

use super::root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_runs_each_function_against_its_fixture() {
    build_functions();
    let fixture = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(root().join("events").join(name)).unwrap()).unwrap()
    };
    let invoke = async |function: &str, event: &str| {
        let options =
            InvokeOptions { build: false, endpoints: Some(jobpipe_testkit::endpoints().clone()), prefix: unique("i") };
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
async fn each_real_binary_answers_its_fixture_under_cargo_lambda_watch() {
    let bin = root().join(".venv/bin");
    assert!(bin.join("cargo-lambda").exists(), "cargo-lambda is installed by `cargo xtask setup`");
    build_functions();
    // The functions' environment, as the template gives it, resolved to fresh resources in moto.
    let template = jobpipe_emulator::template::Template::load(&root().join("template.yaml")).unwrap();
    let local = jobpipe_emulator::aws::LocalAws::start(
        &root(),
        &template,
        Some(jobpipe_testkit::endpoints().clone()),
        &unique("w"),
    )
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
    // What watch and the functions it runs print, to show when an invocation goes unanswered.
    let log_path = std::env::temp_dir().join(format!("{}.log", unique("jobpipe-watch-")));
    let log = std::fs::File::create(&log_path).unwrap();
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
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting cargo lambda watch");
    let watch_log = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };

    // `build_functions` built what watch runs (`cargo run --bin <function>`), so an invocation waits only
    // for a process to start. The bound on each one only keeps a function that never takes its invocation
    // (a build that failed inside watch, say) from hanging the run.
    let invoke = async |function: &str, fixture: &str| -> Value {
        let mut refusals = 0;
        loop {
            let mut command = tokio::process::Command::new(env!("CARGO"));
            command
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
                .kill_on_drop(true);
            let output = match tokio::time::timeout(Duration::from_secs(600), command.output()).await {
                Ok(output) => output.unwrap(),
                Err(_) => panic!("{function} took no invocation in 10 minutes; watch printed:\n{}", watch_log()),
            };
            if output.status.success() {
                return serde_json::from_slice(&output.stdout).expect("the response is JSON");
            }
            let error = String::from_utf8_lossy(&output.stderr);
            // Refused only until watch listens.
            refusals += 1;
            if !error.contains("Connection refused") || refusals == 120 {
                panic!("invoking {function} failed: {error}\nwatch printed:\n{}", watch_log());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let posted = invoke("api-ingest", "api-post-job.json").await;
    assert_eq!(posted["statusCode"], 202, "{posted}");
    let batch = invoke("queue-processor", "sqs-job-batch.json").await;
    assert_eq!(batch["batchItemFailures"].as_array().map(Vec::len), Some(2), "{batch}");
    let pushed = invoke("notifier", "dynamodb-job-changes.json").await;
    assert_eq!(pushed, json!({"batchItemFailures": []}));
    let connected = invoke("websocket-connect", "ws-connect.json").await;
    assert_eq!(connected["statusCode"], 200, "{connected}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains("Compiling"), "watch runs what the tests built, without building again:\n{log}");

    let _ = watch.kill().await;
    let _ = std::fs::remove_file(env_file);
    let _ = std::fs::remove_file(log_path);
}

/// A Runtime API client in Python standing in for a function. Per invocation it sleeps `sleepMs`, holds
/// `allocateMb` of memory, and answers with the time its deadline left it when it took the invocation,
/// padded to `answerBytes` when asked.
const RUNTIME_CLIENT: &str = r#"
import json, os, time, urllib.error, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
held = []
while True:
    with urllib.request.urlopen(api + "next") as r:
        request_id = r.headers["lambda-runtime-aws-request-id"]
        left = int(r.headers["lambda-runtime-deadline-ms"]) - int(time.time() * 1000)
        event = json.loads(r.read())
    held.append(bytearray(event.get("allocateMb", 0) * 1024 * 1024))
    time.sleep(event.get("sleepMs", 0) / 1000)
    answer = {"leftAtStart": left, "padding": "x" * event.get("answerBytes", 0)}
    body = json.dumps(answer).encode()
    try:
        urllib.request.urlopen(urllib.request.Request(api + request_id + "/response", data=body, method="POST")).read()
    except urllib.error.HTTPError as refused:
        print("response refused:", refused.code, flush=True)
"#;

/// Writes `RUNTIME_CLIENT` as an executable `bootstrap` in a fresh directory; answers both.
fn runtime_client() -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let python = std::env::var("JOBPIPE_PYTHON").map(PathBuf::from).unwrap_or_else(|_| root().join(".venv/bin/python"));
    let dir = std::env::temp_dir().join(unique("jobpipe-runtime-"));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("bootstrap");
    std::fs::write(&binary, format!("#!{}\n{RUNTIME_CLIENT}", python.display())).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, binary)
}

/// Waiting for an execution environment never counts against the function's timeout: an invocation's
/// deadline is set when an environment takes it, as Lambda's is, even when invocations queue behind each
/// other. (The local runtime once set it when the invocation was queued, so queued batches of the fault
/// run started with their time nearly gone and failed as `deadline_exceeded`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_gets_its_whole_timeout_from_when_an_environment_takes_it() {
    let (dir, binary) = runtime_client();
    let timeout = Duration::from_secs(3);
    let work_ms = 2_000;
    let process =
        jobpipe_emulator::runtime::FunctionProcess { timeout, ..FunctionProcess::new("DeadlineReporter", binary) };
    let (log, _lines) = tokio::sync::mpsc::unbounded_channel();
    let function = jobpipe_emulator::runtime::Function::start(process, log).await.unwrap();
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

/// Lambda's limits hold locally: an event over 6 MB is refused before the function sees it, a response
/// over 6 MB fails its invocation, and a process that uses more memory than its `MemorySize` is killed
/// and replaced by a new execution environment. After each, the function serves the next invocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambdas_payload_and_memory_limits_hold() {
    use jobpipe_emulator::runtime::{InvokeError, MAX_PAYLOAD_BYTES};
    let (dir, binary) = runtime_client();
    let process = FunctionProcess { memory_mb: 64, ..FunctionProcess::new("Limited", binary) };
    let (log, _lines) = tokio::sync::mpsc::unbounded_channel();
    let function = jobpipe_emulator::runtime::Function::start(process, log).await.unwrap();
    let served = || async {
        function.invoke_json(&json!({})).await.expect("a small invocation is served")["leftAtStart"].is_i64()
    };

    let oversized = json!({"padding": "x".repeat(MAX_PAYLOAD_BYTES)});
    let refused = function.invoke_json(&oversized).await;
    assert!(matches!(refused, Err(InvokeError::RequestTooLarge { .. })), "{refused:?}");
    assert!(served().await);

    let answer = function.invoke_json(&json!({"answerBytes": MAX_PAYLOAD_BYTES})).await;
    assert!(matches!(answer, Err(InvokeError::ResponseTooLarge { .. })), "{answer:?}");
    assert!(served().await);

    let restarts = function.restarts.load(std::sync::atomic::Ordering::SeqCst);
    let greedy = function.invoke_json(&json!({"allocateMb": 128, "sleepMs": 60_000})).await;
    assert!(matches!(greedy, Err(InvokeError::OutOfMemory { limit_mb: 64, .. })), "{greedy:?}");
    assert!(served().await, "a new execution environment serves the next invocation");
    assert_eq!(function.restarts.load(std::sync::atomic::Ordering::SeqCst), restarts + 1);
    function.stop_and_wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}
