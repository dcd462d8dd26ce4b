//! A batch's progress: one item on the jobs table (`jobId = "batch#<batchId>"`), written as the batch's
//! jobs end, whose one change from `open` to `completed` is the batch's completion.
//!
//! The webhook sender, reading every job's end from the jobs table's stream without ever skipping one,
//! records each batch job's end by adding the job's index
//! to the set of how it ended (`endedCompleted`, `endedFailed`, `endedCancelled`). Adding to a set is
//! idempotent, so a stream record given twice counts once, and the sets' sizes are always the counts of
//! the batch's ended jobs (a job ends once: its terminal status is final). The write that finds every
//! index ended moves `batchState` from `open` to `completed` under that very condition, so whichever
//! writer gets there first, the batch completes once; that change's stream record is what the webhook
//! sender turns into `batch.completed` and the notifier pushes to the batch's subscribers.
//!
//! The item carries neither `owner`/`createdAt` nor the dispatch attributes, so no index holds it. It
//! expires (`expiresAt`) the jobs' retention after the batch completed, never before: a batch's jobs may
//! start months apart, and an item gone between two of its ends would never count to its size.

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use serde_json::{Value, json};

use super::item::{Item, item_from_stream_image, n, s};
use super::{JobStore, attr};
use crate::clock::{Millis, to_rfc3339};
use crate::error::AwsError;
use crate::job::{BatchRef, JobId, JobStatus};

const OPEN: &str = "open";
const COMPLETED: &str = "completed";

/// How far a batch has come, as its progress item records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchProgress {
    pub batch_id: JobId,
    pub tenant: String,
    /// How many jobs the batch has.
    pub total: u32,
    pub completed: u32,
    pub failed: u32,
    pub cancelled: u32,
    /// When the last of its jobs was recorded ended: set once, with the change to `completed`.
    pub completed_at: Option<Millis>,
}

impl BatchProgress {
    /// Nothing recorded yet: no job of the batch has ended.
    pub fn none_ended(batch_id: &JobId, tenant: &str, total: u32) -> BatchProgress {
        BatchProgress {
            batch_id: batch_id.clone(),
            tenant: tenant.to_string(),
            total,
            completed: 0,
            failed: 0,
            cancelled: 0,
            completed_at: None,
        }
    }

    pub fn ended(&self) -> u32 {
        self.completed + self.failed + self.cancelled
    }

    /// Whether the batch's completion was recorded (every job ended).
    pub fn is_completed(&self) -> bool {
        self.completed_at.is_some()
    }

    /// The batch's state as a WebSocket push and a `batch.completed` webhook's `data` carry it.
    pub fn summary(&self) -> Value {
        json!({
            "batchId": self.batch_id,
            "total": self.total,
            "ended": self.ended(),
            "counts": {"completed": self.completed, "failed": self.failed, "cancelled": self.cancelled},
            "done": self.is_completed(),
            "completedAt": self.completed_at.map(to_rfc3339),
        })
    }

    /// The push to the batch's subscribers.
    pub fn message(&self) -> Value {
        let mut message = self.summary();
        message["type"] = Value::from("batch");
        message
    }

    fn from_item(item: &Item) -> Result<BatchProgress, AwsError> {
        let corrupt = |problem: &str| AwsError::corrupt("reading a batch's progress", problem.to_string());
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok());
        let number = |name: &str| item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok());
        let count = |name: &str| item.get(name).and_then(|v| v.as_ns().ok()).map_or(0, |set| set.len() as u32);
        let key = text(attr::JOB_ID).ok_or_else(|| corrupt("no key"))?;
        let batch_id = key
            .strip_prefix(attr::BATCH_ITEM_PREFIX)
            .and_then(JobId::parse)
            .ok_or_else(|| corrupt("the key is not batch#<uuid>"))?;
        let total = number(attr::BATCH_SIZE).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| corrupt("no size"))?;
        let completed_at = match text(attr::BATCH_STATE).map(String::as_str) {
            Some(COMPLETED) => Some(number(attr::COMPLETED_AT).ok_or_else(|| corrupt("completed without a time"))?),
            _ => None,
        };
        Ok(BatchProgress {
            batch_id,
            tenant: text(attr::TENANT).ok_or_else(|| corrupt("no tenant"))?.clone(),
            total,
            completed: count(attr::ENDED_COMPLETED),
            failed: count(attr::ENDED_FAILED),
            cancelled: count(attr::ENDED_CANCELLED),
            completed_at,
        })
    }
}

/// A job's end, as far as what it changes outside the job needs it: read from the stream image's few
/// attributes it needs, so a job whose other attributes would not parse still has its end recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnding {
    pub job_id: JobId,
    pub owner: String,
    /// Completed, failed or cancelled.
    pub status: JobStatus,
    /// Counted against its tenant's open jobs when it was created.
    pub counted: bool,
    pub batch: Option<BatchRef>,
}

impl JobEnding {
    /// The end a stream record shows: `None` unless it takes a job from not ended to ended.
    pub fn of_record(old: &Value, new: &Value) -> Result<Option<JobEnding>, AwsError> {
        let corrupt = |problem: &str| AwsError::corrupt("reading a job's end", problem.to_string());
        let status = |image: &Value| {
            image[attr::STATUS]["S"].as_str().and_then(JobStatus::parse).ok_or_else(|| corrupt("no status"))
        };
        let (before, after) = (status(old)?, status(new)?);
        if before.is_terminal() || !after.is_terminal() {
            return Ok(None);
        }
        let text = |name: &str| new[name]["S"].as_str();
        let number = |name: &str| new[name]["N"].as_str().and_then(|n| n.parse::<u32>().ok());
        let batch =
            match (text(attr::BATCH_ID).and_then(JobId::parse), number(attr::BATCH_INDEX), number(attr::BATCH_SIZE)) {
                (Some(batch_id), Some(index), Some(size)) => Some(BatchRef { batch_id, index, size }),
                (None, None, None) => None,
                _ => return Err(corrupt("a partial batch reference")),
            };
        Ok(Some(JobEnding {
            job_id: text(attr::JOB_ID).and_then(JobId::parse).ok_or_else(|| corrupt("no job id"))?,
            owner: text(attr::OWNER).ok_or_else(|| corrupt("no owner"))?.to_string(),
            status: after,
            counted: new[crate::open_jobs::attr::COUNTED]["BOOL"] == Value::Bool(true),
            batch,
        }))
    }
}

/// Whether a stream image (DynamoDB JSON) is a batch's progress item rather than a job.
pub fn is_batch_image(image: &Value) -> bool {
    image[attr::JOB_ID]["S"].as_str().is_some_and(|key| key.starts_with(attr::BATCH_ITEM_PREFIX))
}

/// A batch's progress item from a stream image.
pub fn batch_from_stream_image(image: &Value) -> Result<BatchProgress, AwsError> {
    BatchProgress::from_item(&item_from_stream_image(image)?)
}

fn batch_key(batch_id: &JobId) -> AttributeValue {
    s(format!("{}{batch_id}", attr::BATCH_ITEM_PREFIX))
}

impl JobStore {
    /// Records that a batch's job ended (`None` for a job in no batch, or not ended); the write that
    /// finds all of the batch's jobs ended also records the batch completed, once. Safe to repeat.
    pub async fn record_batch_end(&self, job: &JobEnding, now: Millis) -> Result<Option<BatchProgress>, AwsError> {
        let Some(batch) = &job.batch else { return Ok(None) };
        let set = match job.status {
            JobStatus::Completed => attr::ENDED_COMPLETED,
            JobStatus::Failed => attr::ENDED_FAILED,
            JobStatus::Cancelled => attr::ENDED_CANCELLED,
            JobStatus::Scheduled | JobStatus::Queued | JobStatus::Processing => return Ok(None),
        };
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::JOB_ID, batch_key(&batch.batch_id))
            // No expiry while open (one written by an earlier version goes).
            .update_expression(
                "ADD #set :index SET #tenant = if_not_exists(#tenant, :tenant), #size = :size, \
                 #state = if_not_exists(#state, :open) REMOVE #expires",
            )
            .expression_attribute_names("#expires", attr::EXPIRES_AT)
            .expression_attribute_names("#set", set)
            .expression_attribute_names("#tenant", attr::TENANT)
            .expression_attribute_names("#size", attr::BATCH_SIZE)
            .expression_attribute_names("#state", attr::BATCH_STATE)
            .expression_attribute_values(":index", AttributeValue::Ns(vec![batch.index.to_string()]))
            .expression_attribute_values(":tenant", s(&job.owner))
            .expression_attribute_values(":size", n(batch.size))
            .expression_attribute_values(":open", s(OPEN))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateItem (a batch job's end)", e))?;
        let progress = BatchProgress::from_item(out.attributes().unwrap_or(&Item::new()))?;
        if progress.is_completed() || progress.ended() < progress.total {
            return Ok(Some(progress));
        }
        self.complete_batch(progress, now).await.map(Some)
    }

    /// Moves a batch whose every job ended from `open` to `completed`; another writer may have done it.
    async fn complete_batch(&self, progress: BatchProgress, now: Millis) -> Result<BatchProgress, AwsError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::JOB_ID, batch_key(&progress.batch_id))
            .update_expression("SET #state = :completed, #completedAt = :now, #expires = :expires")
            .condition_expression("#state = :open")
            .expression_attribute_names("#state", attr::BATCH_STATE)
            .expression_attribute_names("#completedAt", attr::COMPLETED_AT)
            .expression_attribute_names("#expires", attr::EXPIRES_AT)
            .expression_attribute_values(":expires", n(self.expires_at(now)))
            .expression_attribute_values(":completed", s(COMPLETED))
            .expression_attribute_values(":open", s(OPEN))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => BatchProgress::from_item(out.attributes().unwrap_or(&Item::new())),
            Err(err) => match err.as_service_error() {
                // Completed by another writer (the same record, given twice at once): as it found it.
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => match failed.item() {
                    Some(item) if !item.is_empty() => BatchProgress::from_item(item),
                    _ => Ok(progress),
                },
                _ => Err(AwsError::from_sdk("UpdateItem (complete a batch)", err)),
            },
        }
    }

    /// A batch's recorded progress (strongly consistent); `None` until one of its jobs ended.
    pub async fn batch_progress(&self, batch_id: &JobId) -> Result<Option<BatchProgress>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::JOB_ID, batch_key(batch_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem (a batch's progress)", e))?;
        out.item().map(BatchProgress::from_item).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job's end is read from the attributes it needs alone: a job whose result would not parse still
    /// ends (and is counted down, and counts for its batch).
    #[test]
    fn a_jobs_end_reads_from_its_few_attributes() {
        let batch_id = JobId::new_random();
        let job_id = JobId::in_batch(&batch_id, 2);
        let image = |status: &str| {
            json!({"jobId": {"S": job_id.as_str()}, "owner": {"S": "alice"}, "status": {"S": status},
                "result": {"S": "not json"}, "openCounted": {"BOOL": true}, "batchId": {"S": batch_id.as_str()},
                "batchIndex": {"N": "2"}, "batchSize": {"N": "3"}})
        };
        assert!(crate::store::job_from_stream_image(&image("completed")).is_err(), "the whole job does not read");
        let ending = JobEnding::of_record(&image("processing"), &image("completed")).unwrap().unwrap();
        assert_eq!(
            (&ending.job_id, ending.owner.as_str(), ending.status, ending.counted),
            (&job_id, "alice", JobStatus::Completed, true)
        );
        assert_eq!(ending.batch, Some(BatchRef { batch_id: batch_id.clone(), index: 2, size: 3 }));
        assert_eq!(JobEnding::of_record(&image("queued"), &image("processing")).unwrap(), None, "not an end");
        assert_eq!(JobEnding::of_record(&image("failed"), &image("failed")).unwrap(), None, "ended before");
        let mut partial = image("cancelled");
        partial.as_object_mut().unwrap().remove("batchSize");
        assert!(JobEnding::of_record(&image("queued"), &partial).is_err());
    }

    #[test]
    fn a_progress_item_reads_back_from_its_stream_image() {
        let batch_id = JobId::new_random();
        let image = json!({
            "jobId": {"S": format!("batch#{batch_id}")},
            "tenant": {"S": "alice"},
            "batchSize": {"N": "3"},
            "batchState": {"S": "completed"},
            "completedAt": {"N": "1796689130100"},
            "endedCompleted": {"NS": ["0", "2"]},
            "endedCancelled": {"NS": ["1"]},
        });
        assert!(is_batch_image(&image));
        let progress = batch_from_stream_image(&image).unwrap();
        assert_eq!((progress.total, progress.completed, progress.failed, progress.cancelled), (3, 2, 0, 1));
        let message = progress.message();
        assert_eq!(message["type"], "batch");
        assert_eq!(message["done"], true);
        assert_eq!(message["counts"], json!({"completed": 2, "failed": 0, "cancelled": 1}));
        assert_eq!(message["completedAt"], to_rfc3339(1796689130100));

        let mut open = image.clone();
        open["batchState"] = json!({"S": "open"});
        assert_eq!(batch_from_stream_image(&open).unwrap().completed_at, None);
        assert!(!is_batch_image(&json!({"jobId": {"S": batch_id.to_string()}})), "a job is not a batch");
        let mut corrupt = image;
        corrupt["jobId"] = json!({"S": "batch#not-a-uuid"});
        assert!(batch_from_stream_image(&corrupt).is_err());
    }
}
