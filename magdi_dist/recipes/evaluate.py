"""Recipe: evaluate a student (``magdi-dist evaluate``, ``ray_jobs/evaluate.py``, every study cell).

    student (export dir or models:/ URI) + held-out questions (benchmark file or MAG file)
      -> minus the questions the student was trained on (its export records them) and ``exclude``'s
      -> length-sorted batches -> greedy / k-sample generation (in-process, or Ray actors), or one
         request per sample to OpenAI-compatible endpoints (``base_url``; eval/remote.py)
      -> answers extracted and graded, majority vote -> predictions.jsonl
      -> accuracy with a Wilson 95% CI, extraction failures, tokens, teacher-token ratio -> summary.json
      -> (optionally) the metrics and files on an MLflow run
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from magdi_dist.eval.config import EvalConfig  # typed there (light); callers import it from here too
from magdi_dist.eval.contamination import check_evaluated, exclusion, select, warn_contaminated
from magdi_dist.eval.engine import Engine, prompt_for
from magdi_dist.eval.generate import prompt_ids
from magdi_dist.eval.loader import StudentDirs, is_uri, load_student, resolve
from magdi_dist.eval.questions import EvalQuestion, QuestionFileError, load_questions
from magdi_dist.eval.stats import summarize

PREDICTIONS = "predictions.jsonl"
Progress = Callable[[int, int], None]  # (questions done, questions in all)
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


def _records(cfg: EvalConfig, questions: list[EvalQuestion], dirs: StudentDirs, out: Path,
             on_progress: Progress | None = None) -> tuple[list[dict], object, dict]:
    """Per-question records in question order, the student's tokenizer, and how they were generated."""
    settings = cfg.settings
    bar = _progress(cfg, len(questions))
    done = [0]  # counted here: a disabled tqdm bar does not count

    def advance(n: int) -> None:  # the bar, and a caller's own display (a study's progress)
        bar.update(n)
        done[0] += n
        if on_progress is not None:
            on_progress(done[0], len(questions))
    try:
        if cfg.remote:
            from transformers import AutoTokenizer

            from magdi_dist.eval.remote import run_remote

            tokenizer = AutoTokenizer.from_pretrained(dirs.tokenizer)  # prompts, stop rule, token counts
            records, info = run_remote(cfg, questions, tokenizer, out, advance)
            return records, tokenizer, info
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
                on_batch=lambda out: advance(len(out)),
            )
            return records, tokenizer, {"generation": "local"}
        model, tokenizer = load_student(dirs)
        engine = Engine(model, tokenizer, settings)
        records = []
        for batch in plan_batches(questions, tokenizer, cfg.batch_size):
            records.extend(engine.run_batch(batch))
            advance(len(batch))
        return sorted(records, key=lambda r: r["index"]), tokenizer, {"generation": "local"}
    finally:
        bar.close()


# What a summary must share with a config to be that config's evaluation (model and out aside).
SAME = ("k", "temperature", "max_new_tokens", "seed", "batch_size")


def finished_evaluation(cfg: EvalConfig) -> dict | None:
    """The summary already in ``cfg.out`` when it is this evaluation: the same model directory, written
    after the model's files last changed, the same questions (data, limit, and the excluded keys --
    not the files they came from) and decoding, generated the same way (here or remote).
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

    excluded = exclusion(model, cfg.exclude, allow_contaminated=cfg.allow_contaminated).digest()
    same = (paths([summary.get("model", ""), summary.get("data", "")]) == paths([cfg.model, cfg.data])
            and summary.get("exclusion_sha256") == excluded
            and summary.get("generation", "local") == ("remote" if cfg.remote else "local")
            and limit == cfg.limit and bool(summary.get("efficiency")) == bool(cfg.teachers)
            and all(summary.get(k) == getattr(cfg, k) for k in SAME))
    newer = (out / SUMMARY).stat().st_mtime >= max((f.stat().st_mtime for f in model.iterdir()), default=0)
    return summary if same and newer else None


def check_clean(cfg: EvalConfig, summary: dict) -> None:
    """That the evaluation in ``summary["out"]`` asked exactly ``cfg.data`` minus its excluded questions
    (the student's training questions, ``exclude``'s), cut to ``cfg.limit``: a study's check of every
    cell, fresh or reused (ContaminationError otherwise). Only a student on disk here is checked (a
    study's exports are); a registry URI would have to be downloaded again."""
    if is_uri(cfg.model):
        return
    questions, _ = load_questions(cfg.data, format=cfg.format, task=cfg.task)
    ex = exclusion(resolve(cfg.model).model, cfg.exclude, allow_contaminated=cfg.allow_contaminated)
    lines = (Path(summary["out"]) / PREDICTIONS).read_text(encoding="utf-8").splitlines()
    check_evaluated(questions, ex, cfg.limit, [json.loads(line) for line in lines])


def evaluate(cfg: EvalConfig, on_progress: Progress | None = None) -> dict:
    """Run the evaluation described by ``cfg``; write predictions and summary; return the summary.
    With ``cfg.reuse``, an identical finished evaluation in ``cfg.out`` is returned (and logged to
    ``cfg.mlflow_run_id``) instead of being run again. ``on_progress(done, total)`` is called after
    each batch of questions (a caller's own progress display; ``cfg.progress`` is the tqdm bar)."""
    import torch

    done = finished_evaluation(cfg) if cfg.reuse else None
    if done is not None:
        if cfg.mlflow_run_id:
            from magdi_dist.eval.tracking import log_to_run

            out = Path(cfg.out)
            log_to_run(cfg.mlflow_run_id, done, [out / PREDICTIONS, out / SUMMARY], tracking_uri=cfg.tracking_uri)
        return done
    torch.manual_seed(cfg.seed)
    everything, fmt = load_questions(cfg.data, format=cfg.format, task=cfg.task)
    started = time.perf_counter()
    out = Path(cfg.out) if cfg.out else _default_out(cfg)
    # A registry model is downloaded for this run only; local workers read the same copy.
    with tempfile.TemporaryDirectory(prefix="magdi-eval-model-") if is_uri(cfg.model) else nullcontext() as tmp:
        dirs = resolve(cfg.model, tracking_uri=cfg.tracking_uri, cache_dir=tmp)
        # Decided once, before anything is asked: the student's own training questions never are.
        questions, counts = select(everything, exclusion(dirs.model, cfg.exclude,
                                                         allow_contaminated=cfg.allow_contaminated), cfg.limit)
        if not questions:
            raise QuestionFileError(f"{cfg.data}: every question is excluded ({counts['contamination_excluded']} "
                                    f"trained on, {counts['excluded']} in exclude files)")
        warn_contaminated(counts, len(everything))
        records, tokenizer, generation = _records(cfg, questions, dirs, out, on_progress)
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
        excluded_from=list(cfg.exclude),  # questions of these MAG files were skipped too
        **counts,  # contamination_excluded, contaminated, excluded, training_questions, exclusion_sha256
        **generation,  # local or remote (endpoints, served model, requests asked and reused)
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        workers=cfg.workers if cfg.distributed else 1,
        ray_address=cfg.ray_address,
        wall_s=time.perf_counter() - started,
    )
    if cfg.teachers:
        from magdi_dist.eval.efficiency import efficiency

        summary["efficiency"] = efficiency(cfg.teachers, tokenizer, records, task=cfg.task)
    summary["out"] = str(out)
    files = write_outputs(out, records, summary)
    if cfg.mlflow_run_id:
        from magdi_dist.eval.tracking import log_to_run

        log_to_run(cfg.mlflow_run_id, summary, list(files), tracking_uri=cfg.tracking_uri)
    return summary
