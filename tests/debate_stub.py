"""A misbehaving OpenAI-compatible endpoint, for the tests of retries and failure records (every other
debate test talks to a real ``transformers serve``). Run as a process:

    python tests/debate_stub.py PORT LOG [--healthy]

By the question a request is about (its last user message):
* ``FLAKY``: per request (seed + prompt), attempt 1 answers 429 with ``Retry-After: 0.3``, attempt 2
  answers 500, attempt 3 answers;
* ``BROKEN``: 503 every time, unless started with ``--healthy``;
* ``REJECTED``: 400 every time (not retryable), unless ``--healthy``;
* bad replies with status 200, every time unless ``--healthy``: ``BADJSON`` (a JSON body cut short),
  ``HTML`` (an HTML error page, ``text/html``), ``HUGE`` (20 MB of non-JSON, no content-length),
  ``BIGREPLY`` (a valid completion whose message is one character over the readers' text limit),
  ``SHAPE`` (a JSON list), ``NOCONTENT`` (a message without content);
* ``HALF``: the cut-short body to the agent sampling above temperature 0.8 only, the others answer;
* ``LATE``: round 0 answers, later rounds (more than one user message) get the HTML page;
* anything else: answers at once.
An answer is ``The answer is 7. \\boxed{7}`` with usage filled in. Every request is logged to LOG (one
JSON line: key, question marker, status, reply kind, temperature, user turns, time) before it is answered.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from magdi_dist.mag.readers import ReadLimits

PORT, LOG, HEALTHY = int(sys.argv[1]), sys.argv[2], "--healthy" in sys.argv
MARKERS = ("FLAKY", "BROKEN", "REJECTED", "BADJSON", "HTML", "HUGE", "BIGREPLY", "SHAPE", "NOCONTENT", "HALF",
           "LATE")
HTML_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
attempts: dict[str, int] = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the JSON log is the record
        pass

    def _send(self, status: int, body: dict | list, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_raw(self, data: bytes, content_type: str, *, length: bool = True) -> None:
        """A 200 with any body; without ``length`` the body ends when the connection closes."""
        self.send_response(200)
        self.send_header("content-type", content_type)
        if length:
            self.send_header("content-length", str(len(data)))
        self.end_headers()
        try:
            for start in range(0, len(data), 1 << 20):
                self.wfile.write(data[start : start + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: what a size limit is for

    def do_GET(self) -> None:
        self._send(200, {"status": "ok"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        key = hashlib.sha256(f"{body.get('seed')}|{prompt}".encode()).hexdigest()[:16]
        marker = next((m for m in MARKERS if m in prompt), "OK")
        user_turns = sum(m["role"] == "user" for m in body["messages"])
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
        bad = None if HEALTHY else {"HALF": "BADJSON" if body["temperature"] > 0.8 else None,
                                    "LATE": "HTML" if user_turns > 1 else None}.get(marker, marker)
        bad = bad if bad in ("BADJSON", "HTML", "HUGE", "BIGREPLY", "SHAPE", "NOCONTENT") else None
        with lock, open(LOG, "a") as fh:
            fh.write(json.dumps({"key": key, "marker": marker, "attempt": n, "status": status, "bad": bad,
                                 "temperature": body["temperature"], "user_turns": user_turns,
                                 "t": time.monotonic()}) + "\n")
        if status != 200:
            self._send(status, {"error": {"message": f"stub says {status}", "type": "stub"}}, headers)
            return
        content = "7" * (ReadLimits().max_text_chars + 1) if bad == "BIGREPLY" else "The answer is 7. \\boxed{7}"
        reply = {
            "id": f"stub-{key}-{n}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }  # fmt: skip
        if bad == "BADJSON":
            self._send_raw(json.dumps(reply).encode()[:60], "application/json")
        elif bad == "HTML":
            self._send_raw(HTML_PAGE, "text/html")
        elif bad == "HUGE":
            self._send_raw(b"x" * 20_000_000, "application/json", length=False)
        elif bad == "SHAPE":
            self._send(200, ["not", "a", "completion"])
        elif bad == "NOCONTENT":
            del reply["choices"][0]["message"]["content"]
            self._send(200, reply)
        else:
            self._send(200, reply)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
