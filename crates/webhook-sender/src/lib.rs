//! The webhook sender: tells tenants' servers when their jobs end, signed as Standard Webhooks says.
//!
//! It has two event sources and one handler for both:
//! - the jobs table's stream, filtered to jobs that just ended and batches just completed (`plan`): each
//!   becomes one `Delivery` per target (the job's callback, each endpoint subscribed to the event) on the
//!   webhook queue. This mapping never skips a record, so it is also where a job's end is recorded where
//!   it counts (`record_end`): its tenant's open jobs, its batch's progress. A record whose
//!   deliveries could not all be queued is reported failed and Lambda gives it again; the deliveries it
//!   had queued are queued again, with the same `webhook-id`.
//! - the webhook queue (`deliver`): each message is one attempt. A delivery that failed in a way that may
//!   pass is queued again for its next attempt (`RetrySchedule`, about a day); one refused, or out of
//!   attempts, is dead-lettered in the webhooks table, where `jobpipe webhooks` lists and redelivers it.
//!   Each outcome is kept on the job (`webhook:<target>`), where `GET /jobs/{id}` shows it.
//!
//! Delivery is its own function so that a slow receiver (up to `http::ATTEMPT_TIMEOUT` an attempt) never
//! holds up the notifier's pushes or job processing; the stream's other reader is the notifier.

pub mod http;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsMessage};
use jobpipe_core::batch::{RecordFailed, process_batch};
use jobpipe_core::clock::{Clock, Millis, SystemClock};
use jobpipe_core::config::{Config, ConfigError};
use jobpipe_core::metrics::{self, Unit};
use jobpipe_core::open_jobs::OpenJobs;
use jobpipe_core::store::{JobEnding, batch_from_stream_image, is_batch_image, job_from_stream_image};
use jobpipe_core::webhooks::store::{DeadLetter, Endpoint, WebhookStore};
use jobpipe_core::webhooks::{
    AttemptOutcome, CALLBACK_TARGET, Delivery, DeliveryState, RetrySchedule, WebhookDelivery,
};
use jobpipe_core::{AwsError, JobStore};
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};

pub use http::HttpSender;

/// The `Service` dimension of this function's metrics.
pub const SERVICE: &str = "webhook-sender";

/// How long a tenant's endpoints are trusted once read, per execution environment: an endpoint added or
/// removed takes effect within this.
pub const ENDPOINTS_CACHE: Duration = Duration::from_secs(5);

/// The longest a received SQS message can be hidden (12 hours), so the longest wait between attempts.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(12 * 60 * 60);

/// Deliveries of one batch attempted at once.
const DELIVERY_CONCURRENCY: usize = 10;

#[derive(Debug)]
pub struct WebhookSender {
    pub store: WebhookStore,
    pub jobs: JobStore,
    /// Tenants' open jobs, counted down when a counted job ends; `None` where `CONTROL_TABLE` is not set.
    pub open_jobs: Option<OpenJobs>,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub http: HttpSender,
    pub retry: RetrySchedule,
    pub clock: Arc<dyn Clock>,
    endpoints: Mutex<HashMap<String, (Millis, Vec<Endpoint>)>>,
}

impl WebhookSender {
    pub fn new(
        store: WebhookStore,
        jobs: JobStore,
        sqs: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
        http: HttpSender,
        retry: RetrySchedule,
    ) -> WebhookSender {
        WebhookSender {
            store,
            jobs,
            open_jobs: None,
            sqs,
            queue_url: queue_url.into(),
            http,
            retry,
            clock: Arc::new(SystemClock),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    pub fn from_config(config: &Config, shared: &aws_config::SdkConfig) -> Result<WebhookSender, ConfigError> {
        let dynamodb = aws_sdk_dynamodb::Client::new(shared);
        let http = HttpSender::new(config.webhook_targets)
            .map_err(|e| ConfigError { variable: "WEBHOOK_ALLOW_LOOPBACK", problem: format!("HTTP client: {e}") })?;
        let mut sender = WebhookSender::new(
            WebhookStore::new(dynamodb.clone(), Config::require(&config.webhooks_table, "WEBHOOKS_TABLE")?),
            JobStore::new(dynamodb.clone(), &config.jobs_table, config.job_retention.as_secs() as i64),
            aws_sdk_sqs::Client::new(shared),
            Config::require(&config.webhook_queue_url, "WEBHOOK_QUEUE_URL")?,
            http,
            config.webhook_retry.clone(),
        );
        sender.open_jobs = config.control_table.as_ref().map(|table| OpenJobs::new(dynamodb, table));
        Ok(sender)
    }

    /// A tenant's endpoints, through the per-environment cache.
    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, AwsError> {
        let now = self.clock.now_ms();
        if let Some((read_at, endpoints)) = self.endpoints.lock().expect("cache lock").get(tenant)
            && now - read_at < ENDPOINTS_CACHE.as_millis() as Millis
        {
            return Ok(endpoints.clone());
        }
        let endpoints = self.store.endpoints(tenant).await?;
        self.endpoints.lock().expect("cache lock").insert(tenant.to_string(), (now, endpoints.clone()));
        Ok(endpoints)
    }

    /// What a job's end changes besides the job, recorded before its deliveries are planned (so a record
    /// given again records it again, harmlessly): it no longer counts among its tenant's open jobs (if it
    /// was counted), and its batch's progress has it (the last one completes the batch). Both idempotent.
    pub async fn record_end(&self, job: &JobEnding) -> Result<(), AwsError> {
        let job_id = &job.job_id;
        if job.counted
            && let Some(counter) = &self.open_jobs
            && counter.count_down(&job.owner, job_id, self.clock.now_ms()).await?
        {
            tracing::info!(%job_id, "an ended job no longer counts among its tenant's open jobs");
        }
        if let Some(progress) = self.jobs.record_batch_end(job, self.clock.now_ms()).await? {
            tracing::info!(%job_id, batch_id = %progress.batch_id, ended = progress.ended(), total = progress.total, completed = progress.is_completed(), "a batch's job ended");
        }
        Ok(())
    }

    /// Records what a stream record's job end changes (`record_end`) and answers the deliveries it asks
    /// for: none unless it is a job's end (completed or failed) or a batch's completion.
    pub async fn plan(&self, record: &Value) -> Result<Vec<Delivery>, AwsError> {
        let (Some(old), Some(new)) = (record["dynamodb"].get("OldImage"), record["dynamodb"].get("NewImage")) else {
            return Ok(Vec::new());
        };
        if is_batch_image(new) {
            let (old, new) = (batch_from_stream_image(old)?, batch_from_stream_image(new)?);
            if old.is_completed() || !new.is_completed() {
                return Ok(Vec::new());
            }
            let endpoints = self.endpoints(&new.tenant).await?;
            return Ok(Delivery::for_completed_batch(&new, &endpoints));
        }
        // What the end changes is read from the few attributes it needs, so it is recorded even for a job
        // whose other attributes would not parse (its deliveries then cannot be made).
        let Some(ending) = JobEnding::of_record(old, new)? else { return Ok(Vec::new()) };
        self.record_end(&ending).await?;
        if jobpipe_core::webhooks::WebhookEvent::of_job(ending.status).is_none() {
            return Ok(Vec::new());
        }
        let new = match job_from_stream_image(new) {
            Ok(job) => job,
            Err(error) => {
                tracing::error!(job_id = %ending.job_id, %error, "a job that ended does not read as a job: no webhook for it");
                metrics::emit(SERVICE, "WebhookJobsUnreadable", Unit::Count, 1.0, &[]);
                return Ok(Vec::new());
            }
        };
        let endpoints = self.endpoints(&new.owner).await?;
        Ok(Delivery::for_ended_job(&new, &endpoints))
    }

    /// Queues deliveries (ten to a call).
    pub async fn enqueue(&self, deliveries: &[Delivery]) -> Result<(), AwsError> {
        for chunk in deliveries.chunks(10) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (index, delivery) in chunk.iter().enumerate() {
                let body = serde_json::to_string(delivery).map_err(|e| AwsError::corrupt("delivery", e.to_string()))?;
                let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message_body(sqs_safe(body))
                    .build()
                    .map_err(|e| AwsError::corrupt("delivery", e.to_string()))?;
                entries.push(entry);
            }
            let out = self
                .sqs
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("SendMessageBatch (webhook deliveries)", e))?;
            if let Some(failed) = out.failed().first() {
                return Err(AwsError {
                    operation: "SendMessageBatch (webhook deliveries)".into(),
                    code: failed.code().to_string(),
                    message: failed.message().unwrap_or("an entry was not queued").to_string(),
                    retryability: if failed.sender_fault() {
                        jobpipe_core::Retryability::Permanent
                    } else {
                        jobpipe_core::Retryability::Retryable
                    },
                });
            }
        }
        Ok(())
    }

    /// Makes one attempt of a queued delivery, its `receive_count`-th (a retry is the same message, hidden
    /// until its time), and records, dead-letters or schedules what follows. An error means nothing was
    /// settled: the message is given again.
    pub async fn deliver(&self, mut delivery: Delivery, receive_count: u32) -> Result<Settled, AwsError> {
        delivery.attempt = receive_count.max(1);
        if delivery.target != CALLBACK_TARGET {
            let endpoints = self.endpoints(&delivery.tenant).await?;
            if !endpoints.iter().any(|endpoint| endpoint.endpoint_id == delivery.target) {
                // Removed (perhaps because its domain changed hands): it gets nothing more.
                tracing::info!(webhook_id = %delivery.webhook_id, target = %delivery.target, "the endpoint was removed; delivery dropped");
                return Ok(Settled::Dropped);
            }
        }
        let secrets = self.store.secrets_or_create(&delivery.tenant).await?;
        let outcome = self.http.attempt(&delivery, &secrets, self.clock.now_ms()).await;
        let now = self.clock.now_ms();
        let mut state = WebhookDelivery {
            target: delivery.target.clone(),
            event: delivery.event,
            url: delivery.url.clone(),
            state: DeliveryState::Delivered,
            attempts: delivery.attempt,
            last_status: None,
            last_error: None,
            next_attempt_at: None,
            updated_at: now,
        };
        let dimensions = [("Event", delivery.event.as_str())];
        let settled = match outcome {
            AttemptOutcome::Delivered { status } => {
                state.last_status = Some(status);
                tracing::info!(webhook_id = %delivery.webhook_id, target = %delivery.target, status, attempt = delivery.attempt, "webhook delivered");
                metrics::emit(SERVICE, "WebhooksDelivered", Unit::Count, 1.0, &dimensions);
                Settled::Delivered
            }
            AttemptOutcome::Failed { status, error } => {
                (state.last_status, state.last_error) = (status, Some(error.clone()));
                let jitter = rand::random_range(-1.0..=1.0);
                match self.retry.delay_after(delivery.attempt, jitter) {
                    Some(delay) => {
                        (state.state, state.next_attempt_at) =
                            (DeliveryState::Retrying, Some(now + delay.as_millis() as Millis));
                        tracing::warn!(webhook_id = %delivery.webhook_id, target = %delivery.target, attempt = delivery.attempt, %error, retry_in_s = delay.as_secs(), "webhook attempt failed; retrying");
                        metrics::emit(SERVICE, "WebhookRetries", Unit::Count, 1.0, &dimensions);
                        Settled::RetryIn(delay)
                    }
                    None => {
                        state.state = DeliveryState::Failed;
                        self.dead_letter(&delivery, status, &error, now).await?;
                        Settled::DeadLettered
                    }
                }
            }
            AttemptOutcome::Refused { status, error } => {
                (state.state, state.last_status, state.last_error) =
                    (DeliveryState::Failed, status, Some(error.clone()));
                self.dead_letter(&delivery, status, &error, now).await?;
                Settled::DeadLettered
            }
        };
        // The state on the job is for people to read: a failure to keep it never repeats the attempt.
        if let Some(job_id) = &delivery.job_id {
            match self.jobs.record_webhook(job_id, &state).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(%job_id, target = %delivery.target, "the job is gone or this target already has it; state not kept")
                }
                Err(error) => {
                    tracing::warn!(%job_id, %error, "a webhook delivery's state could not be kept on its job");
                    metrics::emit(SERVICE, "WebhookStateNotKept", Unit::Count, 1.0, &[]);
                }
            }
        }
        Ok(settled)
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        status: Option<u16>,
        error: &str,
        now: Millis,
    ) -> Result<(), AwsError> {
        let dead =
            DeadLetter { delivery: delivery.clone(), last_status: status, last_error: error.to_string(), dead_at: now };
        self.store.put_dead_letter(&dead).await?;
        tracing::error!(webhook_id = %delivery.webhook_id, tenant = %delivery.tenant, target = %delivery.target, attempt = delivery.attempt, %error, "webhook dead-lettered");
        metrics::emit(SERVICE, "WebhookDeadLetters", Unit::Count, 1.0, &[]);
        Ok(())
    }
}

/// What became of a delivery's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Delivered,
    /// Hidden this long, then given again for the next attempt.
    RetryIn(Duration),
    DeadLettered,
    /// Its endpoint was removed.
    Dropped,
}

/// The Lambda handler for both event sources: the stream's records (`aws:dynamodb`) are planned, the
/// queue's (`aws:sqs`) delivered; each answers its source's partial-batch response.
pub async fn handle(sender: Arc<WebhookSender>, event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    let records = event.payload["Records"].as_array().cloned().unwrap_or_default();
    let source = records.first().and_then(|r| r["eventSource"].as_str()).unwrap_or_default().to_string();
    match source.as_str() {
        "" => Ok(json!({"batchItemFailures": []})),
        "aws:sqs" => {
            let messages: Vec<SqsMessage> = serde_json::from_value(Value::Array(records))?;
            let response: SqsBatchResponse = process_batch(messages, DELIVERY_CONCURRENCY, move |message| {
                let sender = sender.clone();
                async move { deliver_message(&sender, message).await }
            })
            .await?;
            Ok(serde_json::to_value(response)?)
        }
        "aws:dynamodb" => plan_records(&sender, records).await,
        other => {
            Err(format!("records from {other:?}: this function reads the jobs stream and the webhook queue").into())
        }
    }
}

async fn deliver_message(sender: &WebhookSender, message: SqsMessage) -> Result<(), RecordFailed> {
    let body = message.body.clone().unwrap_or_default();
    let delivery: Delivery = match serde_json::from_str(&body) {
        Ok(delivery) => delivery,
        Err(error) => {
            // Nothing can ever send it: logged and dropped rather than retried until the queue's DLQ.
            tracing::error!(%error, body = %body.chars().take(200).collect::<String>(), "a webhook message that is not a delivery; dropped");
            return Ok(());
        }
    };
    let receive_count =
        message.attributes.get("ApproximateReceiveCount").and_then(|count| count.parse().ok()).unwrap_or(1);
    // Boxed: the attempt's future (the HTTP client's) is deep enough to overflow the compiler's layout limit inline.
    match Box::pin(sender.deliver(delivery, receive_count)).await {
        Ok(Settled::RetryIn(delay)) => {
            // The same message comes back for the next attempt: hidden until then, and left undeleted.
            let receipt = message.receipt_handle.unwrap_or_default();
            let hidden = delay.min(MAX_RETRY_DELAY).as_secs().max(1) as i32;
            let changed = sender
                .sqs
                .change_message_visibility()
                .queue_url(&sender.queue_url)
                .receipt_handle(receipt)
                .visibility_timeout(hidden)
                .send()
                .await;
            if let Err(error) = changed {
                let error = AwsError::from_sdk("ChangeMessageVisibility (webhook retry)", error);
                tracing::warn!(%error, "the retry's wait could not be set; it comes back after the queue's visibility timeout");
            }
            Err(RecordFailed)
        }
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::warn!(%error, "webhook delivery not settled; the queue gives it again");
            Err(RecordFailed)
        }
    }
}

/// A message body SQS accepts: JSON that spells the two characters SQS refuses (U+FFFE, U+FFFF, valid
/// in JSON strings, where they can only be) as escapes.
fn sqs_safe(json: String) -> String {
    if !json.contains(['\u{fffe}', '\u{ffff}']) {
        return json;
    }
    json.replace('\u{fffe}', "\\ufffe").replace('\u{ffff}', "\\uffff")
}

/// Plans and queues every record's deliveries, concurrently; answers the first record (in stream order)
/// whose deliveries may be queued later, so Lambda gives the stream again from there.
async fn plan_records(sender: &Arc<WebhookSender>, records: Vec<Value>) -> Result<Value, lambda_runtime::Error> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, record) in records.into_iter().enumerate() {
        let sender = sender.clone();
        tasks.spawn(async move {
            let sequence = record["dynamodb"]["SequenceNumber"].as_str().map(String::from);
            let result = match sender.plan(&record).await {
                Ok(deliveries) => sender.enqueue(&deliveries).await.map(|()| deliveries.len()),
                Err(error) => Err(error),
            };
            match result {
                Ok(0) => None,
                Ok(queued) => {
                    tracing::info!(queued, "a job ended or a batch completed: its webhook deliveries are queued");
                    None
                }
                // Only a record that is not a job can never be planned; any AWS failure, even one that
                // looks permanent (a missing permission, a deleted queue), is retried until it is mended:
                // a job's end is never skipped for it.
                Err(error) if error.code == jobpipe_core::error::CORRUPT_DATA => {
                    tracing::error!(%error, "skipping a stream record that is neither a job nor a batch");
                    None
                }
                Err(error) => {
                    tracing::warn!(%error, "a job's webhook deliveries could not be queued; the stream gives it again");
                    Some((index, sequence))
                }
            }
        });
    }
    let mut first: Option<(usize, Option<String>)> = None;
    while let Some(joined) = tasks.join_next().await {
        let failed = joined.map_err(|panic| format!("planning a record panicked: {panic}"))?;
        if let Some((index, sequence)) = failed
            && first.as_ref().is_none_or(|(at, _)| index < *at)
        {
            first = Some((index, sequence));
        }
    }
    let failures = match first {
        Some((_, Some(sequence))) => vec![json!({"itemIdentifier": sequence})],
        Some((_, None)) => return Err("a failed stream record has no SequenceNumber".into()),
        None => Vec::new(),
    };
    Ok(json!({"batchItemFailures": failures}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_sqs_refuses_are_spelled_as_escapes() {
        let text = "a\u{fffe}b\u{ffff}c é";
        let body = sqs_safe(serde_json::to_string(&json!({"t": text})).unwrap());
        assert!(!body.contains(['\u{fffe}', '\u{ffff}']), "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["t"], text);
        assert_eq!(sqs_safe("{}".into()), "{}");
    }
}
