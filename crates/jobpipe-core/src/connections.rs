//! The WebSocket connections table: who is connected, and which jobs each connection follows.
//!
//! One item per connection (`jobId = "-"`, holding the caller) and one per subscription
//! (`jobId = <job id>`, or `batch#<batch id>` for a batch's progress: a `Subject`), all under the
//! connection id as partition key; the `byJob` GSI finds a subject's subscribers. Items carry a TTL so connections that vanished without `$disconnect` expire.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};

use crate::clock::Millis;
use crate::error::AwsError;
use crate::job::JobId;

pub mod attr {
    pub const CONNECTION_ID: &str = "connectionId";
    pub const JOB_ID: &str = "jobId";
    pub const OWNER: &str = "owner";
    pub const CONNECTED_AT: &str = "connectedAt";
    pub const EXPIRES_AT: &str = "expiresAt";
    /// GSI: jobId (hash) + connectionId (range).
    pub const BY_JOB_INDEX: &str = "byJob";
    /// The sort key of the connection's own item.
    pub const CONNECTION_ITEM: &str = "-";
}

/// What a connection follows: a job's changes, or a batch's progress.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Job(JobId),
    Batch(JobId),
}

impl Subject {
    /// The subscription item's sort key.
    fn key(&self) -> String {
        match self {
            Subject::Job(job_id) => job_id.to_string(),
            Subject::Batch(batch_id) => format!("{}{batch_id}", crate::store::attr::BATCH_ITEM_PREFIX),
        }
    }
}

impl From<&JobId> for Subject {
    fn from(job_id: &JobId) -> Subject {
        Subject::Job(job_id.clone())
    }
}

/// API Gateway closes a WebSocket after two hours at most; rows outlive that by a margin.
const CONNECTION_TTL_SECS: i64 = 3 * 60 * 60;

/// What became of a connection whose push was answered `GoneException`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneConnection {
    /// It was registered long enough ago to be really gone: it and its subscriptions are removed.
    Forgotten,
    /// It was registered so recently that its `$connect` may not have returned yet: kept.
    MayStillBeConnecting,
}

#[derive(Debug, Clone)]
pub struct ConnectionStore {
    client: Client,
    table: String,
}

impl ConnectionStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        ConnectionStore { client, table: table.into() }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Records a new connection and its caller.
    pub async fn connect(&self, connection_id: &str, owner: &str, now: Millis) -> Result<(), AwsError> {
        self.put(connection_id, attr::CONNECTION_ITEM, owner, now).await
    }

    /// The caller of a connection, if it is (still) registered.
    pub async fn owner_of(&self, connection_id: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::CONNECTION_ID, s(connection_id))
            .key(attr::JOB_ID, s(attr::CONNECTION_ITEM))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem (connection)", e))?;
        Ok(out.item().and_then(|item| item.get(attr::OWNER)).and_then(|v| v.as_s().ok()).cloned())
    }

    pub async fn subscribe(
        &self,
        connection_id: &str,
        owner: &str,
        subject: impl Into<Subject>,
        now: Millis,
    ) -> Result<(), AwsError> {
        self.put(connection_id, &subject.into().key(), owner, now).await
    }

    pub async fn unsubscribe(&self, connection_id: &str, subject: impl Into<Subject>) -> Result<(), AwsError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(attr::CONNECTION_ID, s(connection_id))
            .key(attr::JOB_ID, s(&subject.into().key()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DeleteItem (subscription)", e))?;
        Ok(())
    }

    /// Connections subscribed to a job or a batch.
    pub async fn subscribers(&self, subject: impl Into<Subject>) -> Result<Vec<String>, AwsError> {
        let key = subject.into().key();
        let mut connections = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(attr::BY_JOB_INDEX)
                .key_condition_expression("#job = :job")
                .expression_attribute_names("#job", attr::JOB_ID)
                .expression_attribute_values(":job", s(&key))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("Query (subscribers of a job)", e))?;
            connections
                .extend(out.items().iter().filter_map(|item| item.get(attr::CONNECTION_ID)?.as_s().ok().cloned()));
            match out.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(connections),
            }
        }
    }

    /// Removes a connection and all its subscriptions (`$disconnect`).
    pub async fn disconnect(&self, connection_id: &str) -> Result<(), AwsError> {
        let items = self.items_of(connection_id).await?;
        self.delete(items).await
    }

    /// Handles a push that API Gateway answered `GoneException`. API Gateway answers so both for a
    /// connection that is gone and for one whose `$connect` has not returned yet, and nothing tells the
    /// two apart while `$connect` runs (`GetConnection` answers `GoneException` too). A connection
    /// registered less than `connect_grace` ago may still be connecting, so it is kept; an older one is
    /// gone, and is removed with all its subscriptions.
    pub async fn forget_gone(
        &self,
        connection_id: &str,
        now: Millis,
        connect_grace: Millis,
    ) -> Result<GoneConnection, AwsError> {
        let items = self.items_of(connection_id).await?;
        let connected_at = items
            .iter()
            .find(|item| {
                item.get(attr::JOB_ID).and_then(|v| v.as_s().ok()).map(String::as_str) == Some(attr::CONNECTION_ITEM)
            })
            .and_then(|item| item.get(attr::CONNECTED_AT)?.as_n().ok()?.parse::<Millis>().ok());
        if connected_at.is_some_and(|at| now - at < connect_grace) {
            return Ok(GoneConnection::MayStillBeConnecting);
        }
        self.delete(items).await?;
        Ok(GoneConnection::Forgotten)
    }

    /// Every item of a connection (its own and its subscriptions), read consistently.
    async fn items_of(&self, connection_id: &str) -> Result<Vec<HashMap<String, AttributeValue>>, AwsError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#c = :c")
                .expression_attribute_names("#c", attr::CONNECTION_ID)
                .expression_attribute_names("#j", attr::JOB_ID)
                .expression_attribute_names("#at", attr::CONNECTED_AT)
                .expression_attribute_values(":c", s(connection_id))
                .projection_expression("#c, #j, #at")
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("Query (items of a connection)", e))?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(items),
            }
        }
    }

    /// Deletes items of the table by their keys.
    async fn delete(&self, items: Vec<HashMap<String, AttributeValue>>) -> Result<(), AwsError> {
        let deletes: Vec<WriteRequest> = items
            .into_iter()
            .map(|mut item| {
                item.retain(|name, _| name == attr::CONNECTION_ID || name == attr::JOB_ID);
                WriteRequest::builder()
                    .delete_request(DeleteRequest::builder().set_key(Some(item)).build().expect("key set"))
                    .build()
            })
            .collect();
        for chunk in deletes.chunks(25) {
            let mut pending = HashMap::from([(self.table.clone(), chunk.to_vec())]);
            // BatchWriteItem may hand back unprocessed items under load; retry those a few times.
            for _ in 0..5 {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(pending))
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("BatchWriteItem (remove connection)", e))?;
                match out.unprocessed_items() {
                    Some(rest) if rest.values().any(|v| !v.is_empty()) => pending = rest.clone(),
                    _ => break,
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    async fn put(&self, connection_id: &str, job_id: &str, owner: &str, now: Millis) -> Result<(), AwsError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(attr::CONNECTION_ID, s(connection_id))
            .item(attr::JOB_ID, s(job_id))
            .item(attr::OWNER, s(owner))
            .item(attr::CONNECTED_AT, AttributeValue::N(now.to_string()))
            .item(attr::EXPIRES_AT, AttributeValue::N((now / 1000 + CONNECTION_TTL_SECS).to_string()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("PutItem (connection)", e))?;
        Ok(())
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}
