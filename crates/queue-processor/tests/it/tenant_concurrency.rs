//! Per-tenant concurrency: a tenant at its limit has its further jobs wait, queued, spending no attempts
//! and no receive counts; a worker that dies holding a slot frees it when its lease expires; concurrent
//! takers never get more slots than the limit.

use jobpipe_core::Clock;
use jobpipe_core::controls::{ControlStore, TENANT_LIMITS_CACHE, TenantLimit};
use jobpipe_core::dispatch::HELD_ATTRIBUTE;
use jobpipe_core::job::{JobId, JobStatus};
use jobpipe_core::tenant_slots::{Slot, SlotOutcome, TenantSlots};
use jobpipe_testkit::StackOptions;
use queue_processor::RecordOutcome;
use serde_json::json;

use crate::helpers::{Harness, harness_with};

/// A processor whose tenants run one job at a time unless told otherwise.
async fn harness(default_limit: &str) -> (Harness, TenantSlots, ControlStore) {
    let options = StackOptions { max_receive_count: 2, ..Default::default() };
    let h = harness_with(options, &[("TENANT_CONCURRENCY", default_limit)], |_| {}).await;
    let slots = TenantSlots::new(h.stack.clients.dynamodb.clone(), &h.stack.control_table);
    let controls = ControlStore::new(h.stack.clients.dynamodb.clone(), &h.stack.control_table);
    (h, slots, controls)
}

/// Another worker's job holding one of alice's slots until `expires_at`.
async fn running_elsewhere(slots: &TenantSlots, expires_at: i64, now: i64) -> JobId {
    let job_id = JobId::new_random();
    let slot = Slot { owner: "alice", job_id: &job_id, token: "elsewhere", expires_at };
    assert_eq!(slots.take(slot, 1, now).await.unwrap(), SlotOutcome::Taken);
    job_id
}

#[tokio::test]
async fn a_tenant_at_its_limit_has_its_next_job_wait_without_spending_attempts() {
    let (h, slots, _) = harness("1").await;
    let now = h.clock.now_ms();
    let elsewhere = running_elsewhere(&slots, now + 600_000, now).await;
    let job = h.submit(json!({"n": 1})).await;
    // More deliveries than the queue's maxReceiveCount (2): each hold sends a new message, which says how
    // often the job was held (that sets its next wait: 1 s, 2 s, 4 s, ...).
    for held in 0..3 {
        let records = visible(&h).await;
        let carried = records[0].message_attributes.get(HELD_ATTRIBUTE).and_then(|a| a.string_value.clone());
        assert_eq!(carried, (held > 0).then(|| held.to_string()));
        let outcome = h.processor.process_record(&records[0], None).await;
        assert!(matches!(outcome, RecordOutcome::Requeued { .. }), "{outcome:?}");
        h.stack.settle(&records, &Default::default()).await;
        let waiting = h.job(&job.job_id).await;
        assert_eq!((waiting.status, waiting.attempts), (JobStatus::Queued, 0), "{waiting:?}");
    }
    assert_eq!(h.stack.queue_depth(&h.stack.dlq_url).await, 0, "nothing reached the dead-letter queue");

    slots.release("alice", &elsewhere, "elsewhere").await.unwrap();
    let outcome = h.deliver_when_visible(90).await;
    let RecordOutcome::Completed(done) = outcome else { panic!("expected completion, got {outcome:?}") };
    assert_eq!(done.attempts, 1);
    assert!(slots.holders("alice").await.unwrap().is_empty(), "the finished job gave its slot back");
}

/// The next message, once one is visible (a held job's copy is delayed a few seconds).
async fn visible(h: &Harness) -> Vec<aws_lambda_events::event::sqs::SqsMessage> {
    for _ in 0..90 {
        let records = h.stack.receive_batch(1).await;
        if !records.is_empty() {
            return records;
        }
    }
    panic!("no message became visible in 90 receives");
}

#[tokio::test]
async fn a_slot_held_by_a_dead_worker_frees_when_its_lease_expires() {
    let (h, slots, _) = harness("1").await;
    let now = h.clock.now_ms();
    let dead = running_elsewhere(&slots, now + 30_000, now).await;
    h.submit(json!({})).await;
    let outcome = h.deliver_one().await;
    assert!(matches!(outcome, RecordOutcome::Requeued { .. }), "held while the lease lives: {outcome:?}");
    h.clock.advance_ms(30_001);
    let outcome = h.deliver_when_visible(90).await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "{outcome:?}");
    let holders = slots.holders("alice").await.unwrap();
    assert!(!holders.contains_key(dead.as_str()) && holders.is_empty(), "{holders:?}");
}

#[tokio::test]
async fn a_tenants_own_limit_replaces_the_default_of_none() {
    let (h, slots, controls) = harness("0").await;
    let now = h.clock.now_ms();
    running_elsewhere(&slots, now + 600_000, now).await;
    h.submit(json!({})).await;
    let outcome = h.deliver_one().await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "no limit by default: {outcome:?}");

    controls.set_tenant_limit("alice", TenantLimit::Concurrency, Some(1)).await.unwrap();
    h.clock.advance_ms(TENANT_LIMITS_CACHE.as_millis() as i64);
    h.submit(json!({})).await;
    let outcome = h.deliver_one().await;
    assert!(matches!(outcome, RecordOutcome::Requeued { .. }), "alice's own limit of 1 is taken: {outcome:?}");
}

/// Many workers asking at once for a tenant's 3 slots: exactly 3 get one (a conditional write each, no
/// read-then-write race), and the rest learn it is full.
#[tokio::test]
async fn concurrent_takers_never_get_more_slots_than_the_limit() {
    let (h, slots, _) = harness("0").await;
    let now = h.clock.now_ms();
    let ids: Vec<JobId> = (0..12).map(|_| JobId::new_random()).collect();
    let takes = ids.iter().map(|job_id| {
        let slots = slots.clone();
        async move { slots.take(Slot { owner: "bob", job_id, token: "t", expires_at: now + 60_000 }, 3, now).await }
    });
    let outcomes: Vec<SlotOutcome> =
        futures_util::future::join_all(takes).await.into_iter().map(Result::unwrap).collect();
    let taken = outcomes.iter().filter(|o| **o == SlotOutcome::Taken).count();
    assert_eq!(taken, 3, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(o, SlotOutcome::Taken | SlotOutcome::Full { limit: 3 })), "{outcomes:?}");
    assert_eq!(slots.holders("bob").await.unwrap().len(), 3);
}

/// A message naming another tenant than its job's (none our dispatcher sends) takes no slot of that
/// tenant's for long and does not run the job outside its own tenant's limit: the job is given back,
/// its attempt too, and sent again with its true tenant, which then runs it.
#[tokio::test]
async fn a_message_naming_another_tenant_is_sent_again_with_the_jobs_own() {
    let (h, slots, _) = harness("1").await;
    let job = h.submit(json!({})).await;
    let own = h.stack.receive_batch(1).await;
    h.stack.settle(&own, &Default::default()).await;
    let body = json!({"jobId": job.job_id}).to_string();
    let mallory = aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value("mallory")
        .build()
        .unwrap();
    h.stack
        .clients
        .sqs
        .send_message()
        .queue_url(&h.stack.queue_url)
        .message_body(body)
        .message_attributes(jobpipe_core::dispatch::TENANT_ATTRIBUTE, mallory)
        .send()
        .await
        .unwrap();
    let outcome = h.deliver_one().await;
    assert!(matches!(outcome, RecordOutcome::Requeued { .. }), "{outcome:?}");
    assert!(slots.holders("mallory").await.unwrap().is_empty(), "mallory's slot was given back");
    let given_back = h.job(&job.job_id).await;
    assert_eq!((given_back.status, given_back.attempts), (JobStatus::Processing, 0), "{given_back:?}");
    let outcome = h.deliver_when_visible(30).await;
    let RecordOutcome::Completed(done) = outcome else { panic!("expected completion, got {outcome:?}") };
    assert_eq!(done.attempts, 1);
}

/// A slot taken while the response was lost: the SDK's retry finds this worker's own entry, which is
/// still this worker's slot (before, it read as held elsewhere, and the job waited out a whole lease).
#[tokio::test]
async fn a_slot_whose_response_was_lost_is_still_this_workers_slot() {
    let stack = jobpipe_testkit::TestStack::new().await;
    let (proxy, clients) = jobpipe_testkit::through_fault_proxy().await;
    let slots = TenantSlots::new(clients.dynamodb.clone(), &stack.control_table);
    let now = 1_000_000;
    let first = JobId::new_random();
    let slot = Slot { owner: "dora", job_id: &first, token: "mine", expires_at: now + 60_000 };
    assert_eq!(slots.take(slot, 2, now).await.unwrap(), SlotOutcome::Taken);
    let second = JobId::new_random();
    proxy.script(jobpipe_testkit::ScriptedFault::lost_response("DynamoDB_20120810.UpdateItem", "SET #slots.#job"));
    let slot = Slot { owner: "dora", job_id: &second, token: "mine-too", expires_at: now + 60_000 };
    assert_eq!(slots.take(slot, 2, now).await.unwrap(), SlotOutcome::Taken);
    assert_eq!(proxy.scripted_pending(), 0, "the lost response was injected");
    assert_eq!(slots.holders("dora").await.unwrap().len(), 2);
}
