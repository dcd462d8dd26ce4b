//! The `jobpipe` command: `dev` runs the whole pipeline locally and `invoke` runs one function once (both
//! from `jobpipe-emulator`); `submit`, `status`, `cancel`, `watch`, `list`, `schedules`, `kinds`, `tenants` and `dlq` operate a local or deployed
//! stack; `load`, `chaos` and `bench` measure it; `iam-mutations` proves each IAM statement is needed.

use std::path::PathBuf;

use anyhow::Context as _;

use clap::{Parser, Subcommand};
use jobpipe::ops::{Target, TargetOptions};
use jobpipe_emulator::dev::{DevOptions, DevStack};

#[derive(Parser)]
#[command(name = "jobpipe", about = "jobpipe: run and operate the async job pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

/// Which stack the operations commands talk to.
#[derive(clap::Args, Clone)]
struct TargetArgs {
    /// The local stack's URL.
    #[arg(long, env = "JOBPIPE_API", default_value = "http://127.0.0.1:3000", global = true)]
    api: String,
    /// A deployed stack's name: URLs and queues come from its CloudFormation outputs.
    #[arg(long, env = "JOBPIPE_STACK", global = true)]
    stack: Option<String>,
    /// A JWT (required for a deployed stack; locally a dev token is made for --user).
    #[arg(long, env = "JOBPIPE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The local dev user.
    #[arg(long, env = "USER", default_value = "cli", global = true)]
    user: String,
}

impl TargetArgs {
    async fn target(&self) -> anyhow::Result<Target> {
        Target::resolve(&TargetOptions {
            api: self.api.clone(),
            stack: self.stack.clone(),
            token: self.token.clone(),
            user: self.user.clone(),
        })
        .await
    }
}

#[derive(Subcommand)]
enum Schedules {
    /// Create a schedule: every tick of --cron (in --timezone) or --rate creates one job.
    Create {
        kind: String,
        /// The jobs' input, a JSON object.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Five fields: minute hour day-of-month month day-of-week, e.g. "0 9 * * MON-FRI".
        #[arg(long, required_unless_present = "rate", conflicts_with = "rate")]
        cron: Option<String>,
        /// An IANA time zone the cron expression is read in (default UTC).
        #[arg(long, requires = "cron")]
        timezone: Option<String>,
        /// Every so often: "15 minutes", "1 hour", "2 days".
        #[arg(long)]
        rate: Option<String>,
    },
    /// List your schedules, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Stop a schedule creating jobs until it is resumed.
    Pause { schedule_id: String },
    /// Start a paused schedule again from its next tick.
    Resume { schedule_id: String },
    /// Delete a schedule (the jobs it created stay).
    Delete { schedule_id: String },
}

#[derive(Subcommand)]
enum Kinds {
    /// The kinds the stack offers, and those paused.
    List,
    /// Pause a kind: its jobs are still accepted and wait, queued, spending no attempts.
    Pause { kind: String },
    /// Resume a kind: its waiting jobs run (within a minute).
    Resume { kind: String },
}

#[derive(Subcommand)]
enum Tenants {
    /// Set a tenant's own limits, each a number (0: none) or `default` for the deployment's
    /// (TenantSubmissionsPerSecond, TenantConcurrency, TenantOpenJobs).
    Limit {
        tenant: String,
        /// Submissions a second (`POST /jobs`).
        #[arg(long, value_parser = parse_limit, required_unless_present_any = ["concurrency", "open_jobs"])]
        submissions_per_second: Option<LimitValue>,
        /// Of the tenant's jobs, how many run at once.
        #[arg(long, value_parser = parse_limit)]
        concurrency: Option<LimitValue>,
        /// Of the tenant's jobs, how many may be waiting or running (accepted, not ended).
        #[arg(long, value_parser = parse_limit)]
        open_jobs: Option<LimitValue>,
    },
}

/// A tenant limit on the command line: its own number, or the deployment's default.
#[derive(Debug, Clone, Copy)]
struct LimitValue(Option<u32>);

fn parse_limit(text: &str) -> Result<LimitValue, String> {
    match text {
        "default" => Ok(LimitValue(None)),
        n => n.parse().map(|n| LimitValue(Some(n))).map_err(|_| format!("{n:?} is neither a number nor `default`")),
    }
}

#[derive(Subcommand)]
enum Batch {
    /// Print the batch: its jobs by status, whether all ended, its first jobs.
    Status { batch_id: String },
    /// Cancel its jobs that have not started; print the batch.
    Cancel { batch_id: String },
}

#[derive(Subcommand)]
enum Webhooks {
    /// List deliveries given up on (refused, or failing for about a day), oldest first.
    DeadLetters {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Put dead-lettered deliveries back for a fresh series of attempts (same webhook-id), after the
    /// receiver is fixed: the ids given (as `dead-letters` prints them), or all with --all.
    Redeliver {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum Dlq {
    /// Show dead letters (each is hidden for 5 s while the list is read).
    List {
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Move dead letters back to their queue after a fix; prints how many moved.
    Redrive {
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
}

#[derive(Subcommand)]
enum Commands {
    /// Run everything on 127.0.0.1: moto, the four functions, their event sources, the HTTP and
    /// WebSocket APIs and the web UI.
    Dev {
        #[arg(long, default_value_t = 3000)]
        port: u16,
        /// Skip `cargo build` of the functions.
        #[arg(long)]
        no_build: bool,
        /// Run the functions' release builds (as deployed; for load runs and benchmarks).
        #[arg(long)]
        release: bool,
        /// Repository root (where template.yaml is).
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Submit a job (or, with --batch, a batch of them); with --wait, follow it to the end.
    Submit {
        #[arg(required_unless_present = "batch")]
        kind: Option<String>,
        /// Submit the jobs of this file as one batch (all or none): a JSON list of up to 100 jobs as
        /// `POST /jobs` takes them (`{"kind", "input", ...}`), or `{"jobs": [...]}`.
        #[arg(long, conflicts_with_all = ["kind", "input", "run_at", "delay", "callback"])]
        batch: Option<PathBuf>,
        /// The input, a JSON object.
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long)]
        wait: bool,
        /// Start at this time, not before (RFC 3339 with an offset, e.g. 2026-12-24T18:00:00Z; up to 365
        /// days ahead). The job is `scheduled` until then.
        #[arg(long, conflicts_with = "delay")]
        run_at: Option<String>,
        /// Start this many seconds after it is accepted.
        #[arg(long)]
        delay: Option<u64>,
        /// Deliver the job's end to this URL, signed with your webhook secret (`https` to a public host;
        /// the local stack also allows http://127.0.0.1).
        #[arg(long)]
        callback: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print a job.
    Status {
        job_id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Cancel a job that has not started (scheduled or queued).
    Cancel {
        job_id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Follow a job's status and progress until it ends.
    Watch {
        job_id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List your jobs, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Recurring jobs: create, list, pause, resume and delete schedules.
    Schedules {
        #[command(subcommand)]
        action: Schedules,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Job kinds: list them, pause or resume one (writes the control table with your AWS credentials).
    Kinds {
        #[command(subcommand)]
        action: Kinds,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Per-tenant limits (writes the control table with your AWS credentials).
    Tenants {
        #[command(subcommand)]
        action: Tenants,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// A batch of jobs (`submit --batch FILE` submits one): its counts by status, or cancel its jobs that have
    /// not started.
    Batch {
        #[command(subcommand)]
        action: Batch,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Webhook deliveries given up on: list them, redeliver them (the webhooks table, with your AWS
    /// credentials).
    Webhooks {
        #[command(subcommand)]
        action: Webhooks,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Inspect or redrive the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        action: Dlq,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// The DynamoDB capacity a job costs, measured on DynamoDB Local through a local stack of its own:
    /// by function, operation, and table or index, and per million jobs at on-demand prices.
    Capacity {
        #[arg(long, default_value_t = 50)]
        jobs: usize,
        #[arg(long)]
        no_build: bool,
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// The fault-injection run: many echo jobs under duplicates, kills, errors, poison and AWS faults;
    /// prints the invariants' figures and exits non-zero if any breaks.
    Chaos {
        #[arg(long, default_value_t = 2000)]
        jobs: usize,
        #[arg(long, default_value_t = 20)]
        poison: usize,
        /// Kill the queue processor's processes after every this many accepted jobs (0: never).
        #[arg(long, default_value_t = 60)]
        kill_every_jobs: usize,
        #[arg(long, default_value_t = 0.02)]
        aws_fault_rate: f64,
        #[arg(long, default_value_t = 0.05)]
        send_fault_rate: f64,
        /// How far global secondary indexes lag behind writes, in milliseconds (eventual consistency).
        #[arg(long, default_value_t = 1000)]
        index_lag_ms: u64,
        /// Report when nothing has moved for this many seconds (progress stopped).
        #[arg(long, default_value_t = 120)]
        stall: u64,
        #[arg(long)]
        no_build: bool,
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Sustained submissions for a fixed time (from this process, to a running stack); prints the
    /// accepted rate, latency percentiles and errors, then waits for every accepted job to end.
    Load {
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 50)]
        rate: u32,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Speed and cost of each function (release builds) next to the floor (a bare lambda_runtime
    /// binary) and the Python Powertools baseline, then the local stack end to end: one table.
    Bench {
        /// Cold starts per function.
        #[arg(long, default_value_t = 20)]
        cold_starts: usize,
        /// Requests or records each function handles for its memory and CPU figures.
        #[arg(long, default_value_t = 200)]
        records: usize,
        /// Skip building the arm64 zips (their sizes are then not reported).
        #[arg(long)]
        no_zips: bool,
        /// Skip the Python baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Jobs per second of the steady end-to-end runs (locally, moto saturates well above the default).
        #[arg(long, default_value_t = 10)]
        rate: u32,
        /// Seconds of the end-to-end run through the local stack.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Proof by mutation: removes each IAM statement of template.yaml in turn and shows the local
    /// stack's role test then fails, naming the refused action; prints the table, exits non-zero if a
    /// statement is not proven needed.
    IamMutations {
        /// Where the template copies and each run's output go.
        #[arg(long, default_value = "target/iam-mutations")]
        work_dir: PathBuf,
        /// Only these statements (`Function/Sid`, repeatable).
        #[arg(long)]
        only: Vec<String>,
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Invoke one function of template.yaml once with an event file, like `sam local invoke`.
    Invoke {
        /// The function's logical id in template.yaml (e.g. QueueProcessorFunction) or its crate name.
        function: String,
        /// The event, a JSON file.
        #[arg(short = 'e', long = "event")]
        event: PathBuf,
        #[arg(long)]
        no_build: bool,
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Commands::Dev { port, no_build, release, root } => {
            let mut options = DevOptions::new(root.canonicalize()?);
            if release {
                options = options.release();
            }
            options.port = port;
            options.build = !no_build;
            let stack = DevStack::start(options).await?;
            println!(
                "jobpipe is running: open {}  (AWS endpoints: {} for DynamoDB, {} for the rest; Ctrl-C stops \
                 everything)",
                stack.base_url(),
                stack.endpoints.dynamodb,
                stack.endpoints.aws
            );
            tokio::signal::ctrl_c().await?;
            println!("stopping");
            stack.stop().await;
            Ok(())
        }
        Commands::Submit { batch: Some(file), wait, target, .. } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let jobs: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            let jobs = match jobs {
                serde_json::Value::Object(mut batch) => batch.remove("jobs").unwrap_or_default(),
                jobs => jobs,
            };
            let target = target.target().await?;
            let batch = target.submit_batch(jobs).await?;
            if wait {
                let batch_id = batch["batchId"].as_str().unwrap_or_default().to_string();
                let done = target.wait_for_batch(&batch_id, &mut std::io::stderr()).await?;
                println!("{}", serde_json::to_string_pretty(&done)?);
                if done["counts"]["completed"] != done["total"] {
                    std::process::exit(1);
                }
            } else {
                println!("{}", serde_json::to_string_pretty(&batch)?);
            }
            Ok(())
        }
        Commands::Batch { action, target } => {
            let target = target.target().await?;
            let batch = match action {
                Batch::Status { batch_id } => target.batch_status(&batch_id).await?,
                Batch::Cancel { batch_id } => target.batch_cancel(&batch_id).await?,
            };
            println!("{}", serde_json::to_string_pretty(&batch)?);
            Ok(())
        }
        Commands::Submit { kind, input, wait, run_at, delay, callback, target, .. } => {
            let kind = kind.context("name the job's kind (or give --batch FILE)")?;
            let input: serde_json::Value =
                serde_json::from_str(&input).map_err(|e| anyhow::anyhow!("--input is not JSON: {e}"))?;
            let start = match (run_at, delay) {
                (Some(at), _) => jobpipe::ops::Start::At(at),
                (None, Some(seconds)) => jobpipe::ops::Start::After(std::time::Duration::from_secs(seconds)),
                (None, None) => jobpipe::ops::Start::Now,
            };
            let target = target.target().await?;
            let job = target.submit_with(&kind, input, &start, callback.as_deref()).await?;
            let job_id = job.job_id.as_str().to_string();
            if wait {
                let done = target.watch(&job_id, &mut std::io::stderr()).await?;
                println!("{}", serde_json::to_string_pretty(&done)?);
                if done.status != jobpipe_core::JobStatus::Completed {
                    std::process::exit(1);
                }
            } else {
                println!("{}", serde_json::to_string_pretty(&job)?);
            }
            Ok(())
        }
        Commands::Status { job_id, target } => {
            println!("{}", serde_json::to_string_pretty(&target.target().await?.status(&job_id).await?)?);
            Ok(())
        }
        Commands::Cancel { job_id, target } => {
            println!("{}", serde_json::to_string_pretty(&target.target().await?.cancel(&job_id).await?)?);
            Ok(())
        }
        Commands::Watch { job_id, target } => {
            let done = target.target().await?.watch(&job_id, &mut std::io::stdout()).await?;
            println!("{}", serde_json::to_string_pretty(&done)?);
            Ok(())
        }
        Commands::List { status, limit, target } => {
            let jobs = target.target().await?.list(status.as_deref(), limit).await?;
            for job in &jobs.jobs {
                println!(
                    "{}  {:<8} {:<10} {:>3}%  {}",
                    job.job_id.as_str(),
                    job.kind,
                    job.status.as_str(),
                    job.progress,
                    job.created_at
                );
            }
            Ok(())
        }
        Commands::Schedules { action, target } => {
            let target = target.target().await?;
            let shown = match action {
                Schedules::Create { kind, input, cron, timezone, rate } => {
                    let input: serde_json::Value =
                        serde_json::from_str(&input).map_err(|e| anyhow::anyhow!("--input is not JSON: {e}"))?;
                    let cadence = match (cron, rate) {
                        (Some(cron), _) => jobpipe::ops::Cadence::Cron { cron, timezone },
                        (None, Some(rate)) => jobpipe::ops::Cadence::Rate(rate),
                        (None, None) => anyhow::bail!("give --cron or --rate"),
                    };
                    serde_json::to_value(target.create_schedule(&kind, input, &cadence).await?)?
                }
                Schedules::List { limit } => serde_json::to_value(target.list_schedules(limit).await?)?,
                Schedules::Pause { schedule_id } => serde_json::to_value(target.pause_schedule(&schedule_id).await?)?,
                Schedules::Resume { schedule_id } => serde_json::to_value(target.resume_schedule(&schedule_id).await?)?,
                Schedules::Delete { schedule_id } => {
                    target.delete_schedule(&schedule_id).await?;
                    serde_json::json!({"deleted": schedule_id})
                }
            };
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        Commands::Kinds { action, target } => {
            let target = target.target().await?;
            let shown = match action {
                Kinds::List => target.kinds().await?,
                Kinds::Pause { kind } => serde_json::json!({"paused": target.set_kind_paused(&kind, true).await?}),
                Kinds::Resume { kind } => serde_json::json!({"paused": target.set_kind_paused(&kind, false).await?}),
            };
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        Commands::Tenants {
            action: Tenants::Limit { tenant, submissions_per_second, concurrency, open_jobs },
            target,
        } => {
            use jobpipe_core::controls::TenantLimit;
            let controls = target.target().await?.controls.ok_or_else(|| anyhow::anyhow!("no control table"))?;
            let chosen = [
                (TenantLimit::SubmissionsPerSecond, submissions_per_second, "submissions a second"),
                (TenantLimit::Concurrency, concurrency, "jobs running at once"),
                (TenantLimit::OpenJobs, open_jobs, "jobs waiting or running"),
            ];
            for (limit, value, what) in chosen {
                let Some(LimitValue(value)) = value else { continue };
                controls.set_tenant_limit(&tenant, limit, value).await?;
                match value {
                    Some(n) => println!("{tenant}: at most {n} {what} (0: no limit); workers see it within 5 s"),
                    None => println!("{tenant}: the deployment's default {what}; workers see it within 5 s"),
                }
            }
            Ok(())
        }
        Commands::Webhooks { action, target } => {
            let target = target.target().await?;
            match action {
                Webhooks::DeadLetters { tenant } => {
                    let letters = target.webhook_dead_letters(tenant.as_deref()).await?;
                    for letter in &letters {
                        println!(
                            "{}  {}  tenant={}  {}  attempts={}  at={}  {}",
                            letter.id(),
                            letter.delivery.event.as_str(),
                            letter.delivery.tenant,
                            letter.delivery.url,
                            letter.delivery.attempt,
                            jobpipe_core::clock::to_rfc3339(letter.dead_at),
                            letter.last_error
                        );
                    }
                    println!("{} dead-lettered deliver{}", letters.len(), if letters.len() == 1 { "y" } else { "ies" });
                }
                Webhooks::Redeliver { ids, all, tenant } => {
                    if ids.is_empty() && !all {
                        anyhow::bail!("name the dead letters to redeliver, or give --all");
                    }
                    let redelivered = target.webhook_redeliver(&ids, tenant.as_deref()).await?;
                    for letter in &redelivered {
                        println!("redelivering {} to {}", letter.id(), letter.delivery.url);
                    }
                    println!(
                        "{} deliver{} queued again",
                        redelivered.len(),
                        if redelivered.len() == 1 { "y" } else { "ies" }
                    );
                }
            }
            Ok(())
        }
        Commands::Dlq { action, target } => {
            let target = target.target().await?;
            match action {
                Dlq::List { max } => {
                    let letters = target.dlq_list(max).await?;
                    for letter in &letters {
                        println!("{letter}");
                    }
                    println!("{} dead letter(s)", letters.len());
                }
                Dlq::Redrive { max } => println!("moved {} message(s) back", target.dlq_redrive(max).await?),
            }
            Ok(())
        }
        Commands::Chaos {
            jobs,
            poison,
            kill_every_jobs,
            aws_fault_rate,
            send_fault_rate,
            index_lag_ms,
            stall,
            no_build,
            root,
        } => {
            let options = jobpipe::chaos::ChaosOptions {
                jobs,
                poison,
                kill_every_jobs,
                aws_fault_rate,
                send_fault_rate,
                index_lag: std::time::Duration::from_millis(index_lag_ms),
                stall: std::time::Duration::from_secs(stall),
                ..Default::default()
            };
            let endpoints = jobpipe_emulator::aws::Endpoints::from_env();
            let report = jobpipe::chaos::run(&root.canonicalize()?, &options, endpoints, !no_build).await?;
            println!("fault-injection run\n{}", report.table());
            let violations = report.violations();
            for violation in &violations {
                println!("INVARIANT BROKEN: {violation}");
            }
            if !violations.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Commands::Capacity { jobs, no_build, root } => {
            let endpoints = jobpipe_emulator::aws::Endpoints::from_env();
            let measured = jobpipe::capacity::run(&root.canonicalize()?, jobs, endpoints, !no_build).await?;
            println!("{}", measured.table());
            Ok(())
        }
        Commands::Load { seconds, rate, concurrency, target } => {
            let options = jobpipe::load::LoadOptions {
                duration: std::time::Duration::from_secs(seconds),
                rate,
                concurrency,
                drain_deadline: std::time::Duration::from_secs(600),
            };
            let report = jobpipe::load::run(&target.target().await?, &options).await?;
            println!("load run ({rate}/s for {seconds} s)\n{}", report.table());
            Ok(())
        }
        Commands::IamMutations { work_dir, only, root } => {
            let root = root.canonicalize()?;
            let engines = jobpipe_emulator::aws::start_engines(&root)?;
            let environment = [
                ("JOBPIPE_TEST_AWS_ENDPOINT".to_string(), engines.endpoints.aws.clone()),
                ("JOBPIPE_TEST_DYNAMODB_ENDPOINT".to_string(), engines.endpoints.dynamodb.clone()),
            ];
            let work_dir = if work_dir.is_absolute() { work_dir } else { root.join(work_dir) };
            let outcomes = jobpipe::iam_mutations::run(&root, &work_dir, &environment, &only, |outcome| {
                eprintln!(
                    "{}/{}: role test {}, refused {}",
                    outcome.mutation.function,
                    outcome.mutation.sid,
                    if outcome.failed { "fails" } else { "PASSES" },
                    outcome.refusal.as_deref().unwrap_or("nothing naming its actions")
                );
            })
            .await?;
            println!("{}", jobpipe::iam_mutations::table(&outcomes));
            let unproven = outcomes.iter().filter(|o| !o.proven()).count();
            println!("{} of {} statements proven needed and enforced", outcomes.len() - unproven, outcomes.len());
            drop(engines);
            if unproven > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Commands::Bench { cold_starts, records, no_zips, no_baseline, rate, seconds, root } => {
            let options = jobpipe::bench::BenchOptions {
                root: root.canonicalize()?,
                cold_starts,
                records,
                zips: !no_zips,
                baseline: !no_baseline,
                e2e_rate: rate,
                e2e_seconds: seconds,
            };
            let report = jobpipe::bench::run(&options).await?;
            println!("{}", report.table());
            Ok(())
        }
        Commands::Invoke { function, event, no_build, root } => {
            let payload = std::fs::read_to_string(&event)?;
            let payload: serde_json::Value =
                serde_json::from_str(&payload).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", event.display()))?;
            let options = jobpipe_emulator::invoke::InvokeOptions { build: !no_build, ..Default::default() };
            let output =
                jobpipe_emulator::invoke::invoke_once(&root.canonicalize()?, &function, payload, options).await?;
            println!("{}", serde_json::to_string_pretty(&output)?);
            Ok(())
        }
    }
}
