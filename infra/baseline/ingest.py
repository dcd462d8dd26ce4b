"""The Python baseline of api-ingest for `jobpipe bench`, written the way the Powertools docs show.

Event Handler (APIGatewayHttpResolver) routes `POST /jobs`; the body is validated; the job is stored as
`queued` with a conditional put (boto3) and its message sent to SQS; the answer is 202 with the job.
It writes the attributes jobpipe's table indexes (`owner`, `createdAt`), so it runs against the same
template-made table in moto. Clients are made at import, as the docs recommend.
"""

import json
import os
import time
import uuid

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import BadRequestError, UnauthorizedError

logger = Logger(service="api-ingest-baseline")
app = APIGatewayHttpResolver()
dynamodb = boto3.client("dynamodb")
sqs = boto3.client("sqs")
TABLE = os.environ["JOBS_TABLE"]
QUEUE_URL = os.environ["JOBS_QUEUE_URL"]
MAX_SLEEP_MS = 15 * 60 * 1000


def caller() -> str:
    """The `sub` claim API Gateway's JWT authorizer validated (as jobpipe's AUTH_MODE=apigateway trusts)."""
    authorizer = app.current_event.request_context.authorizer
    sub = (authorizer.jwt_claim or {}).get("sub") if authorizer else None
    if not sub:
        raise UnauthorizedError("no authorizer claims")
    return sub


def validate(body) -> tuple[str, dict]:
    if not isinstance(body, dict):
        raise BadRequestError("body must be a JSON object with kind and input")
    unknown = [k for k in body if k not in ("kind", "input")]
    if unknown:
        raise BadRequestError(f"{unknown[0]}: unknown field")
    kind = body.get("kind")
    if kind != "echo":
        raise BadRequestError("kind: only echo is offered")
    job_input = body.get("input", {})
    if not isinstance(job_input, dict):
        raise BadRequestError("input: must be a JSON object")
    for field, maximum in (("sleepMs", MAX_SLEEP_MS), ("failTimes", 100)):
        value = job_input.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum):
            raise BadRequestError(f"input.{field}: must be an integer from 0 to {maximum}")
    return kind, job_input


@app.post("/jobs")
def submit():
    try:
        body = app.current_event.json_body
    except json.JSONDecodeError as error:
        raise BadRequestError(f"the body is not valid JSON: {error}")
    kind, job_input = validate(body)
    owner = caller()
    job_id = str(uuid.uuid4())
    now = int(time.time() * 1000)
    dynamodb.put_item(
        TableName=TABLE,
        Item={
            "jobId": {"S": job_id},
            "owner": {"S": owner},
            "kind": {"S": kind},
            "status": {"S": "queued"},
            "input": {"S": json.dumps(job_input)},
            "attempts": {"N": "0"},
            "createdAt": {"N": str(now)},
            "updatedAt": {"N": str(now)},
        },
        ConditionExpression="attribute_not_exists(jobId)",
    )
    sqs.send_message(QueueUrl=QUEUE_URL, MessageBody=json.dumps({"jobId": job_id}))
    logger.info("job accepted", extra={"job_id": job_id})
    view = {"jobId": job_id, "kind": kind, "status": "queued", "input": job_input, "createdAt": now}
    return Response(status_code=202, content_type=content_types.APPLICATION_JSON, body=json.dumps(view),
                    headers={"Location": f"/jobs/{job_id}"})


@logger.inject_lambda_context
def handler(event, context):
    return app.resolve(event, context)
