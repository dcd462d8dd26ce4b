//! Lost responses: a write that took effect while its response was lost is the transition's own, not
//! a conflict.

use jobpipe_core::job::{Job, JobStatus};
use jobpipe_testkit::ScriptedFault;
use queue_processor::RecordOutcome;
use serde_json::{Value, json};

use crate::helpers::harness_through_proxy;

/// The `UpdateItem` of one transition (matched by its update expression) takes effect, but its response is
/// lost; the SDK retries it and the retry's condition fails against the write itself. Each transition
/// must recognise its own write: before, a claim saw its own lease as held elsewhere (and the next claim
/// spent an attempt), and a complete, fail or release reported the lease lost.
async fn with_a_lost_update(transition: &str, input: Value) -> (RecordOutcome, Job) {
    let (h, proxy) = harness_through_proxy().await;
    let job = h.submit(input).await;
    proxy.script(ScriptedFault::lost_response("DynamoDB_20120810.UpdateItem", transition));
    let outcome = h.deliver_one().await;
    assert_eq!(proxy.scripted_pending(), 0, "the lost response was injected");
    (outcome, h.job(&job.job_id).await)
}

#[tokio::test]
async fn a_claim_whose_response_was_lost_is_still_this_workers_claim() {
    let (outcome, job) = with_a_lost_update("leaseToken = :token, leaseExpiresAt = :expires", json!({})).await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "{outcome:?}");
    assert_eq!((job.status, job.attempts), (JobStatus::Completed, 1));
}

#[tokio::test]
async fn a_completion_whose_response_was_lost_is_still_completed() {
    let (outcome, job) = with_a_lost_update("#status = :completed", json!({"n": 1})).await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "{outcome:?}");
    assert_eq!((job.status, job.attempts), (JobStatus::Completed, 1));
}

#[tokio::test]
async fn a_failure_whose_response_was_lost_is_still_failed() {
    let (outcome, job) =
        with_a_lost_update("#status = :failed, errorCode = :code", json!({"failPermanently": true})).await;
    assert!(matches!(outcome, RecordOutcome::Failed(_)), "{outcome:?}");
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.map(|e| e.code).as_deref(), Some("echo_failed"));
}

#[tokio::test]
async fn a_release_whose_response_was_lost_still_schedules_the_retry() {
    let (outcome, job) = with_a_lost_update("leaseExpiresAt = :released", json!({"failTimes": 1})).await;
    assert!(matches!(outcome, RecordOutcome::RetryScheduled { attempt: 1, .. }), "{outcome:?}");
    assert_eq!((job.status, job.attempts), (JobStatus::Processing, 1));
    assert_eq!(job.last_error.map(|e| e.code).as_deref(), Some("echo_transient"));
}
