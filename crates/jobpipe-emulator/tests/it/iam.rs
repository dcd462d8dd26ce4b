//! IAM enforced per function: a call outside the caller's role is refused as AWS refuses it, and the
//! pipeline, driven through every path, needs every statement of every role (`jobpipe iam-mutations`
//! removes each in turn and shows this test then fails, naming the action).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use jobpipe_core::config::AwsClients;
use jobpipe_emulator::aws::{Endpoints, sdk_config_as};
use jobpipe_emulator::faults::{CallHook, FaultProxy, HookVerdict};
use jobpipe_emulator::iam::{Iam, Role, Statement, access_key};
use jobpipe_testkit::local_stack::*;
use serde_json::{Value, json};

/// The clients a function's code would build, with its role's key, through the stack's proxy.
fn clients_of(stack: &jobpipe_emulator::dev::DevStack, function: &str) -> AwsClients {
    let shared = sdk_config_as(&stack.endpoints.aws, &access_key(function));
    let mut clients = AwsClients::from_sdk_config(&shared);
    clients.s3 =
        aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&shared).force_path_style(true).build());
    clients
}

fn refusal<E: std::fmt::Debug, R: std::fmt::Debug>(result: Result<R, E>) -> String {
    format!("{:?}", result.expect_err("the call is refused"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outside_a_functions_role_is_refused_as_aws_refuses_it() {
    let stack = start_stack().await;
    let ingest = clients_of(&stack, "ApiIngestFunction");
    let jobs_table = &stack.created.tables["JobsTable"];

    // DynamoDB: an action the role lacks on a table it may use, and an index it may not query.
    let scan = refusal(ingest.dynamodb.scan().table_name(jobs_table).send().await);
    assert!(scan.contains("AccessDeniedException"), "{scan}");
    assert!(scan.contains(&format!("is not authorized to perform: dynamodb:Scan on resource: arn:aws:dynamodb:us-east-1:123456789012:table/{jobs_table}")), "{scan}");
    let query = |index: &str| {
        ingest
            .dynamodb
            .query()
            .table_name(jobs_table)
            .index_name(index)
            .key_condition_expression("#o = :o")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_values(":o", AttributeValue::S("nobody".into()))
            .send()
    };
    assert!(query("byOwner").await.is_ok(), "ListByOwner allows the byOwner index");
    let pending = refusal(query("pendingDispatch").await);
    assert!(pending.contains(&format!("dynamodb:Query on resource: arn:aws:dynamodb:us-east-1:123456789012:table/{jobs_table}/index/pendingDispatch")), "{pending}");

    // SQS: the job queues, not the dead-letter queue.
    let (dlq_url, dlq_arn) = stack.created.queues["JobsDeadLetterQueue"].clone();
    let send = refusal(ingest.sqs.send_message().queue_url(&dlq_url).message_body("{}").send().await);
    assert!(
        send.contains("AccessDenied") && send.contains(&format!("sqs:SendMessage on resource: {dlq_arn}")),
        "{send}"
    );

    // S3: objects under the granted prefixes only; a role with no S3 statement gets nothing.
    let bucket = &stack.created.buckets["PayloadBucket"];
    let put = refusal(ingest.s3.put_object().bucket(bucket).key("elsewhere/x").body(b"x".to_vec().into()).send().await);
    assert!(
        put.contains("AccessDenied")
            && put.contains(&format!("s3:PutObject on resource: arn:aws:s3:::{bucket}/elsewhere/x")),
        "{put}"
    );
    let missing = refusal(ingest.s3.get_object().bucket(bucket).key("payloads/none.json").send().await);
    assert!(missing.contains("NoSuchKey"), "ListBucket makes a missing key 404: {missing}");
    let connect = clients_of(&stack, "WebsocketConnectFunction");
    let get = refusal(connect.s3.get_object().bucket(bucket).key("payloads/none.json").send().await);
    assert!(get.contains("AccessDenied") && get.contains("s3:GetObject"), "{get}");

    // A key nobody was given.
    let stranger = AwsClients::from_sdk_config(&sdk_config_as(&stack.endpoints.aws, "AKIASTRANGER"));
    let unknown =
        stranger.dynamodb.get_item().table_name(jobs_table).key("jobId", AttributeValue::S("x".into())).send().await;
    let unknown = unknown.expect_err("an unknown key is refused").into_service_error();
    // The SDK takes the code from the `x-amzn-errortype` header first, so it must say the same.
    assert_eq!(
        aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&unknown),
        Some("UnrecognizedClientException"),
        "{unknown:?}"
    );

    // Bedrock: only the offered models, and only for the processor.
    let http = reqwest::Client::new();
    let invoke = |function: &str, model: &str| {
        http.post(format!("{}/model/{}/invoke", stack.base_url(), model.replace(':', "%3A")))
            .header("authorization", signed_as(&access_key(function)))
            .json(&json!({"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "a boat"}, "imageGenerationConfig": {"width": 320, "height": 320}}))
            .send()
    };
    let allowed = invoke("QueueProcessorFunction", "amazon.nova-canvas-v1:0").await.unwrap();
    assert_eq!(allowed.status(), 200);
    for (function, model) in
        [("QueueProcessorFunction", "amazon.nova-reel-v1:0"), ("ApiIngestFunction", "amazon.nova-canvas-v1:0")]
    {
        let denied = invoke(function, model).await.unwrap();
        assert_eq!(denied.status(), 403);
        assert_eq!(denied.headers()["x-amzn-errortype"], "AccessDeniedException");
        let message = denied.json::<Value>().await.unwrap()["message"].as_str().unwrap_or_default().to_string();
        assert!(
            message.contains(&format!(
                "bedrock:InvokeModel on resource: arn:aws:bedrock:us-east-1::foundation-model/{model}"
            )),
            "{message}"
        );
    }

    // @connections: the notifier may push (the connection is gone), api-ingest may not.
    let push = |function: &str| {
        http.post(format!("{}/@connections/nosuchconnection", stack.base_url()))
            .header("authorization", signed_as(&access_key(function)))
            .body("{}")
            .send()
    };
    assert_eq!(push("NotifierFunction").await.unwrap().status(), 410);
    let denied = push("ApiIngestFunction").await.unwrap();
    assert_eq!(denied.status(), 403);
    let message = denied.json::<Value>().await.unwrap()["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("execute-api:ManageConnections on resource: arn:aws:execute-api:us-east-1:123456789012:"),
        "{message}"
    );
    assert!(message.ends_with("/local/POST/@connections/nosuchconnection because no identity-based policy allows the execute-api:ManageConnections action"), "{message}");
    stack.stop().await;
}

/// S3 answers a missing key with 404 only to a caller that may list the bucket; to any other, 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_denied_to_a_role_that_may_not_list_the_bucket() {
    let admin = jobpipe_testkit::clients();
    let bucket = unique("iam-bucket");
    admin.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let statement = |sid: &str, action: &str, resource: String| Statement {
        sid: sid.into(),
        actions: vec![action.into()],
        resources: vec![resource],
    };
    let read = statement("Read", "s3:GetObject", format!("arn:aws:s3:::{bucket}/*"));
    let list = statement("List", "s3:ListBucket", format!("arn:aws:s3:::{bucket}"));
    let iam = Iam::new(vec![
        Role { function: "Reader".into(), statements: vec![read.clone()] },
        Role { function: "Lister".into(), statements: vec![read, list] },
    ]);
    let proxy = FaultProxy::new(jobpipe_testkit::endpoints(), 0.0, 0.0);
    proxy.set_iam(Arc::new(iam));
    let (url, _serving) = proxy.serve().await.unwrap();
    let s3_as = |function: &str| {
        let shared = sdk_config_as(&url, &access_key(function));
        aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&shared).force_path_style(true).build())
    };
    let reader = refusal(s3_as("Reader").get_object().bucket(&bucket).key("gone.json").send().await);
    assert!(reader.contains("AccessDenied") && reader.contains("s3:ListBucket"), "{reader}");
    let lister = refusal(s3_as("Lister").get_object().bucket(&bucket).key("gone.json").send().await);
    assert!(lister.contains("NoSuchKey"), "{lister}");
}

/// Drives every path of the pipeline through a stack whose functions run with their own roles, and
/// checks each statement of each role allowed some call. Removing any statement makes some step fail
/// with the refused action in the functions' logs (`jobpipe iam-mutations`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_of_every_role_is_needed_by_the_pipeline() {
    // The first job message ingest sends is lost (so the reconciler re-dispatches it); while
    // `drop_inputs` is set, a job's stored input is deleted before its message reaches the queue (so the
    // processor meets a missing payload). It holds the payload bucket's name.
    let first_send_lost = Arc::new(AtomicBool::new(false));
    let drop_inputs: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let hook: CallHook = {
        let (first_send_lost, drop_inputs) = (first_send_lost.clone(), drop_inputs.clone());
        Arc::new(move |target, call| {
            let (first_send_lost, drop_inputs) = (first_send_lost.clone(), drop_inputs.clone());
            Box::pin(async move {
                if target != "AmazonSQS.SendMessage" {
                    return HookVerdict::Forward;
                }
                if !first_send_lost.swap(true, Ordering::SeqCst) {
                    return HookVerdict::Swallow;
                }
                let bucket = drop_inputs.lock().unwrap().clone();
                if let Some(bucket) = bucket {
                    delete_input(&bucket, &call).await;
                }
                HookVerdict::Forward
            })
        })
    };
    let endpoints: Endpoints = engines_behind(hook).await;
    let stack = start_stack_with(|options| {
        options.endpoints = Some(endpoints);
        options.schedule_override = Some(Duration::from_secs(1));
        // Tenants' concurrency and open jobs limited (never reached), so the processor takes and gives back
        // slots, and api-ingest and the webhook sender count open jobs up and down.
        options.parameters.insert("TenantConcurrency".into(), "50".into());
        options.parameters.insert("TenantOpenJobs".into(), "1000".into());
        for (name, value) in [
            ("DISPATCH_GRACE_SECONDS", "1"),
            ("DISPATCH_RECHECK_SECONDS", "2"),
            ("RETRY_BASE_SECONDS", "1"),
            ("RETRY_MAX_SECONDS", "2"),
        ] {
            options.extra_env.insert(name.into(), value.into());
        }
    })
    .await;
    let token = stack.token("iam");
    let http = reqwest::Client::new();
    let submit = |kind: &str, input: Value| {
        http.post(format!("{}/jobs", stack.base_url()))
            .bearer_auth(&token)
            .json(&json!({"kind": kind, "input": input}))
            .send()
    };
    let job_id = |job: &Value| job["jobId"].as_str().expect("a job id").to_string();

    // Re-dispatched by the reconciler: its first message was lost.
    let redispatched = post_job(&stack, &token, json!({"n": 1})).await;
    let ended = until_terminal(&stack, &token, &job_id(&redispatched)).await;
    assert_eq!(ended["status"], "completed", "{ended}");

    // Pushed live to a subscriber; a subscription whose socket is gone is forgotten.
    let pushed = job_id(&post_job(&stack, &token, json!({"sleepMs": 1500})).await);
    let admin = jobpipe_testkit::clients();
    add_gone_subscriber(&stack, &pushed, "iam").await;
    let mut socket = connect(&stack, &format!("token={token}&jobId={pushed}")).await.expect("the socket opens");
    let mut completed_push = false;
    while let Some(message) = next_json(&mut socket, Duration::from_secs(60)).await {
        if message["type"] == "job" && message["status"] == "completed" {
            completed_push = true;
            break;
        }
    }
    assert!(completed_push, "the subscriber saw the job complete");
    assert_eq!(gone_subscriber_items(&stack).await, 0, "the gone connection was forgotten");

    // A large input travels through S3; once its object is gone, the API shows it as null.
    let large = json!({"blob": "x".repeat(20_000)});
    let stored = job_id(&post_job(&stack, &token, large.clone()).await);
    let ended = until_terminal(&stack, &token, &stored).await;
    assert_eq!((&ended["status"], &ended["input"]), (&json!("completed"), &large), "{}", ended["status"]);
    let bucket = stack.created.buckets["PayloadBucket"].clone();
    delete_objects(&admin.s3, &bucket, &format!("payloads/{stored}/input-")).await;
    let shown = json_of(http.get(format!("{}/jobs/{stored}", stack.base_url())).bearer_auth(&token)).await;
    assert_eq!(shown["input"], Value::Null, "{shown}");

    // An input that is gone before the processor reads it fails the job as missing, not as denied.
    *drop_inputs.lock().unwrap() = Some(bucket.clone());
    let lost = job_id(&post_job(&stack, &token, json!({"blob": "y".repeat(20_000)})).await);
    *drop_inputs.lock().unwrap() = None;
    let ended = until_terminal(&stack, &token, &lost).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert!(ended["error"]["message"].as_str().unwrap_or_default().contains("NoSuchKey"), "{}", ended["error"]);

    // A result file, fetched by its presigned URL.
    let reply = submit("wifi-qr", json!({"ssid": "home", "password": "correct horse"})).await.unwrap();
    assert_eq!(reply.status(), 202);
    let qr = until_terminal(&stack, &token, &job_id(&reply.json().await.unwrap())).await;
    let url = qr["result"]["url"].as_str().unwrap_or_else(|| panic!("a result URL: {qr}"));
    let png = http.get(url).send().await.unwrap();
    let status = png.status();
    assert_eq!(status, 200, "the presigned result URL works: {}", png.text().await.unwrap_or_default());

    // An image, generated after one throttled call (sent again, delayed, after the quota window).
    stack.gateway.bedrock.set_faults(1, Duration::ZERO).await;
    let reply = submit("image", json!({"prompt": "a lighthouse", "width": 320, "height": 320})).await.unwrap();
    assert_eq!(reply.status(), 202);
    let image = until_terminal(&stack, &token, &job_id(&reply.json().await.unwrap())).await;
    assert_eq!(image["status"], "completed", "{image}");

    // A retryable failure, retried after a visibility delay.
    let retried = job_id(&post_job(&stack, &token, json!({"failTimes": 1})).await);
    let ended = until_terminal(&stack, &token, &retried).await;
    assert_eq!((&ended["status"], &ended["attempts"]), (&json!("completed"), &json!(2)), "{ended}");

    // A dead letter of a job that has ended is settled: the reconciler reads and deletes it.
    let (dlq_url, _) = stack.created.queues["JobsDeadLetterQueue"].clone();
    let letter = json!({"jobId": job_id(&redispatched)}).to_string();
    admin.sqs.send_message().queue_url(&dlq_url).message_body(letter).send().await.unwrap();
    let mut depth = u64::MAX;
    // The reconciler runs every second: over a hundred runs without settling it means it never will.
    for _ in 0..240 {
        depth = jobpipe_emulator::resources::queue_depth(&admin.sqs, &dlq_url).await.unwrap();
        if depth == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(depth, 0, "the reconciler settled the dead letter");

    // A job's end is delivered to its callback (signed with the tenant's secret, made on first need) and
    // the delivery's state is kept on the job; a tenant registers an endpoint.
    let (hook_url, delivered) = receive_webhooks().await;
    let endpoint = http
        .post(format!("{}/webhooks/endpoints", stack.base_url()))
        .bearer_auth(&token)
        .json(&json!({"url": hook_url, "events": ["job.failed"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(endpoint.status(), 201, "{}", endpoint.text().await.unwrap_or_default());
    let hooked = http
        .post(format!("{}/jobs", stack.base_url()))
        .bearer_auth(&token)
        .json(&json!({"kind": "echo", "input": {}, "callback": {"url": hook_url}}))
        .send()
        .await
        .unwrap();
    assert_eq!(hooked.status(), 202);
    let hooked = job_id(&hooked.json().await.unwrap());
    let mut recorded = Value::Null;
    // The webhook sender retries 5 s, 5 min, ... apart: over a hundred reads without the delivery kept on
    // the job means it never will be.
    for _ in 0..240 {
        let job = json_of(http.get(format!("{}/jobs/{hooked}", stack.base_url())).bearer_auth(&token)).await;
        recorded = job["webhooks"][0].clone();
        if recorded["state"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(recorded["state"], "delivered", "{recorded}");
    assert!(delivered.load(Ordering::SeqCst) >= 1);

    // A batch, stored in one transaction and read back together; the webhook sender records its jobs'
    // ends and completes it.
    let batch = http
        .post(format!("{}/batches", stack.base_url()))
        .bearer_auth(&token)
        .json(&json!({"jobs": [{"kind": "echo", "input": {"b": 1}}, {"kind": "echo", "input": {"b": 2}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 202, "{}", batch.text().await.unwrap_or_default());
    let batch: Value = batch.json().await.unwrap();
    let mut read = Value::Null;
    // Its jobs take well under a second: over a hundred reads without its completion means it never comes.
    for _ in 0..240 {
        read = json_of(
            http.get(format!("{}/batches/{}", stack.base_url(), batch["batchId"].as_str().unwrap()))
                .bearer_auth(&token),
        )
        .await;
        if read["completedAt"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!((&read["total"], &read["done"]), (&json!(2), &json!(true)), "{read}");
    assert!(read["completedAt"].is_string(), "the batch's completion was recorded: {read}");

    // The kinds on offer, and which are paused (none).
    let kinds = json_of(http.get(format!("{}/kinds", stack.base_url())).bearer_auth(&token)).await;
    assert_eq!(kinds["paused"], json!([]), "{kinds}");

    // Listed by owner.
    let page = json_of(http.get(format!("{}/jobs", stack.base_url())).bearer_auth(&token)).await;
    assert!(page["jobs"].as_array().is_some_and(|jobs| jobs.len() >= 5), "{page}");

    // A schedule's tick creates its job: the reconciler reads the due-ticks index and the schedule, writes
    // the job and moves the schedule on.
    let created = http
        .post(format!("{}/schedules", stack.base_url()))
        .bearer_auth(&token)
        .json(&json!({"kind": "echo", "rate": "1 minute"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap_or_default());
    let mut ticked = false;
    // The reconciler runs every second: over a hundred runs without a tick means it never will.
    for _ in 0..240 {
        let page = json_of(http.get(format!("{}/jobs?status=scheduled", stack.base_url())).bearer_auth(&token)).await;
        if page["jobs"].as_array().is_some_and(|jobs| !jobs.is_empty()) {
            ticked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ticked, "the schedule's first tick created its job");

    let unused: Vec<String> = stack
        .iam
        .statements()
        .difference(&stack.iam.statements_used())
        .map(|(function, sid)| format!("{function}/{sid}"))
        .collect();
    assert!(unused.is_empty(), "statements no call needed: {unused:?}");
    stack.stop().await;
}

/// A webhook receiver answering 200 on 127.0.0.1, and how many deliveries it got.
async fn receive_webhooks() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    let app = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, count)
}

/// Deletes the stored input of the job an SQS `SendMessage` call is about (straight at the engines).
async fn delete_input(bucket: &str, call: &Value) {
    let body: Value = call["MessageBody"].as_str().and_then(|b| serde_json::from_str(b).ok()).unwrap_or_default();
    if let Some(job_id) = body["jobId"].as_str() {
        delete_objects(&jobpipe_testkit::clients().s3, bucket, &format!("payloads/{job_id}/input-")).await;
    }
}

async fn delete_objects(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) {
    let listed = s3.list_objects_v2().bucket(bucket).prefix(prefix).send().await.unwrap();
    for object in listed.contents() {
        s3.delete_object().bucket(bucket).key(object.key().unwrap_or_default()).send().await.unwrap();
    }
}
