//! Recurring jobs: `/schedules` and the reconciler firing their ticks, with a manual clock. Each tick is
//! one job, however often it is fired; missed ticks are skipped but the latest; paused schedules do not
//! tick; bad schedules are refused naming the field, storing nothing.

use std::sync::Arc;

use http::{Method, StatusCode};
use jobpipe_core::clock::{Clock, Millis, from_rfc3339};
use jobpipe_core::job::JobStatus;
use queue_processor::Processor;
use serde_json::{Value, json};

use crate::helpers::{App, Reply, error_code, error_field, spawn_app};

const MINUTE: Millis = 60_000;

async fn create(app: &App, user: &str, body: Value) -> Reply {
    app.send(Method::POST, "/schedules", Some(user), Some(body)).await
}

fn time(reply: &Reply, field: &str) -> Millis {
    from_rfc3339(reply.body[field].as_str().unwrap_or_else(|| panic!("{field} in {}", reply.body))).unwrap()
}

/// The jobs alice's schedule made, by `runAt` (every job listed is one of its ticks here).
async fn tick_jobs(app: &App) -> Vec<(Millis, JobStatus, String)> {
    let page = app.get("alice", "/jobs?limit=100").await;
    let mut jobs: Vec<_> = page.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            let run_at = from_rfc3339(job["runAt"].as_str().expect("a tick's job has its runAt")).unwrap();
            let status = JobStatus::parse(job["status"].as_str().unwrap()).unwrap();
            (run_at, status, job["jobId"].as_str().unwrap().to_string())
        })
        .collect();
    jobs.sort_by_key(|(run_at, _, _)| *run_at);
    jobs
}

/// A reconciler with a short timeout (here 10 s left) still fires due ticks: before, ticks stopped a
/// fixed minute before the deadline, so under a timeout below a minute none ever fired (the fault run,
/// with its 10 s timeouts, showed it).
#[tokio::test]
async fn a_reconciler_with_a_short_timeout_still_fires_ticks() {
    let app = spawn_app().await;
    let created = create(&app, "alice", json!({"kind": "echo", "input": {}, "rate": "1 minute"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let report = app.processor.reconcile(Some(app.clock.now_ms() + 10_000)).await.unwrap();
    assert!(report.ticks.ticks_fired >= 1, "{report:?}");
    assert_eq!(tick_jobs(&app).await.len(), report.ticks.ticks_fired);
}

#[tokio::test]
async fn each_tick_creates_one_job_however_often_it_is_fired() {
    let app = spawn_app().await;
    let created = create(&app, "alice", json!({"kind": "echo", "input": {"n": 1}, "rate": "1 minute"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["scheduleId"].as_str().unwrap().to_string();
    assert_eq!(created.headers["location"], format!("/schedules/{id}"));
    assert_eq!((created.body["state"].as_str(), created.body["rate"].as_str()), (Some("active"), Some("1 minute")));
    let start = time(&created, "createdAt");
    assert_eq!(time(&created, "nextTickAt"), start + MINUTE);

    // Two reconcilers at once (two scheduled invocations overlapping), and then a third: every tick due
    // within the lookahead has exactly one job, whose id is the tick's.
    let other = Arc::new(Processor::new(&app.stack.config(), &app.stack.clients, Arc::new(app.clock.clone())));
    let (a, b) = tokio::join!(app.processor.reconcile(None), other.reconcile(None));
    let fired = a.unwrap().ticks.ticks_fired + b.unwrap().ticks.ticks_fired;
    assert!(fired >= 2, "both runs fired ticks: {fired}");
    app.processor.reconcile(None).await.unwrap();
    let jobs = tick_jobs(&app).await;
    let ticks: Vec<Millis> = jobs.iter().map(|(at, _, _)| *at).collect();
    assert_eq!(ticks, vec![start + MINUTE, start + 2 * MINUTE], "ticks within the lookahead, once each");
    assert!(jobs.iter().all(|(_, status, _)| *status == JobStatus::Scheduled), "{jobs:?}");
    let read = app.get("alice", &format!("/schedules/{id}")).await;
    assert_eq!(time(&read, "nextTickAt"), start + 3 * MINUTE);
    assert_eq!(time(&read, "lastTickAt"), start + 2 * MINUTE);
    assert_eq!(read.body["lastJobId"].as_str(), Some(jobs[1].2.as_str()));
    // Each tick's job was sent, delayed to its time; the run that found a tick's job already created
    // may send it again (as a client's retried submission does), which the state machine runs once.
    assert!(app.queued_messages().await >= 2, "each tick's job was sent");
}

/// The pipeline was down for ten minutes: the latest missed tick runs (late, once), the nine before it
/// are counted as skipped, and the schedule goes on from there.
#[tokio::test]
async fn ticks_missed_while_down_are_skipped_but_the_latest() {
    let app = spawn_app().await;
    let created = create(&app, "alice", json!({"kind": "echo", "rate": "1 minute"})).await;
    let start = time(&created, "createdAt");
    let id = created.body["scheduleId"].as_str().unwrap().to_string();
    app.clock.advance_ms(10 * MINUTE + 5_000);
    let report = app.processor.reconcile(None).await.unwrap();
    assert_eq!(report.ticks.ticks_skipped, 9, "{report:?}");
    let jobs = tick_jobs(&app).await;
    let ticks: Vec<(Millis, JobStatus)> = jobs.iter().map(|(at, status, _)| (*at, *status)).collect();
    assert_eq!(
        ticks,
        vec![
            (start + 10 * MINUTE, JobStatus::Queued),
            (start + 11 * MINUTE, JobStatus::Scheduled),
            (start + 12 * MINUTE, JobStatus::Scheduled)
        ],
        "the latest missed tick starts at once; the next ones wait for their time"
    );
    let read = app.get("alice", &format!("/schedules/{id}")).await;
    assert_eq!(read.body["skippedTicks"], 9);

    // The late tick's job runs now, as any queued job.
    app.process_queue().await;
    let late = app.get("alice", &format!("/jobs/{}", jobs[0].2)).await;
    assert_eq!(late.body["status"], "completed", "{}", late.body);
}

/// A paused schedule has no next tick and creates nothing; resumed, it ticks from the next tick after
/// the resume, and the ticks while paused are neither run nor counted as skipped.
#[tokio::test]
async fn a_paused_schedule_does_not_tick_and_resumes_from_its_next_tick() {
    let app = spawn_app().await;
    let created =
        create(&app, "alice", json!({"kind": "echo", "cron": "*/5 * * * *", "timezone": "Europe/Paris"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["scheduleId"].as_str().unwrap().to_string();
    let paused = app.send(Method::POST, &format!("/schedules/{id}/pause"), Some("alice"), None).await;
    assert_eq!((paused.status, paused.body["state"].as_str()), (StatusCode::OK, Some("paused")), "{}", paused.body);
    assert!(paused.body["nextTickAt"].is_null(), "{}", paused.body);
    let again = app.send(Method::POST, &format!("/schedules/{id}/pause"), Some("alice"), None).await;
    assert_eq!(again.status, StatusCode::OK, "pausing a paused schedule is no error");

    app.clock.advance_ms(60 * MINUTE);
    let report = app.processor.reconcile(None).await.unwrap();
    assert_eq!((report.ticks.ticks_fired, report.ticks.ticks_skipped), (0, 0), "{report:?}");
    assert_eq!(tick_jobs(&app).await.len(), 0);

    let resumed = app.send(Method::POST, &format!("/schedules/{id}/resume"), Some("alice"), None).await;
    assert_eq!((resumed.status, resumed.body["state"].as_str()), (StatusCode::OK, Some("active")));
    let next = time(&resumed, "nextTickAt");
    let now = app.clock.now_ms();
    assert!(next > now && next <= now + 5 * MINUTE && next % (5 * MINUTE) == 0, "the next five-minute mark: {next}");
    app.processor.reconcile(None).await.unwrap();
    let read = app.get("alice", &format!("/schedules/{id}")).await;
    assert_eq!(read.body["skippedTicks"], 0);
    assert!(tick_jobs(&app).await.iter().all(|(at, _, _)| *at > now), "nothing from the paused hour ran");
}

#[tokio::test]
async fn schedules_are_listed_read_and_deleted_by_their_owner_only() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let created = create(&app, "alice", json!({"kind": "echo", "input": {"n": n}, "rate": "1 hour"})).await;
        ids.push(created.body["scheduleId"].as_str().unwrap().to_string());
    }
    let first = app.get("alice", "/schedules?limit=2").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let token = first.body["nextToken"].as_str().expect("a second page").to_string();
    let second = app.get("alice", &format!("/schedules?limit=2&nextToken={token}")).await;
    let listed: Vec<&str> = first.body["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second.body["schedules"].as_array().unwrap())
        .map(|s| s["scheduleId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids.iter().rev().map(String::as_str).collect::<Vec<_>>(), "newest first");
    assert_eq!(app.get("bob", "/schedules").await.body["schedules"], json!([]));

    // Bob cannot see, pause, resume or delete alice's schedule: it does not exist for him.
    let path = format!("/schedules/{}", ids[0]);
    assert_eq!(app.get("bob", &path).await.status, StatusCode::NOT_FOUND);
    for (method, suffix) in [(Method::POST, "/pause"), (Method::POST, "/resume"), (Method::DELETE, "")] {
        let reply = app.send(method, &format!("{path}{suffix}"), Some("bob"), None).await;
        assert_eq!((reply.status, error_code(&reply)), (StatusCode::NOT_FOUND, "not_found"), "{suffix}");
    }
    assert_eq!(app.get("alice", &path).await.status, StatusCode::OK);

    let deleted = app.send(Method::DELETE, &path, Some("alice"), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("alice", &path).await.status, StatusCode::NOT_FOUND);
    let again = app.send(Method::DELETE, &path, Some("alice"), None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("alice", "/schedules/not-a-uuid").await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("alice", "/schedules?nextToken=nope").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn schedules_that_cannot_be_kept_are_refused_naming_the_field_and_store_nothing() {
    let app = spawn_app().await;
    let big = "x".repeat(20 * 1024);
    let cases = [
        (json!({"kind": "echo"}), StatusCode::BAD_REQUEST, "invalid_request", "cron"),
        (
            json!({"kind": "echo", "cron": "0 9 * * *", "rate": "1 hour"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "rate",
        ),
        (json!({"kind": "echo", "cron": 9}), StatusCode::BAD_REQUEST, "invalid_request", "cron"),
        (
            json!({"kind": "echo", "rate": "1 hour", "every": "day"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "every",
        ),
        (json!({"rate": "1 hour"}), StatusCode::BAD_REQUEST, "invalid_request", "kind"),
        (json!({"kind": "echo", "rate": "1 hour", "input": [1]}), StatusCode::BAD_REQUEST, "invalid_request", "input"),
        (json!({"kind": "nope", "rate": "1 hour"}), StatusCode::UNPROCESSABLE_ENTITY, "unknown_kind", "kind"),
        (
            json!({"kind": "echo", "rate": "1 hour", "input": {"sleepMs": -1}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "input.sleepMs",
        ),
        (
            json!({"kind": "echo", "rate": "1 hour", "input": {"text": big}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "input_too_large",
            "input",
        ),
        (json!({"kind": "echo", "cron": "0 25 * * *"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule", "cron"),
        (json!({"kind": "echo", "cron": "0 0 0 9 * *"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule", "cron"),
        (
            json!({"kind": "echo", "cron": "0 9 * * *", "timezone": "Paris"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_schedule",
            "timezone",
        ),
        (json!({"kind": "echo", "rate": "30 seconds"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule", "rate"),
        (
            json!({"kind": "echo", "rate": "1 hour", "timezone": "Mars/Olympus"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_schedule",
            "timezone",
        ),
        (
            json!({"kind": "echo", "cron": format!("0 {} * * *", "1,".repeat(200))}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "cron",
        ),
        (
            json!({"kind": "echo", "rate": "1 hour", "timezone": "x".repeat(65)}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "timezone",
        ),
    ];
    for (body, status, code, field) in cases {
        let reply = create(&app, "alice", body.clone()).await;
        assert_eq!(
            (reply.status, error_code(&reply), error_field(&reply)),
            (status, code, Some(field)),
            "{body}: {}",
            reply.body
        );
    }
    assert_eq!(app.get("alice", "/schedules").await.body["schedules"], json!([]), "nothing was stored");
}

/// A retried create with the same key and body is the same schedule; another body under the key is
/// refused.
#[tokio::test]
async fn an_idempotency_key_names_one_schedule() {
    let app = spawn_app().await;
    let body = json!({"kind": "echo", "cron": "0 9 * * MON-FRI", "timezone": "America/New_York"});
    let first = app.post_keyed("/schedules", "nightly", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let retry = app.post_keyed("/schedules", "nightly", body).await;
    assert_eq!((retry.status, &retry.headers["idempotent-replayed"]), (StatusCode::CREATED, &"true".parse().unwrap()));
    assert_eq!(retry.body["scheduleId"], first.body["scheduleId"]);
    let other = app.post_keyed("/schedules", "nightly", json!({"kind": "echo", "cron": "0 10 * * MON-FRI"})).await;
    assert_eq!((other.status, error_code(&other)), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    assert_eq!(app.get("alice", "/schedules").await.body["schedules"].as_array().unwrap().len(), 1);
}
