//! The local stack (`DevStack`) for end-to-end tests, on the test process's moto: the functions built
//! once per process, fresh resource names per stack, and WebSocket and HTTP helpers a client would use.

use std::sync::Once;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use futures_util::StreamExt;
use jobpipe_emulator::dev::{DevOptions, DevStack};
use jobpipe_emulator::faults::{CallHook, FaultProxy};
use jobpipe_emulator::template::Template;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use jobpipe_emulator::aws::Endpoints;

use crate::{endpoints, repo_root};

/// Builds the function binaries once per test process.
pub fn build_functions() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let template = Template::load(&repo_root().join("template.yaml")).expect("reading template.yaml");
        let functions = template.functions().expect("the template's functions");
        jobpipe_emulator::setup::build(&repo_root(), &functions, false).expect("building the functions");
    });
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// The local stack on a free port, over this process's moto, with resources of its own.
pub async fn start_stack() -> DevStack {
    start_stack_with(|_| {}).await
}

/// `start_stack`, with its options edited first.
pub async fn start_stack_with(edit: impl FnOnce(&mut DevOptions)) -> DevStack {
    build_functions();
    let mut options = DevOptions::new(repo_root());
    options.port = 0;
    options.build = false;
    options.endpoints = Some(endpoints().clone());
    options.prefix = unique("t");
    edit(&mut options);
    DevStack::start(options).await.expect("starting the local stack")
}

/// The engines behind a proxy that shows every AWS call to `hook` first; answers the proxy as the
/// endpoints to give the local stack. It serves until the test ends.
pub async fn engines_behind(hook: CallHook) -> Endpoints {
    let proxy = FaultProxy::new(endpoints(), 0.0, 0.0);
    proxy.set_hook(hook);
    let (url, _serving) = proxy.serve().await.expect("serving the proxy");
    Endpoints::one(url)
}

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the stack's WebSocket with this query (`token=...&jobId=...`).
pub async fn connect(stack: &DevStack, query: &str) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    tokio_tungstenite::connect_async(format!("{}?{query}", stack.websocket_url())).await.map(|(socket, _)| socket)
}

/// The next JSON text frame, within `wait`.
pub async fn next_json(socket: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// A SigV4-shaped `Authorization` header naming this access key (`iam::access_key(function)` for a
/// function's role, `iam::ADMIN_ACCESS_KEY` for the operator): the local stack judges calls by the key,
/// without checking the signature.
pub fn signed_as(access_key: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/20261202/us-east-1/execute-api/aws4_request, \
         SignedHeaders=host, Signature=0"
    )
}

/// Sends the request and reads its JSON answer.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.expect("the request is answered").json().await.expect("the answer is JSON")
}

/// `POST /jobs` of an echo job with this input; it must be accepted.
pub async fn post_job(stack: &DevStack, token: &str, input: Value) -> Value {
    let reply = reqwest::Client::new()
        .post(format!("{}/jobs", stack.base_url()))
        .bearer_auth(token)
        .json(&json!({"kind": "echo", "input": input}))
        .send()
        .await
        .expect("POST /jobs is answered");
    assert_eq!(reply.status(), 202);
    reply.json().await.expect("the answer is JSON")
}

/// Polls `GET /jobs/{id}` until the job is terminal (for five minutes at most: far longer than any job
/// of the tests takes on a slow machine, so only a stuck job reaches it).
pub async fn until_terminal(stack: &DevStack, token: &str, job_id: &str) -> Value {
    let http = reqwest::Client::new();
    for _ in 0..1500 {
        let job = json_of(http.get(format!("{}/jobs/{job_id}", stack.base_url())).bearer_auth(token)).await;
        if matches!(job["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("job {job_id} did not finish");
}

/// The connection id of `add_gone_subscriber`'s subscriber.
pub const GONE_CONNECTION: &str = "ghost";

/// Subscribes a connection whose socket no longer exists (its `$disconnect` never ran) to `job_id`, as
/// `owner`, written straight to the connections table.
pub async fn add_gone_subscriber(stack: &DevStack, job_id: &str, owner: &str) {
    let dynamodb = crate::clients().dynamodb;
    for key in ["-", job_id] {
        dynamodb
            .put_item()
            .table_name(&stack.created.tables["ConnectionsTable"])
            .item("connectionId", AttributeValue::S(GONE_CONNECTION.into()))
            .item("jobId", AttributeValue::S(key.into()))
            .item("owner", AttributeValue::S(owner.into()))
            .send()
            .await
            .expect("writing the gone subscriber");
    }
}

/// How many connections-table items the gone subscriber still has.
pub async fn gone_subscriber_items(stack: &DevStack) -> i32 {
    crate::clients()
        .dynamodb
        .query()
        .table_name(&stack.created.tables["ConnectionsTable"])
        .key_condition_expression("connectionId = :c")
        .expression_attribute_values(":c", AttributeValue::S(GONE_CONNECTION.into()))
        .send()
        .await
        .expect("querying the connections table")
        .count()
}

/// Whether an AWS call a proxy hook sees (`target`, JSON `call`) is a DynamoDB PutItem of a
/// connections-table item whose `jobId` attribute is `job_id` (`"-"` is the connection's own item).
pub fn puts_connection_item(target: &str, call: &Value, job_id: &str) -> bool {
    target.ends_with(".PutItem")
        && call["TableName"].as_str().is_some_and(|table| table.contains("Connections"))
        && call["Item"]["jobId"]["S"] == job_id
}

/// Runs a headless-Chromium script of `tests/browser` (playwright-core) with these arguments, then
/// `tests/artifacts` (where it leaves its screenshots); it must succeed, or the test fails with all the
/// script printed.
pub async fn browser_script(script: &str, args: &[&str]) {
    let browser_tests = repo_root().join("tests/browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser tests need playwright-core and Debian's chromium: run `cargo xtask setup`"
    );
    let output = tokio::process::Command::new("node")
        .arg(browser_tests.join(script))
        .args(args)
        .arg(repo_root().join("tests/artifacts"))
        .output()
        .await
        .expect("running node");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "browser test {script} failed:\n{stdout}\n{stderr}");
}
