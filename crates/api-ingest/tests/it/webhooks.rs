//! A tenant's webhooks over the API: endpoints registered, listed and removed (each tenant sees only its
//! own), the signing secret and its rotation, and a job's callback; every bad request is refused naming
//! its field, storing nothing.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{App, Reply, error_code, error_field, spawn_app};

async fn add(app: &App, user: &str, body: Value) -> Reply {
    app.send(Method::POST, "/webhooks/endpoints", Some(user), Some(body)).await
}

async fn endpoints(app: &App, user: &str) -> Vec<Value> {
    app.get(user, "/webhooks/endpoints").await.body["endpoints"].as_array().unwrap().clone()
}

#[tokio::test]
async fn endpoints_are_validated_kept_per_tenant_and_removed() {
    let app = spawn_app().await;
    let good = json!({"url": "https://hooks.example.com/jobs", "events": ["job.failed", "job.completed", "job.failed"], "description": "ops"});
    let added = add(&app, "alice", good.clone()).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    let id = added.body["endpointId"].as_str().unwrap().to_string();
    assert!(id.starts_with("ep_"), "{id}");
    assert_eq!(added.body["events"], json!(["job.completed", "job.failed"]));
    let batches =
        add(&app, "alice", json!({"url": "https://hooks.example.com/batches", "events": ["batch.completed"]})).await;
    assert_eq!((batches.status, &batches.body["events"]), (StatusCode::CREATED, &json!(["batch.completed"])));

    for (body, status, code, field) in [
        (json!({"events": ["job.completed"]}), StatusCode::BAD_REQUEST, "invalid_request", "url"),
        (json!({"url": 5, "events": ["job.completed"]}), StatusCode::BAD_REQUEST, "invalid_request", "url"),
        (json!({"url": "https://a.example.com/", "events": []}), StatusCode::BAD_REQUEST, "invalid_request", "events"),
        (
            json!({"url": "https://a.example.com/", "events": ["job.started"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_event",
            "events",
        ),
        (
            json!({"url": "https://a.example.com/", "events": ["job.failed"], "secret": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "secret",
        ),
        (
            json!({"url": "https://a.example.com/", "events": ["job.failed"], "description": "x".repeat(201)}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "description",
        ),
        (
            json!({"url": "http://a.example.com/", "events": ["job.failed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_webhook_url",
            "url",
        ),
        (
            json!({"url": "https://192.168.0.10/", "events": ["job.failed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_webhook_url",
            "url",
        ),
        (
            json!({"url": "https://[fd00:ec2::254]/", "events": ["job.failed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_webhook_url",
            "url",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["job.failed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_webhook_url",
            "url",
        ),
    ] {
        let reply = add(&app, "alice", body.clone()).await;
        assert_eq!(
            (reply.status, error_code(&reply), error_field(&reply)),
            (status, code, Some(field)),
            "{body}: {}",
            reply.body
        );
    }
    let not_json = app
        .call(
            http::Request::post("/webhooks/endpoints")
                .header("authorization", format!("Bearer {}", jobpipe_testkit::token("alice")))
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{"))
                .unwrap(),
        )
        .await;
    assert_eq!((not_json.status, error_code(&not_json)), (StatusCode::BAD_REQUEST, "malformed_json"));
    assert_eq!(endpoints(&app, "alice").await.len(), 2, "nothing refused was stored");

    // Ten at most.
    for _ in 2..10 {
        assert_eq!(add(&app, "alice", good.clone()).await.status, StatusCode::CREATED);
    }
    let eleventh = add(&app, "alice", good.clone()).await;
    assert_eq!((eleventh.status, error_code(&eleventh)), (StatusCode::CONFLICT, "too_many_endpoints"));

    // Each tenant sees and removes only its own.
    assert!(endpoints(&app, "bob").await.is_empty());
    let path = format!("/webhooks/endpoints/{id}");
    assert_eq!(app.send(Method::DELETE, &path, Some("bob"), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.send(Method::DELETE, &path, Some("alice"), None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.send(Method::DELETE, &path, Some("alice"), None).await.status, StatusCode::NOT_FOUND);
    let bad_id = app.send(Method::DELETE, "/webhooks/endpoints/..%2Fx", Some("alice"), None).await;
    assert_eq!(bad_id.status, StatusCode::NOT_FOUND);
    assert_eq!(endpoints(&app, "alice").await.len(), 9);
}

#[tokio::test]
async fn a_tenants_secret_is_made_once_and_rotation_keeps_the_previous_one_valid() {
    let app = spawn_app().await;
    let first = app.get("alice", "/webhooks/secret").await;
    assert_eq!(first.status, StatusCode::OK);
    let secret = first.body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{secret}");
    assert_eq!(first.body.get("previousSecret"), None);
    assert_eq!(app.get("alice", "/webhooks/secret").await.body["secret"], secret.as_str(), "made once");
    assert_ne!(app.get("bob", "/webhooks/secret").await.body["secret"], secret.as_str(), "one per tenant");

    let rotated = app.send(Method::POST, "/webhooks/secret/rotate", Some("alice"), None).await;
    assert_eq!(rotated.status, StatusCode::OK);
    assert_ne!(rotated.body["secret"], secret.as_str());
    assert_eq!(rotated.body["previousSecret"], secret.as_str());
    assert!(rotated.body["previousValidUntil"].is_string(), "{}", rotated.body);
    assert_eq!(app.get("alice", "/webhooks/secret").await.body, rotated.body);
    // The secret kept valid was promised its whole overlap: no second rotation until it ends.
    let again = app.send(Method::POST, "/webhooks/secret/rotate", Some("alice"), None).await;
    assert_eq!((again.status, error_code(&again)), (StatusCode::CONFLICT, "rotation_in_progress"));
    assert_eq!(app.get("alice", "/webhooks/secret").await.body, rotated.body);
}

#[tokio::test]
async fn a_jobs_callback_is_checked_kept_and_shown() {
    let app = spawn_app().await;
    for (callback, status, field) in [
        (json!("https://a.example.com/"), StatusCode::BAD_REQUEST, "callback"),
        (json!({}), StatusCode::BAD_REQUEST, "callback.url"),
        (json!({"url": 1}), StatusCode::BAD_REQUEST, "callback.url"),
        (json!({"url": "https://a.example.com/", "secret": "s"}), StatusCode::BAD_REQUEST, "callback.secret"),
        (json!({"url": "https://10.1.2.3/hook"}), StatusCode::UNPROCESSABLE_ENTITY, "callback.url"),
        (json!({"url": "https://localhost/hook"}), StatusCode::UNPROCESSABLE_ENTITY, "callback.url"),
        (json!({"url": "https://user:pw@a.example.com/"}), StatusCode::UNPROCESSABLE_ENTITY, "callback.url"),
    ] {
        let reply = app.post_job("alice", json!({"kind": "echo", "callback": callback})).await;
        assert_eq!((reply.status, error_field(&reply)), (status, Some(field)), "{callback}: {}", reply.body);
    }
    assert_eq!(app.get("alice", "/jobs").await.body["jobs"], json!([]), "nothing refused was stored");

    let url = "https://hooks.example.com/job?x=1";
    let accepted = app.post_job("alice", json!({"kind": "echo", "callback": {"url": url}})).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    assert_eq!(accepted.body["callback"], json!({"url": url}));
    let id = accepted.body["jobId"].as_str().unwrap();
    assert_eq!(app.get("alice", &format!("/jobs/{id}")).await.body["callback"], json!({"url": url}));

    // The callback is part of what an idempotency key names.
    let body = json!({"kind": "echo", "callback": {"url": url}});
    assert_eq!(app.post_keyed("/jobs", "k1", body.clone()).await.status, StatusCode::ACCEPTED);
    assert_eq!(app.post_keyed("/jobs", "k1", body).await.status, StatusCode::ACCEPTED);
    let other =
        app.post_keyed("/jobs", "k1", json!({"kind": "echo", "callback": {"url": "https://other.example.com/"}})).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", other.body);
}
