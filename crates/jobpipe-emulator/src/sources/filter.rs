//! Event filtering as Lambda applies an event source mapping's `FilterCriteria`: a record is invoked only
//! when one of the filters' patterns matches it, and the function never sees the others.
//!
//! The patterns' grammar is EventBridge's (AWS, "Control which events Lambda sends to your function"):
//! an object's keys must all match; a list of values matches when one of them does. Emulated are exact
//! values and `anything-but`, `prefix` and `exists`; a pattern using anything else is refused when the
//! template is read, so a filter is never silently ignored locally.

use serde_json::Value;

/// One pattern, checked when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFilter(Value);

impl EventFilter {
    /// Reads a `Pattern` string; an error names what is not emulated.
    pub fn parse(pattern: &str) -> Result<EventFilter, String> {
        let value: Value = serde_json::from_str(pattern).map_err(|e| format!("filter pattern is not JSON: {e}"))?;
        check(&value)?;
        Ok(EventFilter(value))
    }

    pub fn matches(&self, record: &Value) -> bool {
        matches_object(&self.0, record)
    }
}

/// Whether any filter matches (no filters: every record goes through).
pub fn passes(filters: &[EventFilter], record: &Value) -> bool {
    filters.is_empty() || filters.iter().any(|filter| filter.matches(record))
}

fn check(pattern: &Value) -> Result<(), String> {
    let Value::Object(fields) = pattern else {
        return Err(format!("a filter pattern is an object of fields, not {pattern}"));
    };
    for (name, value) in fields {
        match value {
            Value::Object(_) => check(value)?,
            Value::Array(values) => {
                for value in values {
                    if let Value::Object(rule) = value {
                        let (operator, operand) = rule.iter().next().ok_or("an empty rule")?;
                        let ok = rule.len() == 1
                            && match operator.as_str() {
                                "anything-but" => operand.is_array() || !operand.is_object(),
                                "prefix" => operand.is_string(),
                                "exists" => operand.is_boolean(),
                                _ => false,
                            };
                        if !ok {
                            return Err(format!("field {name:?}: the rule {value} is not emulated"));
                        }
                    }
                }
            }
            other => return Err(format!("field {name:?}: {other} must be a list of values or a nested pattern")),
        }
    }
    Ok(())
}

fn matches_object(pattern: &Value, record: &Value) -> bool {
    let Value::Object(fields) = pattern else { return false };
    fields.iter().all(|(name, rule)| {
        let field = record.get(name);
        match rule {
            Value::Object(_) => field.is_some_and(|field| matches_object(rule, field)),
            Value::Array(values) => values.iter().any(|value| matches_value(value, field)),
            _ => false,
        }
    })
}

fn matches_value(rule: &Value, field: Option<&Value>) -> bool {
    match rule {
        Value::Object(rule) => match rule.iter().next() {
            Some((operator, operand)) if operator == "exists" => operand.as_bool() == Some(field.is_some()),
            Some((operator, operand)) if operator == "prefix" => field
                .and_then(Value::as_str)
                .zip(operand.as_str())
                .is_some_and(|(field, prefix)| field.starts_with(prefix)),
            Some((operator, operand)) if operator == "anything-but" => {
                let Some(field) = field else { return false };
                match operand {
                    Value::Array(excluded) => !excluded.contains(field),
                    excluded => excluded != field,
                }
            }
            _ => false,
        },
        exact => field == Some(exact),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(event: &str, old: Option<&str>, new: &str) -> Value {
        let mut record = json!({"eventName": event, "dynamodb": {"NewImage": {"status": {"S": new}}}});
        if let Some(old) = old {
            record["dynamodb"]["OldImage"] = json!({"status": {"S": old}});
        }
        record
    }

    #[test]
    fn the_job_endings_filters_pass_exactly_a_jobs_end_and_a_batchs_completion() {
        let template = std::fs::read_to_string(format!("{}/../../template.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let source = template.split("  JobEndingsEventSource:").nth(1).unwrap();
        let filters: Vec<EventFilter> = source
            .lines()
            .skip(1)
            .take_while(|line| !line.trim().is_empty())
            .filter_map(|line| line.split_once("- Pattern:"))
            .map(|(_, pattern)| EventFilter::parse(pattern.trim().trim_matches('\'')).unwrap())
            .collect();
        assert_eq!(filters.len(), 2);
        let passes = |record: Value| passes(&filters, &record);
        assert!(passes(change("MODIFY", Some("processing"), "completed")));
        assert!(passes(change("MODIFY", Some("queued"), "failed")));
        assert!(passes(change("MODIFY", Some("scheduled"), "failed")));
        assert!(!passes(change("MODIFY", Some("queued"), "processing")), "not an end");
        assert!(!passes(change("MODIFY", Some("completed"), "completed")), "a later write to an ended job");
        assert!(passes(change("MODIFY", Some("queued"), "cancelled")), "a cancel ends a job (and may end its batch)");
        assert!(!passes(change("MODIFY", Some("cancelled"), "cancelled")));
        assert!(!passes(change("INSERT", None, "completed")));
        assert!(!passes(change("REMOVE", Some("processing"), "completed")));

        let batch = |event: &str, old: Option<&str>, new: &str| {
            let mut record = json!({"eventName": event, "dynamodb": {"NewImage": {"batchState": {"S": new}}}});
            if let Some(old) = old {
                record["dynamodb"]["OldImage"] = json!({"batchState": {"S": old}});
            }
            record
        };
        assert!(passes(batch("MODIFY", Some("open"), "completed")), "a batch's completion");
        assert!(!passes(batch("MODIFY", Some("open"), "open")), "another of its jobs ended");
        assert!(!passes(batch("MODIFY", Some("completed"), "completed")), "a later write to a completed batch");
        assert!(!passes(batch("INSERT", None, "completed")));
    }

    #[test]
    fn rules_match_as_lambda_documents_them() {
        let filter =
            EventFilter::parse(r#"{"a": [{"prefix": "ab"}], "b": [{"exists": false}], "c": [1, "x"]}"#).unwrap();
        assert!(filter.matches(&json!({"a": "abc", "c": 1})));
        assert!(filter.matches(&json!({"a": "abc", "c": "x"})));
        assert!(!filter.matches(&json!({"a": "abc", "b": 0, "c": 1})));
        assert!(!filter.matches(&json!({"a": "xbc", "c": 1})));
        assert!(!filter.matches(&json!({"a": "abc", "c": 2})));
        assert!(passes(&[], &json!({})));
        for unsupported in [r#"{"a": [{"numeric": [">", 1]}]}"#, r#"{"a": "x"}"#, r#"[1]"#, "nope"] {
            assert!(EventFilter::parse(unsupported).is_err(), "{unsupported}");
        }
    }
}
