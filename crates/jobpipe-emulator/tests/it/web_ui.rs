//! The web UI in headless Chromium, as a person uses it: submitting a job and seeing it complete, and
//! keeping the newest state when pushes arrive out of order or never.

use jobpipe_testkit::local_stack::*;

use super::root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_submits_a_job_in_the_browser_and_sees_it_complete() {
    let stack = start_stack().await;
    browser_script("submit-job.mjs", &[&stack.base_url()]).await;
    assert!(root().join("tests/artifacts/browser-job-completed.png").exists());
    stack.stop().await;
}

/// A static host for the web UI on an origin of its own, as a deployed frontend is.
pub(crate) async fn serve_frontend() -> (String, tokio::task::JoinHandle<()>) {
    let web = root().join("web");
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let web = web.clone();
        async move {
            use axum::response::IntoResponse;
            match jobpipe_emulator::gateway::static_file(&web, uri.path()).await {
                Some(file) => file,
                None => axum::http::StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (url, tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
}

/// The web UI in headless Chromium with its WebSocket routed through the test script: pushes delivered
/// out of order never take a job back to an older state, and a job whose pushes never come is still
/// seen to end (the subscription confirmed with a read, then a slow poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_keeps_the_newest_state_and_sees_jobs_end_without_pushes() {
    let stack = start_stack().await;
    browser_script("live-status.mjs", &[&stack.base_url()]).await;
    stack.stop().await;
}
