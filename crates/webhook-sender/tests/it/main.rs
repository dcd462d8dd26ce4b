//! The webhook sender against the local engines: a job's end from a stream record becomes a queued
//! delivery and then a signed POST, with its state kept on the job; and nothing is acknowledged that was
//! not settled (a retry that could not be queued, a dead letter that could not be written).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsMessage;
use axum::http::{HeaderMap, StatusCode};
use jobpipe_core::JobStore;
use jobpipe_core::clock::{Clock, SystemClock};
use jobpipe_core::job::{Job, JobId, JobStatus, Payload};
use jobpipe_core::webhooks::RetrySchedule;
use jobpipe_core::webhooks::store::WebhookStore;
use jobpipe_core::webhooks::target::TargetPolicy;
use jobpipe_testkit::{ScriptedFault, TestStack, receive_batch, through_fault_proxy};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use webhook_sender::{HttpSender, WebhookSender, handle};

const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:webhooks";

/// A receiver answering `status`, keeping what it got.
async fn receiver(status: StatusCode) -> (String, Arc<Mutex<Vec<(HeaderMap, String)>>>) {
    receiver_answering(vec![status]).await
}

/// A receiver answering `statuses` in turn (the last one from then on), keeping what it got.
async fn receiver_answering(statuses: Vec<StatusCode>) -> (String, Arc<Mutex<Vec<(HeaderMap, String)>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = got.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: String| {
        let (kept, statuses) = (kept.clone(), statuses.clone());
        async move {
            let mut kept = kept.lock().unwrap();
            kept.push((headers, body));
            statuses[(kept.len() - 1).min(statuses.len() - 1)]
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn sender(stack: &TestStack, clients: &jobpipe_core::config::AwsClients) -> Arc<WebhookSender> {
    Arc::new(new_sender(stack, clients))
}

fn new_sender(stack: &TestStack, clients: &jobpipe_core::config::AwsClients) -> WebhookSender {
    WebhookSender::new(
        WebhookStore::new(clients.dynamodb.clone(), &stack.webhooks_table),
        JobStore::new(clients.dynamodb.clone(), &stack.table, 3600),
        clients.sqs.clone(),
        &stack.webhook_queue_url,
        HttpSender::new(TargetPolicy { allow_loopback: true }).unwrap(),
        RetrySchedule(vec![Duration::from_secs(1)]),
    )
}

/// A job that has just ended, stored, and the stream record of its end.
async fn ended_job(stack: &TestStack, callback: &str, status: JobStatus) -> (Job, Value) {
    let now = SystemClock.now_ms();
    let job = Job {
        job_id: JobId::new_random(),
        owner: jobpipe_testkit::local_stack::unique("tenant-"),
        kind: "echo".into(),
        status,
        input: Payload::Inline(json!({})),
        result: (status == JobStatus::Completed).then(|| Payload::Inline(json!({"ok": true}))),
        error: None,
        last_error: None,
        attempts: 1,
        progress: 100,
        created_at: now,
        run_at: None,
        started_at: Some(now),
        completed_at: Some(now),
        updated_at: now,
        lease: None,
        idempotency_key: None,
        request_hash: "h".into(),
        correlation_id: "c".into(),
        dispatch_due_at: None,
        dispatched_at: Some(now),
        callback_url: Some(callback.into()),
        webhooks: Vec::new(),
        batch: None,
    };
    JobStore::new(stack.clients.dynamodb.clone(), &stack.table, 3600).create(&job).await.unwrap();
    let image = |status: &str| {
        json!({
            "jobId": {"S": job.job_id.as_str()}, "owner": {"S": job.owner}, "kind": {"S": "echo"},
            "status": {"S": status}, "input": {"S": "{}"}, "result": {"S": "{\"ok\":true}"},
            "attempts": {"N": "1"}, "progress": {"N": "100"}, "createdAt": {"N": now.to_string()},
            "startedAt": {"N": now.to_string()}, "completedAt": {"N": now.to_string()},
            "updatedAt": {"N": now.to_string()}, "callbackUrl": {"S": callback},
        })
    };
    let record = json!({
        "eventID": "1", "eventName": "MODIFY", "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": {"jobId": {"S": job.job_id.as_str()}}, "SequenceNumber": "100",
            "OldImage": image("processing"), "NewImage": image(status.as_str())},
    });
    (job, record)
}

async fn invoke(sender: &Arc<WebhookSender>, records: Value) -> Value {
    let event = LambdaEvent::new(json!({"Records": records}), Context::default());
    handle(sender.clone(), event).await.unwrap()
}

async fn queued(stack: &TestStack) -> Vec<SqsMessage> {
    receive_batch(&stack.clients.sqs, &stack.webhook_queue_url, QUEUE_ARN, 10).await
}

async fn state_of(stack: &TestStack, job: &Job) -> Option<Value> {
    let job = JobStore::new(stack.clients.dynamodb.clone(), &stack.table, 3600).get(&job.job_id).await.unwrap()?;
    job.webhooks.first().map(|delivery| serde_json::to_value(delivery).unwrap())
}

#[tokio::test]
async fn a_jobs_end_is_queued_then_delivered_signed_and_kept_on_the_job() {
    let stack = TestStack::new().await;
    let (url, got) = receiver(StatusCode::NO_CONTENT).await;
    let sender = sender(&stack, &stack.clients);
    let (job, record) = ended_job(&stack, &url, JobStatus::Completed).await;

    // A change that is not an end plans nothing; the end plans one delivery.
    let mut not_an_end = record.clone();
    not_an_end["dynamodb"]["OldImage"]["status"] = json!({"S": "completed"});
    assert_eq!(invoke(&sender, json!([not_an_end])).await, json!({"batchItemFailures": []}));
    assert!(queued(&stack).await.is_empty());
    assert_eq!(invoke(&sender, json!([record])).await, json!({"batchItemFailures": []}));
    let messages = queued(&stack).await;
    assert_eq!(messages.len(), 1);

    let answer = invoke(&sender, serde_json::to_value(&messages).unwrap()).await;
    assert_eq!(answer, json!({"batchItemFailures": []}));
    let (headers, body) = got.lock().unwrap()[0].clone();
    let secret = WebhookStore::new(stack.clients.dynamodb.clone(), &stack.webhooks_table)
        .secrets(&job.owner)
        .await
        .unwrap()
        .expect("made on first need");
    standardwebhooks::Webhook::new(&secret.current).unwrap().verify(body.as_bytes(), &headers).unwrap();
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (body["type"].as_str(), body["data"]["jobId"].as_str()),
        (Some("job.completed"), Some(job.job_id.as_str()))
    );
    let state = state_of(&stack, &job).await.unwrap();
    assert_eq!(
        (state["state"].as_str(), state["attempts"].as_u64(), state["lastStatus"].as_u64()),
        (Some("delivered"), Some(1), Some(204))
    );
}

/// A failed attempt's message is not deleted but hidden until the retry's time, and the same message
/// makes the next attempt: however often a message is given again, one delivery never becomes two
/// chains of retries.
#[tokio::test]
async fn a_failed_attempt_hides_its_message_until_the_retry_which_is_the_same_message() {
    let stack = TestStack::new().await;
    let (url, got) = receiver_answering(vec![StatusCode::SERVICE_UNAVAILABLE, StatusCode::NO_CONTENT]).await;
    let sender = sender(&stack, &stack.clients);
    let (job, record) = ended_job(&stack, &url, JobStatus::Failed).await;
    invoke(&sender, json!([record])).await;
    let messages = queued(&stack).await;
    let id = messages[0].message_id.clone().unwrap();

    let answer = invoke(&sender, serde_json::to_value(&messages).unwrap()).await;
    assert_eq!(answer, json!({"batchItemFailures": [{"itemIdentifier": id}]}), "left for the retry");
    let state = state_of(&stack, &job).await.unwrap();
    assert_eq!(
        (state["state"].as_str(), state["attempts"].as_u64(), state["lastStatus"].as_u64()),
        (Some("retrying"), Some(1), Some(503))
    );
    assert!(state["nextAttemptAt"].as_i64().is_some(), "{state}");

    // Hidden for the schedule's second (give or take a fifth), then the same message, received again.
    let mut again = Vec::new();
    // Each receive waits up to a second: a hundred without it means the message never came back.
    for _ in 0..100 {
        again = queued(&stack).await;
        if !again.is_empty() {
            break;
        }
    }
    assert_eq!((again.len(), again[0].message_id.as_deref()), (1, Some(id.as_str())));
    assert_eq!(again[0].attributes.get("ApproximateReceiveCount").map(String::as_str), Some("2"));
    assert_eq!(invoke(&sender, serde_json::to_value(&again).unwrap()).await, json!({"batchItemFailures": []}));
    let state = state_of(&stack, &job).await.unwrap();
    assert_eq!((state["state"].as_str(), state["attempts"].as_u64()), (Some("delivered"), Some(2)));
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0["webhook-id"], got[1].0["webhook-id"], "one webhook-id for both attempts");
}

#[tokio::test]
async fn a_dead_letter_that_could_not_be_written_is_given_again() {
    let stack = TestStack::new().await;
    let (url, _got) = receiver(StatusCode::GONE).await;
    let (proxy, clients) = through_fault_proxy().await;
    let sender = sender(&stack, &clients);
    let (job, record) = ended_job(&stack, &url, JobStatus::Completed).await;
    invoke(&sender, json!([record])).await;
    let messages = queued(&stack).await;
    let id = messages[0].message_id.clone().unwrap();

    proxy.script(ScriptedFault {
        target: "DynamoDB_20120810.PutItem".into(),
        body_contains: "dead#".into(),
        after_effect: false,
        times: 10,
    });
    let answer = invoke(&sender, serde_json::to_value(&messages).unwrap()).await;
    assert_eq!(answer, json!({"batchItemFailures": [{"itemIdentifier": id}]}));
    assert_eq!(state_of(&stack, &job).await, None);

    // Given again (to an environment whose calls succeed), the same message is dead-lettered and the job
    // says so.
    let answer = invoke(&self::sender(&stack, &stack.clients), serde_json::to_value(&messages).unwrap()).await;
    assert_eq!(answer, json!({"batchItemFailures": []}));
    let store = WebhookStore::new(stack.clients.dynamodb.clone(), &stack.webhooks_table);
    let letters = store.dead_letters(Some(&job.owner)).await.unwrap();
    assert_eq!((letters.len(), letters[0].last_status), (1, Some(410)));
    assert_eq!(state_of(&stack, &job).await.unwrap()["state"], "failed");
}

/// The stream record of a batch's `index`-th job (of `size`) ending `old` -> `new`; no job is stored (its
/// end is all the sender reads).
fn batch_job_end(batch_id: &JobId, index: u32, size: u32, owner: &str, new: &str, sequence: u64) -> Value {
    let job_id = JobId::in_batch(batch_id, index);
    let image = |status: &str| {
        json!({
            "jobId": {"S": job_id.as_str()}, "owner": {"S": owner}, "kind": {"S": "echo"},
            "status": {"S": status}, "input": {"S": "{}"}, "attempts": {"N": "1"}, "progress": {"N": "0"},
            "createdAt": {"N": "1000"}, "updatedAt": {"N": "2000"}, "batchId": {"S": batch_id.as_str()},
            "batchIndex": {"N": index.to_string()}, "batchSize": {"N": size.to_string()},
        })
    };
    json!({
        "eventID": format!("e{sequence}"), "eventName": "MODIFY", "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": {"jobId": {"S": job_id.as_str()}}, "SequenceNumber": sequence.to_string(),
            "OldImage": image("queued"), "NewImage": image(new)},
    })
}

/// A batch's jobs' ends are recorded once however often, and however concurrently, the stream gives them
/// (a cancel too), by how each ended; the last one completes the batch once, and a record given again
/// changes nothing. The completion's own record becomes one `batch.completed` delivery per subscribed
/// endpoint, with the batch's counts, under one `webhook-id` however often it comes.
#[tokio::test]
async fn a_batchs_job_ends_count_once_and_its_completion_is_delivered_once() {
    let stack = TestStack::new().await;
    let clients = stack.clients.clone();
    let sender = sender(&stack, &clients);
    let owner = jobpipe_testkit::local_stack::unique("tenant-");
    let (url, _got) = receiver(StatusCode::OK).await;
    let now = SystemClock.now_ms();
    let events = [jobpipe_core::webhooks::WebhookEvent::BatchCompleted];
    sender.store.add_endpoint(&owner, &url, &events, None, now).await.unwrap().unwrap();

    let batch_id = JobId::new_random();
    // Its progress as an earlier version left it: an expiry set while the batch was open.
    let key = aws_sdk_dynamodb::types::AttributeValue::S(format!("batch#{batch_id}"));
    let n = |v: &str| aws_sdk_dynamodb::types::AttributeValue::N(v.into());
    clients
        .dynamodb
        .put_item()
        .table_name(&stack.table)
        .item("jobId", key.clone())
        .item("expiresAt", n("1"))
        .send()
        .await
        .unwrap();
    let ends = [
        batch_job_end(&batch_id, 0, 3, &owner, "completed", 1),
        batch_job_end(&batch_id, 1, 3, &owner, "cancelled", 2),
        batch_job_end(&batch_id, 2, 3, &owner, "failed", 3),
    ];
    // The first two, twice over, in two invocations at once (a retried batch overlapping its first try).
    let first_two = || json!([ends[0], ends[1], ends[0]]);
    let (a, b) = tokio::join!(invoke(&sender, first_two()), invoke(&sender, first_two()));
    assert_eq!((&a["batchItemFailures"], &b["batchItemFailures"]), (&json!([]), &json!([])));
    let progress = sender.jobs.batch_progress(&batch_id).await.unwrap().expect("recorded");
    assert_eq!((progress.completed, progress.cancelled, progress.failed, progress.completed_at), (1, 1, 0, None));
    assert_eq!((progress.total, progress.tenant.as_str()), (3, owner.as_str()));
    // An open batch's item never expires: its jobs may start months apart.
    let expires_at = async || {
        let item = clients.dynamodb.get_item().table_name(&stack.table).key("jobId", key.clone()).send().await.unwrap();
        item.item().unwrap().get("expiresAt").map(|v| v.as_n().unwrap().parse::<i64>().unwrap())
    };
    assert_eq!(expires_at().await, None, "an open batch's progress has no expiry (an earlier one's goes)");

    // The last one, to two invocations at once: one completes the batch, the other finds it so.
    let (a, b) = tokio::join!(invoke(&sender, json!([ends[2]])), invoke(&sender, json!([ends[2]])));
    assert_eq!((&a["batchItemFailures"], &b["batchItemFailures"]), (&json!([]), &json!([])));
    let done = sender.jobs.batch_progress(&batch_id).await.unwrap().unwrap();
    assert_eq!((done.completed, done.cancelled, done.failed), (1, 1, 1));
    let completed_at = done.completed_at.expect("the last end completes the batch");
    assert!(expires_at().await.is_some_and(|at| at > completed_at / 1000), "a completed batch's expires");
    invoke(&sender, json!(ends)).await;
    let again = sender.jobs.batch_progress(&batch_id).await.unwrap().unwrap();
    assert_eq!((again.ended(), again.completed_at), (3, Some(completed_at)), "given again, nothing changes");
    // Job ends of a batch with no callback and no job events subscribed queue nothing.
    assert!(queued(&stack).await.is_empty());

    // The completion's record (open -> completed), given twice: the same one delivery, twice queued.
    let image = |state: &str| {
        let mut image = json!({
            "jobId": {"S": format!("batch#{batch_id}")}, "tenant": {"S": owner}, "batchSize": {"N": "3"},
            "batchState": {"S": state}, "endedCompleted": {"NS": ["0"]}, "endedCancelled": {"NS": ["1"]},
            "endedFailed": {"NS": ["2"]},
        });
        if state == "completed" {
            image["completedAt"] = json!({"N": completed_at.to_string()});
        }
        image
    };
    let completion = json!({
        "eventID": "c", "eventName": "MODIFY", "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": {"jobId": {"S": format!("batch#{batch_id}")}}, "SequenceNumber": "9",
            "OldImage": image("open"), "NewImage": image("completed")},
    });
    invoke(&sender, json!([completion, completion])).await;
    let messages = queued(&stack).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let deliveries: Vec<jobpipe_core::webhooks::Delivery> =
        messages.iter().map(|m| serde_json::from_str(m.body.as_deref().unwrap()).unwrap()).collect();
    assert_eq!(deliveries[0].webhook_id, deliveries[1].webhook_id, "one webhook-id for the one completion");
    let payload = &deliveries[0].payload;
    assert_eq!(
        (payload["type"].as_str(), payload["data"]["batchId"].as_str()),
        (Some("batch.completed"), Some(batch_id.as_str()))
    );
    assert_eq!(payload["data"]["counts"], json!({"completed": 1, "failed": 1, "cancelled": 1}));
    assert_eq!((deliveries[0].url.as_str(), deliveries[0].batch_id.as_ref()), (url.as_str(), Some(&batch_id)));
}

/// A job counted against its tenant's open jobs is counted down when it ends (a cancel too), once,
/// however often and however concurrently the stream gives its end.
#[tokio::test]
async fn a_counted_jobs_end_counts_it_down_once() {
    let stack = TestStack::new().await;
    let clients = stack.clients.clone();
    let open = jobpipe_core::open_jobs::OpenJobs::new(clients.dynamodb.clone(), &stack.control_table);
    let mut sender = new_sender(&stack, &clients);
    sender.open_jobs = Some(open.clone());
    let sender = Arc::new(sender);
    let owner = jobpipe_testkit::local_stack::unique("tenant-");
    for _ in 0..2 {
        clients.dynamodb.transact_write_items().transact_items(open.count_up(&owner, 10)).send().await.unwrap();
    }
    assert_eq!(open.count(&owner).await.unwrap(), 2);
    let counted_end = |status: &str, sequence: u64| {
        let mut record = batch_job_end(&JobId::new_random(), 0, 1, &owner, status, sequence);
        for image in ["OldImage", "NewImage"] {
            let fields = record["dynamodb"][image].as_object_mut().unwrap();
            fields.retain(|name, _| !name.starts_with("batch"));
            fields.insert("openCounted".into(), json!({"BOOL": true}));
        }
        record
    };
    let cancelled = counted_end("cancelled", 1);
    let (a, b) = tokio::join!(invoke(&sender, json!([cancelled, cancelled])), invoke(&sender, json!([cancelled])));
    // Two overlapping count-downs of one job: one wins, the other's transaction conflicts and is retried.
    for answer in [a, b] {
        if answer["batchItemFailures"] != json!([]) {
            assert_eq!(invoke(&sender, json!([cancelled])).await["batchItemFailures"], json!([]));
        }
    }
    assert_eq!(open.count(&owner).await.unwrap(), 1, "counted down once");
    invoke(&sender, json!([counted_end("completed", 2)])).await;
    assert_eq!(open.count(&owner).await.unwrap(), 0);
}
