"""One turn = one chat completion, asked through the endpoint's gate with bounded retries.

Retried: 429 (honouring Retry-After), 5xx, timeouts and connection errors, with exponential backoff
and seeded jitter. Not retried: other 4xx (a bad model name or key does not heal by waiting) and a
reply without a message. Either way the outcome is a record, never an exception: a turn with its text,
usage, seed, attempts and timestamps, or a failure naming question, agent, round and the last error,
which the driver persists so the next run asks again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import openai

from magdi_dist.debate.config import AgentSpec, EndpointLimits


@dataclass(frozen=True)
class TurnRequest:
    question_id: str
    agent: str
    round: int
    messages: list[dict]
    seed: int  # sent to the endpoint, and seeds this request's retry jitter


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def make_client(agent: AgentSpec, limits: EndpointLimits, api_key: str | None) -> openai.AsyncOpenAI:
    # The SDK's own retries are off: ours pass the gate on every attempt and are recorded.
    return openai.AsyncOpenAI(base_url=agent.base_url, api_key=api_key or "unused", max_retries=0,
                              timeout=limits.timeout_s)


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


async def ask(
    client: openai.AsyncOpenAI,
    agent: AgentSpec,
    limits: EndpointLimits,
    request: TurnRequest,
    acquire: Callable[[], Awaitable[object]],
    release: Callable[[], Awaitable[object]],
    sleep: Callable[[float], Awaitable[object]],
) -> dict:
    """The turn record, or a failure record after ``limits.max_retries`` retries."""
    kwargs = {"model": agent.model, "messages": request.messages, "max_tokens": agent.max_tokens,
              "temperature": agent.temperature, "seed": request.seed}
    if agent.top_p is not None:
        kwargs["top_p"] = agent.top_p
    if agent.extra_body:
        kwargs["extra_body"] = agent.extra_body
    rng = random.Random(request.seed)
    key = {"question_id": request.question_id, "agent": request.agent, "round": request.round}
    started_at, errors = now_iso(), []
    for attempt in range(limits.max_retries + 1):
        retry_after = None
        await acquire()
        t0 = time.perf_counter()
        try:
            reply = await client.chat.completions.create(**kwargs)
        except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as err:
            # APIConnectionError covers timeouts (APITimeoutError) and refused connections.
            errors.append(_describe(err))
            if isinstance(err, openai.RateLimitError):
                retry_after = _retry_after(err)
        except openai.APIStatusError as err:  # other 4xx: waiting will not help
            errors.append(_describe(err))
            return {"kind": "failure", **key, "error": errors[-1], "errors": errors, "attempts": attempt + 1,
                    "endpoint": agent.base_url, "at": now_iso()}
        else:
            latency = time.perf_counter() - t0
            choice = reply.choices[0] if reply.choices else None
            if choice is None or choice.message is None or choice.message.content is None:
                errors.append("reply has no message content")
                return {"kind": "failure", **key, "error": errors[-1], "errors": errors, "attempts": attempt + 1,
                        "endpoint": agent.base_url, "at": now_iso()}
            usage = reply.usage
            return {
                "kind": "turn", **key, "content": choice.message.content, "finish_reason": choice.finish_reason,
                "usage": {"prompt_tokens": usage.prompt_tokens if usage else None,
                          "completion_tokens": usage.completion_tokens if usage else None},
                "seed": request.seed, "attempts": attempt + 1, "retried_errors": errors,
                "endpoint": agent.base_url, "model": agent.model, "served_model": reply.model,
                "started_at": started_at, "finished_at": now_iso(), "latency_s": round(latency, 4),
            }  # fmt: skip
        finally:
            await release()
        if attempt < limits.max_retries:
            await sleep(backoff_delay(limits, attempt, rng, retry_after))
    return {"kind": "failure", **key, "error": errors[-1], "errors": errors, "attempts": limits.max_retries + 1,
            "endpoint": agent.base_url, "at": now_iso()}
