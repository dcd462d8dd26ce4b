//! The local stack end to end, driven as a client would: the HTTP and WebSocket APIs, `@connections`,
//! the web UI in a browser, generated clients, the functions' logs and metrics, and every real binary
//! under the local Runtime API and `cargo lambda watch`. Helpers are `jobpipe_testkit::local_stack`'s.

use std::path::PathBuf;

mod clients;
mod engines;
mod http_api;
mod iam;
mod live_status;
mod observability;
mod runtime;
mod web_ui;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}
