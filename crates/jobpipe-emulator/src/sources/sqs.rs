//! The SQS event source mapping: receive a batch (waiting out the batching window), invoke the function
//! with it, and delete what it acknowledged (partial batch responses), with up to `MaximumConcurrency`
//! batches in flight. The tests and the benchmarks move messages through the same mapping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::aws::REGION;
use crate::runtime::Function;

/// An SQS message as a record of a Lambda SQS event.
pub fn sqs_record(message: &Message, queue_arn: &str) -> Value {
    let attributes: Map<String, Value> = message
        .attributes()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str().to_string(), Value::String(v.clone())))
        .collect();
    let message_attributes: Map<String, Value> = message
        .message_attributes()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let mut attribute = json!({
                "dataType": v.data_type(),
                "stringListValues": [],
                "binaryListValues": [],
            });
            if let Some(s) = v.string_value() {
                attribute["stringValue"] = json!(s);
            }
            if let Some(b) = v.binary_value() {
                attribute["binaryValue"] = json!(base64::engine::general_purpose::STANDARD.encode(b.as_ref()));
            }
            (k.clone(), attribute)
        })
        .collect();
    json!({
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    })
}

/// What one SQS poll-invoke-settle round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SqsRound {
    pub received: usize,
    pub deleted: usize,
    pub failed: usize,
}

#[derive(Debug, Clone)]
pub struct SqsMapping {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub queue_arn: String,
    pub batch_size: usize,
    pub batching_window: Duration,
    /// `FunctionResponseTypes: [ReportBatchItemFailures]`: the function's `batchItemFailures` say which
    /// records stay; without it any answer acknowledges the whole batch.
    pub report_failures: bool,
}

impl SqsMapping {
    /// A mapping of the queue with batches of 10, no batching window, reporting batch item failures.
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: String, queue_arn: String) -> SqsMapping {
        SqsMapping { sqs, queue_url, queue_arn, batch_size: 10, batching_window: Duration::ZERO, report_failures: true }
    }

    /// One `ReceiveMessage` of up to `max` (at most 10) messages with every attribute, long-polling up to
    /// `wait` (whole seconds) for the first.
    pub async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Message>, aws_sdk_sqs::Error> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await?;
        Ok(received.messages.unwrap_or_default())
    }

    /// The Lambda SQS event of these messages.
    pub fn event(&self, messages: &[Message]) -> Value {
        json!({"Records": messages.iter().map(|m| sqs_record(m, &self.queue_arn)).collect::<Vec<_>>()})
    }

    /// The messages a batch's outcome acknowledges, as Lambda reads it: on an answer, every record not in
    /// `batchItemFailures` (when the mapping reports them; an identifier that is not in the batch fails
    /// the whole batch), or all of them; on a function error, none.
    pub fn acknowledged<'a>(&self, messages: &'a [Message], answer: Option<&Value>) -> Vec<&'a Message> {
        let Some(answer) = answer else { return Vec::new() };
        let failures: Option<Vec<&str>> = if self.report_failures {
            answer
                .get("batchItemFailures")
                .and_then(Value::as_array)
                .map(|list| list.iter().filter_map(|f| f.get("itemIdentifier")?.as_str()).collect())
        } else {
            None
        };
        match failures {
            Some(failed) if failed.iter().any(|id| !messages.iter().any(|m| m.message_id() == Some(*id))) => {
                tracing::warn!(queue = %self.queue_url, "batchItemFailures names an unknown message; whole batch retried");
                Vec::new()
            }
            Some(failed) => messages.iter().filter(|m| !failed.iter().any(|f| Some(*f) == m.message_id())).collect(),
            None => messages.iter().collect(),
        }
    }

    /// Deletes what the outcome acknowledged (`acknowledged`); answers how many were deleted. Failed
    /// records stay for their visibility timeout.
    pub async fn settle(&self, messages: &[Message], answer: Option<&Value>) -> usize {
        self.delete(&self.acknowledged(messages, answer)).await
    }

    /// Receives up to a batch (waiting at most the batching window once something arrived), invokes the
    /// function, and deletes what it acknowledged.
    pub async fn round(&self, function: &Function, wait: Duration) -> SqsRound {
        let mut messages = Vec::new();
        let started = Instant::now();
        loop {
            let remaining_window = self.batching_window.saturating_sub(started.elapsed());
            let wait_now = if messages.is_empty() { wait } else { remaining_window.min(Duration::from_secs(1)) };
            match self.receive(self.batch_size - messages.len(), wait_now).await {
                Ok(received) => messages.extend(received),
                Err(error) => {
                    tracing::warn!(queue = %self.queue_url, error = %aws_sdk_sqs::error::DisplayErrorContext(error), "receive failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
            if messages.is_empty() && started.elapsed() >= wait {
                break;
            }
            if messages.len() >= self.batch_size || (!messages.is_empty() && started.elapsed() >= self.batching_window)
            {
                break;
            }
        }
        if messages.is_empty() {
            return SqsRound::default();
        }
        let answer = match function.invoke_json(&self.event(&messages)).await {
            Ok(answer) => Some(answer),
            Err(error) => {
                tracing::warn!(%error, "batch failed; its messages return after their visibility timeout");
                None
            }
        };
        let acknowledged = self.acknowledged(&messages, answer.as_ref());
        let deleted = self.delete(&acknowledged).await;
        SqsRound { received: messages.len(), deleted, failed: messages.len() - acknowledged.len() }
    }

    async fn delete(&self, messages: &[&Message]) -> usize {
        let mut deleted = 0;
        for chunk in messages.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle()?)
                        .build()
                        .ok()
                })
                .collect();
            match self.sqs.delete_message_batch().queue_url(&self.queue_url).set_entries(Some(entries)).send().await {
                Ok(out) => deleted += out.successful().len(),
                Err(error) => tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(error), "delete failed"),
            }
        }
        deleted
    }

    /// Polls forever with up to `concurrency` batches in flight, as the mapping's MaximumConcurrency.
    pub async fn run(self, function: Function, concurrency: usize) {
        let mapping = Arc::new(self);
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        loop {
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let (mapping, function) = (mapping.clone(), function.clone());
            // Each poller holds a permit for a whole round; rounds overlap up to the concurrency.
            tokio::spawn(async move {
                mapping.round(&function, Duration::from_secs(20)).await;
                drop(permit);
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
