//! Ingest and processor driven together, one environment each, messages moved by the local SQS mapping
//! with a zero batching window: submit -> `completedAt` for each job, the same way for both languages.

use std::time::{Duration, Instant};

use jobpipe_core::job::JobId;
use jobpipe_emulator::runtime::FunctionProcess;

use super::workloads::{accepted_job_id, process_batch, submit_event};
use super::{Bench, BenchOptions, Environment, PipelineFigures};

/// Submits at the options' steady rate while a poller feeds the processor, then reads each job's
/// `completedAt`.
pub async fn pipeline(
    name: &str,
    ingest: &FunctionProcess,
    process: &FunctionProcess,
    bench: &Bench,
    options: &BenchOptions,
) -> anyhow::Result<PipelineFigures> {
    eprintln!("pipeline ({name}) ...");
    let ingest_env = Environment::start(ingest).await?;
    let process_env = Environment::start(process).await?;
    let jobs = options.records.min(100);
    let interval = Duration::from_secs_f64(1.0 / options.e2e_rate.max(1) as f64);
    let poller = async {
        let mut handled = 0;
        let started = Instant::now();
        while handled < jobs && started.elapsed() < Duration::from_secs(120) {
            let messages = bench.queue.receive(10, Duration::from_secs(1)).await?;
            if !messages.is_empty() {
                handled += process_batch(&process_env, &bench.queue, &messages).await?;
            }
        }
        anyhow::Ok(handled)
    };
    let submitter = async {
        let mut sent = Vec::with_capacity(jobs);
        let mut ticks = tokio::time::interval(interval);
        for i in 0..jobs {
            ticks.tick().await;
            let sent_at = epoch_ms();
            let job_id = accepted_job_id(&ingest_env.invoke(&submit_event(i)?).await?)?;
            sent.push((job_id, sent_at));
        }
        anyhow::Ok(sent)
    };
    let (handled, sent) = tokio::join!(poller, submitter);
    let (handled, sent) = (handled?, sent?);
    ingest_env.stop().await;
    process_env.stop().await;
    let mut figures = PipelineFigures { name: name.into(), jobs: handled, completion_ms: Vec::new() };
    for (job_id, sent_at) in sent {
        let Some(job_id) = JobId::parse(&job_id) else { continue };
        if let Some(completed_at) = bench.jobs.get(&job_id).await?.and_then(|job| job.completed_at) {
            figures.completion_ms.push(completed_at as f64 - sent_at);
        }
    }
    Ok(figures)
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}
