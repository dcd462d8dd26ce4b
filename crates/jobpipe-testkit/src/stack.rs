//! `TestStack`: a fresh set of the template's tables, queues and bucket per test, the functions'
//! configuration pointing at them, and the SQS event source mapping for handlers tests call directly.

use std::collections::HashMap;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsMessage};
use aws_sdk_sqs::types::QueueAttributeName;
use jobpipe_core::config::{AwsClients, Config};
use jobpipe_emulator::resources;
use jobpipe_emulator::sources::{SqsMapping, sqs_record};
use jobpipe_emulator::template::{Resolver, Template};

use crate::{TEST_AUDIENCE, repo_root, sdk_config, test_issuer};

/// A fresh set of the resources jobpipe uses, with unique names, in moto.
#[derive(Debug, Clone)]
pub struct TestStack {
    pub clients: AwsClients,
    pub table: String,
    pub connections_table: String,
    pub schedules_table: String,
    pub control_table: String,
    pub webhooks_table: String,
    pub webhook_queue_url: String,
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
        let clients = crate::clients();
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
            schedules_table: created.tables["SchedulesTable"].clone(),
            control_table: created.tables["ControlTable"].clone(),
            webhooks_table: created.tables["WebhooksTable"].clone(),
            webhook_queue_url: created.queues["WebhookQueue"].0.clone(),
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
            ("SCHEDULES_TABLE", &self.schedules_table),
            ("CONTROL_TABLE", &self.control_table),
            ("WEBHOOKS_TABLE", &self.webhooks_table),
            ("WEBHOOK_QUEUE_URL", &self.webhook_queue_url),
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

    /// The local stack's event source mapping of the main queue.
    pub fn mapping(&self) -> SqsMapping {
        SqsMapping::new(self.clients.sqs.clone(), self.queue_url.clone(), self.queue_arn.clone())
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
        let mapping = SqsMapping::new(self.clients.sqs.clone(), queue_url.to_string(), String::new());
        let messages: Vec<aws_sdk_sqs::types::Message> = records
            .iter()
            .map(|record| {
                aws_sdk_sqs::types::Message::builder()
                    .set_message_id(record.message_id.clone())
                    .set_receipt_handle(record.receipt_handle.clone())
                    .build()
            })
            .collect();
        let answer = serde_json::to_value(response).expect("a batch response serializes");
        let acknowledged = mapping.acknowledged(&messages, Some(&answer)).len();
        let deleted = mapping.settle(&messages, Some(&answer)).await;
        assert_eq!(deleted, acknowledged, "deleting the acknowledged messages");
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
        resources::queue_depth(&self.clients.sqs, queue_url).await.expect("reading queue attributes")
    }
}

/// Receives messages and shapes them as the records of a Lambda SQS event, as the local stack's event
/// source mapping does.
pub async fn receive_batch(sqs: &aws_sdk_sqs::Client, url: &str, arn: &str, max: i32) -> Vec<SqsMessage> {
    let mapping = SqsMapping::new(sqs.clone(), url.to_string(), arn.to_string());
    let messages = mapping.receive(max.max(1) as usize, Duration::from_secs(1)).await.expect("receiving messages");
    messages.iter().map(|m| serde_json::from_value(sqs_record(m, arn)).expect("an SQS record deserializes")).collect()
}
