//! Per-tenant submission quotas: over the limit `POST /jobs` answers 429 with `Retry-After`, naming the
//! limit, and stores nothing; concurrent submissions cannot exceed it; a tenant's own limit overrides
//! the deployment's. The same for open jobs (waiting or running).

use http::StatusCode;
use jobpipe_core::Clock;
use jobpipe_core::controls::{ControlStore, TENANT_LIMITS_CACHE, TenantLimit};
use jobpipe_core::job::JobId;
use jobpipe_core::open_jobs::OpenJobs;
use serde_json::json;

use crate::helpers::{error_code, error_field, spawn_app_with};

#[tokio::test]
async fn submissions_over_a_tenants_limit_are_refused_and_store_nothing() {
    let app = spawn_app_with(&[("TENANT_SUBMISSIONS_PER_SECOND", "3")], |_| {}).await;
    // Ten at once, in one second of the API's clock: exactly three get in, whatever the interleaving.
    let replies = futures_util::future::join_all(
        (0..10).map(|n| app.post_job("alice", json!({"kind": "echo", "input": {"n": n}}))),
    )
    .await;
    let accepted = replies.iter().filter(|r| r.status == StatusCode::ACCEPTED).count();
    assert_eq!(accepted, 3, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for refused in replies.iter().filter(|r| r.status != StatusCode::ACCEPTED) {
        assert_eq!(
            (refused.status, error_code(refused), error_field(refused)),
            (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", Some("submissionsPerSecond"))
        );
        assert_eq!(refused.headers["retry-after"], "1");
    }
    assert_eq!(
        app.get("alice", "/jobs").await.body["jobs"].as_array().unwrap().len(),
        3,
        "nothing stored for the refused"
    );
    assert_eq!(app.queued_messages().await, 3);
    // Another tenant has its own count; the next second, alice's starts again.
    assert_eq!(app.post_job("bob", json!({"kind": "echo"})).await.status, StatusCode::ACCEPTED);
    app.clock.advance_ms(1_000);
    assert_eq!(app.post_job("alice", json!({"kind": "echo"})).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_tenants_own_limit_overrides_the_default() {
    let app = spawn_app_with(&[("TENANT_SUBMISSIONS_PER_SECOND", "3")], |_| {}).await;
    let controls = ControlStore::new(app.stack.clients.dynamodb.clone(), &app.stack.control_table);
    controls.set_tenant_limit("bob", TenantLimit::SubmissionsPerSecond, Some(1)).await.unwrap();
    controls.set_tenant_limit("carol", TenantLimit::SubmissionsPerSecond, Some(0)).await.unwrap();
    assert_eq!(app.post_job("bob", json!({"kind": "echo"})).await.status, StatusCode::ACCEPTED);
    assert_eq!(app.post_job("bob", json!({"kind": "echo"})).await.status, StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..5 {
        assert_eq!(app.post_job("carol", json!({"kind": "echo"})).await.status, StatusCode::ACCEPTED, "0 is no limit");
    }
    // Back to the default: seen once the cached limit is older than its few seconds.
    controls.set_tenant_limit("bob", TenantLimit::SubmissionsPerSecond, None).await.unwrap();
    app.clock.advance_ms(TENANT_LIMITS_CACHE.as_millis() as i64);
    for _ in 0..3 {
        assert_eq!(app.post_job("bob", json!({"kind": "echo"})).await.status, StatusCode::ACCEPTED);
    }
    assert_eq!(app.post_job("bob", json!({"kind": "echo"})).await.status, StatusCode::TOO_MANY_REQUESTS);
}

/// Open jobs (waiting or running): ten submissions at once against a limit of three admit exactly three
/// (the count and the job are one transaction); the refused ones store nothing and say `openJobs`. A
/// keyed retry of an accepted job is that job, counted once. An ended job, counted down (once, however
/// often its end is seen), makes room again.
#[tokio::test]
async fn open_jobs_over_a_tenants_limit_are_refused_and_an_ended_job_makes_room() {
    let app = spawn_app_with(&[("TENANT_OPEN_JOBS", "3"), ("TENANT_SUBMISSIONS_PER_SECOND", "0")], |_| {}).await;
    let replies = futures_util::future::join_all(
        (0..10).map(|n| app.post_job("alice", json!({"kind": "echo", "input": {"n": n}}))),
    )
    .await;
    let accepted: Vec<_> = replies.iter().filter(|r| r.status == StatusCode::ACCEPTED).collect();
    assert_eq!(accepted.len(), 3, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for refused in replies.iter().filter(|r| r.status != StatusCode::ACCEPTED) {
        assert_eq!(
            (refused.status, error_code(refused), error_field(refused)),
            (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", Some("openJobs"))
        );
        assert_eq!(refused.headers["retry-after"], "5");
    }
    assert_eq!(app.get("alice", "/jobs").await.body["jobs"].as_array().unwrap().len(), 3, "nothing stored");
    assert_eq!(app.queued_messages().await, 3);
    let open = OpenJobs::new(app.stack.clients.dynamodb.clone(), &app.stack.control_table);
    assert_eq!(open.count("alice").await.unwrap(), 3);
    assert_eq!(app.post_job("bob", json!({"kind": "echo"})).await.status, StatusCode::ACCEPTED, "bob's own count");

    let first = JobId::parse(accepted[0].body["jobId"].as_str().unwrap()).unwrap();
    let now = app.clock.now_ms();
    assert!(open.count_down("alice", &first, now).await.unwrap());
    assert!(!open.count_down("alice", &first, now).await.unwrap(), "a second sight of the same end changes nothing");
    assert_eq!(open.count("alice").await.unwrap(), 2);
    let keyed = || app.post_keyed("/jobs", "order-7", json!({"kind": "echo"}));
    assert_eq!(keyed().await.status, StatusCode::ACCEPTED);
    assert_eq!(keyed().await.status, StatusCode::ACCEPTED, "a retry of an accepted job is that job");
    assert_eq!(open.count("alice").await.unwrap(), 3, "counted once");
    assert_eq!(app.post_job("alice", json!({"kind": "echo"})).await.status, StatusCode::TOO_MANY_REQUESTS);
}
