//! The AWS proxy in front of the local engines. Every local stack's calls go through one: it judges
//! each call by the caller's role (`FaultProxy::set_iam`, see `iam`), can make global secondary indexes
//! lag (`set_index_lag`), and injects faults: a fraction of DynamoDB, SQS and S3 calls answer throttling
//! or 5xx, either before reaching the engine (the call did not happen) or after (it happened, but the
//! caller is told it failed: the ambiguous case). The fault-injection run uses the random faults; tests
//! script one fault on one named call (`FaultProxy::script`) or watch and hold calls with a hook
//! (`FaultProxy::set_hook`). It can also measure the DynamoDB capacity each call spends
//! (`set_capacity_meter`, see `capacity`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::aws::Endpoints;
use crate::capacity::CapacityMeter;
use crate::iam::{self, Iam, Verdict};
use crate::index_lag::IndexLag;

#[derive(Debug, Default)]
pub struct FaultCounts {
    pub before: AtomicU64,
    pub after: AtomicU64,
    pub send_message: AtomicU64,
    pub forwarded: AtomicU64,
}

/// One fault on purpose: the next `times` calls whose description contains `target` and whose body
/// contains `body_contains` fail, `after_effect` or before. A call's description is its `X-Amz-Target`
/// (`DynamoDB_20120810.UpdateItem`) for JSON-protocol services, `METHOD /path` otherwise (S3:
/// `GET /bucket/key`).
#[derive(Debug, Clone)]
pub struct ScriptedFault {
    pub target: String,
    pub body_contains: String,
    pub after_effect: bool,
    pub times: u32,
}

impl ScriptedFault {
    /// The call takes effect upstream, and its caller is told it failed (a lost response).
    pub fn lost_response(target: &str, body_contains: &str) -> ScriptedFault {
        ScriptedFault { target: target.into(), body_contains: body_contains.into(), after_effect: true, times: 1 }
    }
}

/// What a hook decides about a call it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookVerdict {
    Forward,
    /// Answer `{}` without forwarding: the call seems to succeed but never happened.
    Swallow,
}

/// Sees each call (its description, as `ScriptedFault` matches it, and its JSON body, `Null` for other
/// protocols) before anything else happens to it, and may hold it as long as it likes.
pub type CallHook =
    Arc<dyn Fn(String, serde_json::Value) -> Pin<Box<dyn Future<Output = HookVerdict> + Send>> + Send + Sync>;

pub struct FaultProxy {
    /// Where calls go on: DynamoDB and its streams to `dynamodb`, the rest to `aws`.
    upstream: Endpoints,
    scripted: Mutex<Vec<ScriptedFault>>,
    hook: Mutex<Option<CallHook>>,
    index_lag: Mutex<Option<Arc<IndexLag>>>,
    iam: Mutex<Option<Arc<Iam>>>,
    capacity: Mutex<Option<Arc<CapacityMeter>>>,
    client: reqwest::Client,
    /// Fraction of calls that fail (half before, half after reaching the upstream).
    pub rate: f64,
    /// Fraction of SQS SendMessage calls that fail before reaching the upstream.
    pub send_message_rate: f64,
    pub enabled: AtomicBool,
    pub counts: FaultCounts,
}

impl FaultProxy {
    pub fn new(upstream: &Endpoints, rate: f64, send_message_rate: f64) -> Arc<FaultProxy> {
        let trimmed = |url: &str| url.trim_end_matches('/').to_string();
        Arc::new(FaultProxy {
            upstream: Endpoints { aws: trimmed(&upstream.aws), dynamodb: trimmed(&upstream.dynamodb) },
            scripted: Mutex::new(Vec::new()),
            hook: Mutex::new(None),
            index_lag: Mutex::new(None),
            iam: Mutex::new(None),
            capacity: Mutex::new(None),
            client: reqwest::Client::new(),
            rate,
            send_message_rate,
            enabled: AtomicBool::new(false),
            counts: FaultCounts::default(),
        })
    }

    /// Measures the DynamoDB capacity every call spends from now on (`capacity`), or stops (`None`).
    pub fn set_capacity_meter(&self, meter: Option<Arc<CapacityMeter>>) {
        *self.capacity.lock().expect("not poisoned") = meter;
    }

    /// Adds a fault for the next matching calls, whether or not random faults are `enabled`.
    pub fn script(&self, fault: ScriptedFault) {
        self.scripted.lock().expect("not poisoned").push(fault);
    }

    /// Shows every later call to `hook` first.
    pub fn set_hook(&self, hook: CallHook) {
        *self.hook.lock().expect("not poisoned") = Some(hook);
    }

    /// Makes every global secondary index read through the proxy lag `lag` behind the writes (see
    /// `index_lag`). Only tables created through the proxy afterwards are known to it.
    pub fn set_index_lag(&self, lag: std::time::Duration) {
        *self.index_lag.lock().expect("not poisoned") = Some(Arc::new(IndexLag::new(lag)));
    }

    /// Judges every later call by the caller's role: what the role does not allow is refused as AWS
    /// refuses it, before anything else happens to the call.
    pub fn set_iam(&self, iam: Arc<Iam>) {
        *self.iam.lock().expect("not poisoned") = Some(iam);
    }

    /// How many scripted faults have not happened yet.
    pub fn scripted_pending(&self) -> u32 {
        self.scripted.lock().expect("not poisoned").iter().map(|f| f.times).sum()
    }

    /// Takes one scripted fault for this call, if one matches: `Some(after_effect)`.
    fn scripted_for(&self, call: &str, body: &[u8]) -> Option<bool> {
        let mut scripted = self.scripted.lock().expect("not poisoned");
        let fault = scripted.iter_mut().find(|f| {
            f.times > 0
                && call.contains(f.target.as_str())
                && String::from_utf8_lossy(body).contains(f.body_contains.as_str())
        })?;
        fault.times -= 1;
        Some(fault.after_effect)
    }

    /// Serves the proxy on a free port; returns its URL.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = Router::new().fallback(forward).with_state(self.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((url, task))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Service {
    DynamoDb,
    Sqs,
    S3,
}

fn injected(service: Service) -> Response {
    let (status, content_type, body) = match service {
        Service::DynamoDb => (
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.0",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"injected fault"}"#,
        ),
        Service::Sqs => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.0",
            r#"{"__type":"InternalError","message":"injected fault"}"#,
        ),
        Service::S3 => (
            StatusCode::SERVICE_UNAVAILABLE,
            "application/xml",
            "<Error><Code>SlowDown</Code><Message>injected fault</Message></Error>",
        ),
    };
    let mut response = (status, body).into_response();
    response.headers_mut().insert("content-type", HeaderValue::from_static(content_type));
    response
}

/// AWS's answer to a call IAM refused, in the service's own protocol.
fn refused(service: Service, verdict: &Verdict) -> Response {
    let (status, code, message) = match verdict {
        Verdict::Denied { message, .. } => (
            StatusCode::FORBIDDEN,
            match service {
                Service::DynamoDb => "AccessDeniedException",
                Service::Sqs | Service::S3 => "AccessDenied",
            },
            message.clone(),
        ),
        Verdict::UnknownKey => (
            StatusCode::FORBIDDEN,
            match service {
                Service::DynamoDb => "UnrecognizedClientException",
                Service::Sqs => "InvalidClientTokenId",
                Service::S3 => "InvalidAccessKeyId",
            },
            "The security token included in the request is invalid.".to_string(),
        ),
        Verdict::Allowed => unreachable!("only refusals are answered here"),
    };
    let mut response = match service {
        // DynamoDB answers 400 with the error type in the body.
        Service::DynamoDb => (
            StatusCode::BAD_REQUEST,
            [(axum::http::header::CONTENT_TYPE, "application/x-amz-json-1.0")],
            serde_json::json!({"__type": format!("com.amazon.coral.service#{code}"), "Message": message}).to_string(),
        )
            .into_response(),
        Service::Sqs => {
            let mut response = (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/x-amz-json-1.0")],
                serde_json::json!({"__type": format!("com.amazonaws.sqs#{code}"), "message": message}).to_string(),
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("{code};Sender")) {
                response.headers_mut().insert("x-amzn-query-error", value);
            }
            response
        }
        Service::S3 => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/xml")],
            format!("<Error><Code>{code}</Code><Message>{}</Message></Error>", xml_escape(&message)),
        )
            .into_response(),
    };
    // The SDKs read the error code from this header before the body's.
    if let Ok(value) = HeaderValue::from_str(code) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// What the call asks IAM for, and with which key.
fn requested(service: Service, target: &str, parts: &http::request::Parts, body: &[u8]) -> Vec<(String, String)> {
    match service {
        Service::DynamoDb => iam::dynamodb_requests(target, &serde_json::from_slice(body).unwrap_or_default()),
        Service::Sqs => iam::sqs_requests(target, &serde_json::from_slice(body).unwrap_or_default()),
        Service::S3 => iam::s3_requests(&parts.method, parts.uri.path(), parts.uri.query()),
    }
}

async fn forward(State(proxy): State<Arc<FaultProxy>>, request: Request) -> Response {
    let target = request.headers().get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let service = if target.starts_with("DynamoDB") {
        Service::DynamoDb
    } else if target.starts_with("AmazonSQS") {
        Service::Sqs
    } else {
        Service::S3
    };
    let (parts, body) = request.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let call = if target.is_empty() { format!("{} {}", parts.method, parts.uri.path()) } else { target.clone() };
    let iam = proxy.iam.lock().expect("not poisoned").clone();
    let caller = iam::caller_key(parts.headers.get("authorization").and_then(|v| v.to_str().ok()), parts.uri.query());
    let requested = if iam.is_some() { requested(service, &target, &parts, &body) } else { vec![] };
    if let Some(iam) = &iam {
        let verdict = iam.judge(caller.as_deref(), &requested);
        if verdict != Verdict::Allowed {
            return refused(service, &verdict);
        }
    }
    let hook = proxy.hook.lock().expect("not poisoned").clone();
    if let Some(hook) = hook
        && hook(call.clone(), serde_json::from_slice(&body).unwrap_or_default()).await == HookVerdict::Swallow
    {
        return ([(axum::http::header::CONTENT_TYPE, "application/x-amz-json-1.0")], "{}").into_response();
    }
    let index_lag = proxy.index_lag.lock().expect("not poisoned").clone().filter(|_| service == Service::DynamoDb);
    let json_call: serde_json::Value =
        if index_lag.is_some() { serde_json::from_slice(&body).unwrap_or_default() } else { serde_json::Value::Null };
    if let Some(index_lag) = &index_lag {
        index_lag.observe(&target, &json_call);
    }
    let scripted = proxy.scripted_for(&call, &body);
    let enabled = proxy.enabled.load(Ordering::SeqCst);
    // Long polls are left alone: failing them only slows the run without testing anything.
    let long_poll = target.ends_with("ReceiveMessage");
    if enabled && target == "AmazonSQS.SendMessage" && rand_below(proxy.send_message_rate) {
        proxy.counts.send_message.fetch_add(1, Ordering::SeqCst);
        return injected(service);
    }
    let roll = scripted.is_some() || (enabled && !long_poll && rand_below(proxy.rate));
    let fail_before = match scripted {
        Some(after_effect) => !after_effect,
        None => roll && rand_below(0.5),
    };
    if fail_before {
        proxy.counts.before.fetch_add(1, Ordering::SeqCst);
        return injected(service);
    }

    let upstream = match service {
        Service::DynamoDb => &proxy.upstream.dynamodb,
        Service::Sqs | Service::S3 => &proxy.upstream.aws,
    };
    let url = format!("{upstream}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let meter = proxy.capacity.lock().expect("not poisoned").clone().filter(|_| service == Service::DynamoDb);
    let body = match meter.as_ref().and_then(|_| CapacityMeter::ask_for_capacity(&target, &body)) {
        Some(asked) => Bytes::from(asked),
        None => body,
    };
    let mut upstream = proxy.client.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    proxy.counts.forwarded.fetch_add(1, Ordering::SeqCst);
    if roll {
        // The call took effect upstream, but the caller hears it failed.
        proxy.counts.after.fetch_add(1, Ordering::SeqCst);
        return injected(service);
    }
    let status = answer.status();
    // S3 answers a missing key with 403, not 404, to a caller that may not list the bucket.
    if let (Some(iam), Some((action, object))) = (&iam, requested.first())
        && service == Service::S3
        && status == StatusCode::NOT_FOUND
        && action == "s3:GetObject"
    {
        let list = [("s3:ListBucket".to_string(), iam::bucket_of(object).to_string())];
        if let verdict @ Verdict::Denied { .. } = iam.judge(caller.as_deref(), &list) {
            return refused(service, &verdict);
        }
    }
    let headers = answer.headers().clone();
    let mut bytes = answer.bytes().await.unwrap_or_default();
    if let Some(meter) = &meter
        && status.is_success()
    {
        meter.record(caller.as_deref().unwrap_or("unsigned"), &target, &bytes);
    }
    // An index read answers only what the (emulated) index has caught up with; the body changed, so its
    // checksum header goes.
    let mut rewritten = false;
    if let Some(index_lag) = &index_lag
        && status.is_success()
        && let Some(filtered) = index_lag.filter(&target, &json_call, &bytes)
    {
        bytes = Bytes::from(filtered);
        rewritten = true;
    }
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in &headers {
        let hop_by_hop = name == "connection" || name == "transfer-encoding" || name == "content-length";
        let checksum = rewritten && name == "x-amz-crc32";
        if !hop_by_hop
            && !checksum
            && let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.as_ref()), HeaderValue::from_bytes(value.as_bytes()))
        {
            response = response.header(name, value);
        }
    }
    response.body(Body::from(bytes)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

fn rand_below(rate: f64) -> bool {
    rate > 0.0 && rand::random_bool(rate.min(1.0))
}
