"""A misbehaving OpenAI-compatible endpoint, for the one test of retries and failure records (every other
debate test talks to a real ``transformers serve``). Run as a process:

    python tests/debate_stub.py PORT LOG [--healthy]

By the question a request is about (its last user message):
* ``FLAKY``: per request (seed + prompt), attempt 1 answers 429 with ``Retry-After: 0.3``, attempt 2
  answers 500, attempt 3 answers;
* ``BROKEN``: 503 every time, unless started with ``--healthy``;
* ``REJECTED``: 400 every time (not retryable), unless ``--healthy``;
* anything else: answers at once.
An answer is ``The answer is 7. \\boxed{7}`` with usage filled in. Every request is logged to LOG (one
JSON line: key, question marker, status, time) before it is answered.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, LOG, HEALTHY = int(sys.argv[1]), sys.argv[2], "--healthy" in sys.argv
attempts: dict[str, int] = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the JSON log is the record
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"status": "ok"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        key = hashlib.sha256(f"{body.get('seed')}|{prompt}".encode()).hexdigest()[:16]
        marker = next((m for m in ("FLAKY", "BROKEN", "REJECTED") if m in prompt), "OK")
        with lock:
            attempts[key] = n = attempts.get(key, 0) + 1
        status, headers = 200, {}
        if marker == "FLAKY" and n == 1:
            status, headers = 429, {"retry-after": "0.3"}
        elif marker == "FLAKY" and n == 2:
            status = 500
        elif marker == "BROKEN" and not HEALTHY:
            status = 503
        elif marker == "REJECTED" and not HEALTHY:
            status = 400
        with lock, open(LOG, "a") as fh:
            fh.write(json.dumps({"key": key, "marker": marker, "attempt": n, "status": status,
                                 "t": time.monotonic()}) + "\n")
        if status != 200:
            self._send(status, {"error": {"message": f"stub says {status}", "type": "stub"}}, headers)
            return
        self._send(200, {
            "id": f"stub-{key}-{n}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "The answer is 7. \\boxed{7}"}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        })  # fmt: skip


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
