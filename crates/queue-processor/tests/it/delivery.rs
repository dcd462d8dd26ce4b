//! What SQS delivers: a job runs once however often its message arrives, and the batch answer names
//! exactly the records to deliver again.

use aws_lambda_events::event::sqs::SqsMessage;
use jobpipe_core::clock::Clock;
use jobpipe_core::job::{JobError, JobStatus, Payload};
use jobpipe_core::kinds::{BoxFuture, InputError, JobContext, JobKind};
use jobpipe_testkit::StackOptions;
use queue_processor::{RecordOutcome, handle_event, handle_sqs};
use serde_json::{Value, json};

use crate::helpers::{event, failed_ids, harness, harness_with};

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
