"""Figure 4, data path: share of the training step spent waiting for data in the real loop.

Runs ``magdi_dist.train.loop.train`` itself (configs/tiny.yaml settings: tiny-1m, 8 pairs per
micro-batch, max_len 128, ZeRO-2, 1 process) and times, without changing what it does:

* the sampler: every ``next()`` of ``LengthGroupedSampler.iter_from`` (wrapped generator);
* collate + host->device: the loop's ``_collate`` (``data.collate`` then ``batch_to``);

against the step time: the loop's own ``step_time_s`` (wall clock, the whole optimizer step, data
included) and the process CPU time between consecutive metrics callbacks (the figure; see
benchmarks/common.py for why CPU time on this shared machine). Step 1 is warm-up and left out.
Share = data time / step time. "Before" in the summary is the share in results/before.json, the run
taken before the benchmark-driven changes.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

from benchmarks.common import Settings, ensure_dist, median, tokenizer
from benchmarks.figure import Row

NAME = "data_path"
GOAL = 0.05


@contextlib.contextmanager
def _instrumented(timer: dict):
    """Time the loop's data calls, without changing them; restored on exit."""
    from magdi_dist.train import loop

    orig_collate, orig_iter = loop._collate, loop.LengthGroupedSampler.iter_from

    def timed_collate(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return orig_collate(*args, **kwargs)
        finally:
            timer["wall"] += time.perf_counter() - t0
            timer["cpu"] += time.process_time() - c0
            timer["collate_calls"] += 1

    def timed_iter(self, position):
        gen = orig_iter(self, position)
        while True:
            t0, c0 = time.perf_counter(), time.process_time()
            item = next(gen)
            timer["wall"] += time.perf_counter() - t0
            timer["cpu"] += time.process_time() - c0
            timer["sampler_wall"] += time.perf_counter() - t0
            yield item

    loop._collate = timed_collate
    loop.LengthGroupedSampler.iter_from = timed_iter
    try:
        yield
    finally:
        loop._collate, loop.LengthGroupedSampler.iter_from = orig_collate, orig_iter


def one_run(settings: Settings, steps: int, base: str, workdir: Path) -> dict:
    from magdi_dist.config import config_from_dict
    from magdi_dist.data.shards import load_train_data
    from magdi_dist.launch.resolve import resolve_run, with_data
    from magdi_dist.preprocess.prepare import prepare_data
    from magdi_dist.train.loop import train

    tok_dir = settings.workdir / "tokenizer"
    cfg = config_from_dict({
        "model": {"base": base, "gcn_hidden": 64},
        "data": {"synthetic": {"n": 64 if not settings.quick else 24}, "max_len": 128, "vocab_size": 512,
                 "tokenizer": str(tok_dir), "eval_fraction": 0.0},
        "train": {"max_steps": steps, "micro_batch_size": 8, "lr": 3e-3, "warmup_steps": 4,
                  "deepspeed": "zero2", "output_dir": str(workdir), "export": False, "progress": False},
    })
    timer = {"wall": 0.0, "cpu": 0.0, "collate_calls": 0, "sampler_wall": 0.0}
    # The timers are cumulative: snapshot them (and the process CPU clock) at each step's callback.
    marks: list[tuple[float, float, float, float]] = []  # (step wall, data wall, data cpu, process cpu)

    def callback(step: int, rec: dict) -> None:
        if "step_time_s" in rec:
            marks.append((rec["step_time_s"], timer["wall"], timer["cpu"], time.process_time()))

    manifest = prepare_data(cfg, engine="local", log=lambda _m: None).manifest
    spec = with_data(resolve_run(cfg, world_size=1, accelerator="cpu", resume=False), manifest)
    data = load_train_data(manifest)
    with _instrumented(timer):
        train(spec, data, metrics_callback=callback)
    # Per-step deltas; step 1 (warm-up) only serves as the origin of step 2's deltas.
    steps = [(m[0], m[1] - p[1], m[2] - p[2], m[3] - p[3]) for p, m in zip(marks[:-1], marks[1:], strict=True)]
    step_wall, data_wall = sum(x[0] for x in steps), sum(x[1] for x in steps)
    step_cpu, data_cpu = sum(x[3] for x in steps), sum(x[2] for x in steps)
    return {
        "share": data_cpu / step_cpu if step_cpu else float("nan"),
        "share_wall": data_wall / step_wall if step_wall else float("nan"),
        "step_cpu_s_median": median([x[3] for x in steps]),
        "data_cpu_s_median": median([x[2] for x in steps]),
        "step_wall_s_median": median([x[0] for x in steps]),
        "collate_calls": timer["collate_calls"],
        "sampler_wall_s_total": timer["sampler_wall"],
    }


def run(settings: Settings) -> dict:
    ensure_dist(settings)
    tokenizer(settings)
    steps = 4 if settings.quick else 20
    base = "tiny-1m"
    runs: dict[str, list[dict]] = {"new": []}  # one run of 20 steps: stable enough on the CPU clock
    with tempfile.TemporaryDirectory(dir=settings.workdir) as tmp:
        runs["new"].append(one_run(settings, steps, base, Path(tmp)))
    summary = {k: {"share": median([x["share"] for x in v]), "share_wall": median([x["share_wall"] for x in v]),
                   "step_s": median([x["step_cpu_s_median"] for x in v]),
                   "data_s": median([x["data_cpu_s_median"] for x in v]), "runs": v} for k, v in runs.items()}
    value = summary["new"]["share"]
    return {
        "figure": "data_path",
        "what": f"share of the real loop's step time spent in sampler + collate + host->device ({base}, "
                "configs/tiny.yaml batch, ZeRO-2, 1 process)",
        "goal": f"<= {GOAL:.0%}",
        "value": value,
        "met": value <= GOAL,
        "preset": base,
        "steps_per_run": steps,
        "variants": summary,
    }


def rows(result: dict) -> list[Row]:
    return [Row("data_path", "Data path: share of step time waiting for data (real loop, tiny-1m, CPU time)",
                result["variants"]["new"]["share"], result["goal"], result["met"], "pct")]


def details(f: dict) -> str:
    st = "; ".join(f"{k}: {d['share']:.2%} (data {d['data_s'] * 1e3:.1f} ms of {d['step_s'] * 1e3:.0f} ms CPU per "
                   f"step; wall clock {d['share_wall']:.2%})" for k, d in f["variants"].items())
    return f"- Data path ({f['steps_per_run']} steps per run): {st}."
