//! What the functions tell operators through the local stack: every metric the dashboard plots, and logs
//! that give reasons but never credentials.

use std::time::Duration;

use jobpipe_testkit::local_stack::*;
use serde_json::{Value, json};

use super::root;

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

/// A job the reconciler fails for its age is counted like any other failure: `JobsFailed` with its
/// `ErrorCode` (`expired`), so the dashboard and alarms see it. (Jobs failed by the dispatch sweep were
/// never counted.) Here every job message is swallowed, so the job can only end by expiring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_expires_is_counted_as_failed() {
    use jobpipe_emulator::faults::{CallHook, HookVerdict};
    let hook: CallHook = std::sync::Arc::new(|target, _| {
        Box::pin(
            async move { if target == "AmazonSQS.SendMessage" { HookVerdict::Swallow } else { HookVerdict::Forward } },
        )
    });
    let endpoints = engines_behind(hook).await;
    let (tap, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stack = start_stack_with(|options| {
        options.endpoints = Some(endpoints);
        options.log_tap = Some(tap);
        options.schedule_override = Some(Duration::from_secs(1));
        for (name, value) in [("DISPATCH_GRACE_SECONDS", "1"), ("JOB_MAX_AGE_SECONDS", "1")] {
            options.extra_env.insert(name.into(), value.into());
        }
    })
    .await;
    let token = stack.token("expiring");
    let job = post_job(&stack, &token, json!({"n": 1})).await;
    let job_id = job["jobId"].as_str().unwrap().to_string();
    let ended = until_terminal(&stack, &token, &job_id).await;
    assert_eq!((ended["status"].as_str(), ended["error"]["code"].as_str()), (Some("failed"), Some("expired")));
    let counted = async {
        while let Some(line) = lines.recv().await {
            let Some(document) = line.split_once("] ").and_then(|(_, json)| serde_json::from_str::<Value>(json).ok())
            else {
                continue;
            };
            if document["JobsFailed"] == 1.0 && document["ErrorCode"] == "expired" {
                return true;
            }
        }
        false
    };
    let counted = tokio::time::timeout(Duration::from_secs(120), counted).await.unwrap_or(false);
    assert!(counted, "no JobsFailed data point with ErrorCode expired was logged");
    stack.stop().await;
}

/// The functions log why a request was refused, but never a credential: no bearer token (accepted or
/// refused, over HTTP or in the WebSocket query), no presigned result URL, no WiFi password from a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_give_reasons_but_never_tokens_presigned_urls_or_secrets() {
    let (tap, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stack = start_stack_with(|options| options.log_tap = Some(tap)).await;
    let http = reqwest::Client::new();
    let base = stack.base_url();
    let token = stack.token("alice");
    let mut claims = jobpipe_emulator::dev_key::dev_claims("alice");
    claims["exp"] = json!(jobpipe_testkit::now_secs() - 600);
    let expired = jobpipe_emulator::dev_key::dev_signer().sign(&claims);
    // Alice's token with another name in it: the signature no longer matches.
    let [header, _, signature] = <[&str; 3]>::try_from(token.split('.').collect::<Vec<_>>()).unwrap();
    let mallory = jobpipe_emulator::dev_key::dev_token("mallory");
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
