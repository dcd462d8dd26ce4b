//! Who calls: tokens verified as API Gateway's JWT authorizer verifies them, the authorizer's claims
//! behind API Gateway, and preflights, which carry no token.

use std::sync::Arc;

use api_ingest::{Api, router};
use axum::body::Body;
use http::{Method, Request, StatusCode};
use jobpipe_testkit::{TEST_AUDIENCE, claims, now_secs, token, token_with};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::{error_code, spawn_app, spawn_app_with};

#[tokio::test]
async fn requests_without_a_valid_token_get_401() {
    let app = spawn_app().await;
    let with = |changes: Value| {
        let mut claims = claims("alice");
        for (name, value) in changes.as_object().unwrap() {
            claims[name] = value.clone();
        }
        format!("Bearer {}", token_with(&claims))
    };
    // Alice's token with Mallory's name in it: the signature no longer matches.
    let valid = token("alice");
    let [header, _, signature] = <[&str; 3]>::try_from(valid.split('.').collect::<Vec<_>>()).unwrap();
    let mallory =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims("mallory").to_string());
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing bearer token"),
        (Some("Bearer".into()), "not a bearer token"),
        (Some("Bearer garbage".into()), "malformed token"),
        (Some(with(json!({"exp": now_secs() - 3600}))), "token expired"),
        (Some(with(json!({"aud": "someone-else"}))), "wrong audience"),
        (Some(with(json!({"aud": ["someone-else"], "client_id": TEST_AUDIENCE}))), "wrong audience"),
        (Some(with(json!({"iss": "https://evil.example"}))), "wrong issuer"),
        (Some(format!("Bearer {header}.{mallory}.{signature}")), "bad signature"),
    ];
    for (authorization, reason) in cases {
        for (method, path) in [(Method::GET, "/jobs"), (Method::POST, "/jobs"), (Method::GET, "/jobs/x")] {
            let mut request =
                Request::builder().method(method.clone()).uri(path).header("content-type", "application/json");
            if let Some(a) = &authorization {
                request = request.header("authorization", a);
            }
            let reply = app.call(request.body(Body::from(r#"{"kind":"echo"}"#)).unwrap()).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path} {reason}");
            assert_eq!(error_code(&reply), "unauthorized");
            let message = reply.body["error"]["message"].as_str().unwrap().to_lowercase();
            assert!(message.contains(reason), "{message:?} should say {reason:?}");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
    }
    assert_eq!(app.queued_messages().await, 0);
}

/// Verified where no authorizer runs (locally) as API Gateway's JWT authorizer verifies them deployed.
#[tokio::test]
async fn tokens_users_have_are_accepted_and_an_unreachable_issuer_is_a_503() {
    let app = spawn_app().await;
    let cognito_access_token = json!({
        "sub": "alice", "iss": jobpipe_testkit::test_issuer(), "client_id": TEST_AUDIENCE, "token_use": "access",
        "scope": "openid", "iat": now_secs(), "exp": now_secs() + 600,
    });
    let mut aud_array = claims("alice");
    aud_array["aud"] = json!(["another-api", TEST_AUDIENCE]);
    for claims in [cognito_access_token, aud_array] {
        let request = Request::get("/jobs").header("authorization", format!("Bearer {}", token_with(&claims)));
        let reply = app.call(request.body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{claims}: {}", reply.body);
    }

    // The keys cannot be fetched: the token may be fine, so the client is told to retry.
    let config = app.stack.config_with(&[("JWT_JWKS_URL", "http://127.0.0.1:9/jwks.json")]);
    let down = router(Arc::new(Api::new(&config, &app.stack.clients, Arc::new(app.clock.clone())).unwrap()));
    let request = Request::get("/jobs").header("authorization", format!("Bearer {}", token("alice")));
    let reply = down.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers()["retry-after"], "1");
}

#[tokio::test]
async fn behind_api_gateway_the_authorizer_claims_decide_who_calls() {
    let app = spawn_app_with(&[("AUTH_MODE", "apigateway")], |_| {}).await;
    let fixture = std::fs::read_to_string(format!(
        "{}/../../tests/data/example-apigw-v2-request-jwt-authorizer.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut event: Value = serde_json::from_str(&fixture).unwrap();
    event["rawPath"] = json!("/jobs");
    event["rawQueryString"] = json!("");
    event["queryStringParameters"] = json!({});
    event["requestContext"]["http"]["method"] = json!("POST");
    event["requestContext"]["http"]["path"] = json!("/jobs");
    event["headers"] = json!({"content-type": "application/json"});
    event["body"] = json!(r#"{"kind":"echo","input":{"via":"gateway"}}"#);
    event["isBase64Encoded"] = json!(false);
    event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = json!("carol");

    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let reply = app.call(request.map(|b| Body::from(b.to_vec()))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let path = format!("/jobs/{}", reply.body["jobId"].as_str().unwrap());

    // The job belongs to the authorizer's sub.
    event["requestContext"]["http"]["method"] = json!("GET");
    event["rawPath"] = json!(path);
    event["body"] = Value::Null;
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let reply = app.call(request.map(|b| Body::from(b.to_vec()))).await;
    assert_eq!((reply.status, reply.body["input"]["via"].as_str()), (StatusCode::OK, Some("gateway")));

    // In this mode a bearer token alone is not trusted: the authorizer must have run.
    let reply = app.get("carol", &path).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

/// The template's preflight route sends browsers' `OPTIONS` here without a token; a `204` lets API
/// Gateway answer with the CORS headers (it was a `405`, which fails every cross-origin call).
#[tokio::test]
async fn cors_preflights_are_answered_without_a_token() {
    let app = spawn_app().await;
    for path in ["/jobs", "/jobs/3b0c4a3e-0000-4000-8000-000000000000", "/kinds", "/anything"] {
        let request = Request::builder()
            .method(Method::OPTIONS)
            .uri(path)
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .body(Body::empty())
            .unwrap();
        let reply = app.call(request).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{path}: {:?}", reply.body);
    }
}
