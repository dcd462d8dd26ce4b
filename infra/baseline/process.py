"""The Python baseline of queue-processor for `jobpipe bench`, written the way the Powertools docs show.

Batch Processing (BatchProcessor, SQS, partial failures reported back) runs each record; Idempotency
(DynamoDB persistence, keyed by the job id) makes a redelivered message a no-op; the job moves
queued -> processing -> completed with conditional updates (boto3), as jobpipe's processor does.
"""

import json
import os
import time

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

logger = Logger(service="queue-processor-baseline")
processor = BatchProcessor(event_type=EventType.SQS)
dynamodb = boto3.client("dynamodb")
TABLE = os.environ["JOBS_TABLE"]
persistence = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"])
idempotency = IdempotencyConfig(event_key_jmespath="jobId", expires_after_seconds=3600)


def now_ms() -> str:
    return str(int(time.time() * 1000))


@idempotent_function(data_keyword_argument="job", config=idempotency, persistence_store=persistence)
def run_job(job: dict) -> dict:
    job_id = job["jobId"]
    claimed = dynamodb.update_item(
        TableName=TABLE,
        Key={"jobId": {"S": job_id}},
        UpdateExpression="SET #s = :processing, startedAt = :now, updatedAt = :now ADD attempts :one",
        ConditionExpression="#s = :queued",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={
            ":processing": {"S": "processing"},
            ":queued": {"S": "queued"},
            ":now": {"N": now_ms()},
            ":one": {"N": "1"},
        },
        ReturnValues="ALL_NEW",
    )["Attributes"]
    job_input = json.loads(claimed["input"]["S"])
    sleep_ms = job_input.get("sleepMs") or 0
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    dynamodb.update_item(
        TableName=TABLE,
        Key={"jobId": {"S": job_id}},
        UpdateExpression="SET #s = :completed, #r = :result, completedAt = :now, updatedAt = :now, progress = :full",
        ConditionExpression="#s = :processing",
        ExpressionAttributeNames={"#s": "status", "#r": "result"},
        ExpressionAttributeValues={
            ":completed": {"S": "completed"},
            ":processing": {"S": "processing"},
            ":result": {"S": json.dumps(job_input)},
            ":now": {"N": now_ms()},
            ":full": {"N": "100"},
        },
    )
    logger.info("job completed", extra={"job_id": job_id})
    return {"jobId": job_id, "status": "completed"}


def record_handler(record: SQSRecord) -> dict:
    body = json.loads(record.body)
    return run_job(job={"jobId": body["jobId"]})


@logger.inject_lambda_context
def handler(event, context) -> PartialItemFailureResponse:
    idempotency.register_lambda_context(context)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
