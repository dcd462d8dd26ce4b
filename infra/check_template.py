"""Checks template.yaml offline, beyond what `cfn-lint` and `sam validate --lint` see.

1. Translates the SAM template to plain CloudFormation with the SAM translator (every function's CodeUri
   rewritten to an s3:// URI, as `sam package` would) and runs cfn-lint on the result: the plain lint does
   not run the SAM transform, so it misses wrong enum values inside SAM properties (a misspelt
   FunctionResponseTypes, say); the translated one catches them.
2. Enforces the project's rules on the translated template:
   - every SQS event source mapping reports batch item failures;
   - every queue that is not itself a dead-letter queue has a redrive policy, and its visibility timeout is
     at least six times the timeout of every function consuming it;
   - no IAM statement allows Action "*" or Resource "*", except the actions listed in ALLOWED_WILDCARDS
     (APIs that admit no narrower resource);
   - managed policies attached to roles are read too (MANAGED_POLICIES holds the AWS-managed ones SAM
     attaches, as AWS publishes them; an unknown one is a problem), under the same wildcard rule;
   - every DynamoDB table has point-in-time recovery;
   - every bucket blocks all public access;
   - tables and buckets state their DeletionPolicy and UpdateReplacePolicy, and the jobs table and the
     payload bucket (what JOBS_TABLE and PAYLOAD_BUCKET name) agree on them;
   - an HTTP API with CORS lets preflights reach no authorizer: when an ANY route (`$default`) has one,
     an `OPTIONS /{proxy+}` route without authorization must exist (AWS: CORS for HTTP APIs);
   - a topic that alarms publish to is not encrypted with an AWS-managed key (alias/aws/...), and a
     customer-managed key it uses lets cloudwatch.amazonaws.com Decrypt and GenerateDataKey*;
   - every function logs to a log group of the template (LoggingConfig.LogGroup), not to the
     /aws/lambda/<name> group Lambda creates itself, and keeps the platform's REPORT lines
     (SystemLogLevel INFO or DEBUG);
   - a role that reads objects of a bucket of the template (s3:GetObject) may also list it
     (s3:ListBucket): otherwise S3 answers a missing key with 403, not 404, and an expired payload reads
     as an error instead of as absent;
   - a dashboard's name includes the region (dashboards are global to the account);
   - samconfig.toml (beside the template) pins a region for every deploy configuration.

Exits 1 with one line per violation. Usage: python infra/check_template.py [template.yaml]
"""

import json
import os
import subprocess
import sys
import tempfile
import tomllib

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

LOG_WRITES = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]

# Actions that AWS only grants on Resource "*".
ALLOWED_WILDCARDS = {
    "xray:PutTraceSegments",  # X-Ray (Tracing: Active)
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "xray:GetSamplingStatisticSummaries",
    "dynamodb:ListStreams",  # the stream event source's poller lists streams account-wide
    # AWSLambdaBasicExecutionRole, which SAM attaches to every role it makes: writing logs only.
    *LOG_WRITES,
}


# The AWS-managed policies SAM attaches to the roles it makes, as AWS publishes them (Allow statements).
MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": [
        {"Effect": "Allow", "Action": LOG_WRITES, "Resource": "*"},
    ],
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess": [
        {"Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords",
                                       "xray:GetSamplingRules", "xray:GetSamplingTargets",
                                       "xray:GetSamplingStatisticSummaries"], "Resource": "*"},
    ],
    "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole": [
        {"Effect": "Allow", "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"] + LOG_WRITES,
         "Resource": "*"},
    ],
    "arn:aws:iam::aws:policy/service-role/AWSLambdaDynamoDBExecutionRole": [
        {"Effect": "Allow", "Action": ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator",
                                       "dynamodb:ListStreams"] + LOG_WRITES, "Resource": "*"},
    ],
}


class NoManagedPolicies:
    """Managed policy names would need IAM to resolve; the template uses none."""

    def load(self):
        return {}


def translate(path):
    with open(path) as f:
        template = yaml_parse(f.read())
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://offline-check/code.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return transform(template, {}, NoManagedPolicies())


def ref_id(value):
    """The logical id an intrinsic names: Ref X, Fn::GetAtt [X, ...]."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            att = value["Fn::GetAtt"]
            return att[0] if isinstance(att, list) else att.split(".")[0]
    return None


def as_list(value):
    return value if isinstance(value, list) else [value]


def check(cfn):
    problems = []
    resources = cfn["Resources"]
    of_type = lambda kind: {k: v for k, v in resources.items() if v["Type"] == kind}
    queues = of_type("AWS::SQS::Queue")
    functions = of_type("AWS::Lambda::Function")

    dlq_targets = set()
    for name, queue in queues.items():
        redrive = queue.get("Properties", {}).get("RedrivePolicy")
        if redrive:
            dlq_targets.add(ref_id(redrive.get("deadLetterTargetArn")))

    consumers = {}
    for name, mapping in of_type("AWS::Lambda::EventSourceMapping").items():
        props = mapping["Properties"]
        source = ref_id(props.get("EventSourceArn"))
        if source in queues:
            if "ReportBatchItemFailures" not in props.get("FunctionResponseTypes", []):
                problems.append(f"{name}: SQS event source without ReportBatchItemFailures")
            consumers.setdefault(source, []).append(ref_id(props.get("FunctionName")))

    for name, queue in queues.items():
        props = queue.get("Properties", {})
        if name not in dlq_targets and "RedrivePolicy" not in props:
            problems.append(f"{name}: queue without a dead-letter queue (RedrivePolicy)")
        visibility = int(props.get("VisibilityTimeout", 30))
        for function in consumers.get(name, []):
            timeout = int(functions[function]["Properties"].get("Timeout", 3))
            if visibility < 6 * timeout:
                problems.append(f"{name}: VisibilityTimeout {visibility}s is under 6x {function}'s {timeout}s timeout")

    policy_holders = list(of_type("AWS::IAM::Role").items()) + list(of_type("AWS::IAM::Policy").items())
    for name, holder in policy_holders:
        props = holder["Properties"]
        documents = [p.get("PolicyDocument", {}) for p in props.get("Policies", [])]
        if "PolicyDocument" in props:
            documents.append(props["PolicyDocument"])
        for arn in props.get("ManagedPolicyArns", []):
            arn = arn.get("Fn::Sub", arn) if isinstance(arn, dict) else arn
            arn = arn.replace("${AWS::Partition}", "aws") if isinstance(arn, str) else arn
            if arn not in MANAGED_POLICIES:
                problems.append(f"{name}: managed policy {arn} is not one this check knows; list its statements")
                continue
            documents.append({"Statement": MANAGED_POLICIES[arn]})
        for document in documents:
            for statement in as_list(document.get("Statement", [])):
                if statement.get("Effect") != "Allow":
                    continue
                actions = as_list(statement.get("Action", []))
                resources_ = as_list(statement.get("Resource", []))
                for action in actions:
                    if action == "*" or action.endswith(":*"):
                        problems.append(f"{name}: wildcard action {action}")
                if "*" in resources_ and not all(a in ALLOWED_WILDCARDS for a in actions):
                    wild = [a for a in actions if a not in ALLOWED_WILDCARDS]
                    problems.append(f"{name}: Resource \"*\" for {', '.join(wild)}")

    for name, table in of_type("AWS::DynamoDB::Table").items():
        pitr = table.get("Properties", {}).get("PointInTimeRecoverySpecification", {})
        if pitr.get("PointInTimeRecoveryEnabled") is not True:
            problems.append(f"{name}: table without point-in-time recovery")

    for name, bucket in of_type("AWS::S3::Bucket").items():
        block = bucket.get("Properties", {}).get("PublicAccessBlockConfiguration", {})
        flags = ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"]
        if not all(block.get(flag) is True for flag in flags):
            problems.append(f"{name}: bucket does not block all public access")

    problems += check_missing_objects_read_as_absent(of_type("AWS::IAM::Role"), of_type("AWS::S3::Bucket"))
    problems += check_deletion_policies(resources, functions)
    problems += check_cors_preflights(of_type("AWS::ApiGatewayV2::Api"))
    problems += check_alarm_topics(resources)
    problems += check_logging(resources, functions)
    for name, dashboard in of_type("AWS::CloudWatch::Dashboard").items():
        dashboard_name = dashboard.get("Properties", {}).get("DashboardName")
        if dashboard_name is not None and "${AWS::Region}" not in json.dumps(dashboard_name):
            problems.append(f"{name}: DashboardName does not include ${{AWS::Region}}; dashboards are global")
    return problems


def statements_of(role):
    for policy in role["Properties"].get("Policies", []):
        yield from as_list(policy.get("PolicyDocument", {}).get("Statement", []))


def bucket_of(resource):
    """(logical id, whether it names objects) of a statement resource `!GetAtt B.Arn` (the bucket) or
    `!Sub "${B.Arn}/..."` (its objects); (None, None) for anything else."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        return ref_id(resource), False
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        sub = resource["Fn::Sub"] if isinstance(resource["Fn::Sub"], str) else resource["Fn::Sub"][0]
        if sub.startswith("${") and ".Arn}" in sub:
            return sub[2:sub.index(".Arn}")], "/" in sub[sub.index(".Arn}"):]
    return None, None


def check_missing_objects_read_as_absent(roles, buckets):
    problems = []
    for name, role in roles.items():
        reads, lists = set(), set()
        for statement in statements_of(role):
            if statement.get("Effect") != "Allow":
                continue
            actions = as_list(statement.get("Action", []))
            for resource in as_list(statement.get("Resource", [])):
                bucket, objects = bucket_of(resource)
                if bucket not in buckets:
                    continue
                if objects and "s3:GetObject" in actions:
                    reads.add(bucket)
                if objects is False and "s3:ListBucket" in actions:
                    lists.add(bucket)
        for bucket in sorted(reads - lists):
            problems.append(f"{name}: reads objects of {bucket} without s3:ListBucket on it; a missing key "
                            "then answers 403, not 404")
    return problems


def check_deletion_policies(resources, functions):
    problems = []
    stateful = {k: v for k, v in resources.items() if v["Type"] in ("AWS::DynamoDB::Table", "AWS::S3::Bucket")}
    for name, resource in stateful.items():
        for policy in ("DeletionPolicy", "UpdateReplacePolicy"):
            if policy not in resource:
                problems.append(f"{name}: no explicit {policy}")
    job_data = set()
    for function in functions.values():
        variables = function["Properties"].get("Environment", {}).get("Variables", {})
        for variable in ("JOBS_TABLE", "PAYLOAD_BUCKET"):
            if ref_id(variables.get(variable)) in stateful:
                job_data.add(ref_id(variables[variable]))
    policies = {(stateful[n].get("DeletionPolicy"), stateful[n].get("UpdateReplacePolicy")) for n in job_data}
    if len(policies) > 1:
        problems.append(f"{', '.join(sorted(job_data))}: the job data's deletion policies differ {sorted(map(str, policies))}")
    return problems


def guarded(operation):
    """Whether an OpenAPI operation of an HTTP API body requires an authorizer."""
    if operation is None:
        return False
    return any(key != "NONE" for requirement in operation.get("security", []) for key in requirement)


def check_cors_preflights(apis):
    problems = []
    for name, api in apis.items():
        body = api.get("Properties", {}).get("Body")
        if not body or "x-amazon-apigateway-cors" not in body:
            continue
        paths = body.get("paths", {})
        catch_all = [p for p, item in paths.items() if guarded(item.get("x-amazon-apigateway-any-method"))]
        preflight = paths.get("/{proxy+}", {}).get("options")
        if catch_all and (preflight is None or guarded(preflight)):
            problems.append(
                f"{name}: CORS preflights reach an authorizer through {', '.join(catch_all)}; "
                "add an OPTIONS /{proxy+} route with Auth: { Authorizer: NONE }"
            )
    return problems


def check_alarm_topics(resources):
    problems = []
    alarmed = set()
    for alarm in (r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"):
        props = alarm.get("Properties", {})
        for action in props.get("AlarmActions", []) + props.get("OKActions", []) + props.get("InsufficientDataActions", []):
            alarmed.add(ref_id(action))
    for name in sorted(t for t in alarmed if t in resources and resources[t]["Type"] == "AWS::SNS::Topic"):
        key = resources[name].get("Properties", {}).get("KmsMasterKeyId")
        if key is None:
            continue
        if isinstance(key, str):
            if key.startswith("alias/aws/") or key.startswith("arn:aws:kms:") and ":alias/aws/" in key:
                problems.append(f"{name}: alarms publish to it but it is encrypted with the AWS-managed {key}, "
                                "which CloudWatch cannot use")
            continue
        key_id = ref_id(key)
        policy = resources.get(key_id, {}).get("Properties", {}).get("KeyPolicy", {})
        granted = set()
        for statement in as_list(policy.get("Statement", [])):
            principal = statement.get("Principal", {})
            services = as_list(principal.get("Service", [])) if isinstance(principal, dict) else []
            if statement.get("Effect") == "Allow" and "cloudwatch.amazonaws.com" in services:
                granted.update(as_list(statement.get("Action", [])))
        missing = [a for a in ("kms:Decrypt", "kms:GenerateDataKey*") if a not in granted]
        if missing:
            problems.append(f"{name}: its key {key_id} does not let cloudwatch.amazonaws.com {', '.join(missing)}")
    return problems


def check_logging(resources, functions):
    problems = []
    for name, function in functions.items():
        logging = function["Properties"].get("LoggingConfig", {})
        group = ref_id(logging.get("LogGroup"))
        if group not in resources or resources[group]["Type"] != "AWS::Logs::LogGroup":
            problems.append(f"{name}: LoggingConfig.LogGroup names no log group of the template")
        if logging.get("SystemLogLevel", "INFO") not in ("INFO", "DEBUG"):
            problems.append(f"{name}: SystemLogLevel {logging['SystemLogLevel']} drops the REPORT lines")
    for name, group in resources.items():
        if group["Type"] != "AWS::Logs::LogGroup":
            continue
        log_name = json.dumps(group.get("Properties", {}).get("LogGroupName", ""))
        if "/aws/lambda/" in log_name:
            problems.append(f"{name}: /aws/lambda/ groups race the ones Lambda creates; name it from the stack")
    return problems


def check_samconfig(path):
    """Every deploy configuration pins a region (it decides which Bedrock models exist)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        config = tomllib.load(f)
    problems = []
    default_region = config.get("default", {}).get("global", {}).get("parameters", {}).get("region")
    for env, commands in config.items():
        if not isinstance(commands, dict) or "deploy" not in commands:
            continue
        region = commands["deploy"].get("parameters", {}).get("region") or default_region
        if not region:
            problems.append(f"samconfig.toml [{env}.deploy]: no region")
    return problems


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    cfn = translate(path)
    problems = check(cfn) + check_samconfig(os.path.join(os.path.dirname(os.path.abspath(path)), "samconfig.toml"))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as out:
        json.dump(cfn, out, indent=1)
    try:
        # W2001 (unused parameter): the translator inlines parameters it must resolve at transform time
        # (CORS origins in the HTTP API's OpenAPI body), which leaves them unused in its output.
        cfn_lint = os.path.join(os.path.dirname(sys.executable), "cfn-lint")
        lint = subprocess.run([cfn_lint, "--ignore-checks", "W2001", "--", out.name], capture_output=True, text=True)
    finally:
        os.unlink(out.name)
    if lint.returncode != 0:
        problems.append("cfn-lint on the translated template:\n" + lint.stdout + lint.stderr)
    for problem in problems:
        print(problem)
    counts = {t: sum(1 for r in cfn["Resources"].values() if r["Type"] == t) for t in
              ["AWS::Lambda::Function", "AWS::Lambda::EventSourceMapping", "AWS::SQS::Queue", "AWS::IAM::Role"]}
    print(f"template check: {len(problems)} problem(s); translated {len(cfn['Resources'])} resources {counts}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
