//! Creates every table, queue and bucket `template.yaml` declares in the local AWS endpoint, and records
//! what `!Ref`/`!GetAtt` of each resolves to locally.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_norway::Value as Yaml;

use crate::aws::{ACCOUNT, REGION};
use crate::template::{Resolver, Template, get, scalar};

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("{resource}: {message}")]
    Create { resource: String, message: String },
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
}

fn failed(resource: &str, message: impl std::fmt::Display) -> ResourceError {
    ResourceError::Create { resource: resource.into(), message: message.to_string() }
}

/// What was created, by logical id.
#[derive(Debug, Clone, Default)]
pub struct Created {
    pub tables: HashMap<String, String>,
    pub stream_arns: HashMap<String, String>,
    /// Queue logical id -> (url, arn).
    pub queues: HashMap<String, (String, String)>,
    pub buckets: HashMap<String, String>,
}

pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
}

/// Creates the template's resources, names prefixed with `prefix`, and fills `resolver` with their
/// local `!Ref`/`!GetAtt` values. Existing resources (a restarted stack on a kept endpoint) are reused.
pub async fn create_all(
    template: &Template,
    clients: &Clients,
    prefix: &str,
    resolver: &mut Resolver,
) -> Result<Created, ResourceError> {
    let mut created = Created::default();
    for (id, _) in template.resources("AWS::S3::Bucket") {
        let name = format!("{prefix}-{id}").to_lowercase();
        let result = clients.s3.create_bucket().bucket(&name).send().await;
        if let Err(e) = result {
            let exists = e.as_service_error().is_some_and(|e| e.is_bucket_already_owned_by_you());
            if !exists {
                return Err(failed(&id, aws_sdk_s3::error::DisplayErrorContext(e)));
            }
        }
        resolver.set(&id, &name);
        resolver.set(format!("{id}.Arn"), format!("arn:aws:s3:::{name}"));
        created.buckets.insert(id, name);
    }

    for (id, props) in template.resources("AWS::DynamoDB::Table") {
        let name = format!("{prefix}-{id}");
        let stream_arn = create_table(&clients.dynamodb, &id, &name, props).await?;
        resolver.set(&id, &name);
        resolver.set(format!("{id}.Arn"), format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"));
        if let Some(arn) = stream_arn {
            resolver.set(format!("{id}.StreamArn"), &arn);
            created.stream_arns.insert(id.clone(), arn);
        }
        created.tables.insert(id, name);
    }

    // Queues first without redrive (a DLQ must exist before a queue can point at it), then redrive.
    let queues = template.resources("AWS::SQS::Queue");
    for (id, props) in &queues {
        let fifo = get(props, "FifoQueue").and_then(scalar).as_deref() == Some("true");
        let name = format!("{prefix}-{id}{}", if fifo { ".fifo" } else { "" });
        let mut attributes = HashMap::new();
        for (property, attribute) in [
            ("VisibilityTimeout", QueueAttributeName::VisibilityTimeout),
            ("MessageRetentionPeriod", QueueAttributeName::MessageRetentionPeriod),
            ("ReceiveMessageWaitTimeSeconds", QueueAttributeName::ReceiveMessageWaitTimeSeconds),
            ("DelaySeconds", QueueAttributeName::DelaySeconds),
            ("FifoQueue", QueueAttributeName::FifoQueue),
            ("ContentBasedDeduplication", QueueAttributeName::ContentBasedDeduplication),
        ] {
            if let Some(value) = get(props, property) {
                attributes.insert(attribute, resolver.resolve(value)?);
            }
        }
        let url = clients
            .sqs
            .create_queue()
            .queue_name(&name)
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(|e| failed(id, aws_sdk_sqs::error::DisplayErrorContext(e)))?
            .queue_url
            .unwrap_or_default();
        let arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}");
        resolver.set(id, &url);
        resolver.set(format!("{id}.Arn"), &arn);
        resolver.set(format!("{id}.QueueName"), &name);
        resolver.set(format!("{id}.QueueUrl"), &url);
        created.queues.insert(id.clone(), (url, arn));
    }
    for (id, props) in &queues {
        let Some(redrive) = get(props, "RedrivePolicy") else { continue };
        let target = get(redrive, "deadLetterTargetArn")
            .ok_or_else(|| failed(id, "RedrivePolicy without deadLetterTargetArn"))?;
        let max = get(redrive, "maxReceiveCount").and_then(scalar).unwrap_or_else(|| "10".into());
        let policy = serde_json::json!({"deadLetterTargetArn": resolver.resolve(target)?, "maxReceiveCount": max.parse::<u32>().unwrap_or(10)});
        clients
            .sqs
            .set_queue_attributes()
            .queue_url(&created.queues[id].0)
            .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
            .send()
            .await
            .map_err(|e| failed(id, aws_sdk_sqs::error::DisplayErrorContext(e)))?;
    }
    Ok(created)
}

/// Creates one table from its CloudFormation properties; returns its stream ARN if it has a stream.
async fn create_table(
    dynamodb: &aws_sdk_dynamodb::Client,
    id: &str,
    name: &str,
    props: &Yaml,
) -> Result<Option<String>, ResourceError> {
    let text = |v: &Yaml, key: &str| get(v, key).and_then(scalar).ok_or_else(|| failed(id, format!("missing {key}")));
    let key_schema = |v: Option<&Yaml>| -> Result<Vec<KeySchemaElement>, ResourceError> {
        v.and_then(Yaml::as_sequence)
            .ok_or_else(|| failed(id, "missing KeySchema"))?
            .iter()
            .map(|k| {
                KeySchemaElement::builder()
                    .attribute_name(text(k, "AttributeName")?)
                    .key_type(KeyType::from(text(k, "KeyType")?.as_str()))
                    .build()
                    .map_err(|e| failed(id, e))
            })
            .collect()
    };
    let mut request = dynamodb.create_table().table_name(name).billing_mode(BillingMode::PayPerRequest);
    for definition in get(props, "AttributeDefinitions").and_then(Yaml::as_sequence).into_iter().flatten() {
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(text(definition, "AttributeName")?)
                .attribute_type(ScalarAttributeType::from(text(definition, "AttributeType")?.as_str()))
                .build()
                .map_err(|e| failed(id, e))?,
        );
    }
    request = request.set_key_schema(Some(key_schema(get(props, "KeySchema"))?));
    for index in get(props, "GlobalSecondaryIndexes").and_then(Yaml::as_sequence).into_iter().flatten() {
        let projection = get(index, "Projection").unwrap_or(&Yaml::Null);
        let mut p = Projection::builder().projection_type(ProjectionType::from(
            get(projection, "ProjectionType").and_then(scalar).unwrap_or_else(|| "ALL".into()).as_str(),
        ));
        for attribute in get(projection, "NonKeyAttributes").and_then(Yaml::as_sequence).into_iter().flatten() {
            p = p.non_key_attributes(scalar(attribute).unwrap_or_default());
        }
        request = request.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(text(index, "IndexName")?)
                .set_key_schema(Some(key_schema(get(index, "KeySchema"))?))
                .projection(p.build())
                .build()
                .map_err(|e| failed(id, e))?,
        );
    }
    if let Some(view) = get(props, "StreamSpecification").and_then(|s| get(s, "StreamViewType")).and_then(scalar) {
        request = request.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::from(view.as_str()))
                .build()
                .map_err(|e| failed(id, e))?,
        );
    }
    let description = match request.send().await {
        Ok(out) => out.table_description,
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_in_use_exception()) => {
            dynamodb
                .describe_table()
                .table_name(name)
                .send()
                .await
                .map_err(|e| failed(id, aws_sdk_dynamodb::error::DisplayErrorContext(e)))?
                .table
        }
        Err(e) => return Err(failed(id, aws_sdk_dynamodb::error::DisplayErrorContext(e))),
    };
    if let Some(ttl) = get(props, "TimeToLiveSpecification") {
        let attribute = text(ttl, "AttributeName")?;
        let spec = TimeToLiveSpecification::builder()
            .attribute_name(attribute)
            .enabled(true)
            .build()
            .map_err(|e| failed(id, e))?;
        // moto only records the setting (it never deletes expired items); set it anyway so it is visible.
        let _ = dynamodb.update_time_to_live().table_name(name).time_to_live_specification(spec).send().await;
    }
    Ok(description.and_then(|d| d.latest_stream_arn))
}

/// The local value of every template parameter: its default, or what the local stack sets.
pub fn parameters(template: &Template, overrides: &HashMap<String, String>, resolver: &mut Resolver) {
    for (name, default) in template.parameters() {
        if let Some(value) = overrides.get(&name).cloned().or(default) {
            resolver.set(name, value);
        }
    }
    for (name, value) in [
        ("AWS::Region", REGION),
        ("AWS::AccountId", ACCOUNT),
        ("AWS::Partition", "aws"),
        ("AWS::URLSuffix", "amazonaws.com"),
        ("AWS::StackName", "jobpipe-local"),
    ] {
        resolver.set(name, value);
    }
}

/// Messages a queue holds: visible, in flight (received, not yet deleted) and delayed. Approximate, as
/// SQS reports it.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<u64, aws_sdk_sqs::Error> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await?;
    Ok(out.attributes().into_iter().flatten().map(|(_, v)| v.parse::<u64>().unwrap_or(0)).sum())
}
