//! Webhooks end to end on the local stack: deliveries verified by the Standard Webhooks specification's
//! own Python library (`infra/webhook_receiver.py`), retried on 5xx with one `webhook-id`, dead-lettered on
//! 4xx and redirects (not followed), redelivered by the CLI, signed by two secrets while a rotation
//! overlaps, and shown on the job; callback URLs webhooks may not call are refused at submission.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use futures_util::SinkExt;
use jobpipe::ops::{Start, Target, TargetOptions};
use jobpipe_core::JobView;
use jobpipe_core::webhooks::DeliveryState;
use jobpipe_core::webhooks::store::Endpoint;
use jobpipe_testkit::local_stack::*;
use jobpipe_testkit::repo_root;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

/// The receiver process; killed when dropped.
struct Receiver {
    _process: tokio::process::Child,
    url: String,
    http: reqwest::Client,
}

impl Receiver {
    async fn start() -> Receiver {
        let python = std::env::var("JOBPIPE_PYTHON")
            .unwrap_or_else(|_| repo_root().join(".venv/bin/python").display().to_string());
        let mut process = tokio::process::Command::new(python)
            .arg(repo_root().join("infra/webhook_receiver.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting infra/webhook_receiver.py (run `cargo xtask setup`)");
        let stdout = process.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = lines.next_line().await.unwrap().expect("the receiver printed nothing");
        let port = ready.strip_prefix("READY ").expect("READY <port>");
        Receiver { _process: process, url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
    }

    async fn put(&self, path: &str, body: Value) {
        let status = self.http.put(format!("{}{path}", self.url)).json(&body).send().await.unwrap().status();
        assert!(status.is_success(), "{path}: {status}");
    }

    async fn log(&self) -> Vec<Value> {
        self.http.get(format!("{}/_log", self.url)).send().await.unwrap().json().await.unwrap()
    }

    /// Polls `check` until it answers `Some`, or until the pipeline stopped moving: no new delivery reached
    /// this receiver in 150 polls in a row (a slower machine makes the wait longer, not red).
    async fn eventually<T>(&self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let (mut heard, mut still) = (usize::MAX, 0);
        loop {
            if let Some(value) = check().await {
                return value;
            }
            let now = self.log().await.len();
            if now != heard {
                (heard, still) = (now, 0);
            } else {
                still += 1;
                assert!(still <= 150, "never happened, and deliveries stopped coming: {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn at(&self, path: &str) -> Vec<Value> {
        self.log().await.into_iter().filter(|entry| entry["path"] == path).collect()
    }
}

/// As `jobpipe submit --callback` does.
async fn submit(target: &Target, input: Value, callback: &str) -> JobView {
    target.submit_with("echo", input, &Start::Now, Some(callback)).await.unwrap()
}

fn deliveries_of(job: &JobView) -> BTreeMap<String, (DeliveryState, u32, Option<u16>)> {
    job.webhooks.iter().map(|d| (d.target.clone(), (d.state, d.attempts, d.last_status))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_dead_lettered_redelivered_and_rotated() {
    let receiver = Receiver::start().await;
    // Two retries a second apart: three attempts in all.
    let stack = start_stack_with(|options| {
        options.extra_env.insert("WEBHOOK_RETRY_DELAYS".into(), "1,1".into());
    })
    .await;
    let tenant = unique("hooks-");
    let options = TargetOptions { api: stack.base_url(), stack: None, token: None, user: tenant.clone() };
    let target = Target::resolve(&options).await.unwrap();

    // URLs webhooks may not call are refused before anything is stored.
    for bad in [
        "https://10.0.0.1/hook",
        "http://example.com/hook",
        "https://169.254.169.254/latest/meta-data",
        "ftp://example.com/x",
    ] {
        let error = target
            .call::<Value>(Method::POST, "/jobs", Some(json!({"kind": "echo", "callback": {"url": bad}})))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("422") && error.contains("invalid_webhook_url"), "{bad}: {error}");
    }
    assert_eq!(target.list(None, 10).await.unwrap().jobs.len(), 0, "a refused submission stores nothing");

    let endpoint: Endpoint = target
        .call(
            Method::POST,
            "/webhooks/endpoints",
            Some(json!({"url": format!("{}/endpoint", receiver.url), "events": ["job.completed", "job.failed"]})),
        )
        .await
        .unwrap();
    let listed: Value = target.call(Method::GET, "/webhooks/endpoints", None).await.unwrap();
    assert_eq!(listed["endpoints"][0]["endpointId"], endpoint.endpoint_id.as_str());
    let secret: Value = target.call(Method::GET, "/webhooks/secret", None).await.unwrap();
    let first_secret = secret["secret"].as_str().unwrap().to_string();
    assert!(first_secret.starts_with("whsec_"), "{secret}");
    receiver.put("/_secrets", json!([first_secret])).await;
    receiver.put("/_behave", json!({"/flaky": [503, 503], "/gone": [410], "/moved": [302]})).await;

    let flaky = submit(&target, json!({"message": "a"}), &format!("{}/flaky", receiver.url)).await;
    let gone = submit(&target, json!({"failPermanently": true}), &format!("{}/gone", receiver.url)).await;
    let moved = submit(&target, json!({"message": "c"}), &format!("{}/moved", receiver.url)).await;
    assert_eq!(flaky.callback.as_ref().unwrap().url, format!("{}/flaky", receiver.url));

    // Every job's deliveries settle: the flaky one on its third attempt, the others dead-lettered.
    let settled = receiver
        .eventually("every delivery settled", async || {
            let mut jobs = Vec::new();
            for job in [&flaky, &gone, &moved] {
                let job = target.status(job.job_id.as_str()).await.ok()?;
                let states = deliveries_of(&job);
                let done = states.len() == 2 && states.values().all(|(state, ..)| *state != DeliveryState::Retrying);
                if !done {
                    return None;
                }
                jobs.push(job);
            }
            Some(jobs)
        })
        .await;
    let ep = endpoint.endpoint_id.clone();
    assert_eq!(deliveries_of(&settled[0])["callback"], (DeliveryState::Delivered, 3, Some(200)));
    assert_eq!(deliveries_of(&settled[1])["callback"], (DeliveryState::Failed, 1, Some(410)));
    assert_eq!(deliveries_of(&settled[2])["callback"], (DeliveryState::Failed, 1, Some(302)));
    for job in &settled {
        assert_eq!(deliveries_of(job)[&ep], (DeliveryState::Delivered, 1, Some(200)), "{:?}", job.job_id);
    }

    let log = receiver.log().await;
    for entry in &log {
        assert_eq!(entry["verifiedBy"], json!([0]), "the specification's library verifies every delivery: {entry}");
        assert_eq!(entry["signatures"], 1);
    }
    let flaky_attempts = receiver.at("/flaky").await;
    assert_eq!(flaky_attempts.iter().map(|e| e["answered"].as_u64().unwrap()).collect::<Vec<_>>(), [503, 503, 200]);
    let webhook_id = flaky_attempts[0]["webhookId"].clone();
    assert!(flaky_attempts.iter().all(|e| e["webhookId"] == webhook_id), "one webhook-id for every attempt");
    let body = &flaky_attempts[0]["body"];
    assert_eq!(
        (body["type"].as_str(), body["data"]["jobId"].as_str()),
        (Some("job.completed"), Some(flaky.job_id.as_str()))
    );
    assert_eq!(body["data"]["result"], json!({"message": "a"}));
    let endpoint_bodies = receiver.at("/endpoint").await;
    assert_eq!(endpoint_bodies.len(), 3);
    let failed_event = endpoint_bodies.iter().find(|e| e["body"]["data"]["jobId"] == gone.job_id.as_str()).unwrap();
    assert_eq!(failed_event["body"]["type"], "job.failed");
    assert!(
        endpoint_bodies.iter().any(|e| e["webhookId"] == webhook_id),
        "the endpoint's delivery of an event has its id"
    );
    assert!(receiver.at("/redirected").await.is_empty(), "redirects are not followed");

    // The refused deliveries are dead letters; once the receiver is fixed, the CLI redelivers one.
    let letters = target.webhook_dead_letters(Some(&tenant)).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let gone_letter = letters.iter().find(|l| l.delivery.url.ends_with("/gone")).unwrap();
    assert_eq!((gone_letter.last_status, gone_letter.delivery.job_id.as_ref()), (Some(410), Some(&gone.job_id)));
    let redelivered = target.webhook_redeliver(&[gone_letter.id()], None).await.unwrap();
    assert_eq!(redelivered.len(), 1);
    receiver
        .eventually("the redelivered delivery arrived and is recorded", async || {
            let job = target.status(gone.job_id.as_str()).await.ok()?;
            (deliveries_of(&job)["callback"].0 == DeliveryState::Delivered).then_some(())
        })
        .await;
    let gone_attempts = receiver.at("/gone").await;
    assert_eq!(gone_attempts.len(), 2);
    assert_eq!(
        (gone_attempts[1]["answered"].as_u64(), &gone_attempts[1]["webhookId"]),
        (Some(200), &gone_attempts[0]["webhookId"])
    );
    let left = target.webhook_dead_letters(Some(&tenant)).await.unwrap();
    assert_eq!(left.iter().map(|l| l.delivery.url.clone()).collect::<Vec<_>>(), [format!("{}/moved", receiver.url)]);
    let error = target.webhook_redeliver(&["msg_nope:callback".into()], None).await.unwrap_err().to_string();
    assert!(error.contains("no dead letter"), "{error}");

    // While a rotation overlaps, a delivery carries both signatures; each secret alone verifies it.
    let rotated: Value = target.call(Method::POST, "/webhooks/secret/rotate", None).await.unwrap();
    assert_eq!(rotated["previousSecret"], first_secret.as_str());
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, first_secret);
    receiver.put("/_secrets", json!([first_secret, new_secret])).await;
    let after = submit(&target, json!({}), &format!("{}/rotated", receiver.url)).await;
    let entry = receiver
        .eventually("the delivery after the rotation", async || receiver.at("/rotated").await.into_iter().next())
        .await;
    assert_eq!((entry["signatures"].as_u64(), &entry["verifiedBy"]), (Some(2), &json!([0, 1])), "{entry}");
    assert_eq!(entry["body"]["data"]["jobId"], after.job_id.as_str());

    // An endpoint removed is gone; removing it again is a 404.
    let path = format!("/webhooks/endpoints/{ep}");
    target.call::<Value>(Method::DELETE, &path, None).await.unwrap();
    let error = target.call::<Value>(Method::DELETE, &path, None).await.unwrap_err().to_string();
    assert!(error.contains("404"), "{error}");
    stack.stop().await;
}

/// A batch completes once: when its last job ends (here, a cancel), the batch's subscribers get one push
/// saying it is done, endpoints subscribed to `batch.completed` get one delivery with its counts, and
/// `GET /batches/{id}` shows the same completion time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_completes_once_pushed_to_its_subscribers_and_delivered_as_batch_completed() {
    let receiver = Receiver::start().await;
    let stack = start_stack().await;
    let tenant = unique("batch-hooks-");
    let options = TargetOptions { api: stack.base_url(), stack: None, token: None, user: tenant.clone() };
    let target = Target::resolve(&options).await.unwrap();
    let url = |path: &str| format!("{}{path}", receiver.url);
    for (path, events) in [("/batches", json!(["batch.completed"])), ("/jobs", json!(["job.completed"]))] {
        let body = json!({"url": url(path), "events": events});
        target.call::<Value>(Method::POST, "/webhooks/endpoints", Some(body)).await.unwrap();
    }
    let secret: Value = target.call(Method::GET, "/webhooks/secret", None).await.unwrap();
    receiver.put("/_secrets", json!([secret["secret"]])).await;

    let batch = target
        .submit_batch(json!([
            {"kind": "echo", "input": {"message": "one"}},
            {"kind": "echo", "input": {"failPermanently": true}},
            {"kind": "echo", "input": {}, "delaySeconds": 3600},
        ]))
        .await
        .unwrap();
    let batch_id = batch["batchId"].as_str().unwrap().to_string();

    // Another tenant cannot follow it; its owner can, from where it stands.
    let stranger = Target::resolve(&TargetOptions { user: unique("stranger-"), ..options.clone() }).await.unwrap();
    let mut refused = connect(&stack, &format!("token={}", stranger.token)).await.unwrap();
    refused.send(ws_text(json!({"action": "subscribe", "batchId": batch_id}))).await.unwrap();
    let answer = next_json(&mut refused, Duration::from_secs(30)).await.unwrap();
    assert_eq!((answer["type"].as_str(), answer["error"]["code"].as_str()), (Some("error"), Some("not_found")));
    let mut socket = connect(&stack, &format!("token={}", target.token)).await.unwrap();
    socket.send(ws_text(json!({"action": "subscribe", "batchId": batch_id}))).await.unwrap();
    // A push may come before the reply (a job ended meanwhile).
    let mut pushes = Vec::new();
    let subscribed = loop {
        let frame = next_json(&mut socket, Duration::from_secs(30)).await.expect("the subscription is answered");
        match frame["type"].as_str() {
            Some("subscribed") => break frame,
            _ => pushes.push(frame),
        }
    };
    assert_eq!((subscribed["batch"]["total"].as_u64(), subscribed["batch"]["done"].as_bool()), (Some(3), Some(false)));

    // Two jobs end on their own; the third waits for its time until the batch is cancelled.
    let ran = receiver
        .eventually("the batch's first two jobs ended", async || {
            let batch = target.batch_status(&batch_id).await.ok()?;
            (batch["counts"]["completed"] == 1 && batch["counts"]["failed"] == 1).then_some(batch)
        })
        .await;
    assert_eq!((ran["done"].as_bool(), &ran["completedAt"]), (Some(false), &Value::Null));
    assert!(receiver.at("/batches").await.is_empty(), "not complete while a job waits");
    target.batch_cancel(&batch_id).await.unwrap();

    let delivered = receiver
        .eventually("batch.completed delivered", async || receiver.at("/batches").await.into_iter().next())
        .await;
    assert_eq!(delivered["verifiedBy"], json!([0]), "{delivered}");
    let body = &delivered["body"];
    assert_eq!(body["type"], "batch.completed");
    assert_eq!(body["data"]["batchId"], batch_id.as_str());
    assert_eq!(
        (&body["data"]["total"], &body["data"]["ended"], &body["data"]["counts"]),
        (&json!(3), &json!(3), &json!({"completed": 1, "failed": 1, "cancelled": 1}))
    );
    let status = target.batch_status(&batch_id).await.unwrap();
    assert_eq!((status["done"].as_bool(), &status["completedAt"]), (Some(true), &body["data"]["completedAt"]));
    assert_eq!(body["timestamp"], body["data"]["completedAt"]);

    // The pushes: progress as jobs end, and one saying the batch is done. The notifier reads the stream
    // apart from the sender, so the push may come after the webhook: read until it does (the minute per
    // frame only keeps a push that never comes from hanging the run), then whatever follows at once.
    while !pushes.iter().any(|push| push["done"] == true) {
        pushes.push(next_json(&mut socket, Duration::from_secs(60)).await.expect("the batch's done push"));
    }
    while let Some(push) = next_json(&mut socket, Duration::from_secs(1)).await {
        pushes.push(push);
    }
    let done: Vec<&Value> = pushes.iter().filter(|push| push["done"] == true).collect();
    assert_eq!(done.len(), 1, "one push says the batch is done: {pushes:?}");
    assert!(pushes.iter().all(|push| push["type"] == "batch" && push["batchId"] == batch_id.as_str()), "{pushes:?}");
    assert_eq!((&done[0]["counts"], &done[0]["completedAt"]), (&body["data"]["counts"], &body["data"]["completedAt"]));

    // Only one completion is ever told: the job endings were delivered (one job completed) and nothing
    // more reaches /batches once deliveries stop.
    receiver.eventually("the completed job's delivery", async || receiver.at("/jobs").await.into_iter().next()).await;
    assert_eq!(receiver.at("/batches").await.len(), 1, "batch.completed is delivered once");
    stack.stop().await;
}

fn ws_text(value: Value) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Text(value.to_string().into())
}
