//! Fairness between tenants through the whole local stack: a noisy tenant's backlog of 2,000 jobs and a
//! quiet tenant's 20, measured on a fair queue (every job message carries its owner as `MessageGroupId`,
//! and the local SQS hands messages out as AWS's fair queues do) and on the same queue with fairness
//! switched off. Queue waits are printed; the verdict is by counts (how many of the noisy tenant's jobs
//! started ahead of a quiet job that was already waiting), so it does not depend on the machine's speed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use jobpipe::load::quantile;
use jobpipe::ops::{Target, TargetOptions};
use jobpipe_core::JobStatus;
use jobpipe_core::clock::from_rfc3339;
use jobpipe_emulator::dev::DevStack;
use jobpipe_emulator::faults::{CallHook, FaultProxy, HookVerdict};
use jobpipe_testkit::local_stack::*;
use serde_json::json;

const NOISY_JOBS: usize = 2_000;
const QUIET_JOBS: usize = 20;
/// Each job's own run time.
const RUN_MS: u64 = 50;
/// How long after acceptance the reconciler first looks at a job (`DISPATCH_GRACE_SECONDS`).
const DISPATCH_GRACE: Duration = Duration::from_secs(1800);
/// Messages the local processor's mapping holds at most: 4 batches of 10 (`local_sqs_concurrency`).
const MAPPING_CAPACITY: usize = 40;

/// One tenant's jobs as they ran: how long each waited, and how many of the other tenant's jobs
/// started while each waited.
struct Waits {
    waits_ms: Vec<f64>,
    overtaken_by: Vec<usize>,
}

/// Submits the noisy backlog while the mapping's polls are held, lets them go, submits the quiet jobs at
/// once, and waits until the queue has drained. Answers (noisy, quiet).
async fn run(fair: bool) -> (Waits, Waits) {
    let (release, released) = tokio::sync::watch::channel(false);
    // Until released, every receive finds nothing (after a pause, as a long poll would), so the backlog
    // builds whatever the machine's speed. (Holding the calls instead would let a client give up on a
    // call that then receives messages, which stay invisible for the visibility timeout.)
    // It also notes when each job's message was sent: a quiet job is waiting from then.
    let sent_at: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let hook: CallHook = {
        let sent_at = sent_at.clone();
        Arc::new(move |target, call| {
            let (released, sent_at) = (released.clone(), sent_at.clone());
            Box::pin(async move {
                if target == "AmazonSQS.ReceiveMessage" && !*released.borrow() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return HookVerdict::Swallow;
                }
                if target == "AmazonSQS.SendMessage"
                    && let Some(body) = call["MessageBody"].as_str()
                    && let Ok(message) = serde_json::from_str::<serde_json::Value>(body)
                    && let Some(job_id) = message["jobId"].as_str()
                {
                    sent_at.lock().unwrap().entry(job_id.to_string()).or_insert_with(now_ms);
                }
                HookVerdict::Forward
            })
        })
    };
    // Engines of this run's own: 2,000 jobs' worth of items slowed the next run on a shared DynamoDB
    // Local (the run without fairness took twice as long as the first), and would slow other tests.
    let (_engines, own) = jobpipe_testkit::own_engines();
    let proxy = FaultProxy::new(&own, 0.0, 0.0);
    proxy.set_hook(hook);
    let (url, serving) = proxy.serve().await.expect("serving the proxy");
    let endpoints = jobpipe_emulator::aws::Endpoints::one(url);
    let stack = start_stack_with(|options| {
        options.endpoints = Some(endpoints);
        options.parameters.insert("TenantSubmissionsPerSecond".into(), "0".into());
        // Jobs that wait their turn are not the reconciler's business here: with the default grace (a
        // minute) it re-checked thousands of waiting jobs, and DynamoDB Local spent the run on that.
        options.extra_env.insert("DISPATCH_GRACE_SECONDS".into(), DISPATCH_GRACE.as_secs().to_string());
    })
    .await;
    let (queue_url, _) = stack.created.queues["JobsQueue"].clone();
    let sqs = aws_sdk_sqs::Client::new(&jobpipe_emulator::aws::sdk_config(&own.aws));
    if !fair {
        sqs.tag_queue().queue_url(&queue_url).tags("jobpipe-emulator:fair-queues", "off").send().await.unwrap();
    }
    let (noisy, quiet) = (target(&stack, "noisy").await, target(&stack, "quiet").await);
    let noisy_ids = accept_backlog(&stack, "noisy", NOISY_JOBS).await;
    let opened_at = now_ms();
    release.send_replace(true);
    let quiet_ids = submit(&quiet, QUIET_JOBS).await;
    drained(&sqs, &queue_url).await;

    let sent_at = sent_at.lock().unwrap().clone();
    let noisy_jobs = ended(&noisy, &noisy_ids, &sent_at).await;
    let quiet_jobs = ended(&quiet, &quiet_ids, &sent_at).await;
    let noisy_starts: Vec<i64> = noisy_jobs.iter().map(|(_, started)| *started).collect();
    let quiet_starts: Vec<i64> = quiet_jobs.iter().map(|(_, started)| *started).collect();
    // Waits count from the later of the message's sending and the consumers' start; "overtaken" counts
    // the other tenant's starts while the message was in the queue.
    let waits = |jobs: &[(i64, i64)], others: &[i64]| Waits {
        waits_ms: jobs.iter().map(|(sent, started)| (started - sent.max(&opened_at)) as f64).collect(),
        overtaken_by: jobs
            .iter()
            .map(|(sent, started)| others.iter().filter(|other| *other > sent && *other < started).count())
            .collect(),
    };
    let figures = (waits(&noisy_jobs, &quiet_starts), waits(&quiet_jobs, &noisy_starts));
    stack.stop().await;
    serving.abort();
    figures
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn target(stack: &DevStack, user: &str) -> Target {
    Target::resolve(&TargetOptions { api: stack.base_url(), stack: None, token: None, user: user.into() })
        .await
        .unwrap()
}

/// Accepts `count` echo jobs of `owner` that each run `RUN_MS` as api-ingest does (the same `Intake`
/// and `Dispatcher`, so the same messages), from this process: through the HTTP API the backlog alone
/// took a minute here. Answers their ids.
async fn accept_backlog(stack: &DevStack, owner: &str, count: usize) -> Vec<String> {
    use jobpipe_core::dispatch::{Dispatcher, QueueRoutes};
    use jobpipe_core::intake::{Accepted, Intake, NewJob, StartAt};
    use jobpipe_core::payload::PayloadStore;
    use jobpipe_core::store::JobStore;
    let config = |endpoint: &str| jobpipe_emulator::aws::sdk_config(endpoint);
    let store = JobStore::new(
        aws_sdk_dynamodb::Client::new(&config(&stack.endpoints.dynamodb)),
        &stack.created.tables["JobsTable"],
        86_400,
    );
    let payloads = PayloadStore::new(
        aws_sdk_s3::Client::new(&config(&stack.endpoints.aws)),
        &stack.created.buckets["PayloadBucket"],
        4096,
    );
    let dispatcher = Dispatcher::new(
        aws_sdk_sqs::Client::new(&config(&stack.endpoints.aws)),
        QueueRoutes::single(&stack.created.queues["JobsQueue"].0),
    );
    let intake = Intake { store: &store, payloads: &payloads, dispatcher: &dispatcher, dispatch_grace: DISPATCH_GRACE };
    let intake = &intake;
    stream::iter(0..count)
        .map(|n| async move {
            let new = NewJob {
                owner: owner.into(),
                kind: "echo".into(),
                input: json!({"n": n, "sleepMs": RUN_MS}),
                idempotency_key: None,
                correlation_id: format!("backlog-{n}"),
                start: StartAt::Now,
                callback_url: None,
            };
            match intake.accept(new, now_ms()).await.expect("accepted") {
                Accepted::New(job) => job.job_id.to_string(),
                other => panic!("expected a new job, got {other:?}"),
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Submits `count` echo jobs that each run `RUN_MS` through the API, 16 at a time; answers their ids.
async fn submit(target: &Target, count: usize) -> Vec<String> {
    stream::iter(0..count)
        .map(|n| async move {
            let job = target.submit("echo", json!({"n": n, "sleepMs": RUN_MS})).await.expect("accepted");
            job.job_id.to_string()
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Waits until the queue holds no message, for as long as it keeps shrinking.
async fn drained(sqs: &aws_sdk_sqs::Client, queue_url: &str) {
    let (mut least, mut still) = (u64::MAX, 0);
    loop {
        let depth = jobpipe_emulator::resources::queue_depth(sqs, queue_url).await.unwrap();
        if depth == 0 {
            return;
        }
        (least, still) = if depth < least { (depth, 0) } else { (least, still + 1) };
        assert!(still < 240, "the queue stopped draining at {depth} messages");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Each job's (message sent, startedAt) in ms; every one completed at its first attempt.
async fn ended(target: &Target, ids: &[String], sent_at: &HashMap<String, i64>) -> Vec<(i64, i64)> {
    stream::iter(ids)
        .map(|id| async move {
            let job = target.status(id).await.unwrap();
            assert_eq!((job.status, job.attempts), (JobStatus::Completed, 1), "{job:?}");
            let started = from_rfc3339(job.started_at.as_deref().unwrap()).unwrap();
            (*sent_at.get(id).expect("its message went through the proxy"), started)
        })
        .buffer_unordered(16)
        .collect()
        .await
}

fn summary(waits: &Waits) -> String {
    let overtaken: Vec<f64> = waits.overtaken_by.iter().map(|n| *n as f64).collect();
    format!(
        "queue wait p50 {:>6.0} ms  p99 {:>6.0} ms   overtaken by the other tenant's jobs: p50 {:>4.0}  max {:>4.0}",
        quantile(&waits.waits_ms, 0.5),
        quantile(&waits.waits_ms, 0.99),
        quantile(&overtaken, 0.5),
        quantile(&overtaken, 1.0),
    )
}

/// With fairness, a quiet job that waits behind a noisy tenant's backlog of 2,000 is overtaken by at most
/// the jobs the consumers already held (plus a batch each); without it, by most of the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenants_backlog_does_not_hold_up_a_quiet_tenant_on_a_fair_queue() {
    let (fair_noisy, fair_quiet) = run(true).await;
    let (plain_noisy, plain_quiet) = run(false).await;
    println!(
        "{NOISY_JOBS} noisy and {QUIET_JOBS} quiet jobs of {RUN_MS} ms each (waits from the later of submission and the consumers' start):"
    );
    println!("  fair queue     noisy  {}", summary(&fair_noisy));
    println!("  fair queue     quiet  {}", summary(&fair_quiet));
    println!("  without        noisy  {}", summary(&plain_noisy));
    println!("  without        quiet  {}", summary(&plain_quiet));
    let fair_worst = fair_quiet.overtaken_by.iter().max().copied().unwrap();
    assert!(
        fair_worst <= 2 * MAPPING_CAPACITY,
        "on a fair queue a quiet job was overtaken by {fair_worst} noisy jobs (the consumers hold {MAPPING_CAPACITY})"
    );
    let mut plain = plain_quiet.overtaken_by.clone();
    plain.sort();
    assert!(
        plain[plain.len() / 2] >= NOISY_JOBS / 2,
        "without fairness the quiet jobs should wait behind the backlog (the measurement's baseline): {plain:?}"
    );
}
