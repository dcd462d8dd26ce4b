//! Event sources as Lambda runs them: the SQS event source mapping (batching window, maximum
//! concurrency, partial batch responses), the DynamoDB stream mapping, and schedules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodbstreams::types::{AttributeValue as StreamValue, ShardIteratorType};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::resources::REGION;
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
    pub report_failures: bool,
}

impl SqsMapping {
    /// Receives up to a batch (waiting at most the batching window once something arrived), invokes the
    /// function, and deletes what it acknowledged: every record not in `batchItemFailures` (when the
    /// mapping reports them), or the whole batch on success. A function error deletes nothing.
    pub async fn round(&self, function: &Function, wait: Duration) -> SqsRound {
        let mut messages = Vec::new();
        let started = Instant::now();
        loop {
            let remaining_window = self.batching_window.saturating_sub(started.elapsed());
            let wait_secs = if messages.is_empty() { wait.as_secs() } else { remaining_window.as_secs().min(1) };
            let want = (self.batch_size - messages.len()).min(10) as i32;
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(want)
                .wait_time_seconds(wait_secs as i32)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await;
            match received {
                Ok(out) => messages.extend(out.messages.unwrap_or_default()),
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
        let records: Vec<Value> = messages.iter().map(|m| sqs_record(m, &self.queue_arn)).collect();
        let ids: Vec<&str> = messages.iter().filter_map(|m| m.message_id()).collect();
        let acknowledged: Vec<&Message> = match function.invoke_json(&json!({"Records": records})).await {
            Ok(response) => {
                let failures: Option<Vec<String>> = if self.report_failures {
                    response.get("batchItemFailures").and_then(Value::as_array).map(|list| {
                        list.iter().filter_map(|f| f.get("itemIdentifier")?.as_str().map(String::from)).collect()
                    })
                } else {
                    None
                };
                match failures {
                    // An identifier that is not in the batch makes Lambda treat the whole batch as failed.
                    Some(failed) if failed.iter().any(|id| !ids.contains(&id.as_str())) => {
                        tracing::warn!(
                            function = function.name(),
                            "batchItemFailures names an unknown message; whole batch retried"
                        );
                        Vec::new()
                    }
                    Some(failed) => {
                        messages.iter().filter(|m| !failed.iter().any(|f| Some(f.as_str()) == m.message_id())).collect()
                    }
                    None => messages.iter().collect(),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "batch failed; its messages return after their visibility timeout");
                Vec::new()
            }
        };
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

/// The DynamoDB stream mapping: reads every shard from its latest position and invokes the function
/// with batches of records, retrying from the first reported failure.
#[derive(Debug, Clone)]
pub struct StreamMapping {
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub stream_arn: String,
    pub batch_size: usize,
    pub report_failures: bool,
    pub max_retries: u32,
}

impl StreamMapping {
    pub async fn run(self, function: Function) {
        let mut iterators: HashMap<String, String> = HashMap::new();
        loop {
            if let Err(error) = self.discover(&mut iterators).await {
                tracing::warn!(%error, "describing the stream failed");
            }
            let shards: Vec<String> = iterators.keys().cloned().collect();
            let mut idle = true;
            for shard in shards {
                let Some(iterator) = iterators.get(&shard).cloned() else { continue };
                match self.streams.get_records().shard_iterator(iterator).limit(self.batch_size as i32).send().await {
                    Ok(out) => {
                        let records: Vec<Value> =
                            out.records().iter().map(|r| stream_record(r, &self.stream_arn)).collect();
                        if !records.is_empty() {
                            idle = false;
                            self.deliver(&function, records).await;
                        }
                        match out.next_shard_iterator() {
                            Some(next) => iterators.insert(shard, next.to_string()),
                            None => iterators.remove(&shard),
                        };
                    }
                    Err(error) => {
                        tracing::warn!(error = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(error), "reading the stream failed");
                        iterators.remove(&shard);
                    }
                }
            }
            if idle {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Starts reading shards we do not know yet, from their latest record (StartingPosition: LATEST).
    async fn discover(&self, iterators: &mut HashMap<String, String>) -> Result<(), String> {
        let out = self
            .streams
            .describe_stream()
            .stream_arn(&self.stream_arn)
            .send()
            .await
            .map_err(|e| aws_sdk_dynamodbstreams::error::DisplayErrorContext(e).to_string())?;
        for shard in out.stream_description().map(|d| d.shards()).unwrap_or_default() {
            let Some(id) = shard.shard_id() else { continue };
            if iterators.contains_key(id) {
                continue;
            }
            let iterator = self
                .streams
                .get_shard_iterator()
                .stream_arn(&self.stream_arn)
                .shard_id(id)
                .shard_iterator_type(ShardIteratorType::Latest)
                .send()
                .await
                .map_err(|e| aws_sdk_dynamodbstreams::error::DisplayErrorContext(e).to_string())?;
            if let Some(iterator) = iterator.shard_iterator() {
                iterators.insert(id.to_string(), iterator.to_string());
            }
        }
        Ok(())
    }

    /// Invokes with the batch; on a reported failure retries from that record, on an error retries the
    /// batch, each up to MaximumRetryAttempts, then moves on.
    async fn deliver(&self, function: &Function, mut records: Vec<Value>) {
        let mut attempts = 0;
        while !records.is_empty() {
            let outcome = function.invoke_json(&json!({"Records": records})).await;
            let retry_from = match outcome {
                Ok(response) if self.report_failures => response
                    .get("batchItemFailures")
                    .and_then(Value::as_array)
                    .and_then(|failures| failures.first())
                    .and_then(|f| f.get("itemIdentifier")?.as_str().map(String::from))
                    .map(|sequence| {
                        records.iter().position(|r| r["dynamodb"]["SequenceNumber"] == sequence.as_str()).unwrap_or(0)
                    }),
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(%error, "stream batch failed");
                    Some(0)
                }
            };
            let Some(from) = retry_from else { return };
            attempts += 1;
            if attempts > self.max_retries {
                tracing::warn!(skipped = records.len() - from, "stream records dropped after MaximumRetryAttempts");
                return;
            }
            records.drain(..from);
            tokio::time::sleep(Duration::from_millis(200 * attempts as u64)).await;
        }
    }
}

/// A stream record as a record of a Lambda DynamoDB event.
fn stream_record(record: &aws_sdk_dynamodbstreams::types::Record, stream_arn: &str) -> Value {
    let image = |map: Option<&HashMap<String, StreamValue>>| -> Value {
        match map {
            Some(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), attribute_json(v))).collect()),
            None => Value::Null,
        }
    };
    let change = record.dynamodb();
    let mut dynamodb = json!({
        "Keys": image(change.and_then(|c| c.keys.as_ref())),
        "SequenceNumber": change.and_then(|c| c.sequence_number()),
        "SizeBytes": change.and_then(|c| c.size_bytes()),
        "StreamViewType": change.and_then(|c| c.stream_view_type()).map(|v| v.as_str().to_string()),
        "ApproximateCreationDateTime": change.and_then(|c| c.approximate_creation_date_time()).map(|t| t.secs()),
    });
    if let Some(new_image) = change.and_then(|c| c.new_image.as_ref()) {
        dynamodb["NewImage"] = image(Some(new_image));
    }
    if let Some(old_image) = change.and_then(|c| c.old_image.as_ref()) {
        dynamodb["OldImage"] = image(Some(old_image));
    }
    json!({
        "eventID": record.event_id(),
        "eventName": record.event_name().map(|n| n.as_str().to_string()),
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": REGION,
        "dynamodb": dynamodb,
        "eventSourceARN": stream_arn,
    })
}

/// An attribute in DynamoDB JSON, as stream events carry it.
fn attribute_json(value: &StreamValue) -> Value {
    let b64 =
        |b: &aws_sdk_dynamodbstreams::primitives::Blob| base64::engine::general_purpose::STANDARD.encode(b.as_ref());
    match value {
        StreamValue::S(s) => json!({"S": s}),
        StreamValue::N(n) => json!({"N": n}),
        StreamValue::Bool(b) => json!({"BOOL": b}),
        StreamValue::Null(_) => json!({"NULL": true}),
        StreamValue::Ss(v) => json!({"SS": v}),
        StreamValue::Ns(v) => json!({"NS": v}),
        StreamValue::B(b) => json!({"B": b64(b)}),
        StreamValue::Bs(v) => json!({"BS": v.iter().map(b64).collect::<Vec<_>>()}),
        StreamValue::L(items) => json!({"L": items.iter().map(attribute_json).collect::<Vec<_>>()}),
        StreamValue::M(map) => {
            json!({"M": map.iter().map(|(k, v)| (k.clone(), attribute_json(v))).collect::<Map<_, _>>()})
        }
        _ => Value::Null,
    }
}

/// The EventBridge event a `Schedule` source delivers.
pub fn scheduled_event(rule: &str) -> Value {
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": crate::resources::ACCOUNT,
        "time": now,
        "region": REGION,
        "resources": [format!("arn:aws:events:{REGION}:{}:rule/{rule}", crate::resources::ACCOUNT)],
        "detail": {}
    })
}

/// Invokes `function` with a scheduled event every `every`.
pub async fn run_schedule(function: Function, rule: String, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // A tick missed while an invocation ran is not made up in a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = function.invoke_json(&scheduled_event(&rule)).await {
            tracing::warn!(%error, "scheduled invocation failed");
        }
    }
}
