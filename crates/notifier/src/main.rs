//! Lambda entry point of the notifier.

use std::sync::Arc;

use jobpipe_core::config::{Config, sdk_config_from_env};
use jobpipe_core::connections::ConnectionStore;
use lambda_runtime::{LambdaEvent, service_fn};
use notifier::{Notifier, StreamEvent, handle};

// One invocation at a time per execution environment, and less than one vCPU below 1,769 MB: a
// single-threaded runtime does the same work without cross-thread wake-ups (`jobpipe bench`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobpipe_core::telemetry::init();
    let config = Config::from_env()?;
    let shared = sdk_config_from_env().await;
    // Only DynamoDB and the @connections API: no S3, SQS or Bedrock clients to build at start.
    let connections = ConnectionStore::new(
        aws_sdk_dynamodb::Client::new(&shared),
        Config::require(&config.connections_table, "CONNECTIONS_TABLE")?,
    );
    let endpoint = Config::require(&config.websocket_endpoint, "WEBSOCKET_ENDPOINT")?;
    let notifier = Arc::new(Notifier::new(&shared, connections, endpoint));
    lambda_runtime::run(service_fn(|event: LambdaEvent<StreamEvent>| handle(notifier.clone(), event))).await
}
