//! The jobs HTTP API against moto, driven as a client would drive it, plus the whole pipeline with the
//! queue processor.
//!
//! One test binary; a module per feature, `helpers` for what they share.

mod auth;
mod batches;
mod cancel;
mod errors;
mod helpers;
mod idempotency;
mod kinds;
mod payloads;
mod quotas;
mod reads;
mod schedules;
mod scheduling;
mod submit;
mod webhooks;
