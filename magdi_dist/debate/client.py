"""One turn = one chat completion, asked through the endpoint's gate with bounded retries.

The request itself -- gate, timeouts, retries with backoff, the reply read with a size cap and parsed
without trusting it -- is magdi_dist.eval.endpoint's, shared with remote evaluation; this module makes
a turn of it. The outcome is a record, never an exception: a turn with its text, usage, seed, attempts
and timestamps, or a failure naming question, agent, round and the last error, which the driver
persists so the next run asks again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import openai

from magdi_dist.debate.config import AgentSpec, EndpointLimits
from magdi_dist.eval import endpoint
from magdi_dist.eval.endpoint import (  # noqa: F401  (re-exported: the debate's names for them)
    MAX_CONTENT_CHARS,
    MAX_FIELD_CHARS,
    MAX_REPLY_BYTES,
    BadReply,
    backoff_delay,
    now_iso,
    parse_reply,
)


@dataclass(frozen=True)
class TurnRequest:
    question_id: str
    agent: str
    round: int
    messages: list[dict]
    seed: int  # sent to the endpoint, and seeds this request's retry jitter


def make_client(agent: AgentSpec, limits: EndpointLimits, api_key: str | None) -> openai.AsyncOpenAI:
    return endpoint.make_client(agent.base_url, limits, api_key)


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
    key = {"question_id": request.question_id, "agent": request.agent, "round": request.round}
    out = await endpoint.request(client, "chat", kwargs, limits, request.seed, acquire, release, sleep)
    if not out["ok"]:
        return {"kind": "failure", **key, "error": out["error"], "errors": out["errors"],
                "attempts": out["attempts"], "endpoint": agent.base_url, "at": out["at"]}
    reply = out["reply"]
    return {
        "kind": "turn", **key, "content": reply["content"], "finish_reason": reply["finish_reason"],
        "usage": reply["usage"],
        "seed": request.seed, "attempts": out["attempts"], "retried_errors": out["retried_errors"],
        "endpoint": agent.base_url, "model": agent.model, "served_model": reply["model"],
        "started_at": out["started_at"], "finished_at": out["finished_at"], "latency_s": out["latency_s"],
    }  # fmt: skip
