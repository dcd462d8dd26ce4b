//! Lambda entry point of the queue processor.

use std::sync::Arc;

use jobpipe_core::SystemClock;
use jobpipe_core::config::{AwsClients, Config};
use lambda_runtime::{LambdaEvent, service_fn};
use queue_processor::{Processor, handle_event};
use serde_json::Value;

// One invocation at a time per execution environment, and less than one vCPU below 1,769 MB: a
// single-threaded runtime does the same work without cross-thread wake-ups (`jobpipe bench`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobpipe_core::telemetry::init();
    let config = Config::from_env()?;
    let clients = AwsClients::from_env().await;
    let processor = Arc::new(Processor::new(&config, &clients, Arc::new(SystemClock)));
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| handle_event(processor.clone(), event))).await
}
