//! The operations commands against the local stack and a deployed one: submit, watch, list and redrive
//! dead letters; `watch` keeping the newest state, confirming its subscription with a read, and following
//! a deployed stack over `wss://`.

use std::sync::Arc;
use std::time::Duration;

use jobpipe_core::JobStatus;
use jobpipe_emulator::faults::{CallHook, HookVerdict};
use jobpipe_testkit::local_stack::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_watches_lists_and_redrives_dead_letters() {
    use jobpipe::ops::{Target, TargetOptions};
    let stack = start_stack().await;
    let target =
        Target::resolve(&TargetOptions { api: stack.base_url(), stack: None, token: None, user: "operator".into() })
            .await
            .unwrap();
    let job = target.submit("echo", json!({"sleepMs": 800})).await.unwrap();
    let job_id = job.job_id.as_str();
    let mut printed = Vec::new();
    let done = target.watch(job_id, &mut printed).await.unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    let printed = String::from_utf8(printed).unwrap();
    assert!(printed.contains("processing") && printed.contains("completed"), "{printed}");
    assert!(printed.contains("[####################] 100%"), "{printed}");

    let listed = target.list(Some("completed"), 10).await.unwrap();
    assert_eq!(listed.jobs[0].job_id.as_str(), job_id);
    let error = target.submit("nope", json!({})).await.unwrap_err().to_string();
    assert!(error.contains("unknown_kind"), "{error}");

    // A dead letter (as if a job's message had been dead-lettered) is listed and moved back.
    let sqs = target.sqs.clone().unwrap();
    let dlq = target.dead_letter_queue_url.clone().unwrap();
    let letter = json!({"jobId": job_id}).to_string();
    let kind =
        aws_sdk_sqs::types::MessageAttributeValue::builder().data_type("String").string_value("echo").build().unwrap();
    sqs.send_message().queue_url(&dlq).message_body(&letter).message_attributes("kind", kind).send().await.unwrap();
    let letters = target.dlq_list(10).await.unwrap();
    assert_eq!((letters.len(), letters[0]["kind"].as_str()), (1, Some("echo")));
    // The listed message is hidden for a moment; wait for it to be visible again, then redrive it.
    let mut moved = 0;
    for _ in 0..40 {
        moved = target.dlq_redrive(10).await.unwrap();
        if moved > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(moved, 1);
    // Its job had already completed: redelivery acknowledges it without running it again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(target.status(job_id).await.unwrap().attempts, 1);
    stack.stop().await;
}

/// `jobpipe watch` subscribes at `$connect`. A change the notifier cannot push (it made before the
/// subscription was visible, or while `$connect` ran, when AWS answers Gone) must not leave it waiting:
/// here the subscription is lost altogether (the proxy swallows its write) and the job ends while
/// `$connect` runs. The watch ends anyway, from the read it makes once connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_though_the_push_it_subscribed_to_never_comes() {
    let watched = Arc::new(std::sync::OnceLock::<String>::new());
    let (subscribing, mut subscriptions) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release, released) = tokio::sync::watch::channel(false);
    let hook: CallHook = {
        let watched = watched.clone();
        Arc::new(move |target, call| {
            let (watched, subscribing, mut released) = (watched.clone(), subscribing.clone(), released.clone());
            Box::pin(async move {
                let Some(job_id) = watched.get() else { return HookVerdict::Forward };
                if !puts_connection_item(&target, &call, job_id) {
                    return HookVerdict::Forward;
                }
                let _ = subscribing.send(());
                let _ = tokio::time::timeout(Duration::from_secs(120), released.wait_for(|released| *released)).await;
                HookVerdict::Swallow
            })
        })
    };
    let endpoints = engines_behind(hook).await;
    let stack = start_stack_with(|options| options.endpoints = Some(endpoints)).await;
    let target = jobpipe::ops::Target::resolve(&jobpipe::ops::TargetOptions {
        api: stack.base_url(),
        stack: None,
        token: None,
        user: "watcher".into(),
    })
    .await
    .unwrap();
    // A job that runs for ten minutes, so only the test ends it.
    let job = target.submit("echo", json!({"sleepMs": 600_000})).await.unwrap();
    let job_id = job.job_id.as_str().to_string();
    watched.set(job_id.clone()).unwrap();

    let watching = {
        let (target, job_id) = (target.clone(), job_id.clone());
        tokio::spawn(async move {
            let mut printed = Vec::new();
            let done = target.watch(&job_id, &mut printed).await;
            (done, String::from_utf8(printed).unwrap())
        })
    };
    tokio::time::timeout(Duration::from_secs(120), subscriptions.recv()).await.expect("watch subscribes at $connect");
    end_job(&stack, &job_id).await;
    release.send_replace(true);

    let (done, printed) = tokio::time::timeout(Duration::from_secs(120), watching)
        .await
        .expect("the watch ended without the push")
        .unwrap();
    let done = done.unwrap();
    assert_eq!((done.status, done.error.unwrap().code.as_str()), (JobStatus::Failed, "stopped_by_test"));
    assert!(!printed.contains("polling"), "it stayed live: {printed}");
    stack.stop().await;
}

/// Pushes can arrive out of order and a read can race a push: `watch` shows a state only if it is not
/// older (`updatedAt`) than the one it holds. Served here: the job's API and a WebSocket that sends
/// `processing` 50%, then an older `processing` 20%, then `completed`.
#[tokio::test]
async fn watch_ignores_messages_older_than_the_state_it_shows() {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    let job_id = jobpipe_core::job::JobId::new_random().as_str().to_string();
    // A job as `GET /jobs/{id}` answers it, which is also what a push carries (with `type`).
    let state = |status: &str, progress: u8, at: &str| {
        json!({
            "type": "job", "jobId": job_id, "kind": "echo", "status": status, "input": {}, "result": null,
            "error": null, "attempts": 1, "progress": progress, "createdAt": "2026-01-01T00:00:00Z",
            "startedAt": null, "completedAt": null, "updatedAt": at, "durationMs": null,
        })
    };
    let current = Arc::new(std::sync::Mutex::new(state("processing", 0, "2026-01-01T00:00:01Z")));
    let (reads, mut reads_seen) = tokio::sync::watch::channel(0_usize);
    let reads = Arc::new(reads);
    let pushes = vec![
        state("processing", 50, "2026-01-01T00:00:02Z"),
        state("processing", 20, "2026-01-01T00:00:01.500Z"),
        state("completed", 100, "2026-01-01T00:00:03Z"),
    ];
    let app = axum::Router::new()
        .route(
            "/jobs/{id}",
            axum::routing::get({
                let current = current.clone();
                move || async move {
                    reads.send_modify(|reads| *reads += 1);
                    axum::Json(current.lock().unwrap().clone())
                }
            }),
        )
        .route(
            "/ws",
            axum::routing::get(move |upgrade: WebSocketUpgrade| async move {
                upgrade.on_upgrade(move |mut socket| async move {
                    // The pushes follow the watch's read once connected (a watch that makes none gets
                    // them after a while all the same).
                    let confirmed = reads_seen.wait_for(|reads| *reads >= 2);
                    let _ = tokio::time::timeout(Duration::from_secs(10), confirmed).await;
                    for push in pushes {
                        if push["status"] == "completed" {
                            *current.lock().unwrap() = push.clone();
                        }
                        let _ = socket.send(Message::Text(push.to_string().into())).await;
                    }
                    // Stay open: the watch closes when the job ends.
                    while let Some(Ok(_)) = socket.recv().await {}
                })
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let target = jobpipe::ops::Target {
        api_url: format!("http://{address}"),
        ws_url: format!("ws://{address}/ws"),
        token: "token".into(),
        sqs: None,
        dead_letter_queue_url: None,
        queues_by_kind: Default::default(),
        controls: None,
        webhooks: None,
        webhook_queue_url: None,
        http: reqwest::Client::new(),
    };
    let mut printed = Vec::new();
    let done =
        tokio::time::timeout(Duration::from_secs(60), target.watch(&job_id, &mut printed)).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    let printed = String::from_utf8(printed).unwrap();
    let progress: Vec<&str> = printed.lines().map(|line| line.rsplit(' ').next().unwrap()).collect();
    assert_eq!(progress, ["0%", "50%", "100%"], "the older 20% was not shown:\n{printed}");
}

/// A TLS front for the local stack on `localhost`, its certificate self-signed: answers its port and the
/// certificate as a PEM file, for the client to trust (`SSL_CERT_FILE`).
async fn tls_front(upstream: std::net::SocketAddr) -> (u16, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = std::env::temp_dir().join(format!("jobpipe-test-{}.pem", uuid::Uuid::new_v4().simple()));
    std::fs::write(&pem, certified.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![certified.cert.der().clone()], key);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config.unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let (Ok(mut client), Ok(mut server)) =
                    (acceptor.accept(client).await, tokio::net::TcpStream::connect(upstream).await)
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (port, pem)
}

/// Ends a running job as the reconciler would once its attempt's lease had expired (a day from now).
async fn end_job(stack: &jobpipe_emulator::dev::DevStack, job_id: &str) {
    let jobs = jobpipe_core::store::JobStore::new(
        jobpipe_testkit::clients().dynamodb,
        &stack.created.tables["JobsTable"],
        3600,
    );
    let error = jobpipe_core::job::ErrorInfo { code: "stopped_by_test".into(), message: "ended by the test".into() };
    let a_day_later = jobpipe_core::clock::Clock::now_ms(&jobpipe_core::SystemClock) + 24 * 3600 * 1000;
    let ended = jobs.force_fail(&jobpipe_core::job::JobId::parse(job_id).unwrap(), &error, a_day_later).await;
    assert!(matches!(ended, Ok(jobpipe_core::store::ForceFailOutcome::Failed(_))), "{ended:?}");
}

/// `jobpipe watch --stack NAME` follows a deployed stack live: the WebSocket URL from the stack's
/// outputs is `wss://`, served here by a TLS front for the local stack (the stack's outputs come from
/// CloudFormation in moto). With the front's certificate trusted the watch is live; without it the TLS
/// handshake fails (the roots are checked) and the watch falls back to polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_deployed_stack_live_over_wss() {
    use tokio::io::AsyncBufReadExt;
    let stack = start_stack().await;
    let (tls_port, certificate) = tls_front(stack.address).await;
    let stack_name = format!("watch-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let queue = |id: &str| stack.created.queues[id].0.clone();
    let template = json!({
        "Resources": {"Marker": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": format!("{stack_name}-marker")}}},
        "Outputs": {
            "HttpApiUrl": {"Value": stack.base_url()},
            "WebSocketUrl": {"Value": format!("wss://localhost:{tls_port}/ws")},
            "JobsQueueUrl": {"Value": queue("JobsQueue")},
            "DeadLetterQueueUrl": {"Value": queue("JobsDeadLetterQueue")},
        },
    });
    aws_sdk_cloudformation::Client::new(&jobpipe_testkit::sdk_config())
        .create_stack()
        .stack_name(&stack_name)
        .template_body(template.to_string())
        .send()
        .await
        .expect("creating the stack in moto");
    let token = stack.token("deployed-user");
    let another_certificate = certificate.with_extension("other.pem");
    std::fs::write(
        &another_certificate,
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap().cert.pem(),
    )
    .unwrap();
    let watch = |job_id: &str, trusted: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobpipe"));
        command
            .args(["watch", job_id, "--stack", &stack_name, "--token", &token])
            .env("AWS_ENDPOINT_URL", jobpipe_testkit::moto_endpoint())
            .env("AWS_REGION", jobpipe_emulator::aws::REGION)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("JOBPIPE_API")
            .env_remove("JOBPIPE_TOKEN")
            .env_remove("JOBPIPE_STACK")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // The client trusts the system's store; `SSL_CERT_FILE` stands in for it here.
        let trust = if trusted { &certificate } else { &another_certificate };
        command.env("SSL_CERT_FILE", trust);
        command.spawn().expect("running jobpipe watch")
    };

    // Trusted: the watch opens the WebSocket through the TLS front and stays live until the job ends.
    let job = post_job(&stack, &token, json!({"sleepMs": 600_000})).await;
    let job_id = job["jobId"].as_str().unwrap();
    let mut live = watch(job_id, true);
    let mut connected = false;
    for _ in 0..1200 {
        if stack.gateway.open_connections().await > 0 {
            connected = true;
            break;
        }
        if let Some(status) = live.try_wait().unwrap() {
            panic!("watch exited ({status}) before it connected: {:?}", live.wait_with_output().await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(connected, "watch never opened the wss:// WebSocket");
    end_job(&stack, job_id).await;
    let output = tokio::time::timeout(Duration::from_secs(120), live.wait_with_output()).await.unwrap().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("stopped_by_test") && !printed.contains("polling"), "{printed}");

    // Untrusted certificate: the handshake is refused and the watch polls instead, to the same end.
    let job = post_job(&stack, &token, json!({"sleepMs": 600_000})).await;
    let job_id = job["jobId"].as_str().unwrap();
    let mut polling = watch(job_id, false);
    let mut lines = tokio::io::BufReader::new(polling.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    while !printed.contains("polling") {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await.unwrap().unwrap();
        printed.push_str(&line.expect("watch said why it polls before it exited"));
        printed.push('\n');
    }
    assert!(printed.contains("live updates unavailable"), "{printed}");
    end_job(&stack, job_id).await;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await.unwrap().unwrap() {
        printed.push_str(&line);
        printed.push('\n');
    }
    assert!(polling.wait().await.unwrap().success(), "{printed}");
    assert!(printed.contains("stopped_by_test"), "{printed}");
    let _ = (std::fs::remove_file(&certificate), std::fs::remove_file(&another_certificate));
    stack.stop().await;
}

/// `submit --delay` and `--run-at` through the whole local stack: the job is `scheduled`, its message
/// waits in SQS (a delay), and it starts at its time, never before; one an hour ahead is cancelled.
/// How late it started is printed, not asserted (it depends on the machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_schedules_jobs_that_start_at_their_time_and_cancels_them() {
    use jobpipe::ops::{Start, Target, TargetOptions};
    use jobpipe_core::clock::from_rfc3339;
    let stack = start_stack().await;
    let target =
        Target::resolve(&TargetOptions { api: stack.base_url(), stack: None, token: None, user: "planner".into() })
            .await
            .unwrap();
    let soon = target.submit_starting("echo", json!({}), &Start::After(Duration::from_secs(3))).await.unwrap();
    assert_eq!(soon.status, JobStatus::Scheduled, "{soon:?}");
    let run_at = from_rfc3339(soon.run_at.as_deref().unwrap()).unwrap();
    assert_eq!(run_at - from_rfc3339(&soon.created_at).unwrap(), 3_000);

    let later_at = jobpipe_core::clock::to_rfc3339(run_at + 3_600_000);
    let later = target.submit_starting("echo", json!({}), &Start::At(later_at.clone())).await.unwrap();
    assert_eq!((later.status, later.run_at.as_deref()), (JobStatus::Scheduled, Some(&*later_at)));
    let scheduled = target.list(Some("scheduled"), 10).await.unwrap();
    assert_eq!(scheduled.jobs.len(), 2, "{scheduled:?}");
    let cancelled = target.cancel(later.job_id.as_str()).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    let error = target.cancel(later.job_id.as_str()).await.unwrap_err().to_string();
    assert!(error.contains("not_cancellable"), "{error}");

    let mut printed = Vec::new();
    let done = target.watch(soon.job_id.as_str(), &mut printed).await.unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert_eq!(done.status, JobStatus::Completed, "{printed}");
    assert!(printed.contains("scheduled") && printed.contains("starts at"), "{printed}");
    let started = from_rfc3339(done.started_at.as_deref().unwrap()).unwrap();
    assert!(started >= run_at, "started {} ms before its time", run_at - started);
    assert_eq!(done.attempts, 1, "an early delivery spends no attempt");
    println!("scheduled job started {} ms after its runAt", started - run_at);
    stack.stop().await;
}

/// `jobpipe schedules` through the whole local stack, whose reconciler fires ticks as deployed: a
/// per-minute cron in a time zone half an hour off UTC creates its first tick's job, which starts at the
/// tick and completes; another schedule is paused, resumed and deleted. How late the tick's job started is
/// printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_schedules_and_the_local_stack_fires_their_ticks() {
    use jobpipe::ops::{Cadence, Target, TargetOptions};
    use jobpipe_core::clock::from_rfc3339;
    let stack = start_stack_with(|options| options.schedule_override = Some(Duration::from_secs(2))).await;
    let target =
        Target::resolve(&TargetOptions { api: stack.base_url(), stack: None, token: None, user: "timer".into() })
            .await
            .unwrap();
    let cron = Cadence::Cron { cron: "* * * * *".into(), timezone: Some("Asia/Kolkata".into()) };
    let every_minute = target.create_schedule("echo", json!({"n": 7}), &cron).await.unwrap();
    let first_tick = from_rfc3339(every_minute.next_tick_at.as_deref().unwrap()).unwrap();
    assert_eq!(first_tick % 60_000, 0, "a minute's start: {every_minute:?}");
    let hourly = target.create_schedule("echo", json!({}), &Cadence::Rate("1 hour".into())).await.unwrap();
    assert_eq!(target.list_schedules(10).await.unwrap().schedules.len(), 2);
    let paused = target.pause_schedule(&hourly.schedule_id).await.unwrap();
    assert_eq!((paused.state.as_str(), paused.next_tick_at), ("paused", None));
    let resumed = target.resume_schedule(&hourly.schedule_id).await.unwrap();
    assert_eq!(resumed.state.as_str(), "active");
    target.delete_schedule(&hourly.schedule_id).await.unwrap();
    let error = target.pause_schedule(&hourly.schedule_id).await.unwrap_err().to_string();
    assert!(error.contains("404"), "{error}");
    let left = target.list_schedules(10).await.unwrap().schedules;
    assert_eq!(left.iter().map(|s| s.schedule_id.as_str()).collect::<Vec<_>>(), [every_minute.schedule_id.as_str()]);

    // The reconciler (every 2 s here) creates the first tick's job ahead of its time.
    let mut tick_job = None;
    for _ in 0..300 {
        let page = target.list(None, 10).await.unwrap();
        // Ticks within a few minutes are all created ahead: find the first one's job.
        if let Some(job) =
            page.jobs.into_iter().find(|job| job.run_at.as_deref().and_then(from_rfc3339) == Some(first_tick))
        {
            tick_job = Some(job);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let tick_job = tick_job.expect("the schedule's first tick created a job");
    assert_eq!(from_rfc3339(tick_job.run_at.as_deref().unwrap()), Some(first_tick), "{tick_job:?}");
    let done = target.watch(tick_job.job_id.as_str(), &mut Vec::new()).await.unwrap();
    assert_eq!((done.status, &done.result), (JobStatus::Completed, &Some(json!({"n": 7}))), "{done:?}");
    let started = from_rfc3339(done.started_at.as_deref().unwrap()).unwrap();
    assert!(started >= first_tick, "started {} ms before its tick", first_tick - started);
    let schedule = target.list_schedules(10).await.unwrap().schedules.remove(0);
    // Later ticks are created ahead of their time too; none was missed.
    let last_tick = from_rfc3339(schedule.last_tick_at.as_deref().unwrap()).unwrap();
    assert!(last_tick >= first_tick && schedule.skipped_ticks == 0, "{schedule:?}");
    println!("a schedule's tick job started {} ms after its tick", started - first_tick);
    stack.stop().await;
}

/// `jobpipe kinds pause echo` on the local stack: `GET /kinds` says so, an echo job is accepted and
/// waits, queued, with no attempt spent, while the processor puts it back again and again; resumed, it
/// runs once. A kind the stack does not offer cannot be paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pauses_a_kind_whose_jobs_wait_until_it_is_resumed() {
    use jobpipe::ops::{Target, TargetOptions};
    let (tap, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stack = start_stack_with(|options| {
        options.log_tap = Some(tap);
        options.extra_env.insert("PAUSED_KIND_RECHECK_SECONDS".into(), "1".into());
    })
    .await;
    let target =
        Target::resolve(&TargetOptions { api: stack.base_url(), stack: None, token: None, user: "operator".into() })
            .await
            .unwrap();
    assert_eq!(target.set_kind_paused("echo", true).await.unwrap(), ["echo"]);
    assert_eq!(target.kinds().await.unwrap()["paused"], json!(["echo"]));
    let error = target.set_kind_paused("nope", true).await.unwrap_err().to_string();
    assert!(error.contains("not a kind this stack offers"), "{error}");

    let job = target.submit("echo", json!({"n": 3})).await.unwrap();
    let job_id = job.job_id.as_str().to_string();
    // The processor has seen it paused twice (each time a new, delayed message): it still waits.
    let mut put_back = 0;
    while put_back < 2 {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.recv())
            .await
            .expect("the processor kept putting the paused job back")
            .expect("the log tap is open");
        if line.contains(&job_id) && line.contains("its kind is paused") {
            put_back += 1;
        }
    }
    let waiting = target.status(&job_id).await.unwrap();
    assert_eq!((waiting.status, waiting.attempts), (JobStatus::Queued, 0), "{waiting:?}");

    assert!(target.set_kind_paused("echo", false).await.unwrap().is_empty());
    let done = target.watch(&job_id, &mut Vec::new()).await.unwrap();
    assert_eq!((done.status, done.attempts), (JobStatus::Completed, 1), "{done:?}");
    stack.stop().await;
}

/// `jobpipe tenants limit alice --concurrency 2` through the whole local stack: of alice's eight jobs,
/// never more than two are running at once (from each job's own `startedAt` and `completedAt`), all run
/// once, and bob, who has no limit, is not held back by alice's queue. The check is by counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_limits_how_many_of_a_tenants_jobs_run_at_once() {
    use jobpipe::ops::{Target, TargetOptions};
    use jobpipe_core::clock::from_rfc3339;
    use jobpipe_core::controls::TenantLimit;
    let stack = start_stack().await;
    let as_user = |user: &str| TargetOptions { api: stack.base_url(), stack: None, token: None, user: user.into() };
    let (alice, bob) =
        (Target::resolve(&as_user("alice")).await.unwrap(), Target::resolve(&as_user("bob")).await.unwrap());
    let controls = alice.controls.clone().expect("the local stack names its control table");
    controls.set_tenant_limit("alice", TenantLimit::Concurrency, Some(2)).await.unwrap();

    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(alice.submit("echo", json!({"n": n, "sleepMs": 400})).await.unwrap().job_id.to_string());
    }
    let bobs = bob.submit("echo", json!({"sleepMs": 400})).await.unwrap();
    let mut spans = Vec::new();
    for id in &ids {
        let done = alice.watch(id, &mut Vec::new()).await.unwrap();
        assert_eq!((done.status, done.attempts), (JobStatus::Completed, 1), "{done:?}");
        let at = |time: Option<&str>| from_rfc3339(time.unwrap()).unwrap();
        spans.push((at(done.started_at.as_deref()), at(done.completed_at.as_deref())));
    }
    let most_at_once = spans
        .iter()
        .map(|(start, _)| {
            spans.iter().filter(|(other_start, other_end)| other_start <= start && start < other_end).count()
        })
        .max()
        .unwrap();
    assert!(most_at_once <= 2, "{most_at_once} of alice's jobs ran at once: {spans:?}");
    let done = bob.watch(bobs.job_id.as_str(), &mut Vec::new()).await.unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    let slots = jobpipe_core::tenant_slots::TenantSlots::new(
        aws_sdk_dynamodb::Client::new(&jobpipe_emulator::aws::sdk_config(&stack.endpoints.dynamodb)),
        &stack.created.tables["ControlTable"],
    );
    assert!(slots.holders("alice").await.unwrap().is_empty(), "every slot was given back");
    stack.stop().await;
}

/// `jobpipe tenants limit carol --open-jobs 2` through the whole local stack: with two of carol's jobs
/// waiting or running, a third is refused (`429`, `openJobs`, nothing stored); once they end, the stream
/// consumer counts them down and carol may submit again; at the end her count is back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_limits_how_many_of_a_tenants_jobs_wait_or_run() {
    use jobpipe::ops::{Target, TargetOptions};
    use jobpipe_core::controls::TenantLimit;
    use jobpipe_core::open_jobs::OpenJobs;
    let stack = start_stack().await;
    let carol =
        Target::resolve(&TargetOptions { api: stack.base_url(), stack: None, token: None, user: "carol".into() })
            .await
            .unwrap();
    carol.controls.clone().unwrap().set_tenant_limit("carol", TenantLimit::OpenJobs, Some(2)).await.unwrap();
    let open = OpenJobs::new(
        aws_sdk_dynamodb::Client::new(&jobpipe_emulator::aws::sdk_config(&stack.endpoints.dynamodb)),
        &stack.created.tables["ControlTable"],
    );
    // Two jobs waiting (scheduled an hour ahead), so they are open whatever the machine's speed.
    let later = jobpipe::ops::Start::After(Duration::from_secs(3600));
    let first = carol.submit_starting("echo", json!({}), &later).await.unwrap();
    let second = carol.submit_starting("echo", json!({}), &later).await.unwrap();
    let refused = carol.submit("echo", json!({})).await.unwrap_err().to_string();
    assert!(refused.contains("quota_exceeded") && refused.contains("waiting or running"), "{refused}");
    assert_eq!(carol.list(None, 10).await.unwrap().jobs.len(), 2, "nothing stored for the refused");
    for job in [&first, &second] {
        assert_eq!(carol.cancel(job.job_id.as_str()).await.unwrap().status, JobStatus::Cancelled);
    }
    // Counted down by the webhook sender from the table's stream, a moment after the jobs ended.
    let mut third = None;
    for _ in 0..240 {
        match carol.submit("echo", json!({})).await {
            Ok(job) => {
                third = Some(job);
                break;
            }
            Err(error) => assert!(error.to_string().contains("waiting or running"), "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let third = third.expect("ended jobs make room again");
    carol.watch(third.job_id.as_str(), &mut Vec::new()).await.unwrap();
    let mut count = open.count("carol").await.unwrap();
    for _ in 0..240 {
        if count == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        count = open.count("carol").await.unwrap();
    }
    assert_eq!(count, 0, "every ended job was counted down once");
    stack.stop().await;
}

/// `jobpipe submit --batch FILE --wait` and `jobpipe batch status` on the local stack: the batch is
/// accepted whole, followed until every job ended, and a bad job refuses it naming its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_a_batch_and_follows_it_to_the_end() {
    use jobpipe::ops::{Target, TargetOptions};
    let stack = start_stack().await;
    let user = unique("batcher-");
    let target =
        Target::resolve(&TargetOptions { api: stack.base_url(), stack: None, token: None, user }).await.unwrap();
    let jobs = json!([
        {"kind": "echo", "input": {"n": 1}},
        {"kind": "echo", "input": {"n": 2, "sleepMs": 300}},
        {"kind": "echo", "input": {"failPermanently": true}},
    ]);
    let batch = target.submit_batch(jobs).await.unwrap();
    let batch_id = batch["batchId"].as_str().unwrap().to_string();
    let mut printed = Vec::new();
    let done = target.wait_for_batch(&batch_id, &mut printed).await.unwrap();
    assert_eq!((done["total"].as_u64(), &done["done"]), (Some(3), &json!(true)), "{done}");
    assert_eq!((done["counts"]["completed"].as_u64(), done["counts"]["failed"].as_u64()), (Some(2), Some(1)));
    let printed = String::from_utf8(printed).unwrap();
    assert!(printed.lines().last().unwrap().contains("3/3 ended"), "{printed}");
    assert_eq!(target.batch_status(&batch_id).await.unwrap()["jobIds"], batch["jobIds"]);

    let refused = target
        .submit_batch(json!([{"kind": "echo"}, {"kind": "echo", "input": {"sleepMs": "long"}}]))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("422") && refused.contains("job 1"), "{refused}");
    stack.stop().await;
}
