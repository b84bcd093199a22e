"""Test job (run by tests/test_train_syncs.py): trains a config in this process with every host read
of a tensor counted, and prints one JSON line.

    python tests/jobs/count_syncs.py CONFIG OUT_JSON [key=value ...]

Counted: ``Tensor.item``, ``__float__``, ``__int__``, ``__bool__``, ``__index__`` and ``tolist``, the
calls that make the host wait for a GPU. Each is attributed to the file that called it (magdi_dist,
deepspeed, transformers, torch.optim, ...) and to the optimizer step it happened in. Batch building
(``train.loop._collate``: collate on the host's own tensors, before the batch moves) is not counted,
nor are the reads of a logging step (``StepLog.read``). Also written: every step's record as the
loop's ``metrics_callback`` got it.
"""

from __future__ import annotations

import collections
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist")


def origin(frames: list[traceback.FrameSummary]) -> str:
    """The package of the innermost caller outside torch's own Tensor machinery."""
    for frame in reversed(frames[:-1]):  # the last frame is our wrapper
        path = frame.filename
        if "/torch/_tensor.py" in path or "/torch/overrides.py" in path:
            continue
        for name in ("magdi_dist", "deepspeed", "transformers", "torch_geometric", "peft"):
            if f"/{name}/" in path:
                return name
        return "torch.optim" if "/torch/optim/" in path else path
    return "?"


def main(argv: list[str]) -> int:
    import torch

    from magdi_dist.config import load_config
    from magdi_dist.data.shards import load_train_data
    from magdi_dist.launch.resolve import resolve_run, with_data
    from magdi_dist.preprocess.prepare import prepare_data
    from magdi_dist.train import loop, metrics

    config, out_json, overrides = argv[0], Path(argv[1]), argv[2:]
    cfg = load_config(config, overrides)
    manifest = prepare_data(cfg, engine="local", log=lambda _m: None).manifest
    spec = with_data(resolve_run(cfg, world_size=1, accelerator="cpu", resume=False), manifest)
    data = load_train_data(manifest)

    state = {"step": 1, "counting": True}
    counts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)

    def wrap(name: str) -> None:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            if state["counting"]:
                counts[state["step"]][origin(traceback.extract_stack(limit=12))] += 1
            return original(self, *args, **kwargs)

        setattr(torch.Tensor, name, counted)

    def uncounted(fn):
        def run(*args, **kwargs):
            before, state["counting"] = state["counting"], False
            try:
                return fn(*args, **kwargs)
            finally:
                state["counting"] = before
        return run

    loop._collate = uncounted(loop._collate)
    metrics.StepLog.read = uncounted(metrics.StepLog.read)
    push = metrics.StepLog.push

    def next_step(self, step, *args, **kwargs):  # called once per optimizer step, at its end
        push(self, step, *args, **kwargs)
        state["step"] = step + 1

    metrics.StepLog.push = next_step
    for name in READS:
        wrap(name)
    records: list[dict] = []
    result = loop.train(spec, data, metrics_callback=lambda _s, rec: records.append(rec))
    state["counting"] = False
    out_json.write_text(json.dumps({
        "steps": result.step,
        "counts": {str(step): dict(c) for step, c in sorted(counts.items()) if step <= result.step},
        "records": records,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
