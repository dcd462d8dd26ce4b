//! Operator controls: which job kinds are paused.
//!
//! One item of the control table (`name = "pausedKinds"`) holds the paused kinds as a string set, changed
//! with `ADD` and `DELETE` so two operators pausing different kinds at once both win. The queue processor
//! reads it at most once per `PAUSED_KINDS_CACHE` per execution environment (`PausedKinds`), so a busy
//! pipeline does not turn this one item into a hot key: a pause takes effect within that time. A lasting
//! failure to read it is an error, never "nothing is paused".

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::clock::{Clock, Millis};
use crate::error::AwsError;

/// Every attribute name of the control table, written only here.
pub mod attr {
    pub const NAME: &str = "name";
    pub const KINDS: &str = "kinds";
    /// The item holding the paused kinds.
    pub const PAUSED_KINDS_ITEM: &str = "pausedKinds";
}

/// How long an execution environment trusts the paused kinds it read.
pub const PAUSED_KINDS_CACHE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ControlStore {
    client: Client,
    table: String,
}

impl ControlStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        ControlStore { client, table: table.into() }
    }

    /// The kinds paused now (a consistent read).
    pub async fn paused_kinds(&self) -> Result<BTreeSet<String>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::NAME, AttributeValue::S(attr::PAUSED_KINDS_ITEM.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem (paused kinds)", e))?;
        Ok(out
            .item()
            .and_then(|item| item.get(attr::KINDS))
            .and_then(|kinds| kinds.as_ss().ok())
            .map(|kinds| kinds.iter().cloned().collect())
            .unwrap_or_default())
    }

    /// Pauses `kind`: its jobs wait, queued, until it is resumed. Pausing a paused kind changes nothing.
    pub async fn pause_kind(&self, kind: &str) -> Result<BTreeSet<String>, AwsError> {
        self.change(kind, "ADD", "UpdateItem (pause kind)").await
    }

    /// Resumes `kind`; resuming a kind that is not paused changes nothing.
    pub async fn resume_kind(&self, kind: &str) -> Result<BTreeSet<String>, AwsError> {
        self.change(kind, "DELETE", "UpdateItem (resume kind)").await
    }

    async fn change(&self, kind: &str, verb: &str, operation: &str) -> Result<BTreeSet<String>, AwsError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::NAME, AttributeValue::S(attr::PAUSED_KINDS_ITEM.into()))
            .update_expression(format!("{verb} #kinds :kind"))
            .expression_attribute_names("#kinds", attr::KINDS)
            .expression_attribute_values(":kind", AttributeValue::Ss(vec![kind.to_string()]))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(operation, e))?;
        Ok(out
            .attributes()
            .and_then(|item| item.get(attr::KINDS))
            .and_then(|kinds| kinds.as_ss().ok())
            .map(|kinds| kinds.iter().cloned().collect())
            .unwrap_or_default())
    }
}

/// The paused kinds as one execution environment sees them: read at most once per `PAUSED_KINDS_CACHE`.
#[derive(Debug)]
pub struct PausedKinds {
    store: ControlStore,
    cached: Mutex<Option<(Millis, BTreeSet<String>)>>,
}

impl PausedKinds {
    pub fn new(store: ControlStore) -> Self {
        PausedKinds { store, cached: Mutex::new(None) }
    }

    /// The paused kinds, from the cache while it is fresh. A read that failed for a passing reason
    /// (throttling, a 5xx) falls back on the last known set, or on none paused: the claim that follows
    /// needs the same DynamoDB anyway. Any other failure (no permission, no table) is the caller's error,
    /// so a broken deployment never runs a paused kind's jobs unnoticed.
    pub async fn get(&self, clock: &dyn Clock) -> Result<BTreeSet<String>, AwsError> {
        let now = clock.now_ms();
        let cache = PAUSED_KINDS_CACHE.as_millis() as Millis;
        if let Some((read_at, kinds)) = self.cached.lock().expect("not poisoned").as_ref()
            && now - read_at < cache
        {
            return Ok(kinds.clone());
        }
        match self.store.paused_kinds().await {
            Ok(kinds) => {
                *self.cached.lock().expect("not poisoned") = Some((now, kinds.clone()));
                Ok(kinds)
            }
            Err(error) => {
                if !error.is_retryable() {
                    return Err(error);
                }
                tracing::warn!(%error, "reading the paused kinds failed; using the last known");
                Ok(self
                    .cached
                    .lock()
                    .expect("not poisoned")
                    .as_ref()
                    .map(|(_, kinds)| kinds.clone())
                    .unwrap_or_default())
            }
        }
    }
}
