//! The reconciler: dead letters settled and poison kept, and a job whose message never left or expired
//! sent again, or failed once too old.

use aws_lambda_events::event::sqs::SqsBatchResponse;
use jobpipe_core::dispatch::{Dispatcher, QueueRoutes};
use jobpipe_core::job::{JobId, JobStatus};
use jobpipe_testkit::{ScriptedFault, StackOptions};
use queue_processor::handle_sqs;
use serde_json::json;

use crate::helpers::{event, harness, harness_through_proxy, harness_with};

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

/// An entry of the pending-dispatch index that cannot be read (here, a job id that is no UUID) is logged
/// and skipped: every other due job is still dispatched, and the run goes on. (One bad entry made the
/// whole sweep, and with it the reconciler's run, fail on every schedule.)
#[tokio::test]
async fn an_unreadable_pending_dispatch_entry_is_skipped_not_fatal() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use jobpipe_core::store::attr;
    let h = harness().await;
    let missing = format!("{}-missing", h.stack.queue_url);
    let broken = Dispatcher::new(h.stack.clients.sqs.clone(), QueueRoutes::single(missing));
    let job = h.submit_via(&broken, "echo", json!({"x": 1})).await;
    let stored = h.stack.clients.dynamodb.get_item().table_name(&h.stack.table);
    let stored = stored.key(attr::JOB_ID, AttributeValue::S(job.job_id.to_string())).send().await.unwrap();
    let stored = stored.item.unwrap();
    // An item in the index whose id is no job id, with the same shard and due time as the real job.
    h.stack
        .clients
        .dynamodb
        .put_item()
        .table_name(&h.stack.table)
        .item(attr::JOB_ID, AttributeValue::S("not-a-uuid".into()))
        .item(attr::KIND, AttributeValue::S("echo".into()))
        .item(attr::DISPATCH_SHARD, stored[attr::DISPATCH_SHARD].clone())
        .item(attr::DISPATCH_DUE_AT, stored[attr::DISPATCH_DUE_AT].clone())
        .send()
        .await
        .unwrap();

    h.clock.advance_ms(61_000);
    let report = h.processor.reconcile(None).await.expect("the run goes on past the bad entry");
    assert_eq!(report.redispatched, 1, "{report:?}");
    let (_, response) = h.deliver().await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(h.job(&job.job_id).await.status, JobStatus::Completed);
}

/// When the dispatch sweep cannot read the index at all (every query fails), the dead letters are still
/// worked through in that run, and the run then reports the sweep's failure. (A failed sweep ended the
/// run before it reached the dead-letter queue.)
#[tokio::test]
async fn a_failed_sweep_does_not_keep_the_dead_letters_waiting() {
    let (h, proxy) = harness_through_proxy().await;
    let job = h.submit(json!({"n": 1})).await;
    let records = h.stack.receive_batch(10).await;
    for record in &records {
        h.stack.send_raw_to(&h.stack.dlq_url, record.body.as_deref().unwrap()).await;
    }
    h.stack.settle(&records, &SqsBatchResponse::default()).await;
    // Every query of the pending-dispatch index fails, however often the SDK retries it.
    proxy.script(ScriptedFault {
        target: "DynamoDB_20120810.Query".into(),
        body_contains: jobpipe_core::store::attr::PENDING_DISPATCH_INDEX.into(),
        after_effect: false,
        times: 1_000,
    });

    let failed = h.processor.reconcile(None).await.expect_err("the run reports the failed sweep");
    assert!(failed.is_retryable(), "{failed}");
    let ended = h.job(&job.job_id).await;
    assert_eq!((ended.status, ended.error.unwrap().code.as_str()), (JobStatus::Failed, "dead_lettered"));
    assert_eq!(h.stack.queue_depth(&h.stack.dlq_url).await, 0, "the settled letter is gone");
}
