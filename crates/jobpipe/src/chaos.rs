//! The fault-injection run: many `echo` jobs through the local stack while messages are duplicated, the
//! queue processor is killed mid-batch, jobs fail retryably and permanently, poison messages arrive, and
//! a fraction of AWS calls fail (before or after taking effect). Then it waits for quiescence and checks
//! the invariants: every accepted job ended, none completed twice, no write after a job ended, and the
//! dead-letter queue holds exactly the poison that was sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::dev::{DevOptions, DevStack, start_moto};
use crate::faults::FaultProxy;

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub jobs: usize,
    /// Fraction of jobs whose message is sent again twice, at once (two batches hold it together).
    pub duplicate_rate: f64,
    /// Fraction of jobs that fail retryably once or twice, then succeed.
    pub retryable_rate: f64,
    /// Fraction of jobs that fail permanently.
    pub permanent_rate: f64,
    /// Unparseable bodies and messages naming jobs that do not exist.
    pub poison: usize,
    /// How often the queue processor's processes are killed (SIGKILL) while jobs are being submitted, if
    /// at all. Killing stops with the load, so the run can reach quiescence.
    pub kill_every: Option<Duration>,
    /// Fraction of AWS calls that fail (half before, half after taking effect).
    pub aws_fault_rate: f64,
    /// Fraction of SendMessage calls that fail after the job was written.
    pub send_fault_rate: f64,
    /// Submissions in flight at once.
    pub concurrency: usize,
    /// Give up waiting for quiescence after this long.
    pub deadline: Duration,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            jobs: 2000,
            duplicate_rate: 0.1,
            retryable_rate: 0.1,
            permanent_rate: 0.05,
            poison: 20,
            kill_every: Some(Duration::from_secs(7)),
            aws_fault_rate: 0.02,
            send_fault_rate: 0.05,
            concurrency: 8,
            deadline: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ChaosReport {
    pub accepted: usize,
    /// Submissions the API refused (a fault reached it); not counted as accepted.
    pub rejected: usize,
    pub completed: usize,
    pub failed_by_reason: BTreeMap<String, usize>,
    pub cancelled: usize,
    pub not_terminal: usize,
    pub not_terminal_by_status: BTreeMap<String, usize>,
    pub completed_more_than_once: usize,
    pub written_after_end: usize,
    pub duplicates_sent: usize,
    pub poison_sent: usize,
    pub dead_letters: usize,
    /// Messages still in the main job queue at the end (duplicates of finished jobs are fine).
    pub left_in_job_queue: usize,
    pub kills: usize,
    pub faults_injected: u64,
    pub send_faults_injected: u64,
    pub elapsed: Duration,
}

impl ChaosReport {
    /// The invariants that must hold after any run.
    pub fn violations(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.not_terminal > 0 {
            problems.push(format!("{} accepted job(s) never reached a terminal state", self.not_terminal));
        }
        if self.completed_more_than_once > 0 {
            problems.push(format!("{} job(s) completed more than once", self.completed_more_than_once));
        }
        if self.written_after_end > 0 {
            problems.push(format!("{} write(s) changed a job after it ended (a stale worker)", self.written_after_end));
        }
        if self.dead_letters != self.poison_sent {
            problems
                .push(format!("{} dead letter(s) for {} poison message(s) sent", self.dead_letters, self.poison_sent));
        }
        problems
    }

    pub fn table(&self) -> String {
        let mut rows = vec![
            ("accepted", self.accepted.to_string()),
            ("refused at submission (fault)", self.rejected.to_string()),
            ("completed", self.completed.to_string()),
        ];
        for (reason, count) in &self.failed_by_reason {
            rows.push(("failed", format!("{count} ({reason})")));
        }
        rows.extend([
            ("cancelled", self.cancelled.to_string()),
            ("still not terminal (must be 0)", format!("{} {:?}", self.not_terminal, self.not_terminal_by_status)),
            ("completed more than once (0)", self.completed_more_than_once.to_string()),
            ("written after it ended (0)", self.written_after_end.to_string()),
            ("duplicate deliveries sent", self.duplicates_sent.to_string()),
            ("processor kills (SIGKILL)", self.kills.to_string()),
            ("AWS faults injected", self.faults_injected.to_string()),
            ("SendMessage faults injected", self.send_faults_injected.to_string()),
            ("poison messages sent", self.poison_sent.to_string()),
            ("messages in the DLQ (= poison)", self.dead_letters.to_string()),
            ("messages left in the job queue", self.left_in_job_queue.to_string()),
            ("time", format!("{:.1} s", self.elapsed.as_secs_f64())),
        ]);
        rows.iter().map(|(k, v)| format!("  {k:<34} {v}\n")).collect()
    }
}

/// Runs the whole thing against a fresh local stack on its own moto (or `endpoint`).
pub async fn run(
    root: &std::path::Path,
    options: &ChaosOptions,
    endpoint: Option<String>,
    build: bool,
) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let (moto_url, mut moto) = match endpoint {
        Some(url) => (url, None),
        None => {
            let (url, child) = start_moto(root)?;
            (url, Some(child))
        }
    };
    let proxy = FaultProxy::new(&moto_url, options.aws_fault_rate, options.send_fault_rate);
    let (proxy_url, proxy_task) = proxy.serve().await?;

    let mut dev = DevOptions::new(root.to_path_buf());
    dev.port = 0;
    dev.build = build;
    dev.endpoint = Some(proxy_url);
    dev.prefix = format!("chaos{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // Short timeouts so killed work comes back in seconds, not minutes; the reconciler runs often.
    dev.function_timeout = Some(Duration::from_secs(5));
    dev.queue_visibility = Some(Duration::from_secs(20));
    dev.schedule_override = Some(Duration::from_secs(2));
    for (name, value) in
        [("DISPATCH_GRACE_SECONDS", "3"), ("RETRY_BASE_SECONDS", "1"), ("RETRY_MAX_SECONDS", "4"), ("RUST_LOG", "warn")]
    {
        dev.extra_env.insert(name.into(), value.into());
    }
    let stack = DevStack::start(dev).await?;
    let direct = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(crate::resources::REGION))
        .endpoint_url(&moto_url)
        .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
            aws_sdk_sqs::config::Credentials::new("local", "local", None, None, "jobpipe-chaos"),
        ))
        .build();
    let sqs = aws_sdk_sqs::Client::new(&direct);
    let dynamodb = aws_sdk_dynamodb::Client::new(&direct);
    let streams = aws_sdk_dynamodbstreams::Client::new(&direct);
    let table = stack.created.tables["JobsTable"].clone();
    let queue_url = stack.created.queues["JobsQueue"].0.clone();
    let dlq_url = stack.created.queues["JobsDeadLetterQueue"].0.clone();

    proxy.enabled.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut report = ChaosReport::default();

    let kill_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = options.kill_every.map(|every| {
        let processor = stack.functions["QueueProcessorFunction"].clone();
        let kills = kill_count.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                processor.kill_all();
                kills.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    });

    // Submissions.
    let http = reqwest::Client::new();
    let token = stack.token("chaos");
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = Vec::new();
    for n in 0..options.jobs {
        let (http, token, permits, base) = (http.clone(), token.clone(), permits.clone(), stack.base_url());
        let roll = (n as f64 + 0.5) / options.jobs as f64; // spread kinds of jobs evenly
        let input = if roll < options.permanent_rate {
            json!({"n": n, "failPermanently": true})
        } else if roll < options.permanent_rate + options.retryable_rate {
            json!({"n": n, "failTimes": 1 + n % 2})
        } else {
            json!({"n": n, "sleepMs": (n * 37) % 120})
        };
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.expect("open");
            let reply = http
                .post(format!("{base}/jobs"))
                .bearer_auth(&token)
                .json(&json!({"kind": "echo", "input": input}))
                .send()
                .await;
            match reply {
                Ok(r) if r.status() == 202 => {
                    r.json::<Value>().await.ok().and_then(|v| v["jobId"].as_str().map(String::from))
                }
                _ => None,
            }
        }));
    }
    let mut accepted = Vec::new();
    for task in tasks {
        match task.await? {
            Some(id) => accepted.push(id),
            None => report.rejected += 1,
        }
    }
    report.accepted = accepted.len();

    // Duplicate deliveries: the same message twice more, at once.
    let duplicates = (accepted.len() as f64 * options.duplicate_rate).round() as usize;
    for id in accepted.iter().step_by((accepted.len() / duplicates.max(1)).max(1)).take(duplicates) {
        let body = json!({"jobId": id}).to_string();
        let (a, b) = tokio::join!(
            sqs.send_message().queue_url(&queue_url).message_body(&body).send(),
            sqs.send_message().queue_url(&queue_url).message_body(&body).send()
        );
        report.duplicates_sent += a.is_ok() as usize + b.is_ok() as usize;
    }
    // Poison: unparseable bodies and ids of jobs that do not exist.
    for n in 0..options.poison {
        let body = if n % 2 == 0 {
            format!("not a job message #{n}")
        } else {
            json!({"jobId": uuid::Uuid::new_v4().to_string()}).to_string()
        };
        sqs.send_message().queue_url(&queue_url).message_body(body).send().await.context("sending poison")?;
        report.poison_sent += 1;
    }

    if let Some(killer) = killer {
        killer.abort();
    }

    // Quiescence: every accepted job ended, and the poison sits in the DLQ.
    let accepted_set: HashSet<String> = accepted.iter().cloned().collect();
    let mut statuses = HashMap::new();
    loop {
        statuses = scan_statuses(&dynamodb, &table).await.unwrap_or(statuses);
        let open = accepted_set
            .iter()
            .filter(|id| {
                !matches!(
                    statuses.get(*id).map(|s: &(String, Option<String>)| s.0.as_str()),
                    Some("completed" | "failed" | "cancelled")
                )
            })
            .count();
        let dead = queue_depth(&sqs, &dlq_url).await;
        if (open == 0 && dead >= report.poison_sent) || started.elapsed() > options.deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    report.kills = kill_count.load(std::sync::atomic::Ordering::SeqCst);
    proxy.enabled.store(false, std::sync::atomic::Ordering::SeqCst);
    // Let in-flight work settle before reading the history.
    tokio::time::sleep(Duration::from_secs(2)).await;

    for id in &accepted_set {
        match statuses.get(id) {
            Some((status, _)) if status == "completed" => report.completed += 1,
            Some((status, code)) if status == "failed" => {
                *report.failed_by_reason.entry(code.clone().unwrap_or_else(|| "unknown".into())).or_default() += 1
            }
            Some((status, _)) if status == "cancelled" => report.cancelled += 1,
            other => {
                report.not_terminal += 1;
                if report.not_terminal <= 3 {
                    eprintln!("not terminal: {id} {other:?}");
                }
                let status = other.map(|(s, _)| s.clone()).unwrap_or_else(|| "missing".into());
                *report.not_terminal_by_status.entry(status).or_default() += 1;
            }
        }
    }
    let stream_arn = stack.created.stream_arns["JobsTable"].clone();
    let (completed_twice, after_end) = stream_history(&streams, &stream_arn).await?;
    report.completed_more_than_once = completed_twice;
    report.written_after_end = after_end;
    report.dead_letters = queue_depth(&sqs, &dlq_url).await;
    report.left_in_job_queue = queue_depth(&sqs, &queue_url).await;
    report.faults_injected = proxy.counts.before.load(std::sync::atomic::Ordering::SeqCst)
        + proxy.counts.after.load(std::sync::atomic::Ordering::SeqCst);
    report.send_faults_injected = proxy.counts.send_message.load(std::sync::atomic::Ordering::SeqCst);
    report.elapsed = started.elapsed();

    stack.stop().await;
    proxy_task.abort();
    if let Some(mut moto) = moto.take() {
        drop(moto.stdin.take());
        let _ = moto.wait();
    }
    Ok(report)
}

/// Every job's status and error code.
async fn scan_statuses(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> anyhow::Result<HashMap<String, (String, Option<String>)>> {
    let mut statuses = HashMap::new();
    let mut start = None;
    loop {
        let out = dynamodb
            .scan()
            .table_name(table)
            .projection_expression("jobId, #s, errorCode, attempts, leaseExpiresAt, lastErrorCode")
            .expression_attribute_names("#s", "status")
            .set_exclusive_start_key(start.take())
            .consistent_read(true)
            .send()
            .await?;
        for item in out.items() {
            let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
            if let (Some(id), Some(status)) = (text("jobId"), text("status")) {
                let number = |k: &str| item.get(k).and_then(|v| v.as_n().ok()).cloned().unwrap_or_default();
                let detail = match status.as_str() {
                    "failed" => text("errorCode"),
                    _ => Some(format!(
                        "attempts={} lease={} last={:?}",
                        number("attempts"),
                        number("leaseExpiresAt"),
                        text("lastErrorCode")
                    )),
                };
                statuses.insert(id, (status, detail));
            }
        }
        match out.last_evaluated_key() {
            Some(key) => start = Some(key.clone()),
            None => return Ok(statuses),
        }
    }
}

/// From the table's whole stream: jobs that entered `completed` more than once, and writes that changed
/// a job after it had ended.
async fn stream_history(streams: &aws_sdk_dynamodbstreams::Client, stream_arn: &str) -> anyhow::Result<(usize, usize)> {
    let described = streams.describe_stream().stream_arn(stream_arn).send().await?;
    let mut completions: HashMap<String, usize> = HashMap::new();
    let mut after_end = 0;
    for shard in described.stream_description().map(|d| d.shards()).unwrap_or_default() {
        let Some(shard_id) = shard.shard_id() else { continue };
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator
            .context("no shard iterator")?;
        loop {
            let out = streams.get_records().shard_iterator(&iterator).limit(1000).send().await?;
            if out.records().is_empty() {
                break;
            }
            for record in out.records() {
                let Some(change) = record.dynamodb() else { continue };
                let status = |image: Option<&HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>>| {
                    image.and_then(|i| i.get("status")).and_then(|v| v.as_s().ok()).cloned()
                };
                let (old, new) = (status(change.old_image.as_ref()), status(change.new_image.as_ref()));
                let id = change
                    .keys
                    .as_ref()
                    .and_then(|k| k.get("jobId"))
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                let ended = |s: &Option<String>| matches!(s.as_deref(), Some("completed" | "failed" | "cancelled"));
                if new.as_deref() == Some("completed") && old.as_deref() != Some("completed") {
                    *completions.entry(id).or_default() += 1;
                }
                if ended(&old) && change.new_image.is_some() && change.new_image != change.old_image {
                    after_end += 1;
                }
            }
            match out.next_shard_iterator() {
                Some(next) => iterator = next.to_string(),
                None => break,
            }
        }
    }
    Ok((completions.values().filter(|n| **n > 1).count(), after_end))
}

async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> usize {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await;
    out.ok()
        .and_then(|o| o.attributes().cloned())
        .map(|a| a.values().filter_map(|v| v.parse::<usize>().ok()).sum())
        .unwrap_or(0)
}
