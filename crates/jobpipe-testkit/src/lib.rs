//! Test harness: one moto server per test process, fresh AWS resources per test (created from
//! template.yaml), tokens signed by a test issuer that publishes its JWKS, and a small stand-in for the
//! SQS event source mapping (receive a batch, delete what the handler acknowledged).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsMessage};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
pub use jobpipe::faults::{FaultProxy, ScriptedFault};
use jobpipe::resources;
use jobpipe::sources::sqs_record;
use jobpipe::template::{Resolver, Template};
use jobpipe_core::config::{AwsClients, Config};

/// The app client id test tokens are for (`aud`, or `client_id` in Cognito-style access tokens).
pub const TEST_AUDIENCE: &str = "jobpipe-test";

struct Moto {
    endpoint: String,
    // Held so the server's stdin stays open: it exits when this process does.
    _child: Option<Child>,
}

/// The repository checkout (fixtures in `events/`, the venv in `.venv/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The moto endpoint: `JOBPIPE_TEST_AWS_ENDPOINT` when the test command started one for the whole run,
/// otherwise a server of this process's own on a free port.
pub fn moto_endpoint() -> &'static str {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    &MOTO
        .get_or_init(|| {
            if let Ok(endpoint) = std::env::var("JOBPIPE_TEST_AWS_ENDPOINT") {
                return Moto { endpoint, _child: None };
            }
            let venv_python = repo_root().join(".venv/bin/python");
            let python = std::env::var_os("JOBPIPE_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| if venv_python.exists() { venv_python } else { "python3".into() });
            let mut child = Command::new(&python)
                .arg(repo_root().join("infra/moto_server.py"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting moto with {python:?} (run `cargo xtask setup` first): {e}"));
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout is piped"))
                .read_line(&mut line)
                .expect("reading moto's READY line");
            let port = line
                .strip_prefix("READY ")
                .and_then(|p| p.trim().parse::<u16>().ok())
                .unwrap_or_else(|| panic!("moto did not start (is moto[server] installed for {python:?}?): {line:?}"));
            Moto { endpoint: format!("http://127.0.0.1:{port}"), _child: Some(child) }
        })
        .endpoint
}

/// SDK configuration pointing at moto with dummy credentials.
pub fn sdk_config() -> aws_config::SdkConfig {
    sdk_config_at(moto_endpoint())
}

/// A fault proxy in front of moto, and clients that reach moto through it: script a fault on one call
/// (`FaultProxy::script`) to see what the code under test makes of it. It serves until the test ends.
pub async fn through_fault_proxy() -> (std::sync::Arc<FaultProxy>, AwsClients) {
    let proxy = FaultProxy::new(moto_endpoint(), 0.0, 0.0);
    let (url, _serving) = proxy.serve().await.expect("serving the fault proxy");
    (proxy, AwsClients::from_sdk_config(&sdk_config_at(&url)))
}

/// SDK configuration pointing at `endpoint` (a `FaultProxy` in front of moto, say) with dummy credentials.
pub fn sdk_config_at(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "jobpipe-testkit"),
        ))
        .build()
}

/// The issuer `TestStack::config` trusts: a server of this process that publishes the signing key's
/// JWKS at `{issuer}/.well-known/jwks.json`, as Cognito does, so tests verify tokens the deployed way.
/// It runs on a thread of its own, so it outlives each test's runtime.
pub fn test_issuer() -> &'static str {
    static ISSUER: OnceLock<String> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the test issuer");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let issuer = format!("http://{}/issuer", listener.local_addr().expect("the test issuer's address"));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let jwks = jobpipe::dev::dev_jwks();
                let app = axum::Router::new().route(
                    "/issuer/.well-known/jwks.json",
                    axum::routing::get(move || async move { axum::Json(jwks) }),
                );
                axum::serve(listener, app).await.expect("serving the test issuer's JWKS");
            })
        });
        issuer
    })
}

/// What `token` signs for `sub`: an ID-token shape (`aud`), valid for ten minutes. Tests edit it.
pub fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({
        "sub": sub,
        "iss": test_issuer(),
        "aud": TEST_AUDIENCE,
        "iat": now_secs(),
        "exp": now_secs() + 600,
    })
}

/// A token for `sub`, trusted by `TestStack::config`.
pub fn token(sub: &str) -> String {
    token_with(&claims(sub))
}

/// A token carrying exactly these claims, signed by the test issuer's key (the local stack's dev key).
pub fn token_with(claims: &serde_json::Value) -> String {
    jobpipe::dev::dev_signer().sign(claims)
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A fresh set of the resources jobpipe uses, with unique names, in moto.
#[derive(Debug, Clone)]
pub struct TestStack {
    pub clients: AwsClients,
    pub table: String,
    pub connections_table: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
    /// The `image` kind's own queue.
    pub image_queue_url: String,
    pub image_queue_arn: String,
    pub bucket: String,
    pub max_receive_count: u32,
}

pub struct StackOptions {
    /// The main queue's redrive `maxReceiveCount`.
    pub max_receive_count: u32,
    /// The main queue's visibility timeout, seconds.
    pub visibility_timeout: u32,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions { max_receive_count: 10, visibility_timeout: 30 }
    }
}

impl TestStack {
    pub async fn new() -> TestStack {
        TestStack::with(StackOptions::default()).await
    }

    /// Creates the resources `template.yaml` declares (so tests exercise the deployed table and queue
    /// definitions), then tightens the main queue's redrive and visibility for the test.
    pub async fn with(options: StackOptions) -> TestStack {
        let clients = AwsClients::from_sdk_config(&sdk_config());
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let template = Template::load(&repo_root().join("template.yaml")).expect("reading template.yaml");
        let mut resolver = Resolver::default();
        resources::parameters(&template, &HashMap::new(), &mut resolver);
        let local =
            resources::Clients { dynamodb: clients.dynamodb.clone(), sqs: clients.sqs.clone(), s3: clients.s3.clone() };
        let created = resources::create_all(&template, &local, &prefix, &mut resolver)
            .await
            .expect("creating the template's resources");
        let (queue_url, queue_arn) = created.queues["JobsQueue"].clone();
        let (dlq_url, dlq_arn) = created.queues["JobsDeadLetterQueue"].clone();
        let (image_queue_url, image_queue_arn) = created.queues["ImageJobsQueue"].clone();
        let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": options.max_receive_count});
        clients
            .sqs
            .set_queue_attributes()
            .queue_url(&queue_url)
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .attributes(QueueAttributeName::VisibilityTimeout, options.visibility_timeout.to_string())
            .send()
            .await
            .expect("setting the test queue's redrive");
        TestStack {
            clients,
            table: created.tables["JobsTable"].clone(),
            connections_table: created.tables["ConnectionsTable"].clone(),
            queue_url,
            queue_arn,
            dlq_url,
            dlq_arn,
            image_queue_url,
            image_queue_arn,
            bucket: created.buckets["PayloadBucket"].clone(),
            max_receive_count: options.max_receive_count,
        }
    }

    /// The environment the Lambda functions would get, pointing at this stack.
    pub fn env(&self) -> HashMap<String, String> {
        [
            ("JOBS_TABLE", self.table.as_str()),
            ("PAYLOAD_BUCKET", &self.bucket),
            ("JOBS_QUEUE_URL", &self.queue_url),
            ("DEAD_LETTER_QUEUE_URL", &self.dlq_url),
            ("CONNECTIONS_TABLE", &self.connections_table),
            ("KIND_QUEUE_URLS", &format!("image={}", self.image_queue_url)),
            ("AUTH_MODE", "jwt"),
            ("JWT_ISSUER", test_issuer()),
            ("JWT_AUDIENCE", TEST_AUDIENCE),
            ("ECHO_KIND_ENABLED", "true"),
            ("RETRY_BASE_SECONDS", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    pub fn config(&self) -> Config {
        self.config_with(&[])
    }

    pub fn config_with(&self, overrides: &[(&str, &str)]) -> Config {
        let mut env = self.env();
        for (k, v) in overrides {
            env.insert(k.to_string(), v.to_string());
        }
        Config::from_map(&env).expect("test configuration is valid")
    }

    /// Receives up to `max` messages (waiting briefly) as the records of a Lambda SQS event.
    pub async fn receive_batch(&self, max: i32) -> Vec<SqsMessage> {
        receive_batch(&self.clients.sqs, &self.queue_url, &self.queue_arn, max).await
    }

    /// Receives from the image kind's queue.
    pub async fn receive_image_batch(&self, max: i32) -> Vec<SqsMessage> {
        receive_batch(&self.clients.sqs, &self.image_queue_url, &self.image_queue_arn, max).await
    }

    /// Points the clients' Bedrock runtime at `endpoint` (the local stand-in).
    pub fn with_bedrock_endpoint(mut self, endpoint: &str) -> TestStack {
        self.clients.bedrock = jobpipe_core::config::bedrock_client(&sdk_config(), Some(endpoint));
        self
    }

    /// Receives from the dead-letter queue without deleting.
    pub async fn dead_letters(&self) -> Vec<SqsMessage> {
        receive_batch(&self.clients.sqs, &self.dlq_url, &self.dlq_arn, 10).await
    }

    /// What the event source mapping does with a handler's answer: deletes every record not reported
    /// failed; failed ones stay for their visibility timeout.
    pub async fn settle(&self, records: &[SqsMessage], response: &SqsBatchResponse) {
        self.settle_on(&self.queue_url, records, response).await
    }

    pub async fn settle_on(&self, queue_url: &str, records: &[SqsMessage], response: &SqsBatchResponse) {
        let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        for record in records {
            if failed.contains(&record.message_id.as_deref().unwrap_or_default()) {
                continue;
            }
            self.clients
                .sqs
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(record.receipt_handle.clone().unwrap_or_default())
                .send()
                .await
                .expect("deleting an acknowledged message");
        }
    }

    /// Makes every in-flight message of the main queue visible again, as if its timeout had passed.
    pub async fn expire_visibility(&self, records: &[SqsMessage]) {
        for record in records {
            let _ = self
                .clients
                .sqs
                .change_message_visibility()
                .queue_url(&self.queue_url)
                .receipt_handle(record.receipt_handle.clone().unwrap_or_default())
                .visibility_timeout(0)
                .send()
                .await;
        }
    }

    /// Sends a raw message body to the main queue (poison messages, duplicates).
    pub async fn send_raw(&self, body: &str) -> String {
        self.send_raw_to(&self.queue_url, body).await
    }

    /// Sends `body` as is to `queue_url`.
    pub async fn send_raw_to(&self, queue_url: &str, body: &str) -> String {
        self.clients
            .sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .expect("sending a message")
            .message_id
            .unwrap_or_default()
    }

    /// Messages waiting in a queue (visible, in flight, and delayed).
    pub async fn queue_depth(&self, queue_url: &str) -> u64 {
        let out = self
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .expect("reading queue attributes");
        out.attributes().into_iter().flatten().map(|(_, v)| v.parse::<u64>().unwrap_or(0)).sum()
    }
}

/// Receives messages and shapes them as the records of a Lambda SQS event, as the local stack's event
/// source mapping does.
pub async fn receive_batch(sqs: &aws_sdk_sqs::Client, url: &str, arn: &str, max: i32) -> Vec<SqsMessage> {
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(max.clamp(1, 10))
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .expect("receiving messages");
    out.messages()
        .iter()
        .map(|m| serde_json::from_value(sqs_record(m, arn)).expect("an SQS record deserializes"))
        .collect()
}

/// The Bedrock runtime stand-in on a free port, for as long as the returned value lives.
pub struct BedrockServer {
    pub url: String,
    pub stand_in: std::sync::Arc<jobpipe::bedrock::BedrockStandIn>,
    task: tokio::task::JoinHandle<()>,
}

impl BedrockServer {
    pub async fn start() -> BedrockServer {
        let stand_in = std::sync::Arc::new(jobpipe::bedrock::BedrockStandIn::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the Bedrock stand-in");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = stand_in.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        BedrockServer { url, stand_in, task }
    }
}

impl Drop for BedrockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
