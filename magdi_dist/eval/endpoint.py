"""One request to an OpenAI-compatible endpoint, through the endpoint's gate, with bounded retries: the
core a debate's turns (magdi_dist.debate.client) and a remote evaluation (eval/remote.py) share. Here,
in eval, because eval is the lower of the two layers.

Retried: 429 (honouring Retry-After), 5xx, timeouts and connection errors, and bad replies -- a 200
whose body is not JSON (an HTML error page, a truncated or runaway body), is not a completion (no
choices, no text, fields of the wrong type) or is larger than the readers accept -- with exponential
backoff and seeded jitter: a proxy or an overloaded server sends those for a while. Not retried: other
4xx (a bad model name or key does not heal by waiting). Either way the outcome is a dict, never an
exception: ``ok`` with the parsed reply, attempts and timestamps, or not ``ok`` with the last error.

The reply is parsed here rather than by the SDK, which hands back a JSONDecodeError, a bare string or
an unvalidated object for such bodies, and its size is capped before it is read in full: a text longer
than ``ReadLimits.max_text_chars`` would make a MAG the project's own readers refuse.

``Gate``: at most ``max_concurrency`` requests in flight and at most ``requests_per_second`` starts.
Every attempt passes it, retries included, and a retry's backoff sleep happens outside it: a failing
endpoint is never hit faster than its limits, and a sleeping request holds no slot.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Literal

import openai

from magdi_dist.eval.config import EndpointLimits
from magdi_dist.mag.readers import ReadLimits

MAX_CONTENT_CHARS = ReadLimits().max_text_chars  # the readers' limit on one reasoning text, not a copy
# A reply within that limit is at most 12 bytes a character (a non-BMP character escaped as a
# \uXXXX\uXXXX pair), plus the envelope; anything longer cannot hold an acceptable message.
MAX_REPLY_BYTES = 16 * MAX_CONTENT_CHARS
MAX_FIELD_CHARS = 1000  # model, finish_reason: they go into every record's meta

Kind = Literal["chat", "completion"]  # /v1/chat/completions (messages) or /v1/completions (prompt text)


class BadReply(ValueError):
    """A 200 reply that is not a usable completion; the message says what is wrong with it."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def make_client(base_url: str, limits: EndpointLimits, api_key: str | None) -> openai.AsyncOpenAI:
    # The SDK's own retries are off: ours pass the gate on every attempt and are recorded.
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=0,
                              timeout=limits.timeout_s)


class Gate:
    """One endpoint's admission gate (plain asyncio; a debate hosts one per base_url in a Ray actor)."""

    def __init__(self, max_concurrency: int, requests_per_second: float | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_start = 0.0  # monotonic time before which no request may start
        self._in_flight = 0
        self.peak_in_flight = 0
        self.admitted = 0

    async def acquire(self) -> None:
        await self._slots.acquire()
        if self._interval:
            # Reserve the next start time without awaiting between read and write: the event loop
            # runs one coroutine at a time, so reservations never overlap.
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
            if start > now:
                await asyncio.sleep(start - now)
        self._in_flight += 1
        self.admitted += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def release(self) -> None:
        self._in_flight -= 1
        self._slots.release()

    def stats(self) -> dict[str, int]:
        return {"admitted": self.admitted, "peak_in_flight": self.peak_in_flight, "in_flight": self._in_flight}


def _retry_after(err: openai.APIStatusError) -> float | None:
    value = err.response.headers.get("retry-after") if err.response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def _describe(err: Exception) -> str:
    if isinstance(err, openai.APIStatusError):
        return f"HTTP {err.status_code}: {str(err.message)[:300]}"
    return f"{type(err).__name__}: {str(err)[:300]}"


def backoff_delay(limits: EndpointLimits, retry: int, rng: random.Random, retry_after: float | None) -> float:
    """Delay before retry number ``retry`` (0-based): Retry-After when the server gave one, else
    initial * 2**retry with jitter in [50%, 100%] (so workers that failed together spread out)."""
    if retry_after is not None:
        return min(retry_after, limits.backoff_max_s)
    return min(limits.backoff_initial_s * 2**retry, limits.backoff_max_s) * (0.5 + 0.5 * rng.random())


async def _read_body(response, deadline_s: float) -> bytes:
    """The body, refused once it passes MAX_REPLY_BYTES (the rest is never read)."""
    declared = response.http_response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
        raise BadReply(f"reply body is {declared} bytes, over the {MAX_REPLY_BYTES}-byte limit")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise BadReply(f"reply body is over the {MAX_REPLY_BYTES}-byte limit (stopped reading)")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        # One deadline for the whole body: a server dripping bytes would otherwise hold its gate slot.
        return await asyncio.wait_for(read(), deadline_s)
    except BadReply:
        raise
    except asyncio.TimeoutError:
        raise BadReply(f"reply body not received within {deadline_s} s") from None
    except Exception as err:  # only the transport runs here: a connection cut or reset mid-body
        raise BadReply(f"reading the reply body failed: {type(err).__name__}: {str(err)[:200]}") from None


def _text(value, where: str, limit: int, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise BadReply(f"reply has no {where}")
        return None
    if not isinstance(value, str):
        raise BadReply(f"reply field {where} is {type(value).__name__}, not a string")
    if len(value) > limit:
        raise BadReply(f"reply field {where} is {len(value)} characters, over the limit of {limit}"
                       + (" (ReadLimits.max_text_chars, the readers' limit)" if limit == MAX_CONTENT_CHARS else ""))
    try:
        value.encode("utf-8")  # a lone surrogate (\ud800) parses but cannot be written to the log
    except UnicodeEncodeError as err:
        raise BadReply(f"reply field {where} is not valid Unicode ({err.reason} at char {err.start})") from None
    return value


def _tokens(usage: dict, key: str) -> int | None:
    value = usage.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadReply(f"reply field usage.{key} is {value!r}, not a token count")
    return value


def parse_reply(body: bytes, content_type: str | None = None, kind: Kind = "chat") -> dict:
    """What a request keeps of a completion body: content (a chat reply's message, a text completion's
    text), finish_reason, usage and model."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError too
        what = f"content-type {content_type}" if content_type else "no content-type"
        raise BadReply(f"reply is not JSON ({what}, {len(body)} bytes): {type(err).__name__}: "
                       f"{str(err)[:200]}") from None
    if not isinstance(data, dict):
        raise BadReply(f"reply is a JSON {type(data).__name__}, not a {kind} completion object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        got = "missing" if choices is None else "an empty list" if choices == [] else f"a {type(choices).__name__}"
        raise BadReply(f"reply field choices is {got}, not a non-empty list")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise BadReply("reply field choices[0] is not an object")
    if kind == "chat":
        message = choice.get("message")
        if not isinstance(message, dict):
            raise BadReply("reply has no message object at choices[0].message")
        content = _text(message.get("content"), "choices[0].message.content", MAX_CONTENT_CHARS, required=True)
    else:
        content = _text(choice.get("text"), "choices[0].text", MAX_CONTENT_CHARS, required=True)
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise BadReply(f"reply field usage is {type(usage).__name__}, not an object")
    usage = usage or {}
    return {
        "content": content,
        "finish_reason": _text(choice.get("finish_reason"), "choices[0].finish_reason", MAX_FIELD_CHARS),
        "usage": {"prompt_tokens": _tokens(usage, "prompt_tokens"),
                  "completion_tokens": _tokens(usage, "completion_tokens")},
        "model": _text(data.get("model"), "model", MAX_FIELD_CHARS),
    }


async def _complete(client: openai.AsyncOpenAI, kind: Kind, kwargs: dict, deadline_s: float) -> dict:
    """One attempt: the parsed reply, or APIStatusError / APIConnectionError / BadReply."""
    api = client.chat.completions if kind == "chat" else client.completions
    async with api.with_streaming_response.create(**kwargs) as response:
        body = await _read_body(response, deadline_s)
        return parse_reply(body, response.http_response.headers.get("content-type"), kind)


async def request(
    client: openai.AsyncOpenAI,
    kind: Kind,
    kwargs: dict,
    limits: EndpointLimits,
    seed: int,
    acquire: Callable[[], Awaitable[object]],
    release: Callable[[], Awaitable[object]],
    sleep: Callable[[float], Awaitable[object]],
) -> dict:
    """``{"ok": True, "reply", "attempts", "retried_errors", "started_at", "finished_at", "latency_s"}``,
    or ``{"ok": False, "error", "errors", "attempts", "at"}`` after ``limits.max_retries`` retries (or a
    4xx). ``seed`` seeds the retry jitter (the request's own seed, so a re-run spreads out the same)."""
    rng = random.Random(seed)
    started_at, errors = now_iso(), []
    for attempt in range(limits.max_retries + 1):
        retry_after = None
        await acquire()
        t0 = time.perf_counter()
        try:
            reply = await _complete(client, kind, kwargs, limits.timeout_s)
        except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as err:
            # APIConnectionError covers timeouts (APITimeoutError) and refused connections.
            errors.append(_describe(err))
            if isinstance(err, openai.RateLimitError):
                retry_after = _retry_after(err)
        except openai.APIStatusError as err:  # other 4xx: waiting will not help
            errors.append(_describe(err))
            return {"ok": False, "error": errors[-1], "errors": errors, "attempts": attempt + 1, "at": now_iso()}
        except BadReply as err:
            errors.append(f"bad reply: {err}")
        else:
            return {"ok": True, "reply": reply, "attempts": attempt + 1, "retried_errors": errors,
                    "started_at": started_at, "finished_at": now_iso(),
                    "latency_s": round(time.perf_counter() - t0, 4)}
        finally:
            await release()
        if attempt < limits.max_retries:
            await sleep(backoff_delay(limits, attempt, rng, retry_after))
    return {"ok": False, "error": errors[-1], "errors": errors, "attempts": limits.max_retries + 1, "at": now_iso()}
