//! Eventually consistent global secondary indexes, emulated in the AWS proxy. On AWS a GSI is updated
//! asynchronously, so a Query on it can miss an item written a moment ago (the notifier's `byJob` lookup
//! of a subscription just made, a list page right after a submission); DynamoDB Local's indexes are
//! consistent at once. With a lag set, an item written within it is left out of what any index Query or
//! Scan answers, until the lag has passed.
//!
//! The item is recognised by its table's key, learned from the `CreateTable` calls that pass the proxy.
//! Leaving a changed item out is a little stricter than AWS, where the index would still show its older
//! version for a while; an item deleted within the lag is not shown again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct IndexLag {
    lag: Duration,
    /// Key attribute names by table name.
    keys: Mutex<HashMap<String, Vec<String>>>,
    /// When each item (table, key) was last written.
    writes: Mutex<HashMap<(String, String), Instant>>,
}

impl IndexLag {
    pub fn new(lag: Duration) -> IndexLag {
        IndexLag { lag, keys: Mutex::default(), writes: Mutex::default() }
    }

    /// Notes what a DynamoDB call (`operation` as in `X-Amz-Target`, e.g. `DynamoDB_20120810.PutItem`, and
    /// its JSON body) writes, as it is forwarded.
    pub fn observe(&self, operation: &str, call: &Value) {
        self.observe_at(operation, call, Instant::now())
    }

    fn observe_at(&self, operation: &str, call: &Value, now: Instant) {
        let mut written = Vec::new();
        match operation.rsplit('.').next().unwrap_or_default() {
            "CreateTable" => {
                let names: Vec<String> = call["KeySchema"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|key| key["AttributeName"].as_str().map(String::from))
                    .collect();
                if let Some(table) = call["TableName"].as_str() {
                    self.keys.lock().expect("not poisoned").insert(table.to_string(), names);
                }
            }
            "PutItem" => written.push((call["TableName"].clone(), call["Item"].clone())),
            "UpdateItem" | "DeleteItem" => written.push((call["TableName"].clone(), call["Key"].clone())),
            "BatchWriteItem" => {
                for (table, requests) in call["RequestItems"].as_object().into_iter().flatten() {
                    for request in requests.as_array().into_iter().flatten() {
                        let item = &request["PutRequest"]["Item"];
                        let item = if item.is_null() { &request["DeleteRequest"]["Key"] } else { item };
                        written.push((Value::from(table.as_str()), item.clone()));
                    }
                }
            }
            "TransactWriteItems" => {
                for action in call["TransactItems"].as_array().into_iter().flatten() {
                    let (write, item) = match (&action["Put"], &action["Update"], &action["Delete"]) {
                        (put, _, _) if !put.is_null() => (put, &put["Item"]),
                        (_, update, _) if !update.is_null() => (update, &update["Key"]),
                        (_, _, delete) => (delete, &delete["Key"]),
                    };
                    written.push((write["TableName"].clone(), item.clone()));
                }
            }
            _ => return,
        }
        let mut writes = self.writes.lock().expect("not poisoned");
        // What is older than the lag no longer matters.
        if writes.len() > 10_000 {
            writes.retain(|_, at| now.duration_since(*at) < self.lag);
        }
        for (table, item) in written {
            if let (Some(table), Some(key)) = (table.as_str(), self.key_of(table.as_str().unwrap_or_default(), &item)) {
                writes.insert((table.to_string(), key), now);
            }
        }
    }

    /// The answer to a Query or Scan of an index without the items the index has not caught up with;
    /// `None` when nothing is left out (or the call reads no index).
    pub fn filter(&self, operation: &str, call: &Value, answer: &[u8]) -> Option<Vec<u8>> {
        self.filter_at(operation, call, answer, Instant::now())
    }

    fn filter_at(&self, operation: &str, call: &Value, answer: &[u8], now: Instant) -> Option<Vec<u8>> {
        let operation = operation.rsplit('.').next().unwrap_or_default();
        if !matches!(operation, "Query" | "Scan") || call["IndexName"].as_str().is_none() {
            return None;
        }
        let table = call["TableName"].as_str()?;
        let mut answer: Value = serde_json::from_slice(answer).ok()?;
        let items = answer.get_mut("Items")?.as_array_mut()?;
        let before = items.len();
        {
            let writes = self.writes.lock().expect("not poisoned");
            items.retain(|item| {
                let written = self.key_of(table, item).and_then(|key| writes.get(&(table.to_string(), key)).copied());
                written.is_none_or(|at| now.duration_since(at) >= self.lag)
            });
        }
        let left_out = before - items.len();
        if left_out == 0 {
            return None;
        }
        if let Some(count) = answer["Count"].as_u64() {
            answer["Count"] = Value::from(count.saturating_sub(left_out as u64));
        }
        serde_json::to_vec(&answer).ok()
    }

    /// An item's key in `table`, as a comparable string; `None` while the table's key is not known.
    fn key_of(&self, table: &str, item: &Value) -> Option<String> {
        let keys = self.keys.lock().expect("not poisoned");
        let names = keys.get(table)?;
        let key: BTreeMap<&str, &Value> = names.iter().map(|name| (name.as_str(), &item[name.as_str()])).collect();
        serde_json::to_string(&key).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_fresh_write_is_left_out_of_index_reads_until_the_lag_has_passed() {
        let lag = IndexLag::new(Duration::from_secs(2));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let table = json!({"TableName": "t", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}]});
        lag.observe_at("DynamoDB_20120810.CreateTable", &table, at(0));
        let old = json!({"pk": {"S": "old"}, "g": {"S": "x"}});
        let fresh = json!({"pk": {"S": "fresh"}, "g": {"S": "x"}});
        lag.observe_at("DynamoDB_20120810.PutItem", &json!({"TableName": "t", "Item": old}), at(0));
        lag.observe_at("DynamoDB_20120810.PutItem", &json!({"TableName": "t", "Item": fresh}), at(3_000));
        let answer = serde_json::to_vec(&json!({"Items": [old, fresh], "Count": 2, "ScannedCount": 2})).unwrap();
        let query = json!({"TableName": "t", "IndexName": "byG"});
        let filtered = lag.filter_at("DynamoDB_20120810.Query", &query, &answer, at(3_500)).unwrap();
        let filtered: Value = serde_json::from_slice(&filtered).unwrap();
        assert_eq!((&filtered["Items"], &filtered["Count"]), (&json!([old]), &json!(1)));
        // The table itself is read as it is; and once the lag has passed, the index shows the item too.
        assert_eq!(lag.filter_at("DynamoDB_20120810.Query", &json!({"TableName": "t"}), &answer, at(3_500)), None);
        assert_eq!(lag.filter_at("DynamoDB_20120810.Query", &query, &answer, at(5_000)), None);
        // Updates, deletes and batches count as writes too.
        let key = json!({"pk": {"S": "old"}});
        for (operation, call) in [
            ("UpdateItem", json!({"TableName": "t", "Key": key})),
            ("DeleteItem", json!({"TableName": "t", "Key": key})),
            ("BatchWriteItem", json!({"RequestItems": {"t": [{"PutRequest": {"Item": old}}]}})),
            ("TransactWriteItems", json!({"TransactItems": [{"Update": {"TableName": "t", "Key": key}}]})),
        ] {
            let lag = IndexLag::new(Duration::from_secs(2));
            lag.observe_at("DynamoDB_20120810.CreateTable", &table, at(0));
            lag.observe_at(&format!("DynamoDB_20120810.{operation}"), &call, at(10_000));
            assert!(lag.filter_at("DynamoDB_20120810.Query", &query, &answer, at(10_100)).is_some(), "{operation}");
        }
    }
}
