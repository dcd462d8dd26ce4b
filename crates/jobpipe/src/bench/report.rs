//! The bench's one table: each function's init, memory, CPU per record and zip size next to the floor
//! and the Python baseline, the pipelines, the local stack end to end, and the targets met or not.

use crate::load::{LoadReport, quantile};

use super::WARM_UP;

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
    pub stack_steady: Option<LoadReport>,
    pub stack_saturated: Option<LoadReport>,
    /// DynamoDB Local's own ceiling: unconditional PutItems per second from 4 clients.
    pub dynamodb_writes_per_s: f64,
    /// Share of one core each local engine's process used while the stack ran as fast as it goes.
    pub engines_busy: Vec<(&'static str, f64)>,
    /// DynamoDB capacity per job, measured (`jobpipe capacity`).
    pub capacity: Option<crate::capacity::CapacityPerJob>,
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
             waits on the engines excluded; `1st 10` is the first {WARM_UP} after init, CPU/record the {} after them)",
            floor.init_ms.len(),
            floor.records
        );

        let _ = writeln!(out, "\nRust / Python (same harness, same engines):");
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
            "DynamoDB Local alone: {:.0} PutItem/s from 4 clients; a job costs it about 7 DynamoDB requests plus \
             the stream reads around them (SQS and S3 go to moto)",
            self.dynamodb_writes_per_s,
        );
        for (engine, busy) in &self.engines_busy {
            let _ =
                writeln!(out, "{engine} used {:.0}% of a core while the stack ran as fast as it goes", busy * 100.0);
        }
        if let Some(capacity) = &self.capacity {
            out.push_str(&capacity.table());
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
