"""A webhook receiver for tests: verifies every delivery with the Standard Webhooks specification's own
library (PyPI `standardwebhooks`), not with jobpipe's code, and answers as the test tells it.

Binds 127.0.0.1 on a free port and prints `READY <port>`; serves until stdin closes (its parent, the test,
stopped) or it is killed.

Control (JSON):
- `PUT /_secrets` `["whsec_...", ...]`: the secrets deliveries are verified with, each on its own.
- `PUT /_behave` `{"/path": [503, 503]}`: the next answers on that path (afterwards 200). A path answering
  302 redirects to `/redirected`.
- `GET /_log`: every delivery so far: `path`, `webhookId`, `verifiedBy` (indexes of the secrets that
  verify it alone), `signatures` (how many the header carries), `answered`, `body` (parsed).
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

LOCK = threading.Lock()
SECRETS = []
BEHAVIOUR = {}
LOG = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _read(self):
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length)

    def _answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/_log":
            with LOCK:
                body = json.dumps(LOG).encode()
            self._answer(200, body, [("content-type", "application/json")])
        else:
            self._answer(404)

    def do_PUT(self):
        global SECRETS
        body = json.loads(self._read() or b"null")
        with LOCK:
            if self.path == "/_secrets":
                SECRETS = list(body)
            elif self.path == "/_behave":
                for path, statuses in body.items():
                    BEHAVIOUR[path] = list(statuses)
            else:
                return self._answer(404)
        self._answer(204)

    def do_POST(self):
        raw = self._read()
        headers = {name.lower(): value for name, value in self.headers.items()}
        with LOCK:
            secrets = list(SECRETS)
            queue = BEHAVIOUR.get(self.path) or []
            status = queue.pop(0) if queue else 200
        verified_by, errors = [], []
        for index, secret in enumerate(secrets):
            try:
                Webhook(secret).verify(raw, headers)
                verified_by.append(index)
            except Exception as error:  # noqa: BLE001 - the verdict is recorded, not raised
                errors.append(f"{index}: {error}")
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        entry = {
            "path": self.path,
            "webhookId": headers.get("webhook-id"),
            "signatures": len((headers.get("webhook-signature") or "").split()),
            "verifiedBy": verified_by,
            "errors": errors,
            "answered": status,
            "body": body,
        }
        with LOCK:
            LOG.append(entry)
        if 300 <= status < 400:
            port = self.server.server_address[1]
            return self._answer(status, headers=[("location", f"http://127.0.0.1:{port}/redirected")])
        self._answer(status, b'{"ok": true}' if status < 300 else b"no")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"READY {server.server_address[1]}", flush=True)
    # Serve until the parent goes away.
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
