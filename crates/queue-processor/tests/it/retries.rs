//! Failures: a retryable one is retried with backoff up to the attempt limit, a permanent one is final
//! at once, and a job that outlives its invocation is released for the next.

use jobpipe_core::clock::Clock;
use jobpipe_core::job::JobStatus;
use jobpipe_testkit::StackOptions;
use queue_processor::RecordOutcome;
use serde_json::json;

use crate::helpers::{harness, harness_with};

#[tokio::test]
async fn a_retryable_failure_is_retried_until_it_succeeds() {
    let h = harness().await;
    let job = h.submit(json!({"failTimes": 2})).await;

    for attempt in 1..=2 {
        let outcome = h.deliver_one().await;
        assert!(matches!(outcome, RecordOutcome::RetryScheduled { attempt: a, .. } if a == attempt), "{outcome:?}");
        let retrying = h.job(&job.job_id).await;
        assert_eq!(retrying.status, JobStatus::Processing);
        assert_eq!(retrying.last_error.as_ref().map(|e| e.code.as_str()), Some("echo_transient"));
    }
    let outcome = h.deliver_one().await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "{outcome:?}");
    let done = h.job(&job.job_id).await;
    assert_eq!((done.attempts, done.last_error), (3, None));
    assert_eq!(h.main_queue_depth().await, 0);
}

#[tokio::test]
async fn retry_delay_is_set_on_the_message_with_backoff() {
    let h = harness_with(StackOptions::default(), &[("RETRY_BASE_SECONDS", "30")], |_| {}).await;
    h.submit(json!({"failTimes": 1})).await;
    let outcome = h.deliver_one().await;
    let RecordOutcome::RetryScheduled { delay, .. } = outcome else { panic!("{outcome:?}") };
    assert!((15..=30).contains(&delay.as_secs()), "{delay:?}");
    // The message is hidden for the backoff, not redelivered at once.
    assert!(h.stack.receive_batch(1).await.is_empty());
}

#[tokio::test]
async fn a_permanent_failure_fails_the_job_at_once() {
    let h = harness().await;
    let job = h.submit(json!({"failPermanently": true})).await;
    let outcome = h.deliver_one().await;
    assert!(matches!(outcome, RecordOutcome::Failed(_)), "{outcome:?}");
    let failed = h.job(&job.job_id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.unwrap().code, "echo_failed");
    assert_eq!(failed.attempts, 1);
    assert_eq!(h.main_queue_depth().await, 0);
}

#[tokio::test]
async fn after_max_attempts_the_job_fails_with_its_last_error() {
    let h = harness_with(StackOptions::default(), &[("MAX_ATTEMPTS", "3")], |_| {}).await;
    let job = h.submit(json!({"failTimes": 10})).await;
    for _ in 0..2 {
        assert!(matches!(h.deliver_one().await, RecordOutcome::RetryScheduled { .. }));
    }
    let outcome = h.deliver_one().await;
    assert!(matches!(outcome, RecordOutcome::Failed(_)), "{outcome:?}");
    let failed = h.job(&job.job_id).await;
    let error = failed.error.unwrap();
    assert_eq!((failed.attempts, error.code.as_str()), (3, "echo_transient"));
    assert!(error.message.starts_with("gave up after 3 attempts"), "{}", error.message);
}

#[tokio::test]
async fn a_job_that_outlives_the_invocation_deadline_is_released_for_retry() {
    let h = harness().await;
    let job = h.submit(json!({"sleepMs": 10_000})).await;
    let records = h.stack.receive_batch(1).await;
    let deadline = h.clock.now_ms() + 2_500;
    let outcome = h.processor.process_record(&records[0], Some(deadline)).await;
    assert!(matches!(outcome, RecordOutcome::RetryScheduled { .. }), "{outcome:?}");
    let job = h.job(&job.job_id).await;
    assert_eq!(job.last_error.unwrap().code, "deadline_exceeded");
}
