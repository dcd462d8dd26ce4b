//! The notifier: reads the jobs table's DynamoDB stream and pushes each change of a job's status or
//! progress to the WebSocket connections subscribed to that job, and each change of a batch's progress to
//! the batch's. Pushes are only useful while fresh, so its stream mapping gives a record up after a few
//! tries: what a job's end must change (its tenant's open jobs, its batch's progress) is the webhook
//! sender's, whose mapping never skips one.
//!
//! The records of one item are pushed one after another in stream order, so a client never sees a job's
//! `completed` before its `processing`; records of different items are pushed concurrently. A record
//! that can never be pushed (an item that is not a job) is logged and skipped; only a failure that may
//! pass later is reported, and Lambda retries the shard from the first of those.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use jobpipe_core::AwsError;
use jobpipe_core::clock::{Clock, Millis, SystemClock};
use jobpipe_core::connections::{ConnectionStore, GoneConnection, Subject};
use jobpipe_core::job::JobId;
use jobpipe_core::store::{batch_from_stream_image, is_batch_image, job_from_stream_image};
use lambda_runtime::LambdaEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;

/// A DynamoDB stream event as Lambda delivers it (only the parts the notifier reads).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamEvent {
    #[serde(rename = "Records", default)]
    pub records: Vec<StreamRecord>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamRecord {
    #[serde(rename = "eventID", default)]
    pub event_id: Option<String>,
    #[serde(rename = "eventName", default)]
    pub event_name: Option<String>,
    #[serde(default)]
    pub dynamodb: StreamChange,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamChange {
    #[serde(rename = "SequenceNumber", default)]
    pub sequence_number: Option<String>,
    /// The changed item's key: records with the same key are pushed in stream order.
    #[serde(rename = "Keys", default)]
    pub keys: Option<Value>,
    #[serde(rename = "NewImage", default)]
    pub new_image: Option<Value>,
    #[serde(rename = "OldImage", default)]
    pub old_image: Option<Value>,
}

/// The partial-batch answer for stream sources: Lambda resumes from the first failed sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamBatchResponse {
    pub batch_item_failures: Vec<StreamItemFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamItemFailure {
    pub item_identifier: String,
}

/// How long after its registration a connection may still be inside `$connect`, where API Gateway
/// answers `GoneException` to every push: longer than API Gateway's 29-second integration timeout, the
/// most `$connect` can take, with a margin for clocks. A connection answering Gone within it is kept.
pub const CONNECT_GRACE_MS: Millis = 60_000;

#[derive(Debug, Clone)]
pub struct Notifier {
    pub connections: ConnectionStore,
    pub push: aws_sdk_apigatewaymanagement::Client,
    pub clock: Arc<dyn Clock>,
}

/// What a record asked of us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery {
    pub delivered: usize,
    /// Connections that were gone and are now removed.
    pub gone: usize,
    /// Connections that answered Gone so soon after connecting that `$connect` may still be running:
    /// kept (their clients read the job once connected, so the missed push costs nothing).
    pub connecting: usize,
}

impl Notifier {
    /// Builds the management API client for `endpoint` (the WebSocket API's `https://.../{stage}` URL).
    pub fn new(shared: &aws_config::SdkConfig, connections: ConnectionStore, endpoint: &str) -> Notifier {
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(shared).endpoint_url(endpoint).build();
        Notifier {
            connections,
            push: aws_sdk_apigatewaymanagement::Client::from_conf(config),
            clock: Arc::new(SystemClock),
        }
    }

    /// Pushes one stream record's change, if it is one a client cares about: a job's status or progress
    /// to the job's subscribers, a batch's progress to the batch's.
    pub async fn notify(&self, record: &StreamRecord) -> Result<Delivery, AwsError> {
        if record.dynamodb.new_image.as_ref().is_some_and(is_batch_image) {
            let Some((batch_id, message)) = batch_push_message(record)? else { return Ok(Delivery::default()) };
            return self.push_to(Subject::Batch(batch_id), message).await;
        }
        let Some(message) = push_message(record)? else { return Ok(Delivery::default()) };
        let job_id = jobpipe_core::JobId::parse(message["jobId"].as_str().unwrap_or_default())
            .ok_or_else(|| AwsError::corrupt("stream record", "job id is not a UUID"))?;
        self.push_to(Subject::Job(job_id), message).await
    }

    /// Posts a message to every connection subscribed to `subject`.
    async fn push_to(&self, subject: Subject, message: Value) -> Result<Delivery, AwsError> {
        let subscribers = self.connections.subscribers(subject.clone()).await?;
        let count = subscribers.len();
        match &subject {
            Subject::Job(job_id) => {
                let status = message["status"].as_str().unwrap_or_default();
                tracing::debug!(%job_id, status, subscribers = count, "pushing a job change");
            }
            Subject::Batch(batch_id) => {
                let ended = message["ended"].as_u64().unwrap_or_default();
                tracing::debug!(%batch_id, ended, subscribers = count, "pushing a batch change");
            }
        }
        let body = Blob::new(message.to_string().into_bytes());
        let mut posts = JoinSet::new();
        for connection_id in subscribers {
            let (push, body) = (self.push.clone(), body.clone());
            posts.spawn(async move {
                let result = push.post_to_connection().connection_id(&connection_id).data(body).send().await;
                (connection_id, result)
            });
        }
        let mut delivery = Delivery::default();
        let mut retryable = None;
        while let Some(joined) = posts.join_next().await {
            let Ok((connection_id, result)) = joined else { continue };
            match result {
                Ok(_) => delivery.delivered += 1,
                Err(err) if matches!(err.as_service_error(), Some(PostToConnectionError::GoneException(_))) => {
                    let now = self.clock.now_ms();
                    match self.connections.forget_gone(&connection_id, now, CONNECT_GRACE_MS).await? {
                        GoneConnection::Forgotten => {
                            tracing::info!(%connection_id, "connection gone; removed it");
                            delivery.gone += 1;
                        }
                        GoneConnection::MayStillBeConnecting => {
                            tracing::info!(%connection_id, "connection answered Gone while it may still be connecting; kept it");
                            delivery.connecting += 1;
                        }
                    }
                }
                Err(err) => {
                    let error = AwsError::from_sdk(format!("PostToConnection {connection_id}"), err);
                    tracing::warn!(%error, "push failed");
                    // One bad connection never blocks the others; only a push that may succeed later
                    // makes the record worth retrying.
                    if error.is_retryable() {
                        retryable = Some(error);
                    }
                }
            }
        }
        match retryable {
            Some(error) => Err(error),
            None => Ok(delivery),
        }
    }
}

/// A batch's push for a record of its progress item: `None` when its counts did not change (or it expired).
pub fn batch_push_message(record: &StreamRecord) -> Result<Option<(JobId, Value)>, AwsError> {
    let batch = changed(record, batch_from_stream_image, |batch| (batch.ended(), batch.completed_at))?;
    Ok(batch.map(|batch| (batch.batch_id.clone(), batch.message())))
}

/// The message for a record: `None` when nothing a client sees changed (or the job was deleted).
pub fn push_message(record: &StreamRecord) -> Result<Option<Value>, AwsError> {
    let job = changed(record, job_from_stream_image, |job| (job.status, job.progress))?;
    Ok(job.map(|job| job.status_message()))
}

/// The record's new image, as `read` reads it, when what a client sees of it (`seen`) changed: `None` for
/// a deletion (TTL) or a write that changed nothing a client sees.
fn changed<T, S: PartialEq>(
    record: &StreamRecord,
    read: impl Fn(&Value) -> Result<T, AwsError>,
    seen: impl Fn(&T) -> S,
) -> Result<Option<T>, AwsError> {
    if record.event_name.as_deref() == Some("REMOVE") {
        return Ok(None);
    }
    let Some(new_image) = &record.dynamodb.new_image else { return Ok(None) };
    let new = read(new_image)?;
    if let Some(old_image) = &record.dynamodb.old_image
        && seen(&read(old_image)?) == seen(&new)
    {
        return Ok(None);
    }
    Ok(Some(new))
}

/// The Lambda handler. The records of one item are pushed in stream order (a record waits for the one
/// before it), different items concurrently. A record whose push may succeed later is reported failed,
/// and the item's later records wait for the retry, which Lambda starts from the first failed record; a
/// record that can never succeed is logged and skipped, so it never holds up the shard.
pub async fn handle(
    notifier: Arc<Notifier>,
    event: LambdaEvent<StreamEvent>,
) -> Result<StreamBatchResponse, lambda_runtime::Error> {
    let mut items: Vec<Vec<(usize, StreamRecord)>> = Vec::new();
    let mut item_of_key: HashMap<String, usize> = HashMap::new();
    for (index, record) in event.payload.records.into_iter().enumerate() {
        // A record without a key cannot be related to others: it goes alone.
        let key = record.dynamodb.keys.as_ref().map_or_else(|| format!("record {index}"), Value::to_string);
        let item = *item_of_key.entry(key).or_insert_with(|| {
            items.push(Vec::new());
            items.len() - 1
        });
        items[item].push((index, record));
    }
    let mut tasks = JoinSet::new();
    for records in items {
        let notifier = notifier.clone();
        tasks.spawn(async move { push_in_order(&notifier, records).await });
    }
    let mut first_failure: Option<(usize, Option<String>)> = None;
    while let Some(joined) = tasks.join_next().await {
        let failed = match joined {
            Ok(failed) => failed,
            Err(panic) => {
                tracing::error!(error = %panic, "a record's push panicked");
                return Err("a stream record's handler panicked; retrying the batch".into());
            }
        };
        if let Some((index, sequence)) = failed
            && first_failure.as_ref().is_none_or(|(first, _)| index < *first)
        {
            first_failure = Some((index, sequence));
        }
    }
    let mut response = StreamBatchResponse::default();
    if let Some((_, sequence)) = first_failure {
        let sequence = sequence.ok_or("a failed stream record has no SequenceNumber")?;
        response.batch_item_failures.push(StreamItemFailure { item_identifier: sequence });
    }
    Ok(response)
}

/// Pushes one item's records in stream order. Stops at the first record that may succeed later and
/// answers its batch index and sequence number; the records after it are pushed when Lambda retries.
async fn push_in_order(notifier: &Notifier, records: Vec<(usize, StreamRecord)>) -> Option<(usize, Option<String>)> {
    for (index, record) in records {
        let sequence = record.dynamodb.sequence_number.clone();
        let Err(error) = notifier.notify(&record).await else { continue };
        let sequence_text = sequence.as_deref().unwrap_or_default();
        if error.is_retryable() {
            tracing::warn!(%error, sequence = sequence_text, "stream record failed; Lambda retries from it");
            return Some((index, sequence));
        }
        tracing::error!(
            %error,
            sequence = sequence_text,
            event_id = record.event_id.as_deref().unwrap_or_default(),
            "skipping a stream record that can never be pushed"
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> StreamEvent {
        let path = format!("{}/../../events/dynamodb-job-changes.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn pushes_status_and_progress_changes_only() {
        let record = fixture().records.remove(0);
        let message = push_message(&record).unwrap().expect("processing -> completed is pushed");
        assert_eq!(message["type"], "job");
        assert_eq!(message["status"], "completed");
        assert_eq!(message["progress"], 100);
        assert_eq!(message["result"], serde_json::json!({"message": "hi"}));
        assert_eq!(message["jobId"], "0191f7c4-2b57-7a3e-9d8e-4c1b2a3f5e6d");

        let mut unchanged = record.clone();
        unchanged.dynamodb.old_image = unchanged.dynamodb.new_image.clone();
        assert_eq!(push_message(&unchanged).unwrap(), None, "a write that changes neither is not pushed");

        let mut inserted = record.clone();
        inserted.event_name = Some("INSERT".into());
        inserted.dynamodb.old_image = None;
        assert_eq!(push_message(&inserted).unwrap().unwrap()["status"], "completed");

        let mut removed = record.clone();
        removed.event_name = Some("REMOVE".into());
        assert_eq!(push_message(&removed).unwrap(), None, "TTL deletions are not pushed");

        let mut corrupt = record;
        corrupt.dynamodb.new_image = Some(serde_json::json!({"jobId": {"S": "not-a-uuid"}}));
        assert!(push_message(&corrupt).is_err(), "a malformed image is an error, not a panic");
    }
}
