"""Runs moto on 127.0.0.1 for as long as whoever started it keeps our stdin open.

The test harness and the local stack start this script with a pipe on stdin and never write to it. When
the parent exits for any reason (including SIGKILL) the pipe closes, `stdin.read()` returns and moto
stops, so no test run leaves a server behind. The first line on stdout is `READY <port>`; port 0 picks a
free port, which avoids the race of choosing one in the parent.

DynamoDB is not served from here: the local stack and the tests send DynamoDB and DynamoDB Streams calls
to Amazon's DynamoDB Local (infra/dynamodb_local.py), whose conditional writes are atomic as DynamoDB's
are. (moto's were not: its DynamoDB backend takes no lock, and two concurrent claims of one job could both
pass their condition; this script used to serialize DynamoDB requests to hide that.)

moto's SQS is patched first (`moto_sqs`): its queue changes made atomic, its clock made cheap, and its
standard queues made fair queues as on AWS (moto alone hands messages out in arrival order whatever their
`MessageGroupId`).
"""

import argparse
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress.server import create_server

import moto_sqs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    moto_sqs.install()
    app = DomainDispatcherApplication(create_backend_app)
    # waitress keeps HTTP/1.1 connections open as AWS endpoints do (werkzeug's server closes every
    # connection after one request: a TCP handshake per AWS call, in every test and benchmark). Each
    # long-polling ReceiveMessage holds a thread for up to 20 s, even after its client has gone (a stopped
    # local stack leaves its event source mappings' polls running out here), and every local stack polls
    # with several: with too few threads, calls queue behind the polls for seconds (measured: SendMessage
    # stalled up to 14 s with 48 threads and two test runs at once). Idle threads cost next to nothing.
    server = create_server(app, host=args.host, port=args.port, threads=512, connection_limit=4000, channel_timeout=120)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    print(f"READY {server.effective_port}", flush=True)
    try:
        sys.stdin.read()
    finally:
        server.close()


if __name__ == "__main__":
    main()
