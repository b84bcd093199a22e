"""Run layout of a scaling study: one parent run per study, one nested child run per cell.

Only rank 0 talks to MLflow. Every writing function takes ``rank`` explicitly and does nothing on
other ranks, so the training loop can call them unconditionally and a study still yields exactly
one run per cell (never one per worker). Functions use an ``MlflowClient`` bound to an explicit
tracking URI instead of the fluent ``mlflow.start_run`` API: the fluent active-run stack is
process-global and thread-local, which does not mix with Ray workers or with nested runs created
from library code.

Tags (all ``magdi.*``) are what later code searches by: ``magdi.study``, ``magdi.cell``,
``magdi.role`` (``study``/``cell``), ``magdi.resolved_config_digest``, ``magdi.data_hash``,
``magdi.checkpoint``, ``magdi.git_sha``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Run, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

from magdi_dist.track.metrics import MetricsLogger, log_missing
from magdi_dist.track.params import flatten_config, log_params_batched, to_params
from magdi_dist.track.store import client_for

log = logging.getLogger(__name__)

TAG_STUDY = "magdi.study"
TAG_CELL = "magdi.cell"
TAG_ROLE = "magdi.role"
TAG_CONFIG_DIGEST = "magdi.resolved_config_digest"
TAG_DATA_HASH = "magdi.data_hash"
TAG_CHECKPOINT = "magdi.checkpoint"
TAG_GIT_SHA = "magdi.git_sha"
TAG_GIT_DIRTY = "magdi.git_dirty"
CONFIG_ARTIFACT = "config.json"

__all__ = [
    "MetricsLogger",
    "cell_run",
    "resolved_config_digest",
    "find_cell_run",
    "finish_run",
    "git_sha",
    "log_cell_result",
    "start_cell_run",
    "start_study_run",
]


def resolved_config_digest(config: Mapping[str, Any]) -> str:
    """Stable short hash of a whole resolved config (every key): a re-run only skips a cell trained with
    the same one. Not ``config.resolved_config_digest``, which leaves out run-only keys to match checkpoints."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_sha(path: str | Path | None = None) -> tuple[str | None, bool]:
    """(commit, dirty) of the git checkout holding ``path`` (default: this package), or (None, False).

    The package's own checkout is what ran, not the caller's cwd (a Ray job's cwd is a temp dir).
    """
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, False
    return (sha or None), bool(dirty)


def _git_tags() -> dict[str, str]:
    sha, dirty = git_sha()
    if sha is None:
        return {}
    # mlflow.source.git.commit is the standard tag the MLflow UI shows; ours is for searching.
    return {MLFLOW_GIT_COMMIT: sha, TAG_GIT_SHA: sha, TAG_GIT_DIRTY: str(dirty).lower()}


def _literal(value: str) -> str:
    """Quote a value for an MLflow search filter (no escaping exists there, so pick a free quote)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"study/cell names cannot contain both quote characters: {value!r}")


def _experiment_id(client, experiment: str) -> str | None:
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    with contextlib.suppress(Exception):
        return client.get_experiment(experiment).experiment_id
    return None


def _search(client, experiment_id: str, filters: list[str]) -> Run | None:
    runs = client.search_runs(
        [experiment_id], filter_string=" and ".join(filters), order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def _log_config(client, run_id: str, config: Mapping[str, Any], tags: dict[str, str]) -> None:
    params = to_params(flatten_config(config))
    log_params_batched(client, run_id, params, [RunTag(k, v) for k, v in tags.items()])
    # Params are clipped to 500 characters; the artifact keeps the exact resolved config.
    client.log_dict(run_id, dict(config), CONFIG_ARTIFACT)


def start_study_run(
    tracking_uri: str,
    experiment_id: str,
    study: str,
    config: Mapping[str, Any] | None = None,
    *,
    rank: int,
    resume: bool = True,
) -> str | None:
    """Parent run of ``study``; with ``resume`` the latest parent of the same study and config is reused.

    Reuse keeps the cells of a re-run study under one parent. A changed study config starts a new
    parent instead, because MLflow forbids changing an already logged param.
    """
    if rank != 0:
        return None
    client = client_for(tracking_uri)
    config = dict(config or {})
    chash = resolved_config_digest(config)
    if resume:
        found = _search(
            client,
            experiment_id,
            [
                f"tags.`{TAG_ROLE}` = 'study'",
                f"tags.`{TAG_STUDY}` = {_literal(study)}",
                f"tags.`{TAG_CONFIG_DIGEST}` = '{chash}'",
            ],
        )
        if found is not None:
            client.update_run(found.info.run_id, status="RUNNING")
            if not found.data.params and config:  # created, then the server went away
                _log_config(client, found.info.run_id, config, {})
            return found.info.run_id
    tags = {TAG_ROLE: "study", TAG_STUDY: study, TAG_CONFIG_DIGEST: chash, **_git_tags()}
    run = client.create_run(experiment_id, tags=tags, run_name=study)
    _log_config(client, run.info.run_id, config, {})
    return run.info.run_id


def start_cell_run(
    tracking_uri: str,
    parent_run_id: str,
    study: str,
    cell: str,
    config: Mapping[str, Any],
    *,
    rank: int,
    tags: Mapping[str, str] | None = None,
    resume_run_id: str | None = None,
) -> str | None:
    """Child run of one cell, nested under ``parent_run_id`` via the ``mlflow.parentRunId`` tag.

    ``resume_run_id`` (the id saved in the trainer checkpoint) reopens that run after a restart. Else
    the cell's latest unfinished run under the same parent with the same config (crashed, failed, or
    left RUNNING by a tracking outage) is adopted: a re-run continues its curve instead of opening a
    second run beside an orphan.
    """
    if rank != 0:
        return None
    client = client_for(tracking_uri)
    if resume_run_id:
        client.update_run(resume_run_id, status="RUNNING")
        return resume_run_id
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    digest = resolved_config_digest(config)
    found = _search(client, experiment_id, [
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
        f"tags.`{TAG_ROLE}` = 'cell'",
        f"tags.`{TAG_CELL}` = {_literal(cell)}",
        f"tags.`{TAG_CONFIG_DIGEST}` = '{digest}'",
        "attributes.status != 'FINISHED'",
    ])
    if found is not None:
        client.update_run(found.info.run_id, status="RUNNING")
        if not found.data.params:  # created, then the server went away before its config was logged
            _log_config(client, found.info.run_id, config, {})
        return found.info.run_id
    all_tags = {
        MLFLOW_PARENT_RUN_ID: parent_run_id,
        TAG_ROLE: "cell",
        TAG_STUDY: study,
        TAG_CELL: cell,
        TAG_CONFIG_DIGEST: digest,
        **_git_tags(),
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    run = client.create_run(experiment_id, tags=all_tags, run_name=cell)
    _log_config(client, run.info.run_id, config, {})
    return run.info.run_id


def log_cell_result(
    tracking_uri: str,
    run_id: str | None,
    *,
    rank: int,
    eval_metrics: Mapping[str, float] | None = None,
    param_count: int | None = None,
    train_flops: float | None = None,
    wall_time_s: float | None = None,
    data_hash: str | None = None,
    checkpoint_dir: str | None = None,
    step: int = 0,
) -> None:
    """Final numbers of a cell at ``step``: eval metrics plus size/compute/time, each logged once (a
    repair after a tracking failure sends only the ones the run lacks).

    Parameter count, FLOPs and wall time are metrics (not params) so they sort and plot numerically.
    The checkpoint location is only a tag: ZeRO shards never go into MLflow.
    """
    if rank != 0 or run_id is None:
        return
    values = {k: float(v) for k, v in (eval_metrics or {}).items()}
    for key, value in (("param_count", param_count), ("train_flops", train_flops), ("wall_time_s", wall_time_s)):
        if value is not None:
            values[key] = float(value)
    tags = []
    if data_hash:
        tags.append(RunTag(TAG_DATA_HASH, data_hash))
    if checkpoint_dir:
        tags.append(RunTag(TAG_CHECKPOINT, str(checkpoint_dir)))
    if tags:
        client_for(tracking_uri).log_batch(run_id, tags=tags)
    log_missing(tracking_uri, run_id, [(step, values)])


def finish_run(tracking_uri: str, run_id: str | None, *, rank: int, status: str = "FINISHED") -> None:
    """Mark a run FINISHED / FAILED / KILLED. Only FINISHED cells are skipped by a study re-run."""
    if rank != 0 or run_id is None:
        return
    RunStatus.from_string(status)  # fail early on a typo rather than in the store
    client_for(tracking_uri).set_terminated(run_id, status=status)


@contextlib.contextmanager
def cell_run(
    tracking_uri: str,
    parent_run_id: str,
    study: str,
    cell: str,
    config: Mapping[str, Any],
    *,
    rank: int,
    tags: Mapping[str, str] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[str | None]:
    """``with cell_run(...) as run_id:`` -- FINISHED on success, FAILED (and re-raised) on error."""
    run_id = start_cell_run(
        tracking_uri, parent_run_id, study, cell, config, rank=rank, tags=tags, resume_run_id=resume_run_id
    )
    try:
        yield run_id
    except BaseException:
        try:
            finish_run(tracking_uri, run_id, rank=rank, status="FAILED")
        except Exception:  # the server is gone too: the body's error is the one to see
            log.exception("could not mark run %s FAILED", run_id)
        raise
    finish_run(tracking_uri, run_id, rank=rank, status="FINISHED")


def find_cell_run(
    experiment: str,
    study: str,
    cell: str,
    *,
    tracking_uri: str,
    config: Mapping[str, Any] | None = None,
) -> Run | None:
    """Latest FINISHED child run of (study, cell) in ``experiment`` (name or id), or None.

    With ``config`` only a run trained with the same resolved config counts, so a study whose
    settings changed retrains instead of silently reusing stale cells. FAILED or still RUNNING
    (crashed) runs never count.
    """
    client = client_for(tracking_uri)
    experiment_id = _experiment_id(client, experiment)
    if experiment_id is None:
        return None
    filters = [
        f"tags.`{TAG_ROLE}` = 'cell'",
        f"tags.`{TAG_STUDY}` = {_literal(study)}",
        f"tags.`{TAG_CELL}` = {_literal(cell)}",
        "attributes.status = 'FINISHED'",
    ]
    if config is not None:
        filters.append(f"tags.`{TAG_CONFIG_DIGEST}` = '{resolved_config_digest(config)}'")
    return _search(client, experiment_id, filters)
