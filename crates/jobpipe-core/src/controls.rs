//! Operator controls: which job kinds are paused, and each tenant's own limits (submissions per second,
//! jobs running at once) with the cache both limits are read through.
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
    /// A tenant's own limits live in the item `tenant#<owner>`.
    pub const TENANT_PREFIX: &str = "tenant#";
    pub const SUBMISSIONS_PER_SECOND: &str = "submissionsPerSecond";
    pub const CONCURRENCY: &str = "concurrency";
    pub const OPEN_JOBS: &str = "openJobs";
    /// A tenant's submissions in one second are counted in the item `submissions#<owner>#<epoch second>`.
    pub const SUBMISSIONS_PREFIX: &str = "submissions#";
    pub const COUNT: &str = "count";
    /// TTL: counters are deleted a while after their second.
    pub const EXPIRES_AT: &str = "expiresAt";
}

/// How long a tenant's limits are trusted once read, per execution environment.
pub const TENANT_LIMITS_CACHE: Duration = Duration::from_secs(5);

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

/// A limit a tenant can be given of its own, in place of the deployment's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantLimit {
    /// Submissions per second (`POST /jobs`, a schedule's ticks excepted).
    SubmissionsPerSecond,
    /// Of its jobs, how many run at once.
    Concurrency,
    /// Of its jobs, how many may be waiting or running (accepted and not ended).
    OpenJobs,
}

impl TenantLimit {
    fn attribute(self) -> &'static str {
        match self {
            TenantLimit::SubmissionsPerSecond => attr::SUBMISSIONS_PER_SECOND,
            TenantLimit::Concurrency => attr::CONCURRENCY,
            TenantLimit::OpenJobs => attr::OPEN_JOBS,
        }
    }
}

/// The limits an operator set for one tenant; `None` where the deployment's default applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantLimits {
    pub submissions_per_second: Option<u32>,
    pub concurrency: Option<u32>,
    pub open_jobs: Option<u32>,
}

impl ControlStore {
    /// The limits an operator set for `owner`.
    pub async fn tenant_limits(&self, owner: &str) -> Result<TenantLimits, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::NAME, AttributeValue::S(format!("{}{owner}", attr::TENANT_PREFIX)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem (tenant limits)", e))?;
        let limit = |limit: TenantLimit| {
            out.item()
                .and_then(|item| item.get(limit.attribute()))
                .and_then(|n| n.as_n().ok())
                .and_then(|n| n.parse().ok())
        };
        Ok(TenantLimits {
            submissions_per_second: limit(TenantLimit::SubmissionsPerSecond),
            concurrency: limit(TenantLimit::Concurrency),
            open_jobs: limit(TenantLimit::OpenJobs),
        })
    }

    /// Sets (`Some`) or removes (`None`: the deployment's default applies) one of a tenant's own limits.
    pub async fn set_tenant_limit(&self, owner: &str, limit: TenantLimit, value: Option<u32>) -> Result<(), AwsError> {
        let key = AttributeValue::S(format!("{}{owner}", attr::TENANT_PREFIX));
        let update = self.client.update_item().table_name(&self.table).key(attr::NAME, key);
        let update = match value {
            Some(value) => update
                .update_expression("SET #limit = :limit")
                .expression_attribute_values(":limit", AttributeValue::N(value.to_string())),
            None => update.update_expression("REMOVE #limit"),
        };
        update
            .expression_attribute_names("#limit", limit.attribute())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateItem (tenant limits)", e))?;
        Ok(())
    }

    /// Counts `n` submissions of `owner` in the second `second` if they fit under `limit`, in one
    /// conditional write (concurrent submissions cannot both take the last place). Answers whether they
    /// fit; nothing is counted when they do not.
    pub async fn count_submissions(&self, owner: &str, second: i64, n: u32, limit: u32) -> Result<bool, AwsError> {
        if n > limit {
            return Ok(false);
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::NAME, AttributeValue::S(format!("{}{owner}#{second}", attr::SUBMISSIONS_PREFIX)))
            .update_expression("ADD #count :n SET #expires = :expires")
            .condition_expression("attribute_not_exists(#count) OR #count <= :room")
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_names("#expires", attr::EXPIRES_AT)
            .expression_attribute_values(":n", AttributeValue::N(n.to_string()))
            .expression_attribute_values(":room", AttributeValue::N((limit - n).to_string()))
            .expression_attribute_values(":expires", AttributeValue::N((second + 120).to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(false),
            Err(err) => Err(AwsError::from_sdk("UpdateItem (count submissions)", err)),
        }
    }
}

/// What a submission quota decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over the tenant's limit this second: retry after `retry_after_ms`.
    Exceeded {
        limit: u32,
        retry_after_ms: Millis,
    },
}

/// Tenants' own limits as one execution environment sees them: each tenant's read at most once per
/// `TENANT_LIMITS_CACHE`, so a limit set by an operator applies within that time.
#[derive(Debug)]
pub struct TenantLimitsCache {
    store: ControlStore,
    read: Mutex<std::collections::HashMap<String, (Millis, TenantLimits)>>,
}

impl TenantLimitsCache {
    pub fn new(store: ControlStore) -> Self {
        TenantLimitsCache { store, read: Mutex::new(Default::default()) }
    }

    pub fn store(&self) -> &ControlStore {
        &self.store
    }

    /// `owner`'s own limits, from the cache while it is fresh.
    pub async fn get(&self, owner: &str, now: Millis) -> Result<TenantLimits, AwsError> {
        let cache = TENANT_LIMITS_CACHE.as_millis() as Millis;
        if let Some((read_at, limits)) = self.read.lock().expect("not poisoned").get(owner)
            && now - read_at < cache
        {
            return Ok(*limits);
        }
        let limits = self.store.tenant_limits(owner).await?;
        let mut read = self.read.lock().expect("not poisoned");
        // A bound on what one execution environment remembers.
        if read.len() > 10_000 {
            read.clear();
        }
        read.insert(owner.to_string(), (now, limits));
        Ok(limits)
    }
}

/// The quotas a submission meets: submissions per second (the deployment's default,
/// `TENANT_SUBMISSIONS_PER_SECOND`, unless an operator set the tenant's own; counted per second in the
/// control table) and open jobs (`TENANT_OPEN_JOBS` or the tenant's own; counted by `open_jobs`). 0 is no
/// limit.
#[derive(Debug)]
pub struct SubmissionQuota {
    limits: TenantLimitsCache,
    default_per_second: u32,
    open_jobs: Option<(crate::open_jobs::OpenJobs, u32)>,
}

impl SubmissionQuota {
    pub fn new(store: ControlStore, default_per_second: u32) -> Self {
        SubmissionQuota { limits: TenantLimitsCache::new(store), default_per_second, open_jobs: None }
    }

    /// Also bounds each tenant's open jobs, by `default` unless it has its own limit.
    pub fn with_open_jobs(mut self, open_jobs: crate::open_jobs::OpenJobs, default: u32) -> Self {
        self.open_jobs = Some((open_jobs, default));
        self
    }

    /// The counter and limit of `owner`'s open jobs, when it has a limit.
    pub async fn open_jobs_limit(
        &self,
        owner: &str,
        now: Millis,
    ) -> Result<Option<(&crate::open_jobs::OpenJobs, u32)>, AwsError> {
        let Some((open_jobs, default)) = &self.open_jobs else { return Ok(None) };
        let limit = self.limits.get(owner, now).await?.open_jobs.unwrap_or(*default);
        Ok((limit > 0).then_some((open_jobs, limit)))
    }

    /// `owner`'s submissions per second, when it has a limit.
    pub async fn submissions_per_second_limit(&self, owner: &str, now: Millis) -> Result<Option<u32>, AwsError> {
        let limit = self.limits.get(owner, now).await?.submissions_per_second.unwrap_or(self.default_per_second);
        Ok((limit > 0).then_some(limit))
    }

    /// Admits `n` submissions of `owner` at `now`, or says when to retry.
    pub async fn admit(&self, owner: &str, n: u32, now: Millis) -> Result<Admission, AwsError> {
        let limits = self.limits.get(owner, now).await?;
        let limit = limits.submissions_per_second.unwrap_or(self.default_per_second);
        if limit == 0 {
            return Ok(Admission::Admitted);
        }
        let second = now.div_euclid(1000);
        if self.limits.store().count_submissions(owner, second, n, limit).await? {
            Ok(Admission::Admitted)
        } else {
            Ok(Admission::Exceeded { limit, retry_after_ms: (second + 1) * 1000 - now })
        }
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
    /// (throttling, a 5xx) falls back on the last known set. Any other failure (no permission, no table),
    /// or one with nothing known yet, is the caller's error: a job never runs because its pause could not
    /// be read.
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
                let last_known = self.cached.lock().expect("not poisoned").as_ref().map(|(_, kinds)| kinds.clone());
                match last_known {
                    Some(kinds) if error.is_retryable() => {
                        tracing::warn!(%error, "reading the paused kinds failed; using the last known");
                        Ok(kinds)
                    }
                    _ => Err(error),
                }
            }
        }
    }
}
