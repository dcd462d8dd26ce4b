"""Each rule of check_template.py refuses the defect it exists for: the defect is put back into a copy of
template.yaml (or samconfig.toml) and the check must name it; the real files must pass.

Run by the test command: python -m unittest infra/test_check_template.py (from the repository root).
"""

import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_template  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "template.yaml")) as f:
    TEMPLATE = f.read()
with open(os.path.join(ROOT, "samconfig.toml")) as f:
    SAMCONFIG = f.read()


def problems(template=TEMPLATE, samconfig=SAMCONFIG):
    directory = tempfile.mkdtemp()
    try:
        for name, text in (("template.yaml", template), ("samconfig.toml", samconfig)):
            with open(os.path.join(directory, name), "w") as f:
                f.write(text)
        path = os.path.join(directory, "template.yaml")
        cfn = check_template.translate(path)
        return check_template.check(cfn) + check_template.check_samconfig(os.path.join(directory, "samconfig.toml"))
    finally:
        shutil.rmtree(directory)


def mutate(old, new, text=TEMPLATE):
    assert old in text, f"the template no longer contains {old!r}: update this test"
    return text.replace(old, new)


class Rules(unittest.TestCase):
    def assert_refused(self, found, fragment):
        self.assertTrue(any(fragment in p for p in found), f"no problem mentions {fragment!r}: {found}")

    def test_the_real_template_passes(self):
        self.assertEqual(problems(), [])

    def test_preflights_must_not_reach_an_authorizer(self):
        without_route = mutate("""        Preflight:
          Type: HttpApi
          Properties: { ApiId: !Ref HttpApi, Method: OPTIONS, Path: "/{proxy+}", Auth: { Authorizer: NONE } }
""", "")
        self.assert_refused(problems(without_route), "CORS preflights reach an authorizer through $default")

    def test_alarm_topics_need_a_key_cloudwatch_can_use(self):
        managed = mutate("KmsMasterKeyId: !Ref AlarmTopicKey", "KmsMasterKeyId: alias/aws/sns")
        self.assert_refused(problems(managed), "AWS-managed alias/aws/sns")
        no_grant = mutate("Principal: { Service: cloudwatch.amazonaws.com }", "Principal: { Service: sns.amazonaws.com }")
        self.assert_refused(problems(no_grant), "does not let cloudwatch.amazonaws.com")

    def test_functions_log_to_their_own_groups_with_report_lines(self):
        racing = mutate('LogGroupName: !Sub "/jobpipe/${AWS::StackName}/notifier"',
                        'LogGroupName: !Sub "/aws/lambda/${NotifierFunction}"')
        self.assert_refused(problems(racing), "/aws/lambda/ groups race")
        quiet = mutate("SystemLogLevel: INFO", "SystemLogLevel: WARN")
        self.assert_refused(problems(quiet), "SystemLogLevel WARN drops the REPORT lines")
        unpointed = mutate("        LogGroup: !Ref NotifierLogGroup\n", "        LogFormat: JSON\n")
        self.assert_refused(problems(unpointed), "NotifierFunction: LoggingConfig.LogGroup")

    def test_managed_policies_are_read(self):
        # A SAM SQS event attaches AWSLambdaSQSQueueExecutionRole: any queue's messages.
        sam_event = mutate("""      Events:
        Reconcile:""", """      Events:
        Jobs:
          Type: SQS
          Properties:
            Queue: !GetAtt JobsQueue.Arn
            FunctionResponseTypes: [ReportBatchItemFailures]
        Reconcile:""")
        self.assert_refused(problems(sam_event), 'Resource "*" for sqs:ReceiveMessage')

    def test_job_data_keeps_one_deletion_policy(self):
        template = mutate("""  PayloadBucket:
    Type: AWS::S3::Bucket
    # Like the jobs table: the jobs' inputs and results outlive a deleted or replaced stack.
    DeletionPolicy: Retain
""", """  PayloadBucket:
    Type: AWS::S3::Bucket
    DeletionPolicy: Delete
""")
        self.assert_refused(problems(template), "deletion policies differ")

    def test_readers_of_payloads_may_list_the_bucket(self):
        template = mutate("""            - Sid: MissingPayloadsAreNotFound # without it S3 answers 403, not 404, for an expired payload
              Effect: Allow
              Action: [s3:ListBucket]
              Resource: !GetAtt PayloadBucket.Arn
            - Sid: GenerateImages""", """            - Sid: GenerateImages""")
        self.assert_refused(problems(template), "QueueProcessorFunctionRole: reads objects of PayloadBucket without s3:ListBucket")

    def test_dashboards_are_named_per_region(self):
        template = mutate('DashboardName: !Sub "${AWS::StackName}-${AWS::Region}"', 'DashboardName: !Sub "jobpipe-${Stage}"')
        self.assert_refused(problems(template), "DashboardName does not include")

    def test_every_deploy_configuration_pins_a_region(self):
        samconfig = "\n".join(line for line in SAMCONFIG.splitlines() if not line.startswith("region"))
        self.assert_refused(problems(samconfig=samconfig), "[prod.deploy]: no region")


if __name__ == "__main__":
    unittest.main()
