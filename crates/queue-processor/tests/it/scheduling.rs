//! Scheduled jobs: sent with the rest of their wait as the message's delay, by the API when that fits in
//! `SCHEDULE_LEAD` (3 minutes) and by the reconciler's sweep otherwise; never started before their time.

use std::time::Duration;

use jobpipe_core::clock::{Clock, Millis};
use jobpipe_core::dispatch::SCHEDULE_LEAD;
use jobpipe_core::intake::StartAt;
use jobpipe_core::job::JobStatus;
use queue_processor::RecordOutcome;

use crate::helpers::harness;

/// A job due in two seconds is sent at once, delayed; a delivery before its time (by the processor's
/// clock) changes nothing and spends no attempt, and the message comes back then.
#[tokio::test]
async fn a_job_due_within_a_message_delay_is_sent_delayed_and_never_starts_early() {
    let h = harness().await;
    let job = h.submit_scheduled(StartAt::After(Duration::from_secs(2))).await;
    assert_eq!(job.status, JobStatus::Scheduled);
    assert_eq!(job.run_at, Some(job.created_at + 2_000));
    assert!(h.job(&job.job_id).await.dispatched_at.is_some(), "sent at acceptance");
    assert_eq!(h.main_queue_depth().await, 1);

    // SQS shows it when its delay ends; the processor's clock has not moved: too early.
    let early = h.deliver_when_visible(30).await;
    assert_eq!(early, RecordOutcome::NotYetDue { run_at: job.created_at + 2_000 });
    let unchanged = h.job(&job.job_id).await;
    assert_eq!((unchanged.status, unchanged.attempts), (JobStatus::Scheduled, 0));

    h.clock.advance_ms(2_000);
    let outcome = h.deliver_when_visible(30).await;
    let RecordOutcome::Completed(done) = outcome else { panic!("expected completion, got {outcome:?}") };
    assert_eq!(done.attempts, 1, "the early delivery spent no attempt");
    assert!(done.started_at.unwrap() >= job.created_at + 2_000, "started at or after its time");
    assert_eq!(h.main_queue_depth().await, 0);
}

/// A job due in three days has no message until the sweep finds its check, `SCHEDULE_LEAD` before its
/// time; that sweep sends it delayed to its time, and the job runs then. Its maximum age (three days
/// by default) counts from its time, not from acceptance.
#[tokio::test]
async fn a_job_due_in_days_is_sent_by_the_sweep_that_finds_its_check() {
    let h = harness().await;
    let three_days: Millis = 3 * 24 * 3600 * 1000;
    let job = h.submit_scheduled(StartAt::After(Duration::from_millis(three_days as u64))).await;
    let run_at = job.created_at + three_days;
    assert_eq!((job.status, job.run_at, job.dispatched_at), (JobStatus::Scheduled, Some(run_at), None));
    assert_eq!(h.main_queue_depth().await, 0, "no message yet: sent SCHEDULE_LEAD before its time");

    let report = h.processor.reconcile(None).await.unwrap();
    assert_eq!(report.redispatched, 0, "{report:?}");
    let lead = SCHEDULE_LEAD.as_millis() as Millis;
    h.clock.advance_ms(three_days - lead - 1_000);
    let report = h.processor.reconcile(None).await.unwrap();
    assert_eq!((report.redispatched, report.expired), (0, 0), "not due yet: {report:?}");
    assert_eq!(h.main_queue_depth().await, 0);

    // Its check is due; the reconciler was late (it runs every minute), so two seconds are left.
    h.clock.advance_ms(lead - 1_000);
    let report = h.processor.reconcile(None).await.unwrap();
    assert_eq!((report.redispatched, report.expired), (1, 0), "{report:?}");
    let sent = h.job(&job.job_id).await;
    assert_eq!(sent.status, JobStatus::Scheduled);
    assert_eq!(sent.dispatched_at, Some(h.clock.now_ms()));
    assert!(sent.dispatch_due_at.unwrap() > run_at, "rechecked from its time on");
    // Sent once: the next sweep leaves it be.
    assert_eq!(h.processor.reconcile(None).await.unwrap().redispatched, 0);

    let early = h.deliver_when_visible(30).await;
    assert_eq!(early, RecordOutcome::NotYetDue { run_at });
    h.clock.advance_ms(2_000);
    let outcome = h.deliver_when_visible(30).await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "{outcome:?}");
}

/// A cancelled scheduled job's message, when it comes, is acknowledged and runs nothing.
#[tokio::test]
async fn a_scheduled_job_cancelled_before_its_time_never_runs() {
    let h = harness().await;
    let job = h.submit_scheduled(StartAt::After(Duration::from_secs(1))).await;
    let outcome = h.processor.store.cancel(&job.job_id, "alice", h.clock.now_ms()).await.unwrap();
    assert!(matches!(outcome, jobpipe_core::store::CancelOutcome::Cancelled(_)), "{outcome:?}");
    h.clock.advance_ms(1_000);
    let outcome = h.deliver_when_visible(30).await;
    assert!(matches!(&outcome, RecordOutcome::AlreadyFinished(j) if j.status == JobStatus::Cancelled), "{outcome:?}");
    assert_eq!(h.main_queue_depth().await, 0);
}

/// A copy of a far-off job's message (a redrive, a duplicate) is acknowledged, not kept coming back until
/// it is dead-lettered: the job's own dispatch check sends its message in time.
#[tokio::test]
async fn a_stray_message_for_a_job_due_in_days_is_dropped_and_the_job_still_runs() {
    let h = harness().await;
    let day: Millis = 24 * 3600 * 1000;
    let job = h.submit_scheduled(StartAt::After(Duration::from_millis(2 * day as u64))).await;
    let body = serde_json::json!({"jobId": job.job_id}).to_string();
    h.stack.clients.sqs.send_message().queue_url(&h.stack.queue_url).message_body(body).send().await.unwrap();
    let outcome = h.deliver_one().await;
    assert_eq!(outcome, RecordOutcome::StrayEarly { run_at: job.created_at + 2 * day });
    assert_eq!(h.main_queue_depth().await, 0, "acknowledged");
    let untouched = h.job(&job.job_id).await;
    assert_eq!((untouched.status, untouched.attempts), (JobStatus::Scheduled, 0));

    // Its check (due SCHEDULE_LEAD before its time; the reconciler late here, two seconds before it) sends
    // it, and it runs at its time.
    h.clock.advance_ms(2 * day - 2_000);
    assert_eq!(h.processor.reconcile(None).await.unwrap().redispatched, 1);
    h.clock.advance_ms(2_000);
    let outcome = h.deliver_when_visible(30).await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "{outcome:?}");
}
