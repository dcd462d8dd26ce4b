//! Webhooks: what a tenant is told when its jobs end, signed as the Standard Webhooks specification says.
//!
//! A job may name a callback URL, and a tenant may register endpoints for the events it wants. When a job
//! ends, the webhook sender (the `webhook-sender` function) turns the table's stream record into one
//! `Delivery` per target and puts each on the webhook queue; each is then sent, retried with backoff on
//! what may pass (network errors, timeouts, 408, 429, 5xx) for about a day (the same message, hidden
//! until its next attempt), and dead-lettered where an
//! operator can list and redeliver it. Every attempt carries the same `webhook-id`, so a receiver can
//! de-duplicate.
//!
//! - `target`: which URLs and addresses may be called (`https`, no private or metadata addresses).
//! - `signing`: the `whsec_` secrets and the signature header, through the specification's own crate.
//! - `store`: the webhooks table (endpoints, a tenant's secrets, dead letters).

pub mod signing;
pub mod store;
pub mod target;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::clock::{Millis, to_rfc3339};
use crate::job::{Job, JobId, JobStatus};
use crate::store::BatchProgress;

/// What happened, as a delivery's `type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WebhookEvent {
    #[serde(rename = "job.completed")]
    JobCompleted,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "batch.completed")]
    BatchCompleted,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 3] =
        [WebhookEvent::JobCompleted, WebhookEvent::JobFailed, WebhookEvent::BatchCompleted];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::JobCompleted => "job.completed",
            WebhookEvent::JobFailed => "job.failed",
            WebhookEvent::BatchCompleted => "batch.completed",
        }
    }

    pub fn parse(text: &str) -> Option<WebhookEvent> {
        WebhookEvent::ALL.into_iter().find(|event| event.as_str() == text)
    }

    /// The event a job's status is, if it is one (a cancelled job is the caller's own doing: no event).
    pub fn of_job(status: JobStatus) -> Option<WebhookEvent> {
        match status {
            JobStatus::Completed => Some(WebhookEvent::JobCompleted),
            JobStatus::Failed => Some(WebhookEvent::JobFailed),
            _ => None,
        }
    }
}

/// A job's own callback is the target named so; an endpoint's deliveries carry the endpoint's id.
pub const CALLBACK_TARGET: &str = "callback";

/// One message to one URL, as the webhook queue carries it: everything an attempt needs, so sending it
/// reads nothing but the tenant's secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// `msg_...`: the same for every attempt and every target of one event.
    pub webhook_id: String,
    pub event: WebhookEvent,
    pub tenant: String,
    /// The job the event is about (job events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The batch the event is about (`batch.completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<JobId>,
    /// `callback`, or the endpoint's id.
    pub target: String,
    pub url: String,
    /// The attempt this is, from 1: the message's receive count (a retry is the same message, hidden until
    /// its time), set when it is attempted.
    pub attempt: u32,
    /// The body, `{"type", "timestamp", "data"}`, sent byte for byte the same on every attempt.
    pub payload: Value,
}

impl Delivery {
    /// The body as sent and signed.
    pub fn body(&self) -> String {
        self.payload.to_string()
    }

    /// The deliveries of a job that just ended: its callback's and each subscribed endpoint's.
    pub fn for_ended_job(job: &Job, endpoints: &[store::Endpoint]) -> Vec<Delivery> {
        let Some(event) = WebhookEvent::of_job(job.status) else { return Vec::new() };
        let webhook_id = webhook_id(event, job.job_id.as_str());
        let mut data = serde_json::to_value(job.update()).unwrap_or_default();
        data["kind"] = Value::from(job.kind.as_str());
        let payload = json!({
            "type": event.as_str(),
            "timestamp": to_rfc3339(job.completed_at.unwrap_or(job.updated_at)),
            "data": data,
        });
        let targets = job.callback_url.iter().map(|url| (CALLBACK_TARGET.to_string(), url.clone())).chain(
            endpoints.iter().filter(|e| e.events.contains(&event)).map(|e| (e.endpoint_id.clone(), e.url.clone())),
        );
        targets
            .map(|(target, url)| Delivery {
                webhook_id: webhook_id.clone(),
                event,
                tenant: job.owner.clone(),
                job_id: Some(job.job_id.clone()),
                batch_id: None,
                target,
                url,
                attempt: 1,
                payload: payload.clone(),
            })
            .collect()
    }
    /// The deliveries of a batch whose completion was just recorded: each endpoint subscribed to
    /// `batch.completed` gets one, whose `data` is the batch's counts.
    pub fn for_completed_batch(batch: &BatchProgress, endpoints: &[store::Endpoint]) -> Vec<Delivery> {
        let Some(completed_at) = batch.completed_at else { return Vec::new() };
        let event = WebhookEvent::BatchCompleted;
        let webhook_id = webhook_id(event, batch.batch_id.as_str());
        let payload = json!({"type": event.as_str(), "timestamp": to_rfc3339(completed_at), "data": batch.summary()});
        endpoints
            .iter()
            .filter(|e| e.events.contains(&event))
            .map(|endpoint| Delivery {
                webhook_id: webhook_id.clone(),
                event,
                tenant: batch.tenant.clone(),
                job_id: None,
                batch_id: Some(batch.batch_id.clone()),
                target: endpoint.endpoint_id.clone(),
                url: endpoint.url.clone(),
                attempt: 1,
                payload: payload.clone(),
            })
            .collect()
    }
}

/// `msg_` and a UUID derived from the event and its subject: every delivery of one event, to any target and
/// on any attempt, carries the same id, also when the stream gives the change twice.
pub fn webhook_id(event: WebhookEvent, subject: &str) -> String {
    let name = format!("{} {subject}", event.as_str());
    format!("msg_{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).simple())
}

/// Where a delivery stands, as the job's view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeliveryState {
    /// A 2xx answered.
    Delivered,
    /// An attempt failed in a way that may pass; the next is at `nextAttemptAt`.
    Retrying,
    /// Given up (a refusal, or every attempt failed): dead-lettered, an operator may redeliver it.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        [DeliveryState::Delivered, DeliveryState::Retrying, DeliveryState::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One target's delivery of a job's event, as kept on the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDelivery {
    /// `callback`, or the endpoint's id.
    pub target: String,
    pub event: WebhookEvent,
    pub url: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// The HTTP status of the last attempt, when one answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Millis>,
    pub updated_at: Millis,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx.
    Delivered { status: u16 },
    /// A network error, a timeout, 408, 429 or 5xx: a later attempt may succeed.
    Failed { status: Option<u16>, error: String },
    /// Any other answer (3xx, which is not followed, and 4xx), or a target that may not be called: another
    /// attempt would fail the same way.
    Refused { status: Option<u16>, error: String },
}

impl AttemptOutcome {
    /// What an HTTP answer means for the delivery.
    pub fn of_status(status: u16) -> AttemptOutcome {
        match status {
            200..=299 => AttemptOutcome::Delivered { status },
            408 | 429 | 500..=599 => {
                AttemptOutcome::Failed { status: Some(status), error: format!("the receiver answered {status}") }
            }
            300..=399 => AttemptOutcome::Refused {
                status: Some(status),
                error: format!("the receiver answered {status}; redirects are not followed"),
            },
            _ => AttemptOutcome::Refused { status: Some(status), error: format!("the receiver answered {status}") },
        }
    }
}

/// The waits between attempts: the n-th failed attempt waits the n-th delay (give or take a fifth, so
/// receivers that failed together are not retried together); after the last, the delivery is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl Default for RetrySchedule {
    /// 5 s, 5 min, 30 min, 2 h, 5 h, 8 h, 8 h: eight attempts over about a day (23.6 hours).
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        RetrySchedule(vec![
            Duration::from_secs(5),
            minutes(5),
            minutes(30),
            minutes(120),
            minutes(300),
            minutes(480),
            minutes(480),
        ])
    }
}

impl RetrySchedule {
    /// From a comma-separated list of seconds (`WEBHOOK_RETRY_DELAYS`).
    pub fn parse(text: &str) -> Result<RetrySchedule, String> {
        let delays = text
            .split(',')
            .map(|part| part.trim().parse::<u64>().map(Duration::from_secs))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("{text:?} is not a comma-separated list of whole seconds"))?;
        if delays.is_empty() || delays.len() > 20 {
            return Err("give 1 to 20 delays".into());
        }
        if delays.iter().any(|delay| *delay > Duration::from_secs(12 * 60 * 60)) {
            return Err("a delay is at most 43200 seconds (12 hours: the longest SQS hides a message)".into());
        }
        Ok(RetrySchedule(delays))
    }

    /// The wait after failed attempt `attempt` (from 1), jittered by `jitter` in [-1, 1]; `None` when it
    /// was the last.
    pub fn delay_after(&self, attempt: u32, jitter: f64) -> Option<Duration> {
        let base = *self.0.get(attempt.checked_sub(1)? as usize)?;
        Some(base.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0)))
    }

    pub fn attempts(&self) -> u32 {
        self.0.len() as u32 + 1
    }

    pub fn total(&self) -> Duration {
        self.0.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_delivered_retried_or_refused_as_the_issue_says() {
        for status in [200, 201, 204, 299] {
            assert!(matches!(AttemptOutcome::of_status(status), AttemptOutcome::Delivered { .. }), "{status}");
        }
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert!(matches!(AttemptOutcome::of_status(status), AttemptOutcome::Failed { .. }), "{status}");
        }
        for status in [301, 302, 307, 400, 401, 403, 404, 410, 413, 422] {
            assert!(matches!(AttemptOutcome::of_status(status), AttemptOutcome::Refused { .. }), "{status}");
        }
    }

    #[test]
    fn the_default_schedule_retries_for_about_a_day() {
        let schedule = RetrySchedule::default();
        let hours = schedule.total().as_secs_f64() / 3600.0;
        assert!((20.0..=28.0).contains(&hours), "{hours} h");
        assert_eq!(schedule.attempts(), 8);
        assert_eq!(schedule.delay_after(1, 0.0), Some(Duration::from_secs(5)));
        assert_eq!(schedule.delay_after(1, 1.0), Some(Duration::from_secs(6)));
        assert_eq!(schedule.delay_after(1, -1.0), Some(Duration::from_secs(4)));
        assert_eq!(schedule.delay_after(8, 0.0), None, "the eighth attempt is the last");
        assert_eq!(schedule.delay_after(0, 0.0), None);
        assert_eq!(RetrySchedule::parse("1, 2,3").unwrap().0.len(), 3);
        assert!(RetrySchedule::parse("1,x").is_err());
        assert!(RetrySchedule::parse("").is_err());
        assert!(RetrySchedule::parse("43201").is_err());
    }

    #[test]
    fn one_event_has_one_webhook_id() {
        let id = JobId::new_random();
        let completed = webhook_id(WebhookEvent::JobCompleted, id.as_str());
        assert_eq!(completed, webhook_id(WebhookEvent::JobCompleted, id.as_str()));
        assert_ne!(completed, webhook_id(WebhookEvent::JobFailed, id.as_str()));
        assert!(completed.starts_with("msg_") && completed.len() == 36, "{completed}");
        for event in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(event.as_str()), Some(event));
            assert_eq!(serde_json::to_value(event).unwrap(), event.as_str());
        }
    }
}
