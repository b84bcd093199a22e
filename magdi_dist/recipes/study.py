"""Recipe: a scaling study (``magdi-dist study``, ``magdi-dist demo``, ``ray_jobs/scaling_study.py``).

    study config (sizes x variants over one training config; output_dir on the storage root)
      -> MLflow: one parent run
      -> per cell, on one shared Ray: train (launch.ray_train: prepare the shards, Ray Train +
         DeepSpeed, rank 0 logs each step into the cell's child run) -> evaluate on held-out
         questions (recipes.evaluate) -> log results -> register the student (pyfunc)
      -> fit and plot the scaling curve (each size's mean over its seeds), log it on the parent run
      -> the paired comparison of two variants per size (study.paired) into the summary
      -> the best registered student gets the alias ``champion``

A cell that fails is recorded as FAILED and the others go on; re-running the study skips every cell
that already FINISHED with the same resolved config, so an interrupted study is resumed by running the
same command again. Only this driver logs to MLflow, except the per-step metrics of rank 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from magdi_dist.config import sha256_file
from magdi_dist.study.config import Cell, StudyConfig

if TYPE_CHECKING:  # the display imports the preprocessing stack; only run_study needs it, lazily
    from magdi_dist.study.progress import StudyProgress

log = logging.getLogger("magdi_dist.study")


@dataclass
class CellResult:
    cell: str
    size: str
    variant: str
    status: str  # finished | skipped | failed
    lr: float | None = None  # swept learning rate (None: the config's)
    best_lr: bool = False  # the best of its (size, variant) sweep by eval_ntp_loss: on the curve
    seed: int | None = None  # the cell's train.seed (None: a study without seeds)
    run_id: str | None = None
    params: float | None = None
    flops: float | None = None
    eval_ntp_loss: float | None = None
    eval_loss: float | None = None
    accuracy: float | None = None
    accuracy_ci: list[float] | None = None
    wall_time_s: float | None = None
    export_dir: str | None = None
    model_version: str | None = None
    error: str | None = None
    metrics: dict = field(default_factory=dict)


def _sha256(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _param_count(export_dir: Path) -> int:
    """Parameters of the exported student (LM + graph encoder), read from the safetensors headers
    (tied embeddings are stored once, so they count once)."""
    from safetensors import safe_open

    from magdi_dist.train.export import export_weight_files  # one file, or the shards of a large LM

    total = 0
    for path in [*export_weight_files(export_dir), export_dir / "graph_encoder.safetensors"]:
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                for key in f.keys():  # noqa: SIM118 -- safe_open is not a mapping
                    total += math.prod(f.get_slice(key).get_shape())
    return total


def _train_summary(output_dir: Path) -> dict:
    """Final held-out losses and total training FLOPs from the run's own metrics.jsonl."""
    from magdi_dist.train.metrics import read_metrics

    path = output_dir / "metrics.jsonl"
    records = read_metrics(path) if path.is_file() else []
    evals = [r for r in records if "eval_loss" in r]
    steps = [r for r in records if "loss" in r and "eval_loss" not in r]
    return {
        "eval_ntp_loss": evals[-1].get("eval_ntp_loss") if evals else None,
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "train_flops": sum(r.get("flops", 0.0) for r in steps) or None,
        "final_train_loss": steps[-1]["loss"] if steps else None,
        "tokens_per_s": (sum(r["tokens"] for r in steps) / sum(r["step_time_s"] for r in steps)) if steps else None,
        "mfu": (sum(r["mfu"] for r in steps) / len(steps)) if steps else None,
    }


def heldout_data(study: StudyConfig) -> str:
    """The evaluation questions: the configured file, or held-out SYNTHETIC problems (a seed the
    training stream never uses), written once under the study's output directory."""
    if study.evaluation.data:
        return study.evaluation.data
    from magdi_dist.mag.readers import write_mags_jsonl
    from magdi_dist.mag.synth import synth_mags

    e = study.evaluation
    path = Path(study.output_dir) / f"heldout-synthetic-n{e.synthetic_n}-s{e.synthetic_seed}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mags_jsonl(synth_mags(e.synthetic_n, seed=e.synthetic_seed), path)
    return str(path)


def _run_cell(study: StudyConfig, cell: Cell, ctx: dict) -> CellResult:
    from magdi_dist.launch.ray_train import train_on_ray
    from magdi_dist.preprocess.prepare import shards_dir
    from magdi_dist.recipes.evaluate import check_clean, evaluate
    from magdi_dist.track import cell_run, find_cell_run, log_cell_result
    from magdi_dist.track.registry import log_student

    name, size, variant = cell.name, cell.size, cell.variant
    cfg = study.cell_config(cell)
    resolved = cfg.model_dump(mode="json")
    uri, parent = ctx["uri"], ctx["parent"]
    result = CellResult(cell=name, size=size.name, variant=variant.name, status="finished", lr=cell.lr,
                        seed=cell.seed)
    done = find_cell_run(study.experiment, study.name, name, tracking_uri=uri, config=resolved)
    if done is not None:
        m = done.data.metrics
        log.info("study %s: cell %s already finished (run %s): skipped", study.name, name, done.info.run_id)
        ctx["progress"].skipped(name, done.info.run_id)
        return CellResult(cell=name, size=size.name, variant=variant.name, status="skipped", lr=cell.lr,
                          seed=cell.seed, run_id=done.info.run_id, params=m.get("param_count"),
                          flops=m.get("train_flops"),
                          eval_ntp_loss=m.get("eval_ntp_loss"), eval_loss=m.get("eval_loss"),
                          accuracy=m.get("eval_accuracy"), wall_time_s=m.get("wall_time_s"), metrics=dict(m),
                          export_dir=str(Path(cfg.train.output_dir) / "export"))
    out = Path(cfg.train.output_dir)
    started = time.perf_counter()
    tags = {"magdi.size": size.name, "magdi.variant": variant.name}
    if cell.lr is not None:  # one run of an lr sweep: the sweep it belongs to, and its rate
        tags.update({"magdi.sweep": f"{size.name}-{variant.name}-lr", "magdi.lr": f"{cell.lr:g}"})
    if cell.seed is not None:
        tags["magdi.seed"] = str(cell.seed)
    with cell_run(uri, parent, study.name, name, resolved, rank=0, tags=tags) as run_id:
        result.run_id = run_id
        # The display follows the cell's metrics.jsonl and the launcher's log (study/progress.py).
        training = ctx["progress"].start(name, "train", total=cfg.train.max_steps, metrics=out / "metrics.jsonl")
        summary = train_on_ray(cfg, num_workers=study.num_workers, cpus_per_worker=study.cpus_per_worker,
                               max_failures=study.max_failures, address=study.ray_address,
                               tracking={"uri": uri, "run_id": run_id}, log=training.log)
        training.done()
        export_dir = Path(summary["export_dir"])
        e = study.evaluation
        evaluating = ctx["progress"].start(name, "evaluate")
        ev_cfg = e.for_run(model=str(export_dir), data=ctx["heldout"], seed=cfg.train.seed, out=str(out / "eval"),
                           progress=False, mlflow_run_id=run_id, tracking_uri=uri, reuse=True)
        ev = evaluate(ev_cfg, on_progress=evaluating.advance)
        check_clean(ev_cfg, ev)  # what it evaluated is its data minus its training questions, reused or not
        train = _train_summary(out)
        result.wall_time_s = time.perf_counter() - started
        result.params = float(_param_count(export_dir))
        result.flops = train["train_flops"]
        result.eval_ntp_loss = train["eval_ntp_loss"]
        result.eval_loss = train["eval_loss"]
        result.accuracy = ev["accuracy"]
        result.accuracy_ci = [ev["ci95_low"], ev["ci95_high"]]
        result.export_dir = str(export_dir)
        answers = {"eval_questions": ev["n"], "eval_extraction_failure_rate": ev.get("extraction_failure_rate"),
                   "eval_tokens_per_answer": ev.get("tokens_per_sample"),
                   "teacher_tokens_per_question": (ev.get("efficiency") or {}).get("teacher_tokens_per_question")}
        metrics = {"eval_accuracy": ev["accuracy"], **{k: v for k, v in {**answers, **train}.items()
                                                        if v is not None and k != "train_flops"}}
        result.metrics = metrics
        data_hash = _sha256(shards_dir(cfg) / "manifest.json")
        log_cell_result(uri, run_id, rank=0, eval_metrics=metrics, param_count=int(result.params),
                        train_flops=result.flops, wall_time_s=result.wall_time_s, data_hash=data_hash,
                        checkpoint_dir=summary.get("checkpoint"))
        mv = log_student(export_dir, tracking_uri=uri, run_id=run_id, model_name=study.model_name,
                         study=study.name, cell=name, rank=0, data_hash=data_hash, metrics=metrics,
                         primary_metric=study.champion_metric, checkpoint_dir=summary.get("checkpoint"),
                         max_new_tokens=e.max_new_tokens)
        result.model_version = str(mv.version) if mv is not None else None
        evaluating.done(f"{ev['n']} questions, accuracy {ev['accuracy']:.1%}; registered as version "
                        f"{result.model_version}")
    return result


def mark_best_lr(results: list[CellResult]) -> None:
    """Per (size, variant): the lr with the lowest eval_ntp_loss (its mean over the seeds that have one)
    is its curve point, and every seed's cell at that lr is marked ``best_lr``. Without a sweep every
    lr is its own best; a group with no loss falls back to its first lr."""
    groups: dict[tuple[str, str], dict[float | None, list[CellResult]]] = {}
    for r in results:
        if r.status != "failed":
            groups.setdefault((r.size, r.variant), {}).setdefault(r.lr, []).append(r)
    for by_lr in groups.values():
        means = {lr: sum(losses) / len(losses) for lr, cells in by_lr.items()
                 if (losses := [c.eval_ntp_loss for c in cells if c.eval_ntp_loss is not None])}
        best = min(means, key=means.get) if means else next(iter(by_lr))
        for r in by_lr[best]:
            r.best_lr = True


def run_study(study: StudyConfig, progress: StudyProgress | None = None) -> dict:
    """Train, evaluate and register every cell; fit and plot the curve; crown the champion. ``progress``
    shows the phases as they run (the CLI's; by default nothing beyond the launcher's log)."""
    from magdi_dist.study.progress import StudyProgress
    from magdi_dist.track import ensure_experiment, finish_run, log_study_summary, resolve_tracking_uri, start_study_run
    from magdi_dist.track.registry import set_champion

    out = Path(study.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(out, study.tracking_uri)
    experiment_id = ensure_experiment(uri, study.experiment)
    # Keys a study does not set are left out of the parent's config: a study written before they
    # existed keeps its config digest, so a re-run finds its parent run again.
    unset = {k for k in ("seeds", "compare") if getattr(study, k) is None}
    parent = start_study_run(uri, experiment_id, study.name, study.model_dump(mode="json", exclude=unset), rank=0)
    ctx = {"uri": uri, "parent": parent, "heldout": heldout_data(study), "progress": progress or StudyProgress(None)}

    def attempt(cell: Cell) -> CellResult:
        try:
            return _run_cell(study, cell, ctx)
        except Exception as err:  # a failed cell is recorded; the study goes on
            log.exception("study %s: cell %s failed", study.name, cell.name)
            ctx["progress"].failed(cell.name, err)
            return CellResult(cell=cell.name, size=cell.size.name, variant=cell.variant.name, status="failed",
                              lr=cell.lr, seed=cell.seed, error=f"{type(err).__name__}: {err}")

    cells = list(study.cells())
    ctx["progress"].begin([c.name for c in cells], f"study {study.name}: {len(cells)} cells, tracked in {uri}")
    from magdi_dist.preprocess.session import ray_session

    # One Ray for the whole study (each cell's launcher reuses it): starting Ray costs more than a
    # tiny cell's training, and concurrent cells must share one cluster's resources. The first cell
    # prepares the shards on it too: its feature actors hold their CPUs while the parse tasks need one
    # more, so fewer CPUs than actors + 1 leaves a task pending forever (seen with 1 worker, 2 actors).
    pre = max(math.ceil(c.preprocess.concurrency * c.preprocess.actor_num_cpus)
              for c in map(study.cell_config, study.cells()))
    need = max(int(study.num_workers * study.cpus_per_worker * study.concurrency), pre) + 1
    with ray_session(study.ray_address, num_cpus=max(os.cpu_count() or 1, need)), \
            ThreadPoolExecutor(max_workers=study.concurrency) as pool:
        results = list(pool.map(attempt, cells))
    # The curve: each (size, variant) at its best swept lr by held-out NTP loss; every cell in the plot.
    mark_best_lr(results)
    ran = [r for r in results if r.status != "failed"]
    every = [{"cell": r.cell, "size": r.size, "variant": r.variant, "seed": r.seed, "params": r.params,
              "flops": r.flops, "lr": r.lr, "eval_ntp_loss": r.eval_ntp_loss, "eval_loss": r.eval_loss,
              "accuracy": r.accuracy} for r in ran]
    rows = [row for row, r in zip(every, ran, strict=True) if r.best_lr]
    seeded = rows if study.seeds else None
    curve = paired = None
    if rows:  # fit and plot here (track only files results), kept in the output folder too
        from magdi_dist.study.curve import fit_scaling, plot_scaling, seed_means

        if study.seeds:  # the curve fits each size's mean over its seeds; the plot shows the spread
            rows = seed_means(rows)
        curve = fit_scaling(rows)
        png = plot_scaling(rows, out / "scaling_curve.png", fits=curve, title=f"{study.name}: MAGDi students",
                           sweep=every if len(every) > len(seeded or rows) else None, seeds=seeded)
        (out / "scaling_fit.json").write_text(json.dumps(curve, indent=2, default=str))
        log_study_summary(parent, rows, fits=curve, plot=png, tracking_uri=uri, rank=0)
        if study.compared:
            from magdi_dist.study.paired import compare_cells

            try:
                paired = compare_cells([asdict(r) for r in ran], *study.compared)
            except (OSError, ValueError, KeyError) as err:  # the cells stay trained; the summary says why
                log.exception("study %s: paired comparison failed", study.name)
                paired = {"a": study.compared[0], "b": study.compared[1], "error": f"{type(err).__name__}: {err}"}
    champion = None
    if any(r.status != "failed" for r in results):
        mv = set_champion(study.model_name, study.champion_metric, mode=study.champion_mode, tracking_uri=uri)
        champion = {"name": study.model_name, "version": str(mv.version), "alias": "champion",
                    "uri": f"models:/{study.model_name}@champion"}
    status = "FINISHED" if all(r.status != "failed" for r in results) else "FAILED"
    finish_run(uri, parent, rank=0, status=status)
    summary = {"study": study.name, "tracking_uri": uri, "parent_run_id": parent, "status": status,
               "seeds": study.seeds, "cells": [asdict(r) for r in results], "champion": champion,
               "curve": curve, "curve_rows": rows, "paired": paired,
               "plot": str(out / "scaling_curve.png") if rows else None}
    (out / "study_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
