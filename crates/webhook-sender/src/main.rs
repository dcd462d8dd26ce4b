//! Lambda entry point of the webhook sender.

use std::sync::Arc;

use jobpipe_core::config::{Config, sdk_config_from_env};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use webhook_sender::{WebhookSender, handle};

// One invocation at a time per execution environment: a single-threaded runtime (see the other functions).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobpipe_core::telemetry::init();
    let config = Config::from_env()?;
    let shared = sdk_config_from_env().await;
    let sender = Arc::new(WebhookSender::from_config(&config, &shared)?);
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| handle(sender.clone(), event))).await
}
