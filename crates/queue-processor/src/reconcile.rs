//! The reconciler, run on a schedule: re-sends jobs whose message never reached SQS, and fails jobs
//! whose message was dead-lettered, so no accepted job is left hanging.

use aws_sdk_sqs::types::MessageSystemAttributeName;
use jobpipe_core::StoreError;
use jobpipe_core::dispatch::{JobMessage, sweep_pending};
use jobpipe_core::job::ErrorInfo;
use jobpipe_core::store::ForceFailOutcome;
use serde::Serialize;

use crate::Processor;

/// How long a dead letter stays hidden after a scan reads it, so one scan does not read it twice.
const DEAD_LETTER_SCAN_VISIBILITY_SECS: i32 = 30;
/// Upper bound on re-dispatched jobs per run; the next run continues.
const REDISPATCH_LIMIT: usize = 1_000;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    pub redispatched: usize,
    pub redispatch_failures: usize,
    pub dead_letters_seen: usize,
    pub jobs_failed_from_dead_letters: usize,
    /// Dead letters that name no job (unparseable bodies, unknown ids): left for a person.
    pub poison_dead_letters: usize,
}

impl Processor {
    pub async fn reconcile(&self) -> Result<ReconcileReport, StoreError> {
        let sweep = sweep_pending(&self.store, &self.dispatcher, self.clock.now_ms(), REDISPATCH_LIMIT).await?;
        let mut report = ReconcileReport {
            redispatched: sweep.redispatched,
            redispatch_failures: sweep.failed,
            ..Default::default()
        };
        if let Some(dlq) = self.settings.dead_letter_queue_url.clone() {
            self.scan_dead_letters(&dlq, &mut report).await?;
        }
        tracing::info!(?report, "reconcile finished");
        Ok(report)
    }

    /// Reads dead letters without deleting them (they stay for inspection and redrive) and fails the
    /// unfinished jobs they name.
    async fn scan_dead_letters(&self, dlq: &str, report: &mut ReconcileReport) -> Result<(), StoreError> {
        while report.dead_letters_seen < self.settings.dead_letter_scan_limit {
            let out = self
                .sqs
                .receive_message()
                .queue_url(dlq)
                .max_number_of_messages(10)
                .visibility_timeout(DEAD_LETTER_SCAN_VISIBILITY_SECS)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| StoreError::from_sdk("ReceiveMessage (dead-letter queue)", e))?;
            if out.messages().is_empty() {
                break;
            }
            for message in out.messages() {
                report.dead_letters_seen += 1;
                let Ok(job) = JobMessage::parse(message.body()) else {
                    report.poison_dead_letters += 1;
                    continue;
                };
                let info = ErrorInfo {
                    code: "dead_lettered".into(),
                    message: "the job's message was delivered too many times without finishing and was moved to the dead-letter queue".into(),
                };
                match self.store.force_fail(&job.job_id, &info, self.clock.now_ms()).await? {
                    ForceFailOutcome::Failed(_) => {
                        tracing::warn!(job_id = %job.job_id, "failed a job whose message was dead-lettered");
                        report.jobs_failed_from_dead_letters += 1;
                    }
                    ForceFailOutcome::NotFound => report.poison_dead_letters += 1,
                    ForceFailOutcome::AlreadyFinished(_) | ForceFailOutcome::LeaseLive => {}
                }
            }
        }
        Ok(())
    }
}
