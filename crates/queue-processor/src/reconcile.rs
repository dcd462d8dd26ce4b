//! The reconciler, run on a schedule: fires the recurring schedules' due ticks (each creates its job),
//! looks at unfinished jobs whose check is due (re-sends a message that never reached SQS or may have
//! expired, fails jobs past their maximum age), and works through the dead-letter queue, so no accepted
//! job is left hanging.

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use futures_util::StreamExt;
use jobpipe_core::AwsError;
use jobpipe_core::clock::Millis;
use jobpipe_core::dispatch::{JobMessage, sweep_due};
use jobpipe_core::intake::Intake;
use jobpipe_core::job::ErrorInfo;
use jobpipe_core::schedules::{TickReport, fire_due};
use jobpipe_core::store::ForceFailOutcome;
use serde::Serialize;

use crate::Processor;

/// Upper bound on unfinished jobs looked at per run; the next run continues.
const SWEEP_LIMIT: usize = 1_000;
/// Upper bound on schedules fired per run; the next run continues (ticks are created minutes ahead).
const TICK_LIMIT: usize = 1_000;
/// Ticks stop being fired this long before the invocation's deadline, or at 60% of the time the run had
/// when the invocation's timeout is short (a fixed minute would leave no time at all under a timeout
/// below a minute, and no tick would ever fire).
const TICK_DEADLINE_MARGIN_MS: Millis = 60_000;
/// Dead letters handled at once.
const DEAD_LETTER_CONCURRENCY: usize = 10;
/// A poison letter (naming no job) stays for a person (`jobpipe dlq list`, the DLQ alarm); the reconciler
/// reads it again at most this often.
const POISON_HIDDEN_SECS: i32 = 60 * 60;
/// A letter whose job could not be settled this time (a failed call, a live lease) is read again after
/// this long: past the next scheduled run.
const RETRY_LETTER_AFTER_SECS: i32 = 90;
/// The run stops reading dead letters this long before the invocation's deadline.
const DEADLINE_MARGIN_MS: Millis = 10_000;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    /// Recurring schedules' ticks fired, skipped (missed while down) and failed.
    #[serde(flatten)]
    pub ticks: TickReport,
    pub redispatched: usize,
    pub expired: usize,
    pub rescheduled: usize,
    pub redispatch_failures: usize,
    pub dead_letters_seen: usize,
    pub jobs_failed_from_dead_letters: usize,
    /// Dead letters whose job has ended (here or before): deleted, the job records why.
    pub dead_letters_removed: usize,
    /// Dead letters that name no job (unparseable bodies, unknown ids): left for a person.
    pub poison_dead_letters: usize,
    /// Dead letters that could not be settled this time (logged); read again later.
    pub dead_letters_deferred: usize,
}

/// What became of one dead letter.
enum Letter {
    /// Its job has ended: the letter can go.
    Settled { failed_here: bool },
    /// Names no job: kept for a person, hidden for a long while.
    Poison,
    /// Not settled this time; hidden briefly and read again.
    Deferred,
}

impl Processor {
    /// `deadline`: the invocation's, when it has one; the run stops reading dead letters before it.
    pub async fn reconcile(&self, deadline: Option<Millis>) -> Result<ReconcileReport, AwsError> {
        // Ticks first: the jobs they create are ordinary scheduled jobs from then on. A failure here is
        // logged and retried by the next run; it holds up neither the sweep nor the dead letters.
        let ticks = match &self.schedules {
            None => TickReport::default(),
            Some(schedules) => {
                let intake = Intake {
                    store: &self.store,
                    payloads: &self.payloads,
                    dispatcher: &self.dispatcher,
                    dispatch_grace: self.settings.dispatch_grace,
                };
                // Ticks stop early enough to leave the sweep and the dead letters their time.
                let now = self.clock.now_ms();
                let stop_at =
                    deadline.map(|deadline| deadline - TICK_DEADLINE_MARGIN_MS.min((deadline - now).max(0) * 2 / 5));
                fire_due(schedules, &intake, self.clock.as_ref(), stop_at, TICK_LIMIT).await.unwrap_or_else(|error| {
                    tracing::warn!(%error, retryable = error.is_retryable(), "reading due schedule ticks failed; the next run retries");
                    TickReport { tick_failures: 1, ..Default::default() }
                })
            }
        };
        // A sweep that cannot read the index this time must not keep the dead letters waiting too: the
        // letters are worked through either way, and the run reports the sweep's failure at its end.
        let (sweep, sweep_failure) = match sweep_due(
            &self.store,
            &self.dispatcher,
            self.settings.dispatch_policy,
            self.clock.as_ref(),
            SWEEP_LIMIT,
        )
        .await
        {
            Ok(sweep) => (sweep, None),
            Err(error) => {
                tracing::warn!(%error, retryable = error.is_retryable(), "the dispatch sweep failed; the next run retries it");
                (Default::default(), Some(error))
            }
        };
        if ticks.tick_failures > 0 {
            // A schedule that stops ticking (a corrupt item, a missing permission) is otherwise silent.
            jobpipe_core::metrics::emit(
                crate::SERVICE,
                "ScheduleTickFailures",
                jobpipe_core::metrics::Unit::Count,
                ticks.tick_failures as f64,
                &[],
            );
        }
        for job in &sweep.expired {
            crate::record::job_ended_metrics(job);
        }
        let mut report = ReconcileReport {
            ticks,
            redispatched: sweep.redispatched,
            expired: sweep.expired.len(),
            rescheduled: sweep.rescheduled,
            redispatch_failures: sweep.failed,
            ..Default::default()
        };
        if let Some(dlq) = self.settings.dead_letter_queue_url.clone() {
            self.work_through_dead_letters(&dlq, deadline, &mut report).await?;
        }
        tracing::info!(?report, "reconcile finished");
        match sweep_failure {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }

    /// Reads the dead-letter queue until it is empty or the time is up: fails the unfinished jobs the
    /// letters name, deletes letters whose job has ended, and keeps poison for a person. One letter that
    /// cannot be settled is logged and deferred; it never stops the run.
    async fn work_through_dead_letters(
        &self,
        dlq: &str,
        deadline: Option<Millis>,
        report: &mut ReconcileReport,
    ) -> Result<(), AwsError> {
        loop {
            if deadline.is_some_and(|deadline| self.clock.now_ms() >= deadline - DEADLINE_MARGIN_MS) {
                tracing::info!("stopping before the deadline; the next run continues with the dead letters");
                return Ok(());
            }
            let out = self
                .sqs
                .receive_message()
                .queue_url(dlq)
                .max_number_of_messages(10)
                // Long polling asks every SQS server, so an empty answer means an empty queue.
                .wait_time_seconds(1)
                .visibility_timeout(RETRY_LETTER_AFTER_SECS)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("ReceiveMessage (dead-letter queue)", e))?;
            let letters = out.messages();
            if letters.is_empty() {
                return Ok(());
            }
            let outcomes: Vec<Letter> =
                futures_util::stream::iter(letters.iter().map(|letter| self.settle_letter(letter)))
                    .buffered(DEAD_LETTER_CONCURRENCY)
                    .collect()
                    .await;
            let mut settled = Vec::new();
            for (letter, outcome) in letters.iter().zip(outcomes) {
                report.dead_letters_seen += 1;
                match outcome {
                    Letter::Settled { failed_here } => {
                        report.jobs_failed_from_dead_letters += failed_here as usize;
                        settled.push(letter);
                    }
                    Letter::Poison => {
                        report.poison_dead_letters += 1;
                        self.hide_letter(dlq, letter, POISON_HIDDEN_SECS).await;
                    }
                    Letter::Deferred => report.dead_letters_deferred += 1,
                }
            }
            report.dead_letters_removed += self.delete_letters(dlq, &settled).await;
        }
    }

    async fn settle_letter(&self, letter: &Message) -> Letter {
        let message_id = letter.message_id().unwrap_or_default();
        let Ok(job) = JobMessage::parse(letter.body()) else {
            tracing::warn!(%message_id, "dead letter names no job (poison); kept for a person");
            return Letter::Poison;
        };
        let info = ErrorInfo {
            code: "dead_lettered".into(),
            message: "the job's message was delivered too many times without finishing and was moved to the dead-letter queue".into(),
        };
        match self.store.force_fail(&job.job_id, &info, self.clock.now_ms()).await {
            Ok(ForceFailOutcome::Failed(failed)) => {
                crate::record::job_ended_metrics(&failed);
                tracing::warn!(job_id = %job.job_id, "failed a job whose message was dead-lettered");
                Letter::Settled { failed_here: true }
            }
            Ok(ForceFailOutcome::AlreadyFinished(_)) => Letter::Settled { failed_here: false },
            Ok(ForceFailOutcome::NotFound) => {
                tracing::warn!(%message_id, job_id = %job.job_id, "dead letter names a job that does not exist (poison); kept for a person");
                Letter::Poison
            }
            // A worker holds the job: it will finish it; the letter is read again later.
            Ok(ForceFailOutcome::LeaseLive) => Letter::Deferred,
            Err(error) => {
                tracing::warn!(%message_id, job_id = %job.job_id, %error, retryable = error.is_retryable(), "could not settle a dead letter; skipped until the next run");
                Letter::Deferred
            }
        }
    }

    async fn hide_letter(&self, dlq: &str, letter: &Message, seconds: i32) {
        let Some(receipt) = letter.receipt_handle() else { return };
        let result = self
            .sqs
            .change_message_visibility()
            .queue_url(dlq)
            .receipt_handle(receipt)
            .visibility_timeout(seconds)
            .send()
            .await;
        if let Err(error) = result {
            let error = AwsError::from_sdk("ChangeMessageVisibility (dead letter)", error);
            tracing::warn!(%error, "could not hide a poison dead letter; it is read again sooner");
        }
    }

    /// Deletes letters whose job has ended; returns how many went.
    async fn delete_letters(&self, dlq: &str, letters: &[&Message]) -> usize {
        if letters.is_empty() {
            return 0;
        }
        let entries: Vec<_> = letters
            .iter()
            .enumerate()
            .filter_map(|(i, letter)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(letter.receipt_handle()?)
                    .build()
                    .ok()
            })
            .collect();
        match self.sqs.delete_message_batch().queue_url(dlq).set_entries(Some(entries)).send().await {
            Ok(out) => out.successful().len(),
            Err(error) => {
                let error = AwsError::from_sdk("DeleteMessageBatch (dead letters)", error);
                tracing::warn!(%error, "could not delete settled dead letters; a later run deletes them");
                0
            }
        }
    }
}
