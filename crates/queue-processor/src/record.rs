//! One SQS record: claim the job, run it, and record the outcome, all fenced by the lease.

use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsMessage;
use jobpipe_core::backoff::{HELD_FOR_SLOT, throttled_delay};
use jobpipe_core::clock::Millis;
use jobpipe_core::dispatch::{
    CORRELATION_ID_ATTRIBUTE, HELD_ATTRIBUTE, JobMessage, KIND_ATTRIBUTE, TENANT_ATTRIBUTE, within_message_delay,
};
use jobpipe_core::job::{ErrorInfo, Job, JobError, JobId, JobStatus, Lease};
use jobpipe_core::kinds::{BoxFuture, JobContext, ProgressReporter};
use jobpipe_core::store::{ClaimOutcome, FenceOutcome, ForceFailOutcome, JobStore, Release};
use jobpipe_core::tenant_slots::{Slot, SlotOutcome};
use jobpipe_core::{AwsError, Clock};
use serde_json::Value;
use tracing::Instrument;

use crate::{Processor, SERVICE};
use jobpipe_core::metrics::{self, Unit};

/// Past the Lambda deadline the worker is gone; the lease outlives it by this much so a write that was
/// already on the wire cannot race a takeover.
const LEASE_GRACE_MS: Millis = 5_000;
/// A job is stopped this long before the deadline, leaving time to record the outcome.
const FINISH_MARGIN_MS: Millis = 2_000;

/// What happened to one record. Only some outcomes acknowledge (delete) the message.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    Completed(Job),
    /// Failed for good: a permanent error, or the last allowed attempt failed.
    Failed(Job),
    /// Released for another attempt; the message comes back after `delay`.
    RetryScheduled {
        attempt: u32,
        delay: Duration,
    },
    /// Throttled (a quota said "not now"), or its kind is paused: sent again with a delay of `delay` as a
    /// new message (a claimed job released with its attempt given back first), so the wait counts against
    /// neither `MAX_ATTEMPTS` nor the queue's `maxReceiveCount`. This message is acknowledged.
    Requeued {
        delay: Duration,
    },
    /// Throttled or paused, but the delayed message could not be sent: this message comes back after
    /// `delay`.
    Throttled {
        delay: Duration,
    },
    /// Finished before (a duplicate delivery): nothing ran.
    AlreadyFinished(Job),
    /// Another delivery holds a live lease: retried after it expires, never dropped.
    HeldElsewhere {
        expires_at: Millis,
    },
    /// Scheduled for later (the message came early): it comes back at `run_at`, no attempt spent.
    NotYetDue {
        run_at: Millis,
    },
    /// Scheduled further ahead than one message delay: a stray copy (a duplicate, a redrive), acknowledged.
    /// The job's dispatch check sends its message in time, so waiting here would only spend receives
    /// toward the dead-letter queue.
    StrayEarly {
        run_at: Millis,
    },
    /// The lease was lost while running (taken over): nothing was written; redelivery settles it.
    LeaseLost,
    /// The body cannot be processed, ever: left to SQS to move to the dead-letter queue.
    Poison(String),
    /// An AWS call failed; the message is retried.
    Transient(String),
}

impl RecordOutcome {
    /// Whether the message may be deleted. Everything else is reported as a batch item failure.
    pub fn acknowledges(&self) -> bool {
        matches!(
            self,
            RecordOutcome::Completed(_)
                | RecordOutcome::Failed(_)
                | RecordOutcome::AlreadyFinished(_)
                | RecordOutcome::Requeued { .. }
                | RecordOutcome::StrayEarly { .. }
        )
    }
}

impl Processor {
    pub async fn process_record(&self, record: &SqsMessage, deadline: Option<Millis>) -> RecordOutcome {
        let correlation_id = record
            .message_attributes
            .get(CORRELATION_ID_ATTRIBUTE)
            .and_then(|a| a.string_value.clone())
            .unwrap_or_default();
        let message_id = record.message_id.clone().unwrap_or_default();
        // Set by our dispatcher on every job message; only decides waiting for a paused kind early (the
        // claimed job's own kind decides it otherwise).
        let kind = record.message_attributes.get(KIND_ATTRIBUTE).and_then(|a| a.string_value.clone());
        let carried = Carried {
            tenant: record.message_attributes.get(TENANT_ATTRIBUTE).and_then(|a| a.string_value.clone()),
            held: record
                .message_attributes
                .get(HELD_ATTRIBUTE)
                .and_then(|a| a.string_value.as_deref()?.parse().ok())
                .unwrap_or(0),
        };
        let (job_id, outcome) = match JobMessage::parse(record.body.as_deref()) {
            Err(poison) => (String::new(), RecordOutcome::Poison(poison.to_string())),
            Ok(message) => {
                let span = tracing::info_span!("record", job_id = %message.job_id, %correlation_id, %message_id);
                let outcome = match self
                    .run_job(&message.job_id, kind.as_deref(), &carried, deadline)
                    .instrument(span)
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        tracing::warn!(job_id = %message.job_id, %correlation_id, %error, retryable = error.is_retryable(), "record failed; SQS will redeliver it");
                        RecordOutcome::Transient(error.to_string())
                    }
                };
                (message.job_id.to_string(), outcome)
            }
        };
        if let RecordOutcome::Poison(reason) = &outcome {
            tracing::error!(%message_id, %job_id, %correlation_id, %reason, "poison message; leaving it for the dead-letter queue");
        }
        if let RecordOutcome::Completed(job) | RecordOutcome::Failed(job) = &outcome {
            job_ended_metrics(job);
        }
        self.after(record, &outcome).await;
        outcome
    }

    async fn run_job(
        &self,
        job_id: &JobId,
        kind: Option<&str>,
        carried: &Carried,
        deadline: Option<Millis>,
    ) -> Result<RecordOutcome, AwsError> {
        let paused = match &self.paused {
            None => Default::default(),
            Some(paused) => match paused.get(self.clock.as_ref()).await {
                Ok(paused) => paused,
                Err(error) => {
                    // Unknown whether its kind is paused: hold it as if it were, without a claim, so
                    // neither an attempt nor a receive count is spent while the control table is unreadable.
                    tracing::error!(%error, retryable = error.is_retryable(), "the paused kinds cannot be read; holding the job back");
                    metrics::emit(SERVICE, "PausedKindsUnreadable", Unit::Count, 1.0, &[]);
                    return self.hold(job_id, "the paused kinds cannot be read", None).await;
                }
            },
        };
        if kind.is_some_and(|kind| paused.contains(kind)) {
            return self.hold(job_id, "its kind is paused", None).await;
        }
        let now = self.clock.now_ms();
        let lease = Lease { token: uuid::Uuid::new_v4().to_string(), expires_at: self.lease_expiry(now, deadline) };
        // Per-tenant concurrency: a slot before the claim, given back whatever the claim comes to.
        let Some(limit) = &self.concurrency else {
            return self.claim_and_run(job_id, &lease, &paused, None, deadline).await;
        };
        let owner = match &carried.tenant {
            Some(owner) => owner.clone(),
            None => match self.store.get(job_id).await? {
                Some(job) if job.status.is_terminal() => return Ok(RecordOutcome::AlreadyFinished(job)),
                Some(job) => job.owner,
                None => return Ok(RecordOutcome::Poison(format!("job {job_id} does not exist"))),
            },
        };
        let slot = Slot { owner: &owner, job_id, token: &lease.token, expires_at: lease.expires_at };
        match limit.take(slot, now).await {
            // No limit for this tenant; the claim still checks the message named the job's own.
            Ok(None) => return self.claim_and_run(job_id, &lease, &paused, Some(&owner), deadline).await,
            Ok(Some(SlotOutcome::Taken)) => {}
            Ok(Some(SlotOutcome::Full { limit })) => {
                tracing::info!(
                    owner,
                    limit,
                    held = carried.held,
                    "the tenant runs its limit of jobs already; holding the job back"
                );
                metrics::emit(SERVICE, "TenantConcurrencyHolds", Unit::Count, 1.0, &[]);
                return self.hold(job_id, "its tenant runs its limit of jobs", Some(carried.held)).await;
            }
            Ok(Some(SlotOutcome::HeldElsewhere { expires_at })) => {
                return Ok(RecordOutcome::HeldElsewhere { expires_at });
            }
            Err(error) => {
                // Unknown whether the tenant has room: hold the job as if it had none, without a claim,
                // so neither an attempt nor a receive count is spent while the control table fails.
                tracing::error!(owner, %error, retryable = error.is_retryable(), "the tenant's slots cannot be read or taken; holding the job back");
                metrics::emit(SERVICE, "TenantSlotsUnavailable", Unit::Count, 1.0, &[]);
                return self.hold(job_id, "its tenant's slots cannot be taken", Some(carried.held)).await;
            }
        }
        let outcome = self.claim_and_run(job_id, &lease, &paused, Some(&owner), deadline).await;
        if let Err(error) = limit.slots().release(&owner, job_id, &lease.token).await {
            tracing::warn!(owner, %error, "could not give the tenant slot back; it frees itself when the lease expires");
        }
        outcome
    }

    /// Claims the job with `lease` and runs it. `slot_owner` is the tenant the message named when
    /// concurrency is limited (this worker holds that tenant's slot if the tenant has a limit): a job of
    /// another tenant is given back and sent again under its own.
    async fn claim_and_run(
        &self,
        job_id: &JobId,
        lease: &Lease,
        paused: &std::collections::BTreeSet<String>,
        slot_owner: Option<&str>,
        deadline: Option<Millis>,
    ) -> Result<RecordOutcome, AwsError> {
        let lease = lease.clone();
        let now = self.clock.now_ms();
        let job = match self.store.claim(job_id, &lease, self.settings.max_attempts, now).await? {
            ClaimOutcome::Claimed(job) => job,
            ClaimOutcome::AlreadyFinished(job) => {
                tracing::info!(status = job.status.as_str(), "duplicate delivery of a finished job; acknowledged");
                return Ok(RecordOutcome::AlreadyFinished(job));
            }
            ClaimOutcome::HeldElsewhere { expires_at } => {
                tracing::info!(lease_expires_at = expires_at, "job is leased by another worker; retry after the lease");
                return Ok(RecordOutcome::HeldElsewhere { expires_at });
            }
            ClaimOutcome::NotYetDue { run_at } if !within_message_delay(run_at, now) => {
                tracing::info!(
                    run_at,
                    "a message for a job scheduled beyond one message delay; its dispatch check sends it"
                );
                return Ok(RecordOutcome::StrayEarly { run_at });
            }
            ClaimOutcome::NotYetDue { run_at } => {
                tracing::info!(run_at, "scheduled job's message came before its time; it comes back then");
                return Ok(RecordOutcome::NotYetDue { run_at });
            }
            ClaimOutcome::AttemptsExhausted(job) => return self.give_up_on_crashed(job).await,
            ClaimOutcome::NotFound => {
                return Ok(RecordOutcome::Poison(format!("job {job_id} does not exist")));
            }
        };
        if let Some(slot_owner) = slot_owner
            && slot_owner != job.owner
        {
            // The message named another tenant than the job's (not one our dispatcher sent): the slot taken
            // is the wrong one. Give the job back; its message is sent again with its true tenant.
            tracing::error!(slot_owner, owner = %job.owner, "the message's tenant is not the job's; sending it again");
            let info = ErrorInfo { code: "wrong_tenant".into(), message: "the message named another tenant".into() };
            return Ok(match self.store.release(&job.job_id, &lease.token, &info, now, Release::Throttled).await? {
                FenceOutcome::Done(job) => {
                    self.requeue(&job, Duration::ZERO, 0, "its message named another tenant").await
                }
                FenceOutcome::LeaseLost(_) => RecordOutcome::LeaseLost,
            });
        }
        if paused.contains(&job.kind) {
            // A message without its kind (sent by hand, or by an older version): found out by the claim.
            let info = ErrorInfo { code: "kind_paused".into(), message: format!("kind {} is paused", job.kind) };
            return Ok(match self.store.release(&job.job_id, &lease.token, &info, now, Release::Throttled).await? {
                FenceOutcome::Done(job) => {
                    self.requeue(&job, self.settings.paused_recheck, 0, "its kind is paused").await
                }
                FenceOutcome::LeaseLost(_) => RecordOutcome::LeaseLost,
            });
        }
        tracing::info!(attempt = job.attempts, kind = %job.kind, "claimed job");
        if job.attempts == 1 {
            // Queue wait: from when it may start (acceptance, or its `runAt`) to the first claim.
            let wait = (now - job.start_after()).max(0) as f64;
            metrics::emit(SERVICE, "QueueWait", Unit::Milliseconds, wait, &[("Kind", job.kind.as_str())]);
        }

        let result = self.execute(&job, &lease, deadline).await;
        let now = self.clock.now_ms();
        let outcome = match result {
            Ok(value) => {
                let payload = self.payloads.put_result(&job.job_id, &value).await?;
                match self.store.complete(&job.job_id, &lease.token, &payload, now).await? {
                    FenceOutcome::Done(job) => RecordOutcome::Completed(job),
                    FenceOutcome::LeaseLost(_) => RecordOutcome::LeaseLost,
                }
            }
            Err(error) if error.throttled => {
                match self.store.release(&job.job_id, &lease.token, &error.info(), now, Release::Throttled).await? {
                    FenceOutcome::Done(job) => {
                        let delay = throttled_delay(self.settings.throttle_window);
                        self.requeue(&job, delay, 0, "throttled").await
                    }
                    FenceOutcome::LeaseLost(_) => RecordOutcome::LeaseLost,
                }
            }
            Err(error) if !error.retryable || job.attempts >= self.settings.max_attempts => {
                let info = if error.retryable {
                    ErrorInfo {
                        code: error.code.clone(),
                        message: format!("gave up after {} attempts: {}", job.attempts, error.message),
                    }
                } else {
                    error.info()
                };
                match self.store.fail(&job.job_id, &lease.token, &info, now).await? {
                    FenceOutcome::Done(job) => RecordOutcome::Failed(job),
                    FenceOutcome::LeaseLost(_) => RecordOutcome::LeaseLost,
                }
            }
            Err(error) => {
                match self.store.release(&job.job_id, &lease.token, &error.info(), now, Release::Retry).await? {
                    FenceOutcome::Done(job) => {
                        let delay = self.settings.backoff.delay(job.attempts);
                        tracing::info!(error = %error, attempt = job.attempts, delay_ms = delay.as_millis() as u64, "retryable failure; retrying later");
                        RecordOutcome::RetryScheduled { attempt: job.attempts, delay }
                    }
                    FenceOutcome::LeaseLost(_) => RecordOutcome::LeaseLost,
                }
            }
        };
        match &outcome {
            RecordOutcome::Completed(job) => {
                tracing::info!(duration_ms = job.duration_ms(), "job completed")
            }
            RecordOutcome::Failed(job) => tracing::info!(error = ?job.error, "job failed"),
            RecordOutcome::LeaseLost => {
                tracing::warn!("lease lost while running; outcome discarded")
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Holds a job back without claiming it: its message is sent again later and this one acknowledged,
    /// so the job stays as it is (its attempts untouched) and no receive count is spent. A paused kind's
    /// job (`held: None`) is looked at again after `paused_recheck`; one held `held` times for a
    /// concurrency slot after `HELD_FOR_SLOT`'s delay. A job that has ended meanwhile (cancelled, expired) is
    /// not held: its message is done.
    async fn hold(&self, job_id: &JobId, why: &'static str, held: Option<u32>) -> Result<RecordOutcome, AwsError> {
        let Some(job) = self.store.get(job_id).await? else {
            return Ok(RecordOutcome::Poison(format!("job {job_id} does not exist")));
        };
        if job.status.is_terminal() {
            return Ok(RecordOutcome::AlreadyFinished(job));
        }
        Ok(match held {
            None => self.requeue(&job, self.settings.paused_recheck, 0, why).await,
            Some(held) => self.requeue(&job, HELD_FOR_SLOT.delay(held + 1), held + 1, why).await,
        })
    }

    /// Sends the job's message again, delayed (SQS delays stop at 15 minutes), so this delivery can be
    /// acknowledged; if that send fails, this message carries the wait instead. `held` is carried in the
    /// message (see `hold`); `why` is for the log.
    async fn requeue(&self, job: &Job, delay: Duration, held: u32, why: &'static str) -> RecordOutcome {
        let delay = delay.min(Duration::from_secs(900));
        match self.dispatcher.send_held(job, delay, held).await {
            Ok(()) => {
                tracing::info!(delay_ms = delay.as_millis() as u64, why, "sent again later, no attempt spent");
                RecordOutcome::Requeued { delay }
            }
            Err(error) => {
                tracing::warn!(%error, why, "could not send the delayed message; this one comes back instead");
                RecordOutcome::Throttled { delay }
            }
        }
    }

    /// Earlier workers claimed the job and died every time: fail it rather than run it again.
    async fn give_up_on_crashed(&self, job: Job) -> Result<RecordOutcome, AwsError> {
        let last =
            job.last_error.clone().map(|e| format!(": last error {}: {}", e.code, e.message)).unwrap_or_default();
        let info = ErrorInfo {
            code: "max_attempts_exceeded".into(),
            message: format!("{} attempts started without finishing{last}", job.attempts),
        };
        Ok(match self.store.force_fail(&job.job_id, &info, self.clock.now_ms()).await? {
            ForceFailOutcome::Failed(job) => {
                tracing::warn!("job failed: attempts exhausted by workers that never finished");
                RecordOutcome::Failed(job)
            }
            ForceFailOutcome::AlreadyFinished(job) => RecordOutcome::AlreadyFinished(job),
            ForceFailOutcome::LeaseLive => RecordOutcome::HeldElsewhere { expires_at: self.clock.now_ms() },
            ForceFailOutcome::NotFound => RecordOutcome::Poison(format!("job {} does not exist", job.job_id)),
        })
    }

    /// Runs the kind's handler with the job's input, within the deadline, containing panics.
    async fn execute(&self, job: &Job, lease: &Lease, deadline: Option<Millis>) -> Result<Value, JobError> {
        let Some(kind) = self.kinds.get(&job.kind) else {
            return Err(JobError::permanent("unknown_kind", format!("no handler for kind {:?} here", job.kind)));
        };
        let input = self.payloads.resolve(&job.input).await.map_err(|e| {
            let code = "input_unavailable";
            if e.is_retryable() {
                JobError::retryable(code, e.to_string())
            } else {
                JobError::permanent(code, e.to_string())
            }
        })?;
        let progress =
            StoreProgress { store: &self.store, clock: self.clock.as_ref(), job_id: &job.job_id, token: &lease.token };
        let ctx = JobContext {
            job,
            input: &input,
            attempt: job.attempts,
            deadline,
            progress: &progress,
            results: &self.payloads,
        };
        let run = catch_panics(kind.run(ctx));
        match deadline {
            None => run.await,
            Some(deadline) => {
                let budget = (deadline - self.clock.now_ms() - FINISH_MARGIN_MS).max(0) as u64;
                tokio::time::timeout(Duration::from_millis(budget), run).await.unwrap_or_else(|_| {
                    Err(JobError::retryable(
                        "deadline_exceeded",
                        "the invocation ran out of time before the job finished",
                    ))
                })
            }
        }
    }

    fn lease_expiry(&self, now: Millis, deadline: Option<Millis>) -> Millis {
        match deadline {
            Some(deadline) if deadline > now => deadline + LEASE_GRACE_MS,
            _ => now + self.settings.default_lease.as_millis() as Millis,
        }
    }

    /// Sets when a message that is not acknowledged comes back: after the backoff for a retry, when the
    /// other worker's lease ends, at a scheduled job's time, or at once for poison (it reaches the dead-letter queue sooner).
    async fn after(&self, record: &SqsMessage, outcome: &RecordOutcome) {
        let visibility = match outcome {
            RecordOutcome::RetryScheduled { delay, .. } | RecordOutcome::Throttled { delay } => delay.as_secs(),
            RecordOutcome::HeldElsewhere { expires_at } => {
                ((expires_at - self.clock.now_ms()).max(0) as u64).div_ceil(1000) + 1
            }
            RecordOutcome::NotYetDue { run_at } => ((run_at - self.clock.now_ms()).max(0) as u64).div_ceil(1000),
            RecordOutcome::Poison(_) => 0,
            _ => return,
        };
        let known = self.dispatcher.queue_urls();
        let queue_url = queue_url_of(record, &known, self.settings.endpoint_url.as_deref());
        let (Some(queue_url), Some(receipt)) = (queue_url, record.receipt_handle.as_deref()) else {
            return;
        };
        let result = self
            .sqs
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(visibility.min(43_200) as i32)
            .send()
            .await;
        if let Err(error) = result {
            let error = AwsError::from_sdk("ChangeMessageVisibility", error);
            tracing::warn!(%error, "could not set the retry delay; the queue's visibility timeout applies");
        }
    }
}

/// What a job message carries besides the job id (set by our dispatcher; checked against the job).
#[derive(Debug, Default)]
struct Carried {
    /// The job's owner, whose concurrency slot is taken before the claim.
    tenant: Option<String>,
    /// How often the job was held back for a slot.
    held: u32,
}

/// `JobsCompleted` or `JobsFailed` (by kind and error code), and `JobDuration` (by kind), for a job that
/// just ended here.
pub(crate) fn job_ended_metrics(job: &Job) {
    let kind = job.kind.as_str();
    match (job.status, &job.error) {
        (JobStatus::Completed, _) => metrics::emit(SERVICE, "JobsCompleted", Unit::Count, 1.0, &[("Kind", kind)]),
        (JobStatus::Failed, error) => {
            let code = error.as_ref().map(|e| e.code.as_str()).unwrap_or("unknown");
            metrics::emit(SERVICE, "JobsFailed", Unit::Count, 1.0, &[("Kind", kind), ("ErrorCode", code)])
        }
        _ => return,
    }
    if let Some(duration) = job.duration_ms() {
        metrics::emit(SERVICE, "JobDuration", Unit::Milliseconds, duration as f64, &[("Kind", kind)]);
    }
}

/// The queue URL of a record. Queues we were configured with are matched by name; otherwise the URL
/// is built from the ARN (`arn:aws:sqs:region:account:name`) and the client's endpoint.
fn queue_url_of(record: &SqsMessage, known: &[&str], endpoint: Option<&str>) -> Option<String> {
    let arn = record.event_source_arn.as_deref()?;
    let parts: Vec<&str> = arn.split(':').collect();
    let [_, _, "sqs", region, account, name] = parts.as_slice() else {
        return None;
    };
    if let Some(url) = known.iter().find(|url| url.rsplit('/').next() == Some(name)) {
        return Some(url.to_string());
    }
    let base = endpoint.map(String::from).unwrap_or_else(|| format!("https://sqs.{region}.amazonaws.com"));
    Some(format!("{}/{account}/{name}", base.trim_end_matches('/')))
}

/// Progress goes to the job item, fenced by the lease, only when it changes.
struct StoreProgress<'a> {
    store: &'a JobStore,
    clock: &'a dyn Clock,
    job_id: &'a JobId,
    token: &'a str,
}

impl ProgressReporter for StoreProgress<'_> {
    fn report(&self, percent: u8) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.store.report_progress(self.job_id, self.token, percent, self.clock.now_ms()).await
            {
                tracing::warn!(%error, "could not record progress");
            }
        })
    }
}

/// A panic inside a job kind becomes a retryable error, so the lease is released and the job is
/// retried (and eventually failed) like any other failure.
async fn catch_panics(mut run: BoxFuture<'_, Result<Value, JobError>>) -> Result<Value, JobError> {
    std::future::poll_fn(move |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(cx))) {
        Ok(poll) => poll,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            tracing::error!(%message, "job handler panicked");
            Poll::Ready(Err(JobError::retryable("job_panicked", message)))
        }
    })
    .await
}
