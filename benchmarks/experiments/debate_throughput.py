"""Debate throughput against a local ``transformers serve`` (SmolLM2-135M-Instruct): turns (requests) per
second and completion tokens per second with 1 and 2 Ray workers, side by side in one run.

    python -m benchmarks --only debate_throughput [--set questions=4 max_tokens=32 reps=1 data=PATH]

Each worker discusses one question at a time (``questions_per_worker=1``), so 2 workers keep twice as
many requests in flight; the endpoint gate (8) is not the limit. Every measurement starts from an
empty state directory, so every turn is asked; the variants run in ABBA order per repetition (the
machine is shared: a linear drift in load cancels). The server runs ``--threads`` intra-op threads.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, Settings
from benchmarks.figure import SERVING, Row, options

NAME = "debate_throughput"
NEEDS = (SERVING,)
GSM8K = ROOT.parent / "shared" / "data" / "benchmarks" / "gsm8k" / "test.jsonl"
MODEL = "smollm2-135m-instruct"
OPTIONS = {"questions": 4, "max_tokens": 32, "reps": 1, "data": str(GSM8K)}
QUICK = {"questions": 1, "max_tokens": 8}


def one_run(base_url: str, workdir: Path, workers: int, o: dict) -> dict:
    from benchmarks.serving import SAMPLING_EXTRA_BODY
    from magdi_dist.debate.config import debate_config_from_dict
    from magdi_dist.debate.run import run_debate

    agents = [{"name": f"agent{i}", "base_url": base_url, "model": MODEL, "temperature": 0.7 + 0.1 * i, "seed": i,
               "max_tokens": o["max_tokens"], "extra_body": SAMPLING_EXTRA_BODY} for i in range(3)]
    cfg = debate_config_from_dict({
        "agents": agents, "rounds": 2, "workers": workers, "questions_per_worker": 1,
        "questions": {"path": o["data"], "limit": o["questions"]}, "out": str(workdir / "mags.jsonl"),
        "limits": {"max_concurrency": 8, "timeout_s": 600},
    })  # fmt: skip
    s = run_debate(cfg, progress=False)
    return {"workers": workers, "turns": s["turns_asked"], "wall_s": s["wall_s"], "requests_per_s": s["requests_per_s"],
            "completion_tokens_per_s": s["completion_tokens_per_s"], "completion_tokens": s["completion_tokens"],
            "prompt_tokens": s["prompt_tokens"], "failures": s["failures"]}


def run(settings: Settings) -> dict:
    import ray

    from benchmarks.serving import abba, serving
    from magdi_dist.model.sources import checkpoint_dir

    o = options(settings, OPTIONS, QUICK)
    work = Path(tempfile.mkdtemp(prefix="debate-bench-", dir=settings.workdir))
    runs = []
    with serving(checkpoint_dir(MODEL), work / "serve", name=MODEL, threads=settings.threads) as server:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for rep, k, workers in abba(o["reps"], 1, 2):
                runs.append({"rep": rep, **one_run(server.base_url, work / f"r{rep}-{k}", workers, o)})
                print(json.dumps(runs[-1]), flush=True)
        finally:
            ray.shutdown()

    def median(workers: int, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["workers"] == workers)

    return {
        "figure": NAME, "server": "transformers serve (one request at a time), SmolLM2-135M-Instruct",
        "questions": o["questions"], "agents": 3, "rounds": 2, "max_tokens": o["max_tokens"],
        "by_workers": {str(w): {"requests_per_s": median(w, "requests_per_s"),
                                "completion_tokens_per_s": median(w, "completion_tokens_per_s"),
                                "wall_s": median(w, "wall_s")} for w in (1, 2)},
        "runs": runs,
    }  # fmt: skip


def rows(result: dict) -> list[Row]:
    w = result["by_workers"]
    return [Row("debate_throughput_2v1", f"Debate turns per second, 2 Ray workers / 1, transformers serve, "
                f"{result['questions']} GSM8K questions x 3 agents x 2 rounds",
                w["2"]["requests_per_s"] / w["1"]["requests_per_s"])]


def details(result: dict) -> str:
    st = "; ".join(f"{k} worker(s): {v['requests_per_s']:.3f} turns/s, {v['completion_tokens_per_s']:.1f} completion "
                   f"tokens/s, {v['wall_s']:.0f} s" for k, v in result["by_workers"].items())
    return f"- Debate throughput ({result['server']}, max_tokens {result['max_tokens']}): {st}."
