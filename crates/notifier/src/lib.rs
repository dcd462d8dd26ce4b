//! The notifier: reads the jobs table's DynamoDB stream and pushes each change of a job's status or
//! progress to the WebSocket connections subscribed to that job.

use std::sync::Arc;

use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use jobpipe_core::StoreError;
use jobpipe_core::connections::ConnectionStore;
use jobpipe_core::store::job_from_stream_image;
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

#[derive(Debug, Clone)]
pub struct Notifier {
    pub connections: ConnectionStore,
    pub push: aws_sdk_apigatewaymanagement::Client,
}

/// What a record asked of us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery {
    pub delivered: usize,
    /// Connections that were gone and are now removed.
    pub gone: usize,
}

impl Notifier {
    /// Builds the management API client for `endpoint` (the WebSocket API's `https://.../{stage}` URL).
    pub fn new(shared: &aws_config::SdkConfig, connections: ConnectionStore, endpoint: &str) -> Notifier {
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(shared).endpoint_url(endpoint).build();
        Notifier { connections, push: aws_sdk_apigatewaymanagement::Client::from_conf(config) }
    }

    /// Pushes one stream record's change, if it is one a client cares about.
    pub async fn notify(&self, record: &StreamRecord) -> Result<Delivery, StoreError> {
        let Some(message) = push_message(record)? else { return Ok(Delivery::default()) };
        let job_id = jobpipe_core::JobId::parse(message["jobId"].as_str().unwrap_or_default())
            .ok_or_else(|| StoreError::corrupt("stream record", "job id is not a UUID"))?;
        let subscribers = self.connections.subscribers(&job_id).await?;
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
                    tracing::info!(%connection_id, "connection gone; removing it");
                    self.connections.disconnect(&connection_id).await?;
                    delivery.gone += 1;
                }
                Err(err) => {
                    let error = StoreError::from_sdk(format!("PostToConnection {connection_id}"), err);
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

/// The message for a record: `None` when nothing a client sees changed (or the job was deleted).
pub fn push_message(record: &StreamRecord) -> Result<Option<Value>, StoreError> {
    if record.event_name.as_deref() == Some("REMOVE") {
        return Ok(None);
    }
    let Some(new_image) = &record.dynamodb.new_image else { return Ok(None) };
    let new = job_from_stream_image(new_image)?;
    if let Some(old_image) = &record.dynamodb.old_image {
        let old = job_from_stream_image(old_image)?;
        if old.status == new.status && old.progress == new.progress {
            return Ok(None);
        }
    }
    Ok(Some(new.status_message()))
}

/// The Lambda handler: records whose push may succeed later are reported failed; Lambda retries from
/// the first of them.
pub async fn handle(
    notifier: Arc<Notifier>,
    event: LambdaEvent<StreamEvent>,
) -> Result<StreamBatchResponse, lambda_runtime::Error> {
    let mut tasks = JoinSet::new();
    for (index, record) in event.payload.records.into_iter().enumerate() {
        let notifier = notifier.clone();
        tasks.spawn(async move { (index, record.dynamodb.sequence_number.clone(), notifier.notify(&record).await) });
    }
    let mut first_failure: Option<(usize, Option<String>)> = None;
    while let Some(joined) = tasks.join_next().await {
        let (index, sequence, result) = match joined {
            Ok(done) => done,
            Err(panic) => {
                tracing::error!(error = %panic, "a record's push panicked");
                return Err("a stream record's handler panicked; retrying the batch".into());
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, sequence = sequence.as_deref().unwrap_or_default(), "stream record failed");
            if first_failure.as_ref().is_none_or(|(i, _)| index < *i) {
                first_failure = Some((index, sequence));
            }
        }
    }
    let mut response = StreamBatchResponse::default();
    if let Some((_, sequence)) = first_failure {
        let sequence = sequence.ok_or("a failed stream record has no SequenceNumber")?;
        response.batch_item_failures.push(StreamItemFailure { item_identifier: sequence });
    }
    Ok(response)
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
