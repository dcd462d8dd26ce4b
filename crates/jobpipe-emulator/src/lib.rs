//! The local stack: AWS as `template.yaml` declares it, emulated on one machine without Docker.
//!
//! Where each AWS behaviour lives (ARCHITECTURE.md has the whole table):
//! - `template`: reads the template (functions, event sources, routes, CORS) and resolves intrinsics.
//! - `aws`: the local engines (DynamoDB Local and moto), the SDK configuration for them, and `resources` created from the
//!   template in them.
//! - `runtime`: the Lambda Runtime API and execution environments (timeouts, crashes, restarts).
//! - `sources`: event source mappings (SQS, DynamoDB streams, schedules).
//! - `gateway`: API Gateway (HTTP API, WebSocket API, `@connections`), with the dev helpers and the UI.
//! - `bedrock`: a Bedrock runtime stand-in; `faults`: an AWS proxy that injects faults, and through
//!   `index_lag` makes global secondary indexes eventually consistent.
//! - `iam`: each function's role, and how a call is judged by it (the proxy, the stand-in and
//!   `@connections` refuse what the role does not allow).
//! - `dev`: `DevStack`, all of it wired together (`jobpipe dev`); `invoke`: one function, once.

pub mod aws;
pub mod bedrock;
pub mod capacity;
pub mod dev;
pub mod dev_key;
pub mod faults;
mod font;
pub mod functions;
pub mod gateway;
pub mod iam;
pub mod index_lag;
pub mod invoke;
pub mod resources;
pub mod runtime;
pub mod setup;
pub mod sources;
pub mod template;
