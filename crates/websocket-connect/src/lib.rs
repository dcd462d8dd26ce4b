//! The WebSocket API's routes. `$connect` authenticates the `token` query parameter (browsers cannot set
//! headers on a WebSocket) and may subscribe at once (`?jobId=`); `$default` takes
//! `{"action":"subscribe"|"unsubscribe","jobId":"..."}`; `$disconnect` forgets the connection.
//! Only a job's owner may subscribe to it; anyone else is told it does not exist.

use std::sync::Arc;

use aws_lambda_events::encodings::Body;
use aws_lambda_events::event::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use jobpipe_core::StoreError;
use jobpipe_core::auth::Authenticator;
use jobpipe_core::clock::Clock;
use jobpipe_core::connections::ConnectionStore;
use jobpipe_core::job::JobId;
use jobpipe_core::store::JobStore;
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
    let (token, job_id) = (query("token"), query("jobId"));
    let reply = async {
        match route.as_str() {
            "$connect" => sockets.connect(&connection_id, token.as_deref(), job_id.as_deref()).await,
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

impl Sockets {
    pub async fn connect(
        &self,
        connection_id: &str,
        token: Option<&str>,
        job_id: Option<&str>,
    ) -> Result<Reply, StoreError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(Reply::error(401, "unauthorized", "missing token query parameter"));
        };
        let caller = match self.auth.authenticate_token(token) {
            Ok(caller) => caller,
            Err(reason) => {
                tracing::info!(%reason, "websocket connection refused");
                return Ok(Reply::error(401, "unauthorized", reason.to_string()));
            }
        };
        self.connections.connect(connection_id, &caller.sub, self.clock.now_ms()).await?;
        match job_id {
            None => Ok(Reply::ok(json!({"type": "connected"}))),
            Some(job_id) => {
                let reply = self.subscribe(connection_id, &caller.sub, job_id).await?;
                if reply.status != 200 {
                    // Refuse the connection rather than accept one that silently follows nothing.
                    self.connections.disconnect(connection_id).await?;
                }
                Ok(reply)
            }
        }
    }

    pub async fn disconnect(&self, connection_id: &str) -> Result<Reply, StoreError> {
        self.connections.disconnect(connection_id).await?;
        Ok(Reply::ok(json!({"type": "disconnected"})))
    }

    pub async fn message(&self, connection_id: &str, body: &str) -> Result<Reply, StoreError> {
        let Ok(frame) = serde_json::from_str::<Value>(body) else {
            return Ok(Reply::error(
                400,
                "malformed_json",
                "send a JSON object such as {\"action\":\"subscribe\",\"jobId\":\"...\"}",
            ));
        };
        let action = frame.get("action").and_then(Value::as_str);
        let job_id = frame.get("jobId").and_then(Value::as_str);
        let (Some(action), Some(job_id)) = (action, job_id) else {
            return Ok(Reply::error(400, "invalid_request", "a message needs action and jobId"));
        };
        let Some(owner) = self.connections.owner_of(connection_id).await? else {
            return Ok(Reply::error(401, "unauthorized", "this connection is not registered; reconnect"));
        };
        match action {
            "subscribe" => self.subscribe(connection_id, &owner, job_id).await,
            "unsubscribe" => {
                let Some(job_id) = JobId::parse(job_id) else {
                    return Ok(Reply::error(404, "not_found", "no such job"));
                };
                self.connections.unsubscribe(connection_id, &job_id).await?;
                Ok(Reply::ok(json!({"type": "unsubscribed", "jobId": job_id})))
            }
            other => Ok(Reply::error(
                400,
                "unknown_action",
                format!("unknown action {other:?}; use subscribe or unsubscribe"),
            )),
        }
    }

    /// Subscribes and answers with the job's current state, so a client never misses a change that
    /// happened before it subscribed.
    async fn subscribe(&self, connection_id: &str, owner: &str, job_id: &str) -> Result<Reply, StoreError> {
        let not_found = || Reply::error(404, "not_found", "no such job");
        let Some(job_id) = JobId::parse(job_id) else { return Ok(not_found()) };
        let Some(job) = self.jobs.get(&job_id).await?.filter(|job| job.owner == owner) else {
            return Ok(not_found());
        };
        self.connections.subscribe(connection_id, owner, &job_id, self.clock.now_ms()).await?;
        Ok(Reply::ok(json!({"type": "subscribed", "jobId": job_id, "job": job.status_message()})))
    }
}
