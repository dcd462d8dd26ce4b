//! The kinds on offer, and each kind's input checked before anything is queued.

use http::{Method, StatusCode};
use jobpipe_core::controls::ControlStore;
use serde_json::json;

use crate::helpers::{error_code, error_field, spawn_app, spawn_app_with};

#[tokio::test]
async fn the_available_kinds_are_listed() {
    let app = spawn_app().await;
    assert_eq!(app.get("alice", "/kinds").await.body, json!({"kinds": ["echo", "image", "wifi-qr"], "paused": []}));
    let app = spawn_app_with(&[("ECHO_KIND_ENABLED", "false")], |_| {}).await;
    assert_eq!(app.get("alice", "/kinds").await.body, json!({"kinds": ["image", "wifi-qr"], "paused": []}));
    assert_eq!(app.send(Method::GET, "/kinds", None, None).await.status, StatusCode::UNAUTHORIZED);
}

/// An operator paused `image` (as `jobpipe kinds pause image` does): the API says so, and still accepts
/// its jobs, which wait.
#[tokio::test]
async fn paused_kinds_are_listed_and_their_jobs_still_accepted() {
    let app = spawn_app().await;
    let controls = ControlStore::new(app.stack.clients.dynamodb.clone(), &app.stack.control_table);
    controls.pause_kind("image").await.unwrap();
    controls.pause_kind("retired-kind").await.unwrap();
    let kinds = app.get("alice", "/kinds").await.body;
    assert_eq!(kinds["paused"], json!(["image"]), "only kinds on offer are shown: {kinds}");
    let accepted = app.post_job("alice", json!({"kind": "image", "input": {"prompt": "a lighthouse"}})).await;
    assert_eq!((accepted.status, accepted.body["status"].as_str()), (StatusCode::ACCEPTED, Some("queued")));
    controls.resume_kind("image").await.unwrap();
    assert_eq!(app.get("alice", "/kinds").await.body["paused"], json!([]));
}

#[tokio::test]
async fn real_kinds_validate_their_input_before_anything_is_queued() {
    let app = spawn_app().await;
    for (kind, input, field) in [
        ("image", json!({}), "input.prompt"),
        ("image", json!({"prompt": "x", "width": 1000}), "input.width"),
        ("image", json!({"prompt": "x", "width": 4096, "height": 320}), "input.height"),
        ("image", json!({"prompt": "x", "quality": "ultra"}), "input.quality"),
        ("image", json!({"prompt": "x", "steps": 30}), "input.steps"),
        ("wifi-qr", json!({"ssid": "home"}), "input.password"),
        ("wifi-qr", json!({"ssid": "home", "password": "secret123", "encryption": "WPA2"}), "input.encryption"),
    ] {
        let reply = app.post_job("alice", json!({"kind": kind, "input": input})).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{kind} {input}");
        assert_eq!((error_code(&reply), error_field(&reply)), ("invalid_input", Some(field)), "{kind} {input}");
    }
    assert_eq!(app.queued_messages().await + app.stack.queue_depth(&app.stack.image_queue_url).await, 0);
}
