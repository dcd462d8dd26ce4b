//! Lambda entry point of the jobs HTTP API.

use std::sync::Arc;

use api_ingest::{Api, router};
use jobpipe_core::SystemClock;
use jobpipe_core::config::{AwsClients, Config};

// One invocation at a time per execution environment, and less than one vCPU below 1,769 MB: a
// single-threaded runtime does the same work without cross-thread wake-ups (`jobpipe bench`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    jobpipe_core::telemetry::init();
    let config = Config::from_env()?;
    let clients = AwsClients::from_env().await;
    let api = Arc::new(Api::new(&config, &clients, Arc::new(SystemClock))?);
    lambda_http::run(router(api)).await
}
