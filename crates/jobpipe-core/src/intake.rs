//! Accepting a job: store it as `queued` (idempotently), then send its message.
//!
//! Callers validate the kind and input first; this module only makes the accepted job durable and
//! dispatched, with the guarantees described in `dispatch`.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock::Millis;
use crate::dispatch::Dispatcher;
use crate::error::AwsError;
use crate::job::{Job, JobId, JobStatus};
use crate::payload::PayloadStore;
use crate::store::{CreateOutcome, JobStore};

/// A job to accept, already validated.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub owner: String,
    pub kind: String,
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub correlation_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    New(Job),
    /// The idempotency key named an earlier, identical request: this is its job.
    Replayed(Job),
    /// The idempotency key was used with a different request; nothing was stored.
    KeyReused,
}

#[derive(Debug, Clone)]
pub struct Intake<'a> {
    pub store: &'a JobStore,
    pub payloads: &'a PayloadStore,
    pub dispatcher: &'a Dispatcher,
    /// How long a job may wait for its message before the reconciler re-sends it.
    pub dispatch_grace: Duration,
}

impl Intake<'_> {
    pub async fn accept(&self, new: NewJob, now: Millis) -> Result<Accepted, AwsError> {
        let job_id = match &new.idempotency_key {
            Some(key) => JobId::from_idempotency_key(&new.owner, key),
            None => JobId::new_random(),
        };
        let request_hash = request_hash(&new.kind, &new.input);
        let input = self.payloads.put_input(&job_id, &request_hash[..16], &new.input).await?;
        let job = Job {
            job_id,
            owner: new.owner,
            kind: new.kind,
            status: JobStatus::Queued,
            input,
            result: None,
            error: None,
            last_error: None,
            attempts: 0,
            progress: 0,
            created_at: now,
            started_at: None,
            completed_at: None,
            updated_at: now,
            lease: None,
            idempotency_key: new.idempotency_key,
            request_hash,
            correlation_id: new.correlation_id,
            dispatch_due_at: Some(now + self.dispatch_grace.as_millis() as Millis),
            dispatched_at: None,
        };
        let (job, accepted) = match self.store.create(&job).await? {
            CreateOutcome::Created(job) => (job.clone(), Accepted::New(job)),
            CreateOutcome::Replayed(job) => (job.clone(), Accepted::Replayed(job)),
            CreateOutcome::KeyReused(_) => return Ok(Accepted::KeyReused),
        };
        // Also for a replay: if the first request died before sending, this sends it now.
        if job.dispatched_at.is_none()
            && job.status == JobStatus::Queued
            && let Err(error) =
                self.dispatcher.dispatch(self.store, &job.job_id, &job.kind, &job.correlation_id, now).await
        {
            // The job is durable; the reconciler sends it after the grace period, so accepting is
            // still a promise we keep.
            tracing::warn!(job_id = %job.job_id, %error, "job stored but its message was not sent; the reconciler will send it");
        }
        Ok(accepted)
    }
}

/// What makes two submissions "the same request": kind and input, canonically encoded (serde_json
/// sorts object keys).
pub fn request_hash(kind: &str, input: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update([0]);
    hasher.update(input.to_string().as_bytes());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_hash_ignores_key_order_but_not_content() {
        let a = request_hash("echo", &json!({"a": 1, "b": {"c": 2, "d": 3}}));
        let b = request_hash("echo", &json!({"b": {"d": 3, "c": 2}, "a": 1}));
        assert_eq!(a, b);
        assert_ne!(a, request_hash("echo", &json!({"a": 1, "b": {"c": 2, "d": 4}})));
        assert_ne!(a, request_hash("image", &json!({"a": 1, "b": {"c": 2, "d": 3}})));
    }
}
