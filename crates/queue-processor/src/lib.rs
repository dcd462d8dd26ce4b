//! The queue processor: takes SQS batches of job messages, runs each job exactly to one terminal state
//! through the fenced state machine, and reconciles jobs whose messages were lost or dead-lettered.

mod reconcile;
mod record;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use jobpipe_core::backoff::Backoff;
use jobpipe_core::batch::{BatchError, RecordFailed, process_batch};
use jobpipe_core::clock::{Clock, Millis};
use jobpipe_core::config::{AwsClients, Config};
use jobpipe_core::controls::{ControlStore, PausedKinds, TenantLimitsCache};
use jobpipe_core::dispatch::{DispatchPolicy, Dispatcher};
use jobpipe_core::kinds::KindRegistry;
use jobpipe_core::metrics::{self, Unit};
use jobpipe_core::payload::PayloadStore;
use jobpipe_core::schedules::ScheduleStore;
use jobpipe_core::store::JobStore;
use jobpipe_core::tenant_slots::{ConcurrencyLimit, TenantSlots};
use lambda_runtime::LambdaEvent;
use serde_json::Value;

pub use reconcile::ReconcileReport;
pub use record::RecordOutcome;

/// The `Service` dimension of this function's metrics.
pub const SERVICE: &str = "queue-processor";

/// Everything the processor needs, built once per execution environment.
#[derive(Debug)]
pub struct Processor {
    pub store: JobStore,
    pub payloads: PayloadStore,
    /// Recurring schedules whose ticks the reconciler fires; `None` where `SCHEDULES_TABLE` is not set.
    pub schedules: Option<ScheduleStore>,
    /// The kinds an operator paused (their jobs wait); `None` where `CONTROL_TABLE` is not set.
    pub paused: Option<PausedKinds>,
    /// Per-tenant concurrency slots; `None` where `CONTROL_TABLE` is not set.
    pub concurrency: Option<ConcurrencyLimit>,
    pub dispatcher: Dispatcher,
    pub sqs: aws_sdk_sqs::Client,
    pub kinds: KindRegistry,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// A throttled job waits at least this long, without spending an attempt.
    pub throttle_window: Duration,
    pub batch_concurrency: usize,
    pub default_lease: Duration,
    pub dead_letter_queue_url: Option<String>,
    /// The SQS endpoint override, to build queue URLs from ARNs locally.
    pub endpoint_url: Option<String>,
    /// What the reconciler does with unfinished jobs whose check is due.
    pub dispatch_policy: DispatchPolicy,
    /// How long after a tick's job is created the reconciler first checks its message was sent.
    pub dispatch_grace: Duration,
    /// A job of a paused kind is looked at again after this long.
    pub paused_recheck: Duration,
}

impl Processor {
    pub fn new(config: &Config, clients: &AwsClients, clock: Arc<dyn Clock>) -> Processor {
        let retention_secs = config.job_retention.as_secs() as i64;
        Processor {
            store: JobStore::new(clients.dynamodb.clone(), &config.jobs_table, retention_secs),
            payloads: PayloadStore::new(clients.s3.clone(), &config.payload_bucket, config.inline_payload_max_bytes),
            schedules: config.schedules_table.as_ref().map(|table| ScheduleStore::new(clients.dynamodb.clone(), table)),
            paused: config
                .control_table
                .as_ref()
                .map(|table| PausedKinds::new(ControlStore::new(clients.dynamodb.clone(), table))),
            concurrency: config.control_table.as_ref().map(|table| {
                ConcurrencyLimit::new(
                    TenantSlots::new(clients.dynamodb.clone(), table),
                    TenantLimitsCache::new(ControlStore::new(clients.dynamodb.clone(), table)),
                    config.tenant_concurrency,
                )
            }),
            dispatcher: Dispatcher::new(clients.sqs.clone(), config.queue_routes.clone()),
            sqs: clients.sqs.clone(),
            kinds: KindRegistry::from_config(&config.kinds, &clients.bedrock),
            clock,
            settings: Settings {
                max_attempts: config.max_attempts,
                backoff: config.backoff,
                throttle_window: config.throttle_window,
                batch_concurrency: config.batch_concurrency,
                default_lease: config.default_lease,
                dead_letter_queue_url: config.dead_letter_queue_url.clone(),
                endpoint_url: clients.endpoint_url.clone(),
                dispatch_policy: DispatchPolicy { recheck: config.dispatch_recheck, max_age: config.job_max_age },
                dispatch_grace: config.dispatch_grace,
                paused_recheck: config.paused_kind_recheck,
            },
        }
    }
}

/// The Lambda handler. The function has two event sources: SQS batches of job messages, and a schedule
/// (EventBridge) that runs the reconciler.
pub async fn handle_event(
    processor: Arc<Processor>,
    event: LambdaEvent<Value>,
) -> Result<Value, lambda_runtime::Error> {
    let deadline = deadline_of(&event.context);
    let payload = event.payload;
    if payload.get("Records").is_some() {
        let sqs_event: SqsEvent = serde_json::from_value(payload)?;
        let response = handle_sqs(processor, sqs_event, deadline).await?;
        return Ok(serde_json::to_value(response)?);
    }
    if payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
        let report = processor.reconcile(deadline).await?;
        return Ok(serde_json::to_value(report)?);
    }
    Err("queue-processor accepts SQS events and scheduled events only".into())
}

/// Handles one SQS batch and answers which records failed (`ReportBatchItemFailures`).
pub async fn handle_sqs(
    processor: Arc<Processor>,
    event: SqsEvent,
    deadline: Option<Millis>,
) -> Result<SqsBatchResponse, BatchError> {
    let concurrency = processor.settings.batch_concurrency;
    if metrics::take_cold_start() {
        metrics::emit(SERVICE, "ColdStart", Unit::Count, 1.0, &[]);
    }
    metrics::emit(SERVICE, "BatchSize", Unit::Count, event.records.len() as f64, &[]);
    process_batch(event.records, concurrency, move |record| {
        let processor = processor.clone();
        async move {
            // Boxed: the whole state machine inlined into one future type is too deep for the compiler.
            let outcome = Box::pin(processor.process_record(&record, deadline)).await;
            if outcome.acknowledges() { Ok(()) } else { Err(RecordFailed) }
        }
    })
    .await
}

/// The invocation's deadline, when the runtime gave one (a default `Context` in tests has none).
pub fn deadline_of(context: &lambda_runtime::Context) -> Option<Millis> {
    (context.deadline > 0).then_some(context.deadline as Millis)
}
