//! Structured JSON logs: one line per event, carrying the span fields (job id, correlation id).

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber. `RUST_LOG` (or `AWS_LAMBDA_LOG_LEVEL`) sets the level; default `info`.
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().map(|l| l.to_lowercase()))
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_span_list(true)
        .flatten_event(true)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}
