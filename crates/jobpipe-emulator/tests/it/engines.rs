//! The local engines refuse what AWS refuses at its size limits, so code that would meet a limit on AWS
//! meets it here: a DynamoDB item over 400 KB (DynamoDB Local) and an SQS message over the queue's
//! maximum of 1 MiB (moto).

use aws_sdk_dynamodb::types::AttributeValue;
use jobpipe_testkit::TestStack;

#[tokio::test]
async fn items_and_messages_over_awss_size_limits_are_refused() {
    let stack = TestStack::new().await;
    let dynamodb = &stack.clients.dynamodb;
    let item = |bytes: usize| {
        dynamodb
            .put_item()
            .table_name(&stack.table)
            .item(jobpipe_core::store::attr::JOB_ID, AttributeValue::S(uuid::Uuid::new_v4().to_string()))
            .item("padding", AttributeValue::S("x".repeat(bytes)))
    };
    item(390 * 1024).send().await.expect("an item under 400 KB is stored");
    let refused = item(401 * 1024).send().await.expect_err("an item over 400 KB is refused");
    let refused = aws_sdk_dynamodb::error::DisplayErrorContext(refused).to_string();
    assert!(refused.contains("ValidationException") && refused.contains("size"), "{refused}");

    let sqs = &stack.clients.sqs;
    let message = |bytes: usize| sqs.send_message().queue_url(&stack.queue_url).message_body("x".repeat(bytes));
    message(1024 * 1024).send().await.expect("a message of 1 MiB is sent");
    let refused = message(1024 * 1024 + 1).send().await.expect_err("a message over 1 MiB is refused");
    let refused = aws_sdk_sqs::error::DisplayErrorContext(refused).to_string();
    assert!(refused.to_lowercase().contains("length") || refused.contains("InvalidParameterValue"), "{refused}");
}
