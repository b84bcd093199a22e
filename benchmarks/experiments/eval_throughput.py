"""Evaluation throughput (questions per second) of the same student on the same GSM8K questions, local
evaluation against remote evaluation through ``transformers serve``, side by side in one run.

    python -m benchmarks --only eval_throughput [--set questions=8 max_new_tokens=48 reps=1 data=PATH]

The student is SmolLM2-135M-Instruct (the chat endpoint; greedy). Local evaluation generates
``batch_size`` questions per ``generate`` call in this process; the remote one sends one request per
question to a ``transformers serve`` on 127.0.0.1 (``max_concurrency`` in flight; the server, without
continuous batching, generates one at a time). Both use ``--threads`` intra-op threads. Every
measurement is a whole ``evaluate`` (its ``wall_s``: model or tokenizer load included, server start
not) into an empty output folder, so every question is generated; the variants run in ABBA order per
repetition (the machine is shared: a linear drift in load cancels). The records must agree (greedy:
the same answers), and ``agree`` says whether they did.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, Settings
from benchmarks.figure import SERVING, Row, options

NAME = "eval_throughput"
NEEDS = (SERVING,)
GSM8K = ROOT.parent / "shared" / "data" / "benchmarks" / "gsm8k" / "test.jsonl"
MODEL = "smollm2-135m-instruct"
OPTIONS = {"questions": 8, "max_new_tokens": 48, "batch_size": 8, "max_concurrency": 1, "reps": 1,
           "data": str(GSM8K)}
QUICK = {"questions": 2, "max_new_tokens": 8}


def one_run(variant: str, model_dir: Path, base_url: str, out: Path, o: dict) -> dict:
    from magdi_dist.recipes.evaluate import EvalConfig, evaluate

    remote = {"base_url": [base_url], "served_model": MODEL, "max_concurrency": o["max_concurrency"],
              "timeout_s": 1800} if variant == "remote" else {}
    s = evaluate(EvalConfig(model=str(model_dir), data=o["data"], limit=o["questions"], batch_size=o["batch_size"],
                            max_new_tokens=o["max_new_tokens"], out=str(out), progress=False, **remote))
    answers = [json.loads(line)["answers"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {"variant": variant, "n": s["n"], "wall_s": s["wall_s"], "questions_per_s": s["n"] / s["wall_s"],
            "tokens_per_question": s["tokens_per_question"], "accuracy": s["accuracy"], "answers": answers}


def run(settings: Settings) -> dict:
    from benchmarks.serving import abba, serving
    from magdi_dist.model.sources import checkpoint_dir

    o = options(settings, OPTIONS, QUICK)
    model_dir = Path(checkpoint_dir(MODEL))
    work = Path(tempfile.mkdtemp(prefix="eval-bench-", dir=settings.workdir))
    runs = []
    with serving(model_dir, work / "serve", name=MODEL, threads=settings.threads) as server:
        for rep, k, variant in abba(o["reps"], "local", "remote"):
            runs.append({"rep": rep, **one_run(variant, model_dir, server.base_url, work / f"r{rep}-{k}", o)})
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "answers"}), flush=True)

    def median(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["variant"] == variant)

    agree = len({json.dumps(r["answers"]) for r in runs}) == 1
    return {
        "figure": NAME, "student": f"{MODEL} (greedy, chat template)",
        "server": "transformers serve on 127.0.0.1 (no continuous batching)",
        "questions": o["questions"], "max_new_tokens": o["max_new_tokens"], "batch_size": o["batch_size"],
        "max_concurrency": o["max_concurrency"], "threads": settings.threads, "agree": agree,
        "by_variant": {v: {"questions_per_s": median(v, "questions_per_s"), "wall_s": median(v, "wall_s"),
                           "tokens_per_question": median(v, "tokens_per_question")} for v in ("local", "remote")},
        "runs": [{k: v for k, v in r.items() if k != "answers"} for r in runs],
    }  # fmt: skip


def rows(result: dict) -> list[Row]:
    v = result["by_variant"]
    return [Row("eval_throughput_remote_vs_local", f"Evaluation questions per second, transformers serve / local "
                f"(batch {result['batch_size']}), {result['questions']} GSM8K questions, SmolLM2-135M",
                v["remote"]["questions_per_s"] / v["local"]["questions_per_s"])]


def details(result: dict) -> str:
    st = "; ".join(f"{k}: {v['questions_per_s']:.3f} questions/s ({v['wall_s']:.0f} s, {v['tokens_per_question']:.1f} "
                   "tokens/question)" for k, v in result["by_variant"].items())
    same = "the same answers" if result.get("agree") else "DIFFERENT answers"
    return (f"- Evaluation throughput ({result['student']}, {result['questions']} GSM8K questions, "
            f"max_new_tokens {result['max_new_tokens']}; {result['server']}, max_concurrency "
            f"{result['max_concurrency']}): {st}; {same} on both sides.")
