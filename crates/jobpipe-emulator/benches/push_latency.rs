//! Prints how long a job's completion takes to reach a WebSocket client: from the completion write
//! (`completedAt` in the job item) to the push arriving, through the whole local stack (DynamoDB stream
//! -> notifier -> `@connections` -> socket). A benchmark prints figures; it asserts nothing about time.
//!
//! `cargo bench -p jobpipe-emulator --bench push_latency [-- JOBS]` (default 50 jobs).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jobpipe_emulator::dev::{DevOptions, DevStack};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(50);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize()?;
    let mut options = DevOptions::new(root);
    options.port = 0;
    let stack = DevStack::start(options).await?;
    let token = stack.token("bench");
    let http = reqwest::Client::new();
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{}?token={token}", stack.websocket_url())).await?;

    let mut latencies = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let job: Value = http
            .post(format!("{}/jobs", stack.base_url()))
            .bearer_auth(&token)
            .json(&json!({"kind": "echo", "input": {"sleepMs": 20}}))
            .send()
            .await?
            .json()
            .await?;
        let job_id = job["jobId"].as_str().unwrap_or_default().to_string();
        socket.send(Message::Text(json!({"action": "subscribe", "jobId": job_id}).to_string().into())).await?;
        let arrived = loop {
            let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(Duration::from_secs(30), socket.next()).await
            else {
                anyhow::bail!("no completion push for {job_id} within 30 s");
            };
            let message: Value = serde_json::from_str(&text)?;
            // The completion is pushed, or, when the job finished before the subscription was written,
            // the `subscribed` answer already carries it.
            let job = if message["type"] == "subscribed" { &message["job"] } else { &message };
            if job["jobId"] == job_id.as_str() && job["status"] == "completed" {
                break now_ms();
            }
        };
        let view: Value =
            http.get(format!("{}/jobs/{job_id}", stack.base_url())).bearer_auth(&token).send().await?.json().await?;
        let completed_at = time::OffsetDateTime::parse(
            view["completedAt"].as_str().unwrap_or_default(),
            &time::format_description::well_known::Rfc3339,
        )?;
        let completed_ms = (completed_at.unix_timestamp_nanos() / 1_000_000) as i64;
        latencies.push((arrived - completed_ms).max(0));
    }
    stack.stop().await;

    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!("push latency, completion write -> WebSocket client, {jobs} jobs (local stack, moto):");
    println!("  p50 {} ms   p90 {} ms   p99 {} ms   max {} ms", at(0.5), at(0.9), at(0.99), at(1.0));
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
