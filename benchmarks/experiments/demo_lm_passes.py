"""The demo's training step with one LM pass or two (``model.lm_passes``), at each of its sizes.

    python -m benchmarks --only demo_lm_passes [--set steps=60 shards=PATH]

``lm_passes: auto`` takes two passes (positives, then the negatives a loss needs, each cut to its own
longest row) outside multi-rank ZeRO-3: on the real student two passes skip padded positions that cost
more than a second pass (experiments/lm_passes.py). The demo's students are tiny, where a step is mostly
per-call overhead rather than arithmetic, so the trade may go the other way. Measured as the demo runs
them: its training config (study/demo.py ``DEMO_TRAIN``: ZeRO-2, 2 CPU ranks, 8 pairs a rank), each
size at its learning rate, torchrun launches of ``steps`` optimizer steps each, with no
checkpoint, evaluation or export; the two modes of a size launched back to back, their order flipped
from one launch pair to the next (one, split, split, one, ...), ``reps`` pairs a size. Figures: median
step time (``metrics.jsonl`` ``step_time_s``, the first ``skip`` steps of each launch left out) over a
mode's launches, per size one/split, and the per-pair ratios' range as the noise. A machine whose load
changes during the run (other jobs) moves one launch and not its pair: measure on an idle one.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, Settings, child_env, commit_id, machine_info
from benchmarks.figure import Row, options

NAME = "demo_lm_passes"
OPTIONS = {"steps": 60, "skip": 5, "reps": 2, "shards": ""}  # shards: a prepared demo shard folder to reuse
QUICK = {"steps": 4, "skip": 1, "reps": 1}
MODES = ("one", "split")


def _launch(train_yaml: Path, shards: Path, out: Path, size: tuple, mode: str, steps: int) -> list[float]:
    name, base, lr = size
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "magdi_dist.launch.rank", "--config", str(train_yaml), "--no-resume",
           f"model.base={json.dumps(base)}", f"train.lr={lr}", "model.feature_model=tiny-1m",
           f"preprocess.out_dir={shards}", f"model.lm_passes={mode}", f"train.max_steps={steps}",
           "train.save_every=0", "train.eval_every=0", "train.export=false", f"train.output_dir={out}"]
    env = {**child_env(), "OMP_NUM_THREADS": "1"}  # as Ray Train gives each of the demo's workers one CPU
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} {mode}: {' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    return [r["step_time_s"] for r in records if "step_time_s" in r]


def run(settings: Settings) -> dict:
    from magdi_dist.config import load_config
    from magdi_dist.preprocess.prepare import prepare_data
    from magdi_dist.study.demo import DEMO_SIZES, write_demo_study

    opts = options(settings, OPTIONS, QUICK if settings.quick else None)
    root = settings.workdir / NAME
    write_demo_study(root, quick=settings.quick)
    train_yaml = root / "demo_train.yaml"
    shards = Path(opts["shards"]) if opts["shards"] else root / "shards"
    # The demo's data, prepared once (a no-op when the folder already holds it: same fingerprint).
    prepare_data(load_config(train_yaml, ["model.feature_model=tiny-1m", f"preprocess.out_dir={shards}"]))
    sizes = DEMO_SIZES[-1:] if settings.quick else DEMO_SIZES
    load_before = os.getloadavg()
    cells, pairs = [], {}
    k = 0
    for size in sizes:
        for rep in range(opts["reps"]):
            order = MODES if k % 2 == 0 else MODES[::-1]
            k += 1
            medians = {}
            for mode in order:
                times = _launch(train_yaml, shards, root / f"{size[0]}-{mode}-{rep}", size, mode, opts["steps"])
                medians[mode] = statistics.median(times[opts["skip"]:])
                cells.append({"size": size[0], "lm_passes": mode, "rep": rep, "steps": len(times),
                              "median_step_s": medians[mode], "sum_step_s": sum(times), "step_time_s": times})
            pairs.setdefault(size[0], []).append(medians["one"] / medians["split"])

    def mode_median(size: str, mode: str) -> float:
        return statistics.median(c["median_step_s"] for c in cells if c["size"] == size and c["lm_passes"] == mode)

    ratios = {s[0]: mode_median(s[0], "one") / mode_median(s[0], "split") for s in sizes}
    return {"figure": NAME, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit_id(),
            "machine": machine_info(settings), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "what": f"the demo's training config, 2 torchrun ranks, ZeRO-2, {opts['steps']} steps a launch, median "
                    f"step time after the first {opts['skip']}",
            "cells": cells, "one_vs_split": ratios,
            "one_vs_split_pairs": {size: {"min": min(r), "max": max(r), "values": r} for size, r in pairs.items()}}


def rows(result: dict) -> list[Row]:
    return [Row(f"demo_lm_passes_{size}", f"Demo step, {size}: one LM pass over two (median step time)", r)
            for size, r in result["one_vs_split"].items()]


def details(result: dict) -> str:
    steps = "; ".join(f"{c['size']} {c['lm_passes']} {c['median_step_s']:.3f} s" for c in result["cells"])
    pairs = result.get("one_vs_split_pairs", {})
    ratios = ", ".join(f"{s} {r:.3f}x" + (f" (pairs {pairs[s]['min']:.2f}-{pairs[s]['max']:.2f})" if s in pairs else "")
                       for s, r in result["one_vs_split"].items())
    load = ", ".join(f"{x:.1f}" for x in result["loadavg_before"])
    return (f"- Demo step, one LM pass vs two ({result['what']}; {result['date']}, commit {result['commit']}, "
            f"load {load} before): median step {steps}; one/split {ratios}.")
