//! DynamoDB capacity measured, not estimated: the AWS proxy asks DynamoDB for `ReturnConsumedCapacity:
//! INDEXES` on every call that can report it (Amazon's own engine, DynamoDB Local, answers it as the
//! service does) and adds up what each answer says, by caller (the function whose role signed the call),
//! operation, and table or index. The functions' requests are otherwise unchanged: a caller that asked
//! for capacity itself keeps its own setting (and is not measured), and the answers pass through as
//! DynamoDB gave them. The rewritten request keeps its original signature: fine for the local engines,
//! which do not check signatures, wrong for anything that does.
//!
//! Only successful answers are counted. On AWS a write whose condition fails, and a cancelled transaction,
//! still cost write units, and a read that finds nothing costs its minimum; DynamoDB Local reports such
//! reads as 0.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

/// The operations that take `ReturnConsumedCapacity`.
const METERED: [&str; 10] = [
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "Query",
    "Scan",
    "BatchGetItem",
    "BatchWriteItem",
    "TransactGetItems",
    "TransactWriteItems",
];

/// Where capacity went: who called, what, and on which table or index (`table` or `table/index`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Spent {
    pub caller: String,
    pub operation: String,
    pub on: String,
}

/// Capacity units (read and write request units, on demand) and the calls that spent them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Units {
    pub read: f64,
    pub write: f64,
    pub calls: u64,
}

#[derive(Debug, Default)]
pub struct CapacityMeter {
    spent: Mutex<BTreeMap<Spent, Units>>,
}

impl CapacityMeter {
    /// The request to send instead of `body`, when it is a metered DynamoDB call that did not ask for
    /// capacity itself.
    pub fn ask_for_capacity(target: &str, body: &[u8]) -> Option<Vec<u8>> {
        let operation = target.strip_prefix("DynamoDB_20120810.")?;
        if !METERED.contains(&operation) {
            return None;
        }
        let mut request: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
        if request.contains_key("ReturnConsumedCapacity") {
            return None;
        }
        request.insert("ReturnConsumedCapacity".into(), Value::from("INDEXES"));
        serde_json::to_vec(&request).ok()
    }

    /// Adds up a successful answer's `ConsumedCapacity` (one object, or a list for batch and
    /// transaction calls); anything else is ignored.
    pub fn record(&self, caller: &str, target: &str, answer: &[u8]) {
        let Some(operation) = target.strip_prefix("DynamoDB_20120810.") else { return };
        let Ok(answer) = serde_json::from_slice::<Value>(answer) else { return };
        let consumed = match &answer["ConsumedCapacity"] {
            Value::Array(list) => list.clone(),
            Value::Object(_) => vec![answer["ConsumedCapacity"].clone()],
            _ => return,
        };
        let mut spent = self.spent.lock().expect("not poisoned");
        let mut add = |on: String, units: &Value, calls: u64| {
            let entry =
                spent.entry(Spent { caller: caller.to_string(), operation: operation.to_string(), on }).or_default();
            // An on-demand table reports its units as `CapacityUnits`, or split into read and write.
            let read = units["ReadCapacityUnits"].as_f64();
            let write = units["WriteCapacityUnits"].as_f64();
            let total = units["CapacityUnits"].as_f64().unwrap_or_default();
            match (read, write) {
                (None, None) if operation.contains("Get") || operation == "Query" || operation == "Scan" => {
                    entry.read += total
                }
                (None, None) => entry.write += total,
                (read, write) => {
                    entry.read += read.unwrap_or_default();
                    entry.write += write.unwrap_or_default();
                }
            }
            entry.calls += calls;
        };
        for table in &consumed {
            let Some(name) = table["TableName"].as_str() else { continue };
            match table.get("Table") {
                Some(units) => add(name.to_string(), units, 1),
                // No split given: the whole is the table's.
                None => add(name.to_string(), table, 1),
            }
            for kind in ["GlobalSecondaryIndexes", "LocalSecondaryIndexes"] {
                if let Some(Value::Object(indexes)) = table.get(kind) {
                    for (index, units) in indexes {
                        add(format!("{name}/{index}"), units, 0);
                    }
                }
            }
        }
    }

    /// Everything spent so far.
    pub fn spent(&self) -> BTreeMap<Spent, Units> {
        self.spent.lock().expect("not poisoned").clone()
    }

    /// Forgets what was spent (before the part of a run being measured).
    pub fn reset(&self) {
        self.spent.lock().expect("not poisoned").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn asks_only_metered_calls_that_did_not_ask_themselves() {
        let asked = CapacityMeter::ask_for_capacity("DynamoDB_20120810.UpdateItem", br#"{"TableName":"t"}"#).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&asked).unwrap()["ReturnConsumedCapacity"], "INDEXES");
        let own = br#"{"TableName":"t","ReturnConsumedCapacity":"TOTAL"}"#;
        assert_eq!(CapacityMeter::ask_for_capacity("DynamoDB_20120810.GetItem", own), None);
        assert_eq!(CapacityMeter::ask_for_capacity("DynamoDB_20120810.DescribeTable", b"{}"), None);
        assert_eq!(CapacityMeter::ask_for_capacity("AmazonSQS.SendMessage", b"{}"), None);
        assert_eq!(CapacityMeter::ask_for_capacity("DynamoDB_20120810.PutItem", b"not json"), None);
    }

    /// The answers' shapes as DynamoDB Local gives them (measured 2026-12-08): one object for an item
    /// call, a list for a transaction, the table's and each index's units apart.
    #[test]
    fn adds_up_tables_and_indexes_by_caller_and_operation() {
        let meter = CapacityMeter::default();
        let update = json!({"ConsumedCapacity": {"TableName": "jobs", "CapacityUnits": 4.0,
            "Table": {"CapacityUnits": 3.0}, "GlobalSecondaryIndexes": {"byOwner": {"CapacityUnits": 1.0}}}});
        meter.record("ingest", "DynamoDB_20120810.UpdateItem", update.to_string().as_bytes());
        meter.record("ingest", "DynamoDB_20120810.UpdateItem", update.to_string().as_bytes());
        let get = json!({"Item": {}, "ConsumedCapacity": {"TableName": "jobs", "CapacityUnits": 1.0,
            "Table": {"CapacityUnits": 1.0}}});
        meter.record("processor", "DynamoDB_20120810.GetItem", get.to_string().as_bytes());
        let transaction = json!({"ConsumedCapacity": [
            {"TableName": "jobs", "CapacityUnits": 4.0, "WriteCapacityUnits": 4.0},
            {"TableName": "control", "CapacityUnits": 2.0, "WriteCapacityUnits": 2.0}]});
        meter.record("ingest", "DynamoDB_20120810.TransactWriteItems", transaction.to_string().as_bytes());
        meter.record("ingest", "DynamoDB_20120810.PutItem", b"{}");
        meter.record("ingest", "AmazonSQS.SendMessage", b"{}");

        let spent = meter.spent();
        let at = |caller: &str, operation: &str, on: &str| {
            spent[&Spent { caller: caller.into(), operation: operation.into(), on: on.into() }]
        };
        assert_eq!(at("ingest", "UpdateItem", "jobs"), Units { read: 0.0, write: 6.0, calls: 2 });
        assert_eq!(at("ingest", "UpdateItem", "jobs/byOwner"), Units { read: 0.0, write: 2.0, calls: 0 });
        assert_eq!(at("processor", "GetItem", "jobs"), Units { read: 1.0, write: 0.0, calls: 1 });
        assert_eq!(at("ingest", "TransactWriteItems", "control").write, 2.0);
        assert_eq!(spent.len(), 5, "{spent:?}");
        meter.reset();
        assert!(meter.spent().is_empty());
    }
}
