//! The load run: sustained `POST /jobs` from this process against a running stack (the local one by
//! default) for a fixed time and rate, then a wait until every accepted job has ended. Prints the
//! accepted rate, submit latency p50/p99, submit -> completed latency p50/p99 (from the job's own
//! `completedAt`, so polling does not blur it), errors by status, and how long the backlog took to
//! drain. It measures; it asserts nothing about time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jobpipe_core::job::JobStatus;
use serde_json::json;

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
    /// From sending `POST /jobs` to the job's `completedAt`, for completed jobs.
    pub completion_ms: Vec<f64>,
    pub submit_elapsed: Duration,
    pub drained: usize,
    pub drain_elapsed: Duration,
}

/// The `q` quantile (0..=1) of some figures, nearest rank; 0 for none.
pub fn quantile(figures: &[f64], q: f64) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    if sorted.is_empty() { 0.0 } else { sorted[((sorted.len() - 1) as f64 * q).round() as usize] }
}

impl LoadReport {
    pub fn accepted_rate(&self) -> f64 {
        self.accepted as f64 / self.submit_elapsed.as_secs_f64().max(0.001)
    }

    pub fn table(&self) -> String {
        let (at, done) = (|q| quantile(&self.latencies_ms, q), |q| quantile(&self.completion_ms, q));
        format!(
            "  sent {}  accepted {} ({:.1}/s over {:.1} s)\n  submit latency p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n  submit -> completed p50 {:.1} ms  p99 {:.1} ms ({} completed)\n  errors {:?}\n  ended {} of {} accepted, {:.1} s after the last submission\n",
            self.sent,
            self.accepted,
            self.accepted_rate(),
            self.submit_elapsed.as_secs_f64(),
            at(0.5),
            at(0.99),
            at(1.0),
            done(0.5),
            done(0.99),
            self.completion_ms.len(),
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
            let (sent, sent_at_ms) = (Instant::now(), now_ms());
            let result = target.submit("echo", json!({"n": n})).await;
            drop(permit);
            (sent.elapsed(), sent_at_ms, result)
        }));
    }
    let mut report = LoadReport { sent: tasks.len(), ..Default::default() };
    let mut accepted = Vec::new();
    for task in tasks {
        let (elapsed, sent_at_ms, result) = task.await?;
        report.latencies_ms.push(elapsed.as_secs_f64() * 1000.0);
        match result {
            Ok(job) => accepted.push((job.job_id.as_str().to_string(), sent_at_ms)),
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
        for (id, sent_at_ms) in open {
            match target.status(&id).await {
                Ok(job) if job.status.is_terminal() => {
                    if let Some(completed_ms) = job.completed_at.as_deref().and_then(epoch_ms)
                        && job.status == JobStatus::Completed
                    {
                        report.completion_ms.push(completed_ms - sent_at_ms as f64);
                    }
                }
                _ => still_open.push((id, sent_at_ms)),
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

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn epoch_ms(text: &str) -> Option<f64> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((time.unix_timestamp_nanos() / 1_000_000) as f64)
}
