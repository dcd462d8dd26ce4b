//! The fault-injection run, sized for the test command.

use jobpipe_testkit::local_stack::build_functions;

use super::root;

/// The fault-injection run, sized for the test command. Its disruption is counted in jobs (a kill of
/// every queue-processor process after every 25 accepted submissions), and it waits for progress to stop
/// rather than for a deadline, so a slower machine makes it slower, never red.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_lost_or_completed_twice_under_faults() {
    build_functions();
    let options = jobpipe::chaos::ChaosOptions { jobs: 300, poison: 6, kill_every_jobs: 25, ..Default::default() };
    let report = jobpipe::chaos::run(&root(), &options, None, false).await.expect("the run");
    println!("{}", report.table());
    assert_eq!(report.violations(), Vec::<String>::new(), "\n{}", report.table());
    assert!(!report.stalled, "progress stopped\n{}", report.table());
    // Refusals come only from injected faults outlasting the SDK's retries: a few at most.
    assert!(report.accepted > 250, "\n{}", report.table());
    // A job ends other than as designed only when killed workers or failed calls used up its attempts;
    // each kill costs the jobs in flight one attempt, so this stays far below the number of kills.
    assert!(report.disrupted <= report.kills, "\n{}", report.table());
    assert!(
        report.kills == report.accepted / 25 && report.faults_injected > 0 && report.duplicates_sent > 0,
        "faults were injected\n{}",
        report.table()
    );
    // Every tenth job of the main tenant names a callback; a few of those are cancelled, the rest end.
    assert!(report.webhook_jobs >= 15, "jobs with a callback ended\n{}", report.table());
    // Batches are submitted with a key and again while a fault answers: all eight get in.
    assert_eq!(report.batches, 8, "every batch was accepted\n{}", report.table());
}
