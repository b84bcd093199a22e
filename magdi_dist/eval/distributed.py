"""Shard evaluation batches across Ray actors that each hold the student.

The unit of work is a whole batch, planned by the driver before any worker starts; a worker never
re-batches. With per-row seeds (generate.py) every batch therefore produces the same records
wherever and whenever it runs, and the merged result equals a single-process run.
"""

from __future__ import annotations

from collections.abc import Callable

import ray

from magdi_dist.eval.config import DecodeSettings
from magdi_dist.eval.engine import Engine
from magdi_dist.eval.loader import StudentDirs
from magdi_dist.eval.questions import EvalQuestion


@ray.remote
class EvalWorker:
    def __init__(self, ref: str, dirs: StudentDirs | None, settings: DecodeSettings, tracking_uri: str | None):
        import torch

        torch.manual_seed(settings.seed)  # nothing should draw from it, but keep stray draws reproducible
        self.engine = Engine.load(ref, dirs, settings, tracking_uri)

    def run(self, batch: list[EvalQuestion]) -> list[dict]:
        return self.engine.run_batch(batch)


def run_sharded(
    batches: list[list[EvalQuestion]],
    *,
    ref: str,
    dirs: StudentDirs | None,
    settings: DecodeSettings,
    workers: int,
    address: str | None = None,
    tracking_uri: str | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    on_batch: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Records of every batch, in question order. Joins the cluster at ``address`` (or the one this
    process already belongs to), else starts an embedded local Ray with one CPU per worker, which it
    also shuts down."""
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=max(workers, 1) * max(cpus_per_worker, 1), include_dashboard=False)
        started = True
    actors = []
    try:
        n = max(1, min(workers, len(batches)))
        actors = [
            EvalWorker.options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker).remote(
                ref, dirs, settings, tracking_uri
            )
            for _ in range(n)
        ]
        # Pull-based dispatch: a free actor takes the next batch, so a slow worker never holds up
        # the rest. Which actor runs which batch does not matter: every batch's output is fixed.
        queue = list(reversed(batches))  # pop() from the end hands out batches in plan order
        pending: dict = {}

        def submit(actor) -> None:
            if queue:
                pending[actor.run.remote(queue.pop())] = actor

        for actor in actors:
            submit(actor)
        records: list[dict] = []
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ready)
            out = ray.get(ready)
            records.extend(out)
            if on_batch is not None:
                on_batch(out)
            submit(actor)
        return sorted(records, key=lambda r: r["index"])
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
