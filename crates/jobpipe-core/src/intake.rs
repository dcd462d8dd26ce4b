//! Accepting a job: store it as `queued` (or `scheduled`, to start later), idempotently, then send its
//! message.
//!
//! Callers validate the kind and input first; this module only makes the accepted job durable and
//! dispatched, with the guarantees described in `dispatch`.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock::Millis;
use crate::dispatch::{Dispatcher, SCHEDULE_LEAD, sent_now};
use crate::error::AwsError;
use crate::job::{BatchRef, Job, JobId, JobStatus};
use crate::open_jobs::OpenJobs;
use crate::payload::PayloadStore;
use crate::store::{BatchCreate, CountedCreate, CreateOutcome, JobStore};

/// A job to accept, already validated.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub owner: String,
    pub kind: String,
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub correlation_id: String,
    pub start: StartAt,
    /// Where the job's end is delivered (a URL the webhook policy allows; checked by the caller).
    pub callback_url: Option<String>,
}

/// When a job may start, as its submission says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// As soon as it is accepted.
    #[default]
    Now,
    /// At this time (epoch ms), not before (`runAt`).
    At(Millis),
    /// This long after it is accepted (`delaySeconds`).
    After(Duration),
}

/// How far ahead a job may be scheduled.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(365 * 24 * 3600);

impl StartAt {
    /// When the job may start if accepted at `now`; `None` when at once.
    pub fn run_at(self, now: Millis) -> Option<Millis> {
        match self {
            StartAt::Now => None,
            StartAt::At(at) => Some(at),
            StartAt::After(delay) if delay.is_zero() => None,
            StartAt::After(delay) => Some(now + delay.as_millis() as Millis),
        }
    }

    /// What the request hash adds for this start: a replay must ask for the same start (as given, so a
    /// retried `delaySeconds` is the same request).
    fn hash_part(self) -> Option<String> {
        match self {
            StartAt::Now => None,
            StartAt::At(at) => Some(format!("at:{at}")),
            StartAt::After(delay) => Some(format!("after:{}", delay.as_secs())),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    New(Job),
    /// The idempotency key named an earlier, identical request: this is its job.
    Replayed(Job),
    /// The idempotency key was used with a different request; nothing was stored.
    KeyReused,
    /// The tenant has `limit` open jobs already (`accept_counted`); nothing was stored.
    OverOpenJobs {
        limit: u32,
    },
}

/// What a batch submission came to.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchAccepted {
    New {
        batch_id: JobId,
        jobs: Vec<Job>,
    },
    /// The key named an earlier, identical batch: these are its jobs.
    Replayed {
        batch_id: JobId,
        jobs: Vec<Job>,
    },
    /// The key was used with a different batch; nothing was stored.
    KeyReused,
    /// The tenant has no room for this many more open jobs; nothing was stored.
    OverOpenJobs {
        limit: u32,
    },
}

#[derive(Debug, Clone)]
pub struct Intake<'a> {
    pub store: &'a JobStore,
    pub payloads: &'a PayloadStore,
    pub dispatcher: &'a Dispatcher,
    /// How long a job may wait for its message before the reconciler re-sends it.
    pub dispatch_grace: Duration,
}

impl Intake<'_> {
    pub async fn accept(&self, new: NewJob, now: Millis) -> Result<Accepted, AwsError> {
        self.accept_counted(new, now, None).await
    }

    /// `accept`, counting the job as one of its tenant's at most `limit` open jobs when `open` is given
    /// (`open_jobs`): over it, `Accepted::OverOpenJobs` and nothing stored.
    pub async fn accept_counted(
        &self,
        new: NewJob,
        now: Millis,
        open: Option<(&OpenJobs, u32)>,
    ) -> Result<Accepted, AwsError> {
        let (job_id, request_hash) = identity(&new);
        let job = self.build(new, job_id, request_hash, now).await?;
        let created = match open {
            None => self.store.create(&job).await?,
            Some((open, limit)) => match self.store.create_counted(&job, open.count_up(&job.owner, limit)).await? {
                CountedCreate::Done(created) => *created,
                CountedCreate::OverLimit => return Ok(Accepted::OverOpenJobs { limit }),
            },
        };
        let (job, accepted) = match created {
            CreateOutcome::Created(job) => (job.clone(), Accepted::New(job)),
            CreateOutcome::Replayed(job) => (job.clone(), Accepted::Replayed(job)),
            CreateOutcome::KeyReused(_) => return Ok(Accepted::KeyReused),
        };
        self.ensure_sent(&job, now).await;
        Ok(accepted)
    }

    /// A new job as it is stored, its large input put in S3 first.
    async fn build(&self, new: NewJob, job_id: JobId, request_hash: String, now: Millis) -> Result<Job, AwsError> {
        let run_at = new.start.run_at(now);
        let scheduled = run_at.filter(|at| *at > now);
        let grace = self.dispatch_grace.as_millis() as Millis;
        let dispatch_due_at = match scheduled {
            // Sent by the sweep that finds this check, delayed the rest of the way.
            Some(at) if !sent_now(at, now) => at - SCHEDULE_LEAD.as_millis() as Millis,
            // Sent now, delayed to its time: checked once that has passed.
            Some(at) => at + grace,
            None => now + grace,
        };
        let input = self.payloads.put_input(&job_id, &request_hash[..16], &new.input).await?;
        Ok(Job {
            job_id,
            owner: new.owner,
            kind: new.kind,
            status: if scheduled.is_some() { JobStatus::Scheduled } else { JobStatus::Queued },
            input,
            result: None,
            error: None,
            last_error: None,
            attempts: 0,
            progress: 0,
            created_at: now,
            run_at,
            started_at: None,
            completed_at: None,
            updated_at: now,
            lease: None,
            idempotency_key: new.idempotency_key,
            request_hash,
            correlation_id: new.correlation_id,
            dispatch_due_at: Some(dispatch_due_at),
            dispatched_at: None,
            callback_url: new.callback_url,
            webhooks: Vec::new(),
            batch: None,
        })
    }

    /// Accepts a batch: every job or none, in one transaction (`JobStore::create_batch`), counted against
    /// the tenant's open jobs when `open` is given; then sends each job's message. The batch's id comes
    /// from its key (`owner`'s `key`, like a job's) or is new; its jobs' ids derive from it.
    pub async fn accept_batch(
        &self,
        owner: &str,
        jobs: Vec<NewJob>,
        key: Option<&str>,
        now: Millis,
        open: Option<(&OpenJobs, u32)>,
    ) -> Result<BatchAccepted, AwsError> {
        let batch_id = match key {
            Some(key) => batch_id_of(owner, key),
            None => JobId::new_random(),
        };
        let size = jobs.len() as u32;
        if let Some((_, limit)) = open
            && size > limit
        {
            return Ok(BatchAccepted::OverOpenJobs { limit });
        }
        let batch_hash = batch_hash(&jobs);
        let mut built = Vec::with_capacity(jobs.len());
        for (index, new) in jobs.into_iter().enumerate() {
            let index = index as u32;
            let job_id = JobId::in_batch(&batch_id, index);
            let hash = request_hash_with(&batch_hash, &format!("index:{index}"));
            let mut job = self.build(new, job_id, hash, now).await?;
            job.batch = Some(BatchRef { batch_id: batch_id.clone(), index, size });
            built.push(job);
        }
        let count_up = open.map(|(open, limit)| open.count_up_by(owner, size, limit));
        let (jobs, replayed) = match self.store.create_batch(&built, count_up).await? {
            BatchCreate::Created => (built, false),
            BatchCreate::Replayed => {
                let ids: Vec<JobId> = built.iter().map(|job| job.job_id.clone()).collect();
                (self.store.get_many(&ids).await?, true)
            }
            BatchCreate::KeyReused => return Ok(BatchAccepted::KeyReused),
            BatchCreate::OverLimit => return Ok(BatchAccepted::OverOpenJobs { limit: open.map_or(0, |(_, l)| l) }),
        };
        futures_util::stream::iter(jobs.iter()).for_each_concurrent(10, |job| self.ensure_sent(job, now)).await;
        Ok(if replayed { BatchAccepted::Replayed { batch_id, jobs } } else { BatchAccepted::New { batch_id, jobs } })
    }

    /// The batch a keyed request accepted before, if there is one: `Replayed` (its messages sent again
    /// where they may be missing) when it is the same request, `KeyReused` when the key named another.
    /// Answered before anything that may have changed since (a `runAt` now past, the tenant's limits).
    pub async fn replay_batch(
        &self,
        owner: &str,
        jobs: &[NewJob],
        key: &str,
        now: Millis,
    ) -> Result<Option<BatchAccepted>, AwsError> {
        let batch_id = batch_id_of(owner, key);
        let Some(first) = self.store.get(&JobId::in_batch(&batch_id, 0)).await? else { return Ok(None) };
        let same = first.owner == owner
            && first.batch.as_ref().is_some_and(|batch| batch.size as usize == jobs.len())
            && first.request_hash == request_hash_with(&batch_hash(jobs), "index:0");
        if !same {
            return Ok(Some(BatchAccepted::KeyReused));
        }
        let ids: Vec<JobId> = (0..jobs.len() as u32).map(|index| JobId::in_batch(&batch_id, index)).collect();
        let jobs = self.store.get_many(&ids).await?;
        futures_util::stream::iter(jobs.iter()).for_each_concurrent(10, |job| self.ensure_sent(job, now)).await;
        Ok(Some(BatchAccepted::Replayed { batch_id, jobs }))
    }

    /// The job a keyed request accepted before, if there is one: `Replayed` when it is the same request,
    /// `KeyReused` when the key named another; `None` without a key or an earlier job. For a retry that
    /// would no longer be accepted as new (its `runAt` has passed meanwhile): it is still that job.
    pub async fn replay(&self, new: &NewJob, now: Millis) -> Result<Option<Accepted>, AwsError> {
        if new.idempotency_key.is_none() {
            return Ok(None);
        }
        let (job_id, request_hash) = identity(new);
        let Some(job) = self.store.get(&job_id).await? else { return Ok(None) };
        if job.owner != new.owner || job.request_hash != request_hash {
            return Ok(Some(Accepted::KeyReused));
        }
        self.ensure_sent(&job, now).await;
        Ok(Some(Accepted::Replayed(job)))
    }

    /// Sends the message of a job that has none yet, also for a replay (the first request may have died
    /// before sending). A job due beyond `SCHEDULE_LEAD` is sent later, by the sweep.
    async fn ensure_sent(&self, job: &Job, now: Millis) {
        if job.dispatched_at.is_none()
            && job.status.is_cancellable()
            && sent_now(job.start_after(), now)
            && let Err(error) = self.dispatcher.dispatch(self.store, job, now).await
        {
            // The job is durable; the reconciler sends it after the grace period, so accepting is
            // still a promise we keep.
            tracing::warn!(job_id = %job.job_id, %error, "job stored but its message was not sent; the reconciler will send it");
        }
    }
}

/// A submission's job id (from its key, or new) and request hash (kind, input, start and callback as given).
fn identity(new: &NewJob) -> (JobId, String) {
    let job_id = match &new.idempotency_key {
        Some(key) => JobId::from_idempotency_key(&new.owner, key),
        None => JobId::new_random(),
    };
    (job_id, identity_hash(new))
}

/// A keyed batch's id: a space keeps batch keys apart from jobs' (a client's key has none).
fn batch_id_of(owner: &str, key: &str) -> JobId {
    JobId::from_idempotency_key(owner, &format!("batch {key}"))
}

/// What makes two batches the same request: every job's identity, in order. Each job's request hash is
/// the batch's and its place, so the first job's tells whether a batch is the one asked for.
fn batch_hash(jobs: &[NewJob]) -> String {
    let hashes: Vec<String> = jobs.iter().map(identity_hash).collect();
    request_hash("batch", &Value::from(hashes))
}

/// What makes two submissions of a job the same request: kind, input, start and callback as given.
fn identity_hash(new: &NewJob) -> String {
    let mut hash = request_hash(&new.kind, &new.input);
    if let Some(part) = new.start.hash_part() {
        hash = request_hash_with(&hash, &part);
    }
    if let Some(url) = &new.callback_url {
        hash = request_hash_with(&hash, &format!("callback:{url}"));
    }
    hash
}

/// What makes two submissions "the same request": kind and input, canonically encoded (serde_json
/// sorts object keys).
pub fn request_hash(kind: &str, input: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update([0]);
    hasher.update(input.to_string().as_bytes());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A request hash extended with a further part (a start time).
fn request_hash_with(hash: &str, part: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(hash.as_bytes());
    hasher.update([0]);
    hasher.update(part.as_bytes());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_hash_ignores_key_order_but_not_content() {
        let a = request_hash("echo", &json!({"a": 1, "b": {"c": 2, "d": 3}}));
        let b = request_hash("echo", &json!({"b": {"d": 3, "c": 2}, "a": 1}));
        assert_eq!(a, b);
        assert_ne!(a, request_hash("echo", &json!({"a": 1, "b": {"c": 2, "d": 4}})));
        assert_ne!(a, request_hash("image", &json!({"a": 1, "b": {"c": 2, "d": 3}})));
    }

    #[test]
    fn a_start_is_part_of_the_request_as_given() {
        let after = |s| StartAt::After(Duration::from_secs(s)).hash_part();
        assert_eq!(after(60), after(60));
        assert_ne!(after(60), after(61));
        assert_ne!(StartAt::At(60_000).hash_part(), after(60));
        assert_eq!(StartAt::Now.hash_part(), None);
        assert_eq!(StartAt::After(Duration::ZERO).run_at(5), None);
        assert_eq!(StartAt::After(Duration::from_secs(2)).run_at(5), Some(2_005));
    }
}
