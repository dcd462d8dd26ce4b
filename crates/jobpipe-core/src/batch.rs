//! Runs the records of an SQS batch and builds the partial-batch response (`ReportBatchItemFailures`).
//!
//! Records run concurrently up to a bound; each runs in its own task, so a record that panics becomes a
//! reported failure instead of taking the batch down (the official runtime example leaves this open).
//! On a FIFO queue order matters: records run one at a time and, at the first failure, that record and
//! every later one are reported failed so SQS redelivers them in order.

use std::future::Future;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsMessage};
use tokio::sync::Semaphore;

/// A record that was not handled and must be delivered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailed;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// SQS always sends message ids; without one a failure cannot be reported, so the whole batch must
    /// be retried.
    #[error("record {0} of the batch has no messageId")]
    MissingMessageId(usize),
}

pub fn is_fifo(records: &[SqsMessage]) -> bool {
    records.first().and_then(|r| r.event_source_arn.as_deref()).is_some_and(|arn| arn.ends_with(".fifo"))
}

/// Handles every record with `handler` and returns the ids of exactly the records that failed.
pub async fn process_batch<F, Fut>(
    records: Vec<SqsMessage>,
    max_concurrency: usize,
    handler: F,
) -> Result<SqsBatchResponse, BatchError>
where
    F: Fn(SqsMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), RecordFailed>> + Send + 'static,
{
    let mut ids = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        ids.push(record.message_id.clone().ok_or(BatchError::MissingMessageId(index))?);
    }
    let handler = Arc::new(handler);
    let mut failed = Vec::new();

    if is_fifo(&records) {
        for (index, record) in records.into_iter().enumerate() {
            let handler = handler.clone();
            if !run_isolated(async move { handler(record).await }).await {
                failed.extend(ids[index..].iter().cloned());
                break;
            }
        }
    } else {
        let permits = Arc::new(Semaphore::new(max_concurrency.max(1)));
        let tasks: Vec<_> = records
            .into_iter()
            .map(|record| {
                let handler = handler.clone();
                let permits = permits.clone();
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await.expect("semaphore is never closed");
                    handler(record).await
                })
            })
            .collect();
        for (id, task) in ids.iter().zip(tasks) {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(RecordFailed)) => failed.push(id.clone()),
                Err(join_error) => {
                    tracing::error!(message_id = %id, error = %join_error, "record handler panicked; reporting it failed");
                    failed.push(id.clone());
                }
            }
        }
    }

    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    Ok(response)
}

/// Runs one record in its own task so that a panic is contained; true when it succeeded.
async fn run_isolated<Fut>(future: Fut) -> bool
where
    Fut: Future<Output = Result<(), RecordFailed>> + Send + 'static,
{
    match tokio::spawn(future).await {
        Ok(result) => result.is_ok(),
        Err(join_error) => {
            tracing::error!(error = %join_error, "record handler panicked; reporting it failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn record(id: &str, body: &str, arn: &str) -> SqsMessage {
        let mut message = SqsMessage::default();
        message.message_id = Some(id.into());
        message.body = Some(body.into());
        message.event_source_arn = Some(arn.into());
        message
    }

    fn batch(bodies: &[&str], arn: &str) -> Vec<SqsMessage> {
        bodies.iter().enumerate().map(|(i, b)| record(&format!("m{i}"), b, arn)).collect()
    }

    fn failed_ids(response: &SqsBatchResponse) -> Vec<&str> {
        response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect()
    }

    /// "ok" succeeds, "fail" fails, "panic" panics.
    async fn handle(record: SqsMessage) -> Result<(), RecordFailed> {
        match record.body.as_deref() {
            Some("ok") => Ok(()),
            Some("panic") => panic!("handler blew up"),
            _ => Err(RecordFailed),
        }
    }

    const STANDARD: &str = "arn:aws:sqs:us-east-1:123456789012:jobs";
    const FIFO: &str = "arn:aws:sqs:us-east-1:123456789012:jobs.fifo";

    #[tokio::test]
    async fn reports_exactly_the_failed_and_panicked_records() {
        let check = |bodies: &'static [&'static str], expected: &'static [&'static str]| async move {
            let response = process_batch(batch(bodies, STANDARD), 3, handle).await.unwrap();
            assert_eq!(failed_ids(&response), expected, "{bodies:?}");
        };
        check(&[], &[]).await;
        check(&["ok", "ok"], &[]).await;
        check(&["ok", "fail", "ok", "panic", "fail"], &["m1", "m3", "m4"]).await;
        check(&["panic", "panic"], &["m0", "m1"]).await;
    }

    #[tokio::test]
    async fn fifo_stops_at_the_first_failure() {
        let response = process_batch(batch(&["ok", "fail", "ok", "ok"], FIFO), 3, handle).await.unwrap();
        assert_eq!(failed_ids(&response), ["m1", "m2", "m3"]);
        let response = process_batch(batch(&["ok", "panic", "ok"], FIFO), 3, handle).await.unwrap();
        assert_eq!(failed_ids(&response), ["m1", "m2"]);
    }

    #[tokio::test]
    async fn concurrency_is_bounded() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let handler = move |_record: SqsMessage| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        };
        let response = process_batch(batch(&["ok"; 12], STANDARD), 4, handler).await.unwrap();
        assert!(response.batch_item_failures.is_empty());
        assert_eq!(peak.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_record_without_id_fails_the_whole_batch() {
        let mut records = batch(&["ok"], STANDARD);
        records[0].message_id = None;
        assert!(matches!(process_batch(records, 1, handle).await, Err(BatchError::MissingMessageId(0))));
    }
}
