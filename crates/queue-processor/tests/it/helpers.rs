//! The harness: the queue processor over a fresh stack in moto with a manual clock, and the event source
//! mapping played by hand (receive a batch, hand it over, delete what it acknowledged).

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use jobpipe_core::clock::{Clock, ManualClock};
use jobpipe_core::dispatch::Dispatcher;
use jobpipe_core::intake::{Accepted, Intake, NewJob, StartAt};
use jobpipe_core::job::{Job, JobId};
use jobpipe_testkit::{FaultProxy, StackOptions, TestStack, through_fault_proxy};
use queue_processor::{Processor, RecordOutcome, handle_sqs};
use serde_json::Value;

pub struct Harness {
    pub stack: TestStack,
    pub clock: ManualClock,
    pub processor: Arc<Processor>,
}

pub async fn harness() -> Harness {
    harness_with(StackOptions::default(), &[], |_| {}).await
}

pub async fn harness_with(
    options: StackOptions,
    overrides: &[(&str, &str)],
    customize: impl FnOnce(&mut Processor),
) -> Harness {
    let stack = TestStack::with(options).await;
    let clock = ManualClock::starting_now();
    let mut processor = Processor::new(&stack.config_with(overrides), &stack.clients, Arc::new(clock.clone()));
    customize(&mut processor);
    Harness { stack, clock, processor: Arc::new(processor) }
}

/// A harness whose processor reaches moto through a fault proxy.
pub async fn harness_through_proxy() -> (Harness, std::sync::Arc<FaultProxy>) {
    let stack = TestStack::new().await;
    let clock = ManualClock::starting_now();
    let (proxy, clients) = through_fault_proxy().await;
    let processor = Processor::new(&stack.config(), &clients, Arc::new(clock.clone()));
    (Harness { stack, clock, processor: Arc::new(processor) }, proxy)
}

impl Harness {
    /// Accepts an echo job for alice the way the API does, and returns it.
    pub async fn submit(&self, input: Value) -> Job {
        self.submit_via(&self.processor.dispatcher, "echo", input).await
    }

    pub async fn submit_via(&self, dispatcher: &Dispatcher, kind: &str, input: Value) -> Job {
        self.submit_starting(dispatcher, kind, input, StartAt::Now).await
    }

    /// Accepts an echo job for alice to start at `start`.
    pub async fn submit_scheduled(&self, start: StartAt) -> Job {
        self.submit_starting(&self.processor.dispatcher, "echo", serde_json::json!({}), start).await
    }

    async fn submit_starting(&self, dispatcher: &Dispatcher, kind: &str, input: Value, start: StartAt) -> Job {
        let intake = Intake {
            store: &self.processor.store,
            payloads: &self.processor.payloads,
            dispatcher,
            dispatch_grace: Duration::from_secs(60),
        };
        let new = NewJob {
            owner: "alice".into(),
            kind: kind.into(),
            input,
            idempotency_key: None,
            correlation_id: "corr-1".into(),
            start,
            callback_url: None,
        };
        match intake.accept(new, self.clock.now_ms()).await.unwrap() {
            Accepted::New(job) => job,
            other => panic!("expected a new job, got {other:?}"),
        }
    }

    pub async fn job(&self, id: &JobId) -> Job {
        self.processor.store.get(id).await.unwrap().expect("job exists")
    }

    /// One round of the event source mapping: receive a batch, hand it to the function, delete what it
    /// acknowledged.
    pub async fn deliver(&self) -> (Vec<SqsMessage>, SqsBatchResponse) {
        let records = self.stack.receive_batch(10).await;
        assert!(!records.is_empty(), "expected a message to deliver");
        let response = handle_sqs(self.processor.clone(), event(records.clone()), None).await.unwrap();
        self.stack.settle(&records, &response).await;
        (records, response)
    }

    pub async fn deliver_one(&self) -> RecordOutcome {
        let records = self.stack.receive_batch(1).await;
        assert_eq!(records.len(), 1, "expected exactly one message");
        self.process_and_settle(records).await
    }

    /// Delivers the next message once it is visible (a delayed one), receiving up to `attempts` times.
    pub async fn deliver_when_visible(&self, attempts: usize) -> RecordOutcome {
        for _ in 0..attempts {
            let records = self.stack.receive_batch(1).await;
            if !records.is_empty() {
                return self.process_and_settle(records).await;
            }
        }
        panic!("no message became visible in {attempts} receives");
    }

    async fn process_and_settle(&self, records: Vec<SqsMessage>) -> RecordOutcome {
        let outcome = self.processor.process_record(&records[0], None).await;
        if outcome.acknowledges() {
            self.stack.settle(&records, &SqsBatchResponse::default()).await;
        }
        outcome
    }

    pub async fn main_queue_depth(&self) -> u64 {
        self.stack.queue_depth(&self.stack.queue_url).await
    }
}

pub fn event(records: Vec<SqsMessage>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = records;
    event
}

pub fn failed_ids(response: &SqsBatchResponse) -> Vec<String> {
    let mut ids: Vec<String> = response.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
    ids.sort();
    ids
}
