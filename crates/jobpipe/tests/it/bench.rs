//! The benchmark's execution environment measures what it claims.

use std::time::Duration;

use serde_json::json;

use jobpipe_emulator::dev::DevOptions;
use jobpipe_emulator::runtime::FunctionProcess;

use super::root;

/// The benchmark's execution environment measures what it claims: an init time, an answer per event,
/// memory and CPU of the function's own process. (The figures themselves are `jobpipe bench`'s to
/// print; nothing here depends on how fast this machine is.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_environment_times_init_and_reads_usage() {
    jobpipe_emulator::setup::build_packages(&root(), &["lambda-floor"], false).expect("building the floor");
    let floor = FunctionProcess::new("floor", DevOptions::new(root()).binaries.join("lambda-floor"));
    let env = jobpipe::bench::Environment::start(&floor).await.expect("the floor starts");
    assert!(env.init > Duration::ZERO && env.init < Duration::from_secs(10), "{:?}", env.init);
    let before = env.usage();
    for n in 0..20 {
        assert_eq!(env.invoke(&json!({"n": n})).await.unwrap(), json!({"n": n}), "the floor echoes its event");
    }
    let after = env.usage();
    assert!(after.peak_rss_kb > 1000, "VmHWM of the function's process: {after:?}");
    assert!(after.cpu > before.cpu, "handling 20 events took CPU: {before:?} -> {after:?}");
    env.stop().await;

    let crashing = FunctionProcess::new("false", "/bin/false".into());
    let error = jobpipe::bench::Environment::start(&crashing).await.err().expect("an exit during init is an error");
    assert!(error.to_string().contains("exited during init"), "{error}");
}
