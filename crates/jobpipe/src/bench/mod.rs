//! `jobpipe bench`: speed and cost figures of the four functions next to the floor (a bare
//! `lambda_runtime` binary) and the Python Powertools baseline (`infra/baseline/`), all measured the same
//! way in one run against the same moto, and the local stack end to end. It prints one table; it
//! asserts nothing about time (targets are reported, met or not).

mod environment;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub use environment::{Environment, Launch, Usage, usage_of};

use crate::dev::{DevOptions, DevStack, LocalAws};
use crate::load::{LoadOptions, quantile};
use crate::template::Template;

/// The functions measured, by package, with their template logical ids.
const FUNCTIONS: [(&str, &str); 4] = [
    ("api-ingest", "ApiIngestFunction"),
    ("queue-processor", "QueueProcessorFunction"),
    ("notifier", "NotifierFunction"),
    ("websocket-connect", "WebsocketConnectFunction"),
];
const FLOOR: &str = "lambda-floor";
/// The owner every fixture event speaks for (`events/*.json`).
const FIXTURE_USER: &str = "fixture-user";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub root: PathBuf,
    /// Cold starts per function (median and p90 of these).
    pub cold_starts: usize,
    /// Requests or records each function handles for its CPU and memory figures.
    pub records: usize,
    /// Build the arm64 zips with `cargo lambda` to report their sizes.
    pub zips: bool,
    /// Measure the Python Powertools baseline (installs `.venv-baseline` on first use).
    pub baseline: bool,
    /// The end-to-end run through the local stack: steady rate and how long.
    pub e2e_rate: u32,
    pub e2e_seconds: u64,
}

/// One function's figures.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub name: String,
    pub init_ms: Vec<f64>,
    pub peak_rss_kb: u64,
    /// CPU per record of the first `WARM_UP` records (lazy set-up in the function and its libraries).
    pub first_cpu_per_record_us: f64,
    /// CPU per record after those: the steady cost.
    pub cpu_per_record_us: f64,
    pub records: usize,
    pub zip_bytes: Option<u64>,
}

impl Figures {
    fn init_p50(&self) -> f64 {
        quantile(&self.init_ms, 0.5)
    }
    fn init_p90(&self) -> f64 {
        quantile(&self.init_ms, 0.9)
    }
}

/// A two-function pipeline (ingest, then process) driven directly, the same way for both languages.
#[derive(Debug, Clone, Default)]
pub struct PipelineFigures {
    pub name: String,
    pub jobs: usize,
    pub completion_ms: Vec<f64>,
}

#[derive(Debug, Default)]
pub struct BenchReport {
    pub rust: Vec<Figures>,
    /// The `lambda_runtime` README's hello world (multi-threaded Tokio): what the targets compare to.
    pub floor: Figures,
    /// The same on Tokio's single-threaded runtime, as the jobpipe functions run.
    pub floor_single_thread: Figures,
    pub python: Vec<Figures>,
    pub pipelines: Vec<PipelineFigures>,
    pub stack_steady: Option<crate::load::LoadReport>,
    pub stack_saturated: Option<crate::load::LoadReport>,
    pub moto_writes_per_s: f64,
    /// Share of one core moto's process used while the stack ran as fast as it goes.
    pub moto_busy: Option<f64>,
}

pub async fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let root = &options.root;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let release = target_dir.join("release");
    let mut packages: Vec<&str> = FUNCTIONS.iter().map(|(package, _)| *package).collect();
    packages.push(FLOOR);
    eprintln!("building the release binaries ...");
    crate::dev::build_packages(root, &packages, true)?;
    let zips = if options.zips { arm64_zip_sizes(root, &target_dir, &packages)? } else { BTreeMap::new() };
    let python = if options.baseline { Some(baseline_python(root)?) } else { None };

    let template = Template::load(&root.join("template.yaml"))?;
    let local =
        LocalAws::start(root, &template, None, &format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
            .await?;
    let result = measure(options, &template, &local, &release, &zips, python.as_deref()).await;
    if let Some(mut moto) = local.moto {
        let _ = moto.kill();
        let _ = moto.wait();
    }
    result
}

async fn measure(
    options: &BenchOptions,
    template: &Template,
    local: &LocalAws,
    release: &Path,
    zips: &BTreeMap<String, u64>,
    python: Option<&Path>,
) -> anyhow::Result<BenchReport> {
    let mut report = BenchReport::default();
    let specs = template.functions()?;
    let jobs_table = local.created.tables.get("JobsTable").context("no JobsTable")?.clone();
    let (queue_url, queue_arn) = local.created.queues.get("JobsQueue").context("no JobsQueue")?.clone();
    let queue = Queue { sqs: local.clients.sqs.clone(), url: queue_url.clone(), arn: queue_arn };

    let rust_launch = |logical_id: &str| -> anyhow::Result<Launch> {
        let spec = specs
            .iter()
            .find(|s| s.logical_id == logical_id)
            .with_context(|| format!("{logical_id} is not in template.yaml"))?;
        let mut env = local.function_process(spec, release, "http://127.0.0.1:9", &BTreeMap::new())?.environment;
        if env.contains_key("AUTH_MODE") && logical_id == "ApiIngestFunction" {
            // As deployed: API Gateway's JWT authorizer has checked the token; the fixture carries its claims.
            env.insert("AUTH_MODE".into(), "apigateway".into());
        }
        Ok(Launch { program: release.join(&spec.binary), args: vec![], env, dir: None })
    };

    // The floor: any event in, the same event out.
    let floor = Launch {
        program: release.join(FLOOR),
        args: vec![],
        env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
        dir: None,
    };
    eprintln!("measuring {FLOOR} ...");
    report.floor = measure_function(FLOOR, &floor, options, zips, echo_events).await?;
    let mut single = floor.clone();
    single.env.insert("FLOOR_RUNTIME".into(), "current_thread".into());
    report.floor_single_thread =
        measure_function("lambda-floor (1 thread)", &single, options, zips, echo_events).await?;

    for (package, logical_id) in FUNCTIONS {
        eprintln!("measuring {package} ...");
        let launch = rust_launch(logical_id)?;
        let queue = queue.clone();
        let figures = match package {
            "api-ingest" => {
                measure_function(package, &launch, options, zips, |env, n| Box::pin(submit_jobs(env, n))).await?
            }
            "queue-processor" => {
                measure_function(package, &launch, options, zips, |env, n| {
                    let queue = queue.clone();
                    Box::pin(async move { process_queue(env, &queue, n).await })
                })
                .await?
            }
            "notifier" => measure_function(package, &launch, options, zips, |env, n| Box::pin(notify(env, n))).await?,
            _ => {
                let job_id = some_job_of(local, &jobs_table).await?;
                measure_function(package, &launch, options, zips, |env, n| {
                    let job_id = job_id.clone();
                    Box::pin(async move { subscribe(env, &job_id, n).await })
                })
                .await?
            }
        };
        report.rust.push(figures);
    }

    let rust_pipeline = (rust_launch("ApiIngestFunction")?, rust_launch("QueueProcessorFunction")?);
    report
        .pipelines
        .push(pipeline("rust", &rust_pipeline.0, &rust_pipeline.1, &queue, local, &jobs_table, options).await?);

    if let Some(python) = python {
        let idempotency_table = create_idempotency_table(local).await?;
        let python_launch = |module: &str| Launch {
            program: python.to_path_buf(),
            args: vec!["-m".into(), "awslambdaric".into(), format!("{module}.handler")],
            env: BTreeMap::from_iter(
                [
                    ("AWS_ENDPOINT_URL", local.endpoint.as_str()),
                    ("AWS_REGION", crate::resources::REGION),
                    ("AWS_DEFAULT_REGION", crate::resources::REGION),
                    ("AWS_ACCESS_KEY_ID", "local"),
                    ("AWS_SECRET_ACCESS_KEY", "local"),
                    ("JOBS_TABLE", jobs_table.as_str()),
                    ("JOBS_QUEUE_URL", queue_url.as_str()),
                    ("IDEMPOTENCY_TABLE", idempotency_table.as_str()),
                    ("POWERTOOLS_LOG_LEVEL", "INFO"),
                    ("PYTHONDONTWRITEBYTECODE", "1"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            ),
            dir: Some(options.root.join("infra/baseline")),
        };
        let (ingest, process) = (python_launch("ingest"), python_launch("process"));
        eprintln!("measuring the Python baseline ...");
        report.python.push(
            measure_function("api-ingest (Python)", &ingest, options, zips, |env, n| Box::pin(submit_jobs(env, n)))
                .await?,
        );
        report.python.push(
            measure_function("queue-processor (Python)", &process, options, zips, |env, n| {
                let queue = queue.clone();
                Box::pin(async move { process_queue(env, &queue, n).await })
            })
            .await?,
        );
        report.pipelines.push(pipeline("python", &ingest, &process, &queue, local, &jobs_table, options).await?);
    }

    report.moto_writes_per_s = moto_write_rate(local, &jobs_table).await?;

    eprintln!("end to end through the local stack ...");
    let mut dev = DevOptions::new(options.root.clone()).release();
    dev.build = false;
    dev.port = 0;
    dev.endpoint = Some(local.endpoint.clone());
    dev.prefix = format!("e{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stack = DevStack::start(dev).await?;
    let target = crate::ops::Target::resolve(&crate::ops::TargetOptions {
        api: stack.base_url(),
        stack: None,
        token: None,
        user: "bench".into(),
    })
    .await?;
    let steady = LoadOptions {
        duration: Duration::from_secs(options.e2e_seconds),
        rate: options.e2e_rate,
        concurrency: 32,
        drain_deadline: Duration::from_secs(120),
    };
    report.stack_steady = Some(crate::load::run(&target, &steady).await?);
    let saturated = LoadOptions { rate: 1000, duration: Duration::from_secs(options.e2e_seconds.min(10)), ..steady };
    let moto_pid = local.moto.as_ref().map(|moto| moto.id());
    let (moto_before, started) = (moto_pid.map(usage_of), Instant::now());
    report.stack_saturated = Some(crate::load::run(&target, &saturated).await?);
    if let (Some(pid), Some(before)) = (moto_pid, moto_before) {
        report.moto_busy = Some((usage_of(pid).cpu - before.cpu).as_secs_f64() / started.elapsed().as_secs_f64());
    }
    stack.stop().await;
    Ok(report)
}

type Workload<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<usize>> + Send + 'a>>;

/// Records handled first and reported apart, so one-time set-up does not blur the steady cost.
const WARM_UP: usize = 10;

/// Cold starts (init of each), then one environment handling `WARM_UP` and then `records` more: its
/// peak RSS and CPU per record of each part.
async fn measure_function<F>(
    name: &str,
    launch: &Launch,
    options: &BenchOptions,
    zips: &BTreeMap<String, u64>,
    workload: F,
) -> anyhow::Result<Figures>
where
    F: for<'a> Fn(&'a Environment, usize) -> Workload<'a>,
{
    let mut figures = Figures { name: name.to_string(), ..Default::default() };
    for _ in 0..options.cold_starts {
        let env = Environment::start(launch, name).await?;
        figures.init_ms.push(env.init.as_secs_f64() * 1000.0);
        env.stop().await;
    }
    let env = Environment::start(launch, name).await?;
    let per_record =
        |from: Usage, to: Usage, records: usize| (to.cpu - from.cpu).as_secs_f64() * 1e6 / records.max(1) as f64;
    let start = env.usage();
    let warmed = workload(&env, WARM_UP).await.with_context(|| format!("{name}: first records"))?;
    let warm = env.usage();
    let handled = workload(&env, options.records).await.with_context(|| format!("{name}: workload"))?;
    let end = env.usage();
    env.stop().await;
    figures.records = handled;
    figures.peak_rss_kb = end.peak_rss_kb;
    figures.first_cpu_per_record_us = per_record(start, warm, warmed);
    figures.cpu_per_record_us = per_record(warm, end, handled);
    figures.zip_bytes = zips.get(name).copied();
    Ok(figures)
}

/// The floor's workload: events it answers with themselves.
fn echo_events(env: &Environment, n: usize) -> Workload<'_> {
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
fn submit_event(n: usize) -> anyhow::Result<Value> {
    let mut event = fixture("api-post-job.json")?;
    event["body"] = json!(json!({"kind": "echo", "input": {"n": n}}).to_string());
    event["isBase64Encoded"] = json!(false);
    event["requestContext"]["requestId"] = json!(uuid::Uuid::new_v4().to_string());
    if let Some(headers) = event["headers"].as_object_mut() {
        headers.remove("idempotency-key");
    }
    Ok(event)
}

/// Submits `n` jobs; every answer must be a 202. Answers the job ids.
async fn submit_ids(env: &Environment, n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let answer = env.invoke(&submit_event(i)?).await?;
        if answer["statusCode"] != 202 {
            bail!("POST /jobs answered {answer}");
        }
        let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("{}"))?;
        ids.push(body["jobId"].as_str().context("no jobId in the answer")?.to_string());
    }
    Ok(ids)
}

async fn submit_jobs(env: &Environment, n: usize) -> anyhow::Result<usize> {
    Ok(submit_ids(env, n).await?.len())
}

#[derive(Clone)]
struct Queue {
    sqs: aws_sdk_sqs::Client,
    url: String,
    arn: String,
}

impl Queue {
    /// Receives up to 10 messages, as an event source mapping with a zero batching window would.
    async fn receive(&self, wait: i32) -> anyhow::Result<Vec<aws_sdk_sqs::types::Message>> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await?;
        Ok(received.messages.unwrap_or_default())
    }

    /// Deletes what the function did not report as failed, as Lambda does after a batch.
    async fn settle(&self, messages: &[aws_sdk_sqs::types::Message], answer: &Value) -> anyhow::Result<usize> {
        let failed: Vec<&str> = answer["batchItemFailures"]
            .as_array()
            .map(|f| f.iter().filter_map(|x| x["itemIdentifier"].as_str()).collect())
            .unwrap_or_default();
        if !failed.is_empty() {
            bail!("the batch reported failures: {failed:?}");
        }
        for message in messages {
            if let Some(handle) = &message.receipt_handle {
                self.sqs.delete_message().queue_url(&self.url).receipt_handle(handle).send().await?;
            }
        }
        Ok(messages.len())
    }

    fn event(&self, messages: &[aws_sdk_sqs::types::Message]) -> Value {
        json!({"Records": messages.iter().map(|m| crate::sources::sqs_record(m, &self.arn)).collect::<Vec<_>>()})
    }
}

/// Handles the queue's messages in batches of up to 10 until `n` records were handled.
async fn process_queue(env: &Environment, queue: &Queue, n: usize) -> anyhow::Result<usize> {
    let mut handled = 0;
    let mut idle = 0;
    while handled < n {
        let messages = queue.receive(0).await?;
        if messages.is_empty() {
            idle += 1;
            if idle > 20 {
                bail!("the queue ran dry after {handled} of {n} records");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let answer = env.invoke(&queue.event(&messages)).await?;
        handled += queue.settle(&messages, &answer).await?;
    }
    Ok(handled)
}

/// Stream batches of 10 job changes (the fixture's record, repeated), with no subscriber to push to.
async fn notify(env: &Environment, n: usize) -> anyhow::Result<usize> {
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
async fn subscribe(env: &Environment, job_id: &str, n: usize) -> anyhow::Result<usize> {
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

async fn some_job_of(local: &LocalAws, table: &str) -> anyhow::Result<String> {
    let items = local.clients.dynamodb.scan().table_name(table).limit(50).send().await?.items.unwrap_or_default();
    items
        .iter()
        .find(|item| item.get("owner").and_then(|o| o.as_s().ok()).is_some_and(|o| o == FIXTURE_USER))
        .and_then(|item| item.get("jobId")?.as_s().ok().cloned())
        .context("no job of the fixture user to subscribe to (api-ingest runs first)")
}

/// Ingest and processor driven directly at a steady rate, one environment each, messages moved by this
/// process as an event source mapping would: submit -> `completedAt` for each job.
async fn pipeline(
    name: &str,
    ingest: &Launch,
    process: &Launch,
    queue: &Queue,
    local: &LocalAws,
    table: &str,
    options: &BenchOptions,
) -> anyhow::Result<PipelineFigures> {
    eprintln!("pipeline ({name}) ...");
    let ingest_env = Environment::start(ingest, "ingest").await?;
    let process_env = Environment::start(process, "process").await?;
    let jobs = options.records.min(100);
    let interval = Duration::from_secs_f64(1.0 / options.e2e_rate.max(1) as f64);
    let poller = async {
        let mut handled = 0;
        let started = Instant::now();
        while handled < jobs && started.elapsed() < Duration::from_secs(120) {
            let messages = queue.receive(1).await?;
            if messages.is_empty() {
                continue;
            }
            let answer = process_env.invoke(&queue.event(&messages)).await?;
            handled += queue.settle(&messages, &answer).await?;
        }
        anyhow::Ok(handled)
    };
    let submitter = async {
        let mut sent = Vec::with_capacity(jobs);
        let mut ticks = tokio::time::interval(interval);
        for i in 0..jobs {
            ticks.tick().await;
            let sent_at = epoch_ms();
            let answer = ingest_env.invoke(&submit_event(i)?).await?;
            let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("{}"))?;
            sent.push((body["jobId"].as_str().context("no jobId")?.to_string(), sent_at));
        }
        anyhow::Ok(sent)
    };
    let (handled, sent) = tokio::join!(poller, submitter);
    let (handled, sent) = (handled?, sent?);
    ingest_env.stop().await;
    process_env.stop().await;
    let mut figures = PipelineFigures { name: name.into(), jobs: handled, completion_ms: Vec::new() };
    for (job_id, sent_at) in sent {
        let item = local
            .clients
            .dynamodb
            .get_item()
            .table_name(table)
            .key("jobId", aws_sdk_dynamodb::types::AttributeValue::S(job_id))
            .consistent_read(true)
            .send()
            .await?
            .item
            .unwrap_or_default();
        if let Some(completed) = item.get("completedAt").and_then(|c| c.as_n().ok()).and_then(|n| n.parse::<f64>().ok())
        {
            figures.completion_ms.push(completed - sent_at);
        }
    }
    Ok(figures)
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

async fn create_idempotency_table(local: &LocalAws) -> anyhow::Result<String> {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let name = format!("baseline-idempotency-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    local
        .clients
        .dynamodb
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("id").attribute_type(ScalarAttributeType::S).build()?,
        )
        .key_schema(KeySchemaElement::builder().attribute_name("id").key_type(KeyType::Hash).build()?)
        .send()
        .await?;
    Ok(name)
}

/// moto's own ceiling: conditional-free PutItems from 4 tasks for 3 s.
async fn moto_write_rate(local: &LocalAws, table: &str) -> anyhow::Result<f64> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let started = Instant::now();
    let window = Duration::from_secs(3);
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (dynamodb, table) = (local.clients.dynamodb.clone(), table.to_string());
        tasks.push(tokio::spawn(async move {
            let mut writes = 0u64;
            while started.elapsed() < window {
                dynamodb
                    .put_item()
                    .table_name(&table)
                    .item("jobId", AttributeValue::S(format!("moto-probe-{worker}-{writes}")))
                    .send()
                    .await?;
                writes += 1;
            }
            anyhow::Ok(writes)
        }));
    }
    let mut writes = 0;
    for task in tasks {
        writes += task.await??;
    }
    Ok(writes as f64 / started.elapsed().as_secs_f64())
}

/// `cargo lambda build --release --arm64 --output-format zip` (from the venv `cargo xtask setup` made),
/// answering each zip's size by package.
fn arm64_zip_sizes(root: &Path, target_dir: &Path, packages: &[&str]) -> anyhow::Result<BTreeMap<String, u64>> {
    let cargo_lambda = root.join(".venv/bin/cargo-lambda");
    if !cargo_lambda.exists() {
        bail!("cargo-lambda is installed by `cargo xtask setup`; run it first (or pass --no-zips)");
    }
    let lambda_dir = target_dir.join("lambda-arm64");
    eprintln!("building the arm64 zips with cargo lambda ...");
    let mut command = std::process::Command::new(&cargo_lambda);
    command.current_dir(root).args([
        "lambda",
        "build",
        "--release",
        "--arm64",
        "--output-format",
        "zip",
        "--lambda-dir",
    ]);
    command.arg(&lambda_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![root.join(".venv/bin")];
    paths.extend(std::env::split_paths(&path));
    command.env("PATH", std::env::join_paths(paths)?);
    let status = command.status().context("running cargo lambda")?;
    if !status.success() {
        bail!("cargo lambda build failed ({status})");
    }
    let mut sizes = BTreeMap::new();
    for package in packages {
        let zip = lambda_dir.join(package).join("bootstrap.zip");
        sizes.insert(package.to_string(), std::fs::metadata(&zip).with_context(|| format!("{zip:?}"))?.len());
    }
    Ok(sizes)
}

/// The baseline's interpreter, in `.venv-baseline` (`cargo xtask setup-baseline` installs the pinned
/// `infra/baseline/requirements.txt`, again when it changes).
fn baseline_python(root: &Path) -> anyhow::Result<PathBuf> {
    crate::dev::xtask(root, "setup-baseline")?;
    Ok(root.join(".venv-baseline/bin/python"))
}

/// Targets from issue #7, reported as met or not.
const INIT_VS_FLOOR_MAX: f64 = 2.0;
const INIT_VS_PYTHON_MIN: f64 = 10.0;
const RSS_MAX_KB: u64 = 32 * 1024;
const ZIP_MAX_BYTES: u64 = 8 * 1024 * 1024;
const CPU_VS_PYTHON_MIN: f64 = 20.0;
const E2E_P50_MAX_MS: f64 = 100.0;

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

impl BenchReport {
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mb = |bytes: Option<u64>| bytes.map(|b| format!("{:.2} MB", b as f64 / 1e6)).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "\n{:<26} {:>9} {:>9} {:>7} {:>10} {:>7} {:>12} {:>11} {:>10}",
            "function",
            "init p50",
            "init p90",
            "x floor",
            "peak RSS",
            "x floor",
            "CPU 1st 10",
            "CPU/record",
            "arm64 zip"
        );
        let floor = &self.floor;
        let rows = [floor, &self.floor_single_thread].into_iter().chain(&self.rust).chain(&self.python);
        for f in rows {
            let _ = writeln!(
                out,
                "{:<26} {:>6.1} ms {:>6.1} ms {:>7.2} {:>7.1} MB {:>7.2} {:>9.0} us {:>8.0} us {:>10}",
                f.name,
                f.init_p50(),
                f.init_p90(),
                f.init_p50() / floor.init_p50().max(0.001),
                f.peak_rss_kb as f64 / 1024.0,
                f.peak_rss_kb as f64 / floor.peak_rss_kb.max(1) as f64,
                f.first_cpu_per_record_us,
                f.cpu_per_record_us,
                mb(f.zip_bytes),
            );
        }
        let _ = writeln!(
            out,
            "({} cold starts each. CPU: user+sys of the function process (all threads) per request or record, \
             waits on moto excluded; `1st 10` is the first {WARM_UP} after init, CPU/record the {} after them)",
            floor.init_ms.len(),
            floor.records
        );

        let _ = writeln!(out, "\nRust / Python (same harness, same moto):");
        for (rust, python) in [("api-ingest", "api-ingest (Python)"), ("queue-processor", "queue-processor (Python)")] {
            let (Some(r), Some(p)) =
                (self.rust.iter().find(|f| f.name == rust), self.python.iter().find(|f| f.name == python))
            else {
                continue;
            };
            let _ = writeln!(
                out,
                "  {rust:<16} init {:.3}x ({:.0}x faster)  RSS {:.2}x  CPU/record {:.3}x ({:.0}x less)",
                r.init_p50() / p.init_p50(),
                p.init_p50() / r.init_p50(),
                r.peak_rss_kb as f64 / p.peak_rss_kb as f64,
                r.cpu_per_record_us / p.cpu_per_record_us,
                p.cpu_per_record_us / r.cpu_per_record_us,
            );
        }
        for pipeline in &self.pipelines {
            let _ = writeln!(
                out,
                "  pipeline {:<8} submit -> completed p50 {:.1} ms  p99 {:.1} ms ({} jobs, one environment each, direct)",
                pipeline.name,
                quantile(&pipeline.completion_ms, 0.5),
                quantile(&pipeline.completion_ms, 0.99),
                pipeline.completion_ms.len()
            );
        }
        if let [rust, python] = &self.pipelines[..] {
            let _ = writeln!(
                out,
                "  pipeline latency Rust/Python p50 {:.2}x",
                quantile(&rust.completion_ms, 0.5) / quantile(&python.completion_ms, 0.5)
            );
        }

        let _ = writeln!(out, "\nLocal stack end to end (release builds, echo jobs):");
        if let Some(steady) = &self.stack_steady {
            let _ = write!(out, "steady:\n{}", steady.table());
        }
        if let Some(saturated) = &self.stack_saturated {
            let _ = write!(out, "as fast as it goes (at most 32 in flight):\n{}", saturated.table());
        }
        let _ = writeln!(
            out,
            "moto alone: {:.0} PutItem/s from 4 clients (its DynamoDB requests are served one at a time); a job costs \
             it about 7 DynamoDB requests plus the SQS and stream calls around them",
            self.moto_writes_per_s,
        );
        if let Some(busy) = self.moto_busy {
            let _ = writeln!(
                out,
                "moto's one Python process used {:.0}% of a core in that run, serving DynamoDB one request at a time: \
                 the local ceiling (the functions' own CPU per job is under 2 ms, see above)",
                busy * 100.0
            );
        }

        let _ = writeln!(out, "\nTargets:");
        let worst_floor = self.rust.iter().map(|f| f.init_p50() / floor.init_p50().max(0.001)).fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "  init within {INIT_VS_FLOOR_MAX}x of the floor: worst {worst_floor:.2}x  {}",
            verdict(worst_floor <= INIT_VS_FLOOR_MAX)
        );
        let worst_rss = self.rust.iter().map(|f| f.peak_rss_kb).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "  peak RSS under 32 MB: worst {:.1} MB  {}",
            worst_rss as f64 / 1024.0,
            verdict(worst_rss < RSS_MAX_KB)
        );
        let zips: Vec<u64> = self.rust.iter().filter_map(|f| f.zip_bytes).collect();
        if !zips.is_empty() {
            let worst = zips.iter().copied().max().unwrap_or(0);
            let _ =
                writeln!(out, "  arm64 zip under 8 MB: worst {}  {}", mb(Some(worst)), verdict(worst < ZIP_MAX_BYTES));
        }
        for (rust, python) in [("api-ingest", "api-ingest (Python)"), ("queue-processor", "queue-processor (Python)")] {
            if let (Some(r), Some(p)) =
                (self.rust.iter().find(|f| f.name == rust), self.python.iter().find(|f| f.name == python))
            {
                let init = p.init_p50() / r.init_p50();
                let cpu = p.cpu_per_record_us / r.cpu_per_record_us;
                let _ = writeln!(
                    out,
                    "  {rust}: init {init:.0}x faster than Python (target {INIT_VS_PYTHON_MIN}x)  {}",
                    verdict(init >= INIT_VS_PYTHON_MIN)
                );
                let _ = writeln!(
                    out,
                    "  {rust}: CPU/record {cpu:.0}x below Python (target {CPU_VS_PYTHON_MIN}x)  {}",
                    verdict(cpu >= CPU_VS_PYTHON_MIN)
                );
            }
        }
        if let Some(steady) = &self.stack_steady {
            let p50 = quantile(&steady.completion_ms, 0.5);
            let _ = writeln!(
                out,
                "  local end-to-end p50 under {E2E_P50_MAX_MS} ms: {p50:.1} ms  {}",
                verdict(p50 < E2E_P50_MAX_MS)
            );
        }
        out
    }
}
