//! The heart of jobpipe: the job model, the fenced DynamoDB state machine, SQS dispatch and batch
//! handling, job kinds, caller authentication and configuration, shared by every Lambda binary.

pub mod auth;
pub mod backoff;
pub mod batch;
pub mod clock;
pub mod config;
pub mod connections;
pub mod controls;
pub mod dispatch;
pub mod error;
pub mod intake;
pub mod job;
pub mod kinds;
pub mod metrics;
pub mod open_jobs;
pub mod payload;
pub mod schedules;
pub mod store;
pub mod telemetry;
pub mod tenant_slots;
pub mod webhooks;

pub use clock::{Clock, SystemClock};
pub use error::{AwsError, Retryability};
pub use job::{Job, JobError, JobId, JobPage, JobStatus, JobView};
pub use store::JobStore;
