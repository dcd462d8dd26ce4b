//! Test harness: one moto server per test process, fresh AWS resources per test, signed tokens, and a
//! small stand-in for the SQS event source mapping (receive a batch, delete what the handler acked).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsMessage, SqsMessageAttribute};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use jobpipe_core::auth::{Claims, issue_hs256};
use jobpipe_core::config::{AwsClients, Config};
use jobpipe_core::store::attr;

pub const TEST_JWT_SECRET: &str = "jobpipe-test-secret";
pub const TEST_ISSUER: &str = "https://jobpipe.test/issuer";
pub const TEST_AUDIENCE: &str = "jobpipe-test";

struct Moto {
    endpoint: String,
    // Held so the server's stdin stays open: it exits when this process does.
    _child: Option<Child>,
}

fn repo_root() -> PathBuf {
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
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto_endpoint())
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "jobpipe-testkit"),
        ))
        .build()
}

/// A signed token for `sub`, valid for ten minutes, trusted by `TestStack::config`.
pub fn token(sub: &str) -> String {
    token_with(Claims {
        sub: sub.into(),
        iss: TEST_ISSUER.into(),
        aud: TEST_AUDIENCE.into(),
        exp: now_secs() + 600,
        nbf: None,
        iat: Some(now_secs()),
    })
}

pub fn token_with(claims: Claims) -> String {
    issue_hs256(TEST_JWT_SECRET.as_bytes(), &claims)
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A fresh set of the resources jobpipe uses, with unique names, in moto.
#[derive(Debug, Clone)]
pub struct TestStack {
    pub clients: AwsClients,
    pub table: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
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

    pub async fn with(options: StackOptions) -> TestStack {
        let clients = AwsClients::from_sdk_config(&sdk_config());
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let table = format!("jobs-{suffix}");
        let bucket = format!("payloads-{suffix}");
        create_jobs_table(&clients.dynamodb, &table).await;
        clients.s3.create_bucket().bucket(&bucket).send().await.expect("creating bucket");

        let dlq_url = create_queue(&clients.sqs, &format!("jobs-dlq-{suffix}"), HashMap::new()).await;
        let dlq_arn = queue_arn(&clients.sqs, &dlq_url).await;
        let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": options.max_receive_count});
        let queue_url = create_queue(
            &clients.sqs,
            &format!("jobs-{suffix}"),
            HashMap::from([
                (QueueAttributeName::RedrivePolicy, redrive.to_string()),
                (QueueAttributeName::VisibilityTimeout, options.visibility_timeout.to_string()),
            ]),
        )
        .await;
        let queue_arn = queue_arn(&clients.sqs, &queue_url).await;
        TestStack {
            clients,
            table,
            queue_url,
            queue_arn,
            dlq_url,
            dlq_arn,
            bucket,
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
            ("AUTH_MODE", "jwt"),
            ("JWT_HS256_SECRET", TEST_JWT_SECRET),
            ("JWT_ISSUER", TEST_ISSUER),
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

    /// Receives from the dead-letter queue without deleting.
    pub async fn dead_letters(&self) -> Vec<SqsMessage> {
        receive_batch(&self.clients.sqs, &self.dlq_url, &self.dlq_arn, 10).await
    }

    /// What the event source mapping does with a handler's answer: deletes every record not reported
    /// failed; failed ones stay for their visibility timeout.
    pub async fn settle(&self, records: &[SqsMessage], response: &SqsBatchResponse) {
        let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        for record in records {
            if failed.contains(&record.message_id.as_deref().unwrap_or_default()) {
                continue;
            }
            self.clients
                .sqs
                .delete_message()
                .queue_url(&self.queue_url)
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
        self.clients
            .sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .expect("sending a message")
            .message_id
            .unwrap_or_default()
    }

    /// Messages waiting in a queue (visible plus in flight).
    pub async fn queue_depth(&self, queue_url: &str) -> u64 {
        let out = self
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("reading queue attributes");
        out.attributes().into_iter().flatten().map(|(_, v)| v.parse::<u64>().unwrap_or(0)).sum()
    }
}

/// Creates the jobs table as `template.yaml` declares it: key `jobId`, GSIs `byOwner` and
/// `pendingDispatch`.
pub async fn create_jobs_table(dynamodb: &aws_sdk_dynamodb::Client, table: &str) {
    let attribute = |name: &str, kind: ScalarAttributeType| {
        AttributeDefinition::builder().attribute_name(name).attribute_type(kind).build().unwrap()
    };
    let key =
        |name: &str, kind: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(kind).build().unwrap();
    let index = |name: &str, hash: &str, range: &str, projection: Projection| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(hash, KeyType::Hash))
            .key_schema(key(range, KeyType::Range))
            .projection(projection)
            .build()
            .unwrap()
    };
    dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(attr::JOB_ID, ScalarAttributeType::S))
        .attribute_definitions(attribute(attr::OWNER, ScalarAttributeType::S))
        .attribute_definitions(attribute(attr::CREATED_AT, ScalarAttributeType::N))
        .attribute_definitions(attribute(attr::DISPATCH_SHARD, ScalarAttributeType::S))
        .attribute_definitions(attribute(attr::DISPATCH_DUE_AT, ScalarAttributeType::N))
        .key_schema(key(attr::JOB_ID, KeyType::Hash))
        .global_secondary_indexes(index(
            attr::BY_OWNER_INDEX,
            attr::OWNER,
            attr::CREATED_AT,
            Projection::builder().projection_type(ProjectionType::All).build(),
        ))
        .global_secondary_indexes(index(
            attr::PENDING_DISPATCH_INDEX,
            attr::DISPATCH_SHARD,
            attr::DISPATCH_DUE_AT,
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .non_key_attributes(attr::KIND)
                .non_key_attributes(attr::CORRELATION_ID)
                .build(),
        ))
        .send()
        .await
        .expect("creating the jobs table");
}

async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: HashMap<QueueAttributeName, String>,
) -> String {
    sqs.create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes))
        .send()
        .await
        .expect("creating a queue")
        .queue_url
        .expect("queue url")
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("reading queue arn")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("queue arn")
}

/// Receives messages and shapes them as the records of a Lambda SQS event, as the event source mapping
/// would.
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
        .map(|m| {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id.clone();
            record.receipt_handle = m.receipt_handle.clone();
            record.body = m.body.clone();
            record.md5_of_body = m.md5_of_body.clone();
            record.attributes =
                m.attributes().into_iter().flatten().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect();
            record.message_attributes = m
                .message_attributes()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let mut attribute = SqsMessageAttribute::default();
                    attribute.string_value = v.string_value.clone();
                    attribute.data_type = Some(v.data_type.clone());
                    (k.clone(), attribute)
                })
                .collect();
            record.event_source_arn = Some(arn.to_string());
            record.event_source = Some("aws:sqs".into());
            record.aws_region = Some("us-east-1".into());
            record
        })
        .collect()
}
