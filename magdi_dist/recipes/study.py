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

Tracking takes no training down: a cell's numbers are in its files (``metrics.jsonl``, ``eval/``,
``cell_result.json``) before MLflow is told, so a server that stops answering (past MLflow's own
retries) leaves the cell ``finished`` with its ``tracking_error``, the study ``TRACKING_FAILED`` (exit
1, the summary written), and a re-run trains nothing again: it adopts the cell's and the study's runs
and logs what they lack (recipes/study_tracking.py).
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
from magdi_dist.storage import is_uri, join
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
    tracking_error: str | None = None  # trained and evaluated, but MLflow did not take it all (yet)
    tracking: dict = field(default_factory=dict)  # metric points replayed / already in the run, seconds


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
    from magdi_dist.study.ablation import tokens_per_s
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
        "tokens_per_s": tokens_per_s(steps),  # every row the LM ran: differs across variants for the same data
        "positive_tokens_per_s": tokens_per_s(steps, "positive_tokens"),  # positive chains: the same work in each
        "mfu": (sum(r["mfu"] for r in steps) / len(steps)) if steps else None,
    }


def study_folder(study: StudyConfig) -> Path:
    """Where the study's own files are written on this node: ``output_dir``, or for a study in object
    storage its mirror (launch/stage.py), pushed to the store at the end. A stored study needs a
    tracking server: an embedded sqlite store in a node's scratch would not outlive the node."""
    if not is_uri(study.output_dir):
        return Path(study.output_dir)
    if not study.tracking_uri:
        from magdi_dist.config import ConfigError

        raise ConfigError(f"output_dir {study.output_dir} is in object storage: set tracking_uri (an MLflow server; "
                          "the embedded sqlite store would stay on this node's scratch disk)")
    from magdi_dist.launch.stage import here

    return here(study.output_dir)


def heldout_data(study: StudyConfig) -> str:
    """The evaluation questions: the configured file, or held-out SYNTHETIC problems (a seed the
    training stream never uses), written once under the study's output directory."""
    if study.evaluation.data:
        return study.evaluation.data
    from magdi_dist.mag.readers import write_mags_jsonl
    from magdi_dist.mag.synth import synth_mags

    e = study.evaluation
    path = study_folder(study) / f"heldout-synthetic-n{e.synthetic_n}-s{e.synthetic_seed}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mags_jsonl(synth_mags(e.synthetic_n, seed=e.synthetic_seed), path)
    return str(path)


CELL_RESULT = "cell_result.json"  # a trained and evaluated cell's numbers: what its tracking is rebuilt from


def _from_files(out: Path, digest: str, data_hash: str | None) -> dict | None:
    """The cell's result when an earlier attempt trained and evaluated it with this config and these
    shards (its tracking failed after): the re-run repairs the tracking and trains nothing."""
    from magdi_dist.recipes.evaluate import PREDICTIONS

    path = out / CELL_RESULT
    if not path.is_file():
        return None
    got = json.loads(path.read_text())
    evaluated = Path(got["eval_summary"])
    same = got.get("config_digest") == digest and got.get("data_hash") == data_hash
    return got if same and Path(got["export_dir"]).is_dir() and evaluated.is_file() and \
        evaluated.with_name(PREDICTIONS).is_file() else None


def _train_and_evaluate(study: StudyConfig, cell: Cell, run_id: str | None, digest: str, ctx: dict):
    """Train the cell (rank 0 logs each step into ``run_id`` when there is one) and evaluate it; the
    numbers go to ``cell_result.json`` before anything is logged. Returns them and the open phase."""
    from magdi_dist.launch import stage
    from magdi_dist.launch.ray_train import train_on_ray
    from magdi_dist.preprocess.prepare import shards_dir
    from magdi_dist.recipes.evaluate import SUMMARY, check_clean, evaluate

    name, cfg = cell.name, study.cell_config(cell)
    out = stage.here(cfg.train.output_dir)  # a cell in object storage: this node's mirror of it
    started = time.perf_counter()
    # The display follows the cell's metrics.jsonl and the launcher's log (study/progress.py).
    training = ctx["progress"].start(name, "train", total=cfg.train.max_steps, metrics=out / "metrics.jsonl")
    tracking = {"uri": ctx["uri"], "run_id": run_id} if run_id else None
    summary = train_on_ray(cfg, num_workers=study.num_workers, cpus_per_worker=study.cpus_per_worker,
                           max_failures=study.max_failures, address=study.ray_address, tracking=tracking,
                           log=training.log)
    training.done()
    # A stored cell's rank 0 ran on some node: its export comes from the store, to evaluate and register.
    export_dir = stage.pull_export(cfg) if stage.remote(cfg) else Path(summary["export_dir"])
    e = study.evaluation
    evaluating = ctx["progress"].start(name, "evaluate")
    ev_cfg = e.for_run(model=str(export_dir), data=ctx["heldout"], seed=cfg.train.seed, out=str(out / "eval"),
                       progress=False, tracking_uri=ctx["uri"], reuse=True)
    ev = evaluate(ev_cfg, on_progress=evaluating.advance)
    check_clean(ev_cfg, ev)  # what it evaluated is its data minus its training questions, reused or not
    train = _train_summary(out)
    answers = {"eval_questions": ev["n"], "eval_extraction_failure_rate": ev.get("extraction_failure_rate"),
               "eval_tokens_per_answer": ev.get("tokens_per_sample"),
               "teacher_tokens_per_question": (ev.get("efficiency") or {}).get("teacher_tokens_per_question")}
    got = {"config_digest": digest, "data_hash": _sha256(shards_dir(stage.on_node(cfg)) / "manifest.json"),
           "export_dir": str(export_dir), "checkpoint": stage.stored_checkpoint(cfg, summary.get("checkpoint")),
           "eval_summary": str(Path(ev["out"]) / SUMMARY),
           "wall_time_s": time.perf_counter() - started, "params": float(_param_count(export_dir)),
           "flops": train["train_flops"], "eval_ntp_loss": train["eval_ntp_loss"], "eval_loss": train["eval_loss"],
           "accuracy": ev["accuracy"], "accuracy_ci": [ev["ci95_low"], ev["ci95_high"]],
           "metrics": {"eval_accuracy": ev["accuracy"], **{k: v for k, v in {**answers, **train}.items()
                                                            if v is not None and k != "train_flops"}}}
    tmp = out / f"{CELL_RESULT}.tmp"
    tmp.write_text(json.dumps(got, indent=2))
    os.replace(tmp, out / CELL_RESULT)
    stage.push_driver_files(cfg)  # a stored cell's evaluation and result, next to its run in the store
    return got, evaluating


def _run_cell(study: StudyConfig, cell: Cell, ctx: dict) -> CellResult:
    from magdi_dist.launch import stage
    from magdi_dist.preprocess.prepare import shards_dir
    from magdi_dist.recipes.study_tracking import mark_failed, require_answer, track_cell
    from magdi_dist.track import find_cell_run, resolved_config_digest, start_cell_run

    name, size, variant = cell.name, cell.size, cell.variant
    cfg = study.cell_config(cell)
    resolved = cfg.model_dump(mode="json")
    uri = ctx["uri"]
    result = CellResult(cell=name, size=size.name, variant=variant.name, status="finished", lr=cell.lr,
                        seed=cell.seed)
    try:
        require_answer(uri)
        done = find_cell_run(study.experiment, study.name, name, tracking_uri=uri, config=resolved)
    except Exception as err:  # the server does not answer: the cell's files say what is done
        log.warning("study %s: cell %s: MLflow does not answer (%s)", study.name, name, err)
        done = None
    if done is not None:
        m = done.data.metrics
        log.info("study %s: cell %s already finished (run %s): skipped", study.name, name, done.info.run_id)
        ctx["progress"].skipped(name, done.info.run_id)
        return CellResult(cell=name, size=size.name, variant=variant.name, status="skipped", lr=cell.lr,
                          seed=cell.seed, run_id=done.info.run_id, params=m.get("param_count"),
                          flops=m.get("train_flops"),
                          eval_ntp_loss=m.get("eval_ntp_loss"), eval_loss=m.get("eval_loss"),
                          accuracy=m.get("eval_accuracy"), wall_time_s=m.get("wall_time_s"), metrics=dict(m),
                          export_dir=join(cfg.train.output_dir, "export"))
    out = stage.here(cfg.train.output_dir)
    tags = {"magdi.size": size.name, "magdi.variant": variant.name}
    if cell.lr is not None:  # one run of an lr sweep: the sweep it belongs to, and its rate
        tags.update({"magdi.sweep": f"{size.name}-{variant.name}-lr", "magdi.lr": f"{cell.lr:g}"})
    if cell.seed is not None:
        tags["magdi.seed"] = str(cell.seed)
    digest = resolved_config_digest(resolved)
    got = _from_files(out, digest, _sha256(shards_dir(stage.on_node(cfg)) / "manifest.json"))
    run_id = None
    try:  # the run first, so that training's steps go straight into it; without one, training goes on
        require_answer(uri)
        run_id = start_cell_run(uri, ctx["tracking"].parent(), study.name, name, resolved, rank=0, tags=tags)
    except Exception as err:
        log.warning("study %s: cell %s: no MLflow run (%s); its steps are replayed from metrics.jsonl later",
                    study.name, name, err)
    result.run_id = run_id
    if got is None:
        try:
            got, phase = _train_and_evaluate(study, cell, run_id, digest, ctx)
        except BaseException:
            mark_failed(uri, run_id)
            raise
    else:
        phase = ctx["progress"].start(name, "track")
        log.info("study %s: cell %s trained and evaluated before (%s): tracking it", study.name, name,
                 out / CELL_RESULT)
    for key in ("params", "flops", "eval_ntp_loss", "eval_loss", "accuracy", "accuracy_ci", "wall_time_s",
                "export_dir", "metrics"):
        setattr(result, key, got[key])
    done_msg = f"{got['metrics']['eval_questions']} questions, accuracy {got['accuracy']:.1%}"
    try:
        result.run_id, result.tracking = track_cell(study, cell, run_id, got, tags, ctx)
        result.model_version = result.tracking.pop("version")
        phase.done(f"{done_msg}; registered as version {result.model_version}")
    except Exception as err:  # trained and evaluated all the same: the result stands, from its files
        log.exception("study %s: cell %s: tracking failed (a re-run of the study repairs it)", study.name, name)
        result.tracking_error = f"{type(err).__name__}: {err}"
        mark_failed(uri, result.run_id)
        phase.done(f"{done_msg}; not tracked: {result.tracking_error[:200]}")
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
    from magdi_dist.recipes.study_tracking import StudyTracking, track_study
    from magdi_dist.study.progress import StudyProgress
    from magdi_dist.track import resolve_tracking_uri

    out = study_folder(study)
    out.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(out, study.tracking_uri)
    tracking = StudyTracking(study, uri)
    try:
        tracking.parent()
    except Exception as err:  # the cells train all the same, and are tracked once it answers
        log.warning("study %s: MLflow at %s does not answer (%s)", study.name, uri, err)
    ctx = {"uri": uri, "tracking": tracking, "heldout": heldout_data(study),
           "progress": progress or StudyProgress(None)}

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
        plot_scaling(rows, out / "scaling_curve.png", fits=curve, title=f"{study.name}: MAGDi students",
                     sweep=every if len(every) > len(seeded or rows) else None, seeds=seeded)
        (out / "scaling_fit.json").write_text(json.dumps(curve, indent=2, default=str))
        if study.compared:
            from magdi_dist.study.paired import compare_cells

            try:
                paired = compare_cells([asdict(r) for r in ran], *study.compared)
            except (OSError, ValueError, KeyError) as err:  # the cells stay trained; the summary says why
                log.exception("study %s: paired comparison failed", study.name)
                paired = {"a": study.compared[0], "b": study.compared[1], "error": f"{type(err).__name__}: {err}"}
    # A tracking failure here leaves the study's results standing: the summary names it, a re-run repairs it.
    champion = tracking_error = None
    status = "FINISHED" if all(r.status != "failed" for r in results) else "FAILED"
    if status == "FINISHED" and any(r.tracking_error for r in results):
        status = "TRACKING_FAILED"
    try:
        champion = track_study(study, tracking, results, rows, curve, out, status)
    except Exception as err:
        log.exception("study %s: tracking the study failed (a re-run of the study repairs it)", study.name)
        tracking_error = f"{type(err).__name__}: {err}"
        status = "TRACKING_FAILED" if status == "FINISHED" else status
    summary = {"study": study.name, "tracking_uri": uri, "parent_run_id": tracking.parent_id, "status": status,
               "seeds": study.seeds, "cells": [asdict(r) for r in results], "champion": champion,
               "curve": curve, "curve_rows": rows, "paired": paired,
               "plot": str(out / "scaling_curve.png") if rows else None, "tracking_error": tracking_error}
    (out / "study_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if is_uri(study.output_dir):
        from magdi_dist.launch.stage import push_folder

        push_folder(out, study.output_dir)
    return summary
