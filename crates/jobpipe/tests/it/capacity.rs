//! The DynamoDB capacity a job costs, measured through the local stack's AWS proxy on DynamoDB Local.

use std::time::Duration;

use jobpipe::capacity::measure;
use jobpipe::ops::{Target, TargetOptions};
use jobpipe_core::store::JobStore;
use jobpipe_testkit::local_stack::*;

/// Every job writes its item when it is accepted, when it is claimed and when it ends, and each of those
/// writes also the `byOwner` index: the measurement finds them by function, table and index, and the
/// per-job sums are at least those writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_dynamodb_capacity_is_measured_by_function_table_and_index() {
    let stack = start_stack().await;
    let options = TargetOptions { api: stack.base_url(), stack: None, token: None, user: unique("capacity-") };
    let target = Target::resolve(&options).await.unwrap();
    let engine = JobStore::new(
        jobpipe_emulator::aws::dynamodb_client(jobpipe_testkit::endpoints()),
        stack.created.tables["JobsTable"].clone(),
        3600,
    );
    let measured = measure(&stack, &target, &engine, 5, Duration::from_secs(2)).await.unwrap();
    println!("{}", measured.table());
    let writes = |function: &str, on: &str| -> f64 {
        measured.rows.iter().filter(|row| row.function == function && row.on == on).map(|row| row.write_per_job).sum()
    };
    assert!(writes("ApiIngestFunction", "JobsTable") >= 1.0, "accepting a job writes it");
    assert!(writes("QueueProcessorFunction", "JobsTable") >= 2.0, "claiming and completing it write it");
    assert!(writes("QueueProcessorFunction", "JobsTable/byOwner") >= 2.0, "and its index");
    assert!(measured.write_units() >= 6.0 && measured.dollars_per_million_jobs() > 0.0, "{}", measured.table());
    stack.stop().await;
}
