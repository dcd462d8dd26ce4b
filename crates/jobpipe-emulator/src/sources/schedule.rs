//! Schedules: the EventBridge event a `Schedule` source delivers, on its period.

use std::time::Duration;

use serde_json::{Value, json};

use crate::aws::{ACCOUNT, REGION};
use crate::runtime::Function;

/// The EventBridge event a `Schedule` source delivers.
pub fn scheduled_event(rule: &str) -> Value {
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": now,
        "region": REGION,
        "resources": [format!("arn:aws:events:{REGION}:{}:rule/{rule}", ACCOUNT)],
        "detail": {}
    })
}

/// Invokes `function` with a scheduled event every `every`.
pub async fn run_schedule(function: Function, rule: String, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // A tick missed while an invocation ran is not made up in a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = function.invoke_json(&scheduled_event(&rule)).await {
            tracing::warn!(%error, "scheduled invocation failed");
        }
    }
}
