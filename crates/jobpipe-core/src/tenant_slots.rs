//! Per-tenant concurrency: at most N of one tenant's jobs run at once, each holding a slot for as long as
//! its lease.
//!
//! A tenant's slots are one item of the control table (`name = "running#<owner>"`) whose `slots` map
//! names each running job with its lease token and the lease's expiry. A worker takes a slot before it
//! claims the job, with one conditional write that adds its entry only while the map has room; it gives
//! the slot back (a write conditioned on its token) when the job leaves its hands, however that happens.
//! A worker that dies holding a slot cannot give it back: the slot is then free once its lease has
//! expired, exactly when another worker may take the job over, so a dead worker never lets more than N
//! run, and never keeps a slot past its lease. Expired entries are removed by the next worker that finds
//! the map full, each removal conditioned on the entry being unchanged.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use crate::clock::Millis;
use crate::error::AwsError;
use crate::job::JobId;

pub mod attr {
    pub const NAME: &str = crate::controls::attr::NAME;
    /// A tenant's slots live in the item `running#<owner>`.
    pub const RUNNING_PREFIX: &str = "running#";
    pub const SLOTS: &str = "slots";
    pub const TOKEN: &str = "token";
    pub const EXPIRES_AT: &str = "expiresAt";
}

/// What asking for a slot came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// The job holds a slot until `release` (or its lease's expiry).
    Taken,
    /// The tenant runs `limit` jobs already: try again later.
    Full { limit: u32 },
    /// Another delivery of this job holds a live slot (so it holds the job's lease too).
    HeldElsewhere { expires_at: Millis },
}

/// One job's entry in its tenant's slots.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub owner: &'a str,
    pub job_id: &'a JobId,
    /// The lease token of the claim this slot is for.
    pub token: &'a str,
    pub expires_at: Millis,
}

#[derive(Debug, Clone)]
pub struct TenantSlots {
    client: Client,
    table: String,
}

/// The highest concurrency limit applied: a tenant's slots are one item, each entry about 100 bytes, and
/// every take or release is billed by the item's whole size (1 WCU per KB), within DynamoDB's 400 KB
/// item limit. A higher limit (from the template or an operator) is taken as this.
pub const MAX_CONCURRENCY: u32 = 1000;

/// How many times a worker removes expired entries, or makes the item, and tries again before it takes
/// the tenant as full (a later delivery tries again).
const TRIES: usize = 4;

impl TenantSlots {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        TenantSlots { client, table: table.into() }
    }

    fn key(owner: &str) -> AttributeValue {
        AttributeValue::S(format!("{}{owner}", attr::RUNNING_PREFIX))
    }

    /// Takes one of `limit` slots of the slot's tenant for its job, if one is free at `now`.
    pub async fn take(&self, slot: Slot<'_>, limit: u32, now: Millis) -> Result<SlotOutcome, AwsError> {
        for _ in 0..TRIES {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(attr::NAME, Self::key(slot.owner))
                .update_expression("SET #slots.#job = :slot")
                .condition_expression(
                    "attribute_exists(#slots) AND size(#slots) < :limit \
                     AND (attribute_not_exists(#slots.#job) OR #slots.#job.#expires < :now)",
                )
                .expression_attribute_names("#slots", attr::SLOTS)
                .expression_attribute_names("#job", slot.job_id.as_str())
                .expression_attribute_names("#expires", attr::EXPIRES_AT)
                .expression_attribute_values(":slot", slot_value(slot.token, slot.expires_at))
                .expression_attribute_values(":limit", AttributeValue::N(limit.to_string()))
                .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(SlotOutcome::Taken),
                Err(err) => err,
            };
            let Some(failed) = err.as_service_error().and_then(|e| match e {
                aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(failed) => {
                    Some(failed)
                }
                _ => None,
            }) else {
                return Err(AwsError::from_sdk("UpdateItem (take a tenant slot)", err));
            };
            let Some(slots) = failed.item().and_then(|item| item.get(attr::SLOTS)).and_then(|s| s.as_m().ok()) else {
                self.create(slot.owner).await?;
                continue;
            };
            let read = entries(slots);
            if let Some((token, expires_at)) = read.get(slot.job_id.as_str())
                && *expires_at >= now
            {
                if *token == slot.token {
                    // This worker's own entry: an earlier try took effect and its response was lost.
                    return Ok(SlotOutcome::Taken);
                }
                return Ok(SlotOutcome::HeldElsewhere { expires_at: *expires_at });
            }
            let expired: Vec<(&str, &AttributeValue)> = slots
                .iter()
                .filter(|(job, _)| read.get(job.as_str()).is_some_and(|(_, expires_at)| *expires_at < now))
                .map(|(job, entry)| (job.as_str(), entry))
                .collect();
            if expired.is_empty() {
                return Ok(SlotOutcome::Full { limit });
            }
            self.remove_expired(slot.owner, &expired).await?;
        }
        Ok(SlotOutcome::Full { limit })
    }

    /// Gives the job's slot back, if this claim (`token`) still holds it.
    pub async fn release(&self, owner: &str, job_id: &JobId, token: &str) -> Result<(), AwsError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::NAME, Self::key(owner))
            .update_expression("REMOVE #slots.#job")
            .condition_expression("#slots.#job.#token = :token")
            .expression_attribute_names("#slots", attr::SLOTS)
            .expression_attribute_names("#job", job_id.as_str())
            .expression_attribute_names("#token", attr::TOKEN)
            .expression_attribute_values(":token", AttributeValue::S(token.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Not this claim's any more (it expired and was removed or taken over): nothing to give back.
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(()),
            Err(err) => Err(AwsError::from_sdk("UpdateItem (release a tenant slot)", err)),
        }
    }

    /// The jobs holding a tenant's slots: job id -> lease expiry (a consistent read; for operators and tests).
    pub async fn holders(&self, owner: &str) -> Result<HashMap<String, Millis>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::NAME, Self::key(owner))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem (tenant slots)", e))?;
        Ok(out
            .item()
            .and_then(|item| item.get(attr::SLOTS))
            .and_then(|s| s.as_m().ok())
            .map(|slots| entries(slots).into_iter().map(|(job, (_, at))| (job.to_string(), at)).collect())
            .unwrap_or_default())
    }

    /// Makes the tenant's item with no slots taken, unless another worker just did.
    async fn create(&self, owner: &str) -> Result<(), AwsError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(attr::NAME, Self::key(owner))
            .item(attr::SLOTS, AttributeValue::M(HashMap::new()))
            .condition_expression("attribute_not_exists(#name)")
            .expression_attribute_names("#name", attr::NAME)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(()),
            Err(err) => Err(AwsError::from_sdk("PutItem (tenant slots)", err)),
        }
    }

    /// Removes entries whose lease expired, each only if it is unchanged (compared whole, so an entry
    /// of any shape can go; a worker that took the job over since holds a fresh entry). A lost race is no
    /// error: the caller looks again.
    async fn remove_expired(&self, owner: &str, expired: &[(&str, &AttributeValue)]) -> Result<(), AwsError> {
        let mut update = self.client.update_item().table_name(&self.table).key(attr::NAME, Self::key(owner));
        let (mut removals, mut conditions) = (Vec::new(), Vec::new());
        for (i, (job, entry)) in expired.iter().take(25).enumerate() {
            removals.push(format!("#slots.#j{i}"));
            conditions.push(format!("#slots.#j{i} = :e{i}"));
            update = update
                .expression_attribute_names(format!("#j{i}"), *job)
                .expression_attribute_values(format!(":e{i}"), (*entry).clone());
        }
        let result = update
            .update_expression(format!("REMOVE {}", removals.join(", ")))
            .condition_expression(conditions.join(" AND "))
            .expression_attribute_names("#slots", attr::SLOTS)
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::info!(owner, removed = removals.len(), "freed tenant slots whose lease expired");
                Ok(())
            }
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(()),
            Err(err) => Err(AwsError::from_sdk("UpdateItem (free expired tenant slots)", err)),
        }
    }
}

fn slot_value(token: &str, expires_at: Millis) -> AttributeValue {
    AttributeValue::M(HashMap::from([
        (attr::TOKEN.to_string(), AttributeValue::S(token.to_string())),
        (attr::EXPIRES_AT.to_string(), AttributeValue::N(expires_at.to_string())),
    ]))
}

/// The entries of a `slots` map: job id -> (token, expiry). An entry that cannot be read counts as
/// expired long ago, so it is removed rather than held forever.
fn entries(slots: &HashMap<String, AttributeValue>) -> HashMap<&str, (&str, Millis)> {
    slots
        .iter()
        .map(|(job, entry)| {
            let entry = entry.as_m().ok();
            let token = entry.and_then(|e| e.get(attr::TOKEN)).and_then(|t| t.as_s().ok()).map_or("", String::as_str);
            let expires_at = entry
                .and_then(|e| e.get(attr::EXPIRES_AT))
                .and_then(|n| n.as_n().ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (job.as_str(), (token, expires_at))
        })
        .collect()
}

/// Per-tenant concurrency as a worker applies it: the deployment's default (`TENANT_CONCURRENCY`; 0 is
/// no limit) unless an operator set the tenant's own (`TenantLimit::Concurrency`).
#[derive(Debug)]
pub struct ConcurrencyLimit {
    slots: TenantSlots,
    limits: crate::controls::TenantLimitsCache,
    default: u32,
}

impl ConcurrencyLimit {
    pub fn new(slots: TenantSlots, limits: crate::controls::TenantLimitsCache, default: u32) -> Self {
        ConcurrencyLimit { slots, limits, default }
    }

    pub fn slots(&self) -> &TenantSlots {
        &self.slots
    }

    /// Takes a slot for the job when its tenant has a limit; `None` when it has none.
    pub async fn take(&self, slot: Slot<'_>, now: Millis) -> Result<Option<SlotOutcome>, AwsError> {
        let limit = self.limits.get(slot.owner, now).await?.concurrency.unwrap_or(self.default).min(MAX_CONCURRENCY);
        if limit == 0 {
            return Ok(None);
        }
        self.slots.take(slot, limit, now).await.map(Some)
    }
}
