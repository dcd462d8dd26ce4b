//! Pausing a kind: its jobs wait, queued, spending no attempts and no receive counts (so they never reach
//! the dead-letter queue), and run once the kind is resumed.

use jobpipe_core::Clock;
use jobpipe_core::controls::{ControlStore, PAUSED_KINDS_CACHE};
use jobpipe_core::job::JobStatus;
use jobpipe_testkit::StackOptions;
use queue_processor::RecordOutcome;
use serde_json::json;

use crate::helpers::{Harness, harness_with};

/// Paused kinds are looked at again after a second here (a minute by default).
async fn harness() -> (Harness, ControlStore) {
    let options = StackOptions { max_receive_count: 2, ..Default::default() };
    let h = harness_with(options, &[("PAUSED_KIND_RECHECK_SECONDS", "1")], |_| {}).await;
    let controls = ControlStore::new(h.stack.clients.dynamodb.clone(), &h.stack.control_table);
    (h, controls)
}

#[tokio::test]
async fn a_paused_kinds_jobs_wait_without_spending_attempts_and_run_once_resumed() {
    let (h, controls) = harness().await;
    assert_eq!(controls.pause_kind("echo").await.unwrap().into_iter().collect::<Vec<_>>(), ["echo"]);
    let job = h.submit(json!({"n": 1})).await;
    // More deliveries than the queue's maxReceiveCount (2 here): each is a new message, so none counts.
    for _ in 0..3 {
        let outcome = h.deliver_when_visible(30).await;
        assert!(matches!(outcome, RecordOutcome::Requeued { .. }), "{outcome:?}");
        let waiting = h.job(&job.job_id).await;
        assert_eq!((waiting.status, waiting.attempts), (JobStatus::Queued, 0), "{waiting:?}");
    }
    assert_eq!(h.stack.queue_depth(&h.stack.dlq_url).await, 0, "nothing reached the dead-letter queue");

    controls.resume_kind("echo").await.unwrap();
    assert!(controls.paused_kinds().await.unwrap().is_empty());
    // Each execution environment trusts what it read for a few seconds.
    h.clock.advance_ms(PAUSED_KINDS_CACHE.as_millis() as i64);
    let outcome = h.deliver_when_visible(30).await;
    let RecordOutcome::Completed(done) = outcome else { panic!("expected completion, got {outcome:?}") };
    assert_eq!(done.attempts, 1);
    assert_eq!(h.main_queue_depth().await, 0);
}

/// A message without its kind attribute (sent by hand, say) is found out by the claim: the job is
/// released with its attempt given back and waits like the others.
#[tokio::test]
async fn a_message_without_its_kind_still_waits_while_the_kind_is_paused() {
    let (h, controls) = harness().await;
    controls.pause_kind("echo").await.unwrap();
    let job = h.submit(json!({})).await;
    // Its own message (with the attribute) is taken off the queue first.
    let own = h.stack.receive_batch(1).await;
    h.stack.settle(&own, &Default::default()).await;
    let body = json!({"jobId": job.job_id}).to_string();
    h.stack.clients.sqs.send_message().queue_url(&h.stack.queue_url).message_body(body).send().await.unwrap();
    let outcome = h.deliver_when_visible(30).await;
    assert!(matches!(outcome, RecordOutcome::Requeued { .. }), "{outcome:?}");
    let waiting = h.job(&job.job_id).await;
    assert_eq!(waiting.attempts, 0, "the attempt was given back: {waiting:?}");
    assert_eq!(waiting.last_error.map(|e| e.code).as_deref(), Some("kind_paused"));
    controls.resume_kind("echo").await.unwrap();
    h.clock.advance_ms(PAUSED_KINDS_CACHE.as_millis() as i64);
    let outcome = h.deliver_when_visible(30).await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "{outcome:?}");
}

/// Paused kinds that cannot be read for a lasting reason (no permission, no table) hold jobs back rather
/// than run them (a deployment missing the permission would otherwise ignore every pause without a
/// word), and hold them as a pause does: no attempt and no receive count spent, so a broken control
/// table never sends jobs to the dead-letter queue.
#[tokio::test]
async fn unreadable_paused_kinds_hold_jobs_back_instead_of_ignoring_pauses() {
    let options = StackOptions { max_receive_count: 2, ..Default::default() };
    let overrides = [("CONTROL_TABLE", "no-such-control-table"), ("PAUSED_KIND_RECHECK_SECONDS", "1")];
    let h = harness_with(options, &overrides, |_| {}).await;
    let job = h.submit(json!({})).await;
    for _ in 0..3 {
        let outcome = h.deliver_when_visible(30).await;
        assert!(matches!(outcome, RecordOutcome::Requeued { .. }), "{outcome:?}");
    }
    let held = h.job(&job.job_id).await;
    assert_eq!((held.status, held.attempts), (JobStatus::Queued, 0), "{held:?}");
    assert_eq!(h.stack.queue_depth(&h.stack.dlq_url).await, 0, "nothing reached the dead-letter queue");
}

/// A job cancelled (or expired) while its kind is paused is not held any longer: its message is done.
#[tokio::test]
async fn a_cancelled_job_of_a_paused_kind_is_not_held_forever() {
    let (h, controls) = harness().await;
    controls.pause_kind("echo").await.unwrap();
    let job = h.submit(json!({})).await;
    let outcome = h.deliver_when_visible(30).await;
    assert!(matches!(outcome, RecordOutcome::Requeued { .. }), "{outcome:?}");
    let cancelled = h.processor.store.cancel(&job.job_id, "alice", h.clock.now_ms()).await.unwrap();
    assert!(matches!(cancelled, jobpipe_core::store::CancelOutcome::Cancelled(_)), "{cancelled:?}");
    let outcome = h.deliver_when_visible(30).await;
    assert!(
        matches!(&outcome, RecordOutcome::AlreadyFinished(job) if job.status == JobStatus::Cancelled),
        "{outcome:?}"
    );
    assert_eq!(h.main_queue_depth().await, 0, "not sent again");
}
