//! The schedules table: one item per schedule under its owner, and the sparse `dueTicks` index of active
//! schedules by next tick, spread over shards so it never becomes a hot partition.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use base64::Engine as _;

use super::{Schedule, ScheduleState};
use crate::clock::Millis;
use crate::error::AwsError;
use crate::store::{shard_name, stable_shard};

/// Every attribute and index name of the schedules table, written only here.
pub mod attr {
    pub const OWNER: &str = "owner";
    pub const SCHEDULE_ID: &str = "scheduleId";
    pub const KIND: &str = "kind";
    /// The job input, as JSON text.
    pub const INPUT: &str = "input";
    pub const CRON: &str = "cron";
    pub const RATE: &str = "rate";
    pub const TIMEZONE: &str = "timezone";
    pub const STATE: &str = "state";
    /// The next tick (epoch ms); with `TICK_SHARD`, present only while active, which puts the schedule in
    /// the `dueTicks` index.
    pub const NEXT_TICK_AT: &str = "nextTickAt";
    pub const TICK_SHARD: &str = "tickShard";
    pub const LAST_TICK_AT: &str = "lastTickAt";
    pub const LAST_JOB_ID: &str = "lastJobId";
    pub const SKIPPED_TICKS: &str = "skippedTicks";
    pub const CREATED_AT: &str = "createdAt";
    pub const UPDATED_AT: &str = "updatedAt";
    pub const IDEMPOTENCY_KEY: &str = "idempotencyKey";
    pub const REQUEST_HASH: &str = "requestHash";
    /// GSI: tickShard (hash) + nextTickAt (range), keys only.
    pub const DUE_TICKS_INDEX: &str = "dueTicks";
}

/// How many partitions the `dueTicks` index is spread over.
pub const TICK_SHARDS: u32 = 4;

type Item = HashMap<String, AttributeValue>;

/// What became of a create.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateScheduleOutcome {
    Created(Schedule),
    /// The same request (same owner, key and body) was accepted before: that schedule.
    Replayed(Schedule),
    /// The key names a schedule created from another request.
    KeyReused,
}

/// A position in an owner's schedule list, opaque to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulePageToken(String);

impl SchedulePageToken {
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.0)
    }

    pub fn decode(token: &str) -> Option<SchedulePageToken> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        let id = String::from_utf8(bytes).ok()?;
        uuid::Uuid::try_parse(&id).ok().map(|_| SchedulePageToken(id))
    }
}

#[derive(Debug, Clone)]
pub struct ScheduleStore {
    client: Client,
    table: String,
}

impl ScheduleStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        ScheduleStore { client, table: table.into() }
    }

    /// Stores a new schedule, once per id (an idempotent create when the id comes from a key).
    pub async fn create(&self, schedule: &Schedule) -> Result<CreateScheduleOutcome, AwsError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(schedule)))
            .condition_expression("attribute_not_exists(#id)")
            .expression_attribute_names("#id", attr::SCHEDULE_ID)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(CreateScheduleOutcome::Created(schedule.clone())),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(c)) => {
                    let existing = c.item().map(from_item).transpose()?;
                    // Also a retried put whose first try took effect: the item is this very request.
                    Ok(match existing {
                        Some(old) if old.owner == schedule.owner && old.request_hash == schedule.request_hash => {
                            CreateScheduleOutcome::Replayed(old)
                        }
                        _ => CreateScheduleOutcome::KeyReused,
                    })
                }
                _ => Err(AwsError::from_sdk("PutItem (create schedule)", err)),
            },
        }
    }

    /// The owner's schedule (a consistent read); another owner's is `None`, as a missing one is.
    pub async fn get(&self, owner: &str, schedule_id: &str) -> Result<Option<Schedule>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, schedule_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem (schedule)", e))?;
        out.item().map(from_item).transpose()
    }

    /// The owner's schedules, newest first (ids are time-ordered UUIDs, keyed ones aside).
    pub async fn list(
        &self,
        owner: &str,
        limit: usize,
        start: Option<&SchedulePageToken>,
    ) -> Result<(Vec<Schedule>, Option<SchedulePageToken>), AwsError> {
        let start_key = start.map(|token| key(owner, &token.0));
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", attr::OWNER)
            .expression_attribute_values(":owner", s(owner))
            .scan_index_forward(false)
            .limit(limit as i32)
            .set_exclusive_start_key(start_key)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("Query (schedules)", e))?;
        let schedules = out.items().iter().map(from_item).collect::<Result<Vec<_>, _>>()?;
        let next = out
            .last_evaluated_key()
            .and_then(|key| key.get(attr::SCHEDULE_ID))
            .and_then(|id| id.as_s().ok())
            .map(|id| SchedulePageToken(id.clone()));
        Ok((schedules, next))
    }

    /// Stops the schedule ticking (it leaves the `dueTicks` index). Pausing a paused one changes nothing.
    pub async fn pause(&self, owner: &str, schedule_id: &str, now: Millis) -> Result<Option<Schedule>, AwsError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, schedule_id)))
            .condition_expression("attribute_exists(#id)")
            .update_expression("SET #state = :paused, #updated = :now REMOVE #next, #shard")
            .expression_attribute_names("#id", attr::SCHEDULE_ID)
            .expression_attribute_names("#state", attr::STATE)
            .expression_attribute_names("#updated", attr::UPDATED_AT)
            .expression_attribute_names("#next", attr::NEXT_TICK_AT)
            .expression_attribute_names("#shard", attr::TICK_SHARD)
            .expression_attribute_values(":paused", s(ScheduleState::Paused.as_str()))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        updated(result, "UpdateItem (pause schedule)")
    }

    /// Starts a paused schedule ticking again at `next_tick`; a schedule already active is left as it is.
    pub async fn resume(
        &self,
        owner: &str,
        schedule_id: &str,
        next_tick: Millis,
        now: Millis,
    ) -> Result<Option<Schedule>, AwsError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, schedule_id)))
            .condition_expression("#state = :paused")
            .update_expression("SET #state = :active, #updated = :now, #next = :next, #shard = :shard")
            .expression_attribute_names("#state", attr::STATE)
            .expression_attribute_names("#updated", attr::UPDATED_AT)
            .expression_attribute_names("#next", attr::NEXT_TICK_AT)
            .expression_attribute_names("#shard", attr::TICK_SHARD)
            .expression_attribute_values(":paused", s(ScheduleState::Paused.as_str()))
            .expression_attribute_values(":active", s(ScheduleState::Active.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":next", n(next_tick))
            .expression_attribute_values(":shard", s(shard_of(schedule_id)))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        // Already active (resumed by someone else, or never paused): as it is. Missing: None.
        updated(result, "UpdateItem (resume schedule)")
    }

    /// Deletes the schedule; answers what was deleted. Jobs its ticks created are not touched.
    pub async fn delete(&self, owner: &str, schedule_id: &str) -> Result<Option<Schedule>, AwsError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, schedule_id)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DeleteItem (schedule)", e))?;
        out.attributes().filter(|item| !item.is_empty()).map(from_item).transpose()
    }

    /// Schedules (owner, id) whose next tick is at or before `until`, from the `dueTicks` index (which
    /// lags behind writes: callers read each item before acting); at most `limit`.
    pub async fn due(&self, until: Millis, limit: usize) -> Result<Vec<(String, String)>, AwsError> {
        let mut due = Vec::new();
        // Each shard gets its share, so a busy shard never starves the others.
        let per_shard = limit.div_ceil(TICK_SHARDS as usize).max(1);
        for shard in 0..TICK_SHARDS {
            let shard_limit = due.len() + per_shard;
            let mut start_key = None;
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(attr::DUE_TICKS_INDEX)
                    .key_condition_expression("#shard = :shard AND #next <= :until")
                    .expression_attribute_names("#shard", attr::TICK_SHARD)
                    .expression_attribute_names("#next", attr::NEXT_TICK_AT)
                    .expression_attribute_values(":shard", s(shard_name(shard)))
                    .expression_attribute_values(":until", n(until))
                    .limit((shard_limit - due.len()).max(1) as i32)
                    .set_exclusive_start_key(start_key)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("Query (due schedule ticks)", e))?;
                for item in out.items() {
                    if let (Some(owner), Some(id)) = (get_s(item, attr::OWNER), get_s(item, attr::SCHEDULE_ID)) {
                        due.push((owner, id));
                    }
                }
                start_key = out.last_evaluated_key().cloned();
                if due.len() >= shard_limit || start_key.is_none() {
                    break;
                }
            }
        }
        Ok(due)
    }

    /// Moves an active schedule from the tick `from` (its `nextTickAt`) to `next`, recording the tick that
    /// fired and its job. Conditioned on `from`, so two runs that fired the same tick move it once; a
    /// paused or deleted schedule is left alone.
    #[allow(clippy::too_many_arguments)]
    pub async fn advance(
        &self,
        schedule: &Schedule,
        from: Millis,
        next: Option<Millis>,
        fired: Millis,
        job_id: &str,
        skipped: u64,
        now: Millis,
    ) -> Result<(), AwsError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(&schedule.owner, &schedule.schedule_id)))
            .condition_expression("#state = :active AND #next = :from")
            .expression_attribute_names("#state", attr::STATE)
            .expression_attribute_names("#next", attr::NEXT_TICK_AT)
            .expression_attribute_names("#last", attr::LAST_TICK_AT)
            .expression_attribute_names("#job", attr::LAST_JOB_ID)
            .expression_attribute_names("#skipped", attr::SKIPPED_TICKS)
            .expression_attribute_names("#updated", attr::UPDATED_AT)
            .expression_attribute_values(":active", s(ScheduleState::Active.as_str()))
            .expression_attribute_values(":from", n(from))
            .expression_attribute_values(":fired", n(fired))
            .expression_attribute_values(":job", s(job_id))
            .expression_attribute_values(":skipped", n(skipped))
            .expression_attribute_values(":now", n(now));
        update = match next {
            Some(next) => update
                .update_expression(
                    "SET #next = :next, #last = :fired, #job = :job, #updated = :now ADD #skipped :skipped",
                )
                .expression_attribute_values(":next", n(next)),
            // No later tick could be found: the schedule is paused, so a resume can try again.
            None => update
                .update_expression(
                    "SET #last = :fired, #job = :job, #updated = :now, #state = :paused ADD #skipped :skipped \
                     REMOVE #next, #shard",
                )
                .expression_attribute_names("#shard", attr::TICK_SHARD)
                .expression_attribute_values(":paused", s(ScheduleState::Paused.as_str())),
        };
        match update.send().await {
            Ok(_) => Ok(()),
            Err(err) => match err.as_service_error() {
                // Another run moved it, or it was paused or deleted meanwhile: nothing left to do.
                Some(UpdateItemError::ConditionalCheckFailedException(_)) => Ok(()),
                _ => Err(AwsError::from_sdk("UpdateItem (advance schedule)", err)),
            },
        }
    }
}

fn updated(
    result: Result<
        aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
        aws_sdk_dynamodb::error::SdkError<UpdateItemError, aws_smithy_runtime_api::http::Response>,
    >,
    operation: &str,
) -> Result<Option<Schedule>, AwsError> {
    match result {
        Ok(out) => out.attributes().map(from_item).transpose(),
        // The condition failed: the item as it is, when the update asked for it (`None` when missing).
        Err(err) => match err.as_service_error() {
            Some(UpdateItemError::ConditionalCheckFailedException(c)) => c.item().map(from_item).transpose(),
            _ => Err(AwsError::from_sdk(operation, err)),
        },
    }
}

/// A schedule's primary key.
fn key(owner: &str, schedule_id: &str) -> Item {
    Item::from([(attr::OWNER.to_string(), s(owner)), (attr::SCHEDULE_ID.to_string(), s(schedule_id))])
}

/// A schedule's `dueTicks` shard: a stable hash of its id.
fn shard_of(schedule_id: &str) -> String {
    stable_shard(schedule_id, TICK_SHARDS)
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn get_s(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, AwsError> {
    match item.get(name) {
        None => Ok(None),
        Some(value) => {
            let text =
                value.as_n().map_err(|_| AwsError::corrupt("reading a schedule", format!("{name} is not a number")))?;
            text.parse().map(Some).map_err(|_| AwsError::corrupt("reading a schedule", format!("{name} is {text:?}")))
        }
    }
}

fn to_item(schedule: &Schedule) -> Item {
    let mut item = Item::new();
    let mut put = |name: &str, value: AttributeValue| {
        item.insert(name.to_string(), value);
    };
    put(attr::OWNER, s(&schedule.owner));
    put(attr::SCHEDULE_ID, s(&schedule.schedule_id));
    put(attr::KIND, s(&schedule.kind));
    put(attr::INPUT, s(schedule.input.to_string()));
    if let Some(cron) = &schedule.cron {
        put(attr::CRON, s(cron));
    }
    if let Some(rate) = &schedule.rate {
        put(attr::RATE, s(rate));
    }
    put(attr::TIMEZONE, s(&schedule.timezone));
    put(attr::STATE, s(schedule.state.as_str()));
    if let (Some(next), ScheduleState::Active) = (schedule.next_tick_at, schedule.state) {
        put(attr::NEXT_TICK_AT, n(next));
        put(attr::TICK_SHARD, s(shard_of(&schedule.schedule_id)));
    }
    if let Some(last) = schedule.last_tick_at {
        put(attr::LAST_TICK_AT, n(last));
    }
    if let Some(job) = &schedule.last_job_id {
        put(attr::LAST_JOB_ID, s(job));
    }
    put(attr::SKIPPED_TICKS, n(schedule.skipped_ticks));
    put(attr::CREATED_AT, n(schedule.created_at));
    put(attr::UPDATED_AT, n(schedule.updated_at));
    if let Some(key) = &schedule.idempotency_key {
        put(attr::IDEMPOTENCY_KEY, s(key));
    }
    put(attr::REQUEST_HASH, s(&schedule.request_hash));
    item
}

fn from_item(item: &Item) -> Result<Schedule, AwsError> {
    let required = |name: &str| {
        get_s(item, name).ok_or_else(|| AwsError::corrupt("reading a schedule", format!("{name} is missing")))
    };
    let input = serde_json::from_str(&required(attr::INPUT)?)
        .map_err(|e| AwsError::corrupt("reading a schedule", format!("input is not JSON: {e}")))?;
    let state = ScheduleState::parse(&required(attr::STATE)?)
        .ok_or_else(|| AwsError::corrupt("reading a schedule", "state is unknown"))?;
    Ok(Schedule {
        schedule_id: required(attr::SCHEDULE_ID)?,
        owner: required(attr::OWNER)?,
        kind: required(attr::KIND)?,
        input,
        cron: get_s(item, attr::CRON),
        rate: get_s(item, attr::RATE),
        timezone: required(attr::TIMEZONE)?,
        state,
        next_tick_at: get_n(item, attr::NEXT_TICK_AT)?,
        last_tick_at: get_n(item, attr::LAST_TICK_AT)?,
        last_job_id: get_s(item, attr::LAST_JOB_ID),
        skipped_ticks: get_n(item, attr::SKIPPED_TICKS)?.unwrap_or(0),
        created_at: get_n(item, attr::CREATED_AT)?.unwrap_or(0),
        updated_at: get_n(item, attr::UPDATED_AT)?.unwrap_or(0),
        idempotency_key: get_s(item, attr::IDEMPOTENCY_KEY),
        request_hash: required(attr::REQUEST_HASH)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_reads_back_as_the_schedule_it_was() {
        let schedule = Schedule {
            schedule_id: uuid::Uuid::now_v7().to_string(),
            owner: "alice".into(),
            kind: "echo".into(),
            input: serde_json::json!({"n": 1}),
            cron: Some("0 9 * * MON-FRI".into()),
            rate: None,
            timezone: "Europe/Paris".into(),
            state: ScheduleState::Active,
            next_tick_at: Some(5),
            last_tick_at: Some(4),
            last_job_id: Some("j".into()),
            skipped_ticks: 2,
            created_at: 1,
            updated_at: 3,
            idempotency_key: Some("k".into()),
            request_hash: "h".into(),
        };
        assert_eq!(from_item(&to_item(&schedule)).unwrap(), schedule);
        let paused = Schedule { state: ScheduleState::Paused, next_tick_at: None, ..schedule };
        let item = to_item(&paused);
        assert!(!item.contains_key(attr::TICK_SHARD), "a paused schedule is out of the dueTicks index");
        assert_eq!(from_item(&item).unwrap(), paused);
        let token = SchedulePageToken(paused.schedule_id.clone());
        assert_eq!(SchedulePageToken::decode(&token.encode()), Some(token));
        assert_eq!(SchedulePageToken::decode("not-a-token"), None);
    }
}
