//! The floor `jobpipe bench` compares against: the smallest Lambda a Rust team would write with
//! `lambda_runtime`, built with the same release profile. It answers every event with that event.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move { Ok::<Value, Error>(event.payload) })).await
}
