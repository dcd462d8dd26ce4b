//! The pending-dispatch index: every unfinished job is in it, by when the reconciler should next look at
//! it (see `dispatch`), spread over shards so it never becomes a hot partition.

use super::attr::{DISPATCH_DUE_AT, DISPATCH_SHARD};
use super::item::{get_s, n, s};
use super::update::Update;
use super::{JobStore, attr, conditional};
use crate::clock::Millis;
use crate::error::AwsError;
use crate::job::{JobId, JobStatus};

/// How many partitions the pending-dispatch index is spread over, so it never becomes a hot key.
pub const DISPATCH_SHARDS: u32 = 8;

/// A job whose message may never have reached SQS.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingDispatch {
    pub job_id: JobId,
    pub kind: String,
    pub correlation_id: String,
}

pub fn shard_name(shard: u32) -> String {
    format!("s{shard}")
}

/// The pending-dispatch shard of a job: a stable hash of its id.
pub fn shard_of(job_id: &JobId) -> String {
    stable_shard(job_id.as_str(), DISPATCH_SHARDS)
}

/// One of `shards` shard names for `key`, the same for the same key in every process and version (sparse
/// indexes spread over shards: the pending-dispatch index here, the schedules' `dueTicks`).
pub fn stable_shard(key: &str, shards: u32) -> String {
    let hash = key.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    shard_name(hash % shards)
}

impl JobStore {
    /// The job's message is in SQS as of `now`. Only `dispatchedAt` changes, which the pending-dispatch
    /// index does not project: no index write. A finished job is left alone.
    pub async fn confirm_dispatch(&self, job_id: &JobId, now: Millis) -> Result<(), AwsError> {
        let result = self
            .unfinished(job_id)
            .set(attr::DISPATCHED_AT, ":now")
            .value(":now", n(now))
            .returning_nothing()
            .send()
            .await;
        // A condition failure means the job finished or is gone: nothing left to dispatch.
        conditional(result, "UpdateItem (confirm dispatch)", |_| false).map(|_| ())
    }

    /// When the reconciler should next look at this unfinished job (its place in the pending-dispatch
    /// index). A finished job is left alone.
    pub async fn schedule_dispatch_check(&self, job_id: &JobId, due: Millis) -> Result<(), AwsError> {
        let result = self
            .unfinished(job_id)
            .set(attr::DISPATCH_SHARD, ":shard")
            .set(attr::DISPATCH_DUE_AT, ":due")
            .value(":shard", s(shard_of(job_id)))
            .value(":due", n(due))
            .returning_nothing()
            .send()
            .await;
        conditional(result, "UpdateItem (schedule dispatch check)", |_| false).map(|_| ())
    }

    /// Takes a finished job out of the pending-dispatch index (a mark left by an older version).
    pub async fn clear_dispatch_check(&self, job_id: &JobId) -> Result<(), AwsError> {
        let result = self
            .update(job_id)
            .condition("attribute_exists(#id)")
            .name("#id", attr::JOB_ID)
            .remove(&[attr::DISPATCH_SHARD, attr::DISPATCH_DUE_AT])
            .returning_nothing()
            .send()
            .await;
        conditional(result, "UpdateItem (clear dispatch check)", |_| false).map(|_| ())
    }

    /// An update of a job that exists and has not finished.
    fn unfinished(&self, job_id: &JobId) -> Update {
        self.update(job_id)
            .condition("attribute_exists(#id) AND #status IN (:scheduled, :queued, :processing)")
            .name("#id", attr::JOB_ID)
            .name("#status", attr::STATUS)
            .value(":scheduled", s(JobStatus::Scheduled.as_str()))
            .value(":queued", s(JobStatus::Queued.as_str()))
            .value(":processing", s(JobStatus::Processing.as_str()))
    }

    /// Unfinished jobs the reconciler should look at by `now` (their dispatch check is due).
    pub async fn due_for_dispatch(&self, now: Millis, limit: usize) -> Result<Vec<PendingDispatch>, AwsError> {
        let mut due = Vec::new();
        for shard in 0..DISPATCH_SHARDS {
            let mut start_key = None;
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(attr::PENDING_DISPATCH_INDEX)
                    .key_condition_expression(format!("{DISPATCH_SHARD} = :shard AND {DISPATCH_DUE_AT} <= :now"))
                    .expression_attribute_values(":shard", s(shard_name(shard)))
                    .expression_attribute_values(":now", n(now))
                    .set_exclusive_start_key(start_key.take())
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("Query (pending dispatch)", e))?;
                for item in out.items() {
                    if due.len() == limit {
                        return Ok(due);
                    }
                    // One unreadable entry must not hide every other due job: it is logged and skipped.
                    match pending_dispatch(item) {
                        Ok(pending) => due.push(pending),
                        Err(error) => tracing::warn!(
                            %error,
                            job_id = ?item.get(attr::JOB_ID),
                            "skipped an unreadable entry of the pending-dispatch index"
                        ),
                    }
                }
                match out.last_evaluated_key() {
                    Some(lek) => start_key = Some(lek.clone()),
                    None => break,
                }
            }
        }
        Ok(due)
    }
}

/// An entry of the pending-dispatch index as the sweep needs it.
fn pending_dispatch(item: &super::item::Item) -> Result<PendingDispatch, AwsError> {
    Ok(PendingDispatch {
        job_id: JobId::parse(&get_s(item, attr::JOB_ID)?)
            .ok_or_else(|| AwsError::corrupt("pending dispatch", "job id is not a UUID"))?,
        kind: get_s(item, attr::KIND)?,
        correlation_id: get_s(item, attr::CORRELATION_ID).unwrap_or_default(),
    })
}
