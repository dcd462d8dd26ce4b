//! `POST /jobs` with `runAt` or `delaySeconds`: a `scheduled` job, readable and cancellable until it starts,
//! and the start times the API refuses before storing anything.

use http::{Method, StatusCode};
use jobpipe_core::clock::{Clock, from_rfc3339, to_rfc3339};
use serde_json::json;

use crate::helpers::{error_code, error_field, spawn_app};

#[tokio::test]
async fn a_scheduled_job_is_shown_scheduled_until_it_starts_and_can_be_cancelled() {
    let app = spawn_app().await;
    let now = app.clock.now_ms();
    let run_at = to_rfc3339(now + 3_600_000);
    let posted = app.post_job("alice", json!({"kind": "echo", "input": {"n": 1}, "runAt": run_at})).await;
    assert_eq!(posted.status, StatusCode::ACCEPTED, "{}", posted.body);
    assert_eq!((posted.body["status"].as_str(), posted.body["runAt"].as_str()), (Some("scheduled"), Some(&*run_at)));
    assert_eq!(app.queued_messages().await, 0, "an hour ahead: the reconciler sends it 3 minutes before");
    let id = posted.body["jobId"].as_str().unwrap().to_string();

    let read = app.get("alice", &format!("/jobs/{id}")).await;
    assert_eq!((read.body["status"].as_str(), read.body["runAt"].as_str()), (Some("scheduled"), Some(&*run_at)));
    let listed = app.get("alice", "/jobs?status=scheduled").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.body["jobs"][0]["jobId"], id.as_str(), "{}", listed.body);

    let cancelled = app.send(Method::DELETE, &format!("/jobs/{id}"), Some("alice"), None).await;
    assert_eq!((cancelled.status, cancelled.body["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    let again = app.send(Method::DELETE, &format!("/jobs/{id}"), Some("alice"), None).await;
    assert_eq!((again.status, error_code(&again)), (StatusCode::CONFLICT, "not_cancellable"));

    // A job without a start shows no runAt; one with delaySeconds starts that long after acceptance.
    let plain = app.post_job("alice", json!({"kind": "echo"})).await;
    assert!(plain.body.get("runAt").is_none(), "{}", plain.body);
    let delayed = app.post_job("alice", json!({"kind": "echo", "delaySeconds": 90})).await;
    let delayed_at = from_rfc3339(delayed.body["runAt"].as_str().unwrap()).unwrap();
    assert_eq!(delayed_at, now + 90_000);
    assert_eq!(app.queued_messages().await, 2, "the plain job's message, and the delayed one's (within 3 min)");
}

#[tokio::test]
async fn start_times_that_cannot_be_kept_are_refused_naming_the_field_and_store_nothing() {
    let app = spawn_app().await;
    let now = app.clock.now_ms();
    let day = 86_400_000;
    let cases = [
        (json!({"runAt": "tomorrow"}), StatusCode::BAD_REQUEST, "invalid_request", "runAt"),
        (json!({"runAt": "2026-12-24T18:00:00"}), StatusCode::BAD_REQUEST, "invalid_request", "runAt"),
        (json!({"runAt": 1_798_135_200}), StatusCode::BAD_REQUEST, "invalid_request", "runAt"),
        (json!({"delaySeconds": -1}), StatusCode::BAD_REQUEST, "invalid_request", "delaySeconds"),
        (json!({"delaySeconds": 1.5}), StatusCode::BAD_REQUEST, "invalid_request", "delaySeconds"),
        (json!({"delaySeconds": "60"}), StatusCode::BAD_REQUEST, "invalid_request", "delaySeconds"),
        (
            json!({"delaySeconds": 5, "runAt": to_rfc3339(now)}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "delaySeconds",
        ),
        (json!({"runAt": to_rfc3339(now - 3_600_000)}), StatusCode::UNPROCESSABLE_ENTITY, "start_in_the_past", "runAt"),
        (
            json!({"runAt": to_rfc3339(now + 366 * day)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "start_too_far_ahead",
            "runAt",
        ),
        (
            json!({"delaySeconds": 366 * 86_400}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "start_too_far_ahead",
            "delaySeconds",
        ),
    ];
    for (start, status, code, field) in cases {
        let mut body = json!({"kind": "echo"});
        body.as_object_mut().unwrap().extend(start.as_object().unwrap().clone());
        let reply = app.post_job("alice", body.clone()).await;
        assert_eq!(
            (reply.status, error_code(&reply), error_field(&reply)),
            (status, code, Some(field)),
            "{body}: {}",
            reply.body
        );
    }
    let listed = app.get("alice", "/jobs").await;
    assert_eq!(listed.body["jobs"], json!([]), "nothing was stored");
    assert_eq!(app.queued_messages().await, 0);

    // The edges are accepted: a minute late runs at once (a client clock behind), 365 days ahead waits.
    let late = app.post_job("alice", json!({"kind": "echo", "runAt": to_rfc3339(now - 60_000)})).await;
    assert_eq!((late.status, late.body["status"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{}", late.body);
    let far = app.post_job("alice", json!({"kind": "echo", "delaySeconds": 365 * 86_400})).await;
    assert_eq!((far.status, far.body["status"].as_str()), (StatusCode::ACCEPTED, Some("scheduled")), "{}", far.body);
    // JSON Schema counts 30.0 as an integer (schemathesis sends such numbers), so the API does too.
    let whole = app.post_job("alice", json!({"kind": "echo", "delaySeconds": 30.0})).await;
    assert_eq!(whole.status, StatusCode::ACCEPTED, "{}", whole.body);
    assert_eq!(from_rfc3339(whole.body["runAt"].as_str().unwrap()), Some(now + 30_000));
}

/// A retried submission with the same key and the same start is the same job; another start is another
/// request, refused as a reused key.
#[tokio::test]
async fn the_start_is_part_of_what_an_idempotency_key_names() {
    let app = spawn_app().await;
    let first = app.post_keyed("/jobs", "k-1", json!({"kind": "echo", "delaySeconds": 120})).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    app.clock.advance_ms(5_000);
    let retry = app.post_keyed("/jobs", "k-1", json!({"kind": "echo", "delaySeconds": 120})).await;
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.body["runAt"], first.body["runAt"], "a replay keeps the first request's start");
    let other = app.post_keyed("/jobs", "k-1", json!({"kind": "echo", "delaySeconds": 121})).await;
    assert_eq!((other.status, error_code(&other)), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    assert_eq!(app.queued_messages().await, 1, "one message for the one job");
}

/// A keyed submission retried after its `runAt` has passed (the first answer was lost, the client came
/// back later) is still its job, not a "start in the past": the start is checked only for new jobs.
#[tokio::test]
async fn a_retry_after_the_start_has_passed_is_still_the_same_job() {
    let app = spawn_app().await;
    let body = json!({"kind": "echo", "runAt": to_rfc3339(app.clock.now_ms() + 120_000)});
    let first = app.post_keyed("/jobs", "k-late", body.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    app.clock.advance_ms(8 * 60_000);
    let retry = app.post_keyed("/jobs", "k-late", body.clone()).await;
    assert_eq!(
        (retry.status, retry.body["jobId"].clone()),
        (StatusCode::ACCEPTED, first.body["jobId"].clone()),
        "{}",
        retry.body
    );
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    // Without an earlier job, the same body is refused; with another body, the key is reused.
    let fresh = app.post_keyed("/jobs", "k-fresh", body).await;
    assert_eq!((fresh.status, error_code(&fresh)), (StatusCode::UNPROCESSABLE_ENTITY, "start_in_the_past"));
    let other = app
        .post_keyed("/jobs", "k-late", json!({"kind": "echo", "input": {"n": 2}, "runAt": "2026-01-01T00:00:00Z"}))
        .await;
    assert_eq!((other.status, error_code(&other)), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
}

/// An input over the inline limit is stored in S3, whose lifecycle rule removes it after the retention
/// (7 days by default): a job carrying one may start at most a day before that, so its input is there.
#[tokio::test]
async fn a_large_input_is_scheduled_only_as_far_ahead_as_it_is_kept() {
    let app = spawn_app().await;
    let large = json!({"blob": "x".repeat(20 * 1024)});
    let day = 86_400;
    let too_far = app.post_job("alice", json!({"kind": "echo", "input": large, "delaySeconds": 6 * day + 60})).await;
    assert_eq!(
        (too_far.status, error_code(&too_far), error_field(&too_far)),
        (StatusCode::UNPROCESSABLE_ENTITY, "start_too_far_ahead", Some("delaySeconds")),
        "{}",
        too_far.body
    );
    let within = app.post_job("alice", json!({"kind": "echo", "input": large, "delaySeconds": 6 * day})).await;
    assert_eq!(within.status, StatusCode::ACCEPTED, "{}", within.body);
    let small = app.post_job("alice", json!({"kind": "echo", "input": {"n": 1}, "delaySeconds": 300 * day})).await;
    assert_eq!(small.status, StatusCode::ACCEPTED, "an inline input lives with the job: {}", small.body);
}
