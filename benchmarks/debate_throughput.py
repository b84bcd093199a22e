"""Debate throughput against a local ``transformers serve`` (SmolLM2-135M-Instruct): turns (requests) per
second and completion tokens per second with 1 and 2 Ray workers, side by side in one run.

    python -m benchmarks.debate_throughput [--questions 4] [--max-tokens 32] [--reps 1]

Each worker discusses one question at a time (``questions_per_worker=1``), so 2 workers keep twice as
many requests in flight; the endpoint gate (8) is not the limit. Every measurement starts from an
empty state directory, so every turn is asked; the variants run in ABBA order per repetition (the
machine is shared: a linear drift in load cancels). Writes benchmarks/results/debate_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "debate_throughput.json"
GSM8K = ROOT.parent / "shared" / "data" / "benchmarks" / "gsm8k" / "test.jsonl"
MODEL = "smollm2-135m-instruct"


def one_run(base_url: str, workdir: Path, workers: int, args) -> dict:
    from magdi_dist.debate.config import debate_config_from_dict
    from magdi_dist.debate.run import run_debate
    from magdi_dist.debate.serve import SAMPLING_EXTRA_BODY

    agents = [{"name": f"agent{i}", "base_url": base_url, "model": MODEL, "temperature": 0.7 + 0.1 * i, "seed": i,
               "max_tokens": args.max_tokens, "extra_body": SAMPLING_EXTRA_BODY} for i in range(3)]
    cfg = debate_config_from_dict({
        "agents": agents, "rounds": 2, "workers": workers, "questions_per_worker": 1,
        "questions": {"path": str(args.data), "limit": args.questions}, "out": str(workdir / "mags.jsonl"),
        "limits": {"max_concurrency": 8, "timeout_s": 600},
    })  # fmt: skip
    s = run_debate(cfg, progress=False)
    return {"workers": workers, "turns": s["turns_asked"], "wall_s": s["wall_s"], "requests_per_s": s["requests_per_s"],
            "completion_tokens_per_s": s["completion_tokens_per_s"], "completion_tokens": s["completion_tokens"],
            "prompt_tokens": s["prompt_tokens"], "failures": s["failures"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--data", type=Path, default=GSM8K)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="the server's intra-op threads")
    args = parser.parse_args(argv)

    import signal

    import ray

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the server (finally below)

    from magdi_dist.debate.serve import start_transformers_serve
    from magdi_dist.model.sources import checkpoint_dir

    work = Path(tempfile.mkdtemp(prefix="debate-bench-"))
    server = start_transformers_serve(checkpoint_dir(MODEL), work / "serve", name=MODEL, threads=args.threads)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs = []
    try:
        for rep in range(args.reps):
            for k, workers in enumerate((1, 2, 2, 1)):  # ABBA
                runs.append({"rep": rep, **one_run(server.base_url, work / f"r{rep}-{k}", workers, args)})
                print(json.dumps(runs[-1]), flush=True)
    finally:
        ray.shutdown()
        server.stop()

    def median(workers: int, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["workers"] == workers)

    result = {
        "figure": "debate_throughput", "server": "transformers serve (one request at a time), SmolLM2-135M-Instruct",
        "questions": args.questions, "agents": 3, "rounds": 2, "max_tokens": args.max_tokens,
        "by_workers": {w: {"requests_per_s": median(w, "requests_per_s"),
                           "completion_tokens_per_s": median(w, "completion_tokens_per_s"),
                           "wall_s": median(w, "wall_s")} for w in (1, 2)},
        "runs": runs,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["by_workers"], indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
