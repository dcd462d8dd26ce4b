"""The fair-queue order moto's standard queues follow here (sqs_fair_queues), through boto3 as a client sees it."""

import os
import sys
import unittest

import boto3
from moto import mock_aws

sys.path.insert(0, os.path.dirname(__file__))
import sqs_fair_queues  # noqa: E402

sqs_fair_queues.install()


@mock_aws
class FairQueueOrder(unittest.TestCase):
    def setUp(self) -> None:
        self.sqs = boto3.client("sqs", region_name="us-east-1")
        self.url = self.sqs.create_queue(QueueName="jobs")["QueueUrl"]

    def send(self, tenant: str | None, count: int, first: int = 0) -> None:
        for i in range(first, first + count):
            extra = {"MessageGroupId": tenant} if tenant else {}
            self.sqs.send_message(QueueUrl=self.url, MessageBody=f"{tenant}-{i}", **extra)

    def receive(self, count: int) -> list[dict]:
        got: list[dict] = []
        while len(got) < count:
            batch = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=min(10, count - len(got)))
            got.extend(batch.get("Messages", []))
        return got

    def delete(self, messages: list[dict]) -> None:
        for message in messages:
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])

    def test_a_noisy_tenants_backlog_waits_behind_a_quiet_tenants_messages(self) -> None:
        self.send("noisy", 100)
        in_flight = self.receive(40)  # 40 of noisy's own in flight: over 30, and 100% of the queue's
        self.send("quiet", 5)
        bodies = [m["Body"] for m in self.receive(10)]
        self.assertEqual(bodies[:5], [f"quiet-{i}" for i in range(5)])
        self.assertEqual(bodies[5:], [f"noisy-{i}" for i in range(40, 45)])
        self.delete(in_flight)

    def test_arrival_order_while_no_tenant_stands_out(self) -> None:
        self.send("a", 20)
        self.receive(20)  # 20 in flight: under 30 of its own, and no processing time recorded yet
        self.send("a", 3, first=20)
        self.send("b", 3)
        bodies = [m["Body"] for m in self.receive(6)]
        self.assertEqual(bodies, ["a-20", "a-21", "a-22", "b-0", "b-1", "b-2"])

    def test_processing_time_share_marks_a_tenant_noisy(self) -> None:
        self.send("slow", 3)
        self.delete(self.receive(3))  # all the recent processing time is slow's
        self.send("slow", 3, first=3)
        self.send("other", 1)
        self.assertEqual(self.receive(1)[0]["Body"], "other-0")

    def test_messages_without_a_group_are_tenants_of_their_own(self) -> None:
        self.send(None, 100)
        self.receive(40)
        self.send("quiet", 2)
        bodies = [m["Body"] for m in self.receive(10)]
        self.assertEqual(bodies[:8], [f"None-{i}" for i in range(40, 48)])

    def test_the_switch_turns_it_off(self) -> None:
        self.send("noisy", 100)
        self.receive(40)
        self.send("quiet", 5)
        self.sqs.tag_queue(QueueUrl=self.url, Tags={sqs_fair_queues.SWITCH_TAG: "off"})
        bodies = [m["Body"] for m in self.receive(10)]
        self.assertEqual(bodies, [f"noisy-{i}" for i in range(40, 50)])


if __name__ == "__main__":
    unittest.main()
