"""moto's SQS under concurrent calls, as `moto_sqs` patches it: no sent message is lost and no deleted one
comes back. Calls go to the backend from threads, as moto's server runs each request on its own."""

import os
import sys
import threading
import unittest

import boto3
from moto import mock_aws
from moto.sqs.models import sqs_backends

sys.path.insert(0, os.path.dirname(__file__))
import moto_sqs  # noqa: E402

moto_sqs.install()


@mock_aws
class ConcurrentQueueChanges(unittest.TestCase):
    def test_sends_and_deletes_at_once_lose_and_resurrect_nothing(self) -> None:
        sqs = boto3.client("sqs", region_name="us-east-1")
        sqs.create_queue(QueueName="jobs")
        backend = sqs_backends["123456789012"]["us-east-1"]
        for i in range(600):
            backend.send_message("jobs", f"old-{i}")
        received = backend.receive_message("jobs", 600, 0, 900)
        while len(received) < 600:
            received += backend.receive_message("jobs", 600 - len(received), 0, 900)
        handles = [message.receipt_handle for message in received]

        def delete(part: list[str]) -> None:
            for handle in part:
                backend.delete_message("jobs", handle)

        def send(first: int) -> None:
            for i in range(first, first + 50):
                backend.send_message("jobs", f"new-{i}")

        threads = [threading.Thread(target=delete, args=(handles[k::6],)) for k in range(6)]
        threads += [threading.Thread(target=send, args=(k * 50,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        left = sorted(message.body for message in backend.get_queue("jobs")._messages)
        self.assertEqual(left, sorted(f"new-{i}" for i in range(200)))


if __name__ == "__main__":
    unittest.main()
