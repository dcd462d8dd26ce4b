//! Batches over the API: up to 100 jobs accepted all or none (one bad job refuses the batch, naming its
//! index, and nothing is stored), idempotent with a key, followed as one (counts always those of its
//! jobs), and cancelled together.

use http::{Method, StatusCode};
use jobpipe_core::Clock as _;
use serde_json::{Value, json};

use crate::helpers::{App, Reply, error_code, error_field, spawn_app};

async fn submit(app: &App, user: &str, jobs: Value) -> Reply {
    app.send(Method::POST, "/batches", Some(user), Some(json!({ "jobs": jobs }))).await
}

fn echo(n: u64) -> Value {
    json!({"kind": "echo", "input": {"n": n}})
}

#[tokio::test]
async fn a_batch_is_accepted_whole_followed_as_one_and_counts_its_jobs() {
    let app = spawn_app().await;
    let jobs: Vec<Value> =
        (0..5).map(echo).chain([json!({"kind": "echo", "input": {"failPermanently": true}})]).collect();
    let accepted = submit(&app, "alice", json!(jobs)).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    let batch_id = accepted.body["batchId"].as_str().unwrap().to_string();
    assert_eq!(accepted.headers["location"], format!("/batches/{batch_id}"));
    assert_eq!((accepted.body["total"].as_u64(), accepted.body["counts"]["queued"].as_u64()), (Some(6), Some(6)));
    assert_eq!(accepted.body["done"], false);
    let ids: Vec<String> =
        accepted.body["jobIds"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    assert_eq!(ids.len(), 6);
    let job = app.get("alice", &format!("/jobs/{}", ids[2])).await;
    assert_eq!((job.body["batchId"].as_str(), &job.body["input"]), (Some(batch_id.as_str()), &json!({"n": 2})));

    app.process_queue().await;
    let done = app.get("alice", &format!("/batches/{batch_id}")).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(
        done.body["counts"],
        json!({"scheduled": 0, "queued": 0, "processing": 0, "completed": 5, "failed": 1, "cancelled": 0})
    );
    assert_eq!(done.body["done"], true);

    // The jobs a page at a time.
    let first = app.get("alice", &format!("/batches/{batch_id}?limit=4")).await;
    assert_eq!((first.body["jobs"].as_array().unwrap().len(), first.body["nextToken"].as_str()), (4, Some("4")));
    let rest = app.get("alice", &format!("/batches/{batch_id}?limit=4&nextToken=4")).await;
    assert_eq!((rest.body["jobs"].as_array().unwrap().len(), &rest.body["nextToken"]), (2, &Value::Null));
    assert_eq!(rest.body["jobs"][1]["jobId"], ids[5].as_str());

    // Another tenant sees no such batch.
    assert_eq!(app.get("bob", &format!("/batches/{batch_id}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("alice", &format!("/batches/{}", ids[0])).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("alice", "/batches/nope").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn one_bad_job_refuses_the_batch_naming_its_index_and_nothing_is_stored() {
    let app = spawn_app().await;
    for (bad, field, code) in [
        (json!({"kind": "nope"}), "jobs[2].kind", "unknown_kind"),
        (json!({"kind": "echo", "input": {"sleepMs": -1}}), "jobs[2].input.sleepMs", "invalid_input"),
        (json!({"kind": "echo", "input": 5}), "jobs[2].input", "invalid_request"),
        (json!({"kind": "echo", "extra": 1}), "jobs[2].extra", "invalid_request"),
        (json!("echo"), "jobs[2]", "invalid_request"),
        (json!({"kind": "echo", "delaySeconds": 400_000_000}), "jobs[2].delaySeconds", "start_too_far_ahead"),
        (
            json!({"kind": "echo", "callback": {"url": "https://10.0.0.1/"}}),
            "jobs[2].callback.url",
            "invalid_webhook_url",
        ),
    ] {
        let reply = submit(&app, "alice", json!([echo(0), echo(1), bad.clone()])).await;
        assert_eq!(
            (reply.status, error_field(&reply), error_code(&reply)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field), code),
            "{bad}: {}",
            reply.body
        );
    }
    for (jobs, why) in
        [(json!([]), "empty"), (json!((0..101).map(echo).collect::<Vec<_>>()), "101 jobs"), (json!({}), "not a list")]
    {
        let reply = submit(&app, "alice", jobs).await;
        assert_eq!(
            (reply.status, error_field(&reply)),
            (StatusCode::BAD_REQUEST, Some("jobs")),
            "{why}: {}",
            reply.body
        );
    }
    assert_eq!(app.get("alice", "/jobs").await.body["jobs"], json!([]), "nothing refused was stored");
    let hundred = submit(&app, "alice", json!((0..100).map(echo).collect::<Vec<_>>())).await;
    assert_eq!((hundred.status, hundred.body["total"].as_u64()), (StatusCode::ACCEPTED, Some(100)), "{}", hundred.body);
}

#[tokio::test]
async fn a_keyed_batch_is_one_batch_and_a_reused_key_is_refused() {
    let app = spawn_app().await;
    let keyed = |jobs: Value| {
        let request = http::Request::post("/batches")
            .header("authorization", format!("Bearer {}", jobpipe_testkit::token("alice")))
            .header("content-type", "application/json")
            .header("idempotency-key", "nightly-2026-12-07")
            .body(axum::body::Body::from(json!({ "jobs": jobs }).to_string()))
            .unwrap();
        app.call(request)
    };
    let first = keyed(json!([echo(1), echo(2)])).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let again = keyed(json!([echo(1), echo(2)])).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!((&again.body["batchId"], &again.body["jobIds"]), (&first.body["batchId"], &first.body["jobIds"]));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = keyed(json!([echo(2), echo(1)])).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", other.body);
    assert_eq!(app.get("alice", "/jobs").await.body["jobs"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn cancelling_a_batch_cancels_the_jobs_that_have_not_started() {
    let app = spawn_app().await;
    let reply = submit(&app, "alice", json!([echo(1), {"kind": "echo", "delaySeconds": 3600}, echo(3)])).await;
    let batch_id = reply.body["batchId"].as_str().unwrap().to_string();
    let first = reply.body["jobIds"][0].as_str().unwrap().to_string();
    // One ends before the cancel.
    app.process_queue().await;
    let cancelled = app.send(Method::DELETE, &format!("/batches/{batch_id}"), Some("alice"), None).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["counts"]["completed"].as_u64(), Some(2), "{}", cancelled.body);
    assert_eq!((cancelled.body["counts"]["cancelled"].as_u64(), &cancelled.body["done"]), (Some(1), &json!(true)));
    assert_eq!(app.get("alice", &format!("/jobs/{first}")).await.body["status"], "completed");
    assert_eq!(
        app.send(Method::DELETE, &format!("/batches/{batch_id}"), Some("bob"), None).await.status,
        StatusCode::NOT_FOUND
    );
}

/// A batch counts all its jobs against the tenant's open jobs, in the transaction that stores them: one
/// that would go over is refused whole.
#[tokio::test]
async fn a_batch_counts_every_job_against_the_tenants_open_jobs() {
    let app =
        crate::helpers::spawn_app_with(&[("TENANT_OPEN_JOBS", "3"), ("TENANT_SUBMISSIONS_PER_SECOND", "0")], |_| {})
            .await;
    // Never within the limit: refused as such (waiting cannot help).
    let four = submit(&app, "alice", json!([echo(1), echo(2), echo(3), echo(4)])).await;
    assert_eq!(
        (four.status, error_code(&four)),
        (StatusCode::UNPROCESSABLE_ENTITY, "batch_too_large"),
        "{}",
        four.body
    );
    let two = submit(&app, "alice", json!([echo(1), echo(2)])).await;
    assert_eq!(two.status, StatusCode::ACCEPTED, "{}", two.body);
    let two_more = submit(&app, "alice", json!([echo(3), echo(4)])).await;
    assert_eq!((two_more.status, error_field(&two_more)), (StatusCode::TOO_MANY_REQUESTS, Some("openJobs")));
    let one = submit(&app, "alice", json!([echo(3)])).await;
    assert_eq!(one.status, StatusCode::ACCEPTED, "{}", one.body);
    assert_eq!(app.get("alice", "/jobs").await.body["jobs"].as_array().unwrap().len(), 3);
    // One transaction holds at most 100 writes, and the count takes one.
    let hundred = submit(&app, "alice", json!((0..100).map(echo).collect::<Vec<_>>())).await;
    assert_eq!((hundred.status, error_code(&hundred)), (StatusCode::UNPROCESSABLE_ENTITY, "batch_too_large"));
}

/// A keyed batch sent again answers the batch it stored, also once what was checked for a new batch has
/// changed (a `runAt` now long past); a batch no limit can ever admit is refused as such, not "retry".
#[tokio::test]
async fn a_keyed_retry_is_its_batch_after_its_start_passed_and_impossible_batches_are_422() {
    let app = crate::helpers::spawn_app_with(&[("TENANT_SUBMISSIONS_PER_SECOND", "3")], |_| {}).await;
    let run_at = jobpipe_core::clock::to_rfc3339(app.clock.now_ms() + 60_000);
    let jobs = json!([{"kind": "echo", "runAt": run_at}, echo(1)]);
    let first = app.post_keyed("/batches", "retry-me", json!({ "jobs": jobs })).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    app.clock.advance_ms(3_600_000);
    let again = app.post_keyed("/batches", "retry-me", json!({ "jobs": jobs })).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(again.body["batchId"], first.body["batchId"]);
    let unkeyed = submit(&app, "alice", jobs).await;
    assert_eq!((unkeyed.status, error_field(&unkeyed)), (StatusCode::UNPROCESSABLE_ENTITY, Some("jobs[0].runAt")));

    let four = submit(&app, "alice", json!([echo(1), echo(2), echo(3), echo(4)])).await;
    assert_eq!(
        (four.status, error_code(&four)),
        (StatusCode::UNPROCESSABLE_ENTITY, "batch_too_large"),
        "{}",
        four.body
    );
}

/// A batch stays readable once its first job has expired (ended jobs are kept a week; a later one may
/// be scheduled long after).
#[tokio::test]
async fn a_batch_is_found_without_its_first_job() {
    let app = spawn_app().await;
    let reply = submit(&app, "alice", json!([echo(1), echo(2), {"kind": "echo", "delaySeconds": 86_400}])).await;
    let batch_id = reply.body["batchId"].as_str().unwrap().to_string();
    let first = reply.body["jobIds"][0].as_str().unwrap();
    app.stack
        .clients
        .dynamodb
        .delete_item()
        .table_name(&app.stack.table)
        .key("jobId", aws_sdk_dynamodb::types::AttributeValue::S(first.into()))
        .send()
        .await
        .unwrap();
    let read = app.get("alice", &format!("/batches/{batch_id}")).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(
        (read.body["jobIds"].as_array().unwrap().len(), read.body["counts"]["scheduled"].as_u64()),
        (2, Some(1))
    );
    let cancelled = app.send(Method::DELETE, &format!("/batches/{batch_id}"), Some("alice"), None).await;
    assert_eq!(cancelled.body["counts"]["cancelled"].as_u64(), Some(2), "{}", cancelled.body);
    assert_eq!(app.get("bob", &format!("/batches/{batch_id}")).await.status, StatusCode::NOT_FOUND);
}
