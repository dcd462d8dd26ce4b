//! Metrics in CloudWatch Embedded Metric Format: one JSON line on stdout per data point, which Lambda's
//! log pipeline turns into CloudWatch metrics in the `jobpipe` namespace without any API call.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};

pub const NAMESPACE: &str = "jobpipe";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// The EMF document for one metric value. `dimensions` always include `Service`; the metric is published
/// both per `Service` and per the full dimension set, so totals and breakdowns are both queryable.
pub fn emf_line(
    service: &str,
    name: &str,
    unit: Unit,
    value: f64,
    dimensions: &[(&str, &str)],
    timestamp_ms: i64,
) -> String {
    let mut keys = vec!["Service".to_string()];
    keys.extend(dimensions.iter().map(|(k, _)| k.to_string()));
    let mut dimension_sets = vec![json!(["Service"])];
    if keys.len() > 1 {
        dimension_sets.push(json!(keys));
    }
    let mut document = Map::new();
    document.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": dimension_sets,
                "Metrics": [{"Name": name, "Unit": unit.as_str()}],
            }],
        }),
    );
    document.insert("Service".into(), json!(service));
    for (key, value) in dimensions {
        document.insert(key.to_string(), json!(value));
    }
    document.insert(name.into(), json!(value));
    Value::Object(document).to_string()
}

/// Writes one metric value to stdout.
pub fn emit(service: &str, name: &str, unit: Unit, value: f64, dimensions: &[(&str, &str)]) {
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let line = emf_line(service, name, unit, value, dimensions, now);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// True once per process: the first invocation of an execution environment is its cold start.
pub fn take_cold_start() -> bool {
    static WARM: AtomicBool = AtomicBool::new(false);
    !WARM.swap(true, Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_emf() {
        let line = emf_line(
            "queue-processor",
            "JobsFailed",
            Unit::Count,
            1.0,
            &[("Kind", "image"), ("ErrorCode", "prompt_blocked")],
            1_700_000_000_000,
        );
        let doc: Value = serde_json::from_str(&line).unwrap();
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "jobpipe");
        assert_eq!(directive["Dimensions"], json!([["Service"], ["Service", "Kind", "ErrorCode"]]));
        assert_eq!(directive["Metrics"][0], json!({"Name": "JobsFailed", "Unit": "Count"}));
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000i64);
        // Every dimension and the metric itself are top-level members, as EMF requires.
        assert_eq!(
            (doc["Service"].as_str(), doc["Kind"].as_str(), doc["ErrorCode"].as_str()),
            (Some("queue-processor"), Some("image"), Some("prompt_blocked"))
        );
        assert_eq!(doc["JobsFailed"], 1.0);

        let plain: Value =
            serde_json::from_str(&emf_line("api-ingest", "ColdStart", Unit::Count, 1.0, &[], 0)).unwrap();
        assert_eq!(plain["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Service"]]));
    }

    #[test]
    fn the_first_call_is_the_cold_start() {
        let first = take_cold_start();
        assert!(!take_cold_start());
        let _ = first;
    }
}
