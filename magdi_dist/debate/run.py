"""The debate run: questions sharded over Ray worker actors, every turn persisted by the driver as it
arrives, graded MAGs rebuilt from the turn log at the end.

    questions -> plan (only the (question, agent, round) turns the log lacks)
      -> W DebateWorker actors (async; ``questions_per_worker`` questions each at once; a question's
         rounds in order, a round's agents concurrently), one Gate actor per endpoint bounding
         concurrency and request rate across all workers
      -> each turn (or failure) streams back to the driver (a Ray streaming generator), which appends
         it to the fsynced log before taking the next
      -> MAGs of every fully discussed question, graded, written atomically (skipped when unchanged)

A question with a failed request stops after the round it failed in: its later rounds need that turn.
Its finished turns stay logged; the next run asks only the missing ones. The driver joins the cluster
at ``address`` (or ``RAY_ADDRESS``, as in a submitted job), else starts a local Ray it shuts down.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from pathlib import Path

import ray

from magdi_dist.config import ConfigError
from magdi_dist.debate.build import build_mag, question_sha, request_seed, turn_view
from magdi_dist.debate.client import TurnRequest, ask, make_client
from magdi_dist.debate.config import DebateConfig
from magdi_dist.debate.prompts import messages_for
from magdi_dist.debate.store import StateError, TurnStore
from magdi_dist.debate.summary import discussion_stats, run_stats
from magdi_dist.eval.endpoint import Gate
from magdi_dist.eval.questions import EvalQuestion, QuestionFileError, load_questions
from magdi_dist.mag.readers import write_mags_jsonl

GateActor = ray.remote(num_cpus=0)(Gate)


@ray.remote(num_cpus=0)
class DebateWorker:
    """Discusses questions; a worker's requests are I/O, so it takes no CPU from the cluster."""

    def __init__(self, cfg: dict, gates: dict) -> None:
        self.cfg = DebateConfig.model_validate(cfg)
        self.gates = gates
        # Keys come from this process's environment (the driver passed them in the actor's runtime_env).
        self.clients = {
            a.name: make_client(a, self.cfg.limits_for(a.base_url), os.environ.get(a.api_key_env) if a.api_key_env
                                else None)
            for a in self.cfg.agents
        }

    async def _ask(self, q: EvalQuestion, agent, rnd: int, history: list[list[dict]]) -> dict:
        gate = self.gates[agent.base_url]
        request = TurnRequest(
            question_id=q.id, agent=agent.name, round=rnd,
            messages=messages_for(self.cfg.protocol.templates(), q.task, q.question, q.options, rnd, agent.name,
                                  agent.system_prompt, history),
            seed=request_seed(self.cfg.seed, agent.seed, q.id, rnd),
        )  # fmt: skip
        return await ask(self.clients[agent.name], agent, self.cfg.limits_for(agent.base_url), request,
                         acquire=lambda: gate.acquire.remote(), release=lambda: gate.release.remote(),
                         sleep=asyncio.sleep)

    async def discuss(self, q: EvalQuestion, sha: str, prior: list[dict]):
        """Yield every missing turn of ``q`` (or a failure) as it completes, rounds in order."""
        done = {(t["agent"], t["round"]): t for t in prior}
        history: list[list[dict]] = []
        for rnd in range(self.cfg.rounds):
            missing = [a for a in self.cfg.agents if (a.name, rnd) not in done]
            tasks = [asyncio.create_task(self._ask(q, a, rnd, history)) for a in missing]
            failed = False
            for next_done in asyncio.as_completed(tasks):
                record = await next_done
                record["question_sha"] = sha
                yield record
                if record["kind"] == "turn":
                    done[(record["agent"], rnd)] = record
                else:
                    failed = True
            if failed:
                return
            history.append([turn_view(done[(a.name, rnd)], q.task) for a in self.cfg.agents])


def _api_key_env(cfg: DebateConfig) -> dict[str, str]:
    """The named key variables, read here so a missing one fails before any request is sent."""
    names = sorted({a.api_key_env for a in cfg.agents if a.api_key_env})
    unset = [n for n in names if not os.environ.get(n)]
    if unset:
        raise ConfigError(f"api_key_env names environment variables that are not set: {', '.join(unset)}")
    return {n: os.environ[n] for n in names}


def _load_questions(cfg: DebateConfig) -> list[EvalQuestion]:
    qc = cfg.questions
    questions, _ = load_questions(qc.path, format=qc.format, task=qc.task, limit=qc.limit)
    seen: dict[str, int] = {}
    for q in questions:
        if q.id in seen:
            raise QuestionFileError(f"{qc.path}: questions {seen[q.id]} and {q.index} share the id {q.id!r}; "
                                    "turns are keyed by question id")
        seen[q.id] = q.index
    return questions


def _check_turns(store: TurnStore, questions: list[EvalQuestion]) -> None:
    shas = {q.id: question_sha(q) for q in questions}
    for (qid, agent, rnd), turn in store.turns.items():
        if qid in shas and turn.get("question_sha") != shas[qid]:
            raise StateError(f"{store.dir}: the turn ({qid}, {agent}, round {rnd}) was asked about another text "
                             f"of question {qid}: the question file changed; use another out or state_dir")


def _write_if_changed(mags, out: Path) -> bool:
    """Atomic write; returns False (and leaves the file alone) when the bytes would be the same."""
    tmp = out.with_name(out.name + ".tmp")
    write_mags_jsonl(mags, tmp)
    if out.is_file() and out.read_bytes() == tmp.read_bytes():
        tmp.unlink()
        return False
    os.replace(tmp, out)
    return True


def _connect(address: str | None, workers: int) -> bool:
    """Join a running Ray (this process's, ``address``, ``RAY_ADDRESS``) or start a local one; True if started."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, workers), include_dashboard=False, log_to_driver=True)
    return True


def _discuss(cfg: DebateConfig, plan: list[EvalQuestion], store: TurnStore, keys: dict[str, str],
             on_turn) -> tuple[list, list, list]:
    """Run the plan on Ray; returns (turns asked, failures, gate stats)."""
    gates = {}
    for url in dict.fromkeys(a.base_url for a in cfg.agents):
        lim = cfg.limits_for(url)
        # An async actor: one event loop serves every worker's acquire/release; a high max_concurrency
        # lets waiting acquires queue inside the gate instead of in Ray.
        gates[url] = GateActor.options(max_concurrency=100_000).remote(lim.max_concurrency, lim.requests_per_second)
    # Keys travel in the worker actors' runtime_env (in a submitted job they are in the job's already).
    runtime_env = {"env_vars": keys} if keys else None
    n = min(cfg.workers, len(plan))
    workers = [DebateWorker.options(max_concurrency=cfg.questions_per_worker, runtime_env=runtime_env)
               .remote(cfg.model_dump(mode="json"), gates) for _ in range(n)]
    asked, failures = [], []
    prior: dict[str, list[dict]] = {}
    for (qid, _, _), turn in store.turns.items():
        prior.setdefault(qid, []).append(turn)
    queue = deque(plan)
    active: dict = {}  # generator -> worker index
    load = [0] * n
    try:
        def fill() -> None:
            for w in range(n):
                while load[w] < cfg.questions_per_worker and queue:
                    q = queue.popleft()
                    gen = workers[w].discuss.options(num_returns="streaming").remote(q, question_sha(q),
                                                                                     prior.get(q.id, []))
                    active[gen] = w
                    load[w] += 1

        fill()
        while active:
            (gen,), _ = ray.wait(list(active), num_returns=1)
            try:
                ref = next(gen)
            except StopIteration:
                load[active.pop(gen)] -= 1
                fill()
                continue
            record = ray.get(ref)  # a worker's exception (a bug, not a failed request) surfaces here
            if record["kind"] == "turn":
                store.add_turn(record)
                asked.append(record)
            else:
                store.add_failure(record)
                failures.append(record)
            on_turn(record)
        stats = ray.get([g.stats.remote() for g in gates.values()])
        return asked, failures, [{"endpoint": url, **s} for url, s in zip(gates, stats, strict=True)]
    finally:
        for actor in [*workers, *gates.values()]:
            ray.kill(actor)


def run_debate(cfg: DebateConfig, *, address: str | None = None, progress: bool = True) -> dict:
    """Ask every missing turn, then write the MAGs of every fully discussed question; returns the summary."""
    from tqdm import tqdm

    keys = _api_key_env(cfg)
    questions = _load_questions(cfg)
    agents = [a.name for a in cfg.agents]
    grid = [(a, r) for r in range(cfg.rounds) for a in agents]
    started = time.perf_counter()
    with TurnStore(cfg.state_path, cfg.fingerprint()) as store:
        _check_turns(store, questions)
        plan = [q for q in questions if any((q.id, a, r) not in store.turns for a, r in grid)]
        missing = sum((q.id, a, r) not in store.turns for q in plan for a, r in grid)
        reused = sum((q.id, a, r) in store.turns for q in questions for a, r in grid)
        asked, failures, gates = [], [], []
        if plan:
            bar = tqdm(total=missing, desc="turns", unit="turn", disable=not progress)
            stop = _connect(address, cfg.workers)
            try:
                asked, failures, gates = _discuss(cfg, plan, store, keys, lambda r: bar.update(r["kind"] == "turn"))
            finally:
                bar.close()
                if stop:
                    ray.shutdown()
        wall = time.perf_counter() - started
        mags = []
        for q in questions:
            if all((q.id, a, r) in store.turns for a, r in grid):
                mags.append(build_mag(q, cfg, {(a, r): store.turns[(q.id, a, r)] for a, r in grid}))
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        changed = _write_if_changed(mags, out) if mags else False
        summary = {
            "questions": len(questions), "complete": len(mags), "incomplete": len(questions) - len(mags),
            "out": str(out), "state_dir": str(store.dir), "unchanged": bool(mags) and not changed,
            "turns_reused": reused, "turns_missing_before": missing, "repaired_log_bytes": store.repaired_bytes,
            "workers": cfg.workers, "gates": gates,
            **run_stats(asked, failures, wall), **discussion_stats(mags, agents, cfg.rounds),
        }  # fmt: skip
    return summary
