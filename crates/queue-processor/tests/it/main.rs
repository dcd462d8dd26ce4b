//! Queue processor against moto: the job state machine under every delivery pattern SQS can produce.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use jobpipe_core::clock::{Clock, ManualClock};
use jobpipe_core::dispatch::{Dispatcher, QueueRoutes};
use jobpipe_core::intake::{Accepted, Intake, NewJob};
use jobpipe_core::job::{ErrorInfo, Job, JobError, JobId, JobStatus, Lease, Payload};
use jobpipe_core::kinds::{BoxFuture, InputError, JobContext, JobKind};
use jobpipe_core::store::{ClaimOutcome, FenceOutcome};
use jobpipe_testkit::{BedrockServer, FaultProxy, ScriptedFault, StackOptions, TestStack, through_fault_proxy};
use queue_processor::{Processor, RecordOutcome, handle_event, handle_sqs};
use serde_json::{Value, json};

struct Harness {
    stack: TestStack,
    clock: ManualClock,
    processor: Arc<Processor>,
}

async fn harness() -> Harness {
    harness_with(StackOptions::default(), &[], |_| {}).await
}

async fn harness_with(
    options: StackOptions,
    overrides: &[(&str, &str)],
    customize: impl FnOnce(&mut Processor),
) -> Harness {
    let stack = TestStack::with(options).await;
    let clock = ManualClock::starting_now();
    let mut processor = Processor::new(&stack.config_with(overrides), &stack.clients, Arc::new(clock.clone()));
    customize(&mut processor);
    Harness { stack, clock, processor: Arc::new(processor) }
}

/// A harness whose processor reaches moto through a fault proxy.
async fn harness_through_proxy() -> (Harness, std::sync::Arc<FaultProxy>) {
    let stack = TestStack::new().await;
    let clock = ManualClock::starting_now();
    let (proxy, clients) = through_fault_proxy().await;
    let processor = Processor::new(&stack.config(), &clients, Arc::new(clock.clone()));
    (Harness { stack, clock, processor: Arc::new(processor) }, proxy)
}

impl Harness {
    /// Accepts an echo job for alice the way the API does, and returns it.
    async fn submit(&self, input: Value) -> Job {
        self.submit_via(&self.processor.dispatcher, "echo", input).await
    }

    async fn submit_via(&self, dispatcher: &Dispatcher, kind: &str, input: Value) -> Job {
        let intake = Intake {
            store: &self.processor.store,
            payloads: &self.processor.payloads,
            dispatcher,
            dispatch_grace: Duration::from_secs(60),
        };
        let new = NewJob {
            owner: "alice".into(),
            kind: kind.into(),
            input,
            idempotency_key: None,
            correlation_id: "corr-1".into(),
        };
        match intake.accept(new, self.clock.now_ms()).await.unwrap() {
            Accepted::New(job) => job,
            other => panic!("expected a new job, got {other:?}"),
        }
    }

    async fn job(&self, id: &JobId) -> Job {
        self.processor.store.get(id).await.unwrap().expect("job exists")
    }

    /// One round of the event source mapping: receive a batch, hand it to the function, delete what it
    /// acknowledged.
    async fn deliver(&self) -> (Vec<SqsMessage>, SqsBatchResponse) {
        let records = self.stack.receive_batch(10).await;
        assert!(!records.is_empty(), "expected a message to deliver");
        let response = handle_sqs(self.processor.clone(), event(records.clone()), None).await.unwrap();
        self.stack.settle(&records, &response).await;
        (records, response)
    }

    async fn deliver_one(&self) -> RecordOutcome {
        let records = self.stack.receive_batch(1).await;
        assert_eq!(records.len(), 1, "expected exactly one message");
        let outcome = self.processor.process_record(&records[0], None).await;
        if outcome.acknowledges() {
            self.stack.settle(&records, &SqsBatchResponse::default()).await;
        }
        outcome
    }

    async fn main_queue_depth(&self) -> u64 {
        self.stack.queue_depth(&self.stack.queue_url).await
    }
}

fn event(records: Vec<SqsMessage>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = records;
    event
}

fn failed_ids(response: &SqsBatchResponse) -> Vec<String> {
    let mut ids: Vec<String> = response.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_job_runs_to_completion_and_its_message_is_deleted() {
    let h = harness().await;
    let job = h.submit(json!({"hello": "world", "n": [1, 2, 3]})).await;
    assert_eq!(job.status, JobStatus::Queued);

    let (_, response) = h.deliver().await;
    assert!(response.batch_item_failures.is_empty());

    let done = h.job(&job.job_id).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.result, Some(Payload::Inline(json!({"hello": "world", "n": [1, 2, 3]}))));
    assert_eq!((done.attempts, done.progress), (1, 100));
    assert!(done.lease.is_none() && done.dispatch_due_at.is_none());
    assert!(done.started_at.is_some() && done.completed_at.is_some());
    assert_eq!(h.main_queue_depth().await, 0);
}

#[tokio::test]
async fn the_same_message_delivered_twice_runs_once() {
    let h = harness().await;
    let job = h.submit(json!({})).await;
    let records = h.stack.receive_batch(1).await;

    let first = h.processor.process_record(&records[0], None).await;
    let second = h.processor.process_record(&records[0], None).await;
    assert!(matches!(first, RecordOutcome::Completed(_)), "{first:?}");
    assert!(matches!(second, RecordOutcome::AlreadyFinished(_)), "{second:?}");
    assert!(second.acknowledges());
    assert_eq!(h.job(&job.job_id).await.attempts, 1);
}

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

#[tokio::test]
async fn poison_messages_go_to_the_dlq_and_stay_there() {
    let h = harness_with(StackOptions { max_receive_count: 2, ..Default::default() }, &[], |_| {}).await;
    let unknown_job = format!(r#"{{"jobId":"{}"}}"#, JobId::new_random());
    for body in ["not json", r#"{"jobId":"nope"}"#, unknown_job.as_str()] {
        h.stack.send_raw(body).await;
    }
    // Every delivery reports the poison failed and makes it visible at once, so it reaches the DLQ
    // after maxReceiveCount deliveries instead of after several visibility timeouts.
    let mut deliveries = 0;
    for _ in 0..20 {
        let records = h.stack.receive_batch(10).await;
        if records.is_empty() {
            break;
        }
        deliveries += records.len();
        let response = handle_sqs(h.processor.clone(), event(records.clone()), None).await.unwrap();
        assert_eq!(response.batch_item_failures.len(), records.len());
    }
    assert_eq!(deliveries, 6, "each poison message was delivered maxReceiveCount times");
    assert_eq!(h.main_queue_depth().await, 0, "poison left the main queue");
    assert_eq!(h.stack.queue_depth(&h.stack.dlq_url).await, 3);

    let report = h.processor.reconcile(None).await.unwrap();
    assert_eq!((report.dead_letters_seen, report.poison_dead_letters), (3, 3));
    assert_eq!(report.jobs_failed_from_dead_letters, 0);
    assert_eq!(h.stack.queue_depth(&h.stack.dlq_url).await, 3, "poison is kept for a person");
    // Hidden between the reconciler's reads: the next run does not read it again.
    assert_eq!(h.processor.reconcile(None).await.unwrap().dead_letters_seen, 0);
}

#[tokio::test]
async fn a_job_whose_message_is_dead_lettered_ends_failed() {
    let h = harness_with(StackOptions { max_receive_count: 2, ..Default::default() }, &[], |_| {}).await;
    let job = h.submit(json!({})).await;
    // The function dies on every delivery before it can claim: nothing is acknowledged.
    for _ in 0..2 {
        let records = h.stack.receive_batch(1).await;
        assert_eq!(records.len(), 1);
        h.stack.expire_visibility(&records).await;
    }
    assert!(h.stack.receive_batch(1).await.is_empty());
    assert_eq!(h.job(&job.job_id).await.status, JobStatus::Queued);

    let report = h.processor.reconcile(None).await.unwrap();
    assert_eq!(report.jobs_failed_from_dead_letters, 1, "{report:?}");
    let failed = h.job(&job.job_id).await;
    assert_eq!((failed.status, failed.error.unwrap().code.as_str()), (JobStatus::Failed, "dead_lettered"));
    // The job records why it failed; its letter is settled and gone, so no run reads it again.
    assert_eq!(report.dead_letters_removed, 1, "{report:?}");
    assert_eq!(h.stack.queue_depth(&h.stack.dlq_url).await, 0);
}

/// A backlog of dead letters is worked through in one run, not 100 a run re-read forever: every job a
/// letter names is failed and its letter deleted, poison is kept, and one letter whose job cannot be read
/// (a corrupt item) is logged and skipped without stopping the run. (Before, a run read at most 100
/// letters, hid them for less than the schedule's period, kept them all, and one bad item aborted it.)
#[tokio::test]
async fn a_backlog_of_dead_letters_is_worked_through_and_a_bad_one_is_skipped() {
    let h = harness().await;
    let letters = 250;
    let mut jobs = Vec::new();
    for n in 0..letters {
        let job = h.submit(json!({"n": n})).await;
        jobs.push(job.job_id.clone());
    }
    // Their messages all end up dead-lettered, as SQS's redrive would leave them.
    let sqs = &h.stack.clients.sqs;
    loop {
        let records = h.stack.receive_batch(10).await;
        if records.is_empty() {
            break;
        }
        for record in &records {
            sqs.send_message()
                .queue_url(&h.stack.dlq_url)
                .message_body(record.body.clone().unwrap())
                .send()
                .await
                .unwrap();
        }
        h.stack.settle(&records, &SqsBatchResponse::default()).await;
    }
    h.stack.send_raw_to(&h.stack.dlq_url, "poison, not a job").await;
    // One job's item is unreadable: its status is not one the store knows.
    let corrupt = &jobs[7];
    h.stack
        .clients
        .dynamodb
        .update_item()
        .table_name(&h.stack.table)
        .key(jobpipe_core::store::attr::JOB_ID, aws_sdk_dynamodb::types::AttributeValue::S(corrupt.to_string()))
        .update_expression("SET #s = :bad")
        .expression_attribute_names("#s", jobpipe_core::store::attr::STATUS)
        .expression_attribute_values(":bad", aws_sdk_dynamodb::types::AttributeValue::S("mangled".into()))
        .send()
        .await
        .unwrap();

    let report = h.processor.reconcile(None).await.unwrap();
    assert_eq!(report.dead_letters_seen, letters + 1, "{report:?}");
    assert_eq!(report.jobs_failed_from_dead_letters, letters - 1, "{report:?}");
    assert_eq!((report.dead_letters_removed, report.poison_dead_letters), (letters - 1, 1), "{report:?}");
    assert_eq!(report.dead_letters_deferred, 1, "{report:?}");
    for job_id in jobs.iter().filter(|id| *id != corrupt) {
        assert_eq!(h.job(job_id).await.status, JobStatus::Failed);
    }
    // What is left: the poison and the letter of the unreadable job, hidden until a later run.
    assert_eq!(h.stack.queue_depth(&h.stack.dlq_url).await, 2);
    assert_eq!(h.processor.reconcile(None).await.unwrap().dead_letters_seen, 0);
}

/// SQS deletes a message after the queue's retention (4 days) without dead-lettering it. A job whose
/// message is gone is found through the pending-dispatch index (no table scan) once its last message is
/// a recheck period old, and sent again; one older than its maximum age fails as `expired`.
#[tokio::test]
async fn a_job_whose_message_expired_is_sent_again_and_an_old_one_expires() {
    let h = harness().await;
    let job = h.submit(json!({"n": 1})).await;
    let stale = h.submit(json!({"n": 2})).await;
    // Both messages expire unseen (deleted, as retention would).
    let records = h.stack.receive_batch(10).await;
    assert_eq!(records.len(), 2);
    h.stack.settle(&records, &SqsBatchResponse::default()).await;
    assert_eq!(h.main_queue_depth().await, 0);

    // Within the recheck period nothing is sent: the message is presumed there.
    h.clock.advance_ms(61_000);
    let report = h.processor.reconcile(None).await.unwrap();
    assert_eq!((report.redispatched, report.rescheduled), (0, 2), "{report:?}");
    assert_eq!(h.main_queue_depth().await, 0);

    // A day after the last send, each unfinished job's message is sent again.
    h.clock.advance_ms(24 * 60 * 60 * 1000);
    let report = h.processor.reconcile(None).await.unwrap();
    assert_eq!(report.redispatched, 2, "{report:?}");
    assert_eq!(h.processor.reconcile(None).await.unwrap().redispatched, 0, "sent once per recheck period");
    let records = h.stack.receive_batch(10).await;
    let first = records.iter().find(|r| r.body.as_deref().is_some_and(|b| b.contains(job.job_id.as_str()))).unwrap();
    let response = handle_sqs(h.processor.clone(), event(vec![first.clone()]), None).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    h.stack.settle(std::slice::from_ref(first), &response).await;
    assert_eq!(h.job(&job.job_id).await.status, JobStatus::Completed);

    // The other's new message is lost too; past the maximum age (3 days) it fails for good.
    let rest: Vec<_> = records.iter().filter(|r| r.message_id != first.message_id).cloned().collect();
    h.stack.settle(&rest, &SqsBatchResponse::default()).await;
    h.clock.advance_ms(2 * 24 * 60 * 60 * 1000);
    let report = h.processor.reconcile(None).await.unwrap();
    assert_eq!(report.expired, 1, "{report:?}");
    let expired = h.job(&stale.job_id).await;
    assert_eq!((expired.status, expired.error.unwrap().code.as_str()), (JobStatus::Failed, "expired"));
    // Finished jobs are out of the index: nothing is due any more.
    h.clock.advance_ms(7 * 24 * 60 * 60 * 1000);
    assert_eq!(h.processor.reconcile(None).await.unwrap(), queue_processor::ReconcileReport::default());
}

#[tokio::test]
async fn the_batch_response_lists_exactly_the_failed_records() {
    let h = harness().await;
    let ok = h.submit(json!({"n": 1})).await;
    let permanent = h.submit(json!({"failPermanently": true})).await;
    let retry = h.submit(json!({"failTimes": 1})).await;
    let ok2 = h.submit(json!({"n": 2})).await;
    h.stack.send_raw("garbage").await;

    let mut records = Vec::new();
    while records.len() < 5 {
        let batch = h.stack.receive_batch(10).await;
        assert!(!batch.is_empty(), "only {} of 5 messages arrived", records.len());
        records.extend(batch);
    }
    let response = handle_sqs(h.processor.clone(), event(records.clone()), None).await.unwrap();
    let id_of =
        |pred: &dyn Fn(&SqsMessage) -> bool| records.iter().find(|r| pred(r)).unwrap().message_id.clone().unwrap();
    let retry_id = id_of(&|r| r.body.as_deref().unwrap().contains(retry.job_id.as_str()));
    let garbage_id = id_of(&|r| r.body.as_deref() == Some("garbage"));
    let mut expected = vec![retry_id, garbage_id];
    expected.sort();
    assert_eq!(failed_ids(&response), expected);

    for (job, status) in [
        (ok, JobStatus::Completed),
        (ok2, JobStatus::Completed),
        (permanent, JobStatus::Failed),
        (retry, JobStatus::Processing),
    ] {
        assert_eq!(h.job(&job.job_id).await.status, status);
    }
}

/// A kind that panics, registered the way any kind is.
struct Panics;

impl JobKind for Panics {
    fn name(&self) -> &'static str {
        "panics"
    }
    fn validate(&self, _: &Value) -> Result<(), InputError> {
        Ok(())
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn run<'a>(&'a self, _: JobContext<'a>) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async { panic!("handler bug") })
    }
}

#[tokio::test]
async fn a_panicking_handler_is_a_reported_failure_and_the_job_still_ends() {
    let h = harness_with(StackOptions::default(), &[("MAX_ATTEMPTS", "2")], |p| p.kinds.register(Panics)).await;
    let job = h.submit_via(&h.processor.dispatcher, "panics", json!({})).await;
    let (records, response) = h.deliver().await;
    assert_eq!(failed_ids(&response), vec![records[0].message_id.clone().unwrap()]);
    assert_eq!(h.job(&job.job_id).await.last_error.unwrap().code, "job_panicked");

    let (_, response) = h.deliver().await;
    assert!(response.batch_item_failures.is_empty(), "the last attempt fails the job and acknowledges");
    let failed = h.job(&job.job_id).await;
    assert_eq!((failed.status, failed.error.unwrap().code.as_str()), (JobStatus::Failed, "job_panicked"));
}

#[tokio::test]
async fn a_job_whose_message_was_never_sent_is_dispatched_by_the_reconciler() {
    let h = harness().await;
    // SendMessage fails after the job is written (the queue does not exist).
    let missing = format!("{}-missing", h.stack.queue_url);
    let broken = Dispatcher::new(h.stack.clients.sqs.clone(), QueueRoutes::single(missing));
    let job = h.submit_via(&broken, "echo", json!({"x": 1})).await;
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(h.main_queue_depth().await, 0);

    // Within the grace period nothing is re-sent (the first send may still be in flight).
    assert_eq!(h.processor.reconcile(None).await.unwrap().redispatched, 0);
    h.clock.advance_ms(61_000);
    let report = h.processor.reconcile(None).await.unwrap();
    assert_eq!(report.redispatched, 1, "{report:?}");
    assert_eq!(h.processor.reconcile(None).await.unwrap().redispatched, 0, "once sent, the next check is a day off");

    let (_, response) = h.deliver().await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(h.job(&job.job_id).await.status, JobStatus::Completed);
}

#[tokio::test]
async fn a_cancelled_jobs_message_is_acknowledged_without_running() {
    let h = harness().await;
    let job = h.submit(json!({})).await;
    let cancelled = h.processor.store.cancel(&job.job_id, "alice", h.clock.now_ms()).await.unwrap();
    assert!(matches!(cancelled, jobpipe_core::store::CancelOutcome::Cancelled(_)));
    let outcome = h.deliver_one().await;
    assert!(matches!(outcome, RecordOutcome::AlreadyFinished(_)), "{outcome:?}");
    let job = h.job(&job.job_id).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Cancelled, 0));
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

#[tokio::test]
async fn large_results_are_stored_in_s3() {
    let h = harness().await;
    let big = "x".repeat(40 * 1024);
    let job = h.submit(json!({"blob": big})).await;
    assert!(matches!(job.input, Payload::S3 { .. }), "a 40 KiB input is not kept in the item");
    h.deliver().await;
    let done = h.job(&job.job_id).await;
    let Some(Payload::S3 { key }) = &done.result else { panic!("{:?}", done.result) };
    assert_eq!(key, &format!("payloads/{}/result.json", job.job_id));
    let value = h.processor.payloads.resolve(done.result.as_ref().unwrap()).await.unwrap();
    assert_eq!(value["blob"].as_str().map(str::len), Some(40 * 1024));
}

#[tokio::test]
async fn the_lambda_handler_accepts_real_sqs_and_schedule_events() {
    let h = harness().await;
    let fixture = |name: &str| -> Value {
        let path = format!("{}/../../tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let invoke = |payload: Value| {
        let event = lambda_runtime::LambdaEvent::new(payload, lambda_runtime::Context::default());
        handle_event(h.processor.clone(), event)
    };
    // The official SQS fixture carries a body that is not a job message: it is reported failed.
    let response = invoke(fixture("example-sqs-event.json")).await.unwrap();
    let failures: Vec<&str> = response["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    assert_eq!(failures, ["MessageID_1"]);

    let report = invoke(fixture("example-eventbridge-schedule.json")).await.unwrap();
    assert_eq!(report["redispatched"], 0);

    assert!(invoke(json!({"unexpected": true})).await.is_err());
}

// ---- Real kinds ---------------------------------------------------------------------------------

async fn image_harness(overrides: &[(&str, &str)]) -> (Harness, BedrockServer) {
    let bedrock = BedrockServer::start().await;
    let stack = TestStack::new().await.with_bedrock_endpoint(&bedrock.url);
    let clock = ManualClock::starting_now();
    let processor = Processor::new(&stack.config_with(overrides), &stack.clients, Arc::new(clock.clone()));
    (Harness { stack, clock, processor: Arc::new(processor) }, bedrock)
}

impl Harness {
    /// One delivery from the image queue, settled as the event source mapping would.
    async fn deliver_image(&self) -> RecordOutcome {
        let records = self.stack.receive_image_batch(1).await;
        assert_eq!(records.len(), 1, "expected one image message");
        let outcome = self.processor.process_record(&records[0], None).await;
        if outcome.acknowledges() {
            self.stack.settle_on(&self.stack.image_queue_url, &records, &SqsBatchResponse::default()).await;
        }
        outcome
    }

    async fn object(&self, key: &str) -> (Vec<u8>, aws_sdk_s3::operation::get_object::GetObjectOutput) {
        let out = self.stack.clients.s3.get_object().bucket(&self.stack.bucket).key(key).send().await.unwrap();
        let (body, out) = (
            out.body,
            aws_sdk_s3::operation::get_object::GetObjectOutput::builder()
                .set_content_type(out.content_type)
                .set_metadata(out.metadata)
                .set_content_length(out.content_length)
                .build(),
        );
        (body.collect().await.unwrap().into_bytes().to_vec(), out)
    }
}

#[tokio::test]
async fn an_image_job_stores_the_generated_png_with_its_metadata() {
    let (h, bedrock) = image_harness(&[]).await;
    let job = h
        .submit_via(
            &h.processor.dispatcher,
            "image",
            json!({"prompt": "a lighthouse at dusk", "width": 640, "height": 384, "seed": 7}),
        )
        .await;
    assert_eq!(h.main_queue_depth().await, 0, "image jobs travel on their own queue");

    let outcome = h.deliver_image().await;
    let RecordOutcome::Completed(done) = outcome else { panic!("{outcome:?}") };
    let Some(Payload::Inline(result)) = done.result else { panic!("{:?}", done.result) };
    let key = format!("results/{}/image.png", job.job_id);
    assert_eq!(result["key"], key.as_str());
    assert_eq!(
        (result["width"].as_u64(), result["height"].as_u64(), result["seed"].as_u64()),
        (Some(640), Some(384), Some(7))
    );

    let (bytes, object) = h.object(&key).await;
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(jobpipe_core::kinds::raster::png_dimensions(&bytes), Ok((640, 384)));
    assert_eq!(object.content_type(), Some("image/png"));
    assert_eq!(object.content_length(), Some(bytes.len() as i64));
    assert_eq!(result["bytes"].as_u64(), Some(bytes.len() as u64));
    let metadata = object.metadata().unwrap();
    assert_eq!(metadata.get("job-id").map(String::as_str), Some(job.job_id.as_str()));
    assert_eq!(metadata.get("owner").map(String::as_str), Some("alice"));
    assert_eq!(metadata.get("model").map(String::as_str), Some("amazon.nova-canvas-v1:0"));
    assert_eq!(metadata.get("seed").map(String::as_str), Some("7"));
    assert_eq!(bedrock.stand_in.invocations.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A throttled image waits out the quota window (a minute and up to half a minute of jitter) as a new,
/// delayed message, and spends no attempt: throttled more often than `MAX_ATTEMPTS` (or the queue's
/// `maxReceiveCount`) allows, it still completes, on its first counted attempt. (It was retried after
/// 1-16 s and each throttle counted, so a burst over the per-minute quota failed jobs in about 30 s.)
#[tokio::test]
async fn throttling_waits_out_the_quota_window_without_spending_attempts() {
    let (h, bedrock) = image_harness(&[]).await;
    bedrock.stand_in.set_faults(1, Duration::ZERO).await;
    let job =
        h.submit_via(&h.processor.dispatcher, "image", json!({"prompt": "a fox", "width": 320, "height": 320})).await;
    let outcome = h.deliver_image().await;
    let RecordOutcome::Requeued { delay } = outcome else { panic!("{outcome:?}") };
    assert!((Duration::from_secs(60)..=Duration::from_secs(90)).contains(&delay), "{delay:?}");
    let throttled = h.job(&job.job_id).await;
    assert_eq!((throttled.attempts, throttled.last_error.unwrap().code.as_str()), (0, "model_throttled"));
    // The new message waits out the window; the old one is gone.
    assert!(h.stack.receive_image_batch(1).await.is_empty(), "nothing to receive before the window ends");
    assert_eq!(h.stack.queue_depth(&h.stack.image_queue_url).await, 1);

    // With a zero window, a job throttled more often than it has attempts still completes.
    let (h, bedrock) = image_harness(&[("THROTTLE_WINDOW_SECONDS", "0"), ("MAX_ATTEMPTS", "2")]).await;
    bedrock.stand_in.set_faults(4, Duration::ZERO).await;
    let job =
        h.submit_via(&h.processor.dispatcher, "image", json!({"prompt": "a fox", "width": 320, "height": 320})).await;
    for _ in 0..4 {
        let outcome = h.deliver_image().await;
        assert!(matches!(outcome, RecordOutcome::Requeued { .. }), "{outcome:?}");
    }
    let outcome = h.deliver_image().await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "{outcome:?}");
    assert_eq!(h.job(&job.job_id).await.attempts, 1);
}

#[tokio::test]
async fn a_prompt_the_content_filter_blocks_fails_for_good_with_words_a_person_can_act_on() {
    let (h, bedrock) = image_harness(&[]).await;
    let job = h
        .submit_via(
            &h.processor.dispatcher,
            "image",
            json!({"prompt": "something [blocked]", "width": 320, "height": 320}),
        )
        .await;
    let outcome = h.deliver_image().await;
    assert!(matches!(outcome, RecordOutcome::Failed(_)), "{outcome:?}");
    let error = h.job(&job.job_id).await.error.unwrap();
    assert_eq!(error.code, "prompt_blocked");
    assert!(
        error.message.contains("content filters") && error.message.contains("Change the prompt"),
        "{}",
        error.message
    );
    assert_eq!(bedrock.stand_in.invocations.load(std::sync::atomic::Ordering::SeqCst), 1, "not retried");
}

#[tokio::test]
async fn a_wifi_qr_job_stores_a_code_that_decodes_to_the_network() {
    let h = harness().await;
    h.submit_via(
        &h.processor.dispatcher,
        "wifi-qr",
        json!({"ssid": "Lab;Net", "password": "p@ss:w0rd,\\x", "hidden": true}),
    )
    .await;
    let outcome = h.deliver_one().await;
    let RecordOutcome::Completed(done) = outcome else { panic!("{outcome:?}") };
    let Some(Payload::Inline(result)) = done.result else { panic!() };
    assert!(result.get("password").is_none(), "the password is not repeated in the result");
    let (bytes, object) = h.object(result["key"].as_str().unwrap()).await;
    assert_eq!(object.content_type(), Some("image/png"));
    let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let (w, hgt) = (info.width as usize, info.height as usize);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, hgt, |x, y| pixels[y * w + x]);
    let grids = image.detect_grids();
    assert_eq!(grids[0].decode().unwrap().1, r"WIFI:T:WPA;S:Lab\;Net;P:p@ss\:w0rd\,\\x;H:true;;");
}

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
