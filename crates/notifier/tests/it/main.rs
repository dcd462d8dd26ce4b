//! The notifier against moto (the connections table) and an `@connections` endpoint served here, fed
//! stream batches built from the fixtures in `events/` and `tests/data/`: pushes keep each job's order,
//! records that are not jobs never hold up the shard, and a Gone answer only forgets a connection that
//! is really gone.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jobpipe_core::clock::{Clock, SystemClock};
use jobpipe_core::connections::{ConnectionStore, Subject};
use jobpipe_core::job::JobId;
use jobpipe_testkit::TestStack;
use lambda_runtime::{Context, LambdaEvent};
use notifier::{Notifier, StreamEvent, StreamItemFailure, handle};
use serde_json::{Value, json};

/// How the `@connections` endpoint answers a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Delivered,
    Gone,
    /// A 500: the push may succeed later.
    Failed,
}

type Decide = Arc<dyn Fn(String, Value) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

#[derive(Clone)]
struct Endpoint {
    decide: Decide,
    /// (connection id, message) in the order the pushes were answered as delivered.
    delivered: Arc<Mutex<Vec<(String, Value)>>>,
}

async fn post_to_connection(State(endpoint): State<Endpoint>, Path(id): Path<String>, body: Bytes) -> Response {
    let message: Value = serde_json::from_slice(&body).expect("the notifier pushes JSON");
    match (endpoint.decide)(id.clone(), message.clone()).await {
        Answer::Delivered => {
            endpoint.delivered.lock().unwrap().push((id, message));
            StatusCode::OK.into_response()
        }
        Answer::Gone => {
            let mut response = (StatusCode::GONE, r#"{"message":"gone"}"#).into_response();
            response.headers_mut().insert("x-amzn-errortype", HeaderValue::from_static("GoneException"));
            response
        }
        Answer::Failed => {
            let mut response = (StatusCode::INTERNAL_SERVER_ERROR, r#"{"message":"busy"}"#).into_response();
            response.headers_mut().insert("x-amzn-errortype", HeaderValue::from_static("InternalServerError"));
            response
        }
    }
}

/// Serves `@connections` on a free port and answers each push as `decide` says.
async fn serve_connections(decide: Decide) -> (String, Endpoint) {
    let endpoint = Endpoint { decide, delivered: Arc::default() };
    let app = Router::new().route("/@connections/{id}", post(post_to_connection)).with_state(endpoint.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, endpoint)
}

fn deliver_all() -> Decide {
    Arc::new(|_, _| Box::pin(async { Answer::Delivered }))
}

fn fixture(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(jobpipe_testkit::repo_root().join(path)).unwrap()).unwrap()
}

/// A stream record of `job_id` moving from `old` to `new` (status, progress), built from the fixture
/// `events/dynamodb-job-changes.json`; `old` None is the job's INSERT.
fn job_change(job_id: &str, old: Option<(&str, u8)>, new: (&str, u8), updated_at: i64, sequence: u64) -> Value {
    let mut record = fixture("events/dynamodb-job-changes.json")["Records"][0].clone();
    let image = |(status, progress): (&str, u8), updated_at: i64| {
        let mut image = record["dynamodb"]["NewImage"].clone();
        image["jobId"] = json!({"S": job_id});
        image["status"] = json!({"S": status});
        image["progress"] = json!({"N": progress.to_string()});
        image["updatedAt"] = json!({"N": updated_at.to_string()});
        if status != "completed" {
            let fields = image.as_object_mut().unwrap();
            fields.remove("result");
            fields.remove("completedAt");
        }
        image
    };
    let new_image = image(new, updated_at);
    match old {
        Some(old) => record["dynamodb"]["OldImage"] = image(old, updated_at - 1),
        None => {
            record["eventName"] = json!("INSERT");
            record["dynamodb"].as_object_mut().unwrap().remove("OldImage");
        }
    }
    record["dynamodb"]["NewImage"] = new_image;
    record["dynamodb"]["Keys"] = json!({"jobId": {"S": job_id}});
    record["dynamodb"]["SequenceNumber"] = json!(sequence.to_string());
    record["eventID"] = json!(format!("event-{sequence}"));
    record
}

fn batch(records: Vec<Value>) -> LambdaEvent<StreamEvent> {
    LambdaEvent::new(serde_json::from_value(json!({"Records": records})).unwrap(), Context::default())
}

fn connections(stack: &TestStack) -> ConnectionStore {
    ConnectionStore::new(stack.clients.dynamodb.clone(), &stack.connections_table)
}

fn notifier(stack: &TestStack, endpoint_url: &str) -> Arc<Notifier> {
    Arc::new(Notifier::new(&jobpipe_testkit::sdk_config(), connections(stack), endpoint_url))
}

/// Registers `connection_id` (connected at `connected_at`) and subscribes it to `jobs`.
async fn subscribe(stack: &TestStack, connection_id: &str, connected_at: i64, jobs: &[&str]) {
    let store = connections(stack);
    store.connect(connection_id, "fixture-user", connected_at).await.unwrap();
    for job in jobs {
        store.subscribe(connection_id, "fixture-user", &JobId::parse(job).unwrap(), connected_at).await.unwrap();
    }
}

fn statuses_of(delivered: &[(String, Value)], job_id: &str) -> Vec<String> {
    delivered
        .iter()
        .filter(|(_, message)| message["jobId"] == job_id)
        .map(|(_, message)| message["status"].as_str().unwrap().to_string())
        .collect()
}

/// Two jobs, each moving to `processing` then `completed` in one batch. The endpoint holds job A's
/// `processing` push until job B's `completed` has arrived: job A's `completed` must still come after its
/// `processing` (one job's records in order), and job B must get through while A waits (different jobs
/// concurrently).
#[tokio::test]
async fn a_jobs_pushes_keep_stream_order_while_other_jobs_go_on() {
    let stack = TestStack::new().await;
    let (job_a, job_b) = (JobId::new_random().as_str().to_string(), JobId::new_random().as_str().to_string());
    subscribe(&stack, "c-watcher", SystemClock.now_ms(), &[&job_a, &job_b]).await;

    let (b_completed, b_completed_seen) = tokio::sync::watch::channel(false);
    let b_completed = Arc::new(b_completed);
    let held_until_b_completed = Arc::new(Mutex::new(None::<bool>));
    let decide: Decide = {
        let (job_a, job_b, held) = (job_a.clone(), job_b.clone(), held_until_b_completed.clone());
        Arc::new(move |_, message| {
            let (job_a, job_b, held) = (job_a.clone(), job_b.clone(), held.clone());
            let (b_completed, mut b_completed_seen) = (b_completed.clone(), b_completed_seen.clone());
            Box::pin(async move {
                if message["jobId"] == job_b && message["status"] == "completed" {
                    b_completed.send_replace(true);
                } else if message["jobId"] == job_a && message["status"] == "processing" {
                    let waited = tokio::time::timeout(Duration::from_secs(30), b_completed_seen.wait_for(|seen| *seen));
                    let released_by_b = matches!(waited.await, Ok(Ok(_)));
                    *held.lock().unwrap() = Some(released_by_b);
                }
                Answer::Delivered
            })
        })
    };
    let (url, endpoint) = serve_connections(decide).await;
    let records = vec![
        job_change(&job_a, Some(("queued", 0)), ("processing", 0), 1_000, 1),
        job_change(&job_b, Some(("queued", 0)), ("processing", 0), 1_000, 2),
        job_change(&job_a, Some(("processing", 0)), ("completed", 100), 2_000, 3),
        job_change(&job_b, Some(("processing", 0)), ("completed", 100), 2_000, 4),
    ];
    let response = handle(notifier(&stack, &url), batch(records)).await.unwrap();
    assert!(response.batch_item_failures.is_empty(), "{response:?}");

    let delivered = endpoint.delivered.lock().unwrap().clone();
    assert_eq!(statuses_of(&delivered, &job_a), ["processing", "completed"], "job A's pushes in stream order");
    assert_eq!(statuses_of(&delivered, &job_b), ["processing", "completed"], "job B's pushes in stream order");
    assert_eq!(
        *held_until_b_completed.lock().unwrap(),
        Some(true),
        "job B's pushes went on while job A's waited (different jobs are pushed concurrently)"
    );
}

/// SAM's generated DynamoDB event (an item of another shape: a numeric `Id`, a `Message`) in the same
/// batch as a job's change: the foreign records are skipped, not reported, and the job is still pushed.
/// A push that fails with a 500 (it may pass later) is still reported, from that record.
#[tokio::test]
async fn records_that_are_not_jobs_are_skipped_and_only_retryable_failures_are_reported() {
    let stack = TestStack::new().await;
    let (job, busy_job) = (JobId::new_random().as_str().to_string(), JobId::new_random().as_str().to_string());
    subscribe(&stack, "c-watcher", SystemClock.now_ms(), &[&job, &busy_job]).await;
    let decide: Decide = {
        let busy_job = busy_job.clone();
        Arc::new(move |_, message| {
            let failed = message["jobId"] == busy_job;
            Box::pin(async move { if failed { Answer::Failed } else { Answer::Delivered } })
        })
    };
    let (url, endpoint) = serve_connections(decide).await;

    let foreign = fixture("tests/data/sam-dynamodb-update-event.json")["Records"].as_array().unwrap().clone();
    let mut records = foreign.clone();
    records.push(job_change(&job, Some(("processing", 40)), ("completed", 100), 5_000, 100));
    let response = handle(notifier(&stack, &url), batch(records)).await.unwrap();
    assert_eq!(response.batch_item_failures, [], "records that can never be pushed are not reported");
    assert_eq!(statuses_of(&endpoint.delivered.lock().unwrap(), &job), ["completed"], "the job behind them is pushed");

    let mut records = foreign;
    records.insert(1, job_change(&busy_job, Some(("queued", 0)), ("processing", 0), 6_000, 42));
    let response = handle(notifier(&stack, &url), batch(records)).await.unwrap();
    assert_eq!(
        response.batch_item_failures,
        [StreamItemFailure { item_identifier: "42".into() }],
        "a push that may pass later is reported, so Lambda retries from it"
    );
}

/// API Gateway answers `GoneException` both for a connection that is gone and for one whose `$connect`
/// has not returned yet. A connection registered moments ago is kept (with its subscription); one
/// registered long ago is forgotten with all its subscriptions.
#[tokio::test]
async fn a_gone_answer_forgets_only_connections_past_their_connect() {
    let stack = TestStack::new().await;
    let job = JobId::new_random().as_str().to_string();
    let now = SystemClock.now_ms();
    subscribe(&stack, "c-connecting", now, &[&job]).await;
    subscribe(&stack, "c-long-gone", now - 10 * 60 * 1000, &[&job]).await;
    let (url, _endpoint) = serve_connections(Arc::new(|_, _| Box::pin(async { Answer::Gone }))).await;

    let record = job_change(&job, Some(("queued", 0)), ("processing", 0), 1_000, 7);
    let response = handle(notifier(&stack, &url), batch(vec![record])).await.unwrap();
    assert!(response.batch_item_failures.is_empty(), "{response:?}");

    let store = connections(&stack);
    let subscribers = store.subscribers(&JobId::parse(&job).unwrap()).await.unwrap();
    assert_eq!(subscribers, ["c-connecting"], "only the connection past its $connect was forgotten");
    assert_eq!(store.owner_of("c-connecting").await.unwrap().as_deref(), Some("fixture-user"));
    assert_eq!(store.owner_of("c-long-gone").await.unwrap(), None);
}

/// Every push goes through the `@connections` endpoint the notifier was built with.
#[tokio::test]
async fn pushes_reach_every_subscriber() {
    let stack = TestStack::new().await;
    let job = JobId::new_random().as_str().to_string();
    subscribe(&stack, "c-one", SystemClock.now_ms(), &[&job]).await;
    subscribe(&stack, "c-two", SystemClock.now_ms(), &[&job]).await;
    let (url, endpoint) = serve_connections(deliver_all()).await;
    let record = job_change(&job, None, ("queued", 0), 1_000, 1);
    let response = handle(notifier(&stack, &url), batch(vec![record])).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    let mut reached: Vec<String> = endpoint.delivered.lock().unwrap().iter().map(|(c, _)| c.clone()).collect();
    reached.sort();
    assert_eq!(reached, ["c-one", "c-two"]);
}

/// A stream record of a batch's progress item, as the table writes it.
fn batch_progress_change(batch_id: &JobId, old: Option<&[u32]>, new: &[u32], size: u32, sequence: u64) -> Value {
    let image = |ended: &[u32]| {
        let mut image = json!({
            "jobId": {"S": format!("batch#{batch_id}")},
            "tenant": {"S": "fixture-user"},
            "batchSize": {"N": size.to_string()},
            "batchState": {"S": if ended.len() as u32 == size { "completed" } else { "open" }},
            "endedCompleted": {"NS": ended.iter().map(u32::to_string).collect::<Vec<_>>()},
        });
        if ended.len() as u32 == size {
            image["completedAt"] = json!({"N": "1796000000000"});
        }
        image
    };
    let mut record = json!({
        "eventID": format!("event-{sequence}"),
        "eventName": if old.is_some() { "MODIFY" } else { "INSERT" },
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": {"jobId": {"S": format!("batch#{batch_id}")}}, "NewImage": image(new),
            "SequenceNumber": sequence.to_string()},
    });
    if let Some(old) = old {
        record["dynamodb"]["OldImage"] = image(old);
    }
    record
}

/// A batch's progress item's changes are pushed to the batch's subscribers only (not the subscribers of
/// its jobs), each time its counts change, the last saying it is done; a change that leaves the counts as
/// they were is not pushed.
#[tokio::test]
async fn a_batchs_progress_is_pushed_to_its_subscribers_as_its_counts_change() {
    let stack = TestStack::new().await;
    let (url, endpoint) = serve_connections(deliver_all()).await;
    let notifier = notifier(&stack, &url);
    let batch_id = JobId::new_random();
    // Pushes of the progress item's changes go to the batch's subscribers only.
    let store = connections(&stack);
    store.connect("c-batch", "fixture-user", SystemClock.now_ms()).await.unwrap();
    store.subscribe("c-batch", "fixture-user", Subject::Batch(batch_id.clone()), SystemClock.now_ms()).await.unwrap();
    subscribe(&stack, "c-job", SystemClock.now_ms(), &[JobId::in_batch(&batch_id, 0).as_str()]).await;
    let records = vec![
        batch_progress_change(&batch_id, None, &[0], 2, 10),
        batch_progress_change(&batch_id, Some(&[0]), &[0], 2, 11),
        batch_progress_change(&batch_id, Some(&[0]), &[0, 1], 2, 12),
    ];
    assert!(handle(notifier.clone(), batch(records)).await.unwrap().batch_item_failures.is_empty());
    let delivered = endpoint.delivered.lock().unwrap().clone();
    let to_batch: Vec<&Value> = delivered.iter().filter(|(to, _)| to == "c-batch").map(|(_, m)| m).collect();
    assert!(delivered.iter().all(|(to, _)| to == "c-batch"), "only the batch's subscriber: {delivered:?}");
    assert_eq!(
        to_batch.iter().map(|m| (m["ended"].as_u64().unwrap(), m["done"].as_bool().unwrap())).collect::<Vec<_>>(),
        [(1, false), (2, true)],
        "a change that leaves the counts as they were is not pushed"
    );
    assert_eq!(
        (to_batch[1]["type"].as_str(), to_batch[1]["batchId"].as_str()),
        (Some("batch"), Some(batch_id.as_str()))
    );
}
