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
   - every DynamoDB table has point-in-time recovery;
   - every bucket blocks all public access.

Exits 1 with one line per violation. Usage: python infra/check_template.py [template.yaml]
"""

import json
import os
import subprocess
import sys
import tempfile

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

# Actions that AWS only grants on Resource "*".
ALLOWED_WILDCARDS = {
    "xray:PutTraceSegments",  # X-Ray (Tracing: Active)
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "xray:GetSamplingStatisticSummaries",
    "dynamodb:ListStreams",  # the stream event source's poller lists streams account-wide
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
    return problems


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    cfn = translate(path)
    problems = check(cfn)
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
