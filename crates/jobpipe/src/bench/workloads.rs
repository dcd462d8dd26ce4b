//! What each function is given to do while it is measured: the fixture events of `events/`, made many
//! (`POST /jobs` requests, SQS batches of the jobs they made, stream batches, subscribe frames).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use jobpipe_core::store::JobStore;
use jobpipe_emulator::sources::SqsMapping;
use serde_json::{Value, json};

use super::Environment;

/// A workload run: how many requests or records it handled.
pub type Workload<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<usize>> + Send + 'a>>;

/// The owner every fixture event speaks for (`events/*.json`).
const FIXTURE_USER: &str = "fixture-user";

/// The floor's workload: events it answers with themselves.
pub fn echo_events(env: &Environment, n: usize) -> Workload<'_> {
    Box::pin(async move {
        for i in 0..n {
            env.invoke(&json!({"n": i})).await?;
        }
        Ok(n)
    })
}

fn fixture(name: &str) -> anyhow::Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events").join(name);
    Ok(serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?)?)
}

/// `POST /jobs` events (the fixture, its JWT claims as API Gateway's authorizer passes them).
pub fn submit_event(n: usize) -> anyhow::Result<Value> {
    let mut event = fixture("api-post-job.json")?;
    event["body"] = json!(json!({"kind": "echo", "input": {"n": n}}).to_string());
    event["isBase64Encoded"] = json!(false);
    event["requestContext"]["requestId"] = json!(uuid::Uuid::new_v4().to_string());
    if let Some(headers) = event["headers"].as_object_mut() {
        headers.remove("idempotency-key");
    }
    Ok(event)
}

/// The job id in a `POST /jobs` answer, which must be a 202.
pub fn accepted_job_id(answer: &Value) -> anyhow::Result<String> {
    if answer["statusCode"] != 202 {
        bail!("POST /jobs answered {answer}");
    }
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("{}"))?;
    Ok(body["jobId"].as_str().context("no jobId in the answer")?.to_string())
}

/// Submits `n` jobs; every answer must be a 202.
pub async fn submit_jobs(env: &Environment, n: usize) -> anyhow::Result<usize> {
    for i in 0..n {
        accepted_job_id(&env.invoke(&submit_event(i)?).await?)?;
    }
    Ok(n)
}

/// Invokes the function with one batch of the queue and settles it as the mapping does; every record must
/// be acknowledged.
pub async fn process_batch(
    env: &Environment,
    queue: &SqsMapping,
    messages: &[aws_sdk_sqs::types::Message],
) -> anyhow::Result<usize> {
    let answer = env.invoke(&queue.event(messages)).await?;
    if answer["batchItemFailures"].as_array().is_some_and(|failures| !failures.is_empty()) {
        bail!("the batch reported failures: {answer}");
    }
    Ok(queue.settle(messages, Some(&answer)).await)
}

/// Handles the queue's messages in batches of up to 10 until `n` records were handled.
pub async fn process_queue(env: &Environment, queue: &SqsMapping, n: usize) -> anyhow::Result<usize> {
    let mut handled = 0;
    let mut idle = 0;
    while handled < n {
        let messages = queue.receive(10, Duration::ZERO).await?;
        if messages.is_empty() {
            idle += 1;
            if idle > 20 {
                bail!("the queue ran dry after {handled} of {n} records");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        handled += process_batch(env, queue, &messages).await?;
    }
    Ok(handled)
}

/// Stream batches of 10 job changes (the fixture's record, repeated), with no subscriber to push to.
pub async fn notify(env: &Environment, n: usize) -> anyhow::Result<usize> {
    let fixture = fixture("dynamodb-job-changes.json")?;
    let record = fixture["Records"][0].clone();
    let mut handled = 0;
    while handled < n {
        let batch = (n - handled).min(10);
        let event = json!({"Records": vec![record.clone(); batch]});
        let answer = env.invoke(&event).await?;
        if answer["batchItemFailures"].as_array().is_some_and(|f| !f.is_empty()) {
            bail!("the notifier reported failures: {answer}");
        }
        handled += batch;
    }
    Ok(handled)
}

/// `$connect` with the fixture's token, then `n` subscribe frames for one of the fixture user's jobs.
pub async fn subscribe(env: &Environment, job_id: &str, n: usize) -> anyhow::Result<usize> {
    let connect = fixture("ws-connect.json")?;
    let answer = env.invoke(&connect).await?;
    if answer["statusCode"] != 200 {
        bail!("$connect answered {answer}");
    }
    let mut frame = fixture("ws-subscribe.json")?;
    frame["body"] = json!(json!({"action": "subscribe", "jobId": job_id}).to_string());
    for _ in 0..n {
        let answer = env.invoke(&frame).await?;
        if answer["statusCode"] != 200 {
            bail!("subscribe answered {answer}");
        }
    }
    Ok(n)
}

/// A job of the fixture user (api-ingest's workload made them) to subscribe to.
pub async fn some_job_of_the_fixture_user(jobs: &JobStore) -> anyhow::Result<String> {
    let (page, _) = jobs.list_by_owner(FIXTURE_USER, None, 1, None).await?;
    let job = page.first().context("no job of the fixture user to subscribe to (api-ingest runs first)")?;
    Ok(job.job_id.as_str().to_string())
}
