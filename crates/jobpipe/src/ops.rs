//! The operations side of the `jobpipe` CLI: `submit` (now or scheduled), `status`, `cancel`, `watch`,
//! `list`, `schedules create|list|pause|resume|delete`, `kinds list|pause|resume` and `dlq list|redrive`, against the local stack (default) or a deployed stack (`--stack NAME`,
//! from its CloudFormation outputs).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use futures_util::StreamExt;
use jobpipe_core::controls::ControlStore;
use jobpipe_core::job::{JobPage, JobStatus, JobUpdate, JobView};
use jobpipe_core::schedules::{SchedulePage, ScheduleView};
use jobpipe_core::webhooks::Delivery;
use jobpipe_core::webhooks::store::{DeadLetter, WebhookStore};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// When a submitted job may start: the API's `runAt` (RFC 3339, passed through as given) or
/// `delaySeconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Now,
    At(String),
    After(Duration),
}

/// How a new schedule ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cadence {
    /// A five-field cron expression, in an IANA time zone (UTC when `None`).
    Cron { cron: String, timezone: Option<String> },
    /// `"15 minutes"`, `"1 hour"`, `"2 days"`.
    Rate(String),
}

/// Where the commands send their requests.
#[derive(Debug, Clone)]
pub struct Target {
    pub api_url: String,
    pub ws_url: String,
    pub token: String,
    /// For `dlq`: the SQS client and the queues.
    pub sqs: Option<aws_sdk_sqs::Client>,
    pub dead_letter_queue_url: Option<String>,
    /// Where a dead letter goes back to, by its `kind` attribute; `""` is the default queue.
    pub queues_by_kind: HashMap<String, String>,
    /// For `kinds pause|resume`: the control table, with the operator's credentials.
    pub controls: Option<ControlStore>,
    /// For `webhooks`: the webhooks table (dead letters) and the queue deliveries go back to.
    pub webhooks: Option<WebhookStore>,
    pub webhook_queue_url: Option<String>,
    /// One HTTP client for every call: building one loads the trusted roots (measured: the `jobpipe`
    /// test process spent its CPU decoding certificates when each call built its own) and reuses no
    /// connection.
    pub http: reqwest::Client,
}

#[derive(Debug, Clone)]
pub struct TargetOptions {
    pub api: String,
    pub stack: Option<String>,
    pub token: Option<String>,
    pub user: String,
}

impl Target {
    pub async fn resolve(options: &TargetOptions) -> anyhow::Result<Target> {
        match &options.stack {
            Some(stack) => Target::deployed(stack, options).await,
            None => Target::local(options).await,
        }
    }

    /// The local stack: URLs from `--api`, a dev token for `--user`, resources from `/dev/resources`.
    async fn local(options: &TargetOptions) -> anyhow::Result<Target> {
        let http = reqwest::Client::new();
        let api_url = options.api.trim_end_matches('/').to_string();
        let resources: Value = http
            .get(format!("{api_url}/dev/resources"))
            .send()
            .await
            .with_context(|| format!("is `jobpipe dev` running at {api_url}?"))?
            .error_for_status()?
            .json()
            .await?;
        let token = match &options.token {
            Some(token) => token.clone(),
            None => {
                let reply: Value = http
                    .post(format!("{api_url}/dev/token"))
                    .json(&json!({"sub": options.user}))
                    .send()
                    .await?
                    .json()
                    .await?;
                reply["token"].as_str().context("the dev token endpoint answered no token")?.to_string()
            }
        };
        let endpoint = resources["endpointUrl"].as_str().context("no endpointUrl in /dev/resources")?;
        let queue = |id: &str| resources["queues"][id]["url"].as_str().map(String::from);
        let mut queues_by_kind = HashMap::new();
        queues_by_kind.insert(String::new(), queue("JobsQueue").unwrap_or_default());
        if let Some(image) = queue("ImageJobsQueue") {
            queues_by_kind.insert("image".into(), image);
        }
        Ok(Target {
            http,
            ws_url: resources["webSocketUrl"].as_str().unwrap_or_default().to_string(),
            api_url,
            token,
            sqs: Some(local_sqs(endpoint)),
            dead_letter_queue_url: queue("JobsDeadLetterQueue"),
            queues_by_kind,
            controls: match (resources["dynamodbEndpointUrl"].as_str(), resources["tables"]["ControlTable"].as_str()) {
                (Some(dynamodb), Some(table)) => Some(ControlStore::new(
                    aws_sdk_dynamodb::Client::new(&jobpipe_emulator::aws::sdk_config(dynamodb)),
                    table,
                )),
                _ => None,
            },
            webhooks: match (resources["dynamodbEndpointUrl"].as_str(), resources["tables"]["WebhooksTable"].as_str()) {
                (Some(dynamodb), Some(table)) => Some(WebhookStore::new(
                    aws_sdk_dynamodb::Client::new(&jobpipe_emulator::aws::sdk_config(dynamodb)),
                    table,
                )),
                _ => None,
            },
            webhook_queue_url: queue("WebhookQueue"),
        })
    }

    /// A deployed stack: its outputs name the URLs and queues; the token comes from `--token` or
    /// `JOBPIPE_TOKEN`; AWS credentials from the usual environment.
    async fn deployed(stack: &str, options: &TargetOptions) -> anyhow::Result<Target> {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let cloudformation = aws_sdk_cloudformation::Client::new(&shared);
        let described =
            cloudformation.describe_stacks().stack_name(stack).send().await.context("describing the stack")?;
        let outputs: HashMap<String, String> = described
            .stacks()
            .first()
            .context("no such stack")?
            .outputs()
            .iter()
            .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
            .collect();
        let output = |key: &str| outputs.get(key).cloned().with_context(|| format!("the stack has no {key} output"));
        let mut queues_by_kind = HashMap::from([(String::new(), output("JobsQueueUrl")?)]);
        if let Ok(image) = output("ImageJobsQueueUrl") {
            queues_by_kind.insert("image".into(), image);
        }
        Ok(Target {
            http: reqwest::Client::new(),
            api_url: output("HttpApiUrl")?,
            ws_url: output("WebSocketUrl")?,
            token: options.token.clone().context("a deployed stack needs --token (or JOBPIPE_TOKEN)")?,
            sqs: Some(aws_sdk_sqs::Client::new(&shared)),
            dead_letter_queue_url: Some(output("DeadLetterQueueUrl")?),
            queues_by_kind,
            controls: output("ControlTableName")
                .ok()
                .map(|table| ControlStore::new(aws_sdk_dynamodb::Client::new(&shared), table)),
            webhooks: output("WebhooksTableName")
                .ok()
                .map(|table| WebhookStore::new(aws_sdk_dynamodb::Client::new(&shared), table)),
            webhook_queue_url: output("WebhookQueueUrl").ok(),
        })
    }

    /// One API call, its answer read as `T`; an answer that is not a success is an error naming the API's
    /// error code.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let mut request = self.http.request(method, format!("{}{path}", self.api_url)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let error = &body["error"];
            bail!(
                "{status}: {} ({})",
                error["message"].as_str().unwrap_or("request failed"),
                error["code"].as_str().unwrap_or("http_error")
            );
        }
        serde_json::from_value(body).with_context(|| format!("reading the answer to {path}"))
    }

    pub async fn submit(&self, kind: &str, input: Value) -> anyhow::Result<JobView> {
        self.submit_starting(kind, input, &Start::Now).await
    }

    /// Submits a job that starts at `start` (`scheduled` until then when that is ahead).
    pub async fn submit_starting(&self, kind: &str, input: Value, start: &Start) -> anyhow::Result<JobView> {
        self.submit_with(kind, input, start, None).await
    }

    /// Submits a job that starts at `start` and, with `callback`, whose end is delivered there (signed).
    pub async fn submit_with(
        &self,
        kind: &str,
        input: Value,
        start: &Start,
        callback: Option<&str>,
    ) -> anyhow::Result<JobView> {
        let mut body = json!({"kind": kind, "input": input});
        if let Some(url) = callback {
            body["callback"] = json!({"url": url});
        }
        match start {
            Start::Now => {}
            Start::At(at) => body["runAt"] = json!(at),
            Start::After(delay) => body["delaySeconds"] = json!(delay.as_secs()),
        }
        self.call(reqwest::Method::POST, "/jobs", Some(body)).await
    }

    /// Submits a batch (`POST /batches`): its jobs, all or none.
    pub async fn submit_batch(&self, jobs: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, "/batches", Some(json!({ "jobs": jobs }))).await
    }

    pub async fn batch_status(&self, batch_id: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, &format!("/batches/{batch_id}"), None).await
    }

    pub async fn batch_cancel(&self, batch_id: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::DELETE, &format!("/batches/{batch_id}"), None).await
    }

    /// Reads the batch until every job ended (every second, then every five), printing its counts when
    /// they change; answers the batch.
    pub async fn wait_for_batch(&self, batch_id: &str, out: &mut impl Write) -> anyhow::Result<Value> {
        let mut printed = Value::Null;
        for round in 0u32.. {
            let batch = self.batch_status(batch_id).await?;
            if batch["counts"] != printed {
                printed = batch["counts"].clone();
                writeln!(out, "{batch_id} {}/{} ended: {printed}", ended(&batch), batch["total"])?;
            }
            if batch["done"] == true {
                return Ok(batch);
            }
            tokio::time::sleep(Duration::from_secs(if round < 30 { 1 } else { 5 })).await;
        }
        unreachable!("the loop only returns")
    }

    pub async fn status(&self, job_id: &str) -> anyhow::Result<JobView> {
        self.call(reqwest::Method::GET, &format!("/jobs/{job_id}"), None).await
    }

    /// Creates a schedule whose every tick creates a job of `kind` with `input`.
    pub async fn create_schedule(&self, kind: &str, input: Value, cadence: &Cadence) -> anyhow::Result<ScheduleView> {
        let mut body = json!({"kind": kind, "input": input});
        match cadence {
            Cadence::Cron { cron, timezone } => {
                body["cron"] = json!(cron);
                if let Some(timezone) = timezone {
                    body["timezone"] = json!(timezone);
                }
            }
            Cadence::Rate(rate) => body["rate"] = json!(rate),
        }
        self.call(reqwest::Method::POST, "/schedules", Some(body)).await
    }

    pub async fn list_schedules(&self, limit: u32) -> anyhow::Result<SchedulePage> {
        self.call(reqwest::Method::GET, &format!("/schedules?limit={limit}"), None).await
    }

    pub async fn pause_schedule(&self, schedule_id: &str) -> anyhow::Result<ScheduleView> {
        self.call(reqwest::Method::POST, &format!("/schedules/{schedule_id}/pause"), None).await
    }

    pub async fn resume_schedule(&self, schedule_id: &str) -> anyhow::Result<ScheduleView> {
        self.call(reqwest::Method::POST, &format!("/schedules/{schedule_id}/resume"), None).await
    }

    pub async fn delete_schedule(&self, schedule_id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/schedules/{schedule_id}", self.api_url))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::NO_CONTENT {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            bail!("{status}: {}", body["error"]["message"].as_str().unwrap_or("request failed"));
        }
        Ok(())
    }

    /// The kinds the stack offers and those paused (`GET /kinds`).
    pub async fn kinds(&self) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, "/kinds", None).await
    }

    /// Pauses a kind (its jobs wait, queued) or resumes it; answers the kinds paused now. Writes the control
    /// table with the operator's AWS credentials: no caller of the API can pause a kind.
    pub async fn set_kind_paused(&self, kind: &str, paused: bool) -> anyhow::Result<Vec<String>> {
        let offered = self.kinds().await?;
        let offered: Vec<&str> = offered["kinds"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !offered.contains(&kind) {
            bail!("{kind:?} is not a kind this stack offers ({})", offered.join(", "));
        }
        let controls = self.controls.as_ref().context("no control table for this target")?;
        let now = if paused { controls.pause_kind(kind).await? } else { controls.resume_kind(kind).await? };
        Ok(now.into_iter().collect())
    }

    /// Cancels a job that has not started (scheduled or queued).
    pub async fn cancel(&self, job_id: &str) -> anyhow::Result<JobView> {
        self.call(reqwest::Method::DELETE, &format!("/jobs/{job_id}"), None).await
    }

    pub async fn list(&self, status: Option<&str>, limit: u32) -> anyhow::Result<JobPage> {
        let mut path = format!("/jobs?limit={limit}");
        if let Some(status) = status {
            path.push_str(&format!("&status={status}"));
        }
        self.call(reqwest::Method::GET, &path, None).await
    }

    /// Follows a job until it ends, printing each change (a progress bar on a terminal). Uses the
    /// WebSocket (`ws://` locally, `wss://` deployed) and falls back to polling with backoff when the
    /// socket cannot be opened or drops.
    pub async fn watch(&self, job_id: &str, out: &mut impl Write) -> anyhow::Result<JobView> {
        let mut view = WatchedJob::new(job_id);
        let current = self.status(job_id).await?;
        view.show(Seen::from(&current), out)?;
        if current.status.is_terminal() {
            return Ok(current);
        }
        if let (JobStatus::Scheduled, Some(run_at)) = (current.status, &current.run_at) {
            writeln!(out, "{job_id}  (starts at {run_at})")?;
        }
        match self.watch_live(&mut view, out).await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => writeln!(out, "{job_id}  (live updates ended; polling)")?,
            Err(error) => writeln!(out, "{job_id}  (live updates unavailable: {error:#}; polling)")?,
        }
        let mut delay = Duration::from_millis(500);
        loop {
            tokio::time::sleep(delay).await;
            let job = self.status(job_id).await?;
            view.show(Seen::from(&job), out)?;
            if job.status.is_terminal() {
                return Ok(job);
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// Follows the job over the WebSocket, subscribed at `$connect`. Answers the finished job, `None`
    /// when the socket closed before it ended, or why the socket failed.
    async fn watch_live(&self, view: &mut WatchedJob, out: &mut impl Write) -> anyhow::Result<Option<JobView>> {
        let job_id = view.job_id.clone();
        if !(self.ws_url.starts_with("ws://") || self.ws_url.starts_with("wss://")) {
            bail!("no WebSocket URL for this stack ({:?})", self.ws_url);
        }
        let url = format!("{}?token={}&jobId={job_id}", self.ws_url, self.token);
        // TLS (`wss://`) trusts the system's certificate store (`SSL_CERT_FILE`/`SSL_CERT_DIR` are honoured),
        // as the CLI's HTTPS calls do.
        let (mut socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .map_err(|error| anyhow::anyhow!("connecting to {}: {error}", self.ws_url))?;
        // `$connect` subscribed us before the socket opened. A change made before the subscription
        // was not pushed to us (and on AWS, one pushed while `$connect` ran was answered Gone), so read
        // the job once now that the subscription exists.
        let confirmed = self.status(&job_id).await?;
        view.show(Seen::from(&confirmed), out)?;
        if confirmed.status.is_terminal() {
            let _ = socket.close(None).await;
            return Ok(Some(confirmed));
        }
        // The notifier finds subscribers through an eventually consistent index, so a push can still be
        // missed just after subscribing: a slow poll meanwhile means nothing waits forever.
        let mut slow_poll = SLOW_POLL_FIRST;
        loop {
            let job: JobUpdate = tokio::select! {
                message = socket.next() => match message {
                    Some(Ok(message)) => {
                        let Ok(text) = message.into_text() else { continue };
                        let Some(job) = job_update(&text).filter(|job| job.job_id.as_str() == job_id) else {
                            continue;
                        };
                        job
                    }
                    Some(Err(error)) => bail!("the WebSocket failed: {error}"),
                    None => return Ok(None),
                },
                () = tokio::time::sleep(slow_poll) => {
                    slow_poll = (slow_poll * 2).min(SLOW_POLL_MAX);
                    let read = self.status(&job_id).await?;
                    if view.show(Seen::from(&read), out)? && read.status.is_terminal() {
                        let _ = socket.close(None).await;
                        return Ok(Some(read));
                    }
                    continue;
                }
            };
            if view.show(Seen::from(&job), out)? && job.status.is_terminal() {
                let _ = socket.close(None).await;
                // A push leaves out large results and result links: answer the full view.
                return self.status(&job_id).await.map(Some);
            }
        }
    }

    fn webhooks(&self) -> anyhow::Result<&WebhookStore> {
        self.webhooks.as_ref().context("no webhooks table for this target (no WebhooksTableName output)")
    }

    /// Webhook deliveries given up on, oldest first: one tenant's, or every tenant's.
    pub async fn webhook_dead_letters(&self, tenant: Option<&str>) -> anyhow::Result<Vec<DeadLetter>> {
        Ok(self.webhooks()?.dead_letters(tenant).await?)
    }

    /// Puts dead-lettered deliveries back on the webhook queue for a fresh series of attempts (the same
    /// `webhook-id`, so a receiver that did get one can tell): those whose ids are given, or all of them
    /// (of `tenant`, if given). Answers the ones redelivered.
    pub async fn webhook_redeliver(&self, ids: &[String], tenant: Option<&str>) -> anyhow::Result<Vec<DeadLetter>> {
        let store = self.webhooks()?;
        let sqs = self.sqs.as_ref().context("no SQS access for this target")?;
        let queue = self.webhook_queue_url.as_deref().context("no webhook queue for this target")?;
        let letters = store.dead_letters(tenant).await?;
        if let Some(unknown) = ids.iter().find(|id| !letters.iter().any(|letter| &letter.id() == *id)) {
            bail!("no dead letter {unknown:?}; `jobpipe webhooks dead-letters` lists them");
        }
        let mut redelivered = Vec::new();
        for letter in letters.into_iter().filter(|letter| ids.is_empty() || ids.contains(&letter.id())) {
            let delivery = Delivery { attempt: 1, ..letter.delivery.clone() };
            sqs.send_message()
                .queue_url(queue)
                .message_body(serde_json::to_string(&delivery)?)
                .send()
                .await
                .context("putting a delivery back on the webhook queue")?;
            store.remove_dead_letter(&letter).await?;
            redelivered.push(letter);
        }
        Ok(redelivered)
    }

    fn dlq(&self) -> anyhow::Result<(&aws_sdk_sqs::Client, &str)> {
        Ok((
            self.sqs.as_ref().context("no SQS access for this target")?,
            self.dead_letter_queue_url.as_deref().context("no dead-letter queue for this target")?,
        ))
    }

    /// The dead letters, without removing them (each is hidden for a few seconds while the list is read).
    pub async fn dlq_list(&self, max: usize) -> anyhow::Result<Vec<Value>> {
        let (sqs, dlq) = self.dlq()?;
        let mut seen = Vec::new();
        while seen.len() < max {
            let messages = receive_dead_letters(sqs, dlq, 5).await?;
            if messages.is_empty() {
                break;
            }
            for message in &messages {
                let attributes = message.attributes();
                seen.push(json!({
                    "messageId": message.message_id(),
                    "body": message.body(),
                    "kind": message.message_attributes().and_then(|a| a.get("kind")).and_then(|v| v.string_value()),
                    "receiveCount": attributes.and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount)),
                    "sentAt": attributes.and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp)),
                }));
            }
        }
        Ok(seen)
    }

    /// Moves dead letters back to the queue their kind uses, after a fix. Returns how many moved.
    /// A message whose job already ended (`dead_lettered`) is acknowledged without running again.
    pub async fn dlq_redrive(&self, max: usize) -> anyhow::Result<usize> {
        let (sqs, dlq) = self.dlq()?;
        let mut moved = 0;
        while moved < max {
            let messages = receive_dead_letters(sqs, dlq, 60).await?;
            if messages.is_empty() {
                break;
            }
            for message in &messages {
                let attributes: HashMap<String, MessageAttributeValue> =
                    message.message_attributes().cloned().unwrap_or_default();
                let kind = attributes.get("kind").and_then(|v| v.string_value()).unwrap_or_default();
                let target = self
                    .queues_by_kind
                    .get(kind)
                    .or_else(|| self.queues_by_kind.get(""))
                    .context("no queue to redrive to")?;
                let mut resend = sqs
                    .send_message()
                    .queue_url(target)
                    .message_body(message.body().unwrap_or_default())
                    .set_message_attributes(Some(attributes.clone()));
                // Back in its tenant's message group, so the fair queue still knows whose it is.
                let tenant = attributes.get(jobpipe_core::dispatch::TENANT_ATTRIBUTE).and_then(|v| v.string_value());
                if let Some(tenant) = tenant.filter(|_| !target.ends_with(".fifo")) {
                    resend = resend.message_group_id(jobpipe_core::dispatch::tenant_group(tenant));
                }
                resend.send().await.context("sending a dead letter back")?;
                sqs.delete_message()
                    .queue_url(dlq)
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .context("removing a redriven dead letter")?;
                moved += 1;
            }
        }
        Ok(moved)
    }
}

/// Up to ten dead letters with their attributes, hidden for `visibility_secs` while they are handled.
async fn receive_dead_letters(
    sqs: &aws_sdk_sqs::Client,
    dlq: &str,
    visibility_secs: i32,
) -> anyhow::Result<Vec<aws_sdk_sqs::types::Message>> {
    let out = sqs
        .receive_message()
        .queue_url(dlq)
        .max_number_of_messages(10)
        .visibility_timeout(visibility_secs)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .context("reading the dead-letter queue")?;
    Ok(out.messages.unwrap_or_default())
}

/// While the WebSocket is live, the job is also read after this long, then at doubling intervals.
const SLOW_POLL_FIRST: Duration = Duration::from_secs(5);
const SLOW_POLL_MAX: Duration = Duration::from_secs(60);

/// A job's `{"type":"job"}` push, or the state a `subscribed` answer carries; `None` for anything else.
fn job_update(text: &str) -> Option<JobUpdate> {
    let message: Value = serde_json::from_str(text).ok()?;
    let job = match message["type"].as_str()? {
        "subscribed" => message.get("job")?.clone(),
        "job" => message,
        _ => return None,
    };
    serde_json::from_value(job).ok()
}

/// What `watch` compares and prints of a job, from a read or a push alike.
#[derive(Debug, Clone, Copy)]
struct Seen<'a> {
    status: JobStatus,
    progress: u8,
    updated_at: &'a str,
}

impl<'a> From<&'a JobView> for Seen<'a> {
    fn from(job: &'a JobView) -> Self {
        Seen { status: job.status, progress: job.progress, updated_at: &job.updated_at }
    }
}

impl<'a> From<&'a JobUpdate> for Seen<'a> {
    fn from(job: &'a JobUpdate) -> Self {
        Seen { status: job.status, progress: job.progress, updated_at: &job.updated_at }
    }
}

/// What `watch` has shown of a job: each newer state is printed once; a message older than the state
/// already held (pushes may arrive out of order, a read may race a push) is ignored.
struct WatchedJob {
    job_id: String,
    printed: Option<(JobStatus, u8)>,
    newest: Option<(time::OffsetDateTime, bool)>,
}

impl WatchedJob {
    fn new(job_id: &str) -> WatchedJob {
        WatchedJob { job_id: job_id.to_string(), printed: None, newest: None }
    }

    /// Whether `job` is not older than what is held: by `updatedAt`, and a job that ended never goes back.
    fn is_current(&mut self, job: Seen<'_>) -> bool {
        let updated_at =
            time::OffsetDateTime::parse(job.updated_at, &time::format_description::well_known::Rfc3339).ok();
        let terminal = job.status.is_terminal();
        match (self.newest, updated_at) {
            (Some((_, true)), _) if !terminal => false,
            (Some((newest, _)), Some(at)) if at < newest => false,
            (_, Some(at)) => {
                self.newest = Some((at, terminal));
                true
            }
            // Without a time it can only be compared by status.
            (_, None) => true,
        }
    }

    /// Prints the job's status and progress if it is current and changed; answers whether it is current.
    fn show(&mut self, job: Seen<'_>, out: &mut dyn Write) -> anyhow::Result<bool> {
        if !self.is_current(job) {
            return Ok(false);
        }
        let (status, progress) = (job.status, job.progress.min(100));
        if self.printed != Some((status, progress)) {
            let filled = progress as usize / 5;
            writeln!(
                out,
                "{}  {:<10} [{}{}] {progress:>3}%",
                self.job_id,
                status.as_str(),
                "#".repeat(filled),
                ".".repeat(20 - filled)
            )?;
            self.printed = Some((status, progress));
        }
        Ok(true)
    }
}

fn local_sqs(endpoint: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&jobpipe_emulator::aws::sdk_config(endpoint))
}

/// How many of a batch's jobs ended.
fn ended(batch: &Value) -> u64 {
    ["completed", "failed", "cancelled"].iter().filter_map(|status| batch["counts"][status].as_u64()).sum()
}
