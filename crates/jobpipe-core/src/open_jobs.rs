//! Per-tenant open jobs (accepted and not yet ended: scheduled, queued or running), bounded by a quota.
//!
//! Each tenant with a limit has a counter in the control table (`name = "open#<owner>"`). A submission
//! counts itself up in the same transaction that creates its job, conditioned on the counter being under
//! the limit: concurrent submissions cannot overshoot, and a refused one stores nothing. The job item is
//! marked (`openCounted`), and when a marked job ends, the table's stream consumer counts it down, once:
//! the decrement is a transaction with a marker item per job (`released#<jobId>`, kept a week by TTL),
//! so a stream record delivered again finds its marker and changes nothing.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

use crate::clock::Millis;
use crate::error::AwsError;
use crate::job::JobId;

pub mod attr {
    pub const NAME: &str = crate::controls::attr::NAME;
    /// A tenant's open jobs are counted in the item `open#<owner>`.
    pub const OPEN_PREFIX: &str = "open#";
    pub const COUNT: &str = crate::controls::attr::COUNT;
    /// A job counted down is remembered by the item `released#<jobId>`.
    pub const RELEASED_PREFIX: &str = "released#";
    pub const EXPIRES_AT: &str = crate::controls::attr::EXPIRES_AT;
    /// On a job item: the job was counted as open when it was created.
    pub const COUNTED: &str = "openCounted";
}

/// How long a job's "counted down" marker is kept: far longer than a stream record can be delivered
/// again (a stream keeps records 24 hours).
const RELEASED_MARKER_SECONDS: i64 = 7 * 24 * 60 * 60;

#[derive(Debug, Clone)]
pub struct OpenJobs {
    client: Client,
    table: String,
}

impl OpenJobs {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        OpenJobs { client, table: table.into() }
    }

    fn key(owner: &str) -> AttributeValue {
        AttributeValue::S(format!("{}{owner}", attr::OPEN_PREFIX))
    }

    /// The write that counts one more open job of `owner` if it stays within `limit`: one item of the
    /// transaction that creates the job (`JobStore::create_counted`).
    pub fn count_up(&self, owner: &str, limit: u32) -> TransactWriteItem {
        self.count_up_by(owner, 1, limit)
    }

    /// The write that counts `n` more open jobs of `owner` (a batch) if all of them stay within `limit`.
    /// `n` is at most `limit` (a larger batch can never fit: the caller refuses it without writing).
    pub fn count_up_by(&self, owner: &str, n: u32, limit: u32) -> TransactWriteItem {
        debug_assert!(n <= limit, "a batch larger than the limit is refused before");
        let update = Update::builder()
            .table_name(&self.table)
            .key(attr::NAME, Self::key(owner))
            .update_expression("ADD #count :n")
            .condition_expression("attribute_not_exists(#count) OR #count <= :room")
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_values(":n", AttributeValue::N(n.to_string()))
            .expression_attribute_values(":room", AttributeValue::N(limit.saturating_sub(n).to_string()))
            .build()
            .expect("table, key and expression are set");
        TransactWriteItem::builder().update(update).build()
    }

    /// Counts an ended job of `owner` down, once however often it is asked: answers whether this call
    /// did it.
    pub async fn count_down(&self, owner: &str, job_id: &JobId, now: Millis) -> Result<bool, AwsError> {
        let marker = Put::builder()
            .table_name(&self.table)
            .item(attr::NAME, AttributeValue::S(format!("{}{job_id}", attr::RELEASED_PREFIX)))
            .item(attr::EXPIRES_AT, AttributeValue::N((now / 1000 + RELEASED_MARKER_SECONDS).to_string()))
            .condition_expression("attribute_not_exists(#name)")
            .expression_attribute_names("#name", attr::NAME)
            .build()
            .expect("table and item are set");
        let decrement = Update::builder()
            .table_name(&self.table)
            .key(attr::NAME, Self::key(owner))
            .update_expression("ADD #count :minus_one")
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_values(":minus_one", AttributeValue::N("-1".into()))
            .build()
            .expect("table, key and expression are set");
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(marker).build())
            .transact_items(TransactWriteItem::builder().update(decrement).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if cancelled_by_condition(&err, 0) => Ok(false),
            Err(err) => Err(AwsError::from_sdk("TransactWriteItems (count an ended job down)", err)),
        }
    }

    /// `owner`'s open jobs as counted now (a consistent read; for operators and tests).
    pub async fn count(&self, owner: &str) -> Result<i64, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::NAME, Self::key(owner))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem (open jobs)", e))?;
        Ok(out.item().and_then(|item| item.get(attr::COUNT)).and_then(|n| n.as_n().ok()?.parse().ok()).unwrap_or(0))
    }
}

/// Whether a transaction was cancelled because the condition of its item `index` failed.
pub fn cancelled_by_condition<R>(err: &TransactError<R>, index: usize) -> bool {
    cancellation_reasons(err)
        .and_then(|reasons| reasons.get(index).cloned().flatten())
        .is_some_and(|(code, _)| code == "ConditionalCheckFailed")
}

/// Why one item of a cancelled transaction failed: its code, and the item as it was (when asked for).
pub type Cancellation = (String, Option<HashMap<String, AttributeValue>>);

/// A failed `TransactWriteItems`.
pub type TransactError<R> =
    aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>;

/// The cancellation reasons of a cancelled transaction: per item, why it failed, or `None` where nothing
/// did.
pub fn cancellation_reasons<R>(err: &TransactError<R>) -> Option<Vec<Option<Cancellation>>> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() else {
        return None;
    };
    Some(
        cancelled
            .cancellation_reasons()
            .iter()
            .map(|reason| {
                let code = reason.code().filter(|code| *code != "None")?;
                Some((code.to_string(), reason.item().cloned()))
            })
            .collect(),
    )
}
