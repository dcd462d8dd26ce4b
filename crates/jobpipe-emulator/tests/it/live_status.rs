//! Live status through the local stack: pushes over the WebSocket API, token refusals, tenancy, gone
//! connections, `$disconnect`, crashed functions, and `@connections` as strict as API Gateway's while
//! `$connect` runs.

use std::time::Duration;

use futures_util::SinkExt;
use jobpipe_testkit::local_stack::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use jobpipe_emulator::faults::{CallHook, HookVerdict};
use std::sync::Arc;

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
    add_gone_subscriber(&stack, &job_id, "alice").await;
    let mut socket = connect(&stack, &format!("token={token}&jobId={job_id}")).await.unwrap();
    let mut last = None;
    while let Some(message) = next_json(&mut socket, Duration::from_secs(20)).await {
        if message["type"] == "job" && message["status"] == "completed" {
            last = Some(message);
            break;
        }
    }
    assert!(last.is_some(), "the live connection got every push despite the dead one");
    assert_eq!(gone_subscriber_items(&stack).await, 0, "GoneException removed the dead connection");
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

/// An API Gateway connection id as a path segment.
fn encoded(connection_id: &str) -> String {
    connection_id.replace('/', "%2F").replace('+', "%2B").replace('=', "%3D")
}

/// On AWS, `@connections` answers GoneException until `$connect` has returned. The local gateway must be
/// as strict, or the notifier's handling of that answer never runs locally. `$connect` is held (at its
/// write of the connection item) while the test calls `@connections` for the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_answer_gone_until_connect_has_returned() {
    let (connecting, mut connection_ids) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (release, released) = tokio::sync::watch::channel(false);
    let hook: CallHook = Arc::new(move |target, call| {
        let (connecting, mut released) = (connecting.clone(), released.clone());
        Box::pin(async move {
            if puts_connection_item(&target, &call, "-") && call["Item"]["owner"]["S"] == "held-at-connect" {
                let _ = connecting.send(call["Item"]["connectionId"]["S"].as_str().unwrap_or_default().to_string());
                let _ = tokio::time::timeout(Duration::from_secs(120), released.wait_for(|released| *released)).await;
            }
            HookVerdict::Forward
        })
    });
    let endpoints = engines_behind(hook).await;
    let stack = start_stack_with(|options| options.endpoints = Some(endpoints)).await;
    let url = format!("{}?token={}", stack.websocket_url(), stack.token("held-at-connect"));
    let opening = tokio::spawn(async move { tokio_tungstenite::connect_async(url).await.map(|(socket, _)| socket) });
    let connection_id = tokio::time::timeout(Duration::from_secs(120), connection_ids.recv())
        .await
        .expect("$connect registers the connection")
        .unwrap();

    let http = reqwest::Client::new();
    let connection_url = format!("{}/@connections/{}", stack.base_url(), encoded(&connection_id));
    let notifier = signed_as(&jobpipe_emulator::iam::access_key("NotifierFunction"));
    let as_notifier = |request: reqwest::RequestBuilder| request.header("authorization", &notifier);
    // The notifier's role may only POST; reading a connection is the operator's.
    let operator = signed_as(jobpipe_emulator::iam::ADMIN_ACCESS_KEY);
    let as_operator = |request: reqwest::RequestBuilder| request.header("authorization", &operator);
    let early = as_notifier(http.post(&connection_url)).body(r#"{"early":true}"#).send().await.unwrap();
    assert_eq!(early.status(), 410, "a push while $connect runs is refused");
    assert_eq!(early.headers()["x-amzn-errortype"], "GoneException");
    assert_eq!(as_operator(http.get(&connection_url)).send().await.unwrap().status(), 410, "GetConnection too");

    release.send_replace(true);
    let mut socket = opening.await.unwrap().expect("the connection opens once $connect returns");
    let pushed = as_notifier(http.post(&connection_url)).body(r#"{"late":true}"#).send().await.unwrap();
    assert_eq!(pushed.status(), 200);
    let info = json_of(as_operator(http.get(&connection_url))).await;
    assert!(info["connectedAt"].is_string(), "{info}");
    assert_eq!(next_json(&mut socket, Duration::from_secs(20)).await, Some(json!({"late": true})));
    stack.stop().await;
}

/// On AWS a global secondary index is eventually consistent: the notifier's `byJob` lookup can miss a
/// subscription made a moment ago, and the change goes unpushed, which is why clients confirm a
/// subscription with a read. The local stack's index lag makes that happen here (DynamoDB Local's indexes
/// are consistent at once): the subscription is answered with the job's state, the notifier finds no
/// subscriber for any of the job's changes, no push arrives, and a read shows the job completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_index_has_not_caught_up_with_gets_no_push() {
    let (tap, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stack = start_stack_with(|options| {
        options.index_lag = Some(Duration::from_secs(600));
        options.log_tap = Some(tap);
        options.extra_env.insert("RUST_LOG".into(), "info,notifier=debug".into());
    })
    .await;
    let token = stack.token("lagging");
    let mut socket = connect(&stack, &format!("token={token}")).await.unwrap();
    let job = post_job(&stack, &token, json!({"sleepMs": 1000})).await;
    let job_id = job["jobId"].as_str().unwrap().to_string();
    socket.send(Message::Text(json!({"action": "subscribe", "jobId": job_id}).to_string().into())).await.unwrap();
    let subscribed = next_json(&mut socket, Duration::from_secs(60)).await.expect("the subscription is answered");
    assert_eq!(
        (subscribed["type"].as_str(), subscribed["jobId"].as_str()),
        (Some("subscribed"), Some(job_id.as_str()))
    );

    let done = until_terminal(&stack, &token, &job_id).await;
    assert_eq!(done["status"], "completed");
    // The notifier handled the completion, and found nobody to push it to.
    let completion = async {
        while let Some(line) = lines.recv().await {
            if line.contains("pushing a job change") && line.contains(&job_id) && line.contains("completed") {
                return Some(line);
            }
        }
        None
    };
    let completion = tokio::time::timeout(Duration::from_secs(120), completion).await.ok().flatten();
    let completion = completion.expect("the notifier handled the job's completion");
    assert!(completion.contains(r#""subscribers":0"#), "{completion}");
    assert_eq!(next_json(&mut socket, Duration::from_secs(2)).await, None, "no change was pushed");
    stack.stop().await;
}
