//! The load run: sustained `POST /jobs` from this process against a running stack (the local one by
//! default) for a fixed time and rate, then a wait until every accepted job has ended. Prints the
//! accepted rate, submit latency p50/p99, errors by status, and how long the backlog took to drain. It
//! measures; it asserts nothing about time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ops::Target;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub duration: Duration,
    /// Submissions started per second.
    pub rate: u32,
    /// At most this many submissions in flight.
    pub concurrency: usize,
    /// Give up waiting for the backlog after this long.
    pub drain_deadline: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub sent: usize,
    pub accepted: usize,
    pub errors: BTreeMap<String, usize>,
    pub latencies_ms: Vec<f64>,
    pub submit_elapsed: Duration,
    pub drained: usize,
    pub drain_elapsed: Duration,
}

impl LoadReport {
    pub fn table(&self) -> String {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let at =
            |q: f64| if sorted.is_empty() { 0.0 } else { sorted[((sorted.len() - 1) as f64 * q).round() as usize] };
        let rate = self.accepted as f64 / self.submit_elapsed.as_secs_f64().max(0.001);
        format!(
            "  sent {}  accepted {} ({rate:.1}/s over {:.1} s)\n  submit latency p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n  errors {:?}\n  ended {} of {} accepted, {:.1} s after the last submission\n",
            self.sent,
            self.accepted,
            self.submit_elapsed.as_secs_f64(),
            at(0.5),
            at(0.99),
            at(1.0),
            self.errors,
            self.drained,
            self.accepted,
            self.drain_elapsed.as_secs_f64(),
        )
    }
}

pub async fn run(target: &Target, options: &LoadOptions) -> anyhow::Result<LoadReport> {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(1) as f64);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(interval);
    let mut tasks = Vec::new();
    while started.elapsed() < options.duration {
        ticks.tick().await;
        let permit = permits.clone().acquire_owned().await?;
        let target = target.clone();
        let n = tasks.len();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let result = target.submit("echo", json!({"n": n})).await;
            drop(permit);
            (sent.elapsed(), result)
        }));
    }
    let mut report = LoadReport { sent: tasks.len(), ..Default::default() };
    let mut accepted = Vec::new();
    for task in tasks {
        let (elapsed, result) = task.await?;
        report.latencies_ms.push(elapsed.as_secs_f64() * 1000.0);
        match result {
            Ok(job) => accepted.push(job["jobId"].as_str().unwrap_or_default().to_string()),
            Err(error) => {
                let key = error.to_string().split(':').next().unwrap_or("error").to_string();
                *report.errors.entry(key).or_default() += 1;
            }
        }
    }
    report.submit_elapsed = started.elapsed();
    report.accepted = accepted.len();

    let drain_started = Instant::now();
    let mut open = accepted;
    while !open.is_empty() && drain_started.elapsed() < options.drain_deadline {
        let mut still_open = Vec::new();
        for id in open {
            match target.status(&id).await {
                Ok(job) if is_terminal(&job) => {}
                _ => still_open.push(id),
            }
        }
        open = still_open;
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    report.drained = report.accepted - open.len();
    report.drain_elapsed = drain_started.elapsed();
    Ok(report)
}

fn is_terminal(job: &Value) -> bool {
    matches!(job["status"].as_str(), Some("completed" | "failed" | "cancelled"))
}
