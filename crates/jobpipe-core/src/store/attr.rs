//! Attribute and index names of the jobs table (template.yaml declares the same), written only here:
//! expressions bind them to `#name` placeholders or are built from these constants (`update`).

pub const JOB_ID: &str = "jobId";
pub const OWNER: &str = "owner";
pub const KIND: &str = "kind";
pub const STATUS: &str = "status";
pub const INPUT: &str = "input";
pub const INPUT_REF: &str = "inputRef";
pub const RESULT: &str = "result";
pub const RESULT_REF: &str = "resultRef";
pub const ERROR_CODE: &str = "errorCode";
pub const ERROR_MESSAGE: &str = "errorMessage";
pub const LAST_ERROR_CODE: &str = "lastErrorCode";
pub const LAST_ERROR_MESSAGE: &str = "lastErrorMessage";
pub const ATTEMPTS: &str = "attempts";
pub const PROGRESS: &str = "progress";
pub const CREATED_AT: &str = "createdAt";
/// When a scheduled job may start (epoch ms); absent for a job that may start at once.
pub const RUN_AT: &str = "runAt";
pub const STARTED_AT: &str = "startedAt";
pub const COMPLETED_AT: &str = "completedAt";
pub const UPDATED_AT: &str = "updatedAt";
/// The lease of the worker holding a `processing` job; on a finished job, the token of the write that
/// finished it (a retried write recognises itself by it).
pub const LEASE_TOKEN: &str = "leaseToken";
pub const LEASE_EXPIRES_AT: &str = "leaseExpiresAt";
pub const IDEMPOTENCY_KEY: &str = "idempotencyKey";
pub const REQUEST_HASH: &str = "requestHash";
pub const CORRELATION_ID: &str = "correlationId";
pub const DISPATCH_SHARD: &str = "dispatchShard";
pub const DISPATCH_DUE_AT: &str = "dispatchDueAt";
pub const DISPATCHED_AT: &str = "dispatchedAt";
/// Where the job's end is delivered (a webhook URL).
pub const CALLBACK_URL: &str = "callbackUrl";
/// A webhook delivery's state is kept in the attribute `webhook:<target>` (a map).
pub const WEBHOOK_PREFIX: &str = "webhook:";
/// A batch's job: its batch, its place in it, and the batch's size.
pub const BATCH_ID: &str = "batchId";
pub const BATCH_INDEX: &str = "batchIndex";
pub const BATCH_SIZE: &str = "batchSize";
/// A batch's progress item (`jobId = "batch#<batchId>"`, see `batches`): the batch's tenant, whether it
/// is `open` or `completed`, and the indexes of its ended jobs by how they ended (number sets).
pub const BATCH_ITEM_PREFIX: &str = "batch#";
pub const TENANT: &str = "tenant";
pub const BATCH_STATE: &str = "batchState";
pub const ENDED_COMPLETED: &str = "endedCompleted";
pub const ENDED_FAILED: &str = "endedFailed";
pub const ENDED_CANCELLED: &str = "endedCancelled";
/// DynamoDB TTL attribute (epoch seconds): finished jobs expire.
pub const EXPIRES_AT: &str = "expiresAt";

/// GSI: owner (hash) + createdAt (range), for listing a caller's jobs newest first.
pub const BY_OWNER_INDEX: &str = "byOwner";
/// Sparse GSI: dispatchShard (hash) + dispatchDueAt (range): every unfinished job, by when the
/// reconciler should next look at it.
pub const PENDING_DISPATCH_INDEX: &str = "pendingDispatch";
