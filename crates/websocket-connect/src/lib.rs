//! The WebSocket API's routes. `$connect` authenticates the `token` query parameter (browsers cannot set
//! headers on a WebSocket) and may subscribe at once (`?jobId=` or `?batchId=`); `$default` takes
//! `{"action":"subscribe"|"unsubscribe","jobId":"..."}` (or `"batchId"`: a batch's progress);
//! `$disconnect` forgets the connection. Only a job's (or batch's) owner may subscribe to it; anyone
//! else is told it does not exist.

use std::sync::Arc;

use aws_lambda_events::encodings::Body;
use aws_lambda_events::event::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use jobpipe_core::AwsError;
use jobpipe_core::auth::Authenticator;
use jobpipe_core::clock::Clock;
use jobpipe_core::config::{AwsClients, Config, ConfigError};
use jobpipe_core::connections::{ConnectionStore, Subject};
use jobpipe_core::job::JobId;
use jobpipe_core::store::{BatchProgress, JobStore};
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};
use tracing::Instrument;

#[derive(Debug)]
pub struct Sockets {
    pub connections: ConnectionStore,
    pub jobs: JobStore,
    pub auth: Authenticator,
    pub clock: Arc<dyn Clock>,
}

/// A route's answer: for `$connect` the status decides whether the connection is accepted; for
/// `$default` the body is sent back to the client (the route has a route response).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }

    fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
        Reply { status, body: json!({"type": "error", "error": {"code": code, "message": message.into()}}) }
    }

    fn into_response(self) -> ApiGatewayProxyResponse {
        let mut response = ApiGatewayProxyResponse::default();
        response.status_code = self.status as i64;
        response.body = Some(Body::Text(self.body.to_string()));
        response
    }
}

/// The Lambda handler for all three routes.
pub async fn handle(
    sockets: Arc<Sockets>,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
    let request = event.payload;
    let route = request.request_context.route_key.clone().unwrap_or_default();
    let Some(connection_id) = request.request_context.connection_id.clone() else {
        return Ok(Reply::error(400, "bad_request", "event has no connectionId").into_response());
    };
    let span = tracing::info_span!("websocket", %route, %connection_id);
    let query = |name: &str| request.query_string_parameters.first(name).map(String::from);
    let token = query("token");
    let target = match (query("jobId"), query("batchId")) {
        (Some(job_id), _) => Some(Target::Job(job_id)),
        (None, Some(batch_id)) => Some(Target::Batch(batch_id)),
        (None, None) => None,
    };
    let reply = async {
        match route.as_str() {
            "$connect" => sockets.connect(&connection_id, token.as_deref(), target.as_ref()).await,
            "$disconnect" => sockets.disconnect(&connection_id).await,
            _ => sockets.message(&connection_id, request.body.as_deref().unwrap_or_default()).await,
        }
    }
    .instrument(span.clone())
    .await;
    let _entered = span.enter();
    let reply = reply.unwrap_or_else(|error| {
        tracing::error!(%error, "websocket route failed");
        if error.is_retryable() {
            Reply::error(503, "service_unavailable", "a backing service is busy; try again")
        } else {
            Reply::error(500, "internal_error", "the request failed on our side")
        }
    });
    tracing::info!(status = reply.status, "websocket route handled");
    Ok(reply.into_response())
}

/// A message a client sends on `$default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Subscribe(Target),
    Unsubscribe(Target),
}

/// What a frame names, by the id as sent: checked later, where a malformed id answers exactly like a
/// missing job or batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Job(String),
    Batch(String),
}

/// Reads a client frame. Anything else is a `400` reply naming the problem, in the error shape every
/// reply uses.
pub fn parse_frame(body: &str) -> Result<Frame, Reply> {
    let Ok(frame) = serde_json::from_str::<Value>(body) else {
        return Err(Reply::error(
            400,
            "malformed_json",
            "send a JSON object such as {\"action\":\"subscribe\",\"jobId\":\"...\"}",
        ));
    };
    let action = frame.get("action").and_then(Value::as_str);
    // Each of the two names, when given, must be a string; exactly one is.
    let id = |name: &str| match frame.get(name) {
        None => Ok(None),
        Some(Value::String(id)) => Ok(Some(id.clone())),
        Some(_) => Err(()),
    };
    let target = match (id("jobId"), id("batchId")) {
        (Ok(Some(job_id)), Ok(None)) => Some(Target::Job(job_id)),
        (Ok(None), Ok(Some(batch_id))) => Some(Target::Batch(batch_id)),
        _ => None,
    };
    let (Some(action), Some(target)) = (action, target) else {
        return Err(Reply::error(
            400,
            "invalid_request",
            "a message needs action and either jobId or batchId, all strings",
        ));
    };
    match action {
        "subscribe" => Ok(Frame::Subscribe(target)),
        "unsubscribe" => Ok(Frame::Unsubscribe(target)),
        other => {
            Err(Reply::error(400, "unknown_action", format!("unknown action {other:?}; use subscribe or unsubscribe")))
        }
    }
}

impl Sockets {
    pub fn new(config: &Config, clients: &AwsClients, clock: Arc<dyn Clock>) -> Result<Sockets, ConfigError> {
        Ok(Sockets {
            connections: ConnectionStore::new(
                clients.dynamodb.clone(),
                Config::require(&config.connections_table, "CONNECTIONS_TABLE")?,
            ),
            jobs: JobStore::new(clients.dynamodb.clone(), &config.jobs_table, config.job_retention.as_secs() as i64),
            auth: config.authenticator()?,
            clock,
        })
    }

    pub async fn connect(
        &self,
        connection_id: &str,
        token: Option<&str>,
        target: Option<&Target>,
    ) -> Result<Reply, AwsError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(Reply::error(401, "unauthorized", "missing token query parameter"));
        };
        let caller = match self.auth.authenticate_token(token).await {
            Ok(caller) => caller,
            // The issuer's keys could not be fetched: the token may be fine, and retrying may help.
            Err(reason) if reason.is_retryable() => {
                tracing::warn!(%reason, "websocket connection refused for now");
                return Ok(Reply::error(503, "service_unavailable", reason.to_string()));
            }
            Err(reason) => {
                tracing::info!(%reason, "websocket connection refused");
                return Ok(Reply::error(401, "unauthorized", reason.to_string()));
            }
        };
        self.connections.connect(connection_id, &caller.sub, self.clock.now_ms()).await?;
        match target {
            None => Ok(Reply::ok(json!({"type": "connected"}))),
            Some(target) => {
                let reply = self.subscribe(connection_id, &caller.sub, target).await?;
                if reply.status != 200 {
                    // Refuse the connection rather than accept one that silently follows nothing.
                    self.connections.disconnect(connection_id).await?;
                }
                Ok(reply)
            }
        }
    }

    pub async fn disconnect(&self, connection_id: &str) -> Result<Reply, AwsError> {
        self.connections.disconnect(connection_id).await?;
        Ok(Reply::ok(json!({"type": "disconnected"})))
    }

    pub async fn message(&self, connection_id: &str, body: &str) -> Result<Reply, AwsError> {
        let frame = match parse_frame(body) {
            Ok(frame) => frame,
            Err(reply) => return Ok(reply),
        };
        let Some(owner) = self.connections.owner_of(connection_id).await? else {
            return Ok(Reply::error(401, "unauthorized", "this connection is not registered; reconnect"));
        };
        match frame {
            Frame::Subscribe(target) => self.subscribe(connection_id, &owner, &target).await,
            Frame::Unsubscribe(target) => {
                let Some(subject) = subject_of(&target) else { return Ok(not_found(&target)) };
                self.connections.unsubscribe(connection_id, subject).await?;
                Ok(Reply::ok(match target {
                    Target::Job(job_id) => json!({"type": "unsubscribed", "jobId": job_id}),
                    Target::Batch(batch_id) => json!({"type": "unsubscribed", "batchId": batch_id}),
                }))
            }
        }
    }

    /// Subscribes and answers with the job's (or batch's) current state, read after the subscription is
    /// written: a change made before that read is in the answer, and the notifier pushes any change made
    /// after it (it finds the subscription). Ownership is checked first, so a subscription to another
    /// tenant's job or batch is never written and never receives a push.
    async fn subscribe(&self, connection_id: &str, owner: &str, target: &Target) -> Result<Reply, AwsError> {
        let Some(subject) = subject_of(target) else { return Ok(not_found(target)) };
        if !self.owns(owner, &subject).await? {
            return Ok(not_found(target));
        }
        self.connections.subscribe(connection_id, owner, subject.clone(), self.clock.now_ms()).await?;
        let state = match &subject {
            Subject::Job(job_id) => self
                .jobs
                .get(job_id)
                .await?
                .map(|job| json!({"type": "subscribed", "jobId": job_id, "job": job.status_message()})),
            Subject::Batch(batch_id) => self
                .batch_state(batch_id)
                .await?
                .map(|progress| json!({"type": "subscribed", "batchId": batch_id, "batch": progress.message()})),
        };
        match state {
            Some(state) => Ok(Reply::ok(state)),
            None => {
                // Expired (TTL) between the two reads: nothing will change any more.
                self.connections.unsubscribe(connection_id, subject).await?;
                Ok(not_found(target))
            }
        }
    }

    /// Whether `owner` owns the job, or the batch (whose jobs are its own: the first one tells, or once it
    /// is gone, the batch's progress).
    async fn owns(&self, owner: &str, subject: &Subject) -> Result<bool, AwsError> {
        Ok(match subject {
            Subject::Job(job_id) => self.jobs.get(job_id).await?.is_some_and(|job| job.owner == owner),
            Subject::Batch(batch_id) => match self.jobs.get(&JobId::in_batch(batch_id, 0)).await? {
                Some(first) => first.owner == owner && first.batch.is_some_and(|b| &b.batch_id == batch_id),
                // Its first job ended and expired while later ones wait: the batch's progress (kept until
                // the batch completes) names its tenant.
                None => self.jobs.batch_progress(batch_id).await?.is_some_and(|progress| progress.tenant == owner),
            },
        })
    }

    /// A batch's progress as recorded, or none ended yet while its jobs exist.
    async fn batch_state(&self, batch_id: &JobId) -> Result<Option<BatchProgress>, AwsError> {
        if let Some(progress) = self.jobs.batch_progress(batch_id).await? {
            return Ok(Some(progress));
        }
        let first = self.jobs.get(&JobId::in_batch(batch_id, 0)).await?;
        Ok(first.and_then(|job| Some(BatchProgress::none_ended(batch_id, &job.owner, job.batch?.size))))
    }
}

fn subject_of(target: &Target) -> Option<Subject> {
    match target {
        Target::Job(job_id) => JobId::parse(job_id).map(Subject::Job),
        Target::Batch(batch_id) => JobId::parse(batch_id).map(Subject::Batch),
    }
}

fn not_found(target: &Target) -> Reply {
    match target {
        Target::Job(_) => Reply::error(404, "not_found", "no such job"),
        Target::Batch(_) => Reply::error(404, "not_found", "no such batch"),
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn assert_error_reply(reply: &Reply) -> Result<(), TestCaseError> {
        prop_assert_eq!(reply.status, 400);
        prop_assert_eq!(&reply.body["type"], "error");
        let code = reply.body["error"]["code"].as_str().unwrap_or_default();
        prop_assert!(["malformed_json", "invalid_request", "unknown_action"].contains(&code), "{}", code);
        prop_assert!(reply.body["error"]["message"].is_string());
        Ok(())
    }

    /// The frame names what the JSON named: exactly one of `jobId` and `batchId`.
    fn assert_names(value: &Value, target: Target) -> Result<(), TestCaseError> {
        match target {
            Target::Job(job_id) => {
                prop_assert_eq!(&value["jobId"], &Value::String(job_id));
                prop_assert!(value.get("batchId").is_none());
            }
            Target::Batch(batch_id) => {
                prop_assert_eq!(&value["batchId"], &Value::String(batch_id));
                prop_assert!(value.get("jobId").is_none());
            }
        }
        Ok(())
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
            prop_oneof![Just("subscribe"), Just("unsubscribe"), Just("SUBSCRIBE")].prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("action".to_string()),
                        Just("jobId".to_string()),
                        Just("batchId".to_string()),
                        ".{0,6}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any text frame is a subscribe/unsubscribe or a 400 in the reply shape: never a panic.
        #[test]
        fn any_text_is_a_frame_or_a_400(body in any::<String>()) {
            if let Err(reply) = parse_frame(&body) {
                assert_error_reply(&reply)?;
            }
        }

        #[test]
        fn any_json_is_a_frame_or_names_the_problem(value in json_value()) {
            match parse_frame(&value.to_string()) {
                Ok(Frame::Subscribe(target)) => {
                    prop_assert_eq!(&value["action"], "subscribe");
                    assert_names(&value, target)?;
                }
                Ok(Frame::Unsubscribe(target)) => {
                    prop_assert_eq!(&value["action"], "unsubscribe");
                    assert_names(&value, target)?;
                }
                Err(reply) => assert_error_reply(&reply)?,
            }
        }
    }
}
