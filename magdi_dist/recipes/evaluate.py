"""Recipe: evaluate a student (``magdi-dist evaluate``, ``ray_jobs/evaluate.py``, every study cell).

    student (export dir or models:/ URI) + held-out questions (benchmark file or MAG file)
      -> length-sorted batches -> greedy / k-sample generation (in-process, or Ray actors)
      -> answers extracted and graded, majority vote -> predictions.jsonl
      -> accuracy with a Wilson 95% CI, extraction failures, tokens, teacher-token ratio -> summary.json
      -> (optionally) the metrics and files on an MLflow run
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from magdi_dist.eval.config import EvalConfig  # typed there (light); callers import it from here too
from magdi_dist.eval.engine import Engine, prompt_for
from magdi_dist.eval.generate import prompt_ids
from magdi_dist.eval.loader import StudentDirs, is_uri, load_student, resolve
from magdi_dist.eval.questions import EvalQuestion, load_questions
from magdi_dist.eval.stats import summarize

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"


def plan_batches(questions: list[EvalQuestion], tokenizer, batch_size: int) -> list[list[EvalQuestion]]:
    """Questions grouped by prompt length (less padding), a pure function of the data and the batch
    size, so every run (any number of workers) generates in exactly the same batches."""
    lengths = [len(prompt_ids(tokenizer, prompt_for(q, tokenizer))) for q in questions]
    order = sorted(range(len(questions)), key=lambda i: (lengths[i], i))
    return [[questions[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]


def _progress(cfg: EvalConfig, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluate", unit="q", disable=not cfg.progress)


def _default_out(cfg: EvalConfig) -> Path:
    return Path("outputs") / "eval" / f"{Path(cfg.data).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_outputs(out: Path, records: list[dict], summary: dict) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    preds, summ = out / PREDICTIONS, out / SUMMARY
    with preds.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    summ.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return preds, summ


def _records(cfg: EvalConfig, questions: list[EvalQuestion], dirs: StudentDirs) -> tuple[list[dict], object]:
    """Per-question records in question order, and the student's tokenizer."""
    settings = cfg.settings
    bar = _progress(cfg, len(questions))
    try:
        if cfg.distributed:
            from transformers import AutoTokenizer

            from magdi_dist.eval.distributed import run_sharded

            tokenizer = AutoTokenizer.from_pretrained(dirs.tokenizer)  # the driver only plans batches
            records = run_sharded(
                plan_batches(questions, tokenizer, cfg.batch_size),
                ref=cfg.model,
                dirs=dirs,
                settings=settings,
                workers=cfg.workers,
                address=cfg.ray_address,
                tracking_uri=cfg.tracking_uri,
                cpus_per_worker=cfg.worker_cpus,
                gpus_per_worker=cfg.worker_gpus,
                on_batch=lambda out: bar.update(len(out)),
            )
            return records, tokenizer
        model, tokenizer = load_student(dirs)
        engine = Engine(model, tokenizer, settings)
        records = []
        for batch in plan_batches(questions, tokenizer, cfg.batch_size):
            records.extend(engine.run_batch(batch))
            bar.update(len(batch))
        return sorted(records, key=lambda r: r["index"]), tokenizer
    finally:
        bar.close()


# What a summary must share with a config to be that config's evaluation (model and out aside).
SAME = ("k", "temperature", "max_new_tokens", "seed", "batch_size")


def finished_evaluation(cfg: EvalConfig) -> dict | None:
    """The summary already in ``cfg.out`` when it is this evaluation: the same model directory, written
    after the model's files last changed, the same questions (data, exclusions, limit) and decoding.
    A re-run study then does not redo an evaluation that finished before a later step failed."""
    if not cfg.out or is_uri(cfg.model):
        return None
    out, model = Path(cfg.out), Path(cfg.model)
    if not ((out / SUMMARY).is_file() and (out / PREDICTIONS).is_file() and model.is_dir()):
        return None
    summary = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    # Summaries from before the limit was recorded: their n is the limit when the data had enough.
    limit = summary["limit"] if "limit" in summary else (cfg.limit if summary.get("n") == cfg.limit else -1)
    def paths(xs: list[str]) -> list[Path]:
        return [Path(x).resolve() for x in xs]

    same = (paths([summary.get("model", ""), summary.get("data", "")]) == paths([cfg.model, cfg.data])
            and paths(summary.get("excluded_from", [])) == paths(cfg.exclude)
            and limit == cfg.limit and bool(summary.get("efficiency")) == bool(cfg.teachers)
            and all(summary.get(k) == getattr(cfg, k) for k in SAME))
    newer = (out / SUMMARY).stat().st_mtime >= max((f.stat().st_mtime for f in model.iterdir()), default=0)
    return summary if same and newer else None


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation described by ``cfg``; write predictions and summary; return the summary.
    With ``cfg.reuse``, an identical finished evaluation in ``cfg.out`` is returned (and logged to
    ``cfg.mlflow_run_id``) instead of being run again."""
    import torch

    done = finished_evaluation(cfg) if cfg.reuse else None
    if done is not None:
        if cfg.mlflow_run_id:
            from magdi_dist.eval.tracking import log_to_run

            out = Path(cfg.out)
            log_to_run(cfg.mlflow_run_id, done, [out / PREDICTIONS, out / SUMMARY], tracking_uri=cfg.tracking_uri)
        return done
    torch.manual_seed(cfg.seed)
    questions, fmt = load_questions(cfg.data, format=cfg.format, task=cfg.task, limit=cfg.limit,
                                    exclude=cfg.exclude)
    started = time.perf_counter()
    # A registry model is downloaded for this run only; local workers read the same copy.
    with tempfile.TemporaryDirectory(prefix="magdi-eval-model-") if is_uri(cfg.model) else nullcontext() as tmp:
        dirs = resolve(cfg.model, tracking_uri=cfg.tracking_uri, cache_dir=tmp)
        records, tokenizer = _records(cfg, questions, dirs)
    summary = summarize(records)
    summary.update(
        model=cfg.model,
        data=str(cfg.data),
        format=fmt,
        tasks=sorted({q.task for q in questions}),
        k=cfg.k,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        limit=cfg.limit,
        excluded_from=list(cfg.exclude),  # contamination: questions of these MAG files were skipped
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        workers=cfg.workers if cfg.distributed else 1,
        ray_address=cfg.ray_address,
        wall_s=time.perf_counter() - started,
    )
    if cfg.teachers:
        from magdi_dist.eval.efficiency import efficiency

        summary["efficiency"] = efficiency(cfg.teachers, tokenizer, records, task=cfg.task)
    out = Path(cfg.out) if cfg.out else _default_out(cfg)
    summary["out"] = str(out)
    files = write_outputs(out, records, summary)
    if cfg.mlflow_run_id:
        from magdi_dist.eval.tracking import log_to_run

        log_to_run(cfg.mlflow_run_id, summary, list(files), tracking_uri=cfg.tracking_uri)
    return summary
