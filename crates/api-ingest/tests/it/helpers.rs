//! The app under test: the API over a fresh stack in moto with the queue processor over the same
//! resources, and what a client sees of each answer.

use std::sync::Arc;

use api_ingest::{Api, router};
use aws_lambda_events::event::sqs::SqsEvent;
use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use jobpipe_core::clock::ManualClock;
use jobpipe_testkit::{BedrockServer, TestStack, through_fault_proxy, token};
use queue_processor::{Processor, handle_sqs};
use serde_json::Value;
use tower::ServiceExt;

pub struct App {
    _bedrock: BedrockServer,
    pub stack: TestStack,
    pub clock: ManualClock,
    pub router: Router,
    pub processor: Arc<Processor>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

pub async fn spawn_app() -> App {
    spawn_app_with(&[], |_| {}).await
}

pub async fn spawn_app_with(overrides: &[(&str, &str)], customize: impl FnOnce(&mut Api)) -> App {
    let bedrock = BedrockServer::start().await;
    let stack = TestStack::new().await.with_bedrock_endpoint(&bedrock.url);
    let clock = ManualClock::starting_now();
    let config = stack.config_with(overrides);
    let mut api = Api::new(&config, &stack.clients, Arc::new(clock.clone())).unwrap();
    customize(&mut api);
    let processor = Arc::new(Processor::new(&config, &stack.clients, Arc::new(clock.clone())));
    App { router: router(Arc::new(api)), _bedrock: bedrock, stack, clock, processor }
}

impl App {
    /// Another instance of the API over the same resources (another Lambda execution environment).
    pub fn router_with(&self, customize: impl FnOnce(&mut Api)) -> Router {
        let mut api = Api::new(&self.stack.config(), &self.stack.clients, Arc::new(self.clock.clone())).unwrap();
        customize(&mut api);
        router(Arc::new(api))
    }

    pub async fn call(&self, request: Request<Body>) -> Reply {
        call(&self.router, request).await
    }

    pub async fn send(&self, method: Method, path: &str, user: Option<&str>, body: Option<Value>) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(user) = user {
            request = request.header("authorization", format!("Bearer {}", token(user)));
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.call(request.body(body).unwrap()).await
    }

    /// A POST as alice with an `Idempotency-Key`.
    pub async fn post_keyed(&self, path: &str, key: &str, body: Value) -> Reply {
        let request = Request::post(path)
            .header("authorization", format!("Bearer {}", token("alice")))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap();
        self.call(request).await
    }

    pub async fn post_job(&self, user: &str, body: Value) -> Reply {
        self.send(Method::POST, "/jobs", Some(user), Some(body)).await
    }

    pub async fn get(&self, user: &str, path: &str) -> Reply {
        self.send(Method::GET, path, Some(user), None).await
    }

    /// Runs the queue processor over whatever is queued, as the event source mapping would.
    pub async fn process_queue(&self) {
        self.process(&self.stack.queue_url, &self.stack.queue_arn).await
    }

    pub async fn process(&self, queue_url: &str, queue_arn: &str) {
        for _ in 0..10 {
            let records = jobpipe_testkit::receive_batch(&self.stack.clients.sqs, queue_url, queue_arn, 10).await;
            if records.is_empty() {
                return;
            }
            let mut event = SqsEvent::default();
            event.records = records.clone();
            let response = handle_sqs(self.processor.clone(), event, None).await.unwrap();
            self.stack.settle_on(queue_url, &records, &response).await;
        }
    }

    pub async fn queued_messages(&self) -> u64 {
        self.stack.queue_depth(&self.stack.queue_url).await
    }
}

/// One request to `router`, its answer read whole.
pub async fn call(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body =
        if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("every reply is JSON") };
    Reply { status, headers, body }
}

pub fn error_code(reply: &Reply) -> &str {
    reply.body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error reply: {}", reply.body))
}

pub fn error_field(reply: &Reply) -> Option<&str> {
    reply.body["error"]["field"].as_str()
}

/// The API over the same resources, reaching moto through a fault proxy, and the proxy.
pub async fn through_proxy(app: &App) -> (Router, std::sync::Arc<jobpipe_testkit::FaultProxy>) {
    let (proxy, clients) = through_fault_proxy().await;
    let api = Api::new(&app.stack.config(), &clients, Arc::new(app.clock.clone())).unwrap();
    (router(Arc::new(api)), proxy)
}
