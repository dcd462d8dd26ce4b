//! Reading jobs: a caller's pages of them, newest first; another caller's jobs do not exist.

use http::StatusCode;
use serde_json::json;

use crate::helpers::{error_field, spawn_app};

#[tokio::test]
async fn another_users_job_does_not_exist_for_you() {
    let app = spawn_app().await;
    let job = app.post_job("alice", json!({"kind": "echo", "input": {"secret": "alice's"}})).await.body;
    let path = format!("/jobs/{}", job["jobId"].as_str().unwrap());
    let missing = app.get("bob", &format!("/jobs/{}", jobpipe_core::JobId::new_random())).await;
    let theirs = app.get("bob", &path).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.body, missing.body, "indistinguishable from a job that does not exist");
    assert_eq!(app.get("bob", "/jobs").await.body["jobs"], json!([]));
    assert_eq!(app.get("alice", "/jobs/not-a-uuid").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn listing_pages_through_my_jobs_newest_first() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        app.clock.advance_ms(10);
        let input = if n == 2 { json!({"failPermanently": true}) } else { json!({"n": n}) };
        ids.push(app.post_job("alice", json!({"kind": "echo", "input": input})).await.body["jobId"].clone());
    }
    app.post_job("bob", json!({"kind": "echo"})).await;

    let mut seen = Vec::new();
    let mut path = "/jobs?limit=2".to_string();
    loop {
        let page = app.get("alice", &path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let jobs = page.body["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        seen.extend(jobs.iter().map(|j| j["jobId"].clone()));
        match page.body["nextToken"].as_str() {
            Some(token) => path = format!("/jobs?limit=2&nextToken={token}"),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "all of alice's jobs, newest first, none of bob's");

    app.process_queue().await;
    let failed = app.get("alice", "/jobs?status=failed").await.body;
    assert_eq!(failed["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(failed["jobs"][0]["error"]["code"], "echo_failed");
    let completed = app.get("alice", "/jobs?status=completed&limit=100").await.body;
    assert_eq!(completed["jobs"].as_array().unwrap().len(), 4);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("status=done", "status"),
        ("nextToken=abc", "nextToken"),
        ("colour=red", "colour"),
    ] {
        let reply = app.get("alice", &format!("/jobs?{query}")).await;
        assert_eq!((reply.status, error_field(&reply)), (StatusCode::BAD_REQUEST, Some(field)), "{query}");
    }
}
