//! Leases: one worker at a time, a stale worker's writes refused, a dead worker's job taken over and,
//! once workers have died on every attempt, failed.

use jobpipe_core::clock::Clock;
use jobpipe_core::job::{ErrorInfo, JobStatus, Lease, Payload};
use jobpipe_core::store::{ClaimOutcome, FenceOutcome};
use jobpipe_testkit::StackOptions;
use queue_processor::RecordOutcome;
use serde_json::json;

use crate::helpers::{harness, harness_with};

#[tokio::test]
async fn the_same_job_on_two_workers_at_once_runs_once() {
    let h = harness().await;
    let job = h.submit(json!({"sleepMs": 400})).await;
    let records = h.stack.receive_batch(1).await;

    let (a, b) =
        tokio::join!(h.processor.process_record(&records[0], None), h.processor.process_record(&records[0], None));
    let completed = [&a, &b].iter().filter(|o| matches!(o, RecordOutcome::Completed(_))).count();
    let held = [&a, &b].iter().filter(|o| matches!(o, RecordOutcome::HeldElsewhere { .. })).count();
    assert_eq!((completed, held), (1, 1), "{a:?} / {b:?}");
    // The loser is retried later, never acknowledged (which would drop a message another worker needs).
    assert!(!a.acknowledges() || !b.acknowledges());
    let done = h.job(&job.job_id).await;
    assert_eq!((done.status, done.attempts), (JobStatus::Completed, 1));
}

#[tokio::test]
async fn a_stale_worker_cannot_overwrite_the_outcome() {
    let h = harness().await;
    let job = h.submit(json!({"value": "from the new worker"})).await;
    let store = &h.processor.store;

    // Worker A claims, then stalls past its lease.
    let stale = Lease { token: "worker-a".into(), expires_at: h.clock.now_ms() + 1_000 };
    assert!(matches!(store.claim(&job.job_id, &stale, 5, h.clock.now_ms()).await.unwrap(), ClaimOutcome::Claimed(_)));
    h.clock.advance_ms(2_000);

    // Worker B takes over; A's late writes are rejected whether B is still running or has finished.
    let fresh = Lease { token: "worker-b".into(), expires_at: h.clock.now_ms() + 60_000 };
    assert!(matches!(store.claim(&job.job_id, &fresh, 5, h.clock.now_ms()).await.unwrap(), ClaimOutcome::Claimed(_)));
    let stale_result = Payload::Inline(json!("from the stale worker"));
    let rejected = store.complete(&job.job_id, "worker-a", &stale_result, h.clock.now_ms()).await.unwrap();
    assert!(matches!(rejected, FenceOutcome::LeaseLost(_)), "{rejected:?}");
    let failure = ErrorInfo { code: "x".into(), message: "stale".into() };
    assert!(matches!(
        store.fail(&job.job_id, "worker-a", &failure, h.clock.now_ms()).await.unwrap(),
        FenceOutcome::LeaseLost(_)
    ));

    let good = Payload::Inline(json!("from the new worker"));
    assert!(matches!(
        store.complete(&job.job_id, "worker-b", &good, h.clock.now_ms()).await.unwrap(),
        FenceOutcome::Done(_)
    ));
    let late = store.complete(&job.job_id, "worker-a", &stale_result, h.clock.now_ms()).await.unwrap();
    assert!(matches!(late, FenceOutcome::LeaseLost(Some(ref j)) if j.status == JobStatus::Completed));
    let done = h.job(&job.job_id).await;
    assert_eq!((done.status, done.result, done.attempts), (JobStatus::Completed, Some(good), 2));
}

#[tokio::test]
async fn a_crashed_workers_lease_is_taken_over_after_it_expires() {
    let h = harness().await;
    let job = h.submit(json!({})).await;

    // The first delivery's worker claims and dies: no outcome, no acknowledgement.
    let records = h.stack.receive_batch(1).await;
    let dead = Lease { token: "dead-worker".into(), expires_at: h.clock.now_ms() + 30_000 };
    h.processor.store.claim(&job.job_id, &dead, 5, h.clock.now_ms()).await.unwrap();
    h.stack.expire_visibility(&records).await;

    // Redelivered while the lease is live: retried later, not run and not dropped.
    let records = h.stack.receive_batch(1).await;
    let outcome = h.processor.process_record(&records[0], None).await;
    assert!(matches!(outcome, RecordOutcome::HeldElsewhere { .. }), "{outcome:?}");
    assert!(!outcome.acknowledges());
    assert_eq!(h.job(&job.job_id).await.status, JobStatus::Processing);
    // The reply hid the message until the lease ends (about 30 s): it is not redelivered before.
    assert!(h.stack.receive_batch(1).await.is_empty());

    // After the lease expires the next delivery takes over and finishes the job.
    h.clock.advance_ms(31_000);
    h.stack.expire_visibility(&records).await;
    let outcome = h.deliver_one().await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "{outcome:?}");
    assert_eq!(h.job(&job.job_id).await.attempts, 2);
}

#[tokio::test]
async fn workers_that_keep_dying_exhaust_the_attempts_and_the_job_fails() {
    let h = harness_with(StackOptions::default(), &[("MAX_ATTEMPTS", "2")], |_| {}).await;
    let job = h.submit(json!({})).await;
    for token in ["dead-1", "dead-2"] {
        let lease = Lease { token: token.into(), expires_at: h.clock.now_ms() + 1_000 };
        assert!(matches!(
            h.processor.store.claim(&job.job_id, &lease, 2, h.clock.now_ms()).await.unwrap(),
            ClaimOutcome::Claimed(_)
        ));
        h.clock.advance_ms(2_000);
    }
    let outcome = h.deliver_one().await;
    assert!(matches!(outcome, RecordOutcome::Failed(_)), "{outcome:?}");
    let failed = h.job(&job.job_id).await;
    assert_eq!(failed.error.unwrap().code, "max_attempts_exceeded");
}
