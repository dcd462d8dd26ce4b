//! Lambda entry point of the WebSocket routes.

use std::sync::Arc;

use aws_lambda_events::event::apigw::ApiGatewayWebsocketProxyRequest;
use jobpipe_core::SystemClock;
use jobpipe_core::config::{AwsClients, Config};
use lambda_runtime::{LambdaEvent, service_fn};
use websocket_connect::{Sockets, handle};

// One invocation at a time per execution environment, and less than one vCPU below 1,769 MB: a
// single-threaded runtime does the same work without cross-thread wake-ups (`jobpipe bench`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobpipe_core::telemetry::init();
    let config = Config::from_env()?;
    let clients = AwsClients::from_env().await;
    let sockets = Arc::new(Sockets::new(&config, &clients, Arc::new(SystemClock))?);
    lambda_runtime::run(service_fn(|event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
        handle(sockets.clone(), event)
    }))
    .await
}
