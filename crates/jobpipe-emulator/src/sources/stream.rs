//! The DynamoDB stream event source mapping: every shard read from its latest record, batches invoked in
//! order, retried from the first reported failure up to `MaximumRetryAttempts`; records the mapping's
//! filters drop are never invoked.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{AttributeValue as StreamValue, ShardIteratorType};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::aws::REGION;
use crate::runtime::Function;

/// The DynamoDB stream mapping: reads every shard from its latest position and invokes the function
/// with batches of records, retrying from the first reported failure.
#[derive(Debug, Clone)]
pub struct StreamMapping {
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub stream_arn: String,
    pub batch_size: usize,
    pub report_failures: bool,
    pub max_retries: u32,
    /// The mapping's `FilterCriteria`: records none matches are never invoked.
    pub filters: Vec<super::EventFilter>,
}

/// A mapping's starting position in each shard it reads.
pub type ShardIterators = HashMap<String, String>;

/// Where a mapping is in one shard.
#[derive(Debug, Clone, Default)]
struct ShardPosition {
    /// `None` until taken (a new shard) or after a failed read.
    iterator: Option<String>,
    /// The sequence number of the last record read, to resume after.
    last_sequence: Option<String>,
    /// A closed shard read to its end.
    finished: bool,
}

impl StreamMapping {
    /// Takes the mapping's starting positions (LATEST) in every shard the stream has now. A stack is
    /// started only once each mapping has them, as CloudFormation finishes only once a mapping exists: a
    /// write made after the start is never missed because the mapping had not yet looked.
    pub async fn enable(&self) -> Result<ShardIterators, String> {
        let mut iterators = ShardIterators::new();
        self.discover(&mut iterators).await?;
        Ok(iterators)
    }

    /// Reads the shards from `iterators` (from `enable`), and shards that appear later from their first
    /// record, as Lambda reads a new (child) shard whole. A shard whose iterator fails (DynamoDB Local
    /// answers `TrimmedDataAccessException` to an iterator taken on a shard that was still empty) is read
    /// again right after the last record it gave, or from its start when it gave none: a record is never
    /// skipped, as Lambda's checkpoints never skip one.
    pub async fn run(self, function: Function, iterators: ShardIterators) {
        let mut shards: HashMap<String, ShardPosition> = iterators
            .into_iter()
            .map(|(shard, iterator)| (shard, ShardPosition { iterator: Some(iterator), ..ShardPosition::default() }))
            .collect();
        loop {
            if let Err(error) = self.follow_new_shards(&mut shards).await {
                tracing::warn!(%error, "describing the stream failed");
            }
            let ids: Vec<String> = shards.keys().cloned().collect();
            let mut idle = true;
            for shard in ids {
                let Some(position) = shards.get_mut(&shard) else { continue };
                if position.finished {
                    continue;
                }
                let iterator = match position.iterator.clone() {
                    Some(iterator) => iterator,
                    None => match self.resume(&shard, position.last_sequence.as_deref()).await {
                        Ok(iterator) => iterator,
                        Err(error) => {
                            tracing::warn!(%error, %shard, "taking a shard iterator failed");
                            continue;
                        }
                    },
                };
                match self.streams.get_records().shard_iterator(iterator).limit(self.batch_size as i32).send().await {
                    Ok(out) => {
                        if let Some(last) = out.records().last().and_then(|r| r.dynamodb()?.sequence_number()) {
                            position.last_sequence = Some(last.to_string());
                        }
                        let records: Vec<Value> = out
                            .records()
                            .iter()
                            .map(|r| stream_record(r, &self.stream_arn))
                            .filter(|record| super::passes(&self.filters, record))
                            .collect();
                        match out.next_shard_iterator() {
                            Some(next) => position.iterator = Some(next.to_string()),
                            None => position.finished = true,
                        };
                        if !records.is_empty() {
                            idle = false;
                            self.deliver(&function, records).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(error), "reading the stream failed; resuming after the last record read");
                        position.iterator = None;
                    }
                }
            }
            if idle {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// An iterator right after `last` in `shard`, or at its start.
    async fn resume(&self, shard: &str, last: Option<&str>) -> Result<String, String> {
        let request = self.streams.get_shard_iterator().stream_arn(&self.stream_arn).shard_id(shard);
        let request = match last {
            Some(sequence) => {
                request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).sequence_number(sequence)
            }
            None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out =
            request.send().await.map_err(|e| aws_sdk_dynamodbstreams::error::DisplayErrorContext(e).to_string())?;
        out.shard_iterator().map(String::from).ok_or_else(|| format!("no iterator for shard {shard}"))
    }

    /// Starts following shards that appeared since `enable`, from their first record.
    async fn follow_new_shards(&self, shards: &mut HashMap<String, ShardPosition>) -> Result<(), String> {
        for id in self.shard_ids().await? {
            shards.entry(id).or_default();
        }
        Ok(())
    }

    /// The stream's shards, as `DescribeStream` lists them.
    async fn shard_ids(&self) -> Result<Vec<String>, String> {
        let out = self
            .streams
            .describe_stream()
            .stream_arn(&self.stream_arn)
            .send()
            .await
            .map_err(|e| aws_sdk_dynamodbstreams::error::DisplayErrorContext(e).to_string())?;
        Ok(out
            .stream_description()
            .map(|d| d.shards())
            .unwrap_or_default()
            .iter()
            .filter_map(|shard| shard.shard_id().map(String::from))
            .collect())
    }

    /// Takes the latest position in every shard the stream has now (StartingPosition: LATEST).
    async fn discover(&self, iterators: &mut HashMap<String, String>) -> Result<(), String> {
        for id in self.shard_ids().await? {
            let iterator = self
                .streams
                .get_shard_iterator()
                .stream_arn(&self.stream_arn)
                .shard_id(&id)
                .shard_iterator_type(ShardIteratorType::Latest)
                .send()
                .await
                .map_err(|e| aws_sdk_dynamodbstreams::error::DisplayErrorContext(e).to_string())?;
            if let Some(iterator) = iterator.shard_iterator() {
                iterators.insert(id, iterator.to_string());
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
pub fn stream_record(record: &aws_sdk_dynamodbstreams::types::Record, stream_arn: &str) -> Value {
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
