//! The item codec: a `Job` as the jobs table's item and back, stream images (DynamoDB JSON), and the
//! attribute helpers the transitions' own-write checks use.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine as _;
use serde_json::Value;

use super::attr;
use super::pending::shard_of;
use crate::error::AwsError;
use crate::job::{BatchRef, ErrorInfo, Job, JobId, JobStatus, Lease, Payload};
use crate::webhooks::{DeliveryState, WebhookDelivery, WebhookEvent};

pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) fn has_s(item: &Item, name: &str, value: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::S(v)) if v == value)
}

pub(super) fn has_n(item: &Item, name: &str, value: impl Into<i64>) -> bool {
    let value = value.into();
    matches!(item.get(name), Some(AttributeValue::N(v)) if v.parse::<i64>().ok() == Some(value))
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn payload_attr(
    payload: &Payload,
    inline: &'static str,
    reference: &'static str,
) -> (&'static str, AttributeValue) {
    match payload {
        Payload::Inline(value) => (inline, s(value.to_string())),
        Payload::S3 { key } => (reference, s(key)),
    }
}

pub(super) fn to_item(job: &Job) -> Item {
    let mut item = Item::new();
    let mut put = |k: &str, v: AttributeValue| {
        item.insert(k.to_string(), v);
    };
    put(attr::JOB_ID, s(job.job_id.as_str()));
    put(attr::OWNER, s(&job.owner));
    put(attr::KIND, s(&job.kind));
    put(attr::STATUS, s(job.status.as_str()));
    let (name, value) = payload_attr(&job.input, attr::INPUT, attr::INPUT_REF);
    put(name, value);
    if let Some(result) = &job.result {
        let (name, value) = payload_attr(result, attr::RESULT, attr::RESULT_REF);
        put(name, value);
    }
    if let Some(e) = &job.error {
        put(attr::ERROR_CODE, s(&e.code));
        put(attr::ERROR_MESSAGE, s(&e.message));
    }
    if let Some(e) = &job.last_error {
        put(attr::LAST_ERROR_CODE, s(&e.code));
        put(attr::LAST_ERROR_MESSAGE, s(&e.message));
    }
    put(attr::ATTEMPTS, n(job.attempts));
    put(attr::PROGRESS, n(job.progress));
    put(attr::CREATED_AT, n(job.created_at));
    if let Some(t) = job.run_at {
        put(attr::RUN_AT, n(t));
    }
    if let Some(t) = job.started_at {
        put(attr::STARTED_AT, n(t));
    }
    if let Some(t) = job.completed_at {
        put(attr::COMPLETED_AT, n(t));
    }
    put(attr::UPDATED_AT, n(job.updated_at));
    if let Some(lease) = &job.lease {
        put(attr::LEASE_TOKEN, s(&lease.token));
        put(attr::LEASE_EXPIRES_AT, n(lease.expires_at));
    }
    if let Some(key) = &job.idempotency_key {
        put(attr::IDEMPOTENCY_KEY, s(key));
    }
    put(attr::REQUEST_HASH, s(&job.request_hash));
    put(attr::CORRELATION_ID, s(&job.correlation_id));
    if let Some(due) = job.dispatch_due_at {
        put(attr::DISPATCH_SHARD, s(shard_of(&job.job_id)));
        put(attr::DISPATCH_DUE_AT, n(due));
    }
    if let Some(at) = job.dispatched_at {
        put(attr::DISPATCHED_AT, n(at));
    }
    if let Some(url) = &job.callback_url {
        put(attr::CALLBACK_URL, s(url));
    }
    for delivery in &job.webhooks {
        put(&webhook_attr(&delivery.target), webhook_to_attr(delivery));
    }
    if let Some(batch) = &job.batch {
        put(attr::BATCH_ID, s(batch.batch_id.as_str()));
        put(attr::BATCH_INDEX, n(batch.index));
        put(attr::BATCH_SIZE, n(batch.size));
    }
    item
}

/// The attribute a target's delivery state is kept in.
pub(super) fn webhook_attr(target: &str) -> String {
    format!("{}{target}", attr::WEBHOOK_PREFIX)
}

/// A delivery's state as a map attribute.
pub(super) fn webhook_to_attr(delivery: &WebhookDelivery) -> AttributeValue {
    let mut map = HashMap::from([
        ("event".to_string(), s(delivery.event.as_str())),
        ("url".to_string(), s(&delivery.url)),
        ("state".to_string(), s(delivery.state.as_str())),
        ("attempts".to_string(), n(delivery.attempts)),
        ("updatedAt".to_string(), n(delivery.updated_at)),
    ]);
    if let Some(status) = delivery.last_status {
        map.insert("lastStatus".into(), n(status));
    }
    if let Some(error) = &delivery.last_error {
        map.insert("lastError".into(), s(error));
    }
    if let Some(at) = delivery.next_attempt_at {
        map.insert("nextAttemptAt".into(), n(at));
    }
    AttributeValue::M(map)
}

fn webhook_from_attr(target: &str, value: &AttributeValue) -> Result<WebhookDelivery, AwsError> {
    let corrupt = |what: &str| AwsError::corrupt("reading job item", format!("webhook state {target}: {what}"));
    let map = value.as_m().map_err(|_| corrupt("not a map"))?;
    let event = opt_s(map, "event")?.and_then(|e| WebhookEvent::parse(&e)).ok_or_else(|| corrupt("event"))?;
    let state = opt_s(map, "state")?.and_then(|e| DeliveryState::parse(&e)).ok_or_else(|| corrupt("state"))?;
    Ok(WebhookDelivery {
        target: target.to_string(),
        event,
        url: opt_s(map, "url")?.unwrap_or_default(),
        state,
        attempts: opt_n(map, "attempts")?.unwrap_or(0),
        last_status: opt_n(map, "lastStatus")?,
        last_error: opt_s(map, "lastError")?,
        next_attempt_at: opt_n(map, "nextAttemptAt")?,
        updated_at: opt_n(map, "updatedAt")?.unwrap_or(0),
    })
}

/// Reads a job from a DynamoDB stream image (`NewImage`/`OldImage`, in DynamoDB JSON).
pub fn job_from_stream_image(image: &Value) -> Result<Job, AwsError> {
    from_item(&item_from_stream_image(image)?)
}

/// A stream image (DynamoDB JSON) as the item it shows.
pub(super) fn item_from_stream_image(image: &Value) -> Result<Item, AwsError> {
    let Value::Object(fields) = image else {
        return Err(AwsError::corrupt("reading stream image", "image is not an object"));
    };
    fields.iter().map(|(name, value)| Ok((name.clone(), attribute_from_json(value)?))).collect()
}

/// One attribute in DynamoDB JSON (`{"S": "x"}`, `{"N": "1"}`, `{"M": {...}}`, ...).
fn attribute_from_json(value: &Value) -> Result<AttributeValue, AwsError> {
    let bad = || AwsError::corrupt("reading stream image", format!("not a DynamoDB attribute: {value}"));
    let Some((tag, inner)) = value.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
        return Err(bad());
    };
    let strings = |v: &Value| -> Result<Vec<String>, AwsError> {
        v.as_array().ok_or_else(bad)?.iter().map(|s| s.as_str().map(String::from).ok_or_else(bad)).collect()
    };
    Ok(match tag.as_str() {
        "S" => AttributeValue::S(inner.as_str().ok_or_else(bad)?.to_string()),
        "N" => AttributeValue::N(inner.as_str().ok_or_else(bad)?.to_string()),
        "BOOL" => AttributeValue::Bool(inner.as_bool().ok_or_else(bad)?),
        "NULL" => AttributeValue::Null(true),
        "SS" => AttributeValue::Ss(strings(inner)?),
        "NS" => AttributeValue::Ns(strings(inner)?),
        "L" => AttributeValue::L(
            inner.as_array().ok_or_else(bad)?.iter().map(attribute_from_json).collect::<Result<_, _>>()?,
        ),
        "M" => AttributeValue::M(
            inner
                .as_object()
                .ok_or_else(bad)?
                .iter()
                .map(|(k, v)| Ok((k.clone(), attribute_from_json(v)?)))
                .collect::<Result<_, AwsError>>()?,
        ),
        "B" => {
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(inner.as_str().ok_or_else(bad)?).map_err(|_| bad())?;
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(bytes))
        }
        _ => return Err(bad()),
    })
}

pub(super) fn get_s(item: &Item, name: &str) -> Result<String, AwsError> {
    opt_s(item, name)?.ok_or_else(|| AwsError::corrupt("reading job item", format!("attribute {name} missing")))
}

fn opt_s(item: &Item, name: &str) -> Result<Option<String>, AwsError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(AwsError::corrupt("reading job item", format!("attribute {name} is not a string"))),
    }
}

fn opt_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, AwsError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| AwsError::corrupt("reading job item", format!("attribute {name} is not a valid number"))),
        Some(_) => Err(AwsError::corrupt("reading job item", format!("attribute {name} is not a number"))),
    }
}

fn opt_payload(item: &Item, inline: &str, reference: &str) -> Result<Option<Payload>, AwsError> {
    if let Some(text) = opt_s(item, inline)? {
        let value = serde_json::from_str(&text)
            .map_err(|e| AwsError::corrupt("reading job item", format!("attribute {inline} is not JSON: {e}")))?;
        return Ok(Some(Payload::Inline(value)));
    }
    Ok(opt_s(item, reference)?.map(|key| Payload::S3 { key }))
}

fn opt_error(item: &Item, code: &str, message: &str) -> Result<Option<ErrorInfo>, AwsError> {
    Ok(match opt_s(item, code)? {
        Some(code) => Some(ErrorInfo { code, message: opt_s(item, message)?.unwrap_or_default() }),
        None => None,
    })
}

pub(super) fn from_item(item: &Item) -> Result<Job, AwsError> {
    let job_id = get_s(item, attr::JOB_ID)?;
    let status = get_s(item, attr::STATUS)?;
    let status = JobStatus::parse(&status)
        .ok_or_else(|| AwsError::corrupt("reading job item", format!("unknown status {status:?}")))?;
    // A finished job keeps its last lease's token (see `complete`), but holds no lease.
    let lease = match (opt_s(item, attr::LEASE_TOKEN)?, opt_n(item, attr::LEASE_EXPIRES_AT)?) {
        _ if status.is_terminal() => None,
        (Some(token), Some(expires_at)) => Some(Lease { token, expires_at }),
        // A lease released before tokens were kept: only its (past) expiry.
        (None, Some(expires_at)) => Some(Lease { token: String::new(), expires_at }),
        _ => None,
    };
    Ok(Job {
        job_id: JobId::parse(&job_id)
            .ok_or_else(|| AwsError::corrupt("reading job item", format!("job id {job_id:?} is not a UUID")))?,
        owner: get_s(item, attr::OWNER)?,
        kind: get_s(item, attr::KIND)?,
        status,
        input: opt_payload(item, attr::INPUT, attr::INPUT_REF)?.unwrap_or(Payload::Inline(Value::Null)),
        result: opt_payload(item, attr::RESULT, attr::RESULT_REF)?,
        error: opt_error(item, attr::ERROR_CODE, attr::ERROR_MESSAGE)?,
        last_error: opt_error(item, attr::LAST_ERROR_CODE, attr::LAST_ERROR_MESSAGE)?,
        attempts: opt_n(item, attr::ATTEMPTS)?.unwrap_or(0),
        progress: opt_n(item, attr::PROGRESS)?.unwrap_or(0),
        created_at: opt_n(item, attr::CREATED_AT)?.unwrap_or(0),
        run_at: opt_n(item, attr::RUN_AT)?,
        started_at: opt_n(item, attr::STARTED_AT)?,
        completed_at: opt_n(item, attr::COMPLETED_AT)?,
        updated_at: opt_n(item, attr::UPDATED_AT)?.unwrap_or(0),
        lease,
        idempotency_key: opt_s(item, attr::IDEMPOTENCY_KEY)?,
        request_hash: opt_s(item, attr::REQUEST_HASH)?.unwrap_or_default(),
        correlation_id: opt_s(item, attr::CORRELATION_ID)?.unwrap_or_default(),
        dispatch_due_at: opt_n(item, attr::DISPATCH_DUE_AT)?,
        dispatched_at: opt_n(item, attr::DISPATCHED_AT)?,
        callback_url: opt_s(item, attr::CALLBACK_URL)?,
        webhooks: webhooks_of(item)?,
        batch: match (opt_s(item, attr::BATCH_ID)?, opt_n(item, attr::BATCH_INDEX)?, opt_n(item, attr::BATCH_SIZE)?) {
            (Some(id), Some(index), Some(size)) => Some(BatchRef {
                batch_id: JobId::parse(&id)
                    .ok_or_else(|| AwsError::corrupt("reading job item", format!("batch id {id:?} is not a UUID")))?,
                index,
                size,
            }),
            _ => None,
        },
    })
}

fn webhooks_of(item: &Item) -> Result<Vec<WebhookDelivery>, AwsError> {
    let mut webhooks = item
        .iter()
        .filter_map(|(name, value)| Some((name.strip_prefix(attr::WEBHOOK_PREFIX)?, value)))
        .map(|(target, value)| webhook_from_attr(target, value))
        .collect::<Result<Vec<_>, _>>()?;
    webhooks.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(webhooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_images_read_as_jobs() {
        let id = JobId::new_random();
        let image = serde_json::json!({
            "jobId": {"S": id.as_str()}, "owner": {"S": "alice"}, "kind": {"S": "echo"},
            "status": {"S": "completed"}, "input": {"S": "{\"a\":1}"}, "result": {"S": "{\"a\":1}"},
            "attempts": {"N": "1"}, "progress": {"N": "100"}, "createdAt": {"N": "1"}, "updatedAt": {"N": "2"},
            "extra": {"M": {"l": {"L": [{"BOOL": true}, {"NULL": true}, {"SS": ["x"]}, {"B": "AAE="}]}}}
        });
        let job = job_from_stream_image(&image).unwrap();
        assert_eq!((job.job_id, job.status, job.progress), (id, JobStatus::Completed, 100));
        assert_eq!(job.result, Some(Payload::Inline(serde_json::json!({"a": 1}))));
        for bad in [serde_json::json!([]), serde_json::json!({"jobId": {"Q": "x"}}), serde_json::json!({"jobId": "x"})]
        {
            assert!(job_from_stream_image(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn items_round_trip() {
        let job = Job {
            job_id: JobId::new_random(),
            owner: "alice".into(),
            kind: "echo".into(),
            status: JobStatus::Processing,
            input: Payload::Inline(serde_json::json!({"a": [1, 2]})),
            result: Some(Payload::S3 { key: "results/x/result.json".into() }),
            error: None,
            last_error: Some(ErrorInfo { code: "boom".into(), message: "went wrong".into() }),
            attempts: 2,
            progress: 40,
            created_at: 1,
            run_at: Some(2),
            started_at: Some(2),
            completed_at: None,
            updated_at: 3,
            lease: Some(Lease { token: "t".into(), expires_at: 9 }),
            idempotency_key: Some("k".into()),
            request_hash: "h".into(),
            correlation_id: "c".into(),
            dispatch_due_at: Some(5),
            dispatched_at: Some(4),
            callback_url: Some("https://example.com/hook".into()),
            webhooks: vec![
                WebhookDelivery {
                    target: "callback".into(),
                    event: WebhookEvent::JobCompleted,
                    url: "https://example.com/hook".into(),
                    state: DeliveryState::Delivered,
                    attempts: 1,
                    last_status: Some(204),
                    last_error: None,
                    next_attempt_at: None,
                    updated_at: 7,
                },
                WebhookDelivery {
                    target: "ep_1".into(),
                    event: WebhookEvent::JobCompleted,
                    url: "https://example.org/hook".into(),
                    state: DeliveryState::Retrying,
                    attempts: 2,
                    last_status: None,
                    last_error: Some("timed out".into()),
                    next_attempt_at: Some(9),
                    updated_at: 8,
                },
            ],
            batch: Some(BatchRef { batch_id: JobId::new_random(), index: 3, size: 7 }),
        };
        assert_eq!(from_item(&to_item(&job)).unwrap(), job);
        assert!(to_item(&job).contains_key(attr::DISPATCH_SHARD));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Stream images from outside are read into a job or refused with an error: never a panic.
        #[test]
        fn any_stream_image_reads_or_errors(image in json_value()) {
            let _ = job_from_stream_image(&image);
        }
    }
}
