"""Remote evaluation: the student's samples come from OpenAI-compatible endpoints (``vllm serve
EXPORT_DIR``, ``transformers serve``) instead of a model loaded here; everything else is local
evaluation's, on the student's own tokenizer:

* the prompt: an instruct student (its tokenizer has a chat template) is asked through
  /v1/chat/completions with ``data.prompt.chat_messages``, so the server applies the same template to
  the same message; any other student through /v1/completions with ``render_prompt``'s text. Every
  reply's ``usage.prompt_tokens`` must equal the token count of the prompt local evaluation would feed
  (else the server is reading another prompt, and the evaluation stops);
* the stop rule, answer reading and token counts: the reply is tokenised again and cut where
  StopAtAnswer would have stopped (``generate.answer_stop`` / ``generate.kept``), then voted and graded
  by ``engine.question_record``. The server generates up to ``max_new_tokens`` (or its eos) and the
  client cuts; re-tokenising counts exactly what local evaluation counts as long as the server's tokens
  are the tokenizer's own encoding of its text (greedy decoding of a student trained on that encoding);
* self-consistency: k requests per question, request j seeded from (seed, question index, j). Sampled
  text is the server's own seeded draw, not local evaluation's per-row generators: only greedy
  decoding reproduces local evaluation's answers.

Each sample is one request through magdi_dist.eval.endpoint (gate, timeouts, retries) and is logged as
it arrives in ``<out>/requests/`` (eval.requestlog), so a killed evaluation asks only what is missing.
Several endpoints pull from one queue (a faster one takes more); an endpoint whose request fails after
its retries takes no more, and its request goes to another one. Samples no endpoint answered leave the
evaluation incomplete (EvalIncomplete): run it again with the same ``out``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from magdi_dist.eval.config import EvalConfig
from magdi_dist.eval.endpoint import Gate, Kind, make_client, request
from magdi_dist.eval.engine import question_record
from magdi_dist.eval.errors import EvalIncomplete, EvalInputError
from magdi_dist.eval.generate import answer_stop, kept, prompt_ids, sample_seed
from magdi_dist.eval.questions import EvalQuestion
from magdi_dist.eval.requestlog import RequestLog, StateError

LOG_DIR = "requests"


class SampleLog(RequestLog):
    """A remote evaluation's log: one record per (question id, sample)."""

    key_fields = ("question_id", "sample")
    item = "sample"
    user = "evaluation"


class PromptMismatch(EvalInputError):
    """The endpoint tokenised the prompt into another number of tokens than the student's tokenizer."""


@dataclass
class _Job:
    q: EvalQuestion
    sample: int
    kwargs: dict
    seed: int
    prompt_sha: str
    prompt_tokens: int
    tried: set[str] = field(default_factory=set)


def endpoint_kind(tokenizer) -> Kind:
    from magdi_dist.data.prompt import uses_chat_template

    return "chat" if uses_chat_template(tokenizer) else "completion"


def _job(q: EvalQuestion, j: int, cfg: EvalConfig, tokenizer, kind: Kind, extra: dict) -> _Job:
    from magdi_dist.data.prompt import chat_messages, render_prompt

    prompt = render_prompt(tokenizer, q.question, q.options)  # what local evaluation feeds
    seed = sample_seed(cfg.seed, q.index, j) & 0x7FFFFFFF  # servers take a 31-bit seed
    kwargs = {"model": cfg.served_model or cfg.model, "max_tokens": cfg.max_new_tokens,
              "temperature": cfg.temperature, "seed": seed}
    kwargs["messages" if kind == "chat" else "prompt"] = (chat_messages(q.question, q.options) if kind == "chat"
                                                          else prompt)
    if extra:
        kwargs["extra_body"] = extra
    return _Job(q, j, kwargs, seed, hashlib.sha256(prompt.encode()).hexdigest(), len(prompt_ids(tokenizer, prompt)))


def fingerprint(cfg: EvalConfig, kind: Kind) -> dict:
    """What decides a sample's text besides its prompt (each record carries its prompt's hash): the
    endpoints and limits may change between runs, k may grow."""
    return {"served_model": cfg.served_model or cfg.model, "endpoint": kind, "temperature": cfg.temperature,
            "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "extra_body": cfg.extra_body}


async def _ask_all(jobs: list[_Job], cfg: EvalConfig, kind: Kind, log: SampleLog,
                   on_record: Callable[[dict], None]) -> list[dict]:
    """Ask every job; returns the failures. Raises PromptMismatch (after cancelling the rest)."""
    limits = cfg.limits
    api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    clients = {url: make_client(url, limits, api_key) for url in cfg.base_url}
    gates = {url: Gate(limits.max_concurrency, limits.requests_per_second) for url in cfg.base_url}
    queue: asyncio.Queue[_Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    down: set[str] = set()
    failures: list[dict] = []
    asking = [0]  # jobs being asked now: one may come back to the queue for another endpoint

    async def worker(url: str) -> None:
        gate = gates[url]

        async def release() -> None:
            gate.release()

        while url not in down:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                if not asking[0]:
                    return
                await asyncio.sleep(0.05)
                continue
            key = {"question_id": job.q.id, "sample": job.sample}
            asking[0] += 1
            try:
                out = await request(clients[url], kind, job.kwargs, limits, job.seed, gate.acquire, release,
                                    asyncio.sleep)
            finally:
                asking[0] -= 1
            if not out["ok"]:
                down.add(url)  # this endpoint takes no more; another one gets the job
                job.tried.add(url)
                failure = {"kind": "failure", **key, "error": out["error"], "errors": out["errors"],
                           "attempts": out["attempts"], "endpoint": url, "at": out["at"]}
                log.add_failure(failure)
                failures.append(failure)
                if set(cfg.base_url) - down - job.tried:
                    queue.put_nowait(job)
                return
            reply = out["reply"]
            got = reply["usage"]["prompt_tokens"]
            if got is not None and got != job.prompt_tokens:
                raise PromptMismatch(
                    f"{url} read the prompt of question {job.q.id} as {got} tokens, the student's tokenizer "
                    f"makes {job.prompt_tokens}: the server does not serve this student's tokenizer, or adds "
                    "special tokens of its own, so its answers would not be this evaluation's")
            record = {**key, "seed": job.seed, "prompt_sha256": job.prompt_sha, "content": reply["content"],
                      "finish_reason": reply["finish_reason"], "usage": reply["usage"], "endpoint": url,
                      "served_model": reply["model"], "attempts": out["attempts"],
                      "retried_errors": out["retried_errors"], "started_at": out["started_at"],
                      "finished_at": out["finished_at"], "latency_s": out["latency_s"]}
            log.add(record)
            on_record(record)

    tasks = [asyncio.create_task(worker(url)) for url in cfg.base_url for _ in range(limits.max_concurrency)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients.values():
            await client.close()
    return failures


def _check_log(log: SampleLog, jobs: dict[tuple, _Job]) -> None:
    for key, rec in log.records.items():
        job = jobs.get(key)
        if job is not None and (rec.get("prompt_sha256"), rec.get("seed")) != (job.prompt_sha, job.seed):
            raise StateError(f"{log.dir}: sample {key} was asked with another prompt or seed (the data, the "
                             "tokenizer or the exclusions changed); choose another out, or delete this directory")


def sample_generation(tokenizer, content: str):
    """A reply's text as local generation would have kept it: tokenised, cut at the answer's end."""
    ids = tokenizer(content, add_special_tokens=False)["input_ids"]
    return kept(tokenizer, ids, answer_stop(tokenizer, ids))


def run_remote(cfg: EvalConfig, questions: list[EvalQuestion], tokenizer, out: Path,
               on_question: Callable[[int], None]) -> tuple[list[dict], dict]:
    """Records in question order (predictions.jsonl's), and what the summary says of the requests."""
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise EvalInputError(f"{cfg.data}: question ids {dup[:5]} repeat; a remote evaluation logs by question id")
    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        raise EvalInputError(f"api_key_env names {cfg.api_key_env}, which is not set")
    kind = endpoint_kind(tokenizer)
    extra = json.loads(cfg.extra_body) if cfg.extra_body else {}
    jobs = {(q.id, j): _job(q, j, cfg, tokenizer, kind, extra) for q in questions for j in range(cfg.k)}
    with SampleLog(out / LOG_DIR, fingerprint(cfg, kind)) as log:
        _check_log(log, jobs)
        missing = [job for key, job in jobs.items() if key not in log.records]
        reused = len(jobs) - len(missing)
        left = {q.id: sum((q.id, j) not in log.records for j in range(cfg.k)) for q in questions}
        on_question(sum(n == 0 for n in left.values()))

        def on_record(rec: dict) -> None:
            left[rec["question_id"]] -= 1
            if not left[rec["question_id"]]:
                on_question(1)

        failures = asyncio.run(_ask_all(missing, cfg, kind, log, on_record)) if missing else []
        unanswered = [key for key in jobs if key not in log.records]
        if unanswered:
            raise EvalIncomplete(
                f"{len(unanswered)} of {len(jobs)} samples have no answer ({len(failures)} failed requests, "
                f"first: {failures[0]['error'] if failures else 'none'}); they are in "
                f"{log.dir / 'failures.jsonl'}; run again with the same out to ask only them")
        records = []
        for q in questions:
            logged = [log.records[(q.id, j)] for j in range(cfg.k)]
            gens = [sample_generation(tokenizer, r["content"]) for r in logged]
            # A question's cost: the time its requests took at the endpoint (concurrent requests overlap).
            records.append(question_record(q, gens, sum(r["latency_s"] for r in logged)))
    info = {"generation": "remote", "base_url": list(cfg.base_url), "served_model": cfg.served_model or cfg.model,
            "endpoint": kind, "requests": {"asked": len(missing), "reused": reused, "failed": len(failures)}}
    return records, info
