//! The fault-injection run: many `echo` jobs through the local stack while messages are duplicated, the
//! queue processor is killed mid-batch, jobs fail retryably and permanently, poison messages arrive, and
//! a fraction of AWS calls fail (before or after taking effect), and some jobs are scheduled a few seconds
//! ahead (half of those cancelled before their time), and a share of the jobs belong to a tenant limited
//! to a few jobs running at once. Then it waits for quiescence and checks the invariants: every accepted
//! job ended, none completed twice, none started before its time, a cancel that was answered `200`
//! stuck, no write after a job ended, the limited tenant never held more claims at once than its limit,
//! and the dead-letter queue holds exactly the poison that was sent. A share of the jobs name a callback
//! (a receiver in this process, which verifies every signature and fails some first attempts): every such
//! job that ended completed or failed is delivered, signed, as what it became; none cancelled is. A few
//! batches run through the same faults (a third of them cancelled at once): each completes exactly once
//! (the stream shows its progress item turn `completed` once), its counts are its jobs' truth, and its
//! `batch.completed` is delivered, signed, with those counts and one `webhook-id`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use jobpipe_core::JobStatus;
use jobpipe_core::store::{JobStore, batch_from_stream_image, is_batch_image, job_from_stream_image};
use jobpipe_emulator::aws::{Endpoints, dynamodb_client, sdk_config, start_engines, streams_client};
use jobpipe_emulator::dev::{DevOptions, DevStack};
use jobpipe_emulator::faults::FaultProxy;
use jobpipe_emulator::resources::queue_depth;
use jobpipe_emulator::sources::stream_record;

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub jobs: usize,
    /// Fraction of jobs whose message is sent again twice, at once (two batches hold it together).
    pub duplicate_rate: f64,
    /// Fraction of jobs that fail retryably once or twice, then succeed.
    pub retryable_rate: f64,
    /// Fraction of jobs that fail permanently.
    pub permanent_rate: f64,
    /// Fraction of jobs scheduled 1 to 4 seconds ahead (`delaySeconds`); every other one is cancelled
    /// right after it is accepted, and the others get a copy of their message at once, undelayed (an
    /// early delivery, as a duplicate or a redrive would be).
    pub scheduled_rate: f64,
    /// Fraction of jobs submitted by a tenant limited to `limited_concurrency` jobs running at once.
    pub limited_rate: f64,
    pub limited_concurrency: u32,
    /// Every this many-th job is submitted by a tenant allowed `open_jobs_limit` jobs waiting or running
    /// (0: none); its submissions over the limit are refused with `429`.
    pub open_jobs_every: usize,
    pub open_jobs_limit: u32,
    /// Every this many-th job names a callback (0: none); the receiver answers 503 to the first attempt
    /// for every third of them, so retries run through the faults too.
    pub webhook_every: usize,
    /// Batches of `batch_size` echo jobs (every other one with a job that fails permanently, every third
    /// cancelled right after it is accepted, while a job of it waits for its time).
    pub batches: usize,
    pub batch_size: usize,
    /// Unparseable bodies and messages naming jobs that do not exist.
    pub poison: usize,
    /// Kill (SIGKILL) every process of the queue processor after every this many accepted submissions
    /// (0: never). Counted in jobs, not seconds, so a slower machine sees the same number of kills.
    pub kill_every_jobs: usize,
    /// Fraction of AWS calls that fail (half before, half after taking effect).
    pub aws_fault_rate: f64,
    /// Fraction of SendMessage calls that fail after the job was written.
    pub send_fault_rate: f64,
    /// Submissions in flight at once.
    pub concurrency: usize,
    /// How far global secondary indexes lag behind writes (as on AWS, where they are eventually
    /// consistent; zero: consistent at once).
    pub index_lag: Duration,
    /// Give up when no accepted job has changed (status, attempts, lease) and no queue has moved for this
    /// long: progress stopped. A slow machine makes the run longer, not red.
    pub stall: Duration,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            jobs: 2000,
            duplicate_rate: 0.1,
            retryable_rate: 0.1,
            permanent_rate: 0.05,
            scheduled_rate: 0.1,
            limited_rate: 0.2,
            limited_concurrency: 2,
            open_jobs_every: 20,
            open_jobs_limit: 4,
            webhook_every: 10,
            batches: 8,
            batch_size: 5,
            poison: 20,
            kill_every_jobs: 60,
            aws_fault_rate: 0.02,
            send_fault_rate: 0.05,
            concurrency: 8,
            index_lag: Duration::from_secs(1),
            stall: Duration::from_secs(120),
        }
    }
}

/// What a job was submitted to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Design {
    /// Complete (possibly after failing retryably once or twice).
    Complete,
    /// Fail permanently (`echo_failed`).
    FailPermanently,
    /// Cancelled while scheduled (the cancel was answered `200`): must end `cancelled`, never run.
    Cancelled,
}

/// Failure reasons that disruption explains: attempts used up by killed workers or failed calls, and
/// messages dead-lettered after too many deliveries.
const DISRUPTION_REASONS: [&str; 2] = ["max_attempts_exceeded", "dead_lettered"];

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
    /// Jobs that ended other than as designed because of disruption (`DISRUPTION_REASONS`).
    pub disrupted: usize,
    /// Jobs that ended in a way the run cannot explain (a job designed to complete failing with its
    /// own deadline, say), by outcome.
    pub unexplained: BTreeMap<String, usize>,
    /// Whether waiting stopped because nothing moved for `ChaosOptions::stall`.
    pub stalled: bool,
    pub completed_more_than_once: usize,
    /// Jobs claimed before their `runAt`.
    pub started_early: usize,
    pub scheduled: usize,
    /// Scheduled jobs whose cancel was answered `200`.
    pub cancels_confirmed: usize,
    /// Undelayed copies of scheduled jobs' messages, sent at acceptance.
    pub early_deliveries_sent: usize,
    pub written_after_end: usize,
    /// Jobs of the limited tenant, and the most of its claims live at once (at most its limit).
    pub limited_jobs: usize,
    pub limited_most_at_once: usize,
    pub limited_concurrency: u32,
    /// Submissions of the open-jobs tenant refused over its limit (`429`, `openJobs`), the most of its
    /// jobs open at once (at most its limit), and its count once every job ended (0: each counted down
    /// exactly once).
    pub over_open_jobs: usize,
    pub open_most_at_once: usize,
    pub open_jobs_limit: u32,
    pub open_count_at_end: i64,
    /// Jobs with a callback that ended completed or failed; of those, delivered (a verified `2xx`
    /// delivery of the right event); not delivered (0); deliveries that failed verification, named the
    /// wrong event or were for a cancelled job (0); and `2xx` deliveries beyond each job's first (at
    /// least once allows them).
    pub webhook_jobs: usize,
    pub webhooks_delivered: usize,
    pub webhooks_missing: usize,
    pub webhooks_bad: usize,
    pub webhooks_repeated: usize,
    /// Batches accepted (and refused: a fault outlasted every retry of the keyed submission) and their
    /// jobs; batches whose progress item turned `completed` other than once (0); whose counts differ from
    /// their jobs' (0); whose `batch.completed` never arrived (0) or arrived unverified, with other counts
    /// or under more than one `webhook-id` (0).
    pub batches: usize,
    pub batches_refused: usize,
    pub batch_jobs: usize,
    pub batches_not_completed_once: usize,
    pub batch_counts_wrong: usize,
    pub batch_webhooks_missing: usize,
    pub batch_webhooks_bad: usize,
    /// A recurring schedule (every minute) running through the faults: ticks that created a job, ticks
    /// between its first and last that created none (0), ticks that created two (0), and whether a tick
    /// due by the end was never fired (false).
    pub schedule_ticks: usize,
    pub ticks_missing: usize,
    pub ticks_twice: usize,
    pub tick_left_unfired: bool,
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
        if self.started_early > 0 {
            problems.push(format!("{} job(s) started before their runAt", self.started_early));
        }
        if self.written_after_end > 0 {
            problems.push(format!("{} write(s) changed a job after it ended (a stale worker)", self.written_after_end));
        }
        let unexplained: usize = self.unexplained.values().sum();
        if unexplained > 0 {
            problems.push(format!(
                "{unexplained} job(s) ended in a way no injected fault explains: {:?}",
                self.unexplained
            ));
        }
        if self.limited_most_at_once > self.limited_concurrency as usize {
            problems.push(format!(
                "the limited tenant held {} claims at once, over its limit of {}",
                self.limited_most_at_once, self.limited_concurrency
            ));
        }
        if self.open_most_at_once > self.open_jobs_limit as usize {
            problems.push(format!(
                "the open-jobs tenant had {} jobs open at once, over its limit of {}",
                self.open_most_at_once, self.open_jobs_limit
            ));
        }
        if self.open_count_at_end != 0 {
            problems.push(format!(
                "the open-jobs tenant's count is {} with every job ended (counted down other than once)",
                self.open_count_at_end
            ));
        }
        if self.schedule_ticks == 0 || self.ticks_missing > 0 || self.ticks_twice > 0 || self.tick_left_unfired {
            problems.push(format!(
                "the schedule fired {} tick(s), missed {}, created {} twice, left a due one unfired: {}",
                self.schedule_ticks, self.ticks_missing, self.ticks_twice, self.tick_left_unfired
            ));
        }
        if self.webhooks_missing > 0 || self.webhooks_bad > 0 {
            problems.push(format!(
                "of {} jobs with a callback, {} never delivered, and {} deliveries bad (unverified, wrong event, or for a cancelled job)",
                self.webhook_jobs, self.webhooks_missing, self.webhooks_bad
            ));
        }
        if self.batches_not_completed_once > 0
            || self.batch_counts_wrong > 0
            || self.batch_webhooks_missing > 0
            || self.batch_webhooks_bad > 0
        {
            problems.push(format!(
                "of {} batches, {} did not complete exactly once, {} had counts other than their jobs', {} \
                 batch.completed never arrived and {} arrived bad",
                self.batches,
                self.batches_not_completed_once,
                self.batch_counts_wrong,
                self.batch_webhooks_missing,
                self.batch_webhooks_bad
            ));
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
            ("ended otherwise by disruption", self.disrupted.to_string()),
            (
                "ended unexplained (must be 0)",
                format!("{} {:?}", self.unexplained.values().sum::<usize>(), self.unexplained),
            ),
            ("still not terminal (must be 0)", format!("{} {:?}", self.not_terminal, self.not_terminal_by_status)),
            ("completed more than once (0)", self.completed_more_than_once.to_string()),
            ("scheduled (1-4 s ahead)", self.scheduled.to_string()),
            ("cancelled while scheduled (200)", self.cancels_confirmed.to_string()),
            ("early deliveries sent", self.early_deliveries_sent.to_string()),
            ("started before runAt (0)", self.started_early.to_string()),
            ("written after it ended (0)", self.written_after_end.to_string()),
            ("limited tenant's jobs", self.limited_jobs.to_string()),
            (
                "its most claims at once (<= limit)",
                format!("{} (limit {})", self.limited_most_at_once, self.limited_concurrency),
            ),
            ("open-jobs tenant refused (429)", self.over_open_jobs.to_string()),
            (
                "its most open at once (<= limit)",
                format!("{} (limit {})", self.open_most_at_once, self.open_jobs_limit),
            ),
            ("its count at the end (0)", self.open_count_at_end.to_string()),
            ("jobs with a callback, ended", self.webhook_jobs.to_string()),
            (
                "  delivered / missing (0) / bad (0)",
                format!("{} / {} / {}", self.webhooks_delivered, self.webhooks_missing, self.webhooks_bad),
            ),
            ("  delivered again (at least once)", self.webhooks_repeated.to_string()),
            (
                "batches (refused) / their jobs",
                format!("{} ({}) / {}", self.batches, self.batches_refused, self.batch_jobs),
            ),
            ("  not completed exactly once (0)", self.batches_not_completed_once.to_string()),
            ("  counts not their jobs' (0)", self.batch_counts_wrong.to_string()),
            (
                "  batch.completed missing / bad (0)",
                format!("{} / {}", self.batch_webhooks_missing, self.batch_webhooks_bad),
            ),
            ("schedule's ticks fired (> 0)", self.schedule_ticks.to_string()),
            ("ticks missed or doubled (0)", format!("{} {}", self.ticks_missing, self.ticks_twice)),
            ("a due tick left unfired (no)", if self.tick_left_unfired { "yes" } else { "no" }.to_string()),
            ("duplicate deliveries sent", self.duplicates_sent.to_string()),
            ("processor kills (SIGKILL)", self.kills.to_string()),
            ("AWS faults injected", self.faults_injected.to_string()),
            ("SendMessage faults injected", self.send_faults_injected.to_string()),
            ("poison messages sent", self.poison_sent.to_string()),
            ("messages in the DLQ (= poison)", self.dead_letters.to_string()),
            ("messages left in the job queue", self.left_in_job_queue.to_string()),
            (
                "time",
                format!("{:.1} s{}", self.elapsed.as_secs_f64(), if self.stalled { " (progress stopped)" } else { "" }),
            ),
        ]);
        rows.iter().map(|(k, v)| format!("  {k:<34} {v}\n")).collect()
    }
}

/// Runs the whole thing against a fresh local stack on engines of its own (or `endpoints`).
pub async fn run(
    root: &std::path::Path,
    options: &ChaosOptions,
    endpoints: Option<Endpoints>,
    build: bool,
) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let (endpoints, engines) = match endpoints {
        Some(endpoints) => (endpoints, None),
        None => {
            let engines = start_engines(root)?;
            (engines.endpoints.clone(), Some(engines))
        }
    };
    // The faults come from a proxy behind the stack's own (which judges IAM and lags the indexes).
    let proxy = FaultProxy::new(&endpoints, options.aws_fault_rate, options.send_fault_rate);
    let (proxy_url, proxy_task) = proxy.serve().await?;

    let mut dev = DevOptions::new(root.to_path_buf());
    dev.port = 0;
    dev.build = build;
    dev.endpoints = Some(Endpoints::one(proxy_url));
    dev.index_lag = Some(options.index_lag).filter(|lag| !lag.is_zero());
    dev.prefix = format!("chaos{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // Short timeouts so killed work comes back in seconds, not minutes (a lease ends 5 s after its
    // invocation's deadline); still far above what a batch of echo jobs needs, so no job depends on how
    // fast the machine is. The reconciler runs often.
    dev.function_timeout = Some(Duration::from_secs(10));
    dev.queue_visibility = Some(Duration::from_secs(20));
    dev.schedule_override = Some(Duration::from_secs(2));
    // A job held back because a fault hid the paused kinds comes back in 2 s, not a minute.
    for (name, value) in [
        ("DISPATCH_GRACE_SECONDS", "3"),
        ("RETRY_BASE_SECONDS", "1"),
        ("RETRY_MAX_SECONDS", "4"),
        ("PAUSED_KIND_RECHECK_SECONDS", "2"),
        // One tenant submits everything here: its quota is not what this run checks.
        ("TENANT_SUBMISSIONS_PER_SECOND", "0"),
        // Webhook retries in seconds, not minutes.
        ("WEBHOOK_RETRY_DELAYS", "1,1,2,2,4,4"),
        ("RUST_LOG", "warn"),
    ] {
        dev.extra_env.insert(name.into(), value.into());
    }
    let stack = DevStack::start(dev).await?;
    // What the run itself reads goes to the engines directly, past the faults.
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&endpoints.aws));
    let jobs = JobStore::new(dynamodb_client(&endpoints), stack.created.tables["JobsTable"].clone(), 86_400);
    let streams = streams_client(&endpoints);
    let queue_url = stack.created.queues["JobsQueue"].0.clone();
    let dlq_url = stack.created.queues["JobsDeadLetterQueue"].0.clone();

    let controls = jobpipe_core::controls::ControlStore::new(
        dynamodb_client(&endpoints),
        stack.created.tables["ControlTable"].clone(),
    );
    let limit = Some(options.limited_concurrency).filter(|n| *n > 0);
    controls.set_tenant_limit(LIMITED_TENANT, jobpipe_core::controls::TenantLimit::Concurrency, limit).await?;
    let limit = Some(options.open_jobs_limit).filter(|n| *n > 0);
    controls.set_tenant_limit(OPEN_JOBS_TENANT, jobpipe_core::controls::TenantLimit::OpenJobs, limit).await?;
    let open_jobs = jobpipe_core::open_jobs::OpenJobs::new(
        dynamodb_client(&endpoints),
        stack.created.tables["ControlTable"].clone(),
    );

    // A schedule ticking every minute through the faults; the reconciler fires ticks up to 150 s ahead.
    let http = reqwest::Client::new();
    let schedule: Value = http
        .post(format!("{}/schedules", stack.base_url()))
        .bearer_auth(stack.token("chaos"))
        .json(&json!({"kind": "echo", "input": {"tick": true}, "rate": "1 minute"}))
        .send()
        .await?
        .json()
        .await?;
    let schedule_id = schedule["scheduleId"].as_str().context("the schedule's id")?.to_string();
    let secret: Value = http
        .get(format!("{}/webhooks/secret", stack.base_url()))
        .bearer_auth(stack.token("chaos"))
        .send()
        .await?
        .json()
        .await?;
    let receiver = WebhookReceiver::start(secret["secret"].as_str().context("the tenant's webhook secret")?).await?;
    let endpoint = http
        .post(format!("{}/webhooks/endpoints", stack.base_url()))
        .bearer_auth(stack.token("chaos"))
        .json(&json!({"url": receiver.batch_url, "events": ["batch.completed"]}))
        .send()
        .await?;
    anyhow::ensure!(endpoint.status() == 201, "registering the batches' endpoint answered {}", endpoint.status());

    proxy.enabled.store(true, Ordering::SeqCst);
    let mut report = ChaosReport {
        limited_concurrency: options.limited_concurrency,
        open_jobs_limit: options.open_jobs_limit,
        ..Default::default()
    };

    // Submissions; every `kill_every_jobs`-th accepted one kills the queue processor's processes.
    let processor = stack.functions["QueueProcessorFunction"].clone();
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let kill_count = Arc::new(AtomicUsize::new(0));
    let (token, limited_token) = (stack.token("chaos"), stack.token(LIMITED_TENANT));
    let open_token = stack.token(OPEN_JOBS_TENANT);
    let over_open = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let early_sent = Arc::new(AtomicUsize::new(0));
    // Accepted jobs with a callback: their receiver path (`n`).
    let callbacks: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for n in 0..options.jobs {
        let (http, token, permits, base) = (http.clone(), token.clone(), permits.clone(), stack.base_url());
        let (processor, accepted_count, kill_count) = (processor.clone(), accepted_count.clone(), kill_count.clone());
        let (sqs, queue_url, early_sent) = (sqs.clone(), queue_url.clone(), early_sent.clone());
        let kill_every = options.kill_every_jobs;
        let roll = (n as f64 + 0.5) / options.jobs as f64; // spread kinds of jobs evenly
        let (design, input) = if roll < options.permanent_rate {
            (Design::FailPermanently, json!({"n": n, "failPermanently": true}))
        } else if roll < options.permanent_rate + options.retryable_rate {
            (Design::Complete, json!({"n": n, "failTimes": 1 + n % 2}))
        } else {
            (Design::Complete, json!({"n": n, "sleepMs": (n * 37) % 120}))
        };
        let scheduled_from = options.permanent_rate + options.retryable_rate;
        let scheduled = roll >= scheduled_from && roll < scheduled_from + options.scheduled_rate;
        let mut submission = json!({"kind": "echo", "input": input});
        if scheduled {
            submission["delaySeconds"] = json!(1 + n % 4);
        }
        let open_tenant = options.open_jobs_every > 0 && n % options.open_jobs_every == options.open_jobs_every / 3;
        let limited = ((n as f64 + 0.5) * options.limited_rate).fract() < options.limited_rate;
        if options.webhook_every > 0 && n % options.webhook_every == 1 && !open_tenant && !limited {
            submission["callback"] = json!({"url": format!("{}/{n}", receiver.url)});
        }
        let cancel = scheduled && n % 2 == 0;
        // Spread over every design: every fifth job (at the default rate) is the limited tenant's.
        let token = if open_tenant {
            open_token.clone()
        } else if limited {
            limited_token.clone()
        } else {
            token
        };
        let (over_open, callbacks) = (over_open.clone(), callbacks.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.expect("open");
            let reply = http.post(format!("{base}/jobs")).bearer_auth(&token).json(&submission).send().await;
            let id = match reply {
                Ok(r) if r.status() == 202 => r.json::<Value>().await.ok().and_then(|v| {
                    if v["callback"].is_object() {
                        callbacks.lock().expect("lock").insert(v["jobId"].as_str()?.to_string(), n);
                    }
                    v["jobId"].as_str().map(String::from)
                }),
                Ok(r) if r.status() == 429 => {
                    let body = r.json::<Value>().await.unwrap_or_default();
                    if body["error"]["field"] == "openJobs" {
                        over_open.fetch_add(1, Ordering::SeqCst);
                    }
                    None
                }
                _ => None,
            }?;
            let mut design = design;
            if cancel {
                let cancelled = http.delete(format!("{base}/jobs/{id}")).bearer_auth(&token).send().await;
                if cancelled.is_ok_and(|r| r.status() == 200) {
                    design = Design::Cancelled;
                }
            } else if scheduled {
                let body = json!({"jobId": id}).to_string();
                if sqs.send_message().queue_url(&queue_url).message_body(body).send().await.is_ok() {
                    early_sent.fetch_add(1, Ordering::SeqCst);
                }
            }
            if kill_every > 0 && (accepted_count.fetch_add(1, Ordering::SeqCst) + 1) % kill_every == 0 {
                processor.kill_all();
                kill_count.fetch_add(1, Ordering::SeqCst);
            }
            Some((id, design))
        }));
    }
    // Batches, through the same faults: each submitted with a key, and again with it while a fault answers.
    let mut batch_tasks = Vec::new();
    for b in 0..options.batches {
        let (http, token, base) = (http.clone(), token.clone(), stack.base_url());
        let jobs: Vec<Value> = (0..options.batch_size)
            .map(|i| match i {
                0 if b % 2 == 0 => json!({"kind": "echo", "input": {"batch": b, "failPermanently": true}}),
                1 if b % 3 == 0 => json!({"kind": "echo", "input": {"batch": b}, "delaySeconds": 2}),
                _ => json!({"kind": "echo", "input": {"batch": b, "sleepMs": (i * 37) % 120}}),
            })
            .collect();
        batch_tasks.push(tokio::spawn(async move {
            let key = uuid::Uuid::new_v4().to_string();
            let mut accepted = None;
            for _ in 0..5 {
                let reply = http
                    .post(format!("{base}/batches"))
                    .bearer_auth(&token)
                    .header("idempotency-key", &key)
                    .json(&json!({"jobs": jobs}))
                    .send()
                    .await;
                match reply {
                    Ok(r) if r.status() == 202 => {
                        accepted = r.json::<Value>().await.ok();
                        break;
                    }
                    Ok(r) if r.status().is_client_error() => break,
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            let batch = accepted?;
            let batch_id = batch["batchId"].as_str()?.to_string();
            if b % 3 == 0 {
                for _ in 0..5 {
                    let cancelled = http.delete(format!("{base}/batches/{batch_id}")).bearer_auth(&token).send().await;
                    if cancelled.is_ok_and(|r| r.status() == 200) {
                        break;
                    }
                }
            }
            let job_ids: Vec<String> =
                batch["jobIds"].as_array()?.iter().filter_map(|id| id.as_str().map(String::from)).collect();
            Some((batch_id, job_ids))
        }));
    }
    let mut batches: HashMap<String, Vec<String>> = HashMap::new();
    for task in batch_tasks {
        match task.await? {
            Some((batch_id, job_ids)) => {
                batches.insert(batch_id, job_ids);
            }
            None => report.batches_refused += 1,
        }
    }
    report.batches = batches.len();
    let batch_jobs: HashSet<String> = batches.values().flatten().cloned().collect();
    report.batch_jobs = batch_jobs.len();

    let mut designs = HashMap::new();
    let mut accepted = Vec::new();
    for task in tasks {
        match task.await? {
            Some((id, design)) => {
                report.cancels_confirmed += (design == Design::Cancelled) as usize;
                designs.insert(id.clone(), design);
                accepted.push(id);
            }
            None => report.rejected += 1,
        }
    }
    report.accepted = accepted.len();
    report.over_open_jobs = over_open.load(Ordering::SeqCst);
    report.rejected -= report.over_open_jobs;
    report.scheduled = (options.jobs as f64 * options.scheduled_rate).round() as usize;
    report.kills = kill_count.load(Ordering::SeqCst);
    report.early_deliveries_sent = early_sent.load(Ordering::SeqCst);

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

    // Quiescence: every accepted job ended, and the poison sits in the DLQ. Or progress stopped.
    let accepted_set: HashSet<String> = accepted.iter().cloned().collect();
    let mut statuses = HashMap::new();
    let mut last_seen: Option<u64> = None;
    let mut last_change = Instant::now();
    loop {
        statuses = scan_statuses(&jobs).await.unwrap_or(statuses);
        let open = accepted_set
            .iter()
            .chain(&batch_jobs)
            .filter(|id| {
                !matches!(
                    statuses.get(*id).map(|s: &(String, Option<String>)| s.0.as_str()),
                    Some("completed" | "failed" | "cancelled")
                )
            })
            .count();
        let dead = queue_depth(&sqs, &dlq_url).await.unwrap_or(0) as usize;
        if open == 0 && dead >= report.poison_sent {
            break;
        }
        // Anything that moves is progress: a job's status, attempts, lease or error; a queue's depth.
        let mut hasher = std::hash::DefaultHasher::new();
        let mut seen: Vec<_> = statuses.iter().filter(|(id, _)| accepted_set.contains(*id)).collect();
        seen.sort();
        (seen, dead, queue_depth(&sqs, &queue_url).await.unwrap_or(0)).hash(&mut hasher);
        let signature = hasher.finish();
        if last_seen != Some(signature) {
            last_seen = Some(signature);
            last_change = Instant::now();
        } else if last_change.elapsed() > options.stall {
            report.stalled = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    proxy.enabled.store(false, Ordering::SeqCst);
    // Every tick due within the next 90 s has fired by now (the reconciler runs every 2 s); if not yet,
    // it does while the faults are off, or never (a lost tick).
    let mut still = 0;
    loop {
        let view: Value = http
            .get(format!("{}/schedules/{schedule_id}", stack.base_url()))
            .bearer_auth(stack.token("chaos"))
            .send()
            .await?
            .json()
            .await?;
        let next = view["nextTickAt"].as_str().and_then(jobpipe_core::clock::from_rfc3339);
        let now = jobpipe_core::clock::Clock::now_ms(&jobpipe_core::clock::SystemClock);
        report.tick_left_unfired = next.is_none_or(|next| next <= now + 90_000);
        still += 1;
        if !report.tick_left_unfired || still > options.stall.as_secs() {
            if report.tick_left_unfired {
                eprintln!("the schedule at the end: {view}");
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Every job with a callback that ended completed or failed is delivered, or progress stopped.
    let callbacks = std::mem::take(&mut *callbacks.lock().expect("lock"));
    let expected: HashMap<String, String> = callbacks
        .keys()
        .filter_map(|id| match statuses.get(id).map(|(status, _)| status.as_str()) {
            Some(status @ ("completed" | "failed")) => Some((id.clone(), format!("job.{status}"))),
            _ => None,
        })
        .collect();
    let all_delivered = || receiver.delivered(&expected) == expected.len();
    report.stalled |= until_delivered(options.stall, all_delivered, || receiver.heard()).await;
    report.webhook_jobs = expected.len();
    report.webhooks_delivered = receiver.delivered(&expected);
    report.webhooks_missing = expected.len() - report.webhooks_delivered;
    report.webhooks_bad = receiver.bad(&expected, &callbacks);
    report.webhooks_repeated = receiver.repeated();

    // Every batch (all its jobs ended) is told completed, or progress stopped.
    let batch_ids: HashSet<String> = batches.keys().cloned().collect();
    let all_delivered = || receiver.batches_delivered(&batch_ids) == batch_ids.len();
    report.stalled |= until_delivered(options.stall, all_delivered, || receiver.batches_heard()).await;
    report.batch_webhooks_missing = batch_ids.len() - receiver.batches_delivered(&batch_ids);
    // A batch's counts, as its jobs say, as `GET /batches/{id}` says, and as its `batch.completed` said.
    let final_statuses = scan_statuses(&jobs).await?;
    let heard = receiver.batches.lock().expect("lock").clone();
    for (batch_id, job_ids) in &batches {
        let mut truth: BTreeMap<&str, usize> =
            ["scheduled", "queued", "processing", "completed", "failed", "cancelled"].map(|s| (s, 0)).into();
        for id in job_ids {
            if let Some((status, _)) = final_statuses.get(id) {
                *truth.entry(status.as_str()).or_default() += 1;
            }
        }
        let view: Value = http
            .get(format!("{}/batches/{batch_id}", stack.base_url()))
            .bearer_auth(stack.token("chaos"))
            .send()
            .await?
            .json()
            .await?;
        let counted = |counts: &Value, status: &str| counts[status].as_u64().unwrap_or(u64::MAX) as usize;
        let view_right = truth.iter().all(|(status, n)| counted(&view["counts"], status) == *n)
            && view["done"] == true
            && view["completedAt"].is_string();
        if !view_right {
            eprintln!("batch {batch_id}: truth {truth:?}, GET answered {view}");
            report.batch_counts_wrong += 1;
        }
        let told: Vec<&BatchHeard> = heard.iter().filter(|h| &h.batch_id == batch_id).collect();
        let ids: HashSet<&str> = told.iter().map(|h| h.webhook_id.as_str()).collect();
        let right = |h: &&BatchHeard| {
            h.verified
                && h.data["total"] == job_ids.len()
                && ["completed", "failed", "cancelled"].iter().all(|s| counted(&h.data["counts"], s) == truth[s])
                && h.data["completedAt"] == view["completedAt"]
        };
        if ids.len() > 1 || !told.iter().all(right) {
            eprintln!("batch {batch_id}: truth {truth:?}, told {told:?}");
            report.batch_webhooks_bad += 1;
        }
    }

    // Let in-flight work settle before reading the history.
    tokio::time::sleep(Duration::from_secs(2)).await;

    for id in &accepted_set {
        let design = designs[id];
        let outcome = match statuses.get(id) {
            Some((status, _)) if status == "completed" => {
                report.completed += 1;
                "completed".to_string()
            }
            Some((status, code)) if status == "failed" => {
                let code = code.clone().unwrap_or_else(|| "unknown".into());
                *report.failed_by_reason.entry(code.clone()).or_default() += 1;
                format!("failed ({code})")
            }
            Some((status, _)) if status == "cancelled" => {
                report.cancelled += 1;
                "cancelled".to_string()
            }
            other => {
                report.not_terminal += 1;
                if report.not_terminal <= 3 {
                    eprintln!("not terminal: {id} {other:?}");
                }
                let status = other.map(|(s, _)| s.clone()).unwrap_or_else(|| "missing".into());
                *report.not_terminal_by_status.entry(status).or_default() += 1;
                continue;
            }
        };
        match (design, outcome.as_str()) {
            (Design::Complete, "completed")
            | (Design::FailPermanently, "failed (echo_failed)")
            | (Design::Cancelled, "cancelled") => {}
            _ if DISRUPTION_REASONS.iter().any(|reason| outcome == format!("failed ({reason})")) => {
                report.disrupted += 1
            }
            _ => *report.unexplained.entry(format!("{design:?} -> {outcome}")).or_default() += 1,
        }
    }
    let mut ticks: Vec<i64> = jobs
        .scan_all()
        .await?
        .into_iter()
        .filter(|job| job.correlation_id == format!("schedule-{schedule_id}"))
        .filter_map(|job| job.run_at)
        .collect();
    ticks.sort();
    let fired = ticks.len();
    ticks.dedup();
    report.schedule_ticks = ticks.len();
    report.ticks_twice = fired - ticks.len();
    if let (Some(first), Some(last)) = (ticks.first(), ticks.last()) {
        report.ticks_missing = ((last - first) / 60_000 + 1) as usize - ticks.len();
    }
    let stream_arn = stack.created.stream_arns["JobsTable"].clone();
    let history = stream_history(&streams, &stream_arn).await?;
    report.completed_more_than_once = history.completed_twice;
    report.written_after_end = history.written_after_end;
    report.limited_jobs = history.limited_jobs;
    report.limited_most_at_once = history.limited_most_at_once;
    report.open_most_at_once = history.open_most_at_once;
    report.batches_not_completed_once =
        batches.keys().filter(|id| history.batch_completions.get(*id).copied().unwrap_or(0) != 1).count();
    // Every job ended: once the stream consumer has caught up, the count is back to zero.
    let mut still = 0;
    loop {
        report.open_count_at_end = open_jobs.count(OPEN_JOBS_TENANT).await?;
        still += 1;
        if report.open_count_at_end == 0 || still > options.stall.as_secs() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    report.started_early = history.started_early;
    report.dead_letters = queue_depth(&sqs, &dlq_url).await? as usize;
    report.left_in_job_queue = queue_depth(&sqs, &queue_url).await? as usize;
    report.faults_injected = proxy.counts.before.load(Ordering::SeqCst) + proxy.counts.after.load(Ordering::SeqCst);
    report.send_faults_injected = proxy.counts.send_message.load(Ordering::SeqCst);
    report.elapsed = started.elapsed();

    stack.stop().await;
    proxy_task.abort();
    drop(engines);
    Ok(report)
}

/// Waits until `done`, or until the deliveries `heard` so far stop changing for `stall`; answers whether
/// progress stopped first.
async fn until_delivered(stall: Duration, done: impl Fn() -> bool, heard: impl Fn() -> usize) -> bool {
    let mut last = (usize::MAX, Instant::now());
    while !done() {
        let now = heard();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > stall {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// The run's webhook receiver: verifies every delivery's signature (with the Standard Webhooks crate) and
/// answers `503` to the first attempt for every third path, `200` otherwise.
struct WebhookReceiver {
    url: String,
    /// Where `batch.completed` goes (an endpoint's URL).
    batch_url: String,
    heard: Arc<std::sync::Mutex<Vec<Heard>>>,
    batches: Arc<std::sync::Mutex<Vec<BatchHeard>>>,
}

/// A `batch.completed` delivery; the first attempt for every other batch is answered `503`.
#[derive(Debug, Clone)]
struct BatchHeard {
    batch_id: String,
    webhook_id: String,
    verified: bool,
    data: Value,
    answered: u16,
}

#[derive(Debug, Clone)]
struct Heard {
    path: usize,
    webhook_id: String,
    verified: bool,
    event: String,
    job_id: String,
    answered: u16,
}

impl WebhookReceiver {
    async fn start(secret: &str) -> anyhow::Result<WebhookReceiver> {
        let verifier = Arc::new(standardwebhooks::Webhook::new(secret).context("the webhook secret")?);
        let verifier_for_batches = verifier.clone();
        let heard: Arc<std::sync::Mutex<Vec<Heard>>> = Arc::default();
        let kept = heard.clone();
        let app = axum::Router::new().route(
            "/hook/{n}",
            axum::routing::post(
                move |axum::extract::Path(path): axum::extract::Path<usize>,
                      headers: axum::http::HeaderMap,
                      body: axum::body::Bytes| {
                    let (verifier, kept) = (verifier.clone(), kept.clone());
                    async move {
                        let verified = verifier.verify(&body, &headers).is_ok();
                        let parsed: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let webhook_id =
                            headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                        let mut heard = kept.lock().expect("lock");
                        let first = !heard.iter().any(|h| h.path == path);
                        let answered = if first && path % 3 == 0 { 503 } else { 200 };
                        heard.push(Heard {
                            path,
                            webhook_id,
                            verified,
                            event: parsed["type"].as_str().unwrap_or_default().to_string(),
                            job_id: parsed["data"]["jobId"].as_str().unwrap_or_default().to_string(),
                            answered,
                        });
                        axum::http::StatusCode::from_u16(answered).expect("a status")
                    }
                },
            ),
        );
        let batches: Arc<std::sync::Mutex<Vec<BatchHeard>>> = Arc::default();
        let (kept, batch_verifier) = (batches.clone(), verifier_for_batches);
        let app = app.route(
            "/batch",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (verifier, kept) = (batch_verifier.clone(), kept.clone());
                async move {
                    let verified = verifier.verify(&body, &headers).is_ok();
                    let parsed: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let batch_id = parsed["data"]["batchId"].as_str().unwrap_or_default().to_string();
                    let mut heard = kept.lock().expect("lock");
                    let first = !heard.iter().any(|h| h.batch_id == batch_id);
                    let answered =
                        if first && batch_id.ends_with(['0', '2', '4', '6', '8', 'a', 'c', 'e']) { 503 } else { 200 };
                    heard.push(BatchHeard {
                        batch_id,
                        webhook_id: headers
                            .get("webhook-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string(),
                        verified: verified && parsed["type"] == "batch.completed",
                        data: parsed["data"].clone(),
                        answered,
                    });
                    axum::http::StatusCode::from_u16(answered).expect("a status")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(WebhookReceiver { url: format!("{base}/hook"), batch_url: format!("{base}/batch"), heard, batches })
    }

    /// Batches with a verified `2xx` `batch.completed`.
    fn batches_delivered(&self, batch_ids: &HashSet<String>) -> usize {
        let heard = self.batches.lock().expect("lock");
        batch_ids
            .iter()
            .filter(|id| heard.iter().any(|h| &h.batch_id == *id && h.verified && h.answered == 200))
            .count()
    }

    fn batches_heard(&self) -> usize {
        self.batches.lock().expect("lock").len()
    }

    fn heard(&self) -> usize {
        self.heard.lock().expect("lock").len()
    }

    /// Jobs in `expected` (job id -> event) with a verified `2xx` delivery of their event.
    fn delivered(&self, expected: &HashMap<String, String>) -> usize {
        let heard = self.heard.lock().expect("lock");
        expected
            .iter()
            .filter(|(id, event)| {
                heard.iter().any(|h| &h.job_id == *id && &h.event == *event && h.verified && h.answered == 200)
            })
            .count()
    }

    /// Deliveries that failed verification, named another event than the job's end, came for a job
    /// that should get none (cancelled), or to another job's path.
    fn bad(&self, expected: &HashMap<String, String>, callbacks: &HashMap<String, usize>) -> usize {
        self.heard
            .lock()
            .expect("lock")
            .iter()
            .filter(|h| {
                !h.verified
                    || expected.get(&h.job_id) != Some(&h.event)
                    || callbacks.get(&h.job_id) != Some(&h.path)
                    || h.webhook_id.is_empty()
            })
            .count()
    }

    /// `2xx` deliveries beyond each job's first.
    fn repeated(&self) -> usize {
        let heard = self.heard.lock().expect("lock");
        let ok: Vec<&Heard> = heard.iter().filter(|h| h.answered == 200).collect();
        let distinct: HashSet<&str> = ok.iter().map(|h| h.job_id.as_str()).collect();
        ok.len() - distinct.len()
    }
}

/// Every job's status, with its error code once failed, or else what is moving (attempts, lease, last
/// error): what the quiescence check compares between rounds.
async fn scan_statuses(jobs: &JobStore) -> anyhow::Result<HashMap<String, (String, Option<String>)>> {
    let mut statuses = HashMap::new();
    for job in jobs.scan_all().await? {
        let detail = match job.status {
            JobStatus::Failed => job.error.map(|error| error.code),
            _ => Some(format!(
                "attempts={} lease={} last={:?}",
                job.attempts,
                job.lease.map(|lease| lease.expires_at).unwrap_or_default(),
                job.last_error.map(|error| error.code)
            )),
        };
        statuses.insert(job.job_id.as_str().to_string(), (job.status.as_str().to_string(), detail));
    }
    Ok(statuses)
}

/// What the table's whole stream shows.
struct History {
    /// Jobs that entered `completed` more than once.
    completed_twice: usize,
    /// Writes that changed a job after it had ended.
    written_after_end: usize,
    /// Claims (entering `processing`) made before the job's `runAt`.
    started_early: usize,
    /// Jobs of `LIMITED_TENANT`, and the most of their claims that were live at once.
    limited_jobs: usize,
    limited_most_at_once: usize,
    /// The most jobs of `OPEN_JOBS_TENANT` open (created, not ended) at once.
    open_most_at_once: usize,
    /// Per batch, how often its progress item turned `completed`.
    batch_completions: HashMap<String, usize>,
}

/// The tenant allowed only `ChaosOptions::open_jobs_limit` jobs waiting or running.
const OPEN_JOBS_TENANT: &str = "chaos-open";

/// The most at once of things that start (+1) and end (-1) at the given instants. An end and a start at
/// the same instant do not overlap.
fn most_at_once(mut edges: Vec<(i64, i32)>) -> usize {
    edges.sort();
    let (mut live, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        live += step;
        most = most.max(live);
    }
    most as usize
}

/// The tenant whose jobs may run only `ChaosOptions::limited_concurrency` at once.
const LIMITED_TENANT: &str = "chaos-limited";

/// The claims of one tenant's jobs, as the stream shows them: each from the write that took it to the
/// write that ended or released it (or a later claim's), or to its lease's expiry if that came first. A
/// worker holds its tenant's slot from before its claim to after its last write, or until the lease
/// expires: live claims at once are never more than the tenant's limit.
#[derive(Default)]
struct Claims {
    /// Per job, the claim live now: (its lease token, since, lease expiry).
    open: HashMap<String, (String, i64, i64)>,
    spans: Vec<(i64, i64)>,
    jobs: HashSet<String>,
}

impl Claims {
    fn saw(&mut self, job: &jobpipe_core::Job) {
        let id = job.job_id.as_str().to_string();
        self.jobs.insert(id.clone());
        // A live claim: `processing` under a lease that has not expired (a released lease keeps its token
        // with expiry 0).
        let live = job
            .lease
            .as_ref()
            .filter(|lease| job.status == JobStatus::Processing && lease.expires_at > job.updated_at)
            .map(|lease| (lease.token.clone(), lease.expires_at));
        if let Some((token, _, expires_at)) = self.open.get(&id)
            && live.as_ref() == Some(&(token.clone(), *expires_at))
        {
            return; // the same claim (progress)
        }
        if let Some((_, since, expires_at)) = self.open.remove(&id) {
            self.spans.push((since, expires_at.min(job.updated_at)));
        }
        if let Some((token, expires_at)) = live {
            self.open.insert(id, (token, job.updated_at, expires_at));
        }
    }

    /// The most claims live at the same instant.
    fn most_at_once(mut self) -> usize {
        self.spans.extend(self.open.into_values().map(|(_, since, expires_at)| (since, expires_at)));
        most_at_once(self.spans.iter().flat_map(|(a, b)| [(*a, 1), (*b, -1)]).collect())
    }
}

async fn stream_history(streams: &aws_sdk_dynamodbstreams::Client, stream_arn: &str) -> anyhow::Result<History> {
    let described = streams.describe_stream().stream_arn(stream_arn).send().await?;
    let mut completions: HashMap<String, usize> = HashMap::new();
    let mut batch_completions: HashMap<String, usize> = HashMap::new();
    let mut after_end = 0;
    let mut started_early = 0;
    let mut limited = Claims::default();
    // (instant, +1 created / -1 ended) of the open-jobs tenant's jobs.
    let mut open_edges: Vec<(i64, i32)> = Vec::new();
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
                // Read as the notifier reads it: the Lambda event record, its images as jobs.
                let record = stream_record(record, stream_arn);
                if is_batch_image(&record["dynamodb"]["NewImage"]) || is_batch_image(&record["dynamodb"]["OldImage"]) {
                    let batch = |name: &str| {
                        let image = &record["dynamodb"][name];
                        (!image.is_null()).then(|| batch_from_stream_image(image)).transpose()
                    };
                    let (old, new) = (batch("OldImage")?, batch("NewImage")?);
                    if let Some(new) = new.filter(|new| new.is_completed())
                        && !old.is_some_and(|old| old.is_completed())
                    {
                        *batch_completions.entry(new.batch_id.to_string()).or_default() += 1;
                    }
                    continue;
                }
                let image = |name: &str| {
                    let image = &record["dynamodb"][name];
                    (!image.is_null()).then(|| job_from_stream_image(image)).transpose()
                };
                let (old, new) = (image("OldImage")?, image("NewImage")?);
                let status = |job: &Option<jobpipe_core::Job>| job.as_ref().map(|job| job.status);
                if status(&new) == Some(JobStatus::Completed) && status(&old) != Some(JobStatus::Completed) {
                    let id = new.as_ref().map(|job| job.job_id.as_str().to_string()).unwrap_or_default();
                    *completions.entry(id).or_default() += 1;
                }
                if let Some(job) = new.as_ref().filter(|job| job.status == JobStatus::Processing)
                    && status(&old) != Some(JobStatus::Processing)
                    && job.run_at.is_some_and(|at| job.updated_at < at)
                {
                    started_early += 1;
                }
                if let Some(job) = new.as_ref().filter(|job| job.owner == LIMITED_TENANT) {
                    limited.saw(job);
                }
                if let Some(job) = new.as_ref().filter(|job| job.owner == OPEN_JOBS_TENANT) {
                    match &old {
                        None => open_edges.push((job.created_at, 1)),
                        Some(before) if job.status.is_terminal() && !before.status.is_terminal() => {
                            open_edges.push((job.updated_at, -1))
                        }
                        _ => {}
                    }
                }
                // After its end, a job's item changes only where the webhook sender keeps its deliveries.
                let ended = old.as_ref().is_some_and(|job| job.status.is_terminal());
                let job_part = |name: &str| {
                    let mut image = record["dynamodb"][name].clone();
                    if let Some(fields) = image.as_object_mut() {
                        fields.retain(|field, _| !field.starts_with(jobpipe_core::store::attr::WEBHOOK_PREFIX));
                    }
                    image
                };
                if ended && new.is_some() && job_part("NewImage") != job_part("OldImage") {
                    after_end += 1;
                }
            }
            match out.next_shard_iterator() {
                Some(next) => iterator = next.to_string(),
                None => break,
            }
        }
    }
    Ok(History {
        completed_twice: completions.values().filter(|n| **n > 1).count(),
        written_after_end: after_end,
        started_early,
        limited_jobs: limited.jobs.len(),
        limited_most_at_once: limited.most_at_once(),
        open_most_at_once: most_at_once(open_edges),
        batch_completions,
    })
}
