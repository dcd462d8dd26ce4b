//! Lambda entry point of the notifier.

use std::sync::Arc;

use jobpipe_core::config::{AwsClients, Config};
use jobpipe_core::connections::ConnectionStore;
use lambda_runtime::{LambdaEvent, service_fn};
use notifier::{Notifier, StreamEvent, handle};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobpipe_core::telemetry::init();
    let config = Config::from_env()?;
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let clients = AwsClients::from_sdk_config(&shared);
    let connections =
        ConnectionStore::new(clients.dynamodb, Config::require(&config.connections_table, "CONNECTIONS_TABLE")?);
    let endpoint = Config::require(&config.websocket_endpoint, "WEBSOCKET_ENDPOINT")?;
    let notifier = Arc::new(Notifier::new(&shared, connections, endpoint));
    lambda_runtime::run(service_fn(|event: LambdaEvent<StreamEvent>| handle(notifier.clone(), event))).await
}
