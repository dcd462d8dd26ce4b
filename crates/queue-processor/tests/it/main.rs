//! Queue processor against moto: the job state machine under every delivery pattern SQS can produce.
//!
//! One test binary; a module per feature, `helpers` for what they share.

mod delivery;
mod helpers;
mod kinds;
mod leases;
mod lost_responses;
mod pausing;
mod reconcile;
mod retries;
mod scheduling;
mod tenant_concurrency;
