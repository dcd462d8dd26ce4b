//! The floor `jobpipe bench` compares against: the hello world a Rust team writes with `lambda_runtime`
//! (answer every event with that event), built with the same release profile. As in the
//! `lambda_runtime` README it runs on Tokio's multi-threaded runtime; `FLOOR_RUNTIME=current_thread`
//! gives the single-threaded runtime the jobpipe functions use, so both floors can be shown.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

fn main() -> Result<(), Error> {
    let runtime = match std::env::var("FLOOR_RUNTIME").as_deref() {
        Ok("current_thread") => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    runtime.block_on(lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(event.payload)
    })))
}
