//! `jobpipe capacity`: the DynamoDB capacity a job costs, measured on Amazon's own engine (DynamoDB
//! Local reports `ConsumedCapacity` as the service does) through the local stack's AWS proxy
//! (`jobpipe_emulator::capacity`), by function, operation, and table or index, and what it comes to per
//! million jobs at on-demand list prices.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jobpipe_emulator::capacity::{CapacityMeter, Spent, Units};
use jobpipe_emulator::dev::DevStack;
use serde_json::json;

use jobpipe_core::store::JobStore;

use crate::ops::{Start, Target};

/// us-east-1 on-demand list prices, dollars per million request units (checked 2026-12-08; check current
/// ones): a write request unit is 1 KB written, a read request unit a strongly consistent read of 4 KB.
pub const DOLLARS_PER_MILLION_WRU: f64 = 0.625;
pub const DOLLARS_PER_MILLION_RRU: f64 = 0.125;

/// One line of the measurement: who spent capacity on what, per job.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The template's function (its logical id), or the key that signed the call.
    pub function: String,
    pub operation: String,
    /// The table's logical id, or `Table/index`.
    pub on: String,
    pub write_per_job: f64,
    pub read_per_job: f64,
    pub calls_per_job: f64,
}

#[derive(Debug, Clone, Default)]
pub struct CapacityPerJob {
    pub jobs: usize,
    pub rows: Vec<Row>,
}

impl CapacityPerJob {
    /// What `spent` comes to per job, its callers and tables named as the template names them.
    pub fn of(spent: &BTreeMap<Spent, Units>, jobs: usize, stack: &DevStack) -> CapacityPerJob {
        let functions: HashMap<String, String> =
            stack.functions.keys().map(|name| (jobpipe_emulator::iam::access_key(name), name.clone())).collect();
        let tables: HashMap<&str, &str> =
            stack.created.tables.iter().map(|(logical, physical)| (physical.as_str(), logical.as_str())).collect();
        let per = jobs.max(1) as f64;
        let rows = spent
            .iter()
            .map(|(spent, units)| {
                let (table, index) = spent.on.split_once('/').map_or((spent.on.as_str(), None), |(t, i)| (t, Some(i)));
                let table = tables.get(table).copied().unwrap_or(table);
                Row {
                    function: functions.get(&spent.caller).cloned().unwrap_or_else(|| spent.caller.clone()),
                    operation: spent.operation.clone(),
                    on: index.map_or_else(|| table.to_string(), |index| format!("{table}/{index}")),
                    write_per_job: units.write / per,
                    read_per_job: units.read / per,
                    calls_per_job: units.calls as f64 / per,
                }
            })
            .collect();
        CapacityPerJob { jobs, rows }
    }

    pub fn write_units(&self) -> f64 {
        self.rows.iter().map(|row| row.write_per_job).sum()
    }

    pub fn read_units(&self) -> f64 {
        self.rows.iter().map(|row| row.read_per_job).sum()
    }

    /// Dollars per million jobs for their DynamoDB requests.
    pub fn dollars_per_million_jobs(&self) -> f64 {
        self.write_units() * DOLLARS_PER_MILLION_WRU + self.read_units() * DOLLARS_PER_MILLION_RRU
    }

    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nDynamoDB per job, measured (ReturnConsumedCapacity on DynamoDB Local, {} jobs):",
            self.jobs
        );
        let _ = writeln!(
            out,
            "  {:<26} {:<20} {:<34} {:>8} {:>8} {:>8}",
            "function", "operation", "table/index", "WRU", "RRU", "calls"
        );
        let mut rows = self.rows.clone();
        rows.sort_by(|a, b| (b.write_per_job + b.read_per_job).total_cmp(&(a.write_per_job + a.read_per_job)));
        for row in rows.iter().filter(|row| row.write_per_job + row.read_per_job > 0.0) {
            let _ = writeln!(
                out,
                "  {:<26} {:<20} {:<34} {:>8.2} {:>8.2} {:>8.2}",
                row.function, row.operation, row.on, row.write_per_job, row.read_per_job, row.calls_per_job
            );
        }
        let mut by_table: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for row in &self.rows {
            let entry = by_table.entry(row.on.as_str()).or_default();
            (entry.0, entry.1) = (entry.0 + row.write_per_job, entry.1 + row.read_per_job);
        }
        for (on, (write, read)) in by_table {
            let _ = writeln!(out, "  {:<47} {on:<34} {write:>8.2} {read:>8.2}", "all functions");
        }
        let _ = writeln!(
            out,
            "  total: {:.2} WRU + {:.2} RRU per job = ${:.2} per million jobs (on demand, ${DOLLARS_PER_MILLION_WRU}/M WRU, \
             ${DOLLARS_PER_MILLION_RRU}/M RRU)",
            self.write_units(),
            self.read_units(),
            self.dollars_per_million_jobs()
        );
        out
    }
}

/// Submits `jobs` small echo jobs through `target` (a client of `stack`) and measures the capacity
/// they cost until every one ended and the stream's readers (the notifier, the webhook sender) caught
/// up: until no capacity was spent for `quiet` (what runs on a timer, the reconciler, is in the figure
/// for as long as the run lasts). Whether the jobs ended is read from `engine`, the jobs table at the
/// engine itself, so the measurement's own reads are not counted.
pub async fn measure(
    stack: &DevStack,
    target: &Target,
    engine: &JobStore,
    jobs: usize,
    quiet: Duration,
) -> anyhow::Result<CapacityPerJob> {
    let meter = Arc::new(CapacityMeter::default());
    stack.proxy.set_capacity_meter(Some(meter.clone()));
    let measured = async {
        // What an earlier run left to the stream's readers is not these jobs' cost.
        until_quiet(&meter, quiet).await;
        meter.reset();
        let mut submitted = Vec::with_capacity(jobs);
        for n in 0..jobs {
            let input = json!({"message": format!("job {n}")});
            submitted.push(target.submit_with("echo", input, &Start::Now, None).await?.job_id);
        }
        let mut open: HashSet<_> = submitted.into_iter().collect();
        // Echo jobs take milliseconds: this many reads without every one ended means some never will.
        for _ in 0..3000 {
            let mut ended = Vec::new();
            for job_id in &open {
                if engine.get(job_id).await?.is_some_and(|job| job.status.is_terminal()) {
                    ended.push(job_id.clone());
                }
            }
            for job_id in ended {
                open.remove(&job_id);
            }
            if open.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::ensure!(open.is_empty(), "{} of the {jobs} jobs never ended", open.len());
        // The readers of the stream catch up; then nothing is spent for `quiet`.
        until_quiet(&meter, quiet).await;
        Ok(CapacityPerJob::of(&meter.spent(), jobs, stack))
    }
    .await;
    stack.proxy.set_capacity_meter(None);
    measured
}

/// Waits until no call was made for `quiet`, or for 20 rounds of it (a record retried for good keeps
/// calling; the figure then includes what it spent meanwhile).
async fn until_quiet(meter: &CapacityMeter, quiet: Duration) {
    let calls = || meter.spent().values().map(|units| units.calls).sum::<u64>();
    let mut seen = calls();
    for _ in 0..20 {
        tokio::time::sleep(quiet).await;
        let now = calls();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// `jobpipe capacity`: a local stack of its own on fresh engines (or `endpoints`), `jobs` echo jobs
/// through it, and what they cost in DynamoDB capacity.
pub async fn run(
    root: &std::path::Path,
    jobs: usize,
    endpoints: Option<jobpipe_emulator::aws::Endpoints>,
    build: bool,
) -> anyhow::Result<CapacityPerJob> {
    let (endpoints, engines) = match endpoints {
        Some(endpoints) => (endpoints, None),
        None => {
            let engines = jobpipe_emulator::aws::start_engines(root)?;
            (engines.endpoints.clone(), Some(engines))
        }
    };
    let mut dev = jobpipe_emulator::dev::DevOptions::new(root.to_path_buf());
    dev.port = 0;
    dev.build = build;
    dev.endpoints = Some(endpoints.clone());
    dev.prefix = format!("cap{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stack = DevStack::start(dev).await?;
    let target = Target::resolve(&crate::ops::TargetOptions {
        api: stack.base_url(),
        stack: None,
        token: None,
        user: "capacity".into(),
    })
    .await?;
    let engine = JobStore::new(
        jobpipe_emulator::aws::dynamodb_client(&endpoints),
        stack.created.tables["JobsTable"].clone(),
        3600,
    );
    let measured = measure(&stack, &target, &engine, jobs, Duration::from_secs(3)).await;
    stack.stop().await;
    drop(engines);
    measured
}
