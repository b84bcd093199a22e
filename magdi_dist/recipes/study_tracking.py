"""The MLflow side of a study (recipes/study.py): its parent run, each trained cell's tracking, repairs.

Training and evaluation results live in files (the cell's ``metrics.jsonl``, evaluation summary and
``cell_result.json``); MLflow gets a copy. Every function here can run again after a failure and
logs only what the store lacks, so a tracking server that was down (past MLflow's own retries) is
repaired by running the study again: the cell's and the study's runs are adopted, not doubled, and
the curve gets the steps the server missed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from magdi_dist.launch.stage import here
from magdi_dist.study.config import Cell, StudyConfig

log = logging.getLogger("magdi_dist.study")


def require_answer(uri: str) -> None:
    """Fail at once when an HTTP tracking server does not answer: every MLflow call would first spend
    its whole retry budget (about 4 minutes by default) finding that out."""
    from magdi_dist.track.metrics import server_answers

    if not server_answers(uri):
        raise ConnectionError(f"the MLflow tracking server at {uri} does not answer")


class StudyTracking:
    """The study's experiment and parent run, opened on first use and again after a failure: a server
    down when the study starts stops no training (its cells are tracked once it answers, or by the
    re-run). Keys a study does not set are left out of the parent's config: a study written before
    they existed keeps its config digest, so a re-run finds its parent run again."""

    def __init__(self, study: StudyConfig, uri: str):
        unset = {k for k in ("seeds", "compare") if getattr(study, k) is None}
        self.study, self.uri, self.config = study, uri, study.model_dump(mode="json", exclude=unset)
        self.parent_id: str | None = None
        self._lock = threading.Lock()  # cells may run concurrently

    def parent(self) -> str:
        from magdi_dist.track import ensure_experiment, start_study_run

        with self._lock:
            if self.parent_id is None:
                require_answer(self.uri)
                experiment_id = ensure_experiment(self.uri, self.study.experiment)
                self.parent_id = start_study_run(self.uri, experiment_id, self.study.name, self.config, rank=0)
            return self.parent_id


def track_cell(study: StudyConfig, cell: Cell, run_id: str | None, got: dict, tags: dict,
               ctx: dict) -> tuple[str, dict]:
    """Everything MLflow holds of a trained cell, each part logged once however often this runs: the
    run (adopted, else created), the steps of metrics.jsonl it missed, the evaluation, the results,
    the registered student, FINISHED. Raises what MLflow raises; returns the run id and
    ``{"version", "replayed", "present", "replay_s"}`` (the steps' points sent, those the run had)."""
    from magdi_dist.eval.tracking import metrics_of
    from magdi_dist.recipes.evaluate import PREDICTIONS
    from magdi_dist.track import finish_run, log_cell_result, start_cell_run
    from magdi_dist.track.metrics import log_missing
    from magdi_dist.track.registry import log_student
    from magdi_dist.track.store import client_for
    from magdi_dist.train.metrics import read_metrics

    uri, name, cfg = ctx["uri"], cell.name, study.cell_config(cell)
    out = here(cfg.train.output_dir)  # a stored cell: this node's mirror (recipes/study.py pulled it)
    require_answer(uri)
    if run_id is None:
        run_id = start_cell_run(uri, ctx["tracking"].parent(), study.name, name, cfg.model_dump(mode="json"),
                                rank=0, tags=tags)
    t0 = time.perf_counter()
    steps = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
    replay = log_missing(uri, run_id, [(r["step"], r) for r in steps])
    replay["replay_s"] = round(time.perf_counter() - t0, 3)
    ev_file = Path(got["eval_summary"])
    log_missing(uri, run_id, [(0, metrics_of(json.loads(ev_file.read_text()), "eval/"))])
    client = client_for(uri)
    for f in (ev_file, ev_file.with_name(PREDICTIONS)):
        client.log_artifact(run_id, str(f), "eval")
    log_cell_result(uri, run_id, rank=0, eval_metrics=got["metrics"], param_count=int(got["params"]),
                    train_flops=got["flops"], wall_time_s=got["wall_time_s"], data_hash=got["data_hash"],
                    checkpoint_dir=got["checkpoint"])
    # One version per cell run: a repair that follows a registration registers nothing again.
    versions = [v for v in client.search_model_versions(f"run_id = '{run_id}'") if v.name == study.model_name]
    if versions:
        version = str(versions[0].version)
    else:
        mv = log_student(got["export_dir"], tracking_uri=uri, run_id=run_id, model_name=study.model_name,
                         study=study.name, cell=name, rank=0, data_hash=got["data_hash"],
                         metrics=got["metrics"], primary_metric=study.champion_metric,
                         checkpoint_dir=got["checkpoint"], max_new_tokens=study.evaluation.max_new_tokens)
        version = str(mv.version)
    finish_run(uri, run_id, rank=0, status="FINISHED")
    return run_id, {"version": version, **replay}


def track_study(study: StudyConfig, tracking: StudyTracking, results: list, rows: list[dict],
                curve: dict | None, out: Path, status: str) -> dict | None:
    """The parent run's part: the curve's artifacts, the champion, the parent's status (FAILED while
    a cell's tracking is missing, so that it is not taken for complete). ``results`` are the cells'
    ``recipes.study.CellResult`` (not imported: study imports this module). Returns the champion."""
    from magdi_dist.track import finish_run, log_study_summary
    from magdi_dist.track.registry import set_champion

    require_answer(tracking.uri)
    parent, uri = tracking.parent(), tracking.uri
    if rows:
        log_study_summary(parent, rows, fits=curve, plot=out / "scaling_curve.png", tracking_uri=uri, rank=0)
    champion = None
    if any(r.status != "failed" and not r.tracking_error for r in results):
        mv = set_champion(study.model_name, study.champion_metric, mode=study.champion_mode, tracking_uri=uri)
        champion = {"name": study.model_name, "version": str(mv.version), "alias": "champion",
                    "uri": f"models:/{study.model_name}@champion"}
    finish_run(uri, parent, rank=0, status="FINISHED" if status == "FINISHED" else "FAILED")
    return champion


def mark_failed(uri: str, run_id: str | None) -> None:
    """FAILED, when the server answers (see ``require_answer``)."""
    from magdi_dist.track import finish_run
    from magdi_dist.track.metrics import server_answers

    if run_id is not None and server_answers(uri):
        try:
            finish_run(uri, run_id, rank=0, status="FAILED")
        except Exception:
            log.exception("could not mark run %s FAILED", run_id)
