//! `jobpipe bench`: speed and cost figures of the template's functions next to the floor (a bare
//! `lambda_runtime` binary) and the Python Powertools baseline (`infra/baseline/`), all measured the same
//! way in one run against the same local engines (DynamoDB Local and moto), and the local stack end to end. It prints one table; it
//! asserts nothing about time (targets are reported, met or not).
//!
//! `environment` is one measured execution environment, `workloads` what each function is given to do,
//! `pipelines` ingest and processor driven together, `report` the table.

mod environment;
mod pipelines;
mod report;
mod workloads;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jobpipe_core::store::JobStore;
use jobpipe_emulator::aws::{LocalAws, REGION};
use jobpipe_emulator::dev::{DevOptions, DevStack};
use jobpipe_emulator::runtime::FunctionProcess;
use jobpipe_emulator::sources::SqsMapping;
use jobpipe_emulator::template::Template;

pub use environment::{Environment, Usage, usage_of};
pub use report::{BenchReport, Figures, PipelineFigures};
use workloads::Workload;

use crate::load::LoadOptions;

const FLOOR: &str = "lambda-floor";

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

pub async fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let root = &options.root;
    let template = Template::load(&root.join("template.yaml"))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let release = target_dir.join("release");
    let functions = template.functions()?;
    let mut packages: Vec<&str> = functions.iter().map(|f| f.binary.as_str()).collect();
    packages.push(FLOOR);
    eprintln!("building the release binaries ...");
    jobpipe_emulator::setup::build_packages(root, &packages, true)?;
    let zips = if options.zips { arm64_zip_sizes(root, &target_dir, &packages)? } else { BTreeMap::new() };
    let python = if options.baseline { Some(baseline_python(root)?) } else { None };

    let local =
        LocalAws::start(root, &template, None, &format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
            .await?;
    measure(options, &template, &local, &release, &zips, python.as_deref()).await
}

/// The jobs table and the queue the workloads use.
pub(crate) struct Bench {
    pub jobs: JobStore,
    pub queue: SqsMapping,
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
    let bench = Bench {
        jobs: JobStore::new(local.clients.dynamodb.clone(), &jobs_table, 86_400),
        queue: SqsMapping::new(local.clients.sqs.clone(), queue_url.clone(), queue_arn),
    };

    let rust_process = |binary: &str| -> anyhow::Result<FunctionProcess> {
        let spec = specs
            .iter()
            .find(|s| s.binary == binary)
            .with_context(|| format!("no function of template.yaml is built from {binary}"))?;
        let mut process = local.function_process(spec, release, "http://127.0.0.1:9", &BTreeMap::new())?;
        if process.environment.contains_key("AUTH_MODE") && binary == "api-ingest" {
            // As deployed: API Gateway's JWT authorizer has checked the token; the fixture carries its claims.
            process.environment.insert("AUTH_MODE".into(), "apigateway".into());
        }
        Ok(FunctionProcess { instances: 1, timeout: Duration::from_secs(60), ..process })
    };

    // The floor: any event in, the same event out.
    let mut floor = FunctionProcess::new(FLOOR, release.join(FLOOR));
    floor.environment.insert("RUST_LOG".into(), "info".into());
    eprintln!("measuring {FLOOR} ...");
    report.floor = measure_function(FLOOR, &floor, options, zips, workloads::echo_events).await?;
    let mut single = floor.clone();
    single.environment.insert("FLOOR_RUNTIME".into(), "current_thread".into());
    report.floor_single_thread =
        measure_function("lambda-floor (1 thread)", &single, options, zips, workloads::echo_events).await?;

    // api-ingest first: the others work on the jobs it made.
    let mut binaries: Vec<&str> = specs.iter().map(|s| s.binary.as_str()).collect();
    binaries.sort_by_key(|binary| *binary != "api-ingest");
    for binary in binaries {
        eprintln!("measuring {binary} ...");
        let process = rust_process(binary)?;
        let figures = match binary {
            "api-ingest" => {
                measure_function(binary, &process, options, zips, |env, n| Box::pin(workloads::submit_jobs(env, n)))
                    .await?
            }
            "queue-processor" => {
                measure_function(binary, &process, options, zips, |env, n| {
                    let queue = bench.queue.clone();
                    Box::pin(async move { workloads::process_queue(env, &queue, n).await })
                })
                .await?
            }
            "notifier" => {
                measure_function(binary, &process, options, zips, |env, n| Box::pin(workloads::notify(env, n))).await?
            }
            "websocket-connect" => {
                let job_id = workloads::some_job_of_the_fixture_user(&bench.jobs).await?;
                measure_function(binary, &process, options, zips, |env, n| {
                    let job_id = job_id.clone();
                    Box::pin(async move { workloads::subscribe(env, &job_id, n).await })
                })
                .await?
            }
            other => bail!("the bench has no workload for {other}: add one to bench/workloads.rs"),
        };
        report.rust.push(figures);
    }

    let (ingest, process) = (rust_process("api-ingest")?, rust_process("queue-processor")?);
    report.pipelines.push(pipelines::pipeline("rust", &ingest, &process, &bench, options).await?);

    if let Some(python) = python {
        let idempotency_table = create_scratch_table(local, "idempotency").await?;
        let python_process = |module: &str| FunctionProcess {
            args: vec!["-m".into(), "awslambdaric".into(), format!("{module}.handler")],
            dir: Some(options.root.join("infra/baseline")),
            environment: BTreeMap::from_iter(
                [
                    ("AWS_ENDPOINT_URL", local.endpoints.aws.as_str()),
                    ("AWS_ENDPOINT_URL_DYNAMODB", local.endpoints.dynamodb.as_str()),
                    ("AWS_REGION", REGION),
                    ("AWS_DEFAULT_REGION", REGION),
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
            ..FunctionProcess::new(module, python.to_path_buf())
        };
        let (ingest, process) = (python_process("ingest"), python_process("process"));
        eprintln!("measuring the Python baseline ...");
        report.python.push(
            measure_function("api-ingest (Python)", &ingest, options, zips, |env, n| {
                Box::pin(workloads::submit_jobs(env, n))
            })
            .await?,
        );
        report.python.push(
            measure_function("queue-processor (Python)", &process, options, zips, |env, n| {
                let queue = bench.queue.clone();
                Box::pin(async move { workloads::process_queue(env, &queue, n).await })
            })
            .await?,
        );
        report.pipelines.push(pipelines::pipeline("python", &ingest, &process, &bench, options).await?);
    }

    report.dynamodb_writes_per_s = dynamodb_write_rate(local).await?;

    eprintln!("end to end through the local stack ...");
    let mut dev = DevOptions::new(options.root.clone()).release();
    dev.build = false;
    dev.port = 0;
    dev.endpoints = Some(local.endpoints.clone());
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
    let engines: Vec<(&'static str, u32)> = match &local.engines {
        Some(engines) => vec![
            (engines.dynamodb_local.name(), engines.dynamodb_local.pid()),
            (engines.moto.name(), engines.moto.pid()),
        ],
        None => Vec::new(),
    };
    let before: Vec<Usage> = engines.iter().map(|(_, pid)| usage_of(*pid)).collect();
    let started = Instant::now();
    report.stack_saturated = Some(crate::load::run(&target, &saturated).await?);
    for ((engine, pid), before) in engines.into_iter().zip(before) {
        let busy = (usage_of(pid).cpu - before.cpu).as_secs_f64() / started.elapsed().as_secs_f64();
        report.engines_busy.push((engine, busy));
    }
    eprintln!("DynamoDB capacity per job ...");
    let engine = JobStore::new(
        jobpipe_emulator::aws::dynamodb_client(&local.endpoints),
        stack.created.tables["JobsTable"].clone(),
        3600,
    );
    report.capacity = Some(crate::capacity::measure(&stack, &target, &engine, 100, Duration::from_secs(3)).await?);
    stack.stop().await;
    Ok(report)
}

/// Records handled first and reported apart, so one-time set-up does not blur the steady cost.
const WARM_UP: usize = 10;

/// Cold starts (init of each), then one environment handling `WARM_UP` and then `records` more: its
/// peak RSS and CPU per record of each part.
async fn measure_function<F>(
    name: &str,
    process: &FunctionProcess,
    options: &BenchOptions,
    zips: &BTreeMap<String, u64>,
    workload: F,
) -> anyhow::Result<Figures>
where
    F: for<'a> Fn(&'a Environment, usize) -> Workload<'a>,
{
    let mut figures = Figures { name: name.to_string(), ..Default::default() };
    for _ in 0..options.cold_starts {
        let env = Environment::start(process).await?;
        figures.init_ms.push(env.init.as_secs_f64() * 1000.0);
        env.stop().await;
    }
    let env = Environment::start(process).await?;
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

/// A table keyed by a string `id`, for the Python baseline's idempotency records and the write probe.
async fn create_scratch_table(local: &LocalAws, purpose: &str) -> anyhow::Result<String> {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let name = format!("bench-{purpose}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
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

/// DynamoDB Local's own ceiling: conditional-free PutItems from 4 tasks for 3 s, into a table of their own.
async fn dynamodb_write_rate(local: &LocalAws) -> anyhow::Result<f64> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let table = create_scratch_table(local, "probe").await?;
    let started = Instant::now();
    let window = Duration::from_secs(3);
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (dynamodb, table) = (local.clients.dynamodb.clone(), table.clone());
        tasks.push(tokio::spawn(async move {
            let mut writes = 0u64;
            while started.elapsed() < window {
                dynamodb
                    .put_item()
                    .table_name(&table)
                    .item("id", AttributeValue::S(format!("probe-{worker}-{writes}")))
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

/// The arm64 Lambda zips of `packages` in the release profile, built by `cargo xtask zips` (the one
/// place that builds them), answering each zip's size by package.
fn arm64_zip_sizes(root: &Path, target_dir: &Path, packages: &[&str]) -> anyhow::Result<BTreeMap<String, u64>> {
    let lambda_dir = target_dir.join("lambda-arm64-release");
    eprintln!("building the arm64 zips with cargo lambda ...");
    let lambda_dir_arg = lambda_dir.to_string_lossy();
    let mut args = vec!["zips", "--profile", "release", "--lambda-dir", lambda_dir_arg.as_ref()];
    for package in packages {
        args.extend(["-p", package]);
    }
    jobpipe_emulator::setup::xtask(root, &args)?;
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
    jobpipe_emulator::setup::xtask(root, &["setup-baseline"])?;
    Ok(root.join(".venv-baseline/bin/python"))
}
